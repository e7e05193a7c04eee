"""Two memos for LangChain's chat models, installed when eslabon compiles a chain.

``BaseChatModel._generate_with_cache`` (and its async twin) asks, on every model call, whether
the model's ``_generate`` takes ``run_manager``: ``inspect.signature`` of a bound method, built
afresh each time — ≈ 20 µs a call on the 2-core development machine, about a seventh of a
3-step eslabon run's own time (``bench/overhead.py``). A function's parameters do not change,
so the answer is kept per function (weakly: a function that goes away takes its entry with
it). Nothing else changes: the same mapping of parameters comes back, and a callable that
cannot be kept (not weak-referenceable) is inspected every time, as before.

Then, on Python 3.11 only, every model call asks of each callback handler whether it is a
``_StreamingCallbackHandler`` (a runtime-checkable protocol): Python 3.11 works out the
protocol's members from its classes' dictionaries twice per check (≈ 6 µs a handler; eslabon's
meter is one, on every call). Python 3.12 works them out once, when the protocol is made: the
protocol is given a metaclass that does the same on 3.11 (:func:`_keep_members`), and answers
exactly as Python's own check does.

Both cover every chat model in the process, eslabon's or not; ``ESLABON_NO_SPEEDUPS=1`` leaves
LangChain as it is. Written here because LangChain has no such cache (langchain-core 1.x).
"""

from __future__ import annotations

import os
import sys
import typing
import weakref
from abc import ABCMeta
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


# a protocol's members, worked out once: (all of them, the methods among them, all methods?)
_MEMBERS: dict[type, tuple[tuple[str, ...], frozenset[str], bool]] = {}


class KeptMembersMeta(type(typing.Protocol)):  # type: ignore[misc]
    """The metaclass :func:`_keep_members` gives a protocol (Python 3.11's ``_ProtocolMeta``
    with its members worked out once). At module level, so that a class made from the
    protocol afterwards (which gets it too) pickles by reference, also into a process where
    eslabon has not installed it."""

    def __instancecheck__(cls, instance: Any) -> bool:
        kept = _MEMBERS.get(cls)
        if kept is None:  # a class made from the protocol later: Python's own check
            return bool(super().__instancecheck__(instance))
        members, methods, methods_only = kept
        # typing._ProtocolMeta.__instancecheck__ of Python 3.11, step for step
        if methods_only and issubclass(instance.__class__, cls):
            return True
        if all(
            hasattr(instance, member)
            # a method is blocked by setting it to None
            and (member not in methods or getattr(instance, member) is not None)
            for member in members
        ):
            return True
        return ABCMeta.__instancecheck__(cls, instance)


def _keep_members(protocol: type) -> None:
    """``isinstance(x, protocol)`` with the protocol's members worked out once, as Python 3.12
    does (Python 3.11's ``typing._ProtocolMeta.__instancecheck__`` otherwise, step by step)."""
    if sys.version_info >= (3, 12) or type(protocol) is KeptMembersMeta:
        return
    get_members = getattr(typing, "_get_protocol_attrs", None)
    if (
        get_members is None
        or type(protocol) is not type(typing.Protocol)
        or not getattr(protocol, "_is_runtime_protocol", False)
    ):
        return  # not the typing module or the protocol this was written for
    members = tuple(sorted(get_members(protocol)))
    methods = frozenset(m for m in members if callable(getattr(protocol, m, None)))
    _MEMBERS[protocol] = (members, methods, len(methods) == len(members))
    # a class's metaclass, changed in place
    protocol.__class__ = KeptMembersMeta  # type: ignore[method-assign]


def install() -> None:
    """Install the memos (once; not with ``ESLABON_NO_SPEEDUPS`` set)."""
    if os.environ.get("ESLABON_NO_SPEEDUPS") or installed():
        return
    from langchain_core.language_models import chat_models

    original = getattr(chat_models, "_signature_parameters", None)
    if original is not None:  # else a LangChain that asks another way: nothing to do
        setattr(chat_models, "_signature_parameters", _memo(original))  # noqa: B010 (private)
    streaming = getattr(chat_models, "_StreamingCallbackHandler", None)
    if isinstance(streaming, type):
        _keep_members(streaming)


def installed() -> bool:
    """Whether the signature memo is in place (:func:`install` gives the streaming-handler
    protocol its metaclass in the same call; ``type(protocol) is KeptMembersMeta`` tells)."""
    from langchain_core.language_models import chat_models

    current = getattr(chat_models, "_signature_parameters", None)
    return current is not None and hasattr(current, "__wrapped__")
