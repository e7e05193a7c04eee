"""Plugin hooks: retrievers registered in code or installed as ``eslabon.retrievers`` entry points.

A retriever factory is any callable returning a LangChain ``BaseRetriever``; a chain file names
it as ``retriever: {type: NAME, ...keys}`` and the keys become its keyword arguments. Registered
and installed factories are trusted (they are code the user installed or ran); a factory named
by import path in a chain file goes through :mod:`eslabon.trust.imports` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

__all__ = ["ENTRY_POINT_GROUP", "register_retriever", "retriever_factory", "retriever_names"]

ENTRY_POINT_GROUP = "eslabon.retrievers"
_RETRIEVERS: dict[str, Callable[..., Any]] = {}
F = TypeVar("F", bound=Callable[..., Any])


def register_retriever(name: str) -> Callable[[F], F]:
    """Decorator: make a retriever factory (or BaseRetriever class) available as ``type: name``."""

    def decorate(factory: F) -> F:
        _RETRIEVERS[name] = factory
        return factory

    return decorate


def retriever_names() -> list[str]:
    """Registered and installed retriever names (installed ones are listed, not imported)."""
    return sorted({*_RETRIEVERS, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})


def retriever_factory(name: str) -> Callable[..., Any] | None:
    if name in _RETRIEVERS:
        return _RETRIEVERS[name]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            factory: Callable[..., Any] = ep.load()
            _RETRIEVERS[name] = factory
            return factory
    return None
