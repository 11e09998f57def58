"""herd HTTP API: OpenAI and Ollama wire formats over one internal request type."""
