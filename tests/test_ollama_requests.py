"""api/translate/ollama_requests.py as a unit: options mapping (Ollama's defaults and edge values), /api/generate
into chat messages, the template subset, model names and the fields it refuses."""

from __future__ import annotations

import msgspec
import pytest
from herd.api.grammar.schema import GrammarCache
from herd.api.translate import ollama_requests as requests
from herd.api.wire import ollama as wire
from herd.errors import InvalidRequest


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


def test_a_chat_body_becomes_a_generation_request() -> None:
    tool = {
        "type": "function",
        "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    }
    body = msgspec.convert(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}],
                },
                {"role": "tool", "content": "cold", "tool_name": "weather"},
            ],
            "tools": [tool],
            "options": {"temperature": 0, "num_predict": 9, "stop": ["\n\n"]},
            "logprobs": True,
            "top_logprobs": 2,
        },
        wire.ChatRequest,
    )
    req = requests.chat_request(body, "m:latest", 4096, "r9", GrammarCache())
    assert (req.id, req.model, req.max_tokens, req.stop, req.logprobs, req.fit_context) == (
        "r9",
        "m:latest",  # the served name it resolved to
        9,
        ("\n\n",),
        2,
        True,  # Ollama fills the context rather than refusing a large num_predict
    )
    assert req.sampling.temperature == 0.0 and [t.name for t in req.tools] == ["weather"]
    user, assistant, result = req.messages or ()
    assert (user.role, user.content, result.role, result.content) == ("user", "weather?", "tool", "cold")
    (call,) = assistant.tool_calls
    assert (call.name, msgspec.json.decode(call.arguments)) == ("weather", {"city": "Oslo"})
    formatted = requests.chat_request(
        msgspec.convert(
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "format": "json"}, wire.ChatRequest
        ),
        "m",
        4096,
        "r10",
        GrammarCache(),
    )
    assert formatted.grammar is not None  # format: json constrains the answer
