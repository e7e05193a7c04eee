"""The project file ``eslabon.toml``: found from the working directory upwards.

```toml
[models]
rapido = "openai:gpt-4o-mini"
local = "llamacpp:models/mistral-7b.Q4_K_M.gguf"      # relative to this file
propio = {provider = "openai", name = "qwen2.5-7b", base_url = "http://127.0.0.1:8000/v1"}
```

Only the standard library's ``tomllib`` is used, so ``eslabon validate`` stays fast.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eslabon.errors import ChainConfigError, Problem

__all__ = ["PROJECT_FILE", "Project", "find_project", "load_project"]

PROJECT_FILE = "eslabon.toml"
_KNOWN_TABLES = ("models", "allow")


@dataclass(frozen=True)
class Project:
    """What ``eslabon.toml`` says; ``root`` is its folder (the working directory without one)."""

    root: Path
    file: Path | None = None
    models: dict[str, Any] = field(default_factory=dict)
    allow_imports: tuple[str, ...] = ()  # [allow] imports: packages chain files may import


def find_project(start: Path | None = None) -> Path | None:
    """The nearest ``eslabon.toml`` in ``start`` (default: the working directory) or above."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / PROJECT_FILE
        if candidate.is_file():
            return candidate
    return None


_CACHE: dict[tuple[Path, float], Project] = {}


def load_project(start: Path | None = None) -> Project:
    """Read the nearest project file (cached while it is unchanged)."""
    path = find_project(start)
    if path is None:
        return Project(root=(start or Path.cwd()).resolve())
    key = (path, path.stat().st_mtime)
    if key not in _CACHE:
        _CACHE[key] = _parse(path)
    return _CACHE[key]


def _problem(path: Path, message: str, key: str = "", hint: str | None = None) -> ChainConfigError:
    return ChainConfigError([Problem(message, path=key, file=str(path), hint=hint)])


def _parse(path: Path) -> Project:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise _problem(path, f"invalid TOML: {exc}") from None
    for table in data:
        if table not in _KNOWN_TABLES:
            from eslabon.suggest import did_you_mean

            hint = did_you_mean(table, _KNOWN_TABLES)
            raise _problem(
                path,
                f"unknown table [{table}]",
                table,
                (hint + " " if hint else "") + "known tables: " + ", ".join(_KNOWN_TABLES),
            )
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise _problem(path, '[models] must be a table of alias = "provider:model"', "models")
    for alias, target in models.items():
        if not isinstance(target, str | dict):
            raise _problem(
                path,
                f"alias '{alias}' must be a \"provider:model\" string or an inline table",
                f"models.{alias}",
            )
    allow = data.get("allow", {})
    imports = allow.get("imports", []) if isinstance(allow, dict) else None
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise _problem(
            path,
            "[allow] imports must be a list of package names",
            "allow.imports",
            'e.g. imports = ["mypkg"]',
        )
    return Project(root=path.parent, file=path, models=dict(models), allow_imports=tuple(imports))
