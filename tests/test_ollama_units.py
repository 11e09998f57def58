"""Unit tests of the Ollama adapters: options mapping, template subset, model names, NDJSON framing, GGUF header."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import msgspec
import pytest
from herd.api.grammar import GrammarCache
from herd.api.models.gguf import GGUFError, human_number, read_info
from herd.api.streaming import ndjson, ndjson_error
from herd.api.translate import ollama_replies
from herd.api.translate import ollama_requests as requests
from herd.api.wire import ollama as wire
from herd.errors import InvalidRequest, WorkerLost
from herd.inference import Finished, Usage


def generate(**fields: object) -> wire.GenerateRequest:
    return msgspec.convert({"model": "m", "prompt": "hi", **fields}, wire.GenerateRequest)


def test_options_default_to_ollamas_values() -> None:
    req = requests.generate_request(generate(), "m", 2048, "r1", GrammarCache())
    s = req.sampling
    assert (s.temperature, s.top_k, s.top_p, s.min_p) == (0.8, 40, 0.9, 0.0)
    assert (s.repeat_penalty, s.repeat_last_n, s.seed) == (1.1, 64, None)
    assert req.max_tokens is None and req.stop == ()


@pytest.mark.parametrize(("num_predict", "max_tokens"), [(None, None), (-1, None), (-2, None), (0, None), (7, 7)])
def test_num_predict(num_predict: int | None, max_tokens: int | None) -> None:
    req = requests.generate_request(generate(options={"num_predict": num_predict}), "m", 2048, "r1", GrammarCache())
    assert req.max_tokens == max_tokens


def test_option_edge_values_mean_what_they_mean_in_ollama() -> None:
    options = {"temperature": -1, "top_k": -5, "repeat_last_n": -1, "seed": -1, "stop": "END", "min_p": 3}
    s = requests.generate_request(generate(options=options), "m", 4096, "r1", GrammarCache())
    assert (s.sampling.temperature, s.sampling.top_k, s.sampling.repeat_last_n) == (0.0, 0, 4096)
    assert (s.sampling.seed, s.sampling.min_p, s.stop) == (None, 1.0, ("END",))
    greedy = requests.generate_request(generate(options={"top_p": 0}), "m", 2048, "r1", GrammarCache()).sampling
    assert (greedy.temperature, greedy.top_p) == (0.0, 1.0)
    typical = requests.generate_request(generate(options={"typical_p": 0.5}), "m", 2048, "r1", GrammarCache())
    assert typical.sampling.typical_p == 0.5
    assert greedy.typical_p == 1.0  # Ollama's default: off


def test_unknown_options_and_fields_are_ignored() -> None:
    body = generate(options={"mirostat": 2, "penalize_newline": True, "num_ctx": 8192}, shift=True, truncate=False)
    assert requests.generate_request(body, "m", 2048, "r1", GrammarCache()).sampling.temperature == 0.8


def test_generate_becomes_chat_messages_unless_raw() -> None:
    req = requests.generate_request(generate(system="Be brief.", context=[1, 2]), "m", 2048, "r1", GrammarCache())
    assert [(m.role, m.content) for m in req.messages or ()] == [("system", "Be brief."), ("user", "hi")]
    assert (req.prompt, req.context_tokens, req.return_tokens) == (None, (1, 2), True)
    raw = requests.generate_request(
        generate(system="ignored", context=[1, 2], raw=True), "m", 2048, "r1", GrammarCache()
    )
    assert (raw.prompt, raw.messages, raw.context_tokens, raw.return_tokens) == ("hi", None, (), False)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ .System }}\nQ: {{ .Prompt }}\nA: {{ .Response }}</s>", "sys\nQ: hi\nA: "),
        ("[ {{- .Prompt -}} ] {{.Response}}", "[hi] "),
        ("<s> {{- .Prompt }}", "<s>hi"),
        ("{{ .Prompt }}", "hi"),
    ],
)
def test_placeholder_templates(template: str, expected: str) -> None:
    assert requests.render_template(template, "sys", "hi") == expected


@pytest.mark.parametrize("template", ["{{ if .System }}x{{ end }}", "{{ range .Messages }}{{ end }}", "{{ .Foo }}"])
def test_other_templates_are_refused(template: str) -> None:
    with pytest.raises(InvalidRequest, match="template"):
        requests.render_template(template, "", "hi")


def test_unsupported_fields_are_400s() -> None:
    for fields, param in (
        ({"format": "yaml"}, "format"),
        ({"format": {"type": "nope"}}, "format.type"),
        ({"think": "high"}, "think"),
    ):
        with pytest.raises(InvalidRequest) as info:
            requests.generate_request(generate(**fields), "m", 2048, "r1", GrammarCache())
        assert info.value.param == param


@pytest.mark.parametrize(
    ("name", "known", "served"),
    [
        ("a:1b", {"a:1b": 1}, "a:1b"),
        ("a", {"a:latest": 1}, "a:latest"),
        ("a:latest", {"a": 1}, "a"),
        ("a", {"a:1b": 1}, None),
        ("host:5000/ns/a", {"host:5000/ns/a:latest": 1}, "host:5000/ns/a:latest"),
    ],
)
def test_model_names(name: str, known: dict[str, int], served: str | None) -> None:
    assert requests.resolve_model(name, known) == served


def test_ndjson_is_one_line_per_object() -> None:
    line = ndjson(ollama_replies.generate_chunk("m", "two\nlines\n\n"))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["response"] == "two\nlines\n\n"
    error = ndjson_error(WorkerLost("the worker stopped"))
    assert error == b'{"error":"the worker stopped"}\n'


def test_final_chunk_fields() -> None:
    end = Finished(3, "length", Usage(5, 2, prompt_eval_ns=10, eval_ns=20, queue_ns=0), tokens=(1, 2, 3, 4, 5, 6, 7))
    body = json.loads(ndjson(ollama_replies.generate_done("m", "", end, 99)))
    assert body["done"] is True and body["done_reason"] == "length" and body["context"] == [1, 2, 3, 4, 5, 6, 7]
    assert (body["total_duration"], body["load_duration"], body["prompt_eval_duration"], body["eval_duration"]) == (
        99,
        0,
        10,
        20,
    )
    assert (body["prompt_eval_count"], body["eval_count"]) == (5, 2)
    chunk = json.loads(ndjson(ollama_replies.chat_chunk("m", "x")))
    assert chunk["message"] == {"role": "assistant", "content": "x"} and "done_reason" not in chunk


def write_gguf(path: Path, kv: list[tuple[str, int, bytes]], tensors: list[tuple[str, list[int]]]) -> None:
    def string(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    data = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for key, kind, value in kv:
        data += string(key) + struct.pack("<I", kind) + value
    for name, dims in tensors:
        data += string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        data += struct.pack("<IQ", 0, 0)
    path.write_bytes(data)


def test_gguf_reader(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    tokens = struct.pack("<IQ", 8, 2000) + b"".join(struct.pack("<Q", 1) + b"t" for _ in range(2000))
    write_gguf(
        path,
        [
            ("general.architecture", 8, struct.pack("<Q", 5) + b"llama"),
            ("general.file_type", 4, struct.pack("<I", 15)),
            ("general.languages", 9, struct.pack("<IQ", 8, 1) + struct.pack("<Q", 2) + b"en"),
            ("tokenizer.ggml.tokens", 9, tokens),
            ("llama.rope.freq_base", 6, struct.pack("<f", 10000.0)),
        ],
        [("a", [10, 20]), ("b", [5])],
    )
    info = read_info(path)
    assert (info.architecture, info.quantization, info.parameter_count) == ("llama", "Q4_K_M", 205)
    assert info.metadata["general.languages"] == ["en"] and info.metadata["tokenizer.ggml.tokens"] == []
    assert info.metadata["llama.rope.freq_base"] == 10000.0
    assert len(read_info(path, arrays=True).metadata["tokenizer.ggml.tokens"]) == 2000
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(GGUFError):
        read_info(path)


def test_human_number() -> None:
    assert [human_number(n) for n in (134_515_008, 135_000_000, 8_030_000_000, 7_000_000_000, 1500)] == [
        "134.52M",
        "135M",
        "8.0B",
        "7B",
        "2K",
    ]
