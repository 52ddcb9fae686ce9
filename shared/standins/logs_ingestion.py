"""A local stand-in for Azure Monitor's Logs Ingestion API.

`POST /dataCollectionRules/{dcr_id}/streams/{stream}?api-version=2023-01-01` with a JSON
array of rows (optionally gzip'd), answered with 204 when accepted. One stand-in is one DCR,
which may declare several streams, each with its own columns. It enforces the
documented limits: 1 MB (1,048,576 bytes) per call, compressed and uncompressed. Where the
real service silently drops a row or column that does not fit the stream declaration, this
stand-in answers 400 instead, so tests catch schema drift. Field values over 64 KB are
accepted (the real service truncates them) and listed in `.oversized_fields`.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from shared.standins.server import LOOPBACK, Fault, RecordedRequest, Response, StandInServer, json_response

API_PATH = re.compile(r"^/dataCollectionRules/(?P<dcr>[^/]+)/streams/(?P<stream>[^/]+)/?$")
SUPPORTED_API_VERSIONS = frozenset({"2023-01-01", "2021-11-01-preview"})
MAX_BODY_BYTES = 1_048_576
MAX_FIELD_BYTES = 65_536
# Decompression stops counting here: nothing legitimate is anywhere near it.
_MAX_INFLATED_BYTES = 256 * 1024 * 1024

_ERROR_CODES = {
    400: "InvalidPayload",
    401: "InvalidAuthenticationToken",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    413: "ContentLengthLimitExceeded",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
_ERROR_MESSAGES = {
    403: "The principal does not have permission to send data to this data collection rule.",
    429: "Too many requests were sent to this data collection rule. Retry after the Retry-After interval.",
    500: "An internal error occurred while processing the request.",
    503: "The service is temporarily unavailable.",
}


@dataclass(frozen=True)
class OversizedField:
    request_number: int
    row_index: int  # index of the row within its request
    column: str
    size: int  # UTF-8 bytes


class _Rejected(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _default_columns() -> dict[str, str]:
    from shared.schema import COLUMNS

    return {column.name: column.type for column in COLUMNS}


def _column_types(columns: Mapping[str, str] | Iterable[Any]) -> dict[str, str]:
    if isinstance(columns, Mapping):
        return dict(columns)
    return {column.name: column.type for column in columns}


class LogsIngestionStandIn(StandInServer):
    """See the module docstring.

    `stream_name` and `columns` declare the DCR's first stream (the audit stream);
    `streams` declares further ones, `{stream name: columns}`. Columns are a mapping of
    column name → type (`string`, `boolean`, `long`, `int`, `real`, `datetime`, `dynamic`),
    or an iterable of objects with `.name` and `.type`; `columns` defaults to
    `shared.schema.COLUMNS`. `expected_token`: if set, the Bearer token must equal it; if
    None any non-empty Bearer token is accepted.
    """

    def __init__(
        self,
        dcr_id: str,
        stream_name: str,
        columns: Mapping[str, str] | Iterable[Any] | None = None,
        expected_token: str | None = None,
        *,
        streams: Mapping[str, Mapping[str, str] | Iterable[Any]] | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_field_bytes: int = MAX_FIELD_BYTES,
        ssl_context: ssl.SSLContext | None = None,
        host: str = LOOPBACK,
        port: int = 0,
    ):
        self.dcr_id = dcr_id
        self.stream_name = stream_name
        self.columns = _default_columns() if columns is None else _column_types(columns)
        if stream_name in (streams or {}):
            raise ValueError(f"stream {stream_name!r} is declared twice: pass it as stream_name or in streams")
        # Every declared stream, the first one first: name -> column name -> type.
        self.stream_columns: dict[str, dict[str, str]] = {
            stream_name: self.columns,
            **{name: _column_types(declared) for name, declared in (streams or {}).items()},
        }
        self.expected_token = expected_token
        self.max_body_bytes = max_body_bytes
        self.max_field_bytes = max_field_bytes
        self._rows_by_stream: dict[str, list[dict[str, Any]]] = {name: [] for name in self.stream_columns}
        self._oversized: list[OversizedField] = []
        self._reject_rules: list[Callable[[Mapping[str, Any]], bool]] = []
        self._data_lock = threading.Lock()
        super().__init__(ssl_context=ssl_context, host=host, port=port)

    # -- results ------------------------------------------------------------------------------

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every accepted row of the first stream, in the order received (a copy of the list)."""
        return self.rows_of(self.stream_name)

    def rows_of(self, stream: str) -> list[dict[str, Any]]:
        """Every accepted row of `stream`, in the order received (a copy of the list)."""
        if stream not in self._rows_by_stream:
            raise KeyError(f"stream {stream!r} is not declared; declared: {', '.join(self._rows_by_stream)}")
        with self._data_lock:
            return list(self._rows_by_stream[stream])

    @property
    def oversized_fields(self) -> list[OversizedField]:
        with self._data_lock:
            return list(self._oversized)

    @property
    def ingest_url(self) -> str:
        return f"{self.url}/dataCollectionRules/{self.dcr_id}/streams/{self.stream_name}?api-version=2023-01-01"

    def reject_rows(self, predicate: Callable[[Mapping[str, Any]], bool] | None) -> None:
        """Answer 400 InvalidPayload to any request holding a row for which `predicate(row)`
        is true (the whole request is refused, as the real service refuses whole calls).
        The rules apply to the rows of every stream. `reject_rows(None)` removes every rule."""
        with self._data_lock:
            if predicate is None:
                self._reject_rules.clear()
            else:
                self._reject_rules.append(predicate)

    # -- HTTP ---------------------------------------------------------------------------------

    def error_response(self, status: int, message: str | None = None, code: str | None = None) -> Response:
        code = code or _ERROR_CODES.get(status, f"Http{status}")
        text = message or _ERROR_MESSAGES.get(status) or code
        return json_response(status, {"error": {"code": code, "message": text}})

    def handle(self, request: RecordedRequest, body: bytes, fault: Fault | None) -> Response:
        try:
            self._accept(request, body)
        except _Rejected as rejected:
            request.error_code = rejected.code
            return self.error_response(rejected.status, rejected.message, rejected.code)
        return Response(204)

    def _accept(self, request: RecordedRequest, body: bytes) -> None:
        match = API_PATH.match(request.path)
        if match is None:
            raise _Rejected(404, "NotFound", f"The resource '{request.path}' was not found.")
        if request.method != "POST":
            raise _Rejected(405, "MethodNotAllowed", f"Method {request.method} is not allowed.")
        api_version = request.query.get("api-version")
        if not api_version:
            raise _Rejected(400, "MissingApiVersionParameter", "The api-version query parameter is required.")
        if api_version not in SUPPORTED_API_VERSIONS:
            raise _Rejected(400, "UnsupportedApiVersion", f"The api-version '{api_version}' is not supported.")
        self._check_auth(request.headers.get("Authorization"))
        dcr_id, stream = unquote(match["dcr"]), unquote(match["stream"])
        if dcr_id != self.dcr_id:
            raise _Rejected(404, "NotFound", f"Data collection rule '{dcr_id}' was not found.")
        if stream not in self.stream_columns:
            raise _Rejected(404, "NotFound", f"Stream '{stream}' is not declared in data collection rule '{dcr_id}'.")

        self._check_size(len(body))
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding == "gzip":
            body, request.uncompressed_size = self._gunzip(body)
        elif encoding in ("", "identity"):
            request.uncompressed_size = len(body)
        else:
            raise _Rejected(400, "InvalidContentEncoding", f"Content-Encoding '{encoding}' is not supported.")
        self._check_size(request.uncompressed_size)

        rows = self._parse(body)
        request.row_count = len(rows)
        oversized = self._validate(request.number, stream, rows)
        with self._data_lock:
            rules = list(self._reject_rules)
        for index, row in enumerate(rows):
            if any(rule(row) for rule in rules):
                raise _Rejected(400, "InvalidPayload", f"Row {index} was refused by the data collection rule.")
        with self._data_lock:
            self._rows_by_stream[stream].extend(rows)
            self._oversized.extend(oversized)

    def _check_auth(self, header: str | None) -> None:
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Rejected(401, "InvalidAuthenticationToken", "A Bearer token is required.")
        if self.expected_token is not None and token.strip() != self.expected_token:
            raise _Rejected(401, "InvalidAuthenticationToken", "The access token is invalid.")

    def _check_size(self, size: int) -> None:
        if size > self.max_body_bytes:
            mb = self.max_body_bytes / 1_048_576
            raise _Rejected(
                413,
                "ContentLengthLimitExceeded",
                f"Maximum allowed content length: {self.max_body_bytes} bytes ({mb:g} MB). "
                f"Provided content length: {size} bytes.",
            )

    def _gunzip(self, data: bytes) -> tuple[bytes, int]:
        """The inflated body (only kept while within the limit) and its full size."""
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        kept: list[bytes] = []
        total = 0
        pending = data
        try:
            while pending and not inflater.eof:
                piece = inflater.decompress(pending, 1024 * 1024)
                pending = inflater.unconsumed_tail
                total += len(piece)
                if total <= self.max_body_bytes:
                    kept.append(piece)
                if total > _MAX_INFLATED_BYTES:
                    break
            if not inflater.eof and total <= self.max_body_bytes:
                raise _Rejected(400, "InvalidPayload", "The gzip body is incomplete.")
        except zlib.error as error:
            raise _Rejected(400, "InvalidPayload", f"The body is not valid gzip: {error}") from error
        return b"".join(kept), total

    @staticmethod
    def _parse(body: bytes) -> list[dict[str, Any]]:
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise _Rejected(400, "InvalidPayload", f"The request body is not valid JSON: {error}") from error
        if not isinstance(payload, list):
            raise _Rejected(400, "InvalidPayload", "The request body must be a JSON array of objects.")
        for index, row in enumerate(payload):
            if not isinstance(row, dict):
                raise _Rejected(400, "InvalidPayload", f"Row {index} is not a JSON object.")
        return payload

    def _validate(self, request_number: int, stream: str, rows: list[dict[str, Any]]) -> list[OversizedField]:
        columns = self.stream_columns[stream]
        oversized: list[OversizedField] = []
        for index, row in enumerate(rows):
            for column, value in row.items():
                expected = columns.get(column)
                if expected is None:
                    raise _Rejected(
                        400, "InvalidPayload",
                        f"Row {index}: column '{column}' is not declared in stream '{stream}'.",
                    )
                if not _fits(value, expected):
                    raise _Rejected(
                        400, "InvalidPayload",
                        f"Row {index}: column '{column}' expects {expected}, got {type(value).__name__} "
                        f"{_preview(value)}.",
                    )
                if isinstance(value, str):
                    size = len(value.encode("utf-8"))
                    if size > self.max_field_bytes:
                        oversized.append(OversizedField(request_number, index, column, size))
        return oversized


def _fits(value: Any, column_type: str) -> bool:
    if value is None:
        return True
    if column_type in ("string", "guid"):
        return isinstance(value, str)
    if column_type in ("boolean", "bool"):
        return isinstance(value, bool)
    if column_type in ("long", "int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if column_type == "real":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if column_type == "datetime":
        return isinstance(value, str) and _is_iso_datetime(value)
    return column_type == "dynamic"


def _is_iso_datetime(text: str) -> bool:
    candidate = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        datetime.fromisoformat(candidate)
    except ValueError:
        return False
    return True


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
