"""Liveness and readiness probes."""

from __future__ import annotations

import msgspec
from herd.api import exposition
from herd.api.metrics import Metrics
from herd.api.routes.common import gateway
from herd.errors import ServiceError
from litestar import Request, Response, get
from litestar.datastructures import State


class Readiness(msgspec.Struct):
    status: str
    redis: bool
    workers: int
    models: list[str]


@get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz")
async def readyz(state: State) -> Response[Readiness]:
    gw = gateway(state)
    redis_ok = await gw.ping()
    try:
        workers = await gw.workers(max_age_s=0) if redis_ok else []
    except ServiceError:
        redis_ok, workers = False, []
    models = sorted({m for w in workers for m in w.models})
    ready = redis_ok and bool(workers)
    body = Readiness(status="ready" if ready else "not ready", redis=redis_ok, workers=len(workers), models=models)
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
