"""Importing code named in a chain file: opt-in, and checked against an allowlist.

A chain file never imports code by itself. An import path such as
``factory: mypkg.retrievers:make`` is resolved only when the caller allows its package:
``load_chain(path, allow_imports=["mypkg"])``, ``eslabon run --allow-import mypkg``, or
``[allow] imports = ["mypkg"]`` in the project's ``eslabon.toml``.

The check runs twice: on the module named (before importing anything), and on the module the
object really comes from (``obj.__module__``), so neither a look-alike prefix (``mypkg_evil``)
nor a re-export (``mypkg`` doing ``from os import system``) gets through.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from typing import Any

from eslabon.errors import UserError

__all__ = ["ImportNotAllowedError", "allowed_imports", "is_allowed", "resolve_import"]

_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class ImportNotAllowedError(UserError):
    """A chain file names code its caller did not allow."""


def is_allowed(module: str, allowed: Iterable[str]) -> bool:
    """``module`` is an allowed package or inside one (by whole dotted names only)."""
    return any(module == a or module.startswith(a + ".") for a in allowed if a)


def allowed_imports(explicit: Iterable[str] | None = None) -> list[str]:
    """The caller's allowlist plus the allowances in force (``--allow-import`` through
    :func:`eslabon.allow.allowing`, and ``[allow] imports`` from the project's eslabon.toml)."""
    from eslabon.allow import current_allow

    return [*(explicit or ()), *current_allow().import_names()]


def resolve_import(path: str, allowed: Iterable[str], what: str = "code") -> Any:
    """Import ``module:attribute`` if, and only if, ``allowed`` covers it."""
    allowed = list(allowed)
    if not _PATH.match(path):
        raise UserError(f"{what}: '{path}' is not an import path; write 'package.module:name'")
    module_name, _, attribute = path.partition(":")
    flag = f"--allow-import {module_name.split('.')[0]}"
    if not is_allowed(module_name, allowed):
        raise ImportNotAllowedError(
            f"{what}: the chain file wants to import '{path}', and importing code is off.\n"
            f"    fix: allow it with {flag} (CLI), "
            f"load_chain(..., allow_imports=['{module_name.split('.')[0]}']), "
            "or [allow] imports in eslabon.toml — only for code you trust"
        )
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"{what}: cannot import '{path}': {exc}") from None
    real = getattr(obj, "__module__", None)
    if not isinstance(real, str) or not is_allowed(real, allowed):
        raise ImportNotAllowedError(
            f"{what}: '{path}' really comes from '{real}', which is not allowed.\n"
            f"    fix: allow '{real}' too, if you trust it"
        )
    return obj
