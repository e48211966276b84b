"""OpenTelemetry export of Cantata's spans over OTLP/HTTP (the optional ``otel`` extra).

Each process exports the spans it created itself: a model actor its model calls, the driver or a
deployment's controller the role steps. :class:`OtlpSpanSink` keeps Cantata's ids (the trace id as
it is, the first 64 bits of each span id and parent id), so the spans of one request join into
one trace in the backend, whichever process or node sent them.

:meth:`OtlpConfig.from_env` reads the standard ``OTEL_EXPORTER_OTLP_*`` variables once, in the
driver; the config then travels to every actor pickled, since an actor's environment is its node's,
not the driver's. Header values are :class:`~pydantic.SecretStr`: never in a repr, an error or a
log line. Nothing here is imported until a sink is built, so ``import cantata.cluster`` does not
pay for OpenTelemetry.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.metadata
import importlib.util
import logging
import math
import os
import re
import socket
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import unquote, urlsplit

import structlog
from pydantic import ConfigDict, Field, SecretStr, field_validator

from cantata.agents import Frozen, Span, Telemetry, TopologySpecError, register_secret

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["OtlpConfig", "OtlpConfigError", "OtlpSpanSink", "otel_available"]

log = structlog.get_logger("cantata.otel")

_EXPORTER_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
_INSTALL_HINT = "pip install 'cantata[otel]'"
_HEX = re.compile(r"[0-9a-f]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
# The OpenTelemetry loggers that report our exports' failures, retries and dropped spans. Each
# line repeats per batch or per span; the sink logs one warning of its own instead (filtered
# only on threads inside the sink's own calls, so other users of OpenTelemetry keep theirs).
_NOISY_LOGGERS = (
    _EXPORTER_MODULE,
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.sdk._shared_internal",
)


class OtlpConfigError(TopologySpecError):
    """The ``OTEL_*`` settings cannot be honoured, or the ``otel`` extra is not installed.

    A :class:`~cantata.agents.TopologySpecError`: configuration that is wrong before anything
    ran (the CLI exits 2). Its message names the variable, never a header's value.
    """


def otel_available() -> bool:
    """True when the OTLP/HTTP exporter (the ``otel`` extra) can be imported."""
    try:
        return importlib.util.find_spec(_EXPORTER_MODULE) is not None
    except ImportError:  # a parent package is missing
        return False


def _endpoint_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if parts.username is not None or parts.password is not None:
        # Credentials in a URL end up in logs and reprs; headers are kept secret.
        return "must not hold credentials; put them in OTEL_EXPORTER_OTLP_HEADERS"
    return None


def _safe_url(url: str) -> str:
    """``url`` without user info, query or fragment: what log lines may show."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


class OtlpConfig(Frozen):
    """Where and how to send spans: an OTLP/HTTP traces URL, secret headers, a timeout."""

    # Validation errors would otherwise quote the input, header values included.
    model_config = ConfigDict(hide_input_in_errors=True)

    endpoint: str = Field(description="The traces URL, e.g. http://127.0.0.1:4318/v1/traces.")
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    timeout_s: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    compression: Literal["none", "gzip"] = "none"
    headers_env: str | None = Field(
        default=None,
        description="The variable the headers were read from: pickling (to an actor, whose"
        " arguments Ray keeps in its GCS) sends only its name, and the actor reads its own"
        " environment.",
    )

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        if not self.headers:
            return state
        if self.headers_env is None:
            raise OtlpConfigError(
                "OTLP headers given in code must not leave this process: Ray would keep them,"
                " in clear, with the actors' arguments in its GCS. Set OTEL_EXPORTER_OTLP_HEADERS"
                " (on a cluster, on every node) instead."
            )
        return {**state, "__dict__": {**state["__dict__"], "headers": {}}}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        var = self.headers_env
        if var is not None and (raw := os.environ.get(var, "").strip()):
            headers = {k.lower(): SecretStr(v) for k, v in _parse_headers(var, raw).items()}
            for secret in headers.values():
                register_secret(secret)
            object.__setattr__(self, "headers", headers)
        elif var is not None:
            log.warning(
                "the OTLP headers variable is not set in this process; exporting without them",
                variable=var,
            )

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        if problem := _endpoint_problem(value):
            raise ValueError(f"endpoint {problem}")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in value.items():
            if not _HEADER_NAME.fullmatch(name.lower()):
                raise ValueError("a header name is not an HTTP token")
            if any(ch in secret.get_secret_value() for ch in "\r\n\0"):
                raise ValueError(f"the value of header {name!r} holds a line break")
            register_secret(secret)  # a collector token: scrubbed from logs like an API key
        return {name.lower(): secret for name, secret in value.items()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OtlpConfig | None:
        """The config the standard ``OTEL_*`` variables describe; None when export is off.

        Off means: no ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``,
        ``OTEL_SDK_DISABLED=true``, or ``OTEL_TRACES_EXPORTER`` not naming ``otlp``. The
        ``_TRACES_`` variant of each variable wins over the general one; the general endpoint
        gets ``/v1/traces`` appended. Raises :class:`OtlpConfigError` for a protocol other than
        ``http/protobuf`` and for malformed values.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> tuple[str, str] | None:
            for var in (f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
                if value := env.get(var, "").strip():  # the spec: empty means unset
                    return var, value
            return None

        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return None
        exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",")}
        exporters.discard("")
        if exporters and "otlp" not in exporters:
            if exporters != {"none"}:
                log.warning("OTEL_TRACES_EXPORTER names no otlp; not exporting", names=exporters)
            return None
        if traces := env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
            var, endpoint = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces
        elif base := env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
            var, endpoint = "OTEL_EXPORTER_OTLP_ENDPOINT", base.rstrip("/") + "/v1/traces"
        else:
            return None
        if problem := _endpoint_problem(endpoint):
            raise OtlpConfigError(f"{var} {problem}")
        if (protocol := get("PROTOCOL")) and protocol[1].lower() != "http/protobuf":
            raise OtlpConfigError(
                f"{protocol[0]}={protocol[1]!r}: Cantata exports traces over OTLP/HTTP only;"
                " only http/protobuf is supported (use the collector's HTTP port, usually 4318)"
            )
        timeout_s = 10.0
        if timeout := get("TIMEOUT"):
            try:
                timeout_s = float(timeout[1]) / 1000  # the spec gives it in milliseconds
            except ValueError:
                timeout_s = math.nan
            if not (math.isfinite(timeout_s) and timeout_s > 0):
                raise OtlpConfigError(f"{timeout[0]} must be a positive number of milliseconds")
        compression = "none"
        if found := get("COMPRESSION"):
            compression = found[1].lower()
            if compression not in ("none", "gzip"):
                raise OtlpConfigError(f"{found[0]} must be gzip or none")
        found = get("HEADERS")
        headers = _parse_headers(*found) if found else {}
        return cls(
            endpoint=endpoint,
            headers={k: SecretStr(v) for k, v in headers.items()},
            headers_env=found[0] if found else None,
            timeout_s=timeout_s,
            compression=cast(Literal["none", "gzip"], compression),
        )


def _parse_headers(var: str, raw: str) -> dict[str, str]:
    """``k=v,k2=v2`` with URL-encoded keys and values. Errors never quote the text."""
    headers: dict[str, str] = {}
    for number, entry in enumerate(raw.split(","), start=1):
        if not entry.strip():
            continue
        name, equals, value = entry.partition("=")
        name = unquote(name).strip().lower()
        if not equals or not _HEADER_NAME.fullmatch(name):
            raise OtlpConfigError(f"{var}: entry {number} is not name=value with a valid name")
        value = unquote(value).strip()
        if any(ch in value for ch in "\r\n\0"):
            raise OtlpConfigError(f"{var}: the value of {name!r} holds a line break")
        headers[name] = value
    return headers


def _id(value: str, hex_chars: int) -> int:
    """The OpenTelemetry id of a Cantata id: its first ``hex_chars`` hex digits.

    Ids that are not hex (a caller's own trace id, say) are hashed instead; either way the same
    text gives the same number in every process, so parent links survive.
    """
    text = value.lower()
    if _HEX.fullmatch(text) and len(text) <= 32 and (number := int(text[:hex_chars], 16)):
        return number
    digest = hashlib.blake2b(value.encode(), digest_size=hex_chars // 2).digest()
    return int.from_bytes(digest, "big") or 1


def _to_readable(span: Span, resource: Resource, scope_version: str | None) -> ReadableSpan:
    """``span`` as an ended OpenTelemetry span with Cantata's ids."""
    from opentelemetry.sdk.trace import ReadableSpan  # noqa: PLC0415 - optional extra
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope  # noqa: PLC0415
    from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags  # noqa: PLC0415

    trace_id = _id(span.trace_id, 32)
    flags = TraceFlags(TraceFlags.SAMPLED)
    attributes: dict[str, str | int | float] = {"cantata.agent": span.agent}
    optional = {
        "cantata.model": span.model,
        "cantata.model_version": span.model_version,
        "cantata.node_id": span.node_id,
        "cantata.actor_id": span.actor_id,
    }
    attributes.update({key: value for key, value in optional.items() if value})
    if span.model:  # a model call: the GenAI semantic conventions' names for what it used
        attributes["gen_ai.request.model"] = span.model
        attributes["gen_ai.usage.input_tokens"] = span.input_tokens
        attributes["gen_ai.usage.output_tokens"] = span.output_tokens
    attributes["cantata.cost_usd"] = span.cost_usd
    status = Status(StatusCode.UNSET)
    if span.status == "error":
        # The error's class only: its message may quote model output or a server's reply.
        kind = span.error_type or "error"
        attributes["error.type"] = kind
        status = Status(StatusCode.ERROR, kind)
    name = f"{span.agent} {span.model}" if span.model and span.model != span.agent else span.agent
    parent = (
        None
        if span.parent_id is None
        else SpanContext(trace_id, _id(span.parent_id, 16), is_remote=False, trace_flags=flags)
    )
    return ReadableSpan(
        name=name,
        context=SpanContext(trace_id, _id(span.span_id, 16), is_remote=False, trace_flags=flags),
        parent=parent,
        resource=resource,
        attributes=attributes,
        status=status,
        start_time=round(span.start * 1e9),
        end_time=round(span.end * 1e9),
        instrumentation_scope=InstrumentationScope("cantata", scope_version),
    )


_quiet = threading.local()
_filter_lock = threading.Lock()
_filter_installed = False


class _OnOurThreads(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "active", False)


@contextmanager
def _quieted() -> Iterator[None]:
    global _filter_installed  # noqa: PLW0603 - one filter per process, installed on first use
    with _filter_lock:
        if not _filter_installed:
            for name in _NOISY_LOGGERS:
                logging.getLogger(name).addFilter(_OnOurThreads())
            _filter_installed = True
    previous = getattr(_quiet, "active", False)
    _quiet.active = True
    try:
        yield
    finally:
        _quiet.active = previous


class _GuardedExporter:
    """Wraps the OTLP exporter: never raises, and reports the first failure once."""

    def __init__(self, exporter: SpanExporter, warn: Callable[[str, str], None]) -> None:
        self.exporter = exporter
        self.warn = warn

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from opentelemetry.sdk.trace.export import SpanExportResult  # noqa: PLC0415

        with _quieted():
            try:
                result = self.exporter.export(spans)
            except Exception as exc:  # a broken exporter must not kill the batch thread
                self.warn("export", type(exc).__name__)
                return SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self.warn("export", "the collector refused or could not be reached in time")
        return result

    def shutdown(self) -> None:
        with _quieted():
            self.exporter.shutdown()


class OtlpSpanSink(Telemetry):
    """Sends every span that ends in this process to an OTLP/HTTP collector, in batches.

    Spans wait in a bounded queue and go out from a background thread every few seconds (the
    ``OTEL_BSP_*`` variables tune it) or on :meth:`flush`. Nothing here raises into a request:
    a failure is logged once, at warning level, without the headers.
    """

    def __init__(self, config: OtlpConfig, *, resource: Mapping[str, str]) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http import Compression  # noqa: PLC0415
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter,
            )
            from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
            from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
        except ImportError as exc:
            raise OtlpConfigError(
                f"OpenTelemetry export is configured but its exporter is missing: {_INSTALL_HINT}"
            ) from exc
        self.config = config
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._resource = Resource.create(
            {
                "service.name": "cantata",
                "process.pid": os.getpid(),
                "host.name": socket.gethostname(),
                **{key: value for key, value in resource.items() if value},
            }
        )
        try:
            self._version: str | None = importlib.metadata.version("cantata")
        except importlib.metadata.PackageNotFoundError:
            self._version = None
        exporter = OTLPSpanExporter(
            endpoint=config.endpoint,
            headers={name: secret.get_secret_value() for name, secret in config.headers.items()},
            timeout=config.timeout_s,
            compression=Compression.Gzip if config.compression == "gzip" else None,
        )
        guarded = _GuardedExporter(exporter, self._warn_once)
        self._processor: SpanProcessor = BatchSpanProcessor(cast("SpanExporter", guarded))
        # What is still queued when the process exits goes out then; weakly, so a sink that
        # is dropped is not kept alive by the hook.
        method = weakref.WeakMethod(self.shutdown)
        atexit.register(lambda: (bound := method()) is not None and bound())

    def _warn_once(self, what: str, error: str) -> None:
        with self._lock:
            if what in self._warned:
                return
            self._warned.add(what)
        log.warning(
            "OpenTelemetry span export failed; further failures are not logged",
            stage=what,
            endpoint=_safe_url(self.config.endpoint),
            error=error,
        )

    def span_ended(self, span: Span) -> None:
        """Queue ``span`` for export (never blocks on the network, never raises)."""
        try:
            readable = _to_readable(span, self._resource, self._version)
            with _quieted():
                self._processor.on_end(readable)
        except Exception as exc:  # observing a request must never fail it
            self._warn_once("span", type(exc).__name__)

    def _bounded(self, what: str, call: Callable[[], object], timeout_s: float) -> None:
        # The SDK's force_flush ignores its timeout, so the call gets its own thread to wait on.
        def run() -> None:
            with _quieted():
                try:
                    call()
                except Exception as exc:
                    self._warn_once(what, type(exc).__name__)

        worker = threading.Thread(target=run, name=f"cantata-otel-{what}", daemon=True)
        try:
            worker.start()
        except RuntimeError:  # no new threads at interpreter exit (the atexit hook)
            run()
            return
        worker.join(timeout_s)
        if worker.is_alive():
            self._warn_once(what, f"did not finish within {timeout_s:g} s")

    def flush(self, timeout_s: float | None = None) -> None:
        """Send what is queued; waits at most ``timeout_s`` (default: the config's timeout)."""
        limit = self.config.timeout_s if timeout_s is None else timeout_s
        self._bounded("flush", self._processor.force_flush, limit)

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Send what is queued, then stop the export thread; later spans are dropped."""
        limit = self.config.timeout_s if timeout_s is None else timeout_s
        self._bounded("shutdown", self._processor.shutdown, limit)
