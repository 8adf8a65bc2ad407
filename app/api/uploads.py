"""Multipart uploads read straight from the request stream into storage.

FastAPI's ``UploadFile`` would first spool the whole body to a temporary file and only then call
the endpoint: the size limit would apply after the fact and every upload would be written twice.
Here the body is parsed as it arrives (python-multipart, the parser Starlette uses): the ``file``
part goes to :meth:`Storage.write_stream` in chunks of ``upload_chunk_bytes``, hashed on the way,
and stops at ``max_upload_bytes`` with a 413; the small text fields are kept in memory (bounded).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from fastapi import Query, Request
from pydantic import BaseModel
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import (
    BadRequestError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnprocessableError,
    UnsupportedMediaTypeError,
)
from app.services.uploads import SHA256_PATTERN, ReceivedUpload, Receiver
from app.settings import Settings
from app.storage import Storage, UploadTooLargeError

__all__ = ["multipart_body", "receiver", "reused_response", "sha256_query"]

FILE_FIELD = "file"
_MAX_FIELDS = 16
_MAX_FIELD_BYTES = 4096
# Part headers and boundaries around the file; a body longer than limit + this is refused early.
_OVERHEAD = 64 * 1024


@dataclass(frozen=True)
class _FileStart:
    filename: str


@dataclass(frozen=True)
class _FileData:
    data: bytes


@dataclass(frozen=True)
class _FileEnd:
    pass


_Event = _FileStart | _FileData | _FileEnd


class _Parts:
    """Turns the parser's callbacks into events, and collects the text fields."""

    def __init__(self, charset: str) -> None:
        self.charset = charset
        self.fields: dict[str, str] = {}
        self.events: list[_Event] = []
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._is_file = False
        self._value = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self._disposition, self._name, self._is_file = b"", "", False
        self._value = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise BadRequestError("a multipart part has no name in its Content-Disposition")
        self._name = self._decode(options[b"name"])
        self._is_file = self._name == FILE_FIELD
        if self._is_file:
            if any(isinstance(e, _FileStart) for e in self.events):
                raise UnprocessableError.one(FILE_FIELD, "send exactly one file")
            self.events.append(_FileStart(self._decode(options.get(b"filename", b""))))
        elif len(self.fields) >= _MAX_FIELDS:
            raise BadRequestError(f"too many form fields (at most {_MAX_FIELDS})")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self.events.append(_FileData(data[start:end]))
            return
        self._value += data[start:end]
        if len(self._value) > _MAX_FIELD_BYTES:
            raise UnprocessableError.one(
                self._name, f"form field too long (at most {_MAX_FIELD_BYTES} bytes)"
            )

    def on_part_end(self) -> None:
        if self._is_file:
            self.events.append(_FileEnd())
        else:
            self.fields[self._name] = self._decode(bytes(self._value))

    def _decode(self, raw: bytes) -> str:
        try:
            return raw.decode(self.charset)
        except (UnicodeDecodeError, LookupError):
            return raw.decode("latin-1")


def receiver(request: Request, storage: Storage, settings: Settings) -> Receiver:
    """A :data:`Receiver` reading ``request``'s multipart body."""

    async def receive(key_for: Callable[[str], str]) -> ReceivedUpload:
        parts = _start(request, settings)
        stored, key, filename = None, "", ""
        try:
            async with aclosing(_events(request, parts, settings.body_timeout_s)) as events:
                async for event in events:
                    if isinstance(event, _FileStart):
                        filename, key = event.filename, key_for(event.filename)
                        chunks = _file_chunks(events, settings.upload_chunk_bytes)
                        try:
                            async with aclosing(chunks):
                                stored = await storage.write_stream(
                                    key, chunks, limit=settings.max_upload_bytes
                                )
                        except UploadTooLargeError as exc:
                            raise PayloadTooLargeError(
                                f"the file is larger than the limit of {exc.limit} bytes "
                                "(CARTL_MAX_UPLOAD_BYTES)"
                            ) from None
        except BaseException:
            # The rest of the body failed after the file was stored: its local copy goes (the
            # caller deletes the stored object with its folder).
            if stored is not None:
                storage.release(stored)
            raise
        if stored is None:
            raise UnprocessableError.one(
                FILE_FIELD, "required: send the file as the multipart field 'file'"
            )
        return ReceivedUpload(stored, key, filename, dict(parts.fields))

    return receive


def _start(request: Request, settings: Settings) -> _Parts:
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise UnsupportedMediaTypeError(
            "send the upload as multipart/form-data with the file in the field 'file' "
            "(curl -F file=@PATH)"
        )
    if b"boundary" not in options:
        raise BadRequestError("the multipart Content-Type has no boundary")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > settings.max_upload_bytes + _OVERHEAD:
        raise PayloadTooLargeError(
            f"the upload is larger than the limit of {settings.max_upload_bytes} bytes "
            "(CARTL_MAX_UPLOAD_BYTES)"
        )
    charset = options.get(b"charset", b"utf-8")
    return _Parts(charset.decode("latin-1") if isinstance(charset, bytes) else str(charset))


async def _stream(request: Request, timeout_s: float) -> AsyncGenerator[bytes, None]:
    """The body's chunks; a body that sends nothing for ``timeout_s`` is cut off (408)."""
    chunks = request.stream()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), timeout_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeoutError(
                f"the upload stalled: nothing arrived for {timeout_s:g} s (CARTL_BODY_TIMEOUT_S)"
            ) from None
        yield chunk


async def _events(
    request: Request, parts: _Parts, timeout_s: float
) -> AsyncGenerator[_Event, None]:
    _, options = parse_options_header(request.headers["content-type"])
    parser = MultipartParser(options[b"boundary"], parts.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in _stream(request, timeout_s):
            parser.write(chunk)
            while parts.events:
                yield parts.events.pop(0)
        parser.finalize()
    except FormParserError:
        raise BadRequestError("the multipart body is malformed or truncated") from None
    while parts.events:
        yield parts.events.pop(0)


async def _file_chunks(
    events: AsyncIterator[_Event], chunk_bytes: int
) -> AsyncGenerator[bytes, None]:
    """The file part's bytes, regrouped into chunks of about ``chunk_bytes``."""
    buffer = bytearray()
    async for event in events:
        if isinstance(event, _FileData):
            buffer += event.data
            if len(buffer) >= chunk_bytes:
                yield bytes(buffer)
                buffer.clear()
        elif isinstance(event, _FileEnd):
            break
    else:
        raise BadRequestError("the multipart body ended inside the file")
    if buffer:
        yield bytes(buffer)


def multipart_body(fields: dict[str, str]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for a multipart upload: ``file`` plus the given text fields."""
    properties: dict[str, Any] = {
        FILE_FIELD: {"type": "string", "format": "binary", "description": "The file."}
    }
    for name, description in fields.items():
        properties[name] = {"type": "string", "description": description}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [FILE_FIELD],
                        "properties": properties,
                    },
                    "encoding": {FILE_FIELD: {"contentType": "application/octet-stream"}},
                }
            },
        }
    }


def sha256_query(what: str) -> Any:
    """The lists' ``?sha256=`` filter, for ``what`` ("checkpoints", "datasets"):
    ``Annotated[str | None, sha256_query(what)]``."""
    return Query(
        pattern=SHA256_PATTERN,
        description=f"Only the {what} whose file has this sha256 (64 lowercase hex digits): "
        "whether a file was uploaded before, without uploading it.",
    )


def reused_response(model: type[BaseModel], what: str, same: str) -> dict[str, Any]:
    """The 200 an upload answers when it repeats an earlier one (``same``: what must match)."""
    return {
        "model": model,
        "description": "The same bytes (sha256) were uploaded before by this key's owner, "
        f"{same}: the {what} recorded then; nothing new was kept.",
        "headers": {
            "Upload-Reused": {
                "description": f"`true`: the {what} returned was recorded by an earlier upload.",
                "required": True,
                "schema": {"type": "string", "enum": ["true"]},
            }
        },
    }
