"""The schema check's errors in eslabon's words: one message builder per pydantic error type.

This module sits below the chain format: :mod:`eslabon.chainfile.spec` uses it to raise, for a
chain built in code, the same ``ChainConfigError`` a file would get, and
:mod:`eslabon.chainfile.loader` for files (with line and column). It knows pydantic and the
shape of eslabon's messages, not the models: the keys it lists for an unknown key, and the types
it lists for an unknown ``type``, are read from the model class it is given, walked along the
key path of the error (fields, list items, mapping values, and the member of a union that the
value selects).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Discriminator, Tag, ValidationError
from pydantic_core import ErrorDetails

from eslabon.chainfile.suggest import did_you_mean
from eslabon.errors import Problem
from eslabon.trust.redaction import is_secret_setting

__all__ = ["Locate", "PathT", "format_path", "model_at", "problems_from_validation"]

PathT = tuple[str | int, ...]
Locate = Callable[[PathT, bool], tuple[int, int] | None]


def format_path(path: PathT) -> str:
    """``("steps", 1, "prompt")`` as ``steps[1].prompt``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# -- walking a model's types along a key path ------------------------------------------------


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """``Annotated[T, *meta]`` as ``(T, meta)`` (nested ones flattened)."""
    meta: list[Any] = []
    while get_origin(annotation) is Annotated:
        annotation, *more = get_args(annotation)
        meta += more
    return annotation, meta


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _fits(member: Any, value: Any) -> bool:
    """Whether a plain union's member can take ``value`` (a mapping: a model or a dict)."""
    base, _ = _unwrap(member)
    origin = get_origin(base) or base
    if isinstance(value, dict):
        return origin is dict or origin in (Union, UnionType) or _is_model(origin)
    if isinstance(value, list):
        return origin is list
    return base is not type(None)


def _tagged(union: Any, tag: Any) -> Any:
    for member in get_args(union):
        inner, meta = _unwrap(member)
        if any(isinstance(m, Tag) and m.tag == tag for m in meta):
            return inner
    return None


def _resolve(annotation: Any, value: Any) -> Any:
    """The type that validates ``value``: ``Annotated`` unwrapped, and of a union the member
    its discriminator names (tagged unions) or the first one that fits the value."""
    while True:
        annotation, meta = _unwrap(annotation)
        pick = next((m.discriminator for m in meta if isinstance(m, Discriminator)), None)
        if callable(pick) and get_origin(annotation) in (Union, UnionType):
            annotation = _tagged(annotation, pick(value))
        elif get_origin(annotation) in (Union, UnionType):
            members = [m for m in get_args(annotation) if _fits(m, value)]
            annotation = members[0] if members else None
        else:
            return annotation


def _child(annotation: Any, part: str | int, value: Any) -> Any:
    """The type of ``value[part]`` where ``value`` has type ``annotation``."""
    resolved = _resolve(annotation, value)
    if _is_model(resolved):
        fields = resolved.model_fields
        name = next((k for k, f in fields.items() if part in (k, f.alias)), None)
        return fields[name].rebuild_annotation() if name is not None else None
    args = get_args(resolved)
    if get_origin(resolved) is list and isinstance(part, int) and args:
        return args[0]
    if get_origin(resolved) is dict and isinstance(part, str) and len(args) == 2:
        return args[1]
    return None


def _item(value: Any, part: str | int) -> Any:
    if isinstance(value, dict):
        return value.get(part)
    if isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
        return value[part]
    return None


def _type_at(root: type[BaseModel], path: PathT, data: Any) -> tuple[Any, Any]:
    """The declared type at ``path`` of ``data`` (validated as ``root``), and the value there."""
    annotation: Any = root
    for part in path:
        annotation = _child(annotation, part, data)
        data = _item(data, part)
        if annotation is None:
            break
    return annotation, data


def model_at(root: type[BaseModel], path: PathT, data: Any) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``path`` of ``data``, if any."""
    annotation, value = _type_at(root, path, data)
    resolved = _resolve(annotation, value)
    return resolved if _is_model(resolved) else None


def allowed_keys(root: type[BaseModel], path: PathT, data: Any) -> list[str]:
    """The keys the mapping at ``path`` may have (empty when no model validates it)."""
    model = model_at(root, path, data)
    return [f.alias or k for k, f in model.model_fields.items()] if model else []


def type_names(root: type[BaseModel], path: PathT, data: Any) -> list[str]:
    """The ``type: ...`` values of the union at ``path`` (a retriever, a selector), in order."""
    annotation, _ = _type_at(root, path, data)
    names: list[str] = []
    stack = [annotation]
    while stack:
        base, _ = _unwrap(stack.pop(0))
        if get_origin(base) in (Union, UnionType):
            stack = [*get_args(base), *stack]
        elif _is_model(base) and "type" in base.model_fields:
            kind = base.model_fields["type"].annotation
            names += [str(v) for v in get_args(kind)] if get_origin(kind) is Literal else []
    return names


@functools.cache
def _tags(root: type[BaseModel]) -> frozenset[str]:
    """Every union tag under ``root``: pydantic names them in an error's location."""
    found: set[str] = set()
    seen: set[Any] = set()
    stack: list[Any] = [root]
    while stack:
        annotation = stack.pop()
        base, meta = _unwrap(annotation)
        found.update(str(m.tag) for m in meta if isinstance(m, Tag))
        if _is_model(base) and base not in seen:
            seen.add(base)
            stack += [f.rebuild_annotation() for f in base.model_fields.values()]
        else:
            stack += [a for a in get_args(base) if a is not Ellipsis]
    return frozenset(found)


def _real_path(loc: tuple[Any, ...], data: Any, tags: frozenset[str]) -> PathT:
    """Drop pydantic's union tags and markers from ``loc``, keeping real keys and indexes."""
    out: list[str | int] = []
    cur = data
    for n, part in enumerate(loc):
        if isinstance(cur, dict) and part not in cur and n < len(loc) - 1:
            # pydantic names the member of a union it tried ('chroma' in retriever.chroma.k):
            # a value it looked inside is in the data, so a key that is not is such a tag
            continue
        if isinstance(cur, dict) and part in cur:
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int):
            out.append(part)
            cur = cur[part] if 0 <= part < len(cur) else None
        elif (
            isinstance(cur, dict) and isinstance(part, str) and part != "[key]" and part not in tags
        ):
            out.append(part)  # a missing or unknown key
            cur = None
    return tuple(out)


# -- one message builder per error type -------------------------------------------------------


@dataclass(frozen=True)
class _Error:
    """One pydantic error, its key path in the data, and what the builders may ask."""

    kind: str
    path: PathT
    value: Any  # the input, or "***" for a secret setting
    details: ErrorDetails
    root: type[BaseModel]
    data: Any

    @property
    def got(self) -> str:
        text = repr(self.value)
        return "(got " + (text if len(text) <= 60 else text[:57] + "...") + ")"

    @property
    def short(self) -> str:
        return self.got[5:-1]


@dataclass(frozen=True)
class _Said:
    message: str
    hint: str | None = None
    at_key: bool = False  # point at the key, not its value
    path: PathT | None = None  # the path to report, when not the error's own
    point: PathT | None = None  # the path to take the line from, when not the reported one


_Builder = Callable[[_Error], _Said | None]  # None: the default message


def _unknown_key(e: _Error) -> _Said:
    key = str(e.path[-1])
    allowed = allowed_keys(e.root, e.path[:-1], e.data)
    suggestion = did_you_mean(key, allowed)
    hint = (suggestion + " " if suggestion else "") + f"valid keys here: {', '.join(allowed)}"
    model = model_at(e.root, e.path[:-1], e.data)
    more = getattr(model, "unknown_key_hint", None)
    return _Said(f"unknown key '{key}'", hint + (f"; {more}" if more else ""), at_key=True)


def _missing(e: _Error) -> _Said:
    where = format_path(e.path[:-1]) or "the chain"
    return _Said(
        f"missing required key '{e.path[-1]}'",
        f"add '{e.path[-1]}' to {where}",
        point=e.path[:-1],
    )


def _union_tag(e: _Error) -> _Said | None:
    if e.path and e.path[-1] == "retriever":
        # any text type is accepted here (registered retrievers); checks.py reports typos
        types = [*type_names(e.root, e.path, e.data), "python"]
        return _Said("a retriever needs a 'type'", "valid types: " + ", ".join(types))
    if e.kind != "union_tag_invalid" or "selector" not in e.path:
        return None
    at = e.path[: len(e.path) - e.path[::-1].index("selector")]
    types = type_names(e.root, at, e.data)
    bad = e.details.get("ctx", {}).get("tag", e.value)
    suggestion = did_you_mean(str(bad), types)
    hint = (suggestion + " " if suggestion else "") + "valid types: " + ", ".join(types)
    path = e.path if e.path[-1] == "type" else (*e.path, "type")
    return _Said(f"unknown selector type '{bad}'", hint, path=path)


def _pattern(e: _Error) -> _Said:
    if "tools" in e.path or (e.path and e.path[-1] in ("pydantic", "python")):
        return _Said(
            f"{e.short} is not an import path",
            "write 'package.module:name', e.g. 'eslabon.tools:calculadora'",
        )
    return _Said(
        f"{e.short} is not a valid name: use letters, digits and '_', not starting with a digit",
        "names are used as {name} in templates",
        at_key=isinstance(e.value, str) and bool(e.path) and e.path[-1] == e.value,
    )


def _literal(e: _Error) -> _Said | None:
    if e.path != ("schema_version",):
        return None
    return _Said(
        f"unsupported schema_version {e.short}", "this version of eslabon reads schema_version: 1"
    )


def _own_message(e: _Error) -> _Said:  # custom error types of the format's unions
    return _Said(f"{e.details['msg']} {e.got}")


def _mapping(e: _Error) -> _Said:
    return _Said(f"expected a mapping {e.got}")


_LIST_HINTS = {
    "examples": "a list of '- {input: ..., output: ...}' or '- file: path' items",
    "steps": "a list of '- id: ...' items, each with a prompt",
}


def _list(e: _Error) -> _Said:
    return _Said(f"expected a list {e.got}", _LIST_HINTS.get(str(e.path[-1])) if e.path else None)


def _text(e: _Error) -> _Said:
    return _Said(
        f"expected text {e.got}",
        "quote the value if YAML reads it as a number, boolean or mapping",
    )


def _validator(e: _Error) -> _Said:  # eslabon's own validators: their words, without pydantic's
    return _Said(f"{str(e.details['msg']).removeprefix('Value error, ')} {e.got}")


def _default(e: _Error) -> _Said:
    msg = str(e.details["msg"])
    return _Said(f"{msg[0].lower()}{msg[1:]} {e.got}")


BUILDERS: dict[str, _Builder] = {
    "extra_forbidden": _unknown_key,
    "missing": _missing,
    "union_tag_not_found": _union_tag,
    "union_tag_invalid": _union_tag,
    "string_pattern_mismatch": _pattern,
    "literal_error": _literal,
    "model_ref": _own_message,
    "input_ref": _own_message,
    "example_ref": _own_message,
    "dict_type": _mapping,
    "model_type": _mapping,
    "model_attributes_type": _mapping,
    "list_type": _list,
    "string_type": _text,
    "value_error": _validator,
}


# -- putting them together ----------------------------------------------------------------------


def _typo_fixes(errors: list[_Error]) -> set[PathT]:
    """A typo such as 'promtp' also makes 'prompt' missing: the keys the typos stand for."""
    fixes: set[PathT] = set()
    for e in errors:
        if e.kind == "extra_forbidden":
            allowed = allowed_keys(e.root, e.path[:-1], e.data)
            for fix in difflib.get_close_matches(str(e.path[-1]), allowed, n=1, cutoff=0.6):
                fixes.add((*e.path[:-1], fix))
    return fixes


def _error(details: ErrorDetails, root: type[BaseModel], data: Any) -> _Error:
    path = _real_path(tuple(details["loc"]), data, _tags(root))
    value = details.get("input")
    if any(isinstance(part, str) and is_secret_setting(part) for part in path):
        value = "***"  # a key given the wrong type is still a key: never echoed
    return _Error(details["type"], path, value, details, root, data)


def _problem(e: _Error, file: str | None, locate: Locate | None) -> Problem:
    said = BUILDERS.get(e.kind, _default)(e) or _default(e)
    path = said.path if said.path is not None else e.path
    point = said.point if said.point is not None else path
    pos = locate(point, said.at_key) if locate is not None else None
    return Problem(
        said.message,
        path=format_path(path),
        file=file,
        line=pos[0] if pos else None,
        col=pos[1] if pos else None,
        hint=said.hint,
    )


def problems_from_validation(
    exc: ValidationError,
    data: Any,
    root: type[BaseModel],
    file: str | None = None,
    locate: Locate | None = None,
) -> list[Problem]:
    """Every error of ``exc`` (``root`` validating ``data``) as a problem, once each.
    ``locate`` gives the line and column of a key path (the loader's, for files)."""
    errors = [_error(d, root, data) for d in exc.errors(include_url=False)]
    typos = _typo_fixes(errors)
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for e in errors:
        if e.kind == "missing" and e.path in typos:
            continue
        problem = _problem(e, file, locate)
        if (problem.path, problem.message) not in seen:
            seen.add((problem.path, problem.message))
            problems.append(problem)
    return problems
