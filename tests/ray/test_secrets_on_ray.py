"""API keys on a real Ray: read in the model's actor, never stored by the GCS (issue 9).

Ray's GCS keeps every actor's creation task, its pickled constructor arguments included, to
restart the actor. In Ray 2.60 that task spec is no longer part of ``ActorTableData`` (what
``GetActorInfo`` returns): the GCS keeps it in its own actor task spec table, in memory (or in
Redis when GCS fault tolerance is on), and no RPC reads it back. So these tests read what the GCS
holds where it holds it: the GCS server's memory (``/proc/<pid>/mem``; the session cluster's GCS
is a child of this process). A control actor shows that the scan does find constructor arguments,
and a control string travelling in the same spec as the key must be found while the key is not.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import ray
from ray._private import ray_constants

from cantata.agents import (
    BackendError,
    ModelSpec,
    OpenAIConfig,
    Resources,
    TopologySpecError,
)
from cantata.cluster import RayRuntime, deploy
from cantata.topologies import SingleSpec
from tests.support.http_server import RecordedRequest, Reply, ScriptedServer

pytestmark = pytest.mark.ray

VAR = "CANTATA_RAY_SECRET_KEY"
LOOPBACK = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 * 2**20}
CHAT = {
    "model": "served",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "authorized"}}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1},
}


class KeyedServer(ScriptedServer):
    """Answers only requests that carry ``Bearer <key>``; any other gets HTTP 401."""

    def __init__(self, key: str) -> None:
        super().__init__(Reply(json=CHAT))
        self.key = key

    def _record_and_pop(self, request: RecordedRequest) -> Reply:
        reply = super()._record_and_pop(request)
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return Reply(status=401, json={"error": {"message": "missing or wrong API key"}})
        return reply


def gcs_pid(ray_cluster: Any) -> int:
    (process,) = ray_cluster.cluster.head_node.all_processes[ray_constants.PROCESS_TYPE_GCS_SERVER]
    return int(process.process.pid)


def gcs_holds(pid: int, *needles: str) -> dict[str, bool]:
    """Which of ``needles`` occur (UTF-8) anywhere in the readable memory of process ``pid``."""
    wanted = {needle: needle.encode() for needle in needles}
    found = dict.fromkeys(needles, False)
    overlap = max(len(data) for data in wanted.values()) - 1
    chunk = 16 * 2**20
    try:
        maps, mem = open(f"/proc/{pid}/maps"), open(f"/proc/{pid}/mem", "rb", 0)  # noqa: SIM115
    except OSError as exc:  # no /proc (macOS), or ptrace forbidden by a hardened kernel
        pytest.skip(f"cannot read the GCS server's memory here: {exc}")
    with maps, mem:
        for line in maps:
            addresses, perms = line.split()[:2]
            if not perms.startswith("r"):
                continue
            start, end = (int(part, 16) for part in addresses.split("-"))
            tail = b""
            for offset in range(start, end, chunk):
                try:
                    mem.seek(offset)
                    data = tail + mem.read(min(chunk, end - offset))
                except (OSError, OverflowError, ValueError):
                    break  # [vvar] and the like cannot be read
                for needle, raw in wanted.items():
                    if not found[needle] and raw in data:
                        found[needle] = True
                tail = data[-overlap:] if overlap else b""
    return found


def settle(attempt: Callable[[], Any], limit_s: float) -> Any:
    """``attempt()``'s result once it stops raising, retried until ``limit_s`` passes."""
    give_up = time.monotonic() + limit_s
    while True:
        try:
            return attempt()
        except Exception:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.5)


@ray.remote(num_cpus=0)
class Holder:
    def __init__(self, value: str) -> None:
        self.value = value

    def ready(self) -> bool:
        return True


def test_the_gcs_scan_sees_what_an_actor_was_constructed_with(ray_cluster):
    decoy = f"decoy-argument-{secrets.token_hex(8)}"
    pid = gcs_pid(ray_cluster)
    assert gcs_holds(pid, decoy) == {decoy: False}
    holder = Holder.remote(decoy)  # type: ignore[attr-defined]
    try:
        assert ray.get(holder.ready.remote(), timeout=60)
        assert gcs_holds(pid, decoy) == {decoy: True}
    finally:
        ray.kill(holder)


def test_a_deployed_model_reads_its_key_where_it_runs_and_the_gcs_never_holds_it(
    ray_cluster, monkeypatch
):
    key = f"sk-ray-{secrets.token_hex(12)}"
    control = f"served-model-{secrets.token_hex(8)}"  # travels in the same spec as the key
    # The driver has the key; of the nodes, only one started now does (like a `ray start`
    # run where the variable is set): the session's nodes started before this test.
    monkeypatch.setenv(VAR, key)
    node = ray_cluster.cluster.add_node(**LOOPBACK, num_cpus=1, resources={"keyed": 1})
    try:
        with KeyedServer(key) as server:
            spec = ModelSpec(
                name="remote",
                backend=OpenAIConfig(base_url=server.url, model=control, api_key_env=VAR),
                resources=Resources(num_cpus=0.5, custom={"keyed": 1}),
            )
            deployment = deploy(SingleSpec(name="keyed", model=spec), "secret-test")
            try:
                assert deployment.call("hello").text == "authorized"
                pid = gcs_pid(ray_cluster)
                # The controller (topology), coordinator and model actor were all created
                # with the spec; the GCS holds their arguments, but not the key.
                assert gcs_holds(pid, control, key) == {control: True, key: False}
                # What Ray's actor table API returns (no task spec in 2.60) holds it neither.
                info = ray._private.state.state.get_actor_info(
                    ray.ActorID.from_hex(replica_of(deployment).actor_id)
                )
                assert info is not None
                assert key.encode() not in info

                # A crash: Ray restarts the actor from the arguments the GCS kept, and the
                # new process reads the key from its own environment again.
                actor_id = replica_of(deployment).actor_id
                before = ray._private.state.actors(actor_id)
                os.kill(before["Pid"], signal.SIGKILL)
                result = settle(lambda: deployment.call("again", timeout_s=10), limit_s=90)
                assert result.text == "authorized"
                after = ray._private.state.actors(actor_id)
                assert after["NumRestarts"] >= 1
                assert after["Pid"] != before["Pid"]
                assert gcs_holds(pid, key) == {key: False}
            finally:
                deployment.down()
            requests = server.requests
    finally:
        ray_cluster.cluster.remove_node(node)
    assert requests
    assert all(r.headers.get("authorization") == f"Bearer {key}" for r in requests)
    assert all(r.json["model"] == control for r in requests)


async def start_and_stop(spec: ModelSpec) -> None:
    """Start ``spec``'s model on Ray (and stop it again, should that succeed)."""
    runtime = RayRuntime(start_timeout_s=60)
    handles = await runtime.start_models([spec])
    await runtime.stop_models(list(handles.values()))


def replica_of(deployment: Any) -> Any:
    (model,) = deployment.status().models
    (replica,) = model.replicas
    return replica


async def test_a_variable_missing_where_the_model_runs_fails_its_start_naming_it(
    ray_cluster, monkeypatch
):
    key = f"sk-driver-only-{secrets.token_hex(8)}"
    # Set on the driver only: the session's nodes, and so their actors, started without it.
    monkeypatch.setenv(VAR, key)
    with KeyedServer(key) as server:
        spec = ModelSpec(
            name="keyless",
            backend=OpenAIConfig(base_url=server.url, model="gpt-x", api_key_env=VAR),
            resources=Resources(num_cpus=0.25),
        )
        with pytest.raises(BackendError, match=VAR) as caught:
            await start_and_stop(spec)
        requests = server.requests
    message = str(caught.value)
    assert "not set" in message
    assert key not in message
    assert requests == []  # failed before any request, not with a 401 later


async def test_a_literal_key_is_refused_before_anything_reaches_ray(ray_cluster):
    literal = f"sk-literal-{secrets.token_hex(8)}"
    spec = ModelSpec(
        name="literal",
        backend=OpenAIConfig(base_url="http://127.0.0.1:9/v1", model="gpt-x", api_key=literal),
        resources=Resources(num_cpus=0.25),
    )
    with pytest.raises(TopologySpecError, match="api_key_env") as caught:
        await start_and_stop(spec)
    assert literal not in str(caught.value)
    assert gcs_holds(gcs_pid(ray_cluster), literal) == {literal: False}
