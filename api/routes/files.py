"""OpenAI /v1/files: upload (multipart, streamed to disk), list, retrieve, content, delete. Owned by the caller."""

from __future__ import annotations

import asyncio
import errno
import secrets
import time

from herd.api.auth.principal import principal_of
from herd.api.files.filestore import FileStore, Upload
from herd.api.files.multipart import boundary_of, read_form
from herd.api.files.records import Records
from herd.api.routes.common import gateway
from herd.api.wire.batch import UPLOAD_PURPOSES, FileDeleted, FileList, FileObject
from herd.errors import InvalidRequest, Unavailable
from litestar import Request, delete, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.response import File

AnyRequest = Request[object, object, State]


def records(state: State) -> Records:
    value = state.records
    assert isinstance(value, Records)
    return value


def store(state: State) -> FileStore:
    value = state.files
    assert isinstance(value, FileStore)
    return value


# Litestar's own body limit is off here: the upload is streamed and held to settings.files_max_bytes instead.
@post("/v1/files", status_code=200, request_max_body_size=None)
async def create_file(request: AnyRequest, state: State) -> FileObject:
    owner = principal_of(request).subject
    boundary = boundary_of(request.headers.get("content-type", ""))
    file_id = f"file-{secrets.token_hex(16)}"
    limit = gateway(state).settings.files_max_bytes
    uploads: list[tuple[str, Upload]] = []

    def open_file(name: str, filename: str) -> Upload:
        if name != "file" or uploads:
            raise InvalidRequest("send exactly one file part, named 'file'", param=name)
        try:
            upload = store(state).upload(file_id, limit)
        except OSError as exc:  # a read-only or foreign directory: the deployment's state, not the caller's fault
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            raise Unavailable("the files directory is not writable; set HERD_FILES_DIR to a writable volume") from exc
        uploads.append((filename, upload))
        return upload

    try:
        fields = await read_form(request.stream(), boundary, open_file)
        purpose = fields.get("purpose")
        if purpose not in UPLOAD_PURPOSES:
            raise InvalidRequest(f"purpose must be one of {sorted(UPLOAD_PURPOSES)}", param="purpose")
        if not uploads:
            raise InvalidRequest("the form has no file part named 'file'", param="file")
        filename, upload = uploads[0]
        await asyncio.to_thread(upload.commit)
    except OverflowError as exc:
        raise HTTPException(status_code=413, detail=f"the file is larger than {limit} bytes") from exc
    finally:
        for _, pending in uploads:
            pending.abort()  # a no-op after commit
    obj = FileObject(id=file_id, bytes=upload.size, created_at=int(time.time()), filename=filename, purpose=purpose)
    await records(state).put_file(owner, obj)
    return obj


@get("/v1/files")
async def list_files(
    request: AnyRequest,
    state: State,
    purpose: str | None = None,
    limit: int = 10000,
    after: str | None = None,
    order: str = "desc",
) -> FileList:
    if not 1 <= limit <= 10000:
        raise InvalidRequest("limit must be between 1 and 10000", param="limit")
    found, more = await records(state).files(principal_of(request).subject, purpose, limit, after, order == "asc")
    return FileList(
        data=found, has_more=more, first_id=found[0].id if found else None, last_id=found[-1].id if found else None
    )


@get("/v1/files/{file_id:str}")
async def retrieve_file(request: AnyRequest, state: State, file_id: str) -> FileObject:
    return await records(state).file(principal_of(request).subject, file_id)


@get("/v1/files/{file_id:str}/content")
async def file_content(request: AnyRequest, state: State, file_id: str) -> File:
    obj = await records(state).file(principal_of(request).subject, file_id)
    return File(path=store(state).path(obj.id), filename=obj.filename, media_type="application/octet-stream")


@delete("/v1/files/{file_id:str}", status_code=200)
async def delete_file(request: AnyRequest, state: State, file_id: str) -> FileDeleted:
    await records(state).delete_file(principal_of(request).subject, file_id)
    await asyncio.to_thread(store(state).delete, file_id)
    return FileDeleted(id=file_id)


ROUTES = [create_file, list_files, retrieve_file, file_content, delete_file]
