"""A command in a pseudo-terminal (Python's pty): what a person at a terminal sees and types, Ctrl-C included."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
import time


class Terminal:
    """`python -m herd ARGS` as the session leader of a new pty, so Ctrl-C (0x03) reaches it as SIGINT."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: str | None = None) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: its stdin, stdout and stderr are the terminal
            if cwd:
                os.chdir(cwd)
            os.execve(sys.executable, [sys.executable, "-m", "herd", *args], {**env, "TERM": "xterm", "COLUMNS": "100"})
        self.pid, self.fd = pid, fd
        self.seen = ""  # everything the terminal showed, with carriage returns dropped
        self._pos = 0  # where the next expect() starts looking
        self.status: int | None = None

    def _read(self, until: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, until - time.monotonic()))
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.seen += data.decode("utf-8", "replace").replace("\r", "")
        return bool(data)

    def expect(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        """Wait for `pattern` (a regex) in the output after the previous match; a hang guard, not a measurement."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.seen, self._pos)
            if match:
                self._pos = match.end()
                return match
            if time.monotonic() > deadline or (not self._read(deadline) and self.exited()):
                raise AssertionError(f"{pattern!r} not seen; the terminal showed:\n{self.seen[-3000:]}")

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def exited(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status is not None

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while not self.exited():
            if time.monotonic() > deadline:
                raise AssertionError(f"still running; the terminal showed:\n{self.seen[-3000:]}")
            self._read(min(deadline, time.monotonic() + 0.2))
        while self._read(time.monotonic() + 0.1):  # what it printed last
            pass
        assert self.status is not None
        return self.status

    def close(self) -> None:
        if not self.exited():
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)
