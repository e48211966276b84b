"""The secrets this process holds (API keys), and scrubbing them out of untrusted text.

Every string that came from a server or a model is untrusted: a server may quote the request it
got, ``Authorization`` header included, in any field of its answer (an error message, ``model``,
``usage``, the completion itself). Scrubbing only the error paths that were thought of is not
enough, so keys are registered here when a backend or a spec takes them, and every response is
scrubbed of *every* registered key where it enters the process (:func:`scrub_json`), before any
of it can reach an error, a span, a metric label, a log line or a result. Log lines are scrubbed
once more as they are rendered, for text that entered some other way.

A key named by an environment variable is read in the process that uses it
(:func:`secret_from_env`): the model's actor on Ray, not only the driver. Only the variable's
name travels between processes, so no key sits in the actor arguments that Ray keeps in its GCS.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from pydantic import SecretStr

__all__ = ["REDACTED", "register_secret", "scrub", "scrub_json", "secret_from_env"]

REDACTED = "**********"
"""What a secret is replaced with."""


class _Registry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        # Longest first, so a key is replaced whole before any shorter secret inside it.
        self.forms: tuple[str, ...] = ()


_registry = _Registry()


def register_secret(secret: SecretStr | str | None) -> None:
    """Remember ``secret`` so that :func:`scrub` removes it from now on, in this process."""
    if secret is None:
        return
    value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    # The bare key too: messages often quote it without the whitespace a file left around it.
    new = {form for form in (value, value.strip()) if form}
    with _registry.lock:
        if not new.issubset(_registry.forms):
            forms = new.union(_registry.forms)
            _registry.forms = tuple(sorted(forms, key=len, reverse=True))


def secret_from_env(name: str) -> SecretStr | None:
    """The secret in environment variable ``name`` of this process, registered; None if unset.

    Surrounding whitespace is dropped (keys read from files, Kubernetes secrets say, often end
    in a newline), and a variable that is empty once stripped counts as unset.
    """
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    secret = SecretStr(value)
    register_secret(secret)  # this process scrubs it from logs and server text
    return secret


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by :data:`REDACTED`."""
    for form in _registry.forms:
        if form in text:
            text = text.replace(form, REDACTED)
    return text


def scrub_json(value: Any) -> Any:
    """A decoded JSON value with every registered secret scrubbed from its strings and keys."""
    if not _registry.forms:
        return value
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list):
        return [scrub_json(item) for item in value]
    if isinstance(value, dict):
        return {scrub(str(key)): scrub_json(item) for key, item in value.items()}
    return value
