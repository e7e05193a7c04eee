"""One memo for LangChain's chat models, installed when eslabon compiles a chain.

``BaseChatModel._generate_with_cache`` (and its async twin) asks, on every model call, whether
the model's ``_generate`` takes ``run_manager``: ``inspect.signature`` of a bound method, built
afresh each time — ≈ 20 µs a call on the 2-core development machine, about a seventh of a
3-step eslabon run's own time (``bench/overhead.py``). A function's parameters do not change,
so the answer is kept per function (weakly: a function that goes away takes its entry with
it). Nothing else changes: the same mapping of parameters comes back, and a callable that
cannot be kept (not weak-referenceable) is inspected every time, as before. The memo covers
every chat model in the process, eslabon's or not; ``ESLABON_NO_SPEEDUPS=1`` leaves LangChain
as it is. Written here because LangChain has no such cache (langchain-core 1.x).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Mapping
from inspect import Parameter
from typing import Any

__all__ = ["install", "installed"]

_Parameters = Callable[[Callable[..., Any]], Mapping[str, Parameter]]


def _memo(inspect_parameters: _Parameters) -> _Parameters:
    # a bound method is made anew at each attribute access: its function is the key, in a
    # table of its own (a method's parameters are its function's without the first)
    methods: weakref.WeakKeyDictionary[Any, Mapping[str, Parameter]] = weakref.WeakKeyDictionary()
    others: weakref.WeakKeyDictionary[Any, Mapping[str, Parameter]] = weakref.WeakKeyDictionary()

    def parameters(obj: Callable[..., Any]) -> Mapping[str, Parameter]:
        function = getattr(obj, "__func__", None)
        kept, key = (others, obj) if function is None else (methods, function)
        try:
            return kept[key]
        except KeyError:
            found = inspect_parameters(obj)
            kept[key] = found
            return found
        except TypeError:  # not weak-referenceable: inspected each time
            return inspect_parameters(obj)

    parameters.__wrapped__ = inspect_parameters  # type: ignore[attr-defined]
    return parameters


def install() -> None:
    """Install the memo (once; not with ``ESLABON_NO_SPEEDUPS`` set)."""
    if os.environ.get("ESLABON_NO_SPEEDUPS") or installed():
        return
    from langchain_core.language_models import chat_models

    original = getattr(chat_models, "_signature_parameters", None)
    if original is None:  # a LangChain that asks another way: nothing to do
        return
    setattr(chat_models, "_signature_parameters", _memo(original))  # noqa: B010 (private)


def installed() -> bool:
    """Whether the memo is in place."""
    from langchain_core.language_models import chat_models

    current = getattr(chat_models, "_signature_parameters", None)
    return current is not None and hasattr(current, "__wrapped__")
