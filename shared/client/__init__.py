"""herd's command-line client: Ollama's verbs over HTTP against a running herd (HERD_HOST, HERD_API_KEY)."""
