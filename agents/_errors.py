"""Cantata's exceptions: one tree, so callers can catch as broadly or narrowly as they need.

::

    CantataError
    ├── MessageError
    │   └── InvalidMessageError          a message failed validation (built or arrived)
    ├── BackendError                     a model backend could not produce a completion
    │   ├── EndpointUnreachableError     connection refused, DNS failure, connect timeout
    │   ├── BackendTimeoutError          the server accepted the request but did not answer in time
    │   ├── BackendHTTPError             the server answered with an error status (``.status_code``)
    │   │   ├── RateLimitedError         429 after the retries ran out
    │   │   ├── ServerError              5xx (and 408/409) after the retries ran out
    │   │   └── RequestRejectedError     any other 4xx: the request itself is wrong, never retried
    │   ├── MalformedResponseError       a body that is not JSON, is truncated, or lacks fields
    │   ├── StructuredOutputError        model text that does not match the requested JSON schema
    │   └── CircuitOpenError             every replica of the model is cooling down after failures
    ├── RuntimeFailure                   the runtime hosting agents failed
    │   ├── ActorDiedError               the actor serving a model is dead or was lost with its node
    │   ├── UnschedulableError           no node can satisfy a reservation (``.missing`` names it)
    │   └── ActorStartTimeoutError       an actor was feasible but did not start in time
    ├── DeadlineExceededError            the request's deadline passed
    ├── OverloadedError                  a replica's queue is full: refused at once, retry later
    ├── BudgetExhaustedError             the request's token or cost budget ran out
    │   └── BudgetExceededError          a deployment's spending limit for the period is reached
    └── TopologyError
        ├── TopologySpecError            a topology file or object is invalid
        │   ├── DatasetError             an evaluation dataset is invalid (cantata.topologies)
        │   └── OtlpConfigError          the OTEL_* settings cannot be honoured (cantata.cluster)
        ├── PlanValidationError          a planner's plan is unusable (``.problems``)
        ├── AssignmentError              a supervisor assigned work to workers that do not exist
        └── QuorumNotReachedError        too few members answered (``.failures``)

Every error pickles with its fields, so it crosses Ray actors intact; the Ray runtime unwraps
Ray's ``RayTaskError`` and re-raises the Cantata error inside it. Messages never contain secrets.
"""

from __future__ import annotations

__all__ = [
    "ActorDiedError",
    "ActorStartTimeoutError",
    "AssignmentError",
    "BackendError",
    "BackendHTTPError",
    "BackendTimeoutError",
    "BudgetExceededError",
    "BudgetExhaustedError",
    "CantataError",
    "CircuitOpenError",
    "DeadlineExceededError",
    "EndpointUnreachableError",
    "InvalidMessageError",
    "MalformedResponseError",
    "MessageError",
    "OverloadedError",
    "PlanValidationError",
    "QuorumNotReachedError",
    "RateLimitedError",
    "RequestRejectedError",
    "RuntimeFailure",
    "ServerError",
    "StructuredOutputError",
    "TopologyError",
    "TopologySpecError",
    "UnschedulableError",
    "counts_against_replica",
]


class CantataError(Exception):
    """Base class of every error Cantata raises on purpose.

    ``span`` is the failed model call's span when a model actor raised the error, and
    ``trace`` every span the failed request had finished, when a topology raised it: a
    failure keeps its trace and its spending on record.
    """

    # Typed loosely: spans are messages, and messages import this module.
    span: object = None
    trace: tuple[object, ...] = ()

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[object, ...]:
        # Rebuild from the instance dict so subclasses with extra fields pickle across actors.
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[CantataError], message: str, state: dict[str, object]) -> CantataError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class MessageError(CantataError):
    """A message could not be accepted."""


class InvalidMessageError(MessageError):
    """A message failed validation, when built or when it arrived at an agent or actor."""

    def __init__(self, message: str, *, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class BackendError(CantataError):
    """A model backend could not produce a completion. ``attempts`` counts the tries made."""

    def __init__(self, message: str, *, model: str = "", attempts: int = 1) -> None:
        super().__init__(message)
        self.model = model
        self.attempts = attempts


class EndpointUnreachableError(BackendError):
    """The endpoint could not be reached: connection refused, unknown host, connect timeout."""


class BackendTimeoutError(BackendError):
    """The server accepted the request but did not answer within the read timeout."""


class BackendHTTPError(BackendError):
    """The server answered with an error status."""

    def __init__(
        self, message: str, *, status_code: int, model: str = "", attempts: int = 1
    ) -> None:
        super().__init__(message, model=model, attempts=attempts)
        self.status_code = status_code


class RateLimitedError(BackendHTTPError):
    """HTTP 429 after every retry was spent."""


class ServerError(BackendHTTPError):
    """HTTP 5xx, 408 or 409 after every retry was spent."""


class RequestRejectedError(BackendHTTPError):
    """Any other 4xx: the request is wrong (bad schema, bad key, unknown model); never retried."""


class MalformedResponseError(BackendError):
    """The response body is not JSON, is truncated, or lacks the fields a completion needs."""


class StructuredOutputError(BackendError):
    """The model's text does not parse as JSON matching the requested schema."""

    def __init__(self, message: str, *, text: str, model: str = "", attempts: int = 1) -> None:
        super().__init__(message, model=model, attempts=attempts)
        self.text = text


class CircuitOpenError(BackendError):
    """Every replica of the model failed repeatedly and is cooling down; the call was not sent.

    ``retry_after_s`` is how long until the first replica takes a trial call again.
    """

    def __init__(self, message: str, *, model: str = "", retry_after_s: float = 0.0) -> None:
        super().__init__(message, model=model, attempts=0)
        self.retry_after_s = retry_after_s


class RuntimeFailure(CantataError):
    """The runtime that hosts agents and model actors failed."""


class ActorDiedError(RuntimeFailure):
    """The actor serving a model died, or was lost with its node."""

    def __init__(self, message: str, *, actor_id: str = "") -> None:
        super().__init__(message)
        self.actor_id = actor_id


class UnschedulableError(RuntimeFailure):
    """No node in the cluster can satisfy a reservation. ``missing`` maps resource to amount."""

    def __init__(self, message: str, *, missing: dict[str, float] | None = None) -> None:
        super().__init__(message)
        self.missing = missing or {}


class ActorStartTimeoutError(RuntimeFailure):
    """An actor's reservation is feasible, but the actor did not become ready in time."""


class DeadlineExceededError(CantataError):
    """The request's deadline passed before it finished."""


class OverloadedError(CantataError):
    """A replica or agent actor is holding all the requests it may; this one was refused at
    once, without waiting. ``limit`` is the bound that was reached. Safe to retry later: the
    request did not start."""

    def __init__(self, message: str, *, limit: int = 0) -> None:
        super().__init__(message)
        self.limit = limit


class BudgetExhaustedError(CantataError):
    """The request's remaining token or cost budget cannot pay for the next step."""


class BudgetExceededError(BudgetExhaustedError):
    """A deployment refused a request that would take its spending past its limit.

    ``limit_usd`` is the limit per ``period_s``; ``spent_usd`` what the period has spent so
    far; ``expected_usd`` what the refused request was expected to cost.
    """

    def __init__(
        self,
        message: str,
        *,
        limit_usd: float,
        spent_usd: float,
        expected_usd: float,
        period_s: float = 3600.0,
    ) -> None:
        super().__init__(message)
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.expected_usd = expected_usd
        self.period_s = period_s


class TopologyError(CantataError):
    """A topology could not be built or run."""


class TopologySpecError(TopologyError):
    """A topology file or object is invalid; the message says where."""


class PlanValidationError(TopologyError):
    """A planner's plan is unusable: unknown executors, cycles, too many steps, bad references."""

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class AssignmentError(TopologyError):
    """A supervisor's assignments name workers that do not exist, or assign nothing."""

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class QuorumNotReachedError(TopologyError):
    """Fewer members answered than the quorum needs. ``failures`` maps member to its error."""

    def __init__(self, message: str, *, failures: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or {}


def counts_against_replica(error: BaseException) -> bool:
    """Whether ``error`` says the replica (or its endpoint) is failing, not the request.

    These count towards opening a replica's circuit breaker. A request the server rejects,
    text that misses the schema, a passed deadline, a spent budget or a full queue say nothing
    about the replica's health. (A model's fallback answers more: any backend failure but a
    rejected request; see ``RequestContext.ask``.)
    """
    if isinstance(error, ActorDiedError | EndpointUnreachableError | BackendTimeoutError):
        return True
    if isinstance(error, ServerError | RateLimitedError | MalformedResponseError):
        return True
    return isinstance(error, RuntimeFailure) and not isinstance(error, UnschedulableError)
