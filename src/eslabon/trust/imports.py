"""Importing code named in a chain file: opt-in, and checked against an allowlist.

A chain file never imports code by itself. An import path such as
``factory: mypkg.retrievers:make`` is resolved only when the caller allows its package:
``load_chain(path, allow_imports=["mypkg"])``, ``eslabon run --allow-import mypkg``, or
``[allow] imports = ["mypkg"]`` in the project's ``eslabon.toml``.

The check runs twice: on the module named (before importing anything), and on the module the
object really comes from (``obj.__module__``), so neither a look-alike prefix (``mypkg_evil``)
nor a re-export (``mypkg`` doing ``from os import system``) gets through.

Where an allowed package is found: where Python finds installed packages first (an allowed
``requests`` is always the installed one: a folder beside a chain file never shadows it); only
when it is not installed, in the chain file's folder, then in the project root (the folder of
``eslabon.toml`` or ``.git``) — ``mipaquete/`` or ``mipaquete.py`` beside the chain. That
package alone is loaded from there: no folder is added to ``sys.path``, so nothing else in it
(a ``json.py``, another package) can be imported through it, and a package that is not allowed
is never looked for.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from eslabon.errors import UserError

__all__ = [
    "ImportNotAllowedError",
    "allowed_imports",
    "chain_folder",
    "is_allowed",
    "resolve_import",
]

_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class ImportNotAllowedError(UserError):
    """A chain file names code its caller did not allow."""


def is_allowed(module: str, allowed: Iterable[str]) -> bool:
    """``module`` is an allowed package or inside one (by whole dotted names only)."""
    return any(module == a or module.startswith(a + ".") for a in allowed if a)


def allowed_imports(explicit: Iterable[str] | None = None) -> list[str]:
    """The caller's allowlist plus the allowances in force (``--allow-import`` through
    :func:`eslabon.trust.allow.allowing`, and ``[allow] imports`` from the project's
    eslabon.toml)."""
    from eslabon.trust.allow import current_allow

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
        _load_beside_chain(module_name.split(".")[0])
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        top = module_name.split(".")[0]
        fix = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name == top:
            where = ", ".join(str(f) for f in _folders()) or "no chain folder, no project root"
            fix = (
                f"\n    fix: install it, or put '{top}' (a folder or {top}.py) beside the chain "
                f"file or in the project root (looked in: installed packages, {where})"
            )
        raise UserError(f"{what}: cannot import '{path}': {exc}{fix}") from None
    real = getattr(obj, "__module__", None)
    if not isinstance(real, str) or not is_allowed(real, allowed):
        raise ImportNotAllowedError(
            f"{what}: '{path}' really comes from '{real}', which is not allowed.\n"
            f"    fix: allow '{real}' too, if you trust it"
        )
    return obj


_CHAIN_FOLDER: ContextVar[Path | None] = ContextVar("eslabon_chain_folder", default=None)
_LOADING = threading.RLock()  # a package loaded from a folder may import another


@contextmanager
def chain_folder(folder: Path | None) -> Iterator[None]:
    """Inside the block, allowed packages that are not installed are looked for in ``folder``
    (the chain file's) and then in the project root."""
    token = _CHAIN_FOLDER.set(folder.resolve() if folder is not None else None)
    try:
        yield
    finally:
        _CHAIN_FOLDER.reset(token)


def _folders() -> list[Path]:
    from eslabon.trust.project import load_project

    folders = [f for f in (_CHAIN_FOLDER.get(),) if f is not None]
    project = load_project()
    if project.marked and project.root.resolve() not in folders:
        folders.append(project.root.resolve())
    return folders


def _load_beside_chain(top: str) -> None:
    """Load the allowed top-level package ``top`` from the chain's folder or the project root
    when Python cannot find it installed; its submodules then import through its own
    ``__path__``. Called only after the allowlist check."""
    with _LOADING:
        if top in sys.modules or importlib.util.find_spec(top) is not None:
            return  # already loaded, or installed: the installed one wins
        for folder in _folders():
            spec = importlib.machinery.PathFinder.find_spec(top, [str(folder)])
            if spec is None or spec.loader is None:
                continue
            origin = Path(spec.origin or next(iter(spec.submodule_search_locations or ()), ""))
            if not origin.resolve().is_relative_to(folder):  # a link out of the folder
                continue
            module = importlib.util.module_from_spec(spec)
            sys.modules[top] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(top, None)
                raise
            return
