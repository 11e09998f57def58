"""The HTTP edge before any route: connection limits and timeouts (connections.py), the Origin and Host checks
(origins.py) and CORS on the same allow-list (cors.py)."""
