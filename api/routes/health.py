"""Liveness and readiness probes."""

from __future__ import annotations

import msgspec
from herd.api.routes.common import gateway
from herd.api.telemetry import exposition
from herd.api.telemetry.metrics import Metrics
from herd.errors import ServiceError
from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.params import Parameter


class Readiness(msgspec.Struct):
    status: str
    redis: bool
    workers: int
    models: list[str]


@get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz")
async def readyz(state: State, workers: int = Parameter(default=0, ge=0)) -> Response[Readiness]:
    """Ready when Redis answers: this process can then take any request, and one for a model no worker serves gets
    its own 503 (with Retry-After) from the route, not a connection error from an endpoint taken out of service.
    Workers are reported, not required; `?workers=N` asks for N live workers as well (scripts and tests that wait
    for a fleet, never a readiness probe)."""
    gw = gateway(state)
    redis_ok = await gw.ping()
    try:
        live = await gw.workers() if redis_ok else []
    except ServiceError:
        redis_ok, live = False, []
    models = sorted({m for w in live for m in w.models})
    ready = redis_ok and len(live) >= workers
    body = Readiness(status="ready" if ready else "not ready", redis=redis_ok, workers=len(live), models=models)
    return Response(body, status_code=200 if ready else 503)


@get("/metrics")
async def metrics(request: Request[object, object, State], state: State) -> Response[str]:
    """Prometheus text, or OpenMetrics with trace-id exemplars when the scraper's Accept asks for it; queue and worker
    gauges are left out (not failed) while Redis is unreachable."""
    gw = gateway(state)
    try:
        queue, workers = await gw.queue_status(), await gw.workers(max_age_s=0)
    except ServiceError:
        queue, workers = None, []
    registry = state.metrics
    assert isinstance(registry, Metrics)
    content_type = exposition.negotiate(request.headers.get("accept", ""))
    body = exposition.render(registry.collect(queue, workers), content_type)
    return Response(body, media_type=content_type, headers={"vary": "accept"})


ROUTES = [healthz, readyz, metrics]
