"""A real OTLP/HTTP trace receiver on loopback, for testing span export end to end.

:class:`OtlpReceiver` is a small threaded HTTP server on ``127.0.0.1`` (an ephemeral port) that
accepts ``POST /v1/traces`` with an ``application/x-protobuf`` body (plain, gzip or deflate),
decodes it with OpenTelemetry's own proto package (``ExportTraceServiceRequest``) and keeps every
span it received as a :class:`ReceivedSpan`: ids as lower-case hex, name, attributes and its
resource's attributes decoded to Python values. Answers are real ``ExportTraceServiceResponse``
bodies; set :attr:`OtlpReceiver.status` to make it answer with an error instead.

Exporters in other processes (Ray actors) reach it too, since it listens on a real socket::

    with OtlpReceiver() as receiver:
        sink = OtlpSpanSink(OtlpConfig(endpoint=receiver.endpoint), resource={})
        ...
        spans = receiver.wait_for(lambda spans: len(spans) >= 3)

:meth:`~OtlpReceiver.wait_for` polls until a predicate over the spans holds (no timing asserts:
its limit only bounds a broken test).
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status

__all__ = ["TRACES_PATH", "OtlpReceiver", "ReceivedExport", "ReceivedSpan", "decode"]

_LOOPBACK = "127.0.0.1"
TRACES_PATH = "/v1/traces"
_STATUS = {
    Status.STATUS_CODE_UNSET: "unset",
    Status.STATUS_CODE_OK: "ok",
    Status.STATUS_CODE_ERROR: "error",
}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the collector saw it. Ids are hex; ``parent_span_id`` is None for a root."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status: str  # "unset", "ok" or "error"
    status_message: str
    attributes: Mapping[str, Any]
    resource: Mapping[str, Any]
    scope: str


@dataclass(frozen=True)
class ReceivedExport:
    """One export request: its headers (lower-case names), encoding and how many spans."""

    headers: Mapping[str, str]
    content_encoding: str
    span_count: int


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return None if which is None else getattr(value, which)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one serialized ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=span.kind,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        status=_STATUS.get(span.status.code, str(span.status.code)),
                        status_message=span.status.message,
                        attributes=_attributes(span.attributes),
                        resource=resource,
                        scope=scope_spans.scope.name,
                    )
                )
    return spans


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: OtlpReceiver) -> None:
        self.owner = owner
        super().__init__((_LOOPBACK, 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # an exporter that hung up mid-request is not the test's concern


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as real collectors do

    def log_message(self, format: str, *args: Any) -> None:
        return  # keep the test output clean

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != TRACES_PATH:
            self._answer(404, b"not found", "text/plain")
            return
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/x-protobuf":
            self._answer(415, b"only application/x-protobuf", "text/plain")
            return
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            spans = decode(body)
        except Exception as exc:  # a payload that does not decode is the exporter's bug
            self._answer(400, f"undecodable: {type(exc).__name__}".encode(), "text/plain")
            return
        owner = self.server.owner
        status = owner.status
        if status == 200:
            headers = {name.lower(): value for name, value in self.headers.items()}
            owner._record(ReceivedExport(headers, encoding, len(spans)), spans)
            reply = ExportTraceServiceResponse().SerializeToString()
            self._answer(200, reply, "application/x-protobuf")
        else:
            self._answer(status, b"scripted failure", "text/plain")


class OtlpReceiver:
    """A collector's OTLP/HTTP trace endpoint on ``127.0.0.1``; records what it receives."""

    def __init__(self) -> None:
        self.status = 200
        """The HTTP status to answer with; anything but 200 drops the spans sent."""
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self._exports: list[ReceivedExport] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: the value for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        if self._server is None:
            raise RuntimeError("the receiver is not started")
        return f"http://{_LOOPBACK}:{self._server.server_address[1]}"

    @property
    def endpoint(self) -> str:
        """The traces URL: the value for ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``."""
        return self.base_url + TRACES_PATH

    @property
    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._spans)

    @property
    def exports(self) -> list[ReceivedExport]:
        """Every accepted export request so far (a copy)."""
        with self._lock:
            return list(self._exports)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        """The spans received for ``trace_id`` (32 hex digits)."""
        return [span for span in self.spans if span.trace_id == trace_id]

    def _record(self, export: ReceivedExport, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self._exports.append(export)
            self._spans.extend(spans)

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], limit_s: float = 30.0
    ) -> list[ReceivedSpan]:
        """Poll until ``predicate(spans)`` holds, and return the spans; fail after ``limit_s``."""
        give_up = time.monotonic() + limit_s
        while True:
            spans = self.spans
            if predicate(spans):
                return spans
            if time.monotonic() > give_up:
                names = [span.name for span in spans]
                raise AssertionError(f"no match after {limit_s} s; received {names}")
            time.sleep(0.05)

    def start(self) -> OtlpReceiver:
        """Bind an ephemeral port on loopback and serve from a daemon thread."""
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
