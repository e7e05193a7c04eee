"""Which files are chain files: those named, and the ``.yaml``/``.yml`` files found in folders —
except the other YAML files that live beside chains (few-shot example files, files of test
cases). ``eslabon validate``, ``eslabon test`` and the pytest plugin share this rule.

Only PyYAML and the bounded loader import here: this is on ``eslabon validate``'s path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["CHAIN_SUFFIXES", "chain_files", "is_cases_file", "is_examples_file"]

CHAIN_SUFFIXES = (".yaml", ".yml")


def chain_files(paths: list[Path]) -> list[Path]:
    """Files named explicitly, plus the chain files found in folders (few-shot example files
    and files of test cases skipped: their chains read them)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in CHAIN_SUFFIXES)
            files.extend(p for p in found if not is_examples_file(p) and not is_cases_file(p))
        else:
            files.append(path)
    return files


def is_examples_file(path: Path) -> bool:
    """A few-shot examples file: a YAML list, or ``{examples: [...]}`` alone."""
    data = _data(path)
    return isinstance(data, list) or (isinstance(data, dict) and set(data) == {"examples"})


def is_cases_file(path: Path) -> bool:
    """A file of test cases written as ``{tests: [...]}`` beside the chains of a folder."""
    data = _data(path)
    return isinstance(data, dict) and set(data) == {"tests"}


def _data(path: Path) -> Any:
    """The file's YAML, or None when it cannot be read (loading it as a chain then reports
    what is wrong: a device, a pipe, a huge file, bad YAML)."""
    import yaml

    from eslabon.chainfile.yamlsafe import MAX_FILE_BYTES, YamlLimitError, load_bounded

    try:
        if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            return None
        return load_bounded(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, YamlLimitError):
        return None
