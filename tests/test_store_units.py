"""Unit tests of pure store logic: name and digest validation, keep_alive, manifests and blob collection, pull picks."""

from __future__ import annotations

import hashlib
import math
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
from herd.api.app import open_store
from herd.api.models.manage import receive_blob
from herd.api.models.modelfile import parse as parse_modelfile
from herd.api.models.names import canonical_name, parse_digest
from herd.api.models.pull import _PublicOnly, _Sibling, pick_file, public_addresses, pull_client, resolve_name
from herd.api.models.sandbox import check_gguf
from herd.api.models.store import Manifest, ModelStore
from herd.config import load_settings
from herd.errors import InvalidRequest, ModelNotFound, Unavailable
from herd.loading import parse_keep_alive

HEX = "ab" * 32


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("smollm2", "smollm2:latest"),
        ("smollm2:135m", "smollm2:135m"),
        ("library/llama3.2:1b", "library/llama3.2:1b"),
        ("hf.co/bartowski/SmolLM2-135M-GGUF:Q4_K_M", "hf.co/bartowski/SmolLM2-135M-GGUF:Q4_K_M"),
        ("a_b-c.d", "a_b-c.d:latest"),
    ],
)
def test_valid_names(name: str, canonical: str) -> None:
    assert canonical_name(name) == canonical


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        "../../etc/passwd",
        "a/../../b",
        "/etc/passwd",
        "%2e%2e%2fetc",
        "..%2f..%2fetc",
        "a\x00b",
        "a\\b",
        "C:\\Windows",
        ".hidden",
        "-flag",
        "x" * 81,
        "a:" + "t" * 81,
        "a:b:c",
        "m:../x",
        "ns.with.dot/model",
        "one/two/three/four",
        "a b",
        "model:",
        "a..b",
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidRequest):
        canonical_name(name)


def test_digests() -> None:
    assert parse_digest(f"sha256:{HEX}") == HEX
    assert parse_digest(f"sha256-{HEX}") == HEX
    for bad in ("sha256:../x", f"sha256:{HEX[:-1]}", f"sha256:{HEX}a", f"sha256:{HEX.upper()}", HEX, f"md5:{HEX}",
                f"sha256:{HEX}\x00", f"sha256:/{HEX[1:]}"):  # fmt: skip
        with pytest.raises(InvalidRequest):
            parse_digest(bad)


def test_keep_alive() -> None:
    assert parse_keep_alive("5m") == 300
    assert parse_keep_alive("1h30m") == 5400
    assert parse_keep_alive("1.5s") == 1.5
    assert parse_keep_alive("300ms") == pytest.approx(0.3)
    assert parse_keep_alive(0) == 0
    assert parse_keep_alive("0") == 0
    assert parse_keep_alive(120) == 120
    assert parse_keep_alive(-1) == math.inf
    assert parse_keep_alive("-1m") == math.inf
    for bad in ("5 minutes", "m", "5x", "", "1h-5m"):
        with pytest.raises(InvalidRequest):
            parse_keep_alive(bad)


def _blob(store: ModelStore, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    temp = store.temp_file()
    temp.write_bytes(data)
    store.commit_blob(temp, digest)
    return digest


def test_store_manifests_and_collection(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models").open()
    shared, own = _blob(store, b"shared"), _blob(store, b"draft")
    store.put(Manifest(name="a:latest", model=shared, size=6, modified_at=time.time()))
    store.put(Manifest(name="b:v1", model=shared, size=6, modified_at=time.time(), draft=own))
    assert set(store.all()) == {"a:latest", "b:v1"}
    assert store.get("a") is not None  # the tag defaults to latest
    # Manifest files are named by the hash of the name: nothing a client sends becomes a path.
    assert {p.name for p in store.manifests.iterdir()} == {hashlib.sha256(n.encode()).hexdigest() for n in store.all()}
    assert store.delete("b:v1") == [own]  # the shared blob is still used by a:latest
    assert store.has_blob(shared) and not store.has_blob(own)
    assert store.delete("a") == [shared]
    assert list(store.blobs.iterdir()) == []
    with pytest.raises(ModelNotFound):
        store.delete("a")
    with pytest.raises(InvalidRequest):  # a manifest never points at a blob that is not there
        store.put(Manifest(name="c:latest", model=f"sha256:{HEX}", size=1, modified_at=time.time()))


def test_store_models_speculate_from_their_manifest_or_herd_speculate(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models").open()
    model, draft = _blob(store, b"model"), _blob(store, b"draft")
    plain = Manifest(name="plain:latest", model=model, size=5, modified_at=time.time())
    drafted = Manifest(name="drafted:v1", model=model, size=5, modified_at=time.time(), draft=draft)
    settings = load_settings({})
    assert store.model_config(plain, settings).speculate == ""
    config = store.model_config(drafted, settings)
    assert (config.speculate, config.draft_path) == ("draft", str(store.blob_path(draft)))
    # HERD_SPECULATE names store models by name:tag, and wins over the manifest's draft.
    settings = load_settings({"HERD_SPECULATE": "plain:latest=lookup;drafted:v1=lookup"})
    assert store.model_config(plain, settings).speculate == "lookup"
    assert (store.model_config(drafted, settings).speculate, store.model_config(drafted, settings).draft_path) == (
        "lookup",
        "",
    )
    with pytest.raises(ValueError, match="HERD_SPECULATE entry"):
        load_settings({"HERD_SPECULATE": "plain:latest=draft"})


def test_a_draft_blob_of_a_model_over_an_external_file_is_kept_then_collected(tmp_path: Path) -> None:
    """A model made `from` the bundled model (an external file) with an uploaded draft: the draft is a store blob."""
    store = ModelStore(tmp_path / "models").open()
    external = tmp_path / "bundled.gguf"
    external.write_bytes(b"bundled")
    base = store.register_file("base:1", external, "bundled")
    draft = _blob(store, b"draft")
    store.put(msgspec.structs.replace(base, name="drafted:latest", draft=draft))
    assert store.collect_blobs(0) == [] and store.has_blob(draft)  # in use: never collected
    assert store.delete("drafted") == [draft]  # its own blob goes with it; the external file stays
    assert not store.has_blob(draft) and external.exists()


def test_store_start_removes_stale_temp_and_orphan_blobs(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models").open()
    orphan, kept = _blob(store, b"orphan"), _blob(store, b"kept")
    store.put(Manifest(name="k:latest", model=kept, size=4, modified_at=time.time()))
    stale, fresh = store.tmp / "pull-old.partial", store.tmp / "pull-new.partial"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    for digest in (orphan, kept):
        os.utime(store.blob_path(digest), (old, old))
    ModelStore(store.root).open()
    assert not stale.exists() and fresh.exists()  # a young partial download is kept to be resumed
    assert not store.has_blob(orphan) and store.has_blob(kept)


def test_manifest_under_a_foreign_file_name_is_ignored(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models").open()
    digest = _blob(store, b"m")
    (store.manifests / "planted").write_text(f'{{"name":"x:latest","model":"{digest}","size":1,"modified_at":0}}')
    assert store.all() == {}


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_receive_blob_verifies_and_caps(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models").open()
    data = b"hello world"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with pytest.raises(InvalidRequest):
        await receive_blob(store, digest, _chunks(b"hello", b" there"), cap=100)
    with pytest.raises(InvalidRequest):
        await receive_blob(store, digest, _chunks(b"hello", b" world"), cap=8)
    assert list(store.blobs.iterdir()) == [] and list(store.tmp.iterdir()) == []
    assert await receive_blob(store, digest, _chunks(b"hello", b" world"), cap=100) is True
    assert store.blob_path(digest).read_bytes() == data
    assert await receive_blob(store, digest, _chunks(b"ignored"), cap=100) is False


def test_pick_file_by_quant() -> None:
    files = [_Sibling(n) for n in ("README.md", "m-Q4_K_M.gguf", "m-Q8_0.gguf", "mmproj-m-f16.gguf", "sub/m-Q2_K.gguf")]
    assert pick_file(files, "q8_0") is not None and pick_file(files, "q8_0").rfilename == "m-Q8_0.gguf"  # type: ignore[union-attr]
    assert pick_file(files, "latest").rfilename == "m-Q4_K_M.gguf"  # type: ignore[union-attr]
    assert pick_file(files, "Q2_K") is None  # split or nested files are not pulled
    assert pick_file(files, "f16") is None  # a vision projector is not a model
    assert pick_file([_Sibling("a-Q8_0.gguf"), _Sibling("b-Q6_K.gguf")], "latest") is None


def test_pull_sources_need_configuration() -> None:
    settings = load_settings({})
    with pytest.raises(InvalidRequest, match="HERD_HF_ENDPOINT"):
        resolve_name("hf.co/owner/repo:Q4_0", settings)
    with pytest.raises(InvalidRequest, match="HERD_PULL_ALLOW"):
        resolve_name("https://example.invalid/m.gguf", settings)
    with pytest.raises(InvalidRequest):
        resolve_name("llama3.2", settings)
    allowed = load_settings({"HERD_PULL_ALLOW": "https://models.example.invalid/pub/"})
    assert resolve_name("https://models.example.invalid/pub/My-Model.Q4_0.gguf", allowed) == (
        "my-model.q4_0:latest",
        "url",
    )
    site = "https://models.example.invalid"
    for bad in (f"{site}/pub/../etc/x.gguf", f"{site}/pub/x.bin", f"{site}/pub/%2e%2e/x.gguf", f"{site}/public/x.gguf"):
        with pytest.raises(InvalidRequest):
            resolve_name(bad, allowed)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "::1", "169.254.169.254", "10.1.2.3", "192.168.0.1", "172.16.0.1", "0.0.0.0"]
)
def test_private_addresses_are_refused_unless_allowed(host: str) -> None:
    with pytest.raises(InvalidRequest):
        public_addresses(host, 443, allow_private=False)
    assert public_addresses(host, 443, allow_private=True)


async def test_pull_connections_to_loopback_never_happen() -> None:
    """The check runs where the connection is made: a listening loopback socket sees no connection attempt."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        with pytest.raises(InvalidRequest):
            await _PublicOnly(allow_private=False).connect_tcp("127.0.0.1", port)
        async with pull_client(load_settings({})) as client:
            for url in (f"http://127.0.0.1:{port}/x.gguf", f"http://localhost:{port}/x.gguf"):
                with pytest.raises(InvalidRequest):
                    await client.get(url)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
        async with pull_client(load_settings({"HERD_PULL_ALLOW_PRIVATE": "true"})) as client:
            with pytest.raises(httpx.HTTPError):  # allowed: it connects (and gets no HTTP answer)
                await client.get(f"http://127.0.0.1:{port}/x.gguf", timeout=0.5)
        conn, _ = listener.accept()
        conn.close()


def test_an_unwritable_store_is_not_fatal(tmp_path: Path) -> None:
    """A pod with a read-only root file system still serves its configured models; management answers 503."""
    (tmp_path / "file").write_text("not a directory")
    store = open_store(load_settings({"HERD_MODELS_DIR": str(tmp_path / "file" / "models")}))
    assert not store.ready and store.all() == {}
    with pytest.raises(Unavailable):
        store.require_ready()


def test_modelfile_parsing() -> None:
    text = '''# a comment
FROM smollm2:135m
PARAMETER temperature 0.2
PARAMETER num_ctx 4096
PARAMETER stop "<|im_end|>"
PARAMETER stop "\\n\\nUser:"
SYSTEM """You are
terse."""
TEMPLATE {{ .System }} {{ .Prompt }}
'''
    parsed = parse_modelfile(text)
    assert parsed.from_ == "smollm2:135m"
    assert parsed.parameters == {"temperature": 0.2, "num_ctx": 4096, "stop": ["<|im_end|>", "\\n\\nUser:"]}
    assert parsed.system == "You are\nterse."
    assert parsed.template == "{{ .System }} {{ .Prompt }}"
    assert parse_modelfile(f"FROM @sha256:{HEX}").files == {"model.gguf": f"sha256:{HEX}"}
    for bad in ("FROM ./model.gguf", "FROM /etc/passwd", "FROM ../../x", "FROM C:\\\\x", "ADAPTER ./lora.gguf",
                "FROM m\nMESSAGE user hi", "FROM m\nPARAMETER bogus 1", "FROM m\nPARAMETER num_ctx lots",
                'SYSTEM """open', "FROM @sha256:../../x", "WHAT is this"):  # fmt: skip
        with pytest.raises(InvalidRequest):
            parse_modelfile(bad)


def _nested_arrays(depth: int) -> bytes:
    """A GGUF header whose one metadata value is an array of an array of ... `depth` deep."""
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"a" + struct.pack("<I", 9)
    return head + struct.pack("<IQ", 9, 1) * depth + struct.pack("<IQ", 4, 0)


def test_gguf_headers_are_checked_in_a_limited_child(tmp_path: Path, model_path: str) -> None:
    check_gguf(Path(model_path), "the bundled model")
    bomb = tmp_path / "deep.gguf"
    bomb.write_bytes(_nested_arrays(200_000))  # exhausts the stack of whoever parses it
    with pytest.raises(InvalidRequest, match="not a GGUF model"):
        check_gguf(bomb, "deep.gguf")
    liar = tmp_path / "liar.gguf"
    liar.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 40) + b"a")
    with pytest.raises(InvalidRequest, match="past the end"):
        check_gguf(liar, "liar.gguf")
    with pytest.raises(InvalidRequest):
        check_gguf(Path(__file__), "a python file")
