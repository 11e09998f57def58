"""herd, an OpenAI- and Ollama-compatible LLM service.

This package's root is the repository's shared/ folder and holds what both sides use: settings, the internal
request and event types, errors, Redis names and clients, tracing, model loading, the CLI and the supervisor.
herd.api (api/) is the HTTP side; herd.workers (workers/) is the llama.cpp side.
"""
