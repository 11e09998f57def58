"""Progress of pulls, creates and blob uploads: rich's bars on a terminal, plain lines when not one (logs, pipes)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class Reporter:
    """Shows Ollama's progress lines ({status, digest, total, completed}); one bar per digest, like `ollama pull`."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out or sys.stderr
        self._tty = self._out.isatty()
        self._bars: dict[str, TaskID] = {}
        self._shown = ""
        self._progress: Progress | None = None
        if self._tty:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self._out),
                transient=False,
            )

    def __enter__(self) -> Reporter:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def status(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        elif text != self._shown:
            print(text, file=self._out, flush=True)
        self._shown = text

    def bar(self, key: str, description: str, total: int, completed: int) -> None:
        if self._progress is None:
            line = f"{description} {100 * completed // total}%" if total else description
            if line != self._shown:  # a line only when the percentage moves
                print(line, file=self._out, flush=True)
                self._shown = line
            return
        task = self._bars.get(key)
        if task is None:
            task = self._bars[key] = self._progress.add_task(description, total=total)
        self._progress.update(task, total=total, completed=completed)

    def line(self, item: dict[str, Any]) -> None:
        """One progress line from the server."""
        status = str(item.get("status", ""))
        total, completed = int(item.get("total") or 0), int(item.get("completed") or 0)
        digest = str(item.get("digest") or "")
        if total:
            label = f"{status} {digest.removeprefix('sha256:')[:12]}" if digest else status
            self.bar(digest or status, label, total, completed)
        elif status:
            self.status(status)
