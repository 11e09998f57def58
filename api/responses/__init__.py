"""The Responses API's stored responses and background runs (routes: api/routes/responses.py)."""
