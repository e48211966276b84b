"""A real HTTP server on loopback that answers from a script and records what it was sent.

Tests of the HTTP backends run against :class:`ScriptedServer` instead of mocking httpx, so the
whole stack (connection pool, keep-alive, Content-Length, timeouts, broken connections) is real.
It binds ``127.0.0.1`` on an ephemeral port, serves each connection in its own daemon thread, and
answers every request with the next :class:`Reply` of its queue (or :attr:`ScriptedServer.default`
once the queue is empty). Every request is recorded as a :class:`RecordedRequest`.

Use it as a context manager (or call :meth:`~ScriptedServer.start` / :meth:`~ScriptedServer.stop`);
stopping wakes handlers that are sleeping in a :attr:`Reply.delay` (or between the chunks of a
trickled body) and closes open connections.

Besides plain answers, a :class:`Reply` can misbehave the ways real servers and proxies do: a
body trickled a few bytes at a time (``chunk_size``, ``trickle_s``), a chunked body
(``chunked``) that breaks off before its last chunk (with ``truncate``), any content type
(``content_type``: an HTML error page, a ``text/event-stream``), and fields or headers that quote
the request's headers back (``echo_authorization``, ``echo_headers``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["RecordedRequest", "Reply", "ScriptedServer", "unused_port"]

_LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    ``json`` is serialized as the body (with ``Content-Type: application/json``) unless ``body``
    gives raw bytes. ``delay`` sleeps before answering. ``truncate`` advertises a Content-Length
    larger than the body, sends the body, then closes the connection. ``echo_authorization``
    makes it a careless server that quotes the request's ``Authorization`` header wherever the
    body says ``{authorization}``.

    Added for fault injection (each defaults to the plain behaviour above):

    - ``content_type`` replaces the Content-Type (``text/html`` for a proxy's error page,
      ``text/event-stream`` for a stream).
    - ``chunk_size`` sends the body in pieces of that many bytes, and ``trickle_s`` sleeps before
      every piece after the first: a slow trickle, each read well within a read timeout.
    - ``chunked`` sends ``Transfer-Encoding: chunked`` instead of a Content-Length; with
      ``truncate`` the connection closes before the terminating chunk (a broken stream).
    - ``echo_headers`` quotes every request header (``name: value; ...``, escaped for a JSON
      string) wherever the body says ``{headers}``, and both placeholders in the values of
      ``headers`` too: a server that echoes the request into its answer's headers.
    """

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    truncate: bool = False
    echo_authorization: bool = False
    content_type: str | None = None
    chunk_size: int = 0
    trickle_s: float = 0.0
    chunked: bool = False
    echo_headers: bool = False

    def payload(self) -> tuple[bytes, str]:
        """The body bytes and their content type."""
        if self.body is not None:
            return self.body, self.content_type or "text/plain; charset=utf-8"
        return json.dumps(self.json).encode(), self.content_type or "application/json"

    def pieces(self, data: bytes) -> list[bytes]:
        """The body as it is written: whole, or in ``chunk_size`` pieces."""
        if self.chunk_size <= 0 or not data:
            return [data]
        return [data[i : i + self.chunk_size] for i in range(0, len(data), self.chunk_size)]


def _quoted_headers(headers: Mapping[str, str]) -> bytes:
    """Every header as ``name: value; ...``, escaped to sit inside a JSON string."""
    listing = "; ".join(f"{name}: {value}" for name, value in headers.items())
    return json.dumps(listing)[1:-1].encode()


@dataclass(frozen=True)
class RecordedRequest:
    """What the server received: method, path, headers (lower-cased names) and body."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: ScriptedServer) -> None:
        self.owner = owner
        super().__init__((_LOOPBACK, 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up mid-answer is expected in these tests; keep stderr quiet.
        return


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    timeout = 10  # an idle keep-alive connection cannot hold a handler thread for long
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = owner._record_and_pop(RecordedRequest(self.command, self.path, headers, body))
        if reply.delay and owner._stopping.wait(reply.delay):
            self.close_connection = True
            return
        data, content_type = reply.payload()
        authorization = headers.get("authorization", "").encode()
        if reply.echo_authorization:
            data = data.replace(b"{authorization}", authorization)
        if reply.echo_headers:
            data = data.replace(b"{headers}", _quoted_headers(headers))
        extra = dict(reply.headers)
        if reply.echo_headers:
            quoted = _quoted_headers(headers).decode()
            extra = {
                name: value.replace("{authorization}", authorization.decode()).replace(
                    "{headers}", quoted
                )
                for name, value in extra.items()
            }
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", content_type)
            if reply.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                advertised = len(data) + 1000 if reply.truncate else len(data)
                self.send_header("Content-Length", str(advertised))
            for name, value in extra.items():
                self.send_header(name, value)
            if reply.truncate:
                self.send_header("Connection", "close")
            self.end_headers()
            for number, piece in enumerate(reply.pieces(data)):
                if number and reply.trickle_s and owner._stopping.wait(reply.trickle_s):
                    self.close_connection = True
                    return
                framed = b"%x\r\n%s\r\n" % (len(piece), piece) if reply.chunked else piece
                self.wfile.write(framed if piece or not reply.chunked else b"")
                self.wfile.flush()
            if reply.chunked and not reply.truncate:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except OSError:  # the client gave up (e.g. its read timeout fired)
            self.close_connection = True
            return
        if reply.truncate:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


class ScriptedServer:
    """An HTTP/1.1 server on 127.0.0.1 answering from a queue of :class:`Reply` objects."""

    def __init__(self, default: Reply | None = None) -> None:
        self.default = default or Reply(status=599, json={"error": "no reply scripted"})
        self._lock = threading.Lock()
        self._queue: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- scripting ---------------------------------------------------------------------------

    def enqueue(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order."""
        with self._lock:
            self._queue.extend(replies)

    def always(self, reply: Reply) -> None:
        """Answer with ``reply`` whenever the queue is empty."""
        with self._lock:
            self.default = reply

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    # -- addresses ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The OpenAI-style base URL, ``http://127.0.0.1:<port>/v1``."""
        return f"http://{_LOOPBACK}:{self.port}/v1"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ScriptedServer:
        if self._server is not None:
            raise RuntimeError("server already started")
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"scripted-http-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers and close every open connection."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- used by the handler -----------------------------------------------------------------

    def _record_and_pop(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            return self._queue.popleft() if self._queue else self.default

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)


def unused_port() -> int:
    """A loopback port that nothing listens on: bound, read, and closed again."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        return int(sock.getsockname()[1])
