"""`herd pull`: the API's /api/pull code run once, into the model store (a Kubernetes init step fills the models
volume this way before the workers start)."""

from __future__ import annotations

import asyncio
import sys

from herd.api.models.pull import Puller, resolve_name
from herd.api.models.store import ModelStore
from herd.config import Settings, models_dir
from herd.errors import ServiceError


def pull(settings: Settings, models: list[str]) -> int:
    """Pull each model in turn, printing progress lines; exit status 1 on the first failure."""
    store = ModelStore(models_dir(settings))
    try:
        store.open()  # creates the store's directories on a fresh volume
    except OSError as exc:
        print(f"herd pull: cannot open the model store at {models_dir(settings)}: {exc}", file=sys.stderr)
        return 1

    async def one(model: str) -> None:
        name, _ = resolve_name(model, settings)
        shown = ""
        async for step in Puller(store, settings, model).run():
            line = step.status if not step.total else f"{step.status} {100 * step.completed // step.total}%"
            if line != shown:  # progress only when the percentage moves
                print(f"{name}: {line}", flush=True)
                shown = line

    for model in models:
        try:
            asyncio.run(one(model))
        except ServiceError as exc:
            print(f"herd pull {model}: {exc}", file=sys.stderr)
            return 1
    return 0
