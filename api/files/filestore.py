"""File bytes on disk: uploads (written to a temporary name, renamed when complete) and the append-only result
logs of running batches. Metadata is not here (see api/files/records.py); an object store could replace this class
by offering the same methods."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import msgspec
from herd.errors import Unavailable


class _CustomIdOnly(msgspec.Struct):
    custom_id: str


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, over quota, over the process's file-size limit


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """A full disk (or quota) is the server's state, not the caller's fault: 503 with Retry-After, not a 500."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL:
            raise Unavailable("no space left to store files; try again later") from exc
        raise


class Upload:
    """One upload in progress: bytes go to a temporary file; commit() makes it the file, abort() removes it."""

    def __init__(self, final: Path, limit: int) -> None:
        self._final = final
        self._tmp = final.with_name(f".upload-{secrets.token_hex(8)}")
        self._fh = self._tmp.open("wb")
        self._limit = limit
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self._limit:
            raise OverflowError(self.size)
        with storage_errors():
            self._fh.write(data)

    def commit(self) -> None:
        with storage_errors():
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self._tmp, self._final)

    def abort(self) -> None:
        with contextlib.suppress(OSError):  # closing flushes what is buffered, which fails again on a full disk
            self._fh.close()
        self._tmp.unlink(missing_ok=True)


class ResultLog:
    """A running batch's output or error lines, appended and fsynced: its complete lines are what is done."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def recover(self) -> list[str]:
        """The custom_ids already written. A torn last line (the writer died mid-write) is cut off."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            with self.path.open("r+b") as fh:
                fh.truncate(end)
                os.fsync(fh.fileno())
        return [msgspec.json.decode(line, type=_CustomIdOnly).custom_id for line in data[:end].splitlines()]

    def append(self, lines: list[bytes]) -> None:
        with self.path.open("ab") as fh:
            fh.write(b"".join(line + b"\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())


class FileStore:
    """{root}/{file_id} holds a file's bytes; {root}/batches/{batch_id}/ holds a running batch's result logs."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self) -> None:
        (self.root / "batches").mkdir(parents=True, exist_ok=True)

    def path(self, file_id: str) -> Path:
        if not file_id.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"not a file id: {file_id!r}")  # ids are made here: never a path from outside
        return self.root / file_id

    def upload(self, file_id: str, limit: int) -> Upload:
        self.ensure()
        return Upload(self.path(file_id), limit)

    def exists(self, file_id: str) -> bool:
        return self.path(file_id).is_file()

    def read(self, file_id: str) -> bytes:
        return self.path(file_id).read_bytes()

    def chunks(self, file_id: str, size: int = 1 << 20) -> Iterator[bytes]:
        with self.path(file_id).open("rb") as fh:
            while chunk := fh.read(size):
                yield chunk

    def delete(self, file_id: str) -> None:
        self.path(file_id).unlink(missing_ok=True)

    def results(self, batch_id: str) -> tuple[ResultLog, ResultLog]:
        """The output and error logs of a batch, created empty if new."""
        folder = self.root / "batches" / self.path(batch_id).name
        folder.mkdir(parents=True, exist_ok=True)
        return ResultLog(folder / "output.jsonl"), ResultLog(folder / "errors.jsonl")

    def publish(self, log: ResultLog, file_id: str) -> int:
        """Make a result log the file `file_id` (atomic rename); idempotent, so a repeated finalize is harmless.
        Returns the file's size."""
        final = self.path(file_id)
        if log.path.exists():
            os.replace(log.path, final)
        return final.stat().st_size if final.exists() else 0

    def drop_results(self, batch_id: str) -> None:
        folder = self.root / "batches" / self.path(batch_id).name
        for name in ("output.jsonl", "errors.jsonl"):
            (folder / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()
