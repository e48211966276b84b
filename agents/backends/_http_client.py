"""POST JSON to an OpenAI-compatible server: retries, timeouts and error translation in one place.

Both HTTP backends (chat and embeddings) use :class:`JsonPoster`. httpx's exceptions stop here and
become Cantata's typed errors; the API key lives in a :class:`~pydantic.SecretStr`, goes only into
the ``Authorization`` header, and is scrubbed (with every other key this process holds) from
everything a server answers, as it arrives: see :mod:`cantata.agents._secrets`. A key named by an
environment variable (``api_key_env``) is read in this process; when the variable is missing
here, every use fails with a :class:`~cantata.agents.BackendError` naming it, before any request.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import socket
import time
from typing import Any

import httpx
import structlog
from pydantic import SecretStr

from .._errors import (
    BackendError,
    BackendHTTPError,
    BackendTimeoutError,
    DeadlineExceededError,
    EndpointUnreachableError,
    MalformedResponseError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
)
from .._secrets import register_secret, scrub, scrub_json, secret_from_env
from .._structured import excerpt
from ._http_config import Limits, RetryPolicy, Timeout

__all__ = ["JsonPoster"]

log = structlog.get_logger("cantata.http")

_BODY_EXCERPT = 300


class JsonPoster:
    """One pooled ``httpx.AsyncClient`` for one base URL, created on first use in its loop."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: SecretStr | None,
        model: str,
        timeout: Timeout,
        limits: Limits,
        retry: RetryPolicy,
        headers: dict[str, str] | None = None,
        api_key_env: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if api_key is None and api_key_env:
            api_key = secret_from_env(api_key_env)
        self._api_key = api_key
        # Named, but missing in this process: fail every use, naming it, instead of a 401 later.
        self._missing_key_env = api_key_env if api_key is None else None
        register_secret(api_key)
        self.model = model
        self.timeout = timeout
        self.limits = limits
        self.retry = retry
        self._headers = dict(headers or {})
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"JsonPoster(base_url={self.base_url!r}, model={self.model!r})"

    def check_key(self) -> None:
        """Raise :class:`BackendError` when the key's environment variable is missing here."""
        name = self._missing_key_env
        if name is None:
            return
        raise BackendError(
            f"the API key for {self.base_url} (model {self.model!r}) comes from the environment"
            f" variable {name}, which is not set, or is empty, in the process hosting the model"
            f" (pid {os.getpid()} on {socket.gethostname()}). Set it where the model runs: on"
            " Ray, in the environment every node was started in (ray start), or before ray.init"
            " for a Ray started by the driver.",
            model=self.model,
        )

    def _client_for_loop(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Content-Type": "application/json", **self._headers}
            if self._api_key is not None:
                headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                timeout=httpx.Timeout(
                    connect=self.timeout.connect,
                    read=self.timeout.read,
                    write=self.timeout.write,
                    pool=self.timeout.pool,
                ),
                limits=httpx.Limits(
                    max_connections=self.limits.max_connections,
                    max_keepalive_connections=self.limits.max_keepalive_connections,
                    keepalive_expiry=self.limits.keepalive_expiry,
                ),
                # Our RetryPolicy is the only retry layer.
                transport=httpx.AsyncHTTPTransport(retries=0),
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool. Safe to call twice."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def post(self, path: str, payload: dict[str, Any], *, deadline: float | None) -> Any:
        """POST ``payload`` and return the decoded JSON body, retrying per the policy."""
        self.check_key()
        url = f"{self.base_url}{path}"
        attempt = 0
        while True:
            attempt += 1
            read_timeout = self.timeout.read
            if deadline is not None:
                left = deadline - time.time()
                if left <= 0:
                    raise DeadlineExceededError(
                        f"deadline passed before attempt {attempt} to {url}"
                    )
                read_timeout = min(read_timeout, left)
            # Errors are raised here, outside any except block, so no httpx exception (whose
            # request carries the Authorization header) rides along as __context__.
            outcome = await self._attempt(path, payload, read_timeout, attempt)
            retry_after = None
            failure: BackendError
            if isinstance(outcome, BackendError):
                failure = outcome
                if isinstance(failure, BackendTimeoutError) and read_timeout < self.timeout.read:
                    raise DeadlineExceededError(
                        f"deadline passed while waiting {read_timeout:.1f}s for {url}"
                    )
                if not isinstance(failure, EndpointUnreachableError):
                    raise failure
            else:
                if outcome.is_success:
                    return self._decode(url, outcome.content, attempt)
                failure = self._status_error(url, outcome.status_code, outcome.content, attempt)
                retry_after = _retry_after_seconds(outcome.headers.get("Retry-After"))
                if outcome.status_code not in self.retry.statuses:
                    raise failure
            if attempt >= self.retry.max_attempts:
                raise failure
            wait = self.retry.backoff(attempt, retry_after)
            if deadline is not None and time.time() + wait >= deadline:
                raise failure
            log.warning(
                "retrying", url=url, attempt=attempt, wait_s=round(wait, 3), error=str(failure)
            )
            await asyncio.sleep(wait)

    async def _attempt(
        self, path: str, payload: dict[str, Any], read_timeout: float, attempt: int
    ) -> httpx.Response | BackendError:
        """One HTTP exchange: the response, or the typed error that replaced httpx's."""
        url = f"{self.base_url}{path}"
        try:
            response = await self._client_for_loop().post(
                path,
                content=json.dumps(payload).encode(),
                timeout=httpx.Timeout(
                    connect=self.timeout.connect,
                    read=read_timeout,
                    write=self.timeout.write,
                    pool=self.timeout.pool,
                ),
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return EndpointUnreachableError(
                f"cannot connect to {url}: {type(exc).__name__}",
                model=self.model,
                attempts=attempt,
            )
        except httpx.TimeoutException as exc:
            return BackendTimeoutError(
                f"{url} did not answer within {read_timeout:.1f}s ({type(exc).__name__});"
                " read timeouts are not retried",
                model=self.model,
                attempts=attempt,
            )
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            return MalformedResponseError(
                f"{url} broke off its response ({type(exc).__name__}: "
                f"{self._excerpt(str(exc).encode())})",
                model=self.model,
                attempts=attempt,
            )
        except httpx.HTTPError as exc:
            # Anything else httpx raises (a header it refuses, a failed write, a bad encoding)
            # may quote the request, Authorization header included: scrub, and do not chain.
            return BackendError(
                f"request to {url} failed ({type(exc).__name__}: "
                f"{self._excerpt(str(exc).encode())})",
                model=self.model,
                attempts=attempt,
            )
        return response

    def _excerpt(self, body: bytes) -> str:
        # Scrub before cutting: a key straddling the cut would otherwise leak its first part.
        return excerpt(scrub(body.decode("utf-8", "replace")), _BODY_EXCERPT)

    def _decode(self, url: str, body: bytes, attempt: int) -> Any:
        try:
            # Scrubbed here, as it enters: any field (model, usage, the text) may echo the key.
            return scrub_json(json.loads(body))
        except (json.JSONDecodeError, UnicodeDecodeError):
            problem = "a body that is not JSON"
        except RecursionError:
            problem = "JSON nested too deep to read"
        raise MalformedResponseError(
            f"{url} answered with {problem}: {self._excerpt(body)!r}",
            model=self.model,
            attempts=attempt,
        )

    def _status_error(self, url: str, status: int, body: bytes, attempt: int) -> BackendHTTPError:
        excerpt = self._excerpt(body)
        message = f"{url} answered HTTP {status} after {attempt} attempt(s): {excerpt}"
        cls: type[BackendHTTPError]
        if status == 429:
            cls = RateLimitedError
        elif status in self.retry.statuses or status >= 500:
            cls = ServerError
        else:
            cls = RequestRejectedError
        return cls(message, status_code=status, model=self.model, attempts=attempt)


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
