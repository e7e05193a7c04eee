"""Few-shot examples: reading them from the chain file and from .jsonl / .yaml / .csv files.

Light on purpose (stdlib + yaml): ``eslabon validate`` reads example files to check them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

__all__ = ["ExampleFileError", "load_example_file", "load_examples"]

SUFFIXES = (".jsonl", ".yaml", ".yml", ".csv")


class ExampleFileError(ValueError):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
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


def load_example_file(path: Path) -> list[dict[str, str]]:
    """Read ``{input, output}`` rows from a .jsonl, .yaml/.yml or .csv file."""
    if path.suffix.lower() not in SUFFIXES:
        raise ExampleFileError(
            f"unsupported examples file type '{path.suffix}'", f"use one of {', '.join(SUFFIXES)}"
        )
    if not path.is_file():
        raise ExampleFileError(
            f"examples file not found: {path}", "paths are relative to the chain file"
        )
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(_pair(json.loads(line), f"{path.name} line {n}"))
            except json.JSONDecodeError as exc:
                raise ExampleFileError(f"{path.name} line {n}: invalid JSON: {exc.msg}") from None
        return rows
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        return [_pair(dict(r), f"{path.name} row {n}") for n, r in enumerate(reader, 2)]
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ExampleFileError(f"{path.name}: invalid YAML: {exc}") from None
    if isinstance(data, dict) and "examples" in data:
        data = data["examples"]
    if not isinstance(data, list):
        raise ExampleFileError(f"{path.name}: expected a list of {{input, output}} mappings")
    return [_pair(r, f"{path.name} item {n}") for n, r in enumerate(data, 1)]


def load_examples(refs: list[Any], base_dir: Path) -> list[dict[str, str]]:
    """Expand inline pairs and ``{file: ...}`` references into a flat list of pairs."""
    out: list[dict[str, str]] = []
    for ref in refs:
        data = ref.model_dump() if hasattr(ref, "model_dump") else ref
        if "file" in data:
            out.extend(load_example_file(base_dir / str(data["file"])))
        else:
            out.append({"input": str(data["input"]), "output": str(data["output"])})
    return out
