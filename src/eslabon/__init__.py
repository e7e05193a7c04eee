"""eslabon: declarative LLM chain files that compile to LangChain runnables.

Heavy pieces (LangChain, provider SDKs, llama.cpp) load lazily, on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eslabon.errors import (
    ChainConfigError,
    ContextLengthError,
    EslabonError,
    EslabonRuntimeError,
    InputError,
    KeyRejectedError,
    MissingCredentialsError,
    MissingDependencyError,
    ModelError,
    ModelNotFoundError,
    OutputValidationError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
    UserError,
)

if TYPE_CHECKING:
    from eslabon.compile import CompiledChain, compile_chain, load_chain
    from eslabon.fake import EchoChatModel, FakeChatModel
    from eslabon.models import build_model
    from eslabon.spec import Chain, Step

__version__ = "0.1.0"

__all__ = [
    "Chain",
    "ChainConfigError",
    "CompiledChain",
    "ContextLengthError",
    "EchoChatModel",
    "EslabonError",
    "EslabonRuntimeError",
    "FakeChatModel",
    "InputError",
    "KeyRejectedError",
    "MissingCredentialsError",
    "MissingDependencyError",
    "ModelError",
    "ModelNotFoundError",
    "OutputValidationError",
    "ProviderError",
    "ProviderUnavailableError",
    "RateLimitedError",
    "Step",
    "UserError",
    "build_model",
    "compile_chain",
    "load_chain",
]

_LAZY = {
    "Chain": "eslabon.spec",
    "Step": "eslabon.spec",
    "CompiledChain": "eslabon.compile",
    "compile_chain": "eslabon.compile",
    "load_chain": "eslabon.compile",
    "EchoChatModel": "eslabon.fake",
    "FakeChatModel": "eslabon.fake",
    "build_model": "eslabon.models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'eslabon' has no attribute {name!r}")
