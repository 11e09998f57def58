"""Metric families (metrics.py) as Prometheus text 0.0.4, or OpenMetrics 1.0.0 with the latest traced observation
of each histogram bucket as an exemplar (`# {trace_id="...",span_id="..."} value timestamp`). Pure functions."""

from __future__ import annotations

from herd.api.telemetry.metrics import Family, HistogramPoint, Labels

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def negotiate(accept: str) -> str:
    """OpenMetrics when the scraper asks for it (Prometheus does, with exemplar storage on or not), else text."""
    return OPENMETRICS if "application/openmetrics-text" in accept else PROMETHEUS


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k.replace(".", "_")}="{_escape(v)}"' for k, v in labels) + "}"


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _histogram(name: str, labels: Labels, point: HistogramPoint, openmetrics: bool) -> list[str]:
    lines, running = [], 0
    bounds = [*(repr(float(b)) for b in point.bounds), "+Inf"]
    for index, (bound, n) in enumerate(zip(bounds, point.counts, strict=True)):
        running += n
        line = f"{name}_bucket{_labels((*labels, ('le', bound)))} {running}"
        exemplar = point.exemplars.get(index) if openmetrics else None
        if exemplar is not None:
            line += f' # {{trace_id="{exemplar.trace_id}",span_id="{exemplar.span_id}"}} {exemplar.value!r}'
            line += f" {exemplar.at:.3f}"
        lines.append(line)
    lines.append(f"{name}_sum{_labels(labels)} {point.sum!r}")
    lines.append(f"{name}_count{_labels(labels)} {point.count}")
    return lines


def render(families: list[Family], content_type: str) -> str:
    openmetrics = content_type == OPENMETRICS
    out: list[str] = []
    for family in families:
        # Text 0.0.4 names a counter's family with its _total sample name; OpenMetrics without it.
        name = family.prom_name
        declared = name if openmetrics or family.kind != "counter" else f"{name}_total"
        out.append(f"# HELP {declared} {_escape(family.help)}")
        out.append(f"# TYPE {declared} {family.kind}")
        for labels, value in family.points:
            if isinstance(value, HistogramPoint):
                out.extend(_histogram(name, labels, value, openmetrics))
            elif family.kind == "counter":
                out.append(f"{name}_total{_labels(labels)} {_number(value)}")
            else:
                out.append(f"{name}{_labels(labels)} {_number(value)}")
    if openmetrics:
        out.append("# EOF")
    return "\n".join(out) + "\n"
