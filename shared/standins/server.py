"""Plumbing shared by the local stand-ins: a quiet threaded HTTP(S) server and a fault script.

A stand-in subclasses `StandInServer` and implements `handle()`. Every request is
recorded (`.requests`), then offered to the stand-in's `FaultScript` (`.faults`); a
matching `Fault` replaces or alters the normal answer. Nothing here writes to stderr.

Example::

    api.faults.add(Fault.respond(429, headers={"Retry-After": "2"}, times=2))
    api.faults.add(Fault.reset(match=3))                      # the 3rd request to this server
    api.faults.add(Fault.delay(5, match=lambda r: "continuationToken" in r.query))
    ingestion.faults.add(Fault.hold_response(30))            # accept the rows, answer 30 s later
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

LOOPBACK = "127.0.0.1"
# Bodies larger than this are not read at all: the server answers 413 and drops the connection.
MAX_REQUEST_BYTES = 64 * 1024 * 1024
STREAM_CHUNK_BYTES = 64 * 1024
_HANDSHAKE_TIMEOUT = 10.0
_IDLE_TIMEOUT = 30.0
_NETWORK_ERRORS = (OSError, ssl.SSLError, ValueError)


class Headers(dict):
    """Request headers. Keys are stored lower-case; lookups ignore case."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()):
        super().__init__()
        for key, value in items:
            super().__setitem__(key.lower(), value)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


@dataclass(eq=False)
class RecordedRequest:
    """One request a stand-in received. The stand-in fills in the fields below `body_size`."""

    number: int  # 1-based, per stand-in
    method: str
    path: str  # without the query string, still percent-encoded
    query: dict[str, str]  # first value of each parameter
    headers: Headers
    body_size: int  # bytes on the wire (compressed size when gzip'd)
    status: int | None = None  # None when the connection was reset or never answered
    fault: str | None = None  # kind of the Fault that fired for this request
    uncompressed_size: int | None = None
    row_count: int | None = None
    error_code: str | None = None
    handled: bool = False  # the stand-in processed the request (e.g. accepted its rows)
    response_bytes: int = 0  # body bytes handed to the socket, counted as they are written


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


def json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return Response(status, body, dict(headers or {}), "application/json; charset=utf-8")


Matcher = None | int | Container[int] | Callable[[RecordedRequest], bool]

_GENERIC_HTML = (
    "<!DOCTYPE html>\n<html><head><title>Service temporarily unavailable</title></head>\n"
    "<body><h1>We'll be right back</h1><p>The service is undergoing maintenance. "
    "Please try again later.</p></body></html>\n"
)


@dataclass(eq=False)
class Fault:
    """A scripted misbehaviour. Build one with the class methods, e.g. `Fault.respond(503)`.

    `match` picks the requests it applies to: None (any request), an int (the request with
    that 1-based number on this stand-in), a container of ints (e.g. `range(2, 5)`), or a
    predicate taking a `RecordedRequest`. `times` is how many matching requests it fires for
    (None = every one). `fired` counts how often it fired.
    """

    kind: str
    match: Matcher = None
    times: int | None = 1
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    content_type: str | None = None
    seconds: float = 0.0
    size: int = 0
    keep: float = 0.5
    short_read: bool = False
    chunked: bool = False
    fired: int = field(default=0, init=False)

    KINDS: ClassVar[frozenset[str]] = frozenset(
        {
            "respond",  # answer with `status`, `headers`, `body` instead of the normal answer
            "reset",  # drop the connection with a TCP RST, no response at all
            "delay",  # wait `seconds`, then answer normally
            "truncated_json",  # the normal answer cut to `keep` of its bytes
            "html_page",  # an HTML page with `status` (200 by default)
            "large_body",  # 200 with a body of `size` bytes, streamed
            "empty_page_with_token",  # Pulumi: no events, but a continuation token (same position)
            "repeated_token",  # Pulumi: the page's token equals the request's token
            "hold_response",  # process the request normally (rows are accepted), answer `seconds` later
        }
    )

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(self.KINDS)}")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1, or None for every matching request")

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def respond(
        cls,
        status: int,
        *,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
        match: Matcher = None,
        times: int | None = 1,
    ) -> Fault:
        """Answer `status`. `body`: dict/list (JSON), str, bytes, or None for the stand-in's
        usual error body for that status."""
        return cls("respond", match, times, status=status, headers=dict(headers or {}), body=body,
                   content_type=content_type)

    @classmethod
    def reset(cls, *, match: Matcher = None, times: int | None = 1) -> Fault:
        return cls("reset", match, times)

    @classmethod
    def delay(cls, seconds: float, *, match: Matcher = None, times: int | None = 1) -> Fault:
        return cls("delay", match, times, seconds=float(seconds))

    @classmethod
    def hold_response(cls, seconds: float, *, match: Matcher = None, times: int | None = 1) -> Fault:
        """Process the request as usual (Logs Ingestion accepts and keeps the rows), then hold
        the answer back `seconds`: the client sees a slow service that has already done the work.
        If the stand-in closes first, the answer is never sent."""
        return cls("hold_response", match, times, seconds=float(seconds))

    @classmethod
    def truncated_json(
        cls, *, keep: float = 0.5, short_read: bool = False, match: Matcher = None, times: int | None = 1
    ) -> Fault:
        """Cut the normal body to `keep` (0..1) of its bytes. With `short_read`, Content-Length
        still announces the full body and the connection closes early (an incomplete read)."""
        if not 0 <= keep < 1:
            raise ValueError("keep must be in [0, 1)")
        return cls("truncated_json", match, times, keep=keep, short_read=short_read)

    @classmethod
    def html_page(
        cls, *, status: int = 200, body: str | None = None, match: Matcher = None, times: int | None = 1
    ) -> Fault:
        return cls("html_page", match, times, status=status, body=body)

    @classmethod
    def large_body(cls, size: int, *, chunked: bool = False, match: Matcher = None, times: int | None = 1) -> Fault:
        """A 200 JSON-looking body of `size` bytes, streamed (never held in memory). With
        `chunked`, no Content-Length is sent."""
        if size < 0:
            raise ValueError("size must be >= 0")
        return cls("large_body", match, times, size=size, chunked=chunked)

    @classmethod
    def empty_page_with_token(cls, *, match: Matcher = None, times: int | None = 1) -> Fault:
        return cls("empty_page_with_token", match, times)

    @classmethod
    def repeated_token(cls, *, match: Matcher = None, times: int | None = 1) -> Fault:
        return cls("repeated_token", match, times)

    # -- matching -------------------------------------------------------------------------

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times

    def matches(self, request: RecordedRequest) -> bool:
        match = self.match
        if match is None:
            return True
        if isinstance(match, bool):
            return match
        if isinstance(match, int):
            return request.number == match
        if callable(match):
            return bool(match(request))
        return request.number in match


class FaultScript:
    """A thread-safe, ordered list of pending faults. The first pending fault that matches a
    request fires for it (and counts down its `times`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[Fault] = []
        self._history: list[tuple[int, str]] = []

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._pending.append(fault)
        return fault

    def extend(self, faults: Iterable[Fault]) -> None:
        for fault in faults:
            self.add(fault)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()

    def take(self, request: RecordedRequest) -> Fault | None:
        with self._lock:
            for fault in self._pending:
                if fault.matches(request):
                    fault.fired += 1
                    if fault.exhausted:
                        self._pending.remove(fault)
                    self._history.append((request.number, fault.kind))
                    return fault
        return None

    @property
    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._pending)

    @property
    def history(self) -> list[tuple[int, str]]:
        """(request number, fault kind) for every fault that fired, in order."""
        with self._lock:
            return list(self._history)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)


class _BodyTooLarge(Exception):
    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


class _BadBody(Exception):
    pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], standin: StandInServer, ssl_context: ssl.SSLContext | None):
        self.standin = standin
        self.ssl_context = ssl_context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def finish_request(self, request: socket.socket, client_address: Any) -> None:
        # Runs in the per-connection thread, so a slow TLS handshake never blocks accept().
        connection = request
        try:
            if self.ssl_context is not None:
                request.settimeout(_HANDSHAKE_TIMEOUT)
                try:
                    connection = self.ssl_context.wrap_socket(request, server_side=True)
                except _NETWORK_ERRORS:
                    return
            with self._connections_lock:
                self._connections.add(connection)
            with contextlib.suppress(_NETWORK_ERRORS):
                self.RequestHandlerClass(connection, client_address, self)
        finally:
            with self._connections_lock:
                self._connections.discard(connection)
            if connection is not request:
                _quiet_close(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Never print tracebacks to stderr; keep them for debugging instead.
        import sys

        self.standin._record_error(sys.exc_info()[1])

    def drop_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(_NETWORK_ERRORS):
                connection.shutdown(socket.SHUT_RDWR)


def _quiet_close(sock: socket.socket) -> None:
    with contextlib.suppress(_NETWORK_ERRORS):
        sock.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "stand-in/1.0"
    sys_version = ""
    timeout = _IDLE_TIMEOUT
    disable_nagle_algorithm = True
    server: _HTTPServer

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # -- request side -----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_text = self.headers.get("Content-Length")
        if not length_text:
            return b""
        try:
            length = int(length_text)
        except ValueError as error:
            raise _BadBody("invalid Content-Length") from error
        if length < 0:
            raise _BadBody("invalid Content-Length")
        if length > MAX_REQUEST_BYTES:
            raise _BodyTooLarge(length)
        body = self.rfile.read(length)
        if len(body) != length:
            raise _BadBody("body shorter than Content-Length")
        return body

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as error:
                raise _BadBody("malformed chunked body") from error
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_REQUEST_BYTES:
                raise _BodyTooLarge(total)
            parts.append(self.rfile.read(size))
            self.rfile.readline(8)

    def _dispatch(self) -> None:
        standin = self.server.standin
        try:
            body = self._read_body()
        except _BodyTooLarge as error:
            record = standin._record(self, error.size)
            self.close_connection = True
            self._write(standin.error_response(413, f"request body of {error.size} bytes is too large"), record)
            return
        except _BadBody as error:
            record = standin._record(self, 0)
            self.close_connection = True
            self._write(standin.error_response(400, str(error)), record)
            return

        record = standin._record(self, len(body))
        fault = standin.faults.take(record)
        if fault is not None:
            record.fault = fault.kind
            if fault.kind == "reset":
                self._reset()
                return
            if fault.kind == "respond":
                self._write(standin.fault_response(fault), record)
                return
            if fault.kind == "html_page":
                html = fault.body if fault.body is not None else _GENERIC_HTML
                self._write(Response(fault.status or 200, html.encode("utf-8"), {}, "text/html; charset=utf-8"),
                            record)
                return
            if fault.kind == "large_body":
                self._stream_large_body(fault, record)
                return
            if fault.kind == "delay" and standin._stopping.wait(fault.seconds):
                self.close_connection = True
                return

        try:
            response = standin.handle(record, body, fault)
        except Exception as error:  # a bug in a stand-in or a test's predicate: answer, don't hang
            standin._record_error(error)
            response = standin.error_response(500, f"stand-in error: {type(error).__name__}: {error}")
        record.handled = True
        if fault is not None and fault.kind == "hold_response" and standin._stopping.wait(fault.seconds):
            self.close_connection = True
            return
        if fault is not None and fault.kind == "truncated_json":
            self._write_truncated(response, fault, record)
        else:
            self._write(response, record)

    # -- response side ----------------------------------------------------------------------

    def _write(self, response: Response, record: RecordedRequest) -> None:
        record.status = response.status
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if response.status not in (204, 304):
                if response.content_type:
                    self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if response.body and response.status not in (204, 304):
                self.wfile.write(response.body)
                record.response_bytes += len(response.body)
        except _NETWORK_ERRORS:
            self.close_connection = True

    def _write_truncated(self, response: Response, fault: Fault, record: RecordedRequest) -> None:
        record.status = response.status
        body = response.body
        cut = body[: int(len(body) * fault.keep)]
        announced = len(body) if fault.short_read else len(cut)
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", response.content_type or "application/json")
            self.send_header("Content-Length", str(announced))
            if fault.short_read:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(cut)
            record.response_bytes += len(cut)
        except _NETWORK_ERRORS:
            self.close_connection = True

    def _stream_large_body(self, fault: Fault, record: RecordedRequest) -> None:
        record.status = 200
        stopping = self.server.standin._stopping
        filler = b" " * STREAM_CHUNK_BYTES
        prefix = b'{"auditLogEvents":['[: fault.size]
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if fault.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(fault.size))
            self.end_headers()
            remaining = fault.size
            piece = prefix
            while remaining > 0 and not stopping.is_set():
                if not piece:
                    piece = filler[: min(remaining, STREAM_CHUNK_BYTES)]
                if fault.chunked:
                    self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                else:
                    self.wfile.write(piece)
                record.response_bytes += len(piece)
                remaining -= len(piece)
                piece = b""
            if fault.chunked and remaining == 0:
                self.wfile.write(b"0\r\n\r\n")
            if remaining:
                self.close_connection = True
        except _NETWORK_ERRORS:
            self.close_connection = True

    def _reset(self) -> None:
        self.close_connection = True
        with contextlib.suppress(_NETWORK_ERRORS):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        _quiet_close(self.connection)


class StandInServer:
    """A threaded HTTP(S) server on 127.0.0.1 (port 0 → a free port) run in a daemon thread.

    Pass a server-side `ssl.SSLContext` for HTTPS. Use as a context manager or call `close()`.
    Subclasses implement `handle()` and may override `error_response()`.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, host: str = LOOPBACK, port: int = 0):
        self.faults = FaultScript()
        self.errors: list[BaseException] = []
        self._lock = threading.RLock()
        self._requests: list[RecordedRequest] = []
        self._stopping = threading.Event()
        self._closed = False
        self._scheme = "https" if ssl_context is not None else "http"
        self._httpd = _HTTPServer((host, port), self, ssl_context)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._httpd.server_address[0]

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"{self._scheme}://{self.host}:{self.port}"

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.drop_connections()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    # -- records ------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    def _record(self, handler: _Handler, body_size: int) -> RecordedRequest:
        parts = urlsplit(handler.path)
        query = {name: values[0] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
        with self._lock:
            record = RecordedRequest(
                number=len(self._requests) + 1,
                method=handler.command,
                path=parts.path,
                query=query,
                headers=Headers(handler.headers.items()),
                body_size=body_size,
            )
            self._requests.append(record)
        return record

    def _record_error(self, error: BaseException | None) -> None:
        if error is not None:
            with self._lock:
                self.errors.append(error)

    # -- hooks for subclasses -----------------------------------------------------------------

    def handle(self, request: RecordedRequest, body: bytes, fault: Fault | None) -> Response:
        """The normal answer. `fault` is a fault this stand-in must apply itself (or None)."""
        raise NotImplementedError

    def error_response(self, status: int, message: str | None = None) -> Response:
        """The error body this service uses for `status`."""
        return json_response(status, {"code": status, "message": message or _phrase(status)})

    def fault_response(self, fault: Fault) -> Response:
        status = fault.status or 500
        if fault.body is None:
            response = self.error_response(status)
        elif isinstance(fault.body, (dict, list)):
            response = json_response(status, fault.body)
        elif isinstance(fault.body, bytes):
            response = Response(status, fault.body, {}, "application/octet-stream")
        else:
            text = str(fault.body)
            kind = "text/html" if text.lstrip().startswith("<") else "text/plain"
            response = Response(status, text.encode("utf-8"), {}, f"{kind}; charset=utf-8")
        response.headers.update(fault.headers)
        if fault.content_type:
            response.content_type = fault.content_type
        return response


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
