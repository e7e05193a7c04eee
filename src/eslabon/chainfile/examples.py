"""Few-shot examples: reading them from the chain file and from .jsonl / .yaml / .csv files.

Light on purpose (stdlib + yaml): ``eslabon validate`` reads example files to check them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from eslabon.errors import UserError

__all__ = ["ExampleFileError", "load_example_file", "load_examples"]

SUFFIXES = (".jsonl", ".yaml", ".yml", ".csv")
MAX_EXAMPLES_BYTES = 5_000_000  # few-shot examples all go into one prompt; 5 MB is plenty


class ExampleFileError(UserError):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message + (f"\n    fix: {hint}" if hint else ""))
        self.message = message
        self.hint = hint


def _pair(row: Any, where: str) -> dict[str, str]:
    if not isinstance(row, dict):
        raise ExampleFileError(f"{where}: expected a mapping with 'input' and 'output'")
    missing = [k for k in ("input", "output") if k not in row]
    if missing:
        got = ", ".join(map(str, row)) or "nothing"
        raise ExampleFileError(
            f"{where}: missing {' and '.join(repr(m) for m in missing)} (found: {got})",
            "every example needs an 'input' and an 'output'",
        )
    extra = [k for k in row if k not in ("input", "output")]
    if extra:
        raise ExampleFileError(
            f"{where}: unknown key(s) {', '.join(map(repr, extra))}",
            "every example has exactly 'input' and 'output'",
        )
    return {"input": str(row["input"]), "output": str(row["output"])}


def _read(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_EXAMPLES_BYTES:
            raise ExampleFileError(
                f"{path.name} is {size:,} bytes; examples files may be up to "
                f"{MAX_EXAMPLES_BYTES:,} bytes",
                "keep a few good examples; a selector picks among them",
            )
        # utf-8-sig: spreadsheets save CSV with a byte-order mark
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ExampleFileError(
            f"{path.name} is not UTF-8 text (byte {exc.start}: {exc.reason})",
            "save it as UTF-8",
        ) from None
    except OSError as exc:
        raise ExampleFileError(f"cannot read {path.name}: {exc.strerror}") from None


def load_example_file(
    path: Path, problems: list[ExampleFileError] | None = None
) -> list[dict[str, str]]:
    """Read ``{input, output}`` rows from a .jsonl, .yaml/.yml or .csv file.

    A bad row raises; given a ``problems`` list, each bad row's error is added to it instead
    and the good rows are returned (``eslabon validate`` reports every bad row at once)."""

    def each(pairs: Any) -> list[dict[str, str]]:
        rows = []
        for row in pairs:
            try:
                rows.append(row())
            except ExampleFileError as exc:
                if problems is None:
                    raise
                problems.append(exc)
        return rows

    if path.suffix.lower() not in SUFFIXES:
        raise ExampleFileError(
            f"unsupported examples file type '{path.suffix}'", f"use one of {', '.join(SUFFIXES)}"
        )
    if not path.is_file():
        raise ExampleFileError(
            f"examples file not found: {path}", "paths are relative to the chain file"
        )
    rows = _READERS[path.suffix.lower()](path, _read(path))
    try:
        return each(rows)
    except csv.Error as exc:  # raised by the CSV reader as it reaches the bad line
        raise ExampleFileError(f"{path.name}: not valid CSV: {exc}") from None


Rows = Iterator[Callable[[], dict[str, str]]]  # each row read when called (errors per row)


def _jsonl_rows(path: Path, text: str) -> Rows:
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    return (partial(_json_line, line, f"{path.name} line {n}") for n, line in lines)


def _csv_rows(path: Path, text: str) -> Rows:
    reader = csv.DictReader(text.splitlines())
    return (partial(_pair, dict(r), f"{path.name} row {n}") for n, r in enumerate(reader, 2))


def _yaml_rows(path: Path, text: str) -> Rows:
    import yaml

    from eslabon.chainfile.yamlsafe import YamlLimitError, load_bounded

    try:
        data = load_bounded(text, MAX_EXAMPLES_BYTES)
    except YamlLimitError as exc:
        where = f" (line {exc.line})" if exc.line else ""
        raise ExampleFileError(f"{path.name}{where}: {exc.message}", exc.hint) from None
    except yaml.YAMLError as exc:
        raise ExampleFileError(f"{path.name}: invalid YAML: {exc}") from None
    if isinstance(data, dict) and "examples" in data:
        data = data["examples"]
    if not isinstance(data, list):
        raise ExampleFileError(f"{path.name}: expected a list of {{input, output}} mappings")
    return (partial(_pair, r, f"{path.name} item {n}") for n, r in enumerate(data, 1))


_READERS: dict[str, Callable[[Path, str], Rows]] = {
    ".jsonl": _jsonl_rows,
    ".csv": _csv_rows,
    ".yaml": _yaml_rows,
    ".yml": _yaml_rows,
}


def _json_line(line: str, where: str) -> dict[str, str]:
    try:
        return _pair(json.loads(line), where)
    except json.JSONDecodeError as exc:
        raise ExampleFileError(f"{where}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise ExampleFileError(f"{where}: values nest too deeply") from None


def load_examples(refs: list[Any], base_dir: Path) -> list[dict[str, str]]:
    """Expand inline pairs and ``{file: ...}`` references into a flat list of pairs. Files
    must lie in the chain's folder or the project (see :mod:`eslabon.trust.paths`)."""
    from eslabon.trust.paths import confine

    out: list[dict[str, str]] = []
    size = 0
    for ref in refs:
        data = ref.model_dump() if hasattr(ref, "model_dump") else ref
        if "file" in data:
            path = confine(str(data["file"]), base_dir, "examples file")
            rows = load_example_file(path)
        else:
            rows = [{"input": str(data["input"]), "output": str(data["output"])}]
        size += sum(len(r["input"]) + len(r["output"]) for r in rows)
        if size > MAX_EXAMPLES_BYTES:  # one file named 400 times is 400 files' worth
            raise ExampleFileError(
                f"the examples add up to more than {MAX_EXAMPLES_BYTES:,} characters",
                "keep a few good examples; a selector picks among them",
            )
        out.extend(rows)
    return out
