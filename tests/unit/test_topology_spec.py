"""Topology files: loading, validation errors that say where, and running in-process."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from cantata.agents import (
    Budget,
    BudgetExhaustedError,
    FunctionConfig,
    LlamaCppConfig,
    ModelRequest,
    ModelSpec,
    OpenAIConfig,
    Resources,
    TopologySpecError,
    XLlamaCppConfig,
)
from cantata.topologies import (
    CallOptions,
    InProcessRuntime,
    PromptTemplate,
    RequestContext,
    SingleSpec,
    TopologySpec,
    load_topology,
    parse_topology,
    run_topology,
)
from cantata.topologies._patterns import PATTERNS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_single_example_loads():
    spec = load_topology(EXAMPLES / "single.yaml")
    assert isinstance(spec, SingleSpec)
    assert isinstance(spec.model.backend, XLlamaCppConfig)
    assert spec.model.resources.num_cpus == 1
    assert spec.model.resources.memory == 512 * 2**20


def test_a_model_without_a_backend_runs_on_xllamacpp():
    spec = parse_topology({"pattern": "single", "name": "x", "model": {"name": "m"}})
    assert isinstance(spec, SingleSpec)
    assert isinstance(spec.model.backend, XLlamaCppConfig)
    assert ModelSpec(name="m").backend == XLlamaCppConfig()


def test_the_xllamacpp_slots_follow_max_concurrency_unless_set():
    # Built, not started: nothing is loaded, so this needs neither xllamacpp nor the model.
    model = ModelSpec(name="m", max_concurrency=2, resources=Resources(num_cpus=3, num_gpus=1))
    backend = model.build_backend()
    assert (backend.n_parallel, backend.n_threads, backend.n_gpu_layers) == (2, 3, -1)
    assert backend.chat_template == "chatml"  # the default SmolLM2, as in llama-cpp-python
    pinned = model.model_copy(
        update={"backend": XLlamaCppConfig(n_parallel=6, n_threads=1, n_gpu_layers=0)}
    )
    backend = pinned.build_backend()
    assert (backend.n_parallel, backend.n_threads, backend.n_gpu_layers) == (6, 1, 0)
    assert XLlamaCppConfig().build(Resources(num_cpus=0.25)).n_threads == 1


def test_the_llama_cpp_python_engine_is_still_a_backend_type():
    spec = parse_topology(
        {
            "pattern": "single",
            "name": "x",
            "model": {"name": "m", "backend": {"type": "llamacpp", "chat_format": "chatml"}},
        }
    )
    assert isinstance(spec, SingleSpec)
    assert isinstance(spec.model.backend, LlamaCppConfig)


def test_errors_name_the_file_and_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "pattern: single\nname: x\nmodel:\n  name: m\n  resources: {num_gpus: -1}\n"
        "  backend: {type: llamacpp, n_ctx: 0}\n"
    )
    with pytest.raises(TopologySpecError) as caught:
        load_topology(path)
    message = str(caught.value)
    assert str(path) in message
    assert "model.resources.num_gpus" in message
    assert "model.backend.llamacpp.n_ctx" in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("pattern: sngle\nname: x\n", "pattern"),
        ("- just\n- a list\n", "mapping"),
        ("pattern: single\nname: x\nmodel: {name: m}\nmodle: {}\n", "modle"),
        ("pattern: [unclosed\n", "not valid YAML"),
        ("pattern: single\nname: x\nmodel: {name: m, backend: {type: function}}\n", "fn"),
    ],
)
def test_invalid_files_are_typed_errors(tmp_path, text, problem):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(TopologySpecError, match=problem):
        load_topology(path)


def test_missing_file_is_a_typed_error(tmp_path):
    with pytest.raises(TopologySpecError, match="cannot read"):
        load_topology(tmp_path / "nope.yaml")


def test_api_key_comes_from_the_environment_and_never_leaves_as_text(monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-live-DO-NOT-LEAK")
    spec = parse_topology(
        {
            "pattern": "single",
            "name": "remote",
            "model": {
                "name": "gpt",
                "backend": {
                    "type": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "model": "gpt-x",
                    "api_key_env": "TEST_LLM_KEY",
                },
            },
        }
    )
    backend = spec.model.backend
    assert isinstance(backend, OpenAIConfig)
    assert backend.api_key is not None
    assert backend.api_key.get_secret_value() == "sk-live-DO-NOT-LEAK"
    for text in (
        repr(spec),
        str(spec),
        spec.model_dump_json(),
        repr(backend.build(spec.model.resources)),
    ):
        assert "DO-NOT-LEAK" not in text


async def test_single_runs_in_process_with_a_prompt_template():
    seen: list[ModelRequest] = []

    def model(request: ModelRequest) -> str:
        seen.append(request)
        return request.messages[-1].content.upper()

    spec = SingleSpec(
        name="shout",
        model=ModelSpec(name="m", backend=FunctionConfig(fn=model)),
        prompt=PromptTemplate(system="Be {loud}.", user="Say: {input}"),
        max_tokens=9,
    )
    result = await run_topology(spec, "hello", InProcessRuntime())
    assert result.text == "SAY: HELLO"
    assert result.pattern == "single"
    assert [m.content for m in seen[0].messages] == ["Be {loud}.", "Say: hello"]
    assert seen[0].max_tokens == 9
    assert seen[0].trace_id == result.trace_id
    assert seen[0].deadline is not None
    assert result.usage.total_tokens == 6


async def test_spent_budget_stops_the_next_model_call():
    calls: list[str] = []

    def model(request: ModelRequest) -> str:
        calls.append(request.messages[-1].content)
        return "three word answer"

    runtime = InProcessRuntime()
    handles = await runtime.start_models([ModelSpec(name="m", backend=FunctionConfig(fn=model))])
    ctx = RequestContext(handles=handles, budget=Budget(tokens=4))
    await ctx.ask("m", "first", CallOptions(), parent_id="root")
    assert ctx.budget.exhausted
    with pytest.raises(BudgetExhaustedError):
        await ctx.ask("m", "second", CallOptions(), parent_id="root")
    assert calls == ["first"]
    assert ctx.usage.total_tokens == 4


async def test_a_typed_error_from_the_model_reaches_the_caller():
    def broken(request):
        raise BudgetExhaustedError("the model is out of credit")

    spec = SingleSpec(name="fails", model=ModelSpec(name="m", backend=FunctionConfig(fn=broken)))
    with pytest.raises(BudgetExhaustedError, match="out of credit"):
        await run_topology(spec, "x", InProcessRuntime())


def test_api_key_read_from_a_file_loses_its_trailing_newline(monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-from-a-file\n")
    config = OpenAIConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="TEST_LLM_KEY")
    assert config.api_key is not None
    assert config.api_key.get_secret_value() == "sk-from-a-file"


def test_every_spec_in_the_union_has_a_runner():
    union = get_args(get_args(TopologySpec)[0])
    assert set(union) == set(PATTERNS)
