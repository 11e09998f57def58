"""The chart as rendered runs: `herd api` and `herd worker` are started with exactly the rendered command, arguments,
environment and volumes, as the pod's user, in a mount namespace whose root filesystem is read-only except for the
volumes the pod declares (the chart's readOnlyRootFilesystem), then probed as the kubelet would and sent requests.

The pod's root is an overlay of this machine's root, remounted read-only, with each declared volume bind-mounted at
its mountPath (emptyDir and PVC: a directory of the test's, group-owned by fsGroup; ConfigMap and Secret: their
rendered items as files); /proc, /dev and /sys are the host's. Needs root (unshare -m, mount, chroot): a missing
capability is a failure, not a skip. The network is the host's, so the API's port is set through the chart's values.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.conftest import MODEL, free_port
from tests.test_helm import Manifest, by_kind, container, manifests, pod_spec, render

DB = 10
VENV_BIN = str(Path(sys.executable).parent)
REPO = Path(__file__).resolve().parent.parent
# What the Dockerfile's final stages set (ENV, USER's home): the environment a container starts with.
IMAGE_ENV = {
    "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/home/herd",  # absent here: an unwritable home, as in the image under readOnlyRootFilesystem
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "HERD_HOST": "0.0.0.0",
    "HERD_PORT": "8080",
}

# Runs as root in a new mount namespace: builds the pod's root, then becomes the container's process (same pid).
LAUNCHER = r"""
import json, os, subprocess, sys
spec = json.loads(sys.argv[1])
scratch = spec["scratch"]
def run(*args):
    subprocess.run(args, check=True)
run("mount", "--make-rprivate", "/")
run("mount", "-t", "tmpfs", "tmpfs", scratch)
for name in ("upper", "work", "root"):
    os.mkdir(os.path.join(scratch, name))
root = os.path.join(scratch, "root")
run("mount", "-t", "overlay", "overlay", "-o", f"lowerdir=/,upperdir={scratch}/upper,workdir={scratch}/work", root)
for m in spec["mounts"]:
    target = root + m["target"]
    os.makedirs(target, exist_ok=True)
    run("mount", "--bind", m["source"], target)
    if m["readOnly"]:
        run("mount", "-o", "remount,ro,bind", target)
for path in spec["traverse"]:  # in the overlay's upper layer only: the host's modes are untouched
    os.chmod(root + path, os.stat(root + path).st_mode | 0o005)
run("mount", "-o", "remount,ro", root)
for special in ("/proc", "/dev", "/sys"):
    run("mount", "--rbind", special, root + special)
os.chroot(root)
os.chdir("/")
os.setgroups(spec["groups"])
os.setgid(spec["gid"])
os.setuid(spec["uid"])
os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
"""


class Pod:
    """One container of a rendered workload, run in its own mount namespace on a read-only root."""

    def __init__(self, workload: Manifest, name: str, docs: list[Manifest], workdir: Path, claims: Path) -> None:
        self.spec = pod_spec(workload)
        self.container = container(workload, name)
        self.name = f"{workload['metadata']['name']}-{name}"
        self.workdir = workdir / self.name
        self.workdir.mkdir()
        security = {**self.spec.get("securityContext", {}), **self.container.get("securityContext", {})}
        assert security.get("readOnlyRootFilesystem") is True, "the chart's containers run on a read-only root"
        self.uid, self.gid = int(security["runAsUser"]), int(security["runAsGroup"])
        self.fs_group = int(self.spec["securityContext"].get("fsGroup", self.gid))
        self.env = {**IMAGE_ENV, **resolve_env(self.container.get("env", []), docs)}
        self.mounts = self._mounts(docs, claims)
        self.log = self.workdir / "log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _mounts(self, docs: list[Manifest], claims: Path) -> list[dict[str, object]]:
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        mounts = []
        for m in self.container.get("volumeMounts", []):
            volume = volumes[m["name"]]  # a mount of an undeclared volume fails here, as it would in Kubernetes
            if "emptyDir" in volume:
                source = self.workdir / f"vol-{m['name']}"
                source.mkdir()
                source.chmod(0o777)  # the kubelet's emptyDir mode
            elif "persistentVolumeClaim" in volume:
                source = claims / volume["persistentVolumeClaim"]["claimName"]  # every pod mounting it shares it
                source.mkdir(exist_ok=True)
                os.chown(source, 0, self.fs_group)  # fsGroup: group-owned, group-writable, setgid
                source.chmod(0o2775)
            elif "configMap" in volume or "secret" in volume:
                source = self.workdir / f"vol-{m['name']}"
                source.mkdir()
                for path, data in items(volume, docs).items():
                    (source / path).write_bytes(data)
                    (source / path).chmod(0o444)
            else:
                raise AssertionError(f"{self.name}: volume {m['name']} of a kind this test does not emulate: {volume}")
            mounts.append({"source": str(source), "target": m["mountPath"], "readOnly": bool(m.get("readOnly"))})
        return mounts

    def start(self) -> None:
        argv = [*self.container["command"], *self.container.get("args", [])]
        spec = {
            "scratch": str(self.workdir / "root"),
            "mounts": [*self.mounts, *image_mounts(self.mounts)],
            "uid": self.uid,
            "gid": self.gid,
            "groups": sorted({self.gid, self.fs_group}),
            "argv": argv,
            "env": self.env,
            "traverse": interpreter_dirs(),
        }
        (self.workdir / "root").mkdir()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", sys.executable, "-c", LAUNCHER, json.dumps(spec)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": os.environ.get("PATH", "")},
            )

    def exec(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        """An exec probe: the command in the container's mount namespace and root, as its user, with its env."""
        assert self.proc is not None
        return subprocess.run(
            [
                "nsenter",
                "-t",
                str(self.proc.pid),
                "-m",
                "-r",
                "-w",
                "-S",
                str(self.uid),
                "-G",
                str(self.gid),
                "--",
                *command,
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def probe(self, kind: str) -> bool:
        probe = self.container[kind]
        if "exec" in probe:
            return self.exec(probe["exec"]["command"]).returncode == 0
        get = probe["httpGet"]
        port = get["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in self.container["ports"] if p["name"] == port)
        try:
            code = httpx.get(f"http://127.0.0.1:{port}{get['path']}", timeout=probe.get("timeoutSeconds", 1))
        except httpx.HTTPError:
            return False
        return 200 <= code.status_code < 400

    def wait(self, kind: str, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if self.probe(kind):
                return
            time.sleep(0.3)
        raise AssertionError(f"{self.name}: {kind} did not pass within {within_s}s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> int | None:
        """SIGTERM, as the kubelet sends; the exit status, or None when the grace period ran out (then SIGKILL)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=self.spec.get("terminationGracePeriodSeconds", 30))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def image_mounts(volumes: list[dict[str, object]]) -> list[dict[str, object]]:
    """What the image holds (herd's code and its virtualenv) where a declared volume would hide it: a checkout under
    /tmp (CI's clone may be one) disappears behind the pod's /tmp emptyDir, so it is bound again, read-only, on top."""
    image = {str(REPO), str(Path(sys.prefix).resolve())}
    return [
        {"source": path, "target": path, "readOnly": True}
        for path in sorted(image)
        if any(path == str(v["target"]) or path.startswith(f"{v['target']}/") for v in volumes)
    ]


def interpreter_dirs() -> list[str]:
    """Directories on the way to this Python that others may not enter (a pyenv under /root): the image's Python is
    the pod user's to run, so the pod's root opens them (in its overlay, not on this machine)."""
    closed = []
    for path in (Path(os.path.realpath(sys.executable)), Path(sys.base_prefix).resolve()):
        for parent in [*reversed(path.parents), path]:
            if parent.is_dir() and not parent.stat().st_mode & 0o001 and str(parent) not in closed:
                closed.append(str(parent))
    return closed


def items(volume: dict[str, Any], docs: list[Manifest]) -> dict[str, bytes]:
    """A ConfigMap or Secret volume's files, from the rendered object it names."""
    if "configMap" in volume:
        source, kind, name = volume["configMap"], "ConfigMap", volume["configMap"]["name"]
    else:
        source, kind, name = volume["secret"], "Secret", volume["secret"]["secretName"]
    data = object_data(kind, name, docs)
    wanted = source.get("items") or [{"key": k, "path": k} for k in data]
    return {item["path"]: data[item["key"]] for item in wanted}


def object_data(kind: str, name: str, docs: list[Manifest]) -> dict[str, bytes]:
    found = by_kind(docs, kind).get(name)
    assert found is not None, f"{kind} {name} is not rendered by the chart"
    data = {k: v.encode() for k, v in (found.get("stringData") or {}).items()}
    if kind == "Secret":
        data |= {k: base64.b64decode(v) for k, v in (found.get("data") or {}).items()}
    else:
        data |= {k: v.encode() for k, v in (found.get("data") or {}).items()}
    return data


def resolve_env(entries: list[dict[str, Any]], docs: list[Manifest]) -> dict[str, str]:
    """A container's env as the kubelet builds it: values with $(VAR) expanded from earlier entries, secretKeyRef
    and configMapKeyRef read from the rendered objects."""
    env: dict[str, str] = {}
    for entry in entries:
        if "value" in entry:
            env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), str(entry["value"]))
            continue
        ref = entry["valueFrom"]
        if "secretKeyRef" in ref:
            key = ref["secretKeyRef"]
            env[entry["name"]] = object_data("Secret", key["name"], docs)[key["key"]].decode()
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[entry["name"]] = object_data("ConfigMap", key["name"], docs)[key["key"]].decode()
        else:
            raise AssertionError(f"an env source this test does not emulate: {entry}")
    return env


@pytest.fixture
def fleet_db(redis_port: int) -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=redis_port, db=DB)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def pods_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_rendered_api_and_worker_run_on_a_read_only_root(
    redis_port: int, fleet_db: redis.Redis, pods_dir: Path
) -> None:
    assert os.geteuid() == 0, "this test builds mount namespaces: run it as root"
    api_port = free_port()
    values = {
        "redis": {"enabled": False},
        "externalRedis": {"url": f"redis://127.0.0.1:{redis_port}/{DB}"},
        "api": {"port": api_port},  # 2 replicas (the default): the files volume is a ReadWriteMany claim
    }
    docs = manifests(render(values))
    deployments = by_kind(docs, "Deployment")
    claims = pods_dir / "claims"
    claims.mkdir()
    api = Pod(deployments["herd-api"], "api", docs, pods_dir, claims)
    worker = Pod(deployments["herd-worker-smollm2"], "worker", docs, pods_dir, claims)
    assert by_kind(docs, "PersistentVolumeClaim")["herd-files"]["spec"]["accessModes"] == ["ReadWriteMany"]
    try:
        api.start()
        api.wait("readinessProbe", 60)  # ready with no worker at all: readiness is Redis and the process
        api.wait("livenessProbe", 10)
        base = f"http://127.0.0.1:{api_port}"
        ready = httpx.get(f"{base}/readyz").json()
        assert (ready["redis"], ready["workers"]) == (True, 0)
        assert httpx.get(f"{base}/readyz?workers=1").status_code == 503
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as refused:  # no worker: herd's 503, not a connection error
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert refused.value.status_code == 503
        assert refused.value.response.headers["retry-after"].isdigit()
        assert "no worker" in refused.value.response.json()["error"]["message"]

        worker.start()
        worker.wait("startupProbe", 180)  # the rendered exec probe, inside the pod: its heartbeat is in Redis
        assert worker.probe("livenessProbe")
        assert httpx.get(f"{base}/readyz?workers=1").status_code == 200
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8, temperature=0
        )
        assert reply.choices[0].message.content

        # An upload lands on the files volume (the shared claim), and is served back.
        body = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
        uploaded = client.files.create(file=("lines.jsonl", body), purpose="batch")
        assert (claims / "herd-files" / uploaded.id).read_bytes() == body
        assert client.files.content(uploaded.id).read() == body
        client.close()
    finally:
        worker_exit, api_exit = worker.stop(), api.stop()
    logs = api.tail() + worker.tail()
    assert "unavailable" not in logs.lower() and "Read-only file system" not in logs, logs
    # Both stop by themselves on SIGTERM within the pods' grace periods (uvicorn ends by re-raising the signal).
    assert api_exit in (0, -signal.SIGTERM) and worker_exit == 0, (api_exit, worker_exit, logs)


def test_api_starts_with_nothing_writable_but_tmp(redis_port: int, fleet_db: redis.Redis, pods_dir: Path) -> None:
    """`herd api` with its defaults (files and model store under an unwritable home) still starts and serves."""
    api_port = free_port()
    values = {"redis": {"enabled": False}, "externalRedis": {"url": f"redis://127.0.0.1:{redis_port}/{DB}"}}
    values["api"] = {"port": api_port, "replicas": 1}
    values["files"] = {"persistence": {"enabled": False}}
    docs = manifests(render(values))
    workload = by_kind(docs, "Deployment")["herd-api"]
    (c,) = pod_spec(workload)["containers"]
    c["env"] = [e for e in c["env"] if e["name"] not in ("HERD_FILES_DIR", "HERD_MODELS_DIR")]
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    claims = pods_dir / "claims"
    claims.mkdir()
    api = Pod(workload, "api", docs, pods_dir, claims)
    try:
        api.start()
        api.wait("readinessProbe", 60)
        base = f"http://127.0.0.1:{api_port}"
        assert httpx.get(f"{base}/v1/models").status_code == 200
        upload = httpx.post(f"{base}/v1/files", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "batch"})
        assert upload.status_code == 503, upload.text  # the server's state, said so: not a 500
        assert "HERD_FILES_DIR" in upload.json()["error"]["message"]
    finally:
        exit_code = api.stop()
    assert exit_code in (0, -signal.SIGTERM), api.tail()
    assert "set HERD_FILES_DIR to a writable volume" in api.tail()
