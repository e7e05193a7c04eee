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
    Problem,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
    UserError,
)

if TYPE_CHECKING:
    from eslabon.checks import check_spec
    from eslabon.compile import compile_chain, load_chain
    from eslabon.fake import EchoChatModel, FakeChatModel
    from eslabon.loader import spec_from_yaml
    from eslabon.models import build_model
    from eslabon.runtime import CompiledChain
    from eslabon.spec import Chain, Step


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
    "Problem",
    "ProviderError",
    "ProviderUnavailableError",
    "RateLimitedError",
    "Step",
    "UserError",
    "build_model",
    "check_spec",
    "compile_chain",
    "load_chain",
    "spec_from_yaml",
]

_LAZY = {
    "Chain": "eslabon.spec",
    "Step": "eslabon.spec",
    "CompiledChain": "eslabon.runtime",
    "compile_chain": "eslabon.compile",
    "load_chain": "eslabon.compile",
    "EchoChatModel": "eslabon.fake",
    "FakeChatModel": "eslabon.fake",
    "build_model": "eslabon.models",
    "check_spec": "eslabon.checks",
    "spec_from_yaml": "eslabon.loader",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":  # the package's metadata, read when asked (not on every start)
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("eslabon")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0.0.0+unknown"
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'eslabon' has no attribute {name!r}")
