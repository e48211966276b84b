"""API keys never travel inside a pickled spec (issue 9).

Ray keeps an actor's constructor arguments, pickled and in clear, in its GCS. So a key read
from ``api_key_env`` is dropped when its config is pickled and read again, from the receiving
process's own environment, when it is unpickled; a literal ``api_key`` refuses to be pickled.
A variable missing where the model runs fails the backend's start, naming the variable.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterator
from typing import Any

import pytest

from cantata.agents import (
    BackendError,
    ModelActor,
    ModelRequest,
    ModelSpec,
    OpenAIConfig,
    OpenAIEmbeddingsConfig,
    Resources,
    TopologySpecError,
    scrub,
)
from cantata.agents._messages import accept
from cantata.agents._secrets import REDACTED
from cantata.agents.backends import OpenAIChatBackend, RetryPolicy
from cantata.topologies import SingleSpec, parse_topology
from tests.support.http_server import Reply, ScriptedServer

VAR = "CANTATA_UNIT_SECRET_KEY"
DRIVER_KEY = "sk-driver-side-Zq81"
ACTOR_KEY = "sk-actor-side-Wd53"
CHAT = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1},
}


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(Reply(json=CHAT)) as srv:
        yield srv


def config(base_url: str = "http://127.0.0.1:9/v1", **fields: Any) -> OpenAIConfig:
    return OpenAIConfig(
        base_url=base_url, model="control-model-name", retry=RetryPolicy(max_attempts=1), **fields
    )


def crossed(value: Any, monkeypatch: pytest.MonkeyPatch, receiver_env: str | None) -> Any:
    """``value`` pickled here and unpickled where ``VAR`` is ``receiver_env`` (None: unset)."""
    data = pickle.dumps(value)
    if receiver_env is None:
        monkeypatch.delenv(VAR, raising=False)
    else:
        monkeypatch.setenv(VAR, receiver_env)
    return pickle.loads(data)


def test_a_key_from_the_environment_is_pickled_as_the_variable_name_only(monkeypatch):
    monkeypatch.setenv(VAR, DRIVER_KEY)
    spec = ModelSpec(name="gpt", backend=config(api_key_env=VAR))
    assert isinstance(spec.backend, OpenAIConfig)
    assert spec.backend.api_key is not None  # in-process use keeps working as before
    assert spec.backend.api_key.get_secret_value() == DRIVER_KEY
    data = pickle.dumps(spec)
    assert DRIVER_KEY.encode() not in data
    assert b"control-model-name" in data  # the rest of the spec does travel
    assert VAR.encode() in data


def test_the_receiving_process_reads_the_key_from_its_own_environment(monkeypatch):
    monkeypatch.setenv(VAR, DRIVER_KEY)
    spec = ModelSpec(name="gpt", backend=config(api_key_env=VAR))
    again = crossed(spec, monkeypatch, ACTOR_KEY + "\n")  # read from a file: a newline
    assert isinstance(again.backend, OpenAIConfig)
    assert again.backend.api_key is not None
    assert again.backend.api_key.get_secret_value() == ACTOR_KEY
    assert again.backend.api_key_env == VAR
    # Registered where it was read: that process scrubs it from what servers answer.
    assert scrub(f"echo Bearer {ACTOR_KEY}") == f"echo Bearer {REDACTED}"
    # And it travels on again the same way (an actor passing its spec to another).
    assert ACTOR_KEY.encode() not in pickle.dumps(again)


def test_a_variable_missing_on_the_driver_may_be_set_where_the_model_runs(monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    spec = ModelSpec(name="gpt", backend=config(api_key_env=VAR))  # no error on the driver
    assert isinstance(spec.backend, OpenAIConfig)
    assert spec.backend.api_key is None
    again = crossed(spec, monkeypatch, ACTOR_KEY)
    assert again.backend.api_key.get_secret_value() == ACTOR_KEY


def test_nesting_and_revalidation_keep_the_key_out_of_the_pickle(monkeypatch):
    monkeypatch.setenv(VAR, DRIVER_KEY)
    topology = parse_topology(
        {
            "pattern": "single",
            "name": "remote",
            "model": {
                "name": "gpt",
                "backend": {
                    "type": "openai_embeddings",
                    "base_url": "http://127.0.0.1:9/v1",
                    "model": "control-model-name",
                    "api_key_env": VAR,
                },
            },
        }
    )
    assert isinstance(topology, SingleSpec)
    # Every re-validation (a spec nested in another, a model actor accepting it) re-checks
    # the instance; the key must stay known as the environment's.
    rebuilt = SingleSpec(name="again", model=accept(topology.model, ModelSpec))
    for value in (topology, topology.model, rebuilt, SingleSpec.model_validate(rebuilt)):
        data = pickle.dumps(value)
        assert DRIVER_KEY.encode() not in data
        assert b"control-model-name" in data
    again = crossed(rebuilt, monkeypatch, ACTOR_KEY)
    backend = again.model.backend
    assert isinstance(backend, OpenAIEmbeddingsConfig)
    assert backend.api_key.get_secret_value() == ACTOR_KEY


def test_a_literal_key_refuses_to_be_pickled_and_says_what_to_do_instead():
    literal = "sk-literal-DO-NOT-SHIP"
    spec = ModelSpec(name="gpt", backend=config(api_key=literal))
    with pytest.raises(TopologySpecError, match="api_key_env") as caught:
        pickle.dumps(SingleSpec(name="t", model=spec))
    assert literal not in str(caught.value)
    assert "control-model-name" in str(caught.value)
    # Copies stay in this process: they work as before.
    assert copy.deepcopy(spec) == spec
    assert spec.model_copy() == spec


def test_a_literal_key_wins_over_the_variable_and_is_refused_too(monkeypatch):
    monkeypatch.setenv(VAR, DRIVER_KEY)
    both = config(api_key="sk-literal-both", api_key_env=VAR)
    assert both.api_key is not None
    assert both.api_key.get_secret_value() == "sk-literal-both"
    with pytest.raises(TopologySpecError, match="literal api_key"):
        pickle.dumps(both)


def test_specs_without_a_key_pickle_as_before(monkeypatch):
    plain = ModelSpec(name="local", backend=config(), resources=Resources(num_cpus=0.5))
    assert pickle.loads(pickle.dumps(plain)) == plain


def test_json_round_trips_carry_the_name_and_read_the_key_on_arrival(monkeypatch):
    monkeypatch.setenv(VAR, DRIVER_KEY)
    text = config(api_key_env=VAR).model_dump_json()
    assert DRIVER_KEY not in text
    monkeypatch.setenv(VAR, ACTOR_KEY)
    again = OpenAIConfig.model_validate_json(text)
    assert again.api_key is not None
    assert again.api_key.get_secret_value() == ACTOR_KEY
    assert ACTOR_KEY.encode() not in pickle.dumps(again)


async def test_a_missing_variable_fails_the_start_naming_it_and_sends_nothing(monkeypatch, server):
    monkeypatch.delenv(VAR, raising=False)
    actor = ModelActor(ModelSpec(name="gpt", backend=config(server.url, api_key_env=VAR)))
    try:
        with pytest.raises(BackendError, match=VAR) as caught:
            await actor.start()
        assert "not set" in str(caught.value)
        with pytest.raises(BackendError, match=VAR):
            await actor.backend.complete(ModelRequest.from_prompt("hi"))  # type: ignore[union-attr]
        health = await actor.health()
        assert not health.healthy
        assert VAR in health.detail
    finally:
        await actor.close()
    assert server.requests == []  # no request went out without its key


async def test_an_empty_variable_counts_as_missing(monkeypatch, server):
    monkeypatch.setenv(VAR, "  \n")
    backend = OpenAIChatBackend(server.url, "m", api_key_env=VAR)
    with pytest.raises(BackendError, match=VAR):
        await backend.start()
    await backend.aclose()


async def test_the_key_read_in_the_receiving_process_is_the_one_sent(monkeypatch, server):
    monkeypatch.setenv(VAR, DRIVER_KEY)
    spec = crossed(
        ModelSpec(name="gpt", backend=config(server.url, api_key_env=VAR)), monkeypatch, ACTOR_KEY
    )
    actor = ModelActor(spec)
    try:
        health = await actor.start()
        assert health.healthy, health.detail
        reply = await actor.complete(ModelRequest.from_prompt("hi"))
        assert reply.text == "hi"
    finally:
        await actor.close()
    (sent,) = server.requests
    assert sent.headers["authorization"] == f"Bearer {ACTOR_KEY}"


async def test_a_backend_given_both_uses_the_literal_key(monkeypatch, server):
    monkeypatch.setenv(VAR, DRIVER_KEY)
    backend = OpenAIChatBackend(server.url, "m", api_key="sk-given", api_key_env=VAR)
    try:
        await backend.start()
        await backend.complete(ModelRequest.from_prompt("hi"))
    finally:
        await backend.aclose()
    assert server.requests[0].headers["authorization"] == "Bearer sk-given"
