"""eslabon: declarative LLM chain files that compile to LangChain runnables.

Heavy pieces (LangChain, provider SDKs, llama.cpp) load lazily, on first use. The modules live in
subpackages by concern (docs/architecture.md); each one's former flat path (``eslabon.local``,
``eslabon.retrieval``, ...) still imports the same module object, through :class:`_FormerPaths`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
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
    from eslabon.chainfile.checks import check_spec
    from eslabon.chainfile.loader import spec_from_yaml
    from eslabon.chainfile.spec import Chain, Step
    from eslabon.chat.fake import EchoChatModel, FakeChatModel
    from eslabon.chat.models import build_model
    from eslabon.running.compile import compile_chain, load_chain
    from eslabon.running.runtime import CompiledChain


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

# every module's package, by its name: eslabon.NAME (its former path) is eslabon.PACKAGE.NAME
MOVED = {
    # chainfile
    "spec": "chainfile",
    "schema_errors": "chainfile",
    "loader": "chainfile",
    "checks": "chainfile",
    "templates": "chainfile",
    "examples": "chainfile",
    "yamlsafe": "chainfile",
    "patterns": "chainfile",
    "suggest": "chainfile",
    "discover": "chainfile",
    # running
    "compile": "running",
    "runtime": "running",
    "runcore": "running",
    "history": "running",
    "structured": "running",
    "toolcalls": "running",
    "binding": "running",
    "selectors": "running",
    # chat
    "models": "chat",
    "modelspec": "chat",
    "local": "chat",
    "fake": "chat",
    "pool": "chat",
    "resilience": "chat",
    "transport": "chat",
    "provider_errors": "chat",
    "cache": "chat",
    "prices": "chat",
    "integrations": "chat",
    "inprocess": "chat",
    "huggingface": "chat",
    "adapter": "chat",
    "speedups": "chat",
    # rag
    "retrieval": "rag",
    "embeddings": "rag",
    "indexing": "rag",
    "llamaindex": "rag",
    "registry": "rag",
    # interfaces
    "cli": "interfaces",
    "ui": "interfaces",
    "render": "interfaces",
    "graph": "interfaces",
    "batch": "interfaces",
    "ray_engine": "interfaces",
    "outfile": "interfaces",
    "logs": "interfaces",
    "tunecmd": "interfaces",
    # trust
    "allow": "trust",
    "paths": "trust",
    "imports": "trust",
    "project": "trust",
    "redaction": "trust",
    # observe (new: no former flat path; listed so that the layout test checks them)
    "meter": "observe",
    "record": "observe",
    "runlog": "observe",
    "tracing": "observe",
    # evaluate (new: no former flat path; listed so that the layout test checks them)
    "cases": "evaluate",
    "assertions": "evaluate",
    "runner": "evaluate",
    "reports": "evaluate",
    "pytest_plugin": "evaluate",
    # tuning (new: no former flat path; listed so that the layout test checks them)
    "data": "tuning",
    "train": "tuning",
    "export": "tuning",
    "tune": "tuning",
}


class _FormerPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import eslabon.local`` gives ``eslabon.chat.local`` itself (one module object, so its
    state, patches and pickles are shared): the paths docs and users' code name keep working."""

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.partition(".")
        if package != "eslabon" or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        name = spec.name.partition(".")[2]
        module = importlib.import_module(f"eslabon.{MOVED[name]}.{name}")
        spec.loader_state = module.__spec__  # importlib gives the module this spec next
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the module ran under its own name already; it keeps its own spec
        module.__spec__ = module.__spec__.loader_state if module.__spec__ else None


if not any(isinstance(finder, _FormerPaths) for finder in sys.meta_path):
    sys.meta_path.append(_FormerPaths())

_LAZY = {
    "Chain": "eslabon.chainfile.spec",
    "Step": "eslabon.chainfile.spec",
    "CompiledChain": "eslabon.running.runtime",
    "compile_chain": "eslabon.running.compile",
    "load_chain": "eslabon.running.compile",
    "EchoChatModel": "eslabon.chat.fake",
    "FakeChatModel": "eslabon.chat.fake",
    "build_model": "eslabon.chat.models",
    "check_spec": "eslabon.chainfile.checks",
    "spec_from_yaml": "eslabon.chainfile.loader",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":  # the package's metadata, read when asked (not on every start)
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("eslabon")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0.0.0+unknown"
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'eslabon' has no attribute {name!r}")
