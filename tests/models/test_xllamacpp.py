"""SmolLM2 in-process through ``xllamacpp``: llama.cpp's server, prebuilt, several slots at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import jsonschema
import pytest
import pytest_asyncio

from cantata.agents import (
    BackendError,
    CustomConfig,
    DeadlineExceededError,
    JsonSchemaFormat,
    ModelActor,
    ModelRequest,
    ModelSpec,
    RequestRejectedError,
    Resources,
)
from cantata.agents.backends._xllamacpp import XLlamaCppBackend

pytest.importorskip("xllamacpp")

# One event loop for the module, so the module-scoped model actor serves every test in it.
pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]

SLOTS = 4
QUESTION = "What is the capital of France?"
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
CITY = JsonSchemaFormat(name="capital", json_schema=CITY_SCHEMA)
# At least 1,500 characters: SmolLM2 cannot finish this before it is stopped.
LONG = JsonSchemaFormat(
    name="long",
    json_schema={
        "type": "object",
        "properties": {"story": {"type": "string", "minLength": 1500}},
        "required": ["story"],
    },
)


def xllamacpp_backend(resources: Resources) -> XLlamaCppBackend:
    return XLlamaCppBackend(n_threads=max(1, int(resources.num_cpus)), n_parallel=SLOTS)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def smollm2():
    actor = ModelActor(ModelSpec(name="smollm2-x", backend=CustomConfig(factory=xllamacpp_backend)))
    await actor.start()
    yield actor
    await actor.close()


def long_request(**fields: object) -> ModelRequest:
    return ModelRequest.from_prompt(
        "Tell a long story.", max_tokens=2000, response_format=LONG, **fields
    )


def engine_counters(backend: XLlamaCppBackend) -> dict[str, float]:
    """llama.cpp's own counters: what the engine decoded, whatever this backend believes."""
    assert backend._server is not None
    counters = {}
    for line in backend._server.handle_metrics().splitlines():
        if line and not line.startswith("#"):
            name, value = line.split()[:2]
            counters[name.removeprefix("llamacpp:")] = float(value)
    return counters


async def settled(backend: XLlamaCppBackend, limit_s: float = 10.0) -> dict[str, float]:
    """llama.cpp's counters once no generation runs: no engine thread, no busy slot.

    A stopped generation ends at its next token; the engine's gauges catch up a moment later.
    """
    give_up = time.monotonic() + limit_s
    while backend._in_engine or engine_counters(backend)["requests_processing"]:
        assert time.monotonic() < give_up, "the engine kept generating"
        await asyncio.sleep(0.05)
    return engine_counters(backend)


async def test_xllamacpp_answers_a_factual_question_with_usage(smollm2):
    reply = await smollm2.complete(ModelRequest.from_prompt(QUESTION, max_tokens=48))
    assert "paris" in reply.text.lower()
    assert reply.usage.input_tokens > 0
    assert 0 < reply.usage.output_tokens <= 48
    assert reply.model == "SmolLM2-135M-Instruct.Q4_1"
    assert reply.finish_reason == "stop"


async def test_xllamacpp_counts_usage_and_stops_at_max_tokens(smollm2):
    reply = await smollm2.complete(
        ModelRequest.from_prompt("Write a long story about a cat.", max_tokens=7)
    )
    assert reply.usage.output_tokens == 7
    assert reply.usage.input_tokens > 5
    assert reply.finish_reason == "length"


async def test_xllamacpp_structured_output_is_schema_constrained(smollm2):
    request = ModelRequest.from_prompt(
        "Which city is the capital of France? Answer as JSON.", max_tokens=48, response_format=CITY
    )
    reply = await smollm2.complete(request)
    assert isinstance(reply.structured, dict)
    jsonschema.validate(reply.structured, CITY_SCHEMA)
    assert "paris" in str(reply.structured["city"]).lower()


async def test_xllamacpp_sampling_follows_the_request_seed(smollm2):
    def sampled(seed: int) -> ModelRequest:
        return ModelRequest.from_prompt(
            "Name an animal.", max_tokens=12, temperature=1.0, seed=seed
        )

    first, again = [await smollm2.complete(sampled(7)) for _ in range(2)]
    assert first.text == again.text


async def test_xllamacpp_decodes_concurrent_requests_together(smollm2):
    backend = smollm2.backend
    cities = ["France", "Italy", "Germany", "Spain", "Japan", "England", "Russia", "Egypt"]
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, backend._in_engine)
            await asyncio.sleep(0.002)

    watcher = asyncio.ensure_future(watch())
    try:
        replies = await asyncio.gather(
            *(
                smollm2.complete(
                    ModelRequest.from_prompt(f"What is the capital of {c}?", max_tokens=32)
                )
                for c in cities
            )
        )
    finally:
        watcher.cancel()
    assert all(r.text and r.usage.output_tokens > 0 for r in replies)
    assert "paris" in replies[0].text.lower()
    assert "rome" in replies[1].text.lower()
    assert 1 < peak <= SLOTS  # several in the engine at once, never more than its slots


async def test_xllamacpp_stops_generating_when_its_caller_leaves(smollm2):
    backend = smollm2.backend
    before = (backend.generations, backend.abandoned)
    predicted = engine_counters(backend)["tokens_predicted_total"]
    call = asyncio.ensure_future(backend.complete(long_request()))
    while backend.generations == before[0]:  # until the engine is generating it
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call
    counters = await settled(backend)
    assert (backend.generations, backend.abandoned) == (before[0] + 1, before[1] + 1)
    # llama.cpp released the slot after a few tokens, not the 2,000 it was allowed,
    # and decodes nothing more.
    assert 0 < counters["tokens_predicted_total"] - predicted < 400
    await asyncio.sleep(0.3)
    assert engine_counters(backend)["n_decode_total"] == counters["n_decode_total"]
    reply = await smollm2.complete(ModelRequest.from_prompt(QUESTION, max_tokens=24))
    assert "Paris" in reply.text  # the model answers as before after a stopped generation


async def test_xllamacpp_stops_generating_at_the_deadline(smollm2):
    backend = smollm2.backend
    abandoned = backend.abandoned
    predicted = engine_counters(backend)["tokens_predicted_total"]
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        await backend.complete(long_request(deadline=time.time() + 1.0))
    assert time.monotonic() - started < 5
    counters = await settled(backend)
    assert backend.abandoned == abandoned + 1
    assert counters["tokens_predicted_total"] - predicted < 1000  # about 1 s of tokens


async def test_xllamacpp_refuses_a_passed_deadline_without_generating(smollm2):
    backend = smollm2.backend
    generations = backend.generations
    with pytest.raises(DeadlineExceededError):
        await backend.complete(
            ModelRequest.from_prompt(QUESTION, max_tokens=8, deadline=time.time() - 1)
        )
    assert backend.generations == generations


async def test_xllamacpp_rejects_a_prompt_longer_than_its_context(smollm2):
    too_long = ModelRequest.from_prompt("word " * 3000, max_tokens=8)
    with pytest.raises(RequestRejectedError) as caught:
        await smollm2.backend.complete(too_long)
    assert caught.value.status_code == 400
    assert "context" in str(caught.value)
    assert len(str(caught.value)) < 500


async def test_xllamacpp_close_stops_a_running_generation(capfd):
    backend = XLlamaCppBackend(n_threads=1, n_parallel=1)
    await backend.start()
    assert capfd.readouterr() == ("", "")  # llama.cpp logs nothing, not even its load
    socket_dir = backend._socket_dir
    assert socket_dir is not None
    call = asyncio.ensure_future(backend.complete(long_request()))
    while backend.generations == 0:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await backend.aclose()
    assert time.monotonic() - started < 5
    with pytest.raises(BackendError, match="closed"):
        await call
    assert backend._server is None
    assert backend.abandoned == 1
    assert not os.path.exists(socket_dir)  # the engine's private socket went with it
    await backend.aclose()  # twice is fine
