"""`herd list`, `ps`, `show`, `cp`, `rm`, `stop`: Ollama's model verbs over /api, printed as Ollama prints them."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from herd.client.http import Client, ClientError


def human_size(n: int) -> str:
    """Decimal units, as `ollama list` shows them (92 MB)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" or size >= 10 else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _ago(stamp: str, now: float) -> str:
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return stamp
    seconds = max(0, int(now - then))
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size or size == 1:
            count = seconds // size
            return "Less than a second ago" if count == 0 else f"{count} {unit}{'s' if count != 1 else ''} ago"
    raise AssertionError


def _until(stamp: str, now: float) -> str:
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return stamp
    if then - now > 10 * 365 * 86400:
        return "Forever"
    seconds = int(then - now)
    if seconds <= 0:
        return "Stopping..."
    minutes = seconds // 60
    return f"{minutes} minutes from now" if minutes >= 1 else f"{seconds} seconds from now"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("    ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def list_models(client: Client) -> str:
    reply = client.request("GET", "/api/tags")
    now = time.time()
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for m in reply["models"]:
        digest = str(m.get("digest", "")).removeprefix("sha256:")
        rows.append([m["name"], digest[:12], human_size(int(m.get("size", 0))), _ago(m.get("modified_at", ""), now)])
    return table(rows)


def ps(client: Client) -> str:
    reply = client.request("GET", "/api/ps")
    now = time.time()
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in reply["models"]:
        digest = str(m.get("digest", "")).removeprefix("sha256:")
        size, vram = int(m.get("size", 0)), int(m.get("size_vram", 0))
        processor = "100% GPU" if size and vram >= size else ("100% CPU" if not vram else f"{100 * vram // size}% GPU")
        context = str(m.get("context_length", ""))
        rows.append(
            [m["name"], digest[:12], human_size(size), processor, context, _until(m.get("expires_at", ""), now)]
        )
    return table(rows)


def show(client: Client, model: str, part: str | None) -> str:
    """The whole summary, or one part: modelfile, template, parameters, system, license."""
    reply: dict[str, Any] = client.request("POST", "/api/show", {"model": model})
    if part is not None:
        value = reply.get(part, "")
        return "\n".join(value) if isinstance(value, list) else str(value)
    details = reply.get("details", {})
    info = reply.get("model_info", {})
    arch = str(info.get("general.architecture", details.get("family", "")))
    context = info.get(f"{arch}.context_length", "")
    embedding = info.get(f"{arch}.embedding_length", "")
    lines = ["  Model"]
    for label, value in (
        ("architecture", arch),
        ("parameters", details.get("parameter_size", "")),
        ("context length", context),
        ("embedding length", embedding),
        ("quantization", details.get("quantization_level", "")),
    ):
        if value != "":
            lines.append(f"    {label:<20}{value}")
    if reply.get("capabilities"):
        lines += ["", "  Capabilities", *(f"    {c}" for c in reply["capabilities"])]
    if reply.get("parameters"):
        lines += ["", "  Parameters", *(f"    {p}" for p in str(reply["parameters"]).splitlines())]
    if reply.get("system"):
        lines += ["", "  System", *(f"    {s}" for s in str(reply["system"]).splitlines()[:3])]
    return "\n".join(lines)


def copy(client: Client, source: str, destination: str) -> str:
    client.request("POST", "/api/copy", {"source": source, "destination": destination})
    return f"copied '{source}' to '{destination}'"


def remove(client: Client, models: list[str]) -> str:
    done = []
    for model in models:
        client.request("DELETE", "/api/delete", {"model": model})
        done.append(f"deleted '{model}'")
    return "\n".join(done)


def stop(client: Client, model: str) -> str:
    """Ollama's way: an empty generate with keep_alive 0 (the worker unloads once idle)."""
    reply = client.request("POST", "/api/generate", {"model": model, "prompt": "", "keep_alive": 0, "stream": False})
    if reply.get("done_reason") not in ("unload", None):
        raise ClientError(f"unexpected answer to stop: {reply.get('done_reason')}")
    now = time.time()
    for m in client.request("GET", "/api/ps")["models"]:
        if m["name"] == model and _until(m.get("expires_at", ""), now) == "Forever":
            return f"{model} is a configured model (HERD_MODELS): it stays loaded"
    return ""
