"""Model store and management against a real `herd serve`: the official `ollama` client for every management method
(list, show, ps, pull with progress, create from an uploaded blob, copy, delete), a loopback hub for pulls, and raw
httpx for malformed and hostile requests (no file outside the models directory is created or removed)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import llama_cpp as L
import ollama
import pytest
from herd.api.models.gguf import FILE_TYPES

from tests.conftest import MODEL, HerdServer, free_port

OWNER_REPO = "herd-test/SmolLM2-135M-GGUF"
PULLED = f"hf.co/{OWNER_REPO}:Q4_1"
CHUNK = 1 << 20


class Hub:
    """A loopback stand-in for a Hugging Face style hub: the repo listing API and /resolve/main/ with redirects and
    Range requests. `Q8_0` is listed with a wrong sha256; `throttle` slows the download so a client can hang up."""

    def __init__(self, gguf: bytes) -> None:
        self.gguf = gguf
        self.sha = hashlib.sha256(gguf).hexdigest()
        self.ranges: list[str] = []
        self.throttle = 0.0
        self.port = free_port()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == f"/api/models/{OWNER_REPO}":
                    siblings = [
                        {"rfilename": "README.md", "size": 10},
                        {"rfilename": "SmolLM2-135M-Q4_1.gguf", "size": len(hub.gguf),
                         "lfs": {"sha256": hub.sha, "size": len(hub.gguf)}},
                        {"rfilename": "SmolLM2-135M-Q8_0.gguf", "size": len(hub.gguf),
                         "lfs": {"sha256": "0" * 64, "size": len(hub.gguf)}},
                    ]  # fmt: skip
                    return self._send(200, json.dumps({"id": OWNER_REPO, "siblings": siblings}).encode())
                if path.startswith(f"/{OWNER_REPO}/resolve/main/"):
                    self.send_response(302)
                    self.send_header("Location", "/cdn/" + path.rsplit("/", 1)[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if path.startswith("/cdn/") and path.endswith(".gguf"):
                    return self._file()
                return self._send(404, b"{}")

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _file(self) -> None:
                data, start = hub.gguf, 0
                requested = self.headers.get("Range")
                if requested:
                    hub.ranges.append(requested)
                    start = int(requested.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                try:
                    for offset in range(start, len(data), CHUNK):
                        self.wfile.write(data[offset : offset + CHUNK])
                        if hub.throttle:
                            time.sleep(hub.throttle)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def gguf(model_path: str) -> bytes:
    return Path(model_path).read_bytes()


@pytest.fixture(scope="module")
def hub(gguf: bytes) -> Iterator[Hub]:
    h = Hub(gguf)
    yield h
    h.close()


@pytest.fixture(scope="module")
def jail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the models directory and a victim file beside it: traversal would land here."""
    root = tmp_path_factory.mktemp("jail")
    (root / "victim.txt").write_text("do not touch")
    return root


@pytest.fixture(scope="module")
def models_dir(jail: Path) -> Path:
    return jail / "models"


@pytest.fixture(scope="module")
def srv(redis_port: int, hub: Hub, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    env = {
        "HERD_MODELS_DIR": str(models_dir),
        "HERD_HF_ENDPOINT": hub.url,
        "HERD_PULL_ALLOW_PRIVATE": "true",  # the hub is on loopback
        "HERD_PULL_ALLOW": f"{hub.url}/cdn/",
        "HERD_MAX_SEQS": "2",
        "HERD_SPEC_MIN": "2",  # only the model with a draft speculates; a model drafting for itself never pays
    }
    server = HerdServer(redis_port, db=14, log_path=tmp_path_factory.mktemp("store") / "serve.log", **env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(srv: HerdServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=srv.base_url, timeout=300) as c:
        yield c


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            stat = (Path(dirpath) / f).stat()
            found[str(Path(dirpath) / f)] = (stat.st_size, stat.st_mtime_ns)
    return found


def wait_for(predicate: object, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.5)
    return False


# ---- the bundled model in the store ------------------------------------------------------------------------------


def test_bundled_model_is_listed_by_digest_without_a_copy(client: ollama.Client, gguf: bytes, models_dir: Path) -> None:
    models = {m.model: m for m in client.list().models}
    assert models[MODEL].digest == hashlib.sha256(gguf).hexdigest()
    assert models[MODEL].size == len(gguf)
    assert models[MODEL].details is not None and models[MODEL].details.quantization_level == "Q4_1"
    assert list((models_dir / "blobs").iterdir()) == []  # referenced in place, not copied
    assert len(list((models_dir / "manifests").iterdir())) == 1


def test_show_bundled(client: ollama.Client) -> None:
    shown = client.show(MODEL)
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "llama"
    assert shown.capabilities == ["completion"]
    assert "FROM smollm2:135m" in (shown.modelfile or "")


# ---- create from an uploaded blob, serve it on demand, copy, delete ---------------------------------------------


def test_create_from_blob_then_chat_loads_it_on_demand(client: ollama.Client, srv: HerdServer, model_path: str) -> None:
    digest = client.create_blob(model_path)
    assert httpx.head(f"{srv.base_url}/api/blobs/{digest}").status_code == 200
    steps = list(
        client.create(
            model="terse:v1",
            files={"model.gguf": digest},
            system="You answer in one word.",
            parameters={"temperature": 0, "num_predict": 8, "stop": ["\n\n"]},
            stream=True,
        )
    )
    assert [s.status for s in steps][-2:] == ["writing manifest", "success"]
    assert f"using existing layer {digest}" in [s.status for s in steps]
    listed = {m.model: m for m in client.list().models}
    assert listed["terse:v1"].digest == digest.removeprefix("sha256:")

    shown = client.show("terse:v1")
    assert shown.parameters is not None
    assert [line.split() for line in shown.parameters.splitlines()] == [
        ["num_predict", "8"],
        ["stop", '"\\n\\n"'],
        ["temperature", "0"],
    ]
    assert 'SYSTEM """You answer in one word."""' in (shown.modelfile or "")
    raw = httpx.post(f"{srv.base_url}/api/show", json={"model": "terse:v1"}).json()
    assert raw["system"] == "You answer in one word."

    assert "terse:v1" not in {m.model for m in client.ps().models}  # not loaded until asked for
    reply = client.chat(model="terse:v1", messages=[{"role": "user", "content": "Name a color."}], keep_alive="10m")
    assert reply.message.content
    assert reply.eval_count is not None and reply.eval_count <= 8  # the model's num_predict parameter applied
    running = {m.model: m for m in client.ps().models}
    assert "terse:v1" in running
    expires = running["terse:v1"].expires_at
    assert expires is not None and expires.year < 9999  # an on-demand model has a real expiry
    assert running[MODEL].expires_at is not None and running[MODEL].expires_at.year == 9999  # configured: pinned

    # keep_alive 0 on a request unloads the model once it is done, as in Ollama.
    client.generate(model="terse:v1", prompt="Hi", keep_alive=0)
    assert wait_for(lambda: "terse:v1" not in {m.model for m in client.ps().models})
    # ... and the next request loads it again without a restart.
    again = client.generate(model="terse:v1", prompt="Say yes.", options={"num_predict": 2}, keep_alive=0)
    assert again.done


def test_load_and_unload_with_an_empty_request(client: ollama.Client) -> None:
    loaded = client.generate(model="terse:v1", keep_alive="1m")
    assert loaded.done_reason == "load"
    assert "terse:v1" in {m.model for m in client.ps().models}
    unloaded = client.generate(model="terse:v1", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert wait_for(lambda: "terse:v1" not in {m.model for m in client.ps().models})


def test_openai_models_list_reads_the_store(srv: HerdServer) -> None:
    ids = {m["id"] for m in httpx.get(f"{srv.base_url}/v1/models").json()["data"]}
    assert {"terse:v1", MODEL} <= ids


def test_create_from_an_existing_model(client: ollama.Client) -> None:
    client.create(model="pirate", from_="terse:v1", system="Talk like a pirate.", parameters={"temperature": 0.5})
    shown = client.show("pirate")
    assert 'SYSTEM """Talk like a pirate."""' in (shown.modelfile or "")
    assert shown.parameters is not None and "num_predict" in shown.parameters  # inherited from terse:v1
    assert "temperature                    0.5" in shown.parameters
    client.delete("pirate")


def test_create_from_a_modelfile(client: ollama.Client, srv: HerdServer) -> None:
    """What clients before Ollama 0.5 send: the Modelfile text itself."""
    text = 'FROM smollm2:135m\nSYSTEM """Be brief."""\nPARAMETER num_predict 4\nPARAMETER stop "END"\n'
    resp = httpx.post(f"{srv.base_url}/api/create", json={"model": "brief", "modelfile": text, "stream": False})
    assert resp.status_code == 200 and resp.json() == {"status": "success"}
    shown = client.show("brief")
    assert 'SYSTEM """Be brief."""' in (shown.modelfile or "")
    assert "PARAMETER num_predict 4" in (shown.modelfile or "") and 'PARAMETER stop "END"' in (shown.modelfile or "")
    client.delete("brief")
    for bad in ("FROM /etc/passwd", "FROM ./model.gguf", "FROM smollm2:135m\nADAPTER ./lora.gguf"):
        resp = httpx.post(f"{srv.base_url}/api/create", json={"model": "bad", "modelfile": bad})
        assert resp.status_code == 400, bad


def test_copy_and_delete_collect_only_unreferenced_blobs(client: ollama.Client, models_dir: Path) -> None:
    digest = next(m.digest for m in client.list().models if m.model == "terse:v1")
    blob = models_dir / "blobs" / f"sha256-{digest}"
    assert client.copy("terse:v1", "terse:copy").status == "success"
    assert 'SYSTEM """You answer in one word."""' in (client.show("terse:copy").modelfile or "")
    assert client.delete("terse:v1").status == "success"
    assert blob.exists()  # still used by the copy
    assert client.delete("terse:copy").status == "success"
    assert not blob.exists()
    names = {m.model for m in client.list().models}
    assert "terse:v1" not in names and "terse:copy" not in names
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("terse:v1")
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        client.copy("nope:1", "other:1")
    assert err.value.status_code == 404


def test_deleting_a_loaded_model_unloads_it(client: ollama.Client) -> None:
    client.create(model="doomed", from_=MODEL)  # the bundled file by reference: nothing uploaded
    client.generate(model="doomed", prompt="Hi", options={"num_predict": 1}, keep_alive="10m")
    assert "doomed:latest" in {m.model for m in client.ps().models}
    client.delete("doomed")
    assert wait_for(lambda: "doomed:latest" not in {m.model for m in client.ps().models})
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="doomed", prompt="Hi")
    assert err.value.status_code == 404


def test_a_draft_model_in_the_manifest_speculates(client: ollama.Client, srv: HerdServer, model_path: str) -> None:
    """A second GGUF named draft*.gguf makes the model speculate; Ollama's default sampling (repeat_penalty 1.1)
    drafts like any other."""
    digest = client.create_blob(model_path)  # the only GGUF with this vocabulary here: the model drafts for itself
    client.create(model="drafted", from_=MODEL, files={"draft.gguf": digest})
    body = {
        "model": "drafted",
        "prompt": "Repeat exactly: one two three four five six seven eight nine ten.",
        "stream": False,
        "keep_alive": 0,
        "options": {"temperature": 0, "num_predict": 24},
    }
    final = httpx.post(f"{srv.base_url}/api/generate", json=body, timeout=600).json()
    assert final["done"] and final["draft_count"] >= final["draft_accepted_count"] > 0, final
    client.delete("drafted")
    assert wait_for(lambda: "drafted:latest" not in {m.model for m in client.ps().models})


def test_create_refuses_what_herd_does_not_do(client: ollama.Client, srv: HerdServer) -> None:
    with pytest.raises(ollama.ResponseError, match="needs an F16, BF16 or F32 model; this one is Q4_1") as err:
        client.create(model="q", from_=MODEL, quantize="q4_K_M")  # the bundled model is quantized already
    assert err.value.status_code == 400
    with pytest.raises(ollama.ResponseError, match="not found"):
        client.create(model="q", files={"m.gguf": "sha256:" + "1" * 64})
    with pytest.raises(ollama.ResponseError, match="unknown parameter"):
        client.create(model="q", from_=MODEL, parameters={"mirostat_tau_typo": 1})
    # A blob that is not a GGUF is refused when a model is made of it.
    data = b"not a model"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.post(f"{srv.base_url}/api/blobs/{digest}", content=data).status_code == 201
    with pytest.raises(ollama.ResponseError, match="not a GGUF"):
        client.create(model="q", files={"m.gguf": digest})
    with pytest.raises(ollama.ResponseError):
        client.delete(MODEL)  # configured models stay


def test_a_model_that_fails_to_load_fails_its_requests(client: ollama.Client, srv: HerdServer, gguf: bytes) -> None:
    """A truncated GGUF passes the header check but not llama.cpp: the request fails instead of waiting forever."""
    broken = gguf[: 4 << 20]
    digest = "sha256:" + hashlib.sha256(broken).hexdigest()
    assert httpx.post(f"{srv.base_url}/api/blobs/{digest}", content=broken).status_code == 201
    client.create(model="broken", files={"model.gguf": digest})
    with pytest.raises(ollama.ResponseError, match="failed to load") as err:
        client.chat(model="broken", messages=[{"role": "user", "content": "Hi"}])
    assert err.value.status_code == 500
    assert "broken:latest" not in {m.model for m in client.ps().models}
    client.delete("broken")


def test_blob_upload_with_a_wrong_digest_is_refused(srv: HerdServer, models_dir: Path) -> None:
    before = snapshot(models_dir / "blobs")
    resp = httpx.post(f"{srv.base_url}/api/blobs/sha256:{'2' * 64}", content=b"something else")
    assert resp.status_code == 400 and "digest mismatch" in resp.json()["error"]
    assert snapshot(models_dir / "blobs") == before
    assert httpx.head(f"{srv.base_url}/api/blobs/sha256:{'2' * 64}").status_code == 404


# ---- pull -----------------------------------------------------------------------------------------------------


def test_pull_from_the_hub_with_progress(client: ollama.Client, hub: Hub, gguf: bytes) -> None:
    events = list(client.pull(PULLED, stream=True))
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    progress = [e for e in events if (e.status or "").startswith("pulling ") and e.digest]
    assert progress and {e.status for e in progress} == {f"pulling {hub.sha[:12]}"}
    assert all(e.digest == f"sha256:{hub.sha}" and e.total == len(gguf) for e in progress)
    assert progress[-1].completed == len(gguf)
    assert [e.completed for e in progress] == sorted(e.completed or 0 for e in progress)
    listed = {m.model: m for m in client.list().models}
    assert listed[PULLED].digest == hub.sha
    # Servable at once, without a restart.
    reply = client.generate(model=PULLED, prompt="Say hi.", options={"num_predict": 4, "temperature": 0}, keep_alive=0)
    assert reply.done and reply.eval_count


def test_pull_without_streaming_gives_one_object(client: ollama.Client) -> None:
    final = client.pull(PULLED)
    assert final.status == "success"


def test_pull_with_a_wrong_hub_digest_leaves_nothing(client: ollama.Client, models_dir: Path) -> None:
    blobs = snapshot(models_dir / "blobs")
    with pytest.raises(ollama.ResponseError, match="digest mismatch"):
        list(client.pull(f"hf.co/{OWNER_REPO}:Q8_0", stream=True))
    assert f"hf.co/{OWNER_REPO}:Q8_0" not in {m.model for m in client.list().models}
    assert snapshot(models_dir / "blobs") == blobs
    assert list((models_dir / "tmp").glob("*.partial")) == []
    with pytest.raises(ollama.ResponseError) as err:
        client.pull(f"hf.co/{OWNER_REPO}:Q2_K")
    assert err.value.status_code == 404


def pull_once(client: ollama.Client) -> str:
    try:
        return str(client.pull(PULLED).status)
    except ollama.ResponseError as exc:
        if "being pulled already" in exc.error:
            return "busy"
        raise


def test_a_killed_pull_leaves_no_model_and_resumes(
    client: ollama.Client, srv: HerdServer, hub: Hub, models_dir: Path
) -> None:
    if PULLED in {m.model for m in client.list().models}:
        client.delete(PULLED)
    # A worker that served it (an earlier test loaded it) keeps it listed until it has unloaded.
    assert wait_for(lambda: PULLED not in {m.model for m in client.list().models}, timeout=30)
    assert not (models_dir / "blobs" / f"sha256-{hub.sha}").exists()
    hub.throttle, hub.ranges[:] = 0.05, []
    try:
        body = {"model": PULLED}
        with httpx.stream("POST", f"{srv.base_url}/api/pull", json=body, timeout=60) as resp:
            for line in resp.iter_lines():
                if json.loads(line).get("completed"):
                    break  # hang up mid-download
        # The hub stays slow until these checks are done: the server notices the hang-up only at its next write,
        # and at full speed a quiet machine finished the download before that.
        assert wait_for(lambda: any((models_dir / "tmp").glob("*.partial")), timeout=30)
        assert PULLED not in {m.model for m in client.list().models}
        assert not (models_dir / "blobs" / f"sha256-{hub.sha}").exists()
    finally:
        hub.throttle = 0.0
    # The server notices the hang-up at its next write; until then the first pull still holds the file.
    assert wait_for(lambda: pull_once(client) != "busy")
    assert PULLED in {m.model for m in client.list().models}
    assert hub.ranges and int(hub.ranges[-1].removeprefix("bytes=").split("-")[0]) > 0  # resumed, not restarted
    assert PULLED in {m.model for m in client.list().models}
    assert list((models_dir / "tmp").glob("*.partial")) == []


def test_pull_an_allow_listed_url(client: ollama.Client, srv: HerdServer, hub: Hub) -> None:
    events = list(client.pull(f"{hub.url}/cdn/SmolLM2-135M-Q4_1.gguf", stream=True))
    assert [e.status for e in events][-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    listed = {m.model: m for m in client.list().models}
    assert listed["smollm2-135m-q4_1:latest"].digest == hub.sha
    client.delete("smollm2-135m-q4_1")
    resp = httpx.post(f"{srv.base_url}/api/pull", json={"model": f"{hub.url}/elsewhere/x.gguf"})
    assert resp.status_code == 400 and "HERD_PULL_ALLOW" in resp.json()["error"]


# ---- hostile input -----------------------------------------------------------------------------------------------

BAD_NAMES = [
    "../../etc/passwd",
    "../victim.txt",
    "..",
    "/etc/passwd",
    "/tmp/evil:latest",
    "%2e%2e%2fvictim.txt",
    "..%2f..%2fvictim.txt",
    "a\x00b",
    "m:../../x",
    "x" * 81,
    "a/b/c/d",
    "C:\\Windows\\x",
]
BAD_DIGESTS = [
    "sha256:..%2f..%2fvictim.txt",
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "sha256:" + "A" * 64,
    "a" * 64,
    "md5:" + "a" * 32,
    "sha256:%2e%2e",
    "..",
    "%2e%2e%2f%2e%2e%2fvictim.txt",
]


def test_hostile_names_and_digests_touch_nothing(srv: HerdServer, jail: Path, models_dir: Path) -> None:
    before = snapshot(jail)
    base = srv.base_url
    seen = set()
    for name in BAD_NAMES:
        for method, path, body in (
            ("POST", "/api/create", {"model": name, "from": MODEL}),
            ("POST", "/api/create", {"model": "ok:1", "from": name}),
            ("POST", "/api/copy", {"source": MODEL, "destination": name}),
            ("POST", "/api/copy", {"source": name, "destination": "ok:2"}),
            ("DELETE", "/api/delete", {"model": name}),
            ("POST", "/api/pull", {"model": name}),
            ("POST", "/api/pull", {"model": f"hf.co/{name}"}),
            ("POST", "/api/show", {"model": name}),
        ):
            resp = httpx.request(method, base + path, json=body, timeout=30)
            seen.add(resp.status_code)
            assert resp.status_code in (400, 404), (method, path, body, resp.status_code, resp.text)
            assert "error" in resp.json()
    assert 400 in seen
    for digest in BAD_DIGESTS:
        for method in ("HEAD", "POST"):
            resp = httpx.request(method, f"{base}/api/blobs/{digest}", content=b"x", timeout=30)
            assert resp.status_code in (400, 404, 405), (method, digest, resp.status_code)
        files = {"../../victim.txt": digest, "/etc/passwd": digest}
        resp = httpx.post(f"{base}/api/create", json={"model": "evil:1", "files": files}, timeout=30)
        assert resp.status_code == 400
    # File labels are labels: a traversal in one opens nothing and writes nothing outside the store.
    resp = httpx.post(
        f"{base}/api/create", json={"model": "evil:2", "files": {"../../victim.gguf": f"sha256:{'3' * 64}"}}
    )
    assert resp.status_code == 400 and "not found" in resp.json()["error"]
    # Pull sources outside the allow-list, and a URL pull with the list empty.
    for source in ("https://169.254.169.254/latest/x.gguf", f"{srv.base_url}/x.gguf", "file:///etc/passwd"):
        resp = httpx.post(f"{base}/api/pull", json={"model": source})
        assert resp.status_code == 400, source
    after = snapshot(jail)
    assert (jail / "victim.txt").read_text() == "do not touch"
    outside = {p for p in set(before) | set(after) if not p.startswith(str(models_dir) + os.sep)}
    assert {p: before.get(p) for p in outside} == {p: after.get(p) for p in outside}
    # Inside the store only the temp area may change (nothing was listed, no blob written).
    inside = {p for p in set(before) | set(after) if p not in outside and f"{os.sep}tmp{os.sep}" not in p}
    assert {p: before.get(p) for p in inside} == {p: after.get(p) for p in inside}


def test_malformed_management_bodies(srv: HerdServer) -> None:
    for path, body in (
        ("/api/create", b"{"),
        ("/api/create", b'{"model": 3}'),
        ("/api/create", b'{"model": "m", "files": ["x"]}'),
        ("/api/copy", b'{"source": "smollm2:135m"}'),
        ("/api/pull", b'{"model": ""}'),
    ):
        resp = httpx.post(f"{srv.base_url}{path}", content=body, timeout=30)
        assert resp.status_code == 400, (path, body, resp.text)
        assert isinstance(resp.json()["error"], str)


# ---- quantize on create ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def f16_path(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The bundled Q4_1 model dequantized to F16 (llama.cpp's quantize API, allowing requantization)."""
    path = tmp_path_factory.mktemp("f16") / "smollm2-f16.gguf"
    params = L.llama_model_quantize_default_params()
    params.ftype = L.LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True
    assert L.llama_model_quantize(model_path.encode(), str(path).encode(), params) == 0
    return str(path)


def test_create_quantizes_an_f16_model_which_then_answers(client: ollama.Client, f16_path: str) -> None:
    digest = client.create_blob(f16_path)
    client.create(model="smol-f16", files={"model.gguf": digest})
    assert client.show("smol-f16").details.quantization_level == "F16"  # type: ignore[union-attr]
    for wanted, level in (("q4_0", "Q4_0"), ("Q8_0", "Q8_0")):
        name = f"smol-{level.lower()}"
        steps = [s.status for s in client.create(model=name, from_="smol-f16", quantize=wanted, stream=True)]
        assert steps[0] == f"quantizing F16 model to {level}"
        assert steps[1].startswith("creating new layer sha256:") and steps[-2:] == ["writing manifest", "success"]
        listed = {m.model: m for m in client.list().models}[f"{name}:latest"]
        assert listed.details is not None and listed.details.quantization_level == level
        assert listed.digest == steps[1].removeprefix("creating new layer sha256:")
        reply = client.chat(
            model=name,
            messages=[{"role": "user", "content": "Name a colour."}],
            options={"temperature": 0, "num_predict": 8},
            keep_alive=0,
        )
        assert reply.message.content and reply.eval_count
    sizes = {m.model: m.size for m in client.list().models}
    assert sizes["smol-q4_0:latest"] < sizes["smol-q8_0:latest"] < sizes["smol-f16:latest"]
    with pytest.raises(ollama.ResponseError, match="unsupported quantization type 'iq2_xs'") as err:
        client.create(model="q", from_="smol-f16", quantize="iq2_xs")  # needs an importance matrix
    assert err.value.status_code == 400
    with pytest.raises(ollama.ResponseError, match="this one is Q8_0"):
        client.create(model="q", from_="smol-q8_0", quantize="q4_0")
    for name in ("smol-f16", "smol-q4_0", "smol-q8_0"):
        client.delete(name)


def test_file_type_names_follow_llama_cpp() -> None:
    """/api/show and /api/tags name quantization levels as llama.cpp's llama_ftype does."""
    prefix = "LLAMA_FTYPE_MOSTLY_"
    known = {getattr(L, n): n.removeprefix(prefix) for n in dir(L) if n.startswith(prefix)}
    known[L.LLAMA_FTYPE_ALL_F32] = "F32"
    assert known == FILE_TYPES
