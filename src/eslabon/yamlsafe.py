"""YAML from untrusted files, bounded: size, nesting depth and alias expansion.

``yaml.safe_load`` builds no objects but still expands aliases: a 421-byte file of nested
aliases (``&a [*b, *b, ...]``) stands for billions of values, and a 600-level ``[[[...]]]``
overflows the parser's recursion. Before anything walks the document, these limits are checked
on the parser's events (no recursion) and on the node graph (each shared node counted once per
use, memoized, so the count itself stays linear).
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_VALUES",
    "YamlLimitError",
    "compose_bounded",
    "load_bounded",
]

MAX_FILE_BYTES = 1_000_000  # a chain file is a page of text; 1 MB is far beyond any real one
MAX_DEPTH = 64  # nested mappings/lists
MAX_VALUES = 100_000  # values once aliases are expanded


class YamlLimitError(ValueError):
    """The document breaks a limit; ``line``/``col`` are 1-based where known."""

    def __init__(self, message: str, hint: str, line: int | None = None, col: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.line = line
        self.col = col


def _check_size(text: str, max_bytes: int) -> None:
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise YamlLimitError(
            f"the file is {size:,} bytes; eslabon reads YAML files up to {max_bytes:,} bytes",
            "move long texts into example or document files, or split the chain",
        )


def _check_depth(text: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise YamlLimitError(
                    f"values nest deeper than {MAX_DEPTH} levels",
                    "flatten the structure",
                    mark.line + 1 if mark else None,
                    mark.column + 1 if mark else None,
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _expanded(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for once every alias is expanded (memoized by node)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    total = 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            total += _expanded(key, sizes) + _expanded(value, sizes)
            if total > MAX_VALUES:
                break
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            total += _expanded(item, sizes)
            if total > MAX_VALUES:
                break
    sizes[id(node)] = total
    return total


def compose_bounded(text: str, max_bytes: int = MAX_FILE_BYTES) -> yaml.Node | None:
    """The document's node graph, after checking size, depth and alias expansion.

    Raises :class:`YamlLimitError` for a broken limit and ``yaml.YAMLError`` for bad YAML.
    """
    _check_size(text, max_bytes)
    _check_depth(text)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    finally:
        loader.dispose()
    if node is not None and _expanded(node, {}) > MAX_VALUES:
        raise YamlLimitError(
            f"the YAML expands to more than {MAX_VALUES:,} values through its aliases "
            "(*name repeats what &name marks)",
            "write the values out, or use fewer nested aliases",
            node.start_mark.line + 1,
            node.start_mark.column + 1,
        )
    return node


def construct(node: yaml.Node | None) -> Any:
    """Python data for a node graph from :func:`compose_bounded` (safe types only)."""
    if node is None:
        return None
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_bounded(text: str, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """``yaml.safe_load`` with the limits above."""
    return construct(compose_bounded(text, max_bytes))
