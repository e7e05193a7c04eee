"""Loading chain files: safe YAML with positions, schema and semantic checks, clear errors."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from eslabon.checks import PathT, check_chain_data, format_path
from eslabon.errors import ChainConfigError, Problem, is_secret_setting, redact
from eslabon.spec import (
    RETRIEVER_TYPES,
    SELECTOR_TYPES,
    AllSelector,
    BM25RetrieverSpec,
    Chain,
    ChromaRetriever,
    ExampleFile,
    ExamplePair,
    InputSpec,
    LengthSelector,
    LlamaIndexRetrieverSpec,
    MemoryRetriever,
    MMRSelector,
    ModelMapping,
    NGramSelector,
    Params,
    SemanticSelector,
    StaticRetriever,
    Step,
    validate_quietly,
)
from eslabon.suggest import did_you_mean
from eslabon.yamlsafe import MAX_FILE_BYTES, YamlLimitError, compose_bounded, construct

__all__ = [
    "load_spec",
    "load_spec_text",
    "problems_from_validation",
    "problems_in",
    "validate_file",
]

Pos = tuple[int, int]


class _Positions:
    """Line/column of every key and value in a YAML document, by key path."""

    def __init__(self) -> None:
        self.values: dict[PathT, Pos] = {}
        self.keys: dict[PathT, Pos] = {}
        self.duplicates: list[tuple[PathT, Pos]] = []

    def walk(self, node: yaml.Node, path: PathT) -> None:
        self.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
                sub = (*path, key)
                pos = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                if key in seen:
                    self.duplicates.append((sub, pos))
                seen.add(key)
                self.keys[sub] = pos
                self.walk(value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.walk(item, (*path, i))

    def locate(self, path: PathT, at_key: bool = False) -> Pos | None:
        if at_key and path in self.keys:
            return self.keys[path]
        p = path
        while p not in self.values and p:
            p = p[:-1]
        return self.values.get(p)


def _parse_yaml(text: str, file: str) -> tuple[Any, _Positions]:
    # SafeLoader only (what yaml.safe_load uses), bounded in size, depth and alias expansion,
    # and kept as nodes first so every key and value has its position.
    try:
        node = compose_bounded(text)
        positions = _Positions()
        if node is None:
            return None, positions
        positions.walk(node, ())
        data = construct(node)
    except YamlLimitError as exc:
        raise ChainConfigError(
            [Problem(exc.message, file=file, line=exc.line, col=exc.col, hint=exc.hint)]
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        raise ChainConfigError(
            [
                Problem(
                    f"invalid YAML: {problem}" + (f" ({context})" if context else ""),
                    file=file,
                    line=mark.line + 1 if mark else None,
                    col=mark.column + 1 if mark else None,
                    hint="check indentation, and quote values that contain ': ' or start with '{'",
                )
            ]
        ) from None
    return data, positions


# Allowed keys per kind of mapping, for did-you-mean on unknown keys.
def _allowed_keys(path: PathT, data: Any) -> list[str]:
    parent = _get(data, path)
    n = len(path)
    if n == 0:
        return list(Chain.model_fields)
    if n == 2 and path[0] == "steps":
        return list(Step.model_fields)
    if path[-1] == "model" or (n >= 2 and path[-2] == "fallbacks"):
        return list(ModelMapping.model_fields)
    if path[-1] == "params":
        return list(Params.model_fields)
    if n >= 2 and path[-2] == "inputs":
        return list(InputSpec.model_fields)
    if path[-1] == "retriever" and isinstance(parent, dict):
        retrievers: dict[str, type[BaseModel]] = {
            "static": StaticRetriever,
            "memory": MemoryRetriever,
            "bm25": BM25RetrieverSpec,
            "chroma": ChromaRetriever,
            "llamaindex": LlamaIndexRetrieverSpec,
        }
        found = retrievers.get(str(parent.get("type")))
        return list(found.model_fields) if found else ["type"]
    if path[-1] == "selector" and isinstance(parent, dict):
        kinds: dict[str, type[BaseModel]] = {
            "all": AllSelector,
            "length": LengthSelector,
            "ngram": NGramSelector,
            "semantic": SemanticSelector,
            "mmr": MMRSelector,
        }
        model = kinds.get(str(parent.get("type", "all")))
        return list(model.model_fields) if model else ["type"]
    if n >= 2 and path[-2] == "examples" and isinstance(parent, dict):
        return list((ExampleFile if "file" in parent else ExamplePair).model_fields)
    return []


def _get(data: Any, path: PathT) -> Any:
    for part in path:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _real_path(loc: tuple[Any, ...], data: Any) -> PathT:
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
            isinstance(cur, dict)
            and isinstance(part, str)
            and part not in ("[key]",)
            and not (part in ("str", "mapping", "pair", "file") or part in SELECTOR_TYPES)
        ):
            out.append(part)  # a missing or unknown key
            cur = None
    return tuple(out)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def problems_from_validation(
    exc: ValidationError, data: Any, file: str | None, positions: _Positions | None
) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    errors = exc.errors(include_url=False)
    # A typo such as 'promtp' also makes 'prompt' missing: report the typo only.
    typo_fixes: set[PathT] = set()
    for err in errors:
        if err["type"] == "extra_forbidden":
            path = _real_path(tuple(err["loc"]), data)
            for fix in difflib.get_close_matches(
                str(path[-1]), _allowed_keys(path[:-1], data), n=1, cutoff=0.6
            ):
                typo_fixes.add((*path[:-1], fix))
    for err in errors:
        path = _real_path(tuple(err["loc"]), data)
        kind = err["type"]
        if kind == "missing" and path in typo_fixes:
            continue
        value = err.get("input")
        if any(isinstance(part, str) and is_secret_setting(part) for part in path):
            value = "***"  # a key given the wrong type is still a key: never echoed
        at_key = False
        hint: str | None = None
        path_for_pos = path
        if kind == "extra_forbidden":
            key = str(path[-1])
            allowed = _allowed_keys(path[:-1], data)
            hint = did_you_mean(key, allowed)
            valid = ", ".join(allowed)
            message = f"unknown key '{key}'"
            hint = (hint + " " if hint else "") + f"valid keys here: {valid}"
            if set(allowed) == set(ModelMapping.model_fields):
                hint += (
                    "; other settings of the model's class can only be given in an alias in "
                    "your eslabon.toml (a chain file cannot change how eslabon connects)"
                )
            at_key = True
        elif kind == "missing":
            message = f"missing required key '{path[-1]}'"
            where = format_path(path[:-1]) or "the chain"
            hint = f"add '{path[-1]}' to {where}"
            path_for_pos = path[:-1]
        elif (
            kind in ("union_tag_not_found", "union_tag_invalid")
            and path
            and path[-1] == "retriever"
        ):
            # any text type is accepted here (registered retrievers); checks.py reports typos
            message = "a retriever needs a 'type'"
            hint = "valid types: " + ", ".join((*RETRIEVER_TYPES, "python"))
        elif kind == "union_tag_invalid" and "selector" in path:
            bad = err.get("ctx", {}).get("tag", value)
            message = f"unknown selector type '{bad}'"
            suggestion = did_you_mean(str(bad), SELECTOR_TYPES)
            hint = (
                (suggestion + " " if suggestion else "")
                + "valid types: "
                + ", ".join(SELECTOR_TYPES)
            )
            if path and path[-1] != "type":
                path = path_for_pos = (*path, "type")
        elif kind == "string_pattern_mismatch" and (
            "tools" in path or (path and path[-1] == "pydantic")
        ):
            message = f"{_short(value)} is not an import path"
            hint = "write 'package.module:name', e.g. 'eslabon.tools:calculadora'"
        elif kind == "string_pattern_mismatch":
            message = (
                f"{_short(value)} is not a valid name: use letters, digits and '_', "
                "not starting with a digit"
            )
            hint = "names are used as {name} in templates"
            at_key = isinstance(value, str) and bool(path) and path[-1] == value
        elif kind == "literal_error" and path == ("schema_version",):
            message = f"unsupported schema_version {_short(value)}"
            hint = "this version of eslabon reads schema_version: 1"
        elif kind in ("model_ref", "input_ref", "example_ref"):
            message = f"{err['msg']} (got {_short(value)})"
        elif kind == "dict_type" or kind == "model_type" or kind == "model_attributes_type":
            message = f"expected a mapping (got {_short(value)})"
        elif kind == "list_type":
            message = f"expected a list (got {_short(value)})"
            if path and path[-1] == "examples":
                hint = "a list of '- {input: ..., output: ...}' or '- file: path' items"
            elif path and path[-1] == "steps":
                hint = "a list of '- id: ...' items, each with a prompt"
        elif kind == "string_type":
            message = f"expected text (got {_short(value)})"
            hint = "quote the value if YAML reads it as a number, boolean or mapping"
        elif kind == "value_error":  # eslabon's own validators: their words, without pydantic's
            message = f"{str(err['msg']).removeprefix('Value error, ')} (got {_short(value)})"
        else:
            message = f"{err['msg'][0].lower()}{err['msg'][1:]} (got {_short(value)})"
        pos = None
        if positions is not None:
            pos = positions.locate(path_for_pos, at_key)
        dedupe = (format_path(path), message)
        if dedupe in seen:
            continue
        seen.add(dedupe)
        problems.append(
            Problem(
                message,
                path=format_path(path),
                file=file,
                line=pos[0] if pos else None,
                col=pos[1] if pos else None,
                hint=hint,
            )
        )
    return problems


def _validate_data(
    data: Any, file: str, positions: _Positions, base_dir: Path, source: Path | None
) -> Chain:
    if data is None:
        raise ChainConfigError(
            [
                Problem(
                    "the file is empty",
                    file=file,
                    line=1,
                    col=1,
                    hint="start with  schema_version: 1",
                )
            ]
        )
    if not isinstance(data, dict):
        raise ChainConfigError(
            [
                Problem(
                    f"a chain file is a mapping of keys, got {type(data).__name__}",
                    file=file,
                    line=1,
                    col=1,
                    hint="start with  schema_version: 1",
                )
            ]
        )
    problems = [
        Problem(
            f"duplicate key '{path[-1]}'",
            path=format_path(path),
            file=file,
            line=pos[0],
            col=pos[1],
            hint="each key may appear once; remove one of them",
        )
        for path, pos in positions.duplicates
    ]
    spec: Chain | None = None
    try:
        spec = validate_quietly(data)
    except ValidationError as exc:
        problems += problems_from_validation(exc, data, file, positions)
    problems += check_chain_data(data, base_dir, file, positions.locate, schema_ok=spec is not None)
    problems.sort(key=lambda p: (p.line or 0, p.col or 0))
    if any(not p.warning for p in problems):
        raise ChainConfigError(problems)
    assert spec is not None
    spec._warnings = problems
    if spec.name is None and source is not None:
        spec.name = source.stem
    spec._source = source
    spec._file = file
    return spec


@contextmanager
def problems_in(spec: Chain) -> Iterator[None]:
    """Problems raised inside the block without a file (a model's settings checked as it is
    built, ...) name the chain's file, as validate's do: never ``<chain>``."""
    try:
        yield
    except ChainConfigError as exc:
        file = spec._file or (str(spec.source) if spec.source else None)
        if file is None or all(p.file for p in exc.problems):
            raise
        raise ChainConfigError(
            [p if p.file else replace(p, file=file) for p in exc.problems]
        ) from None


def load_spec(path: str | Path) -> Chain:
    """Read and check a chain file. Raises :class:`ChainConfigError` listing every problem."""
    p = Path(path)
    file = str(path)
    try:
        if p.exists() and not p.is_file() and not p.is_dir():
            # a device (/dev/zero) or a pipe would be read without end
            raise ChainConfigError([Problem("not a regular file", file=file)])
        if p.is_file() and p.stat().st_size > MAX_FILE_BYTES:
            raise ChainConfigError(
                [
                    Problem(
                        f"the file is {p.stat().st_size:,} bytes; eslabon reads chain files up "
                        f"to {MAX_FILE_BYTES:,} bytes",
                        file=file,
                        hint="move long texts into example or document files",
                    )
                ]
            )
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ChainConfigError(
            [Problem("file not found", file=file, hint="check the path")]
        ) from None
    except IsADirectoryError:
        raise ChainConfigError([Problem("is a folder, not a chain file", file=file)]) from None
    except UnicodeDecodeError as exc:
        raise ChainConfigError([Problem(f"not UTF-8 text ({exc.reason})", file=file)]) from None
    except OSError as exc:
        raise ChainConfigError([Problem(f"cannot read: {exc.strerror}", file=file)]) from None
    data, positions = _parse_yaml(text, file)
    return _validate_data(data, file, positions, p.resolve().parent, p.resolve())


def load_spec_text(text: str, base_dir: str | Path | None = None, file: str = "<string>") -> Chain:
    """Check chain-file YAML given as text (relative paths resolve against ``base_dir``)."""
    data, positions = _parse_yaml(text, file)
    return _validate_data(data, file, positions, Path(base_dir or Path.cwd()), None)


def validate_file(path: str | Path) -> list[Problem]:
    """Every problem in one chain file, warnings included (empty when all is well). Calls no
    model. Never raises for a file's content, so one bad file cannot stop a folder's check."""
    try:
        return list(load_spec(path).warnings)
    except ChainConfigError as exc:
        return exc.problems
    except Exception as exc:  # a limit the checks above did not foresee: still one problem
        reason = f"{type(exc).__name__}: {exc}"[:200]
        return [Problem(f"cannot check this file ({redact(reason)})", file=str(path))]
