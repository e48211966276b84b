"""OpenTelemetry export: reading the OTEL_* variables, span conversion, export to a real receiver.

The export tests send real OTLP/HTTP requests to :class:`OtlpReceiver` on 127.0.0.1, which decodes
them with OpenTelemetry's proto package; nothing leaves loopback. They need the ``otel`` extra and
skip without it; the configuration tests do not.
"""

from __future__ import annotations

import logging
import pickle
import sys
import time

import pytest
from pydantic import SecretStr, ValidationError
from structlog.testing import capture_logs

from cantata.agents import Span, TopologySpecError, new_id
from cantata.cluster import OtlpConfig, OtlpConfigError, OtlpSpanSink, otel_available
from cantata.cluster._otel import _to_readable
from tests.support.http_server import unused_port

SECRET = "s3cret-token-do-not-print"
needs_exporter = pytest.mark.skipif(not otel_available(), reason="needs cantata[otel]")


@pytest.fixture
def receiver():
    pytest.importorskip("opentelemetry.proto")
    from tests.support.otlp_receiver import OtlpReceiver  # noqa: PLC0415 - needs the proto

    with OtlpReceiver() as server:
        yield server


def span(**fields) -> Span:
    start = fields.pop("start", time.time())
    end = fields.pop("end", start + 0.25)
    fields.setdefault("trace_id", new_id())
    fields.setdefault("agent", "router")
    return Span(start=start, end=end, latency_ms=(end - start) * 1000, **fields)


def a_request() -> list[Span]:
    """A small tree: a root step, a child step, and a model call under the child."""
    trace_id = new_id()
    root = span(trace_id=trace_id, agent="triage")
    step = span(trace_id=trace_id, agent="billing", parent_id=root.span_id)
    call = span(
        trace_id=trace_id,
        agent="smollm2",
        parent_id=step.span_id,
        model="SmolLM2-135M-Instruct.Q4_1",
        model_version="135m-instruct-q4_1",
        actor_id="a9be" * 8,
        node_id="a244" * 14,
        input_tokens=21,
        output_tokens=7,
        cost_usd=0.0125,
    )
    return [root, step, call]


# --- from_env ---------------------------------------------------------------------------


def test_no_endpoint_means_no_export(monkeypatch):
    assert OtlpConfig.from_env({}) is None
    assert OtlpConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}) is None
    assert OtlpConfig.from_env({"OTEL_EXPORTER_OTLP_HEADERS": "a=b"}) is None
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert OtlpConfig.from_env() is None


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://otlp.example.com/otlp", "https://otlp.example.com/otlp/v1/traces"),
    ],
)
def test_the_general_endpoint_gets_the_traces_path(base, expected):
    config = OtlpConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": base})
    assert config is not None
    assert config.endpoint == expected
    assert config.headers == {}
    assert config.timeout_s == 10.0
    assert config.compression == "none"


def test_the_traces_endpoint_is_used_as_is_and_wins():
    config = OtlpConfig.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://general:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:9999/custom/path",
        }
    )
    assert config is not None
    assert config.endpoint == "http://traces:9999/custom/path"


def test_from_env_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318/v1/traces")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    config = OtlpConfig.from_env()
    assert config is not None
    assert config.endpoint == "http://127.0.0.1:4318/v1/traces"


def test_headers_are_url_decoded_secrets_and_the_traces_variable_wins():
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Bearer%20{SECRET}, X-Tenant = team%2Ca ,",
    }
    config = OtlpConfig.from_env(env)
    assert config is not None
    assert {k: v.get_secret_value() for k, v in config.headers.items()} == {
        "authorization": f"Bearer {SECRET}",
        "x-tenant": "team,a",
    }
    assert all(isinstance(value, SecretStr) for value in config.headers.values())
    config = OtlpConfig.from_env({**env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "api-key=k%3D%3D"})
    assert config is not None
    assert {k: v.get_secret_value() for k, v in config.headers.items()} == {"api-key": "k=="}


@pytest.mark.parametrize("raw", [SECRET, f"Authorization={SECRET},{SECRET}", f"bad name={SECRET}"])
def test_a_malformed_header_is_an_error_that_never_quotes_it(raw):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_HEADERS": raw}
    with pytest.raises(OtlpConfigError, match="OTEL_EXPORTER_OTLP_HEADERS") as caught:
        OtlpConfig.from_env(env)
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)


def test_the_timeout_is_in_milliseconds():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TIMEOUT": "2500"}
    config = OtlpConfig.from_env(env)
    assert config is not None
    assert config.timeout_s == 2.5
    config = OtlpConfig.from_env({**env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "500"})
    assert config is not None
    assert config.timeout_s == 0.5


@pytest.mark.parametrize("raw", ["soon", "0", "-5", "nan", "inf"])
def test_a_bad_timeout_is_an_error(raw):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TIMEOUT": raw}
    with pytest.raises(OtlpConfigError, match="OTEL_EXPORTER_OTLP_TIMEOUT"):
        OtlpConfig.from_env(env)


def test_compression():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_COMPRESSION": "GZIP"}
    config = OtlpConfig.from_env(env)
    assert config is not None
    assert config.compression == "gzip"
    with pytest.raises(OtlpConfigError, match="gzip or none"):
        OtlpConfig.from_env({**env, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "zstd"})


@pytest.mark.parametrize(
    "switch",
    [
        {"OTEL_SDK_DISABLED": "true"},
        {"OTEL_SDK_DISABLED": "TRUE"},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "console"},
        # Switched off, a wrong protocol is not worth failing for.
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    ],
)
def test_export_can_be_switched_off(switch):
    assert OtlpConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", **switch}) is None


def test_otlp_among_several_exporters_still_exports():
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_TRACES_EXPORTER": "otlp, console",
        "OTEL_SDK_DISABLED": "false",
    }
    assert OtlpConfig.from_env(env) is not None


@pytest.mark.parametrize(
    "protocol",
    [
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
        },
    ],
)
def test_only_http_protobuf_is_supported(protocol):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", **protocol}
    with pytest.raises(OtlpConfigError, match="only http/protobuf is supported") as caught:
        OtlpConfig.from_env(env)
    assert isinstance(caught.value, TopologySpecError)  # a configuration error: exit code 2


def test_the_traces_protocol_wins_over_the_general_one():
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "HTTP/Protobuf",
    }
    assert OtlpConfig.from_env(env) is not None


@pytest.mark.parametrize(
    "endpoint", ["collector:4318", "grpc://c:4317", "http://", f"http://user:{SECRET}@c:4318"]
)
def test_a_bad_endpoint_is_an_error_that_never_quotes_it(endpoint):
    with pytest.raises(OtlpConfigError, match="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") as caught:
        OtlpConfig.from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint})
    assert SECRET not in str(caught.value)


def test_the_error_pickles():
    error = OtlpConfigError("OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is supported")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is OtlpConfigError
    assert str(again) == str(error)


# --- the config itself ------------------------------------------------------------------


def test_headers_from_the_environment_travel_by_name_and_are_read_again_where_unpickled(
    monkeypatch,
):
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Bearer%20{SECRET}",
    }
    config = OtlpConfig.from_env(env)
    assert config is not None
    pickled = pickle.dumps(config)  # what Ray keeps with an actor's arguments
    assert SECRET.encode() not in pickled
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", env["OTEL_EXPORTER_OTLP_HEADERS"])
    again = pickle.loads(pickled)  # in the actor: its own environment
    assert again.headers["authorization"].get_secret_value() == f"Bearer {SECRET}"
    assert (again.endpoint, again.headers_env) == (config.endpoint, "OTEL_EXPORTER_OTLP_HEADERS")


def test_headers_given_in_code_refuse_to_leave_the_process():
    config = OtlpConfig(
        endpoint="http://127.0.0.1:4318/v1/traces",
        headers={"Authorization": SecretStr(SECRET)},
        timeout_s=3.0,
    )
    with pytest.raises(OtlpConfigError, match="OTEL_EXPORTER_OTLP_HEADERS") as refusal:
        pickle.dumps(config)
    assert SECRET not in str(refusal.value)
    plain = OtlpConfig(endpoint="http://127.0.0.1:4318/v1/traces", timeout_s=3.0)
    assert pickle.loads(pickle.dumps(plain)) == plain


def test_secrets_never_show_in_repr_str_json_or_validation_errors():
    config = OtlpConfig(endpoint="http://c:4318/v1/traces", headers={"api-key": SecretStr(SECRET)})
    for text in (repr(config), str(config), config.model_dump_json(), f"{config.headers}"):
        assert SECRET not in text
    with pytest.raises(ValidationError) as caught:
        OtlpConfig(endpoint=f"ftp://c/{SECRET}", headers={"api-key": SecretStr(SECRET)})
    assert SECRET not in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        OtlpConfig(endpoint="http://c:4318", headers={"x": SecretStr(f"{SECRET}\r\nInjected: 1")})
    assert SECRET not in str(caught.value)


# --- conversion ---------------------------------------------------------------------------


def test_conversion_keeps_cantatas_ids_so_parent_links_survive():
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415

    root, step, call = a_request()
    readable = [_to_readable(s, Resource.create({}), "0.1.0") for s in (root, step, call)]
    for original, converted in zip((root, step, call), readable, strict=True):
        assert converted.context is not None
        assert converted.context.trace_id == int(original.trace_id, 16)
        assert converted.context.span_id == int(original.span_id[:16], 16)
        assert converted.start_time == round(original.start * 1e9)
        assert converted.end_time == round(original.end * 1e9)
    assert readable[0].parent is None
    assert readable[1].parent is not None
    assert readable[1].parent.span_id == readable[0].context.span_id  # type: ignore[union-attr]
    assert readable[2].parent is not None
    assert readable[2].parent.span_id == readable[1].context.span_id  # type: ignore[union-attr]


def test_conversion_of_a_model_call():
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.trace import StatusCode  # noqa: PLC0415

    call = a_request()[2]
    converted = _to_readable(call, Resource.create({}), None)
    assert converted.name == "smollm2 SmolLM2-135M-Instruct.Q4_1"
    assert dict(converted.attributes or {}) == {
        "cantata.agent": "smollm2",
        "cantata.model": "SmolLM2-135M-Instruct.Q4_1",
        "cantata.model_version": "135m-instruct-q4_1",
        "cantata.node_id": call.node_id,
        "cantata.actor_id": call.actor_id,
        "cantata.cost_usd": 0.0125,
        "gen_ai.request.model": "SmolLM2-135M-Instruct.Q4_1",
        "gen_ai.usage.input_tokens": 21,
        "gen_ai.usage.output_tokens": 7,
    }
    assert converted.status.status_code is StatusCode.UNSET


def test_a_role_step_carries_no_model_attributes():
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415

    converted = _to_readable(span(agent="planner"), Resource.create({}), None)
    assert converted.name == "planner"
    assert dict(converted.attributes or {}) == {"cantata.agent": "planner", "cantata.cost_usd": 0.0}


def test_a_failed_span_reports_its_error_class_not_its_text():
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.trace import StatusCode  # noqa: PLC0415

    failed = span(status="error", error=f"model said {SECRET}", error_type="BackendTimeoutError")
    converted = _to_readable(failed, Resource.create({}), None)
    assert converted.status.status_code is StatusCode.ERROR
    assert converted.status.description == "BackendTimeoutError"
    assert (converted.attributes or {})["error.type"] == "BackendTimeoutError"
    assert SECRET not in repr(dict(converted.attributes or {}))
    untyped = _to_readable(span(status="error", error="boom"), Resource.create({}), None)
    assert untyped.status.description == "error"


def test_ids_that_are_not_hex_are_hashed_the_same_way_everywhere():
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415

    parent = span(trace_id="request-42", span_id="step-1")
    child = span(trace_id="request-42", span_id="call-1", parent_id="step-1")
    first, second = (_to_readable(s, Resource.create({}), None) for s in (parent, child))
    assert first.context is not None
    assert second.context is not None
    assert second.parent is not None
    assert first.context.is_valid
    assert first.context.trace_id == second.context.trace_id
    assert second.parent.span_id == first.context.span_id


# --- export to a real receiver --------------------------------------------------------------


@needs_exporter
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_spans_reach_a_real_collector_with_ids_links_and_resource(receiver, compression):
    config = OtlpConfig(
        endpoint=receiver.endpoint,
        headers={"Authorization": SecretStr(f"Bearer {SECRET}")},
        timeout_s=5.0,
        compression=compression,
    )
    sink = OtlpSpanSink(
        config,
        resource={"cantata.role": "model", "cantata.deployment": "", "cantata.actor_id": "ab12"},
    )
    try:
        request = a_request()
        for each in request:
            sink.span_ended(each)
        sink.flush()
        trace_id = request[0].trace_id
        received = receiver.wait_for(lambda spans: len(spans) >= 3)
    finally:
        sink.shutdown()
    assert {s.trace_id for s in received} == {trace_id}
    by_id = {s.span_id: s for s in received}
    assert set(by_id) == {each.span_id[:16] for each in request}
    root, step, call = (by_id[each.span_id[:16]] for each in request)
    assert root.parent_span_id is None
    assert step.parent_span_id == root.span_id
    assert call.parent_span_id == step.span_id
    assert call.name == "smollm2 SmolLM2-135M-Instruct.Q4_1"
    assert call.attributes["gen_ai.usage.input_tokens"] == 21
    assert call.attributes["cantata.cost_usd"] == 0.0125
    assert call.start_ns == round(request[2].start * 1e9)
    assert call.scope == "cantata"
    resource = call.resource
    assert resource["service.name"] == "cantata"
    assert resource["cantata.role"] == "model"
    assert resource["cantata.actor_id"] == "ab12"
    assert "cantata.deployment" not in resource  # empty labels are left out
    assert isinstance(resource["process.pid"], int)
    assert resource["host.name"]
    exports = receiver.exports
    assert all(e.headers["authorization"] == f"Bearer {SECRET}" for e in exports)
    assert {e.content_encoding for e in exports} == {"" if compression == "none" else "gzip"}


@needs_exporter
def test_the_environment_configures_export_to_the_receiver(receiver):
    config = OtlpConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base_url})
    assert config is not None
    sink = OtlpSpanSink(config, resource={})
    try:
        failed = span(agent="vote", status="error", error="x", error_type="QuorumNotReachedError")
        sink.span_ended(failed)
        sink.flush()
        (received,) = receiver.wait_for(lambda spans: len(spans) == 1)
    finally:
        sink.shutdown()
    assert received.status == "error"
    assert received.status_message == "QuorumNotReachedError"
    assert received.attributes["error.type"] == "QuorumNotReachedError"


def _failures_are_quiet_and_logged_once(config, caplog):
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs:
        sink = OtlpSpanSink(config, resource={})
        for each in a_request():
            sink.span_ended(each)  # must not raise
        sink.flush()  # must not raise
        sink.span_ended(span())
        sink.flush()
        sink.shutdown()
        sink.span_ended(span())  # after shutdown: dropped, still no exception
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1, logs
    assert warnings[0]["endpoint"] == config.endpoint
    everything = repr(logs) + caplog.text + repr([r.getMessage() for r in caplog.records])
    assert SECRET not in everything
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@needs_exporter
def test_an_unreachable_collector_never_fails_the_request(caplog):
    config = OtlpConfig(
        endpoint=f"http://127.0.0.1:{unused_port()}/v1/traces",
        headers={"authorization": SecretStr(SECRET)},
        timeout_s=0.5,
    )
    _failures_are_quiet_and_logged_once(config, caplog)


@needs_exporter
def test_a_collector_that_refuses_never_fails_the_request(receiver, caplog):
    receiver.status = 500
    config = OtlpConfig(
        endpoint=receiver.endpoint, headers={"authorization": SecretStr(SECRET)}, timeout_s=0.5
    )
    _failures_are_quiet_and_logged_once(config, caplog)
    assert receiver.spans == []


def test_without_the_extra_the_error_says_what_to_install(monkeypatch):
    # A None entry in sys.modules makes the import fail as if the package were missing.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    assert otel_available() is False
    config = OtlpConfig(endpoint="http://127.0.0.1:4318/v1/traces")
    with pytest.raises(OtlpConfigError, match=r"pip install 'cantata\[otel\]'"):
        OtlpSpanSink(config, resource={})
