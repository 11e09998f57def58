"""api/translate/ollama_replies.py as a unit: NDJSON lines of /api/chat and /api/generate (framed by
api/streaming.py), the final chunk's fields, tool calls and logprobs, read by the `ollama` client's types."""

from __future__ import annotations

import json

import ollama
from herd.api.streaming import ndjson, ndjson_error
from herd.api.translate import ollama_replies
from herd.errors import WorkerLost
from herd.inference import Finished, TokenDelta, TokenLogprob, Usage


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


# The stream and the whole reply as the `ollama` client reads them (its pydantic types, strict).

CALL = '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>'
END = Finished(9, "stop", Usage(4, 3, prompt_eval_ns=100, eval_ns=200, queue_ns=5))


def chat_lines(replies: list[ollama_replies.Reply]) -> list[ollama.ChatResponse]:
    return [ollama.ChatResponse.model_validate(json.loads(ndjson(r)), strict=True) for r in replies]


def test_a_chat_streams_lines_then_a_done_line() -> None:
    reply = ollama_replies.OllamaReply("chat", "m", tools=False, logprobs=False)
    lines = chat_lines(
        [*reply.feed(TokenDelta(1, "Hel", 1)), *reply.feed(TokenDelta(2, "lo", 2)), *reply.finish(END, 999)]
    )
    assert [(line.message.role, line.message.content, line.done) for line in lines] == [
        ("assistant", "Hel", False),
        ("assistant", "lo", False),
        ("assistant", "", True),
    ]
    done = lines[-1]
    assert (done.done_reason, done.total_duration, done.load_duration) == ("stop", 999, 5)
    assert (done.prompt_eval_count, done.prompt_eval_duration, done.eval_count, done.eval_duration) == (4, 100, 3, 200)
    assert all(line.created_at and line.created_at.endswith("Z") for line in lines)


def test_a_tool_call_goes_out_whole_on_one_line() -> None:
    reply = ollama_replies.OllamaReply("chat", "m", tools=True, logprobs=False)
    fed = [line for piece in (CALL[:9], CALL[9:40], CALL[40:]) for line in reply.feed(TokenDelta(1, piece, 1))]
    lines = chat_lines([*fed, *reply.finish(END, 1)])
    calls = [call for line in lines for call in line.message.tool_calls or []]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [("weather", {"city": "Paris"})]
    assert all(not line.message.content for line in lines)
    whole = ollama.ChatResponse.model_validate(json.loads(ndjson(reply.whole(END, 1))), strict=True)
    assert whole.done and [c.function.name for c in whole.message.tool_calls or []] == ["weather"]


def test_generate_whole_reply_with_context_and_logprobs() -> None:
    reply = ollama_replies.OllamaReply("generate", "m", tools=False, logprobs=True)
    items = (TokenLogprob(b"Hi", -0.5, ((b"Hi", -0.5), (b"Yo", -1.0))),)
    (line,) = reply.feed(TokenDelta(1, "Hi", 1, logprobs=items))
    chunk = ollama.GenerateResponse.model_validate(json.loads(ndjson(line)), strict=True)
    assert chunk.response == "Hi" and chunk.logprobs and chunk.logprobs[0].token == "Hi"
    reply.feed(TokenDelta(2, "!", 1))
    end = Finished(3, "length", Usage(2, 2), tokens=(1, 2, 3, 4))
    whole = ollama.GenerateResponse.model_validate(json.loads(ndjson(reply.whole(end, 7))), strict=True)
    assert (whole.response, whole.done, whole.done_reason, whole.context) == ("Hi!", True, "length", [1, 2, 3, 4])
    assert whole.logprobs is not None and [lp.token for lp in whole.logprobs] == ["Hi"]
    assert [(t.token, t.logprob) for t in whole.logprobs[0].top_logprobs or []] == [("Hi", -0.5), ("Yo", -1.0)]
