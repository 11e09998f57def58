"""Per-model llama.cpp load settings (GPU layers, main GPU, tensor split, flash attention, KV cache types,
context): parsed from HERD_MODELS entries and HERD_* defaults, and applied by a real worker (CPU build here:
what can be seen is the KV cache type and the context llama.cpp reports)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from herd.config import ModelConfig, load_settings

from tests.conftest import HerdServer


def test_herd_models_entries_carry_their_own_settings_over_the_defaults() -> None:
    env = {
        "HERD_MODELS": "big=/m/big.gguf?n_gpu_layers=999&main_gpu=1&tensor_split=3:1&flash_attn=1"
        "&type_k=q8_0&type_v=q4_0&n_ctx=8192,small=/m/small.gguf",
        "HERD_N_CTX": "1024",
        "HERD_TYPE_K": "f16",
        "HERD_TENSOR_SPLIT": "1,1",
    }
    big, small = load_settings(env).models
    assert big == ModelConfig(
        name="big",
        path="/m/big.gguf",
        n_ctx=8192,
        n_gpu_layers=999,
        main_gpu=1,
        flash_attn=True,
        tensor_split=(3.0, 1.0),
        type_k="q8_0",
        type_v="q4_0",
    )
    assert small == ModelConfig(name="small", path="/m/small.gguf", n_ctx=1024, type_k="f16", tensor_split=(1.0, 1.0))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("a=/m/a.gguf?n_gpu=3", "unknown option 'n_gpu'"),
        ("a=/m/a.gguf?type_k=q9", "type_k"),
        ("a=/m/a.gguf?flash_attn=maybe", "flash_attn"),
        ("a=/m/a.gguf?tensor_split=1:x", "tensor_split"),
        ("a", "NAME=PATH"),
    ],
)
def test_bad_model_settings_are_refused_with_the_option_named(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_settings({"HERD_MODELS": entry})


@pytest.fixture(scope="module")
def tuned(redis_port: int, model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    entry = f"tuned={model_path}?n_ctx=512&flash_attn=1&type_k=q8_0&type_v=q8_0&tensor_split=1&n_gpu_layers=0"
    srv = HerdServer(
        redis_port,
        db=1,
        log_path=tmp_path_factory.mktemp("gpu") / "serve.log",
        HERD_MODELS=entry,
        HERD_MAX_SEQS="2",
        HERD_LLAMA_LOG="1",  # llama.cpp's own lines (the KV cache it built) go to the log
        HERD_LOG_FORMAT="text",
    )
    yield srv
    srv.stop()


def test_a_worker_loads_the_model_with_its_settings(tuned: HerdServer) -> None:
    (worker,) = tuned.workers()
    assert worker.models == ("tuned",) and worker.n_ctx == 512
    with openai.OpenAI(base_url=f"{tuned.base_url}/v1", api_key="unused", timeout=120, max_retries=0) as api:
        done = api.completions.create(model="tuned", prompt="One, two,", max_tokens=8, temperature=0)
    assert done.usage is not None and done.usage.completion_tokens > 0
    log = tuned.log_path.read_text()
    # llama.cpp describes the cache it allocated: both halves quantized as configured.
    assert "K (q8_0)" in log and "V (q8_0)" in log, log[-3000:]
