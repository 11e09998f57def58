"""What the API tells operators: the HTTP server span (http_spans.py), a GenAI span per request (genai.py), metrics
(metrics.py) rendered as Prometheus text or OpenMetrics (exposition.py) and exported over OTLP (otlp.py)."""
