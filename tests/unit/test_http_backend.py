"""The OpenAI-compatible HTTP backends against a real HTTP server on loopback.

No mocks: every test talks to a :class:`ScriptedServer` on ``127.0.0.1`` through httpx's real
transport, and counts attempts by the requests the server recorded. Retry waits are kept tiny by
a fast :class:`RetryPolicy`; no test asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import pickle
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog.testing

from cantata.agents import (
    BackendError,
    BackendTimeoutError,
    DeadlineExceededError,
    EndpointUnreachableError,
    JsonSchemaFormat,
    LogConfig,
    MalformedResponseError,
    ModelRequest,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
    configure_logging,
)
from cantata.agents._secrets import register_secret
from cantata.agents.backends import (
    Completion,
    OpenAIChatBackend,
    OpenAIEmbeddingsBackend,
    RetryPolicy,
    Timeout,
)
from cantata.agents.backends._http_client import _retry_after_seconds
from tests.support.http_server import Reply, ScriptedServer, unused_port

KEY = "sk-test-SECRET"
MODEL = "test-model"
FAST = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.05)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}


def chat_body(
    text: str | None = "Hello there.",
    *,
    finish_reason: str | None = "stop",
    model: str | None = "served-model-7b",
    prompt_tokens: int = 11,
    completion_tokens: int = 4,
) -> dict[str, Any]:
    """A well-formed OpenAI chat completion."""
    body: dict[str, Any] = {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    if model is not None:
        body["model"] = model
    return body


OK = Reply(json=chat_body())


def request(prompt: str = "Say hello.", **fields: Any) -> ModelRequest:
    return ModelRequest.from_prompt(prompt, **fields)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


@pytest.fixture
async def make_chat(server: ScriptedServer) -> AsyncIterator[Callable[..., OpenAIChatBackend]]:
    """Build chat backends aimed at ``server`` (or ``base_url=``); all are closed afterwards."""
    made: list[OpenAIChatBackend] = []

    def factory(**kwargs: Any) -> OpenAIChatBackend:
        base_url = kwargs.pop("base_url", server.url)
        kwargs.setdefault("retry", FAST)
        kwargs.setdefault("timeout", Timeout(connect=2.0, read=10.0))
        backend = OpenAIChatBackend(base_url, kwargs.pop("model", MODEL), **kwargs)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        await backend.aclose()


@pytest.fixture
async def make_embedder(
    server: ScriptedServer,
) -> AsyncIterator[Callable[..., OpenAIEmbeddingsBackend]]:
    made: list[OpenAIEmbeddingsBackend] = []

    def factory(**kwargs: Any) -> OpenAIEmbeddingsBackend:
        base_url = kwargs.pop("base_url", server.url)
        kwargs.setdefault("retry", FAST)
        kwargs.setdefault("timeout", Timeout(connect=2.0, read=10.0))
        backend = OpenAIEmbeddingsBackend(base_url, kwargs.pop("model", "embed-model"), **kwargs)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        await backend.aclose()


# -- 1. success -------------------------------------------------------------------------------


async def test_success_returns_completion_and_sends_payload(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.enqueue(OK)
    backend = make_chat(api_key=KEY)

    completion = await backend.complete(
        request("Say hello.", system="Be brief.", max_tokens=64, temperature=0.7)
    )

    assert isinstance(completion, Completion)
    assert completion.text == "Hello there."
    assert completion.usage.input_tokens == 11
    assert completion.usage.output_tokens == 4
    assert completion.finish_reason == "stop"
    assert completion.model == "served-model-7b"

    (sent,) = server.requests
    assert sent.method == "POST"
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"].startswith("application/json")
    body = sent.json
    assert body["model"] == MODEL
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello."},
    ]
    assert body["max_tokens"] == 64
    assert body["temperature"] == 0.7
    assert "response_format" not in body
    assert "stop" not in body
    assert "seed" not in body


async def test_stop_seed_and_extra_headers_are_sent(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.enqueue(OK)
    backend = make_chat(headers={"X-Tenant": "cantata-tests"})

    await backend.complete(request(stop=("\n\n", "END"), seed=1234))

    (sent,) = server.requests
    assert sent.json["stop"] == ["\n\n", "END"]
    assert sent.json["seed"] == 1234
    assert sent.headers["x-tenant"] == "cantata-tests"
    assert "authorization" not in sent.headers  # no api_key, no header


@pytest.mark.parametrize(
    ("server_reason", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("content_filter", "content_filter"),
        ("tool_calls", "tool_calls"),
        ("function_call", "tool_calls"),
        ("eos", "stop"),
        ("something_new", "other"),
        (None, "stop"),
    ],
)
async def test_finish_reason_mapping(
    server: ScriptedServer,
    make_chat: Callable[..., OpenAIChatBackend],
    server_reason: str | None,
    expected: str,
) -> None:
    server.enqueue(Reply(json=chat_body(finish_reason=server_reason)))

    completion = await make_chat().complete(request())

    assert completion.finish_reason == expected


async def test_model_falls_back_to_configured_name_and_null_content_is_empty(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    body = chat_body(text=None, model=None)
    del body["usage"]
    server.enqueue(Reply(json=body))

    completion = await make_chat().complete(request())

    assert completion.model == MODEL
    assert completion.text == ""
    assert completion.usage.input_tokens == 0
    assert completion.usage.output_tokens == 0


async def test_concurrent_calls_share_one_backend(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.always(OK)
    backend = make_chat()

    completions = await asyncio.gather(*(backend.complete(request(f"q{i}")) for i in range(8)))

    assert [c.text for c in completions] == ["Hello there."] * 8
    prompts = sorted(r.json["messages"][-1]["content"] for r in server.requests)
    assert prompts == sorted(f"q{i}" for i in range(8))


async def test_backend_is_usable_after_aclose(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.always(OK)
    backend = make_chat()

    await backend.complete(request())
    await backend.aclose()
    await backend.aclose()  # safe twice
    completion = await backend.complete(request())

    assert completion.text == "Hello there."
    assert len(server.requests) == 2


# -- 2. structured output dialects ------------------------------------------------------------


async def test_structured_output_json_schema_is_default(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.enqueue(Reply(json=chat_body(text='{"answer": "hi"}')))
    backend = make_chat()
    assert backend.supports_structured_output

    fmt = JsonSchemaFormat(name="reply", json_schema=SCHEMA)
    await backend.complete(request(response_format=fmt))

    body = server.requests[0].json
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"] == {
        "name": "reply",
        "schema": SCHEMA,
        "strict": True,
    }
    assert [m["role"] for m in body["messages"]] == ["user"]


async def test_structured_output_json_object_dialect(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.enqueue(Reply(json=chat_body(text='{"answer": "hi"}')))
    backend = make_chat(structured_output="json_object")
    assert backend.supports_structured_output

    await backend.complete(request(response_format=JsonSchemaFormat(json_schema=SCHEMA)))

    body = server.requests[0].json
    assert body["response_format"] == {"type": "json_object", "schema": SCHEMA}


async def test_structured_output_prompt_dialect_adds_system_instruction(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.enqueue(Reply(json=chat_body(text='{"answer": "hi"}')))
    backend = make_chat(structured_output="prompt")
    assert not backend.supports_structured_output

    await backend.complete(
        request(
            "Greet me.", system="Be kind.", response_format=JsonSchemaFormat(json_schema=SCHEMA)
        )
    )

    body = server.requests[0].json
    assert "response_format" not in body
    first, *rest = body["messages"]
    assert first["role"] == "system"
    assert json.dumps(SCHEMA) in first["content"]
    assert rest == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Greet me."},
    ]


# -- 3. 429 and Retry-After -------------------------------------------------------------------


async def test_429_with_retry_after_zero_is_retried(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.enqueue(Reply(status=429, json={"error": "slow down"}, headers={"Retry-After": "0"}), OK)

    completion = await make_chat().complete(request())

    assert completion.text == "Hello there."
    assert len(server.requests) == 2
    assert server.requests[0].json == server.requests[1].json  # the same request, resent


async def test_429_every_time_raises_rate_limited_after_max_attempts(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.always(Reply(status=429, json={"error": "rate limited"}))

    with pytest.raises(RateLimitedError) as info:
        await make_chat().complete(request())

    assert info.value.status_code == 429
    assert info.value.attempts == FAST.max_attempts
    assert info.value.model == MODEL
    assert f"HTTP 429 after {FAST.max_attempts} attempt(s)" in str(info.value)
    assert len(server.requests) == FAST.max_attempts


async def test_retry_after_above_cap_is_capped_end_to_end(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    # An hour-long Retry-After, capped to 0.01 s. Were the cap ignored, the hour-long wait would
    # overshoot the deadline and the 429 would be raised at once instead of retried.
    server.enqueue(Reply(status=429, json={}, headers={"Retry-After": "3600"}), OK)
    policy = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.05, max_retry_after=0.01)

    completion = await make_chat(retry=policy).complete(request(deadline=time.time() + 60))

    assert completion.text == "Hello there."
    assert len(server.requests) == 2


async def test_http_date_retry_after_in_the_past_is_retried(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    past = email.utils.format_datetime(datetime.now(UTC) - timedelta(minutes=5), usegmt=True)
    server.enqueue(Reply(status=503, json={}, headers={"Retry-After": past}), OK)

    completion = await make_chat().complete(request(deadline=time.time() + 60))

    assert completion.text == "Hello there."
    assert len(server.requests) == 2


async def test_retry_after_beyond_deadline_fails_without_waiting(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.always(Reply(status=429, json={}, headers={"Retry-After": "30"}))

    with pytest.raises(RateLimitedError) as info:
        await make_chat().complete(request(deadline=time.time() + 10))

    assert info.value.attempts == 1
    assert len(server.requests) == 1


def test_backoff_honours_retry_after() -> None:
    policy = RetryPolicy(backoff_base=0.01, backoff_max=0.05, max_retry_after=60.0)

    assert policy.backoff(1, 2.5) == 2.5
    assert policy.backoff(3, 0.0) == 0.0
    assert policy.backoff(1, -4.0) == 0.0


def test_backoff_caps_retry_after_at_max_retry_after() -> None:
    policy = RetryPolicy(max_retry_after=5.0)

    assert policy.backoff(1, 3600.0) == 5.0


def test_backoff_without_retry_after_is_jittered_and_bounded() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=3.0)

    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (10, 3.0)]:
        waits = [policy.backoff(attempt) for _ in range(200)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert len(set(waits)) > 1  # jittered, not a fixed wait


def test_retry_after_header_parsing() -> None:
    assert _retry_after_seconds(None) is None
    assert _retry_after_seconds("") is None
    assert _retry_after_seconds("soon") is None
    assert _retry_after_seconds("0") == 0.0
    assert _retry_after_seconds(" 7 ") == 7.0
    assert _retry_after_seconds("1.5") == 1.5
    assert _retry_after_seconds("-3") == 0.0

    future = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    seconds = _retry_after_seconds(future)
    assert seconds is not None
    assert 100.0 < seconds <= 120.0

    past = email.utils.format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert _retry_after_seconds(past) == 0.0


# -- 4. 5xx, 408, 409 -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 409])
async def test_retryable_status_then_success(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend], status: int
) -> None:
    server.enqueue(Reply(status=status, json={"error": "try again"}), OK)

    completion = await make_chat().complete(request())

    assert completion.text == "Hello there."
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [500, 503, 408])
async def test_retryable_status_every_time_raises_server_error(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend], status: int
) -> None:
    server.always(Reply(status=status, json={"error": "down"}))

    with pytest.raises(ServerError) as info:
        await make_chat().complete(request())

    assert info.value.status_code == status
    assert info.value.attempts == FAST.max_attempts
    assert len(server.requests) == FAST.max_attempts


async def test_html_error_page_is_a_server_error(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.always(Reply(status=502, body=b"<html><body>Bad Gateway</body></html>"))

    with pytest.raises(ServerError) as info:
        await make_chat(retry=RetryPolicy(max_attempts=2, backoff_base=0.01)).complete(request())

    assert info.value.status_code == 502
    assert info.value.attempts == 2
    assert "Bad Gateway" in str(info.value)
    assert len(server.requests) == 2


async def test_status_outside_policy_is_not_retried(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.always(Reply(status=500, json={}))
    policy = RetryPolicy(max_attempts=3, backoff_base=0.01, statuses=frozenset({503}))

    with pytest.raises(ServerError) as info:
        await make_chat(retry=policy).complete(request())

    assert info.value.attempts == 1
    assert len(server.requests) == 1


# -- 5. other 4xx -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_error_is_rejected_without_retry(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend], status: int
) -> None:
    server.always(Reply(status=status, json={"error": {"message": "bad request"}}))

    with pytest.raises(RequestRejectedError) as info:
        await make_chat().complete(request())

    assert info.value.status_code == status
    assert info.value.attempts == 1
    assert "bad request" in str(info.value)
    assert len(server.requests) == 1


# -- 6. connection refused --------------------------------------------------------------------


async def test_connection_refused_is_unreachable_after_retries(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    backend = make_chat(base_url=f"http://127.0.0.1:{unused_port()}/v1", api_key=KEY)

    with pytest.raises(EndpointUnreachableError) as info:
        await backend.complete(request())

    assert info.value.attempts == FAST.max_attempts
    assert info.value.model == MODEL
    assert KEY not in str(info.value)
    assert server.requests == []


# -- 7. read timeout --------------------------------------------------------------------------


async def test_read_timeout_is_not_retried(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.always(Reply(json=chat_body(), delay=5.0))
    backend = make_chat(timeout=Timeout(connect=2.0, read=0.3))

    with pytest.raises(BackendTimeoutError) as info:
        await backend.complete(request())

    assert info.value.attempts == 1
    assert len(server.requests) == 1


async def test_deadline_bounds_the_read_timeout(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    # read=30 s would wait out the server's 5 s sleep and succeed; the 0.3 s deadline must not.
    server.always(Reply(json=chat_body(), delay=5.0))
    backend = make_chat(timeout=Timeout(connect=2.0, read=30.0))

    with pytest.raises(DeadlineExceededError):
        await backend.complete(request(deadline=time.time() + 0.3))

    assert len(server.requests) == 1


# -- 8. malformed responses -------------------------------------------------------------------


async def test_truncated_body_is_malformed_and_not_retried(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.always(Reply(json=chat_body(), truncate=True))

    with pytest.raises(MalformedResponseError) as info:
        await make_chat().complete(request())

    assert info.value.attempts == 1
    assert len(server.requests) == 1


async def test_non_json_success_body_is_malformed(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.always(Reply(body=b"<html>gateway says hi</html>"))

    with pytest.raises(MalformedResponseError) as info:
        await make_chat().complete(request())

    assert "gateway says hi" in str(info.value)
    assert len(server.requests) == 1


async def test_invalid_utf8_success_body_is_malformed(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.always(Reply(body=b'{"choices": "\xff\xfe\xfd"}'))

    with pytest.raises(MalformedResponseError):
        await make_chat().complete(request())


@pytest.mark.parametrize(
    "payload",
    [
        {"id": "x", "object": "chat.completion"},
        {"choices": []},
        {"choices": [{"index": 0}]},
        {"choices": [{"message": None}]},
        [],
        None,
        "just a string",
    ],
    ids=["no-choices", "empty-choices", "no-message", "null-message", "list", "null", "string"],
)
async def test_json_without_a_completion_is_malformed(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend], payload: Any
) -> None:
    server.always(Reply(json=payload))

    with pytest.raises(MalformedResponseError, match="answered JSON without a completion") as info:
        await make_chat().complete(request())

    assert info.value.model == MODEL
    assert len(server.requests) == 1


# -- 9. secrets -------------------------------------------------------------------------------


async def test_key_echoed_in_error_body_is_scrubbed(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.always(
        Reply(status=400, json={"error": {"message": f"Incorrect API key provided: {KEY}."}})
    )
    backend = make_chat(api_key=KEY)

    with pytest.raises(RequestRejectedError) as info:
        await backend.complete(request())

    error = info.value
    assert "Incorrect API key provided" in str(error)  # the server's text is still quoted...
    assert KEY not in str(error)  # ...with the key scrubbed out
    assert KEY not in repr(error)
    assert KEY not in error.message
    assert all(KEY not in str(arg) for arg in error.args)
    assert KEY.encode() not in pickle.dumps(error)
    restored = pickle.loads(pickle.dumps(error))
    assert isinstance(restored, RequestRejectedError)
    assert (restored.status_code, restored.attempts) == (400, 1)
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    # httpx's exception holds the request and its Authorization header; it must not ride along.
    assert error.__context__ is None
    assert error.__cause__ is None


async def test_key_echoed_in_non_json_body_is_scrubbed(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.always(Reply(body=f"oops, your key {KEY} is not JSON".encode()))

    with pytest.raises(MalformedResponseError) as info:
        await make_chat(api_key=KEY).complete(request())

    assert "oops, your key" in str(info.value)
    assert KEY not in str(info.value)


async def test_key_cut_by_the_excerpt_limit_is_not_leaked(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    # The key starts at byte 287, so the 300-byte excerpt ends with all of it but the last char.
    server.always(Reply(status=400, body=b"x" * 287 + KEY.encode()))

    with pytest.raises(RequestRejectedError) as info:
        await make_chat(api_key=KEY).complete(request())

    assert KEY[:-1] not in str(info.value)


async def test_repr_does_not_show_the_key(
    make_chat: Callable[..., OpenAIChatBackend],
    make_embedder: Callable[..., OpenAIEmbeddingsBackend],
) -> None:
    chat = make_chat(api_key=KEY)
    embedder = make_embedder(api_key=KEY)

    assert KEY not in repr(chat)
    assert KEY not in str(chat)
    assert KEY not in repr(embedder)
    assert MODEL in repr(chat)


async def test_retry_logs_do_not_contain_the_key(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.enqueue(Reply(status=500, json={"error": f"internal error for key {KEY}"}), OK)

    with structlog.testing.capture_logs() as logs:
        completion = await make_chat(api_key=KEY).complete(request())

    assert completion.text == "Hello there."
    assert len(server.requests) == 2
    assert any(entry.get("event") == "retrying" for entry in logs)  # the retry was logged...
    for entry in logs:
        assert KEY not in repr(entry)  # ...without the key


async def test_key_echoed_in_any_field_of_a_good_answer_is_scrubbed(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    # A server that quotes the request's Authorization header in a successful answer.
    echo = f"Bearer {KEY}"
    server.always(Reply(json=chat_body(text=f"your header was {echo}", model=echo)))

    completion = await make_chat(api_key=KEY).complete(request())

    assert completion.text == "your header was Bearer **********"
    assert completion.model == "Bearer **********"
    assert KEY not in repr(completion)


async def test_key_echoed_where_a_number_belongs_is_scrubbed_from_the_error(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    body = chat_body()
    body["usage"]["prompt_tokens"] = f"Bearer {KEY}"
    server.always(Reply(json=body))

    with pytest.raises(MalformedResponseError) as info:
        await make_chat(api_key=KEY).complete(request())

    assert "Bearer **********" in str(info.value)  # the bad value is still quoted...
    assert KEY not in str(info.value)  # ...without the key


async def test_every_configured_key_is_scrubbed_not_only_the_backends_own(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    other_key = "sk-other-backend-KEY"
    make_chat(api_key=other_key)  # another model of the topology, with its own key
    server.always(Reply(json=chat_body(text=f"leaked {other_key}")))

    completion = await make_chat().complete(request())

    assert completion.text == "leaked **********"


async def test_json_nested_too_deep_is_a_malformed_response(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.always(Reply(body=b"[" * 200_000 + b"]" * 200_000))

    with pytest.raises(MalformedResponseError, match="nested too deep"):
        await make_chat().complete(request())


def test_log_lines_never_print_a_configured_key() -> None:
    register_secret(KEY)
    saved = structlog.get_config()
    try:
        for fmt in ("json", "console"):
            configure_logging(LogConfig(format=fmt))
            render = structlog.get_config()["processors"][-1]
            line = render(None, "warning", {"event": "upstream said", "detail": f"key={KEY}"})
            assert "upstream said" in line
            assert KEY not in line
    finally:
        structlog.configure(**saved)


# -- 10. deadline -----------------------------------------------------------------------------


async def test_passed_deadline_sends_nothing(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    server.always(OK)

    with pytest.raises(DeadlineExceededError, match="deadline passed before attempt 1"):
        await make_chat().complete(request(deadline=time.time() - 1))

    assert server.requests == []


# -- 11. embeddings ---------------------------------------------------------------------------


async def test_embeddings_are_returned_in_index_order(
    server: ScriptedServer, make_embedder: Callable[..., OpenAIEmbeddingsBackend]
) -> None:
    server.enqueue(
        Reply(
            json={
                "object": "list",
                "model": "served-embedder",
                "data": [
                    {"object": "embedding", "index": 1, "embedding": [0.4, 0.5, 0.6]},
                    {"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]},
                ],
                "usage": {"prompt_tokens": 5},
            }
        )
    )
    backend = make_embedder(api_key=KEY)

    result = await backend.embed(("first", "second"))

    assert result.vectors == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert result.input_tokens == 5
    assert result.model == "served-embedder"
    (sent,) = server.requests
    assert sent.path == "/v1/embeddings"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.json == {
        "model": "embed-model",
        "input": ["first", "second"],
        "encoding_format": "float",
    }


async def test_embeddings_usage_falls_back_to_total_tokens(
    server: ScriptedServer, make_embedder: Callable[..., OpenAIEmbeddingsBackend]
) -> None:
    server.enqueue(
        Reply(
            json={
                "model": "m",
                "data": [{"index": 0, "embedding": [1]}],
                "usage": {"total_tokens": 9},
            }
        )
    )

    result = await make_embedder().embed(("only",))

    assert result.vectors == ((1.0,),)
    assert result.input_tokens == 9


async def test_embeddings_without_model_field_do_not_report_none_string(
    server: ScriptedServer, make_embedder: Callable[..., OpenAIEmbeddingsBackend]
) -> None:
    server.enqueue(Reply(json={"data": [{"index": 0, "embedding": [0.5]}]}))

    result = await make_embedder().embed(("only",))

    assert result.model in (None, "embed-model")


async def test_embeddings_with_wrong_vector_count_are_malformed(
    server: ScriptedServer, make_embedder: Callable[..., OpenAIEmbeddingsBackend]
) -> None:
    server.enqueue(Reply(json={"data": [{"index": 0, "embedding": [0.1]}], "usage": {}}))

    with pytest.raises(MalformedResponseError, match="1 vectors for 2 texts"):
        await make_embedder().embed(("a", "b"))


@pytest.mark.parametrize(
    "payload",
    [{"object": "list"}, {"data": None}, {"data": [{"index": 0}]}, {"data": [1, 2]}],
    ids=["no-data", "null-data", "no-embedding", "rows-not-objects"],
)
async def test_embeddings_without_vectors_are_malformed(
    server: ScriptedServer, make_embedder: Callable[..., OpenAIEmbeddingsBackend], payload: Any
) -> None:
    server.enqueue(Reply(json=payload))

    with pytest.raises(MalformedResponseError):
        await make_embedder().embed(("a", "b"))


async def test_embeddings_retry_then_succeed(
    server: ScriptedServer, make_embedder: Callable[..., OpenAIEmbeddingsBackend]
) -> None:
    server.enqueue(
        Reply(status=503, json={}),
        Reply(json={"data": [{"index": 0, "embedding": [0.0, 1.0]}], "usage": {}}),
    )

    result = await make_embedder().embed(("a",))

    assert result.vectors == ((0.0, 1.0),)
    assert len(server.requests) == 2


async def test_embeddings_passed_deadline_sends_nothing(
    server: ScriptedServer, make_embedder: Callable[..., OpenAIEmbeddingsBackend]
) -> None:
    with pytest.raises(DeadlineExceededError):
        await make_embedder().embed(("a",), deadline=time.time() - 1)

    assert server.requests == []


async def test_httpx_errors_that_quote_the_header_are_scrubbed_and_unchained(
    server: ScriptedServer, make_chat: Callable[..., OpenAIChatBackend]
) -> None:
    # h11 refuses a header value ending in a newline and quotes it, key included.
    backend = make_chat(api_key=KEY + "\n")

    with pytest.raises(BackendError) as info:
        await backend.complete(request())

    assert KEY not in str(info.value)
    assert info.value.__context__ is None
    assert info.value.__cause__ is None
    assert server.requests == []
