"""api/translate/ollama_replies.py as a unit: NDJSON lines of /api/chat and /api/generate (framed by
api/streaming.py), the final chunk's fields."""

from __future__ import annotations

import json

from herd.api.streaming import ndjson, ndjson_error
from herd.api.translate import ollama_replies
from herd.errors import WorkerLost
from herd.inference import Finished, Usage


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
