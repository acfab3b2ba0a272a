"""Reading a multipart/form-data body as it arrives: the `file` field's bytes come out
as a stream of chunks (one network read at a time), never gathered in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from app.errors import ApiError

FIELD = "file"
# What any other field, and each part's headers, may hold: small, they are skipped.
_MAX_OTHER_FIELD = 64 * 1024


def _malformed(message: str) -> ApiError:
    return ApiError(400, "malformed_body", message)


@dataclass
class _State:
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    disposition: bytes = b""
    in_file: bool = False
    other_bytes: int = 0
    filename: str | None = None
    file_started: bool = False
    file_ended: bool = False
    pending: list[bytes] = field(default_factory=list)


class UploadForm:
    """One request's form: `await open()` reads up to the `file` part's headers (400
    without one), then `chunks()` yields that part's bytes."""

    def __init__(self, request: Request) -> None:
        content_type = request.headers.get("content-type", "")
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise _malformed("the body must be multipart/form-data with a `file` field")
        self._state = _State()
        self._stream = request.stream()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )
        self._exhausted = False

    @property
    def filename(self) -> str:
        return self._state.filename or ""

    async def open(self) -> None:
        while not self._state.file_started:
            if not await self._feed():
                raise _malformed("the form has no `file` field")

    async def chunks(self) -> AsyncIterator[bytes]:
        state = self._state
        while True:
            while state.pending:
                yield state.pending.pop(0)
            if state.file_ended:
                return
            if not await self._feed():
                raise _malformed("the body ended inside the `file` field")

    async def _feed(self) -> bool:
        """Parse one more network read; False once the body is over."""
        if self._exhausted:
            return False
        try:
            chunk = await anext(self._stream)
        except StopAsyncIteration:
            self._exhausted = True
            return False
        try:
            self._parser.write(chunk)
        except MultipartParseError:
            raise _malformed("the multipart body is malformed") from None
        return True

    # python-multipart's callbacks, called inside write().

    def _part_begin(self) -> None:
        s = self._state
        s.disposition = b""
        s.in_file = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._state.header_field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        s = self._state
        s.header_value += data[start:end]
        if len(s.header_value) > _MAX_OTHER_FIELD:
            raise _malformed("a part's header is too long")

    def _header_end(self) -> None:
        s = self._state
        if bytes(s.header_field).lower() == b"content-disposition":
            s.disposition = bytes(s.header_value)
        s.header_field.clear()
        s.header_value.clear()

    def _headers_finished(self) -> None:
        s = self._state
        _, options = parse_options_header(s.disposition)
        name = options.get(b"name")
        filename = options.get(b"filename")
        # The first `file` part that is a file counts; a second one is skipped.
        if name == FIELD.encode() and filename is not None and not s.file_started:
            s.in_file = True
            s.file_started = True
            s.filename = filename.decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        s = self._state
        if s.in_file:
            s.pending.append(data[start:end])
            return
        s.other_bytes += end - start
        if s.other_bytes > _MAX_OTHER_FIELD:
            raise _malformed(f"fields other than `{FIELD}` may hold {_MAX_OTHER_FIELD} bytes")

    def _part_end(self) -> None:
        s = self._state
        if s.in_file:
            s.in_file = False
            s.file_ended = True
