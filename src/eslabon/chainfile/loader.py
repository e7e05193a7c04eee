"""Loading chain files: safe YAML with positions, schema and semantic checks, clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from eslabon.chainfile import schema_errors
from eslabon.chainfile.checks import check_chain_data
from eslabon.chainfile.schema_errors import PathT, format_path
from eslabon.chainfile.spec import Chain, validate_quietly
from eslabon.chainfile.yamlsafe import MAX_FILE_BYTES, YamlLimitError, compose_bounded, construct
from eslabon.errors import ChainConfigError, Problem
from eslabon.trust.redaction import redact

__all__ = [
    "load_spec",
    "load_spec_text",
    "problems_from_validation",
    "problems_in",
    "spec_from_yaml",
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


def problems_from_validation(
    exc: ValidationError, data: Any, file: str | None, positions: _Positions | None
) -> list[Problem]:
    """The schema check's errors of a chain file (:mod:`eslabon.chainfile.schema_errors`)."""
    locate = positions.locate if positions is not None else None
    return schema_errors.problems_from_validation(exc, data, Chain, file, locate)


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


def spec_from_yaml(source: str | Path) -> Chain:
    """A chain from a file path, or from YAML text (``eslabon.spec_from_yaml``): a
    :class:`~pathlib.Path`, or one line ending in ``.yaml``/``.yml``, is a path."""
    if isinstance(source, Path) or ("\n" not in source and source.endswith((".yaml", ".yml"))):
        return load_spec(source)
    return load_spec_text(source)


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
