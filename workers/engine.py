"""The only `import llama_cpp`: one model, one context shared by up to max_seqs sequences, low-level batch API.

Not thread-safe by design: exactly one thread (the batcher's engine thread) calls into an Engine.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
from collections.abc import Sequence
from typing import Any, cast

import llama_cpp as L
import numpy as np
import numpy.typing as npt
from herd.config import ModelConfig
from herd.errors import EngineError, InvalidRequest
from herd.inference import Grammar, SamplingParams, TokenLogprob
from herd.workers.protocol import Sampler

log = logging.getLogger("herd.worker.engine")

# Keep llama.cpp's own chatter off stderr unless asked for; the callback must outlive the process's use of it.
_LOG_CALLBACK = L.llama_log_callback(lambda level, text, user_data: None)


def _usable_cpus() -> int:
    """The CPUs this process may run on (a container's cpuset), not the host's count, where the OS can tell."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def extra_buffers(setting: str) -> bool:
    """Whether llama.cpp may lay CPU weights out in its extra buffer types (see ModelConfig.cpu_repack)."""
    if setting != "auto":
        return setting == "on"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return not any(" amx_tile" in line for line in f if line.startswith("flags"))
    except OSError:
        return True


_CANDIDATE = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data
_Bias = tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]  # a greedy sampler's logit bias: tokens, biases


class Engine:
    """A loaded model and its batched context (the EngineLike of workers/protocol.py)."""

    def __init__(self, model: ModelConfig, max_seqs: int, n_batch: int, n_threads: int) -> None:
        if not os.environ.get("HERD_LLAMA_LOG"):
            L.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = model.n_gpu_layers
        mp.main_gpu = model.main_gpu
        mp.use_extra_bufts = extra_buffers(model.cpu_repack)
        if model.tensor_split:
            if len(model.tensor_split) > L.LLAMA_MAX_DEVICES:
                raise EngineError(f"tensor_split of '{model.name}' names more than {L.LLAMA_MAX_DEVICES} devices")
            # An attribute, not a local: llama.cpp reads the array through the pointer while the model loads.
            self._tensor_split = (ctypes.c_float * L.LLAMA_MAX_DEVICES)(*model.tensor_split)
            mp.tensor_split = self._tensor_split
        self._model = L.llama_model_load_from_file(model.path.encode(), mp)
        if not self._model:
            raise EngineError(f"llama.cpp could not load the model file for '{model.name}'")
        self._vocab = L.llama_model_get_vocab(self._model)
        self.n_vocab = L.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_seq = min(model.n_ctx, L.llama_model_n_ctx_train(self._model))
        self.max_seqs = max_seqs
        self.n_batch = n_batch
        threads = n_threads or _usable_cpus()
        cp = L.llama_context_default_params()
        cp.n_ctx = self.n_ctx_seq * max_seqs
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch
        cp.n_seq_max = max_seqs
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.kv_unified = False
        cp.no_perf = True
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if model.flash_attn else L.LLAMA_FLASH_ATTN_TYPE_AUTO
        if model.type_k:  # KvCacheType names are ggml's: q8_0 -> GGML_TYPE_Q8_0
            cp.type_k = getattr(L, f"GGML_TYPE_{model.type_k.upper()}")
        if model.type_v:
            cp.type_v = getattr(L, f"GGML_TYPE_{model.type_v.upper()}")
        self._ctx = L.llama_init_from_model(self._model, cp)
        if not self._ctx:
            raise EngineError(f"llama.cpp could not create a context for '{model.name}'")
        self._mem = L.llama_get_memory(self._ctx)
        self._batch = L.llama_batch_init(n_batch, 0, max_seqs)
        self._piece = ctypes.create_string_buffer(256)
        self.add_bos = bool(L.llama_vocab_get_add_bos(self._vocab))
        self.bos_id = int(L.llama_vocab_bos(self._vocab))  # -1 when the vocabulary has none
        self.chat_template = self._meta("tokenizer.chat_template")
        self.bos_text = self.piece(L.llama_vocab_bos(self._vocab), special=True).decode("utf-8", "replace")
        self.eos_text = self.piece(L.llama_vocab_eos(self._vocab), special=True).decode("utf-8", "replace")
        self._threads = threads
        arch = self._meta("general.architecture") or ""
        pooling = self._meta(f"{arch}.pooling_type")
        self._pooling = int(pooling) if pooling and pooling.isdigit() else None
        self._embed_ctx: Any = None
        self._embed_batch: Any = None
        self.n_embd = int(L.llama_model_n_embd(self._model))

    def _meta(self, key: str) -> str | None:
        size = L.llama_model_meta_val_str(self._model, key.encode(), None, 0)
        if size < 0:
            return None
        buf = ctypes.create_string_buffer(size + 1)
        L.llama_model_meta_val_str(self._model, key.encode(), buf, size + 1)
        return buf.value.decode("utf-8", "replace")

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        data = text.encode()
        capacity = len(data) + 16
        buf = (L.llama_token * capacity)()
        n = L.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, True)
        if n < 0:
            raise InvalidRequest("the prompt could not be tokenized", param="prompt")
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        n = L.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
            return buf.raw[:n]
        return self._piece.raw[:n]

    def is_eog(self, token: int) -> bool:
        return bool(L.llama_vocab_is_eog(self._vocab, token))

    def is_control(self, token: int) -> bool:
        return bool(L.llama_vocab_is_control(self._vocab, token))

    def new_sampler(self, params: SamplingParams, grammar: Grammar | None = None, seed_offset: int = 0) -> Sampler:
        """A per-sequence sampler chain: an opaque handle for sample() and free_sampler().

        `seed_offset` gives each choice of an n > 1 request its own random stream from the one seed.
        """
        constraint = None
        if grammar is not None:
            constraint = self._grammar_sampler(grammar)
            if not constraint:
                raise InvalidRequest("llama.cpp could not parse the grammar for this request", param="response_format")
        penalties = params.repeat_penalty != 1.0 or params.frequency_penalty or params.presence_penalty
        if params.temperature <= 0.0 and not penalties:
            # Greedy: an argmax over a view of the logits is 4x cheaper than the chain (which copies the vocabulary);
            # with a logit bias, 13x (a copy of the logits plus the bias, ~9 us, vs the chain's ~125 us per token).
            return Sampler(None, constraint, self._greedy_bias(params.logit_bias))
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        add = L.llama_sampler_chain_add
        if params.logit_bias:
            biases = (L.llama_logit_bias * len(params.logit_bias))(
                *(L.llama_logit_bias(token, bias) for token, bias in params.logit_bias)
            )
            add(chain, L.llama_sampler_init_logit_bias(self.n_vocab, len(params.logit_bias), biases))
        if penalties:
            add(
                chain,
                L.llama_sampler_init_penalties(
                    self.n_vocab,
                    params.repeat_last_n,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                ),
            )
        if params.temperature <= 0.0:
            add(chain, L.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(chain, L.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(chain, L.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(chain, L.llama_sampler_init_min_p(params.min_p, 1))
            if params.typical_p < 1.0:
                add(chain, L.llama_sampler_init_typical(params.typical_p, 1))
            add(chain, L.llama_sampler_init_temp(params.temperature))
            seed = L.LLAMA_DEFAULT_SEED if params.seed is None else (params.seed + seed_offset) & 0xFFFFFFFF
            add(chain, L.llama_sampler_init_dist(seed))
        return Sampler(chain, constraint)

    def _greedy_bias(self, logit_bias: Sequence[tuple[int, float]]) -> _Bias | None:
        """llama.cpp's logit-bias sampler, for a greedy argmax: each entry adds its bias (in float32) to its token's
        logit, entries for one token add up, and ids outside the vocabulary change nothing."""
        entries = [(token, bias) for token, bias in logit_bias if 0 <= token < self.n_vocab]
        if not entries:
            return None
        tokens = np.array([token for token, _ in entries], dtype=np.intp)
        return tokens, np.array([bias for _, bias in entries], dtype=np.float32)

    def _greedy_logits(self, sampler: Sampler, batch_index: int) -> npt.NDArray[np.float32]:
        """The logits at `batch_index` as a greedy sampler sees them: a view, or a biased copy."""
        logits: npt.NDArray[np.float32] = np.ctypeslib.as_array(
            L.llama_get_logits_ith(self._ctx, batch_index), shape=(self.n_vocab,)
        )
        if sampler.bias is None:
            return logits
        tokens, biases = cast(_Bias, sampler.bias)  # what _greedy_bias made
        biased = logits.copy()
        np.add.at(biased, tokens, biases)
        return biased

    def _grammar_sampler(self, grammar: Grammar) -> Any:
        if not grammar.triggers:
            return L.llama_sampler_init_grammar(self._vocab, grammar.gbnf.encode(), b"root")
        # Lazy: free text until a trigger appears; the grammar then applies from the trigger (capture group 1) on.
        patterns = [f"[\\s\\S]*?({re.escape(t)}[\\s\\S]*)".encode() for t in grammar.triggers]
        c_patterns = (ctypes.c_char_p * len(patterns))(*patterns)
        no_tokens = (L.llama_token * 1)()
        return L.llama_sampler_init_grammar_lazy_patterns(
            self._vocab, grammar.gbnf.encode(), b"root", c_patterns, len(patterns), no_tokens, 0
        )

    def sample(self, sampler: Sampler, batch_index: int) -> int:
        """Sample from the logits at `batch_index` of the last decode; the chain (and grammar) record the token."""
        if sampler.grammar is None:
            if sampler.handle is None:
                return int(self._greedy_logits(sampler, batch_index).argmax())  # the first maximum, as llama.cpp's
            return int(L.llama_sampler_sample(sampler.handle, self._ctx, batch_index))
        # A grammar judged over the whole vocabulary costs far more than a decode step; so draw as if
        # unconstrained, ask the grammar about that one token, and only when it refuses draw again with the grammar
        # applied to every candidate (llama.cpp's own server samples the same way).
        token = self._draw(sampler, batch_index, constrained=False)
        if not self._allows(sampler.grammar, token):
            token = self._draw(sampler, batch_index, constrained=True)
        if sampler.handle is not None:
            L.llama_sampler_accept(sampler.handle, token)
        L.llama_sampler_accept(sampler.grammar, token)
        return token

    def _draw(self, sampler: Sampler, batch_index: int, constrained: bool) -> int:
        logits = self._greedy_logits(sampler, batch_index)  # a chain (handle) has the request's bias in it
        if not constrained and sampler.handle is None:
            return int(logits.argmax())
        candidates = np.empty(self.n_vocab, dtype=_CANDIDATE)
        candidates["id"] = np.arange(self.n_vocab, dtype=np.int32)
        candidates["logit"] = logits
        candidates["p"] = 0.0
        array = L.llama_token_data_array(
            data=candidates.ctypes.data_as(L.llama_token_data_p), size=self.n_vocab, selected=-1, sorted=False
        )
        if constrained:
            L.llama_sampler_apply(sampler.grammar, ctypes.byref(array))
        if sampler.handle is None:
            return int(candidates["id"][int(candidates["logit"][: array.size].argmax())])
        L.llama_sampler_apply(sampler.handle, ctypes.byref(array))
        return int(array.data[array.selected].id)

    def _allows(self, grammar: object, token: int) -> bool:
        single = L.llama_token_data(id=token, logit=0.0, p=0.0)
        array = L.llama_token_data_array(data=ctypes.pointer(single), size=1, selected=-1, sorted=False)
        L.llama_sampler_apply(grammar, ctypes.byref(array))
        return bool(np.isfinite(single.logit))

    def logprobs(self, batch_index: int, token: int, top: int) -> TokenLogprob:
        """The model's log-probability of `token` at `batch_index` of the last decode, and the `top` likeliest."""
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(self._ctx, batch_index), shape=(self.n_vocab,))
        peak = float(logits.max())
        lse = peak + float(np.log(np.exp(logits - peak).sum()))
        alternatives: tuple[tuple[bytes, float], ...] = ()
        if top > 0:
            best = np.argpartition(logits, -top)[-top:]
            best = best[np.argsort(logits[best])[::-1]]
            alternatives = tuple((self.piece(int(t)), float(logits[t]) - lse) for t in best)
        return TokenLogprob(self.piece(token), float(logits[token]) - lse, alternatives)

    def fork(self, source: int, target: int) -> None:
        """Make sequence `target` hold a copy of `source`'s KV cells (n > 1 choices share one prefill)."""
        L.llama_memory_seq_rm(self._mem, target, -1, -1)
        L.llama_memory_seq_cp(self._mem, source, target, -1, -1)

    def infill_tokens(self) -> tuple[int, int, int] | None:
        """The fill-in-the-middle prefix, suffix and middle tokens, or None when the model has none."""
        pre, suf, mid = (
            L.llama_vocab_fim_pre(self._vocab),
            L.llama_vocab_fim_suf(self._vocab),
            L.llama_vocab_fim_mid(self._vocab),
        )
        return (int(pre), int(suf), int(mid)) if min(pre, suf, mid) >= 0 else None

    def free_sampler(self, sampler: Sampler) -> None:
        if sampler.handle is not None:
            L.llama_sampler_free(sampler.handle)
        if sampler.grammar is not None:
            L.llama_sampler_free(sampler.grammar)

    def decode(
        self, tokens: Sequence[int], positions: Sequence[int], seq_ids: Sequence[int], logits: Sequence[bool]
    ) -> None:
        """One llama_decode over a mixed batch (decode steps of running sequences plus prefill chunks)."""
        batch = self._batch
        n = len(tokens)
        batch.n_tokens = n
        tok, pos, nseq, sid, want = batch.token, batch.pos, batch.n_seq_id, batch.seq_id, batch.logits
        for i in range(n):
            tok[i] = tokens[i]
            pos[i] = positions[i]
            nseq[i] = 1
            sid[i][0] = seq_ids[i]
            want[i] = logits[i]
        rc = L.llama_decode(self._ctx, batch)
        if rc != 0:
            # 1: no KV slot for the batch; 2: aborted; < 0: fatal. All are engine failures for the batch.
            raise EngineError(f"llama_decode failed with status {rc}")

    # ---- embeddings: a second context on the same weights, pooled per sequence ---------------------------------

    def _embedding_context(self) -> Any:
        if self._embed_ctx is None:
            cp = L.llama_context_default_params()
            cp.n_ctx = cp.n_batch = cp.n_ubatch = self.n_ctx_seq  # a pooled input must fit one micro-batch
            cp.n_seq_max = self.max_seqs
            cp.n_threads = cp.n_threads_batch = self._threads
            cp.embeddings = True
            cp.kv_unified = True
            cp.no_perf = True
            # A generative GGUF declares no pooling (one vector per token): pool by mean, as Ollama does.
            cp.pooling_type = L.LLAMA_POOLING_TYPE_MEAN if self._pooling is None else self._pooling
            ctx = L.llama_init_from_model(self._model, cp)
            if not ctx:
                raise EngineError("llama.cpp could not create an embedding context")
            self._embed_ctx = ctx
            self._embed_batch = L.llama_batch_init(self.n_ctx_seq, 0, self.max_seqs)
            self.n_embd = int(L.llama_model_n_embd(self._model))
        return self._embed_ctx

    def embed(self, inputs: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        """L2-normalised pooled embeddings, one row per input; the inputs together fit one micro-batch."""
        ctx = self._embedding_context()
        batch = self._embed_batch
        n = 0
        for seq_id, tokens in enumerate(inputs):
            for pos, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = pos
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq_id
                batch.logits[n] = True
                n += 1
        batch.n_tokens = n
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            raise EngineError(f"llama_decode failed with status {rc} while embedding")
        out = np.empty((len(inputs), self.n_embd), dtype=np.float32)
        for seq_id in range(len(inputs)):
            ptr = L.llama_get_embeddings_seq(ctx, seq_id)
            if not ptr:
                raise EngineError("llama.cpp returned no pooled embedding")
            out[seq_id] = np.ctypeslib.as_array(ptr, shape=(self.n_embd,))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        normalised: npt.NDArray[np.float32] = out / np.maximum(norms, 1e-12)
        return normalised

    def drop(self, seq_id: int) -> None:
        """Free a sequence's KV cells."""
        L.llama_memory_seq_rm(self._mem, seq_id, -1, -1)

    def trim(self, seq_id: int, keep: int) -> None:
        """Free a sequence's KV cells from position `keep` on."""
        L.llama_memory_seq_rm(self._mem, seq_id, keep, -1)

    def close(self) -> None:
        if self._embed_ctx is not None:
            L.llama_batch_free(self._embed_batch)
            L.llama_free(self._embed_ctx)
        L.llama_batch_free(self._batch)
        L.llama_free(self._ctx)
        L.llama_model_free(self._model)
