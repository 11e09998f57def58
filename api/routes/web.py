"""The chat page at /chat/: the bundle built from api/web/src (React + the AI SDK's useChat), shipped in the wheel."""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.static_files import create_static_files_router

PATH = "/chat"
DIST = Path(__file__).resolve().parent.parent / "web" / "dist"  # api/web/dist, rebuilt by api/web/build.sh


def router() -> Router:
    """Static files under /chat (index.html at /chat/); its own path, since Ollama's clients probe `/`."""
    return create_static_files_router(PATH, [DIST], html_mode=True, name="chat")
