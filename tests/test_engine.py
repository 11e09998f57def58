"""workers/engine.py against the real model, in process: what its samplers draw."""

from __future__ import annotations

from collections.abc import Iterator

import llama_cpp as L
import numpy as np
import pytest
from herd.config import ModelConfig
from herd.inference import SamplingParams
from herd.workers.engine import Engine

PROMPTS = ("The capital of France is", "Once upon a time", "def fibonacci(n):", "1, 2, 3,")


@pytest.fixture(scope="module")
def engine(model_path: str) -> Iterator[Engine]:
    engine = Engine(ModelConfig(name="m", path=model_path), max_seqs=len(PROMPTS), n_batch=64, n_threads=0)
    yield engine
    engine.close()


def test_a_greedy_logit_bias_draws_what_llama_cpps_own_sampler_draws(engine: Engine) -> None:
    # A greedy request with a logit bias is sampled by an argmax over the biased logits, not by llama.cpp's chain
    # (which copies the whole vocabulary for every token); the token must be the chain's, whatever the bias does.
    for seq, prompt in enumerate(PROMPTS):
        tokens = engine.tokenize(prompt, add_special=True)
        engine.decode(tokens, range(len(tokens)), [seq] * len(tokens), [False] * (len(tokens) - 1) + [True])
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(engine._ctx, len(tokens) - 1), shape=(engine.n_vocab,))
        top, second, low = (int(t) for t in np.argsort(logits)[::-1][[0, 1, 500]])
        biases = [
            ((top, -100.0),),  # bans the likeliest token
            ((low, 50.0),),  # lifts an unlikely one above all others
            ((top, -1.0), (top, -1.0), (second, 0.5)),  # two entries for one token add up
            ((engine.n_vocab + 5, 100.0), (-1, 100.0), (0, -100.0), (2, -100.0)),  # ids outside the vocabulary
        ]
        for bias in biases:
            params = SamplingParams(temperature=0.0, logit_bias=bias)
            ours = engine.new_sampler(params)
            assert ours.handle is None  # the argmax, not a chain
            chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
            entries = (L.llama_logit_bias * len(bias))(*(L.llama_logit_bias(t, b) for t, b in bias))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_logit_bias(engine.n_vocab, len(bias), entries))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            expected = int(L.llama_sampler_sample(chain, engine._ctx, len(tokens) - 1))
            L.llama_sampler_free(chain)
            assert engine.sample(ours, len(tokens) - 1) == expected, (prompt, bias)
            engine.free_sampler(ours)
        assert engine.sample(engine.new_sampler(SamplingParams(temperature=0.0)), len(tokens) - 1) == top
