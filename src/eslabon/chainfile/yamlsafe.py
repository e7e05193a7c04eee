"""YAML from untrusted files, bounded: size, nesting depth and alias expansion.

``yaml.safe_load`` builds no objects but still expands aliases: a 421-byte file of nested
aliases (``&a [*b, *b, ...]``) stands for billions of values, and a 600-level ``[[[...]]]``
overflows the parser's recursion. Before anything walks the document, these limits are checked
on the parser's events (no recursion) and on the node graph (each shared node counted once per
use, memoized, so the count itself stays linear).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

__all__ = [
    "MAX_CHARS",
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
MAX_CHARS = 5_000_000  # text once aliases are expanded (a long anchored text used many times)


class YamlLimitError(ValueError):
    """The document breaks a limit; ``line``/``col`` are 1-based where known."""

    def __init__(self, message: str, hint: str, line: int | None = None, col: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.line = line
        self.col = col

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle (a process pool, Ray) calls the class with args, which hold the message alone;
        # the state keeps notes (add_note) too
        return (type(self), (self.message, self.hint, self.line, self.col), self.__dict__)


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


@dataclass(frozen=True)
class _Size:
    values: int  # values once aliases are expanded
    chars: int  # text in them
    depth: int  # nesting, through aliases too


def _expanded(node: yaml.Node, sizes: dict[int, _Size]) -> _Size:
    """What ``node`` stands for once every alias is expanded (memoized by node, so shared
    nodes are measured once however often they are used)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        children = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else list(node.value)
        )
        values, chars, depth = 1, 0, 0
        for child in children:
            size = _expanded(child, sizes)
            values, chars = values + size.values, chars + size.chars
            depth = max(depth, size.depth)
            if values > MAX_VALUES or chars > MAX_CHARS or depth > MAX_DEPTH:
                break  # over a limit already: the caller says so
        found = _Size(values, chars, depth + 1)
    else:
        found = _Size(1, len(str(node.value)), 0)
    sizes[id(node)] = found
    return found


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
    if node is None:
        return None
    size = _expanded(node, {})
    where = (node.start_mark.line + 1, node.start_mark.column + 1)
    hint = "write the values out, or use fewer nested aliases (*name repeats what &name marks)"
    if size.values > MAX_VALUES:
        message = f"the YAML expands to more than {MAX_VALUES:,} values through its aliases"
        raise YamlLimitError(message, hint, *where)
    if size.chars > MAX_CHARS:
        message = f"the YAML expands to more than {MAX_CHARS:,} characters through its aliases"
        raise YamlLimitError(message, hint, *where)
    if size.depth > MAX_DEPTH:
        message = f"values nest deeper than {MAX_DEPTH} levels through aliases"
        raise YamlLimitError(message, hint, *where)
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
