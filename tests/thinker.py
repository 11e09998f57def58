"""A model that reasons, for tests: a copy of the bundled SmolLM2 GGUF whose chat template opens `<think>` in the
generation prompt (as DeepSeek R1's do), created on a running herd through Ollama's /api/create. What the real model
then writes arrives as reasoning (the worker names it "thinking"); SmolLM2 never closes the block."""

from __future__ import annotations

from pathlib import Path

import ollama

from tests.conftest import HerdServer

THINKER = "thinker:1"
# ChatML, as SmolLM2's own template, with `<think>` opened after the assistant's header.
TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}"
)


def with_template(gguf: bytes, template: str) -> bytes:
    """The GGUF with another chat template of the same byte length (padded with a Jinja comment), so that no
    offset in the file moves."""
    key = b"tokenizer.chat_template"
    at = gguf.index(key) + len(key)
    size = int.from_bytes(gguf[at + 4 : at + 12], "little")  # value type (u32, 8: string), then the length (u64)
    old = gguf[at + 12 : at + 12 + size]
    pad = size - len(template.encode()) - len("{##}")
    assert pad >= 0
    new = (template + "{#" + " " * pad + "#}").encode()
    assert len(new) == len(old)
    return gguf[: at + 12] + new + gguf[at + 12 + size :]


def thinker_server(redis_port: int, db: int, model_path: str, root: Path, **env: str) -> HerdServer:
    """A `herd serve` (models in `root`) that serves THINKER beside the bundled model."""
    server = HerdServer(redis_port, db=db, log_path=root / "serve.log", HERD_MODELS_DIR=str(root / "models"), **env)
    path = root / "thinker.gguf"
    path.write_bytes(with_template(Path(model_path).read_bytes(), TEMPLATE))
    try:
        with ollama.Client(host=server.base_url, timeout=300) as client:
            digest = client.create_blob(path)
            assert client.create(model=THINKER, files={"model.gguf": digest}).status == "success"
    except BaseException:
        server.stop()
        raise
    return server
