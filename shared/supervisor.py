"""The processes of `herd`: `serve` supervises the API and one worker per model (with a private redis-server when
no Redis answers) as child processes; `run_api` and `run_worker` are the bodies of `herd api` and `herd worker`."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import msgspec
from herd import redisconn
from herd.api.models.names import canonical_name
from herd.api.models.store import ModelStore
from herd.config import ModelConfig, Settings, models_dir
from herd.errors import InvalidRequest
from herd.loading import LoadManager

log = logging.getLogger("herd")


def run_api(settings: Settings) -> None:
    import uvicorn
    from herd.api.app import create_app
    from herd.api.edge.connections import uvicorn_options

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers go through ours (JSON lines)
        access_log=False,
        timeout_graceful_shutdown=settings.drain_timeout_s,  # streams in progress get as long as a worker's drain
        **uvicorn_options(settings),  # header size and time limits, idle timeout, connection cap
    )


def run_worker(settings: Settings, model_name: str | None, simulate_tokens_per_s: float = 0.0) -> None:
    """A configured model's worker runs until stopped; a store model's exits once idle past its keep_alive.
    `simulate_tokens_per_s` (test and benchmark only): a worker with no model that serves `model_name` anyway."""
    from herd.workers.jobs import build_worker

    if simulate_tokens_per_s:
        name = model_name or settings.models[0].name
        fake = ModelConfig(name=name, path="", n_ctx=settings.n_ctx)
        build_worker(settings, fake, simulate_tokens_per_s=simulate_tokens_per_s).run()
        return
    model = settings.model(model_name) if model_name else settings.models[0]
    if model is not None:
        build_worker(settings, model).run()
        return
    store = ModelStore(models_dir(settings))
    manifest = store.all().get(model_name or "")
    if manifest is None:
        sys.exit(f"herd worker: no model named {model_name!r}; configured: {[m.name for m in settings.models]}")
    build_worker(settings, store.model_config(manifest, settings), on_demand=True).run()


def _redis_answers(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    # "-NOAUTH" still means a Redis is there; the password in the URL will be used by the real clients.
    return reply.startswith((b"+PONG", b"-NOAUTH", b"-WRONGPASS"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _private_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches the API and workers; Redis is stopped last, by us
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        if _redis_answers(url):
            return proc, url
        time.sleep(0.05)
    proc.kill()
    sys.exit("herd serve: started redis-server but it did not answer")


class Supervisor:
    """Runs the API and one worker per model as child processes; restarts workers that die; stops all on a signal."""

    def __init__(self, settings: Settings, env: dict[str, str]) -> None:
        self._settings = settings
        self._env = env
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._on_demand: set[str] = set()  # workers of store models: started when asked, not restarted on exit
        self._stopping = False
        url = env.get("HERD_REDIS_URL", settings.redis_url)  # a private redis-server's, when serve started one
        self._redis = redisconn.sync_client(msgspec.structs.replace(settings, redis_url=url), socket_timeout=2)
        self._loads = LoadManager(self._redis)
        self._store = ModelStore(models_dir(settings))

    def _spawn(self, name: str, args: list[str]) -> None:
        self._children[name] = subprocess.Popen([sys.executable, "-m", "herd", *args], env=self._env)

    def _commands(self) -> dict[str, list[str]]:
        s = self._settings
        commands = {f"worker:{m.name}": ["worker", "--model", m.name] for m in s.models}
        commands["api"] = ["api", "--host", s.host, "--port", str(s.port)]
        return commands

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        commands = self._commands()
        for name, args in commands.items():
            self._spawn(name, args)
        try:
            while not self._stopping:
                time.sleep(0.2)
                self._serve_loads()
                for name, proc in list(self._children.items()):
                    code = proc.poll()
                    if code is None or self._stopping:
                        continue
                    if name in self._on_demand:
                        del self._children[name]
                        self._on_demand.discard(name)
                        if code == 0:
                            log.info("%s exited (unloaded)", name)
                        else:
                            self._load_failed(name.removeprefix("worker:"), code)
                        continue
                    if name == "api":
                        log.error("the API exited with status %s; stopping", code)
                        return code or 1
                    log.warning("%s exited with status %s; restarting it", name, code)
                    time.sleep(1.0)
                    self._spawn(name, commands[name])
        finally:
            self._stop_all()
            self._redis.close()
        return 0

    def _serve_loads(self) -> None:
        """The model manager: start a worker for each store model the API asked for that has none running."""
        for name in self._loads.asked():
            key = f"worker:{name}"
            if key in self._children or self._settings.model(name) is not None:
                continue  # loading or loaded already; configured models have their own always-on worker
            try:
                known = canonical_name(name) == name and name in self._store.all()
            except InvalidRequest:
                known = False
            if not known:
                log.warning("ignoring a load request for %r: not in the model store", name[:100])
                continue
            log.info("loading %s on demand", name)
            self._on_demand.add(key)
            self._spawn(key, ["worker", "--model", name])

    def _load_failed(self, model: str, code: int) -> None:
        """Not restarted: the API fails the model's requests for a while rather than load it again and again."""
        log.error("the on-demand worker for %s exited with status %s", model, code)
        self._loads.failed(model, f"worker exited with status {code}")

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _stop_all(self) -> None:
        for proc in self._children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self._children.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def serve(settings: Settings) -> int:
    env = dict(os.environ)
    redis_proc: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="herd-redis-") as workdir:
        # A TLS or Sentinel setup is never replaced by a private redis-server: it is what the user asked for.
        external = settings.redis_sentinels or settings.redis_tls or urlparse(settings.redis_url).scheme != "redis"
        if external or _redis_answers(settings.redis_url):
            check_redis("serve", settings)
        else:
            if shutil.which("redis-server") is None:
                sys.exit(
                    f"herd serve: no Redis answers at {settings.redis_url} and redis-server is not installed.\n"
                    "Install it (Debian/Ubuntu: `apt-get install redis-server`; macOS: `brew install redis`), "
                    "or point HERD_REDIS_URL at a running Redis."
                )
            redis_proc, url = _private_redis(Path(workdir))
            log.info("no Redis at %s; started a private redis-server at %s", settings.redis_url, url)
            env["HERD_REDIS_URL"] = url
            env.pop("HERD_REDIS_USERNAME", None), env.pop("HERD_REDIS_PASSWORD", None)  # it has no users
        env["HERD_HOST"], env["HERD_PORT"] = settings.host, str(settings.port)
        log.info(
            "herd serving %s on http://%s:%d", ", ".join(m.name for m in settings.models), settings.host, settings.port
        )
        try:
            return Supervisor(settings, env).run()
        finally:
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait(timeout=10)


def check_redis(command: str, settings: Settings, wait_s: float = 0.0) -> None:
    """Stop the start with one clear line when the Redis settings cannot work (refused password, bad TLS files)."""
    try:
        redisconn.check(settings, wait_s)
    except redisconn.RedisSettingsError as exc:
        sys.exit(f"herd {command}: {exc}")
    except ConnectionError as exc:  # not fatal: the parts reconnect, and /readyz says not ready meanwhile
        if command == "worker":
            sys.exit(f"herd worker: {exc}")
        log.warning("%s", exc)
