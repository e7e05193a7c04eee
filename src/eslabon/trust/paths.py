"""Files a chain file names stay inside its folder or the project (docs/security.md).

A chain file may name example files, GGUF models, embedding models and index folders. Each is
resolved (symlinks included) and must lie inside the chain file's folder, the project root (the
folder of ``eslabon.toml`` or ``.git``), or a folder the user allowed (``--allow-path``,
``ESLABON_ALLOW_PATHS``, ``[allow] paths``). Anything else is refused before it is opened, so a
shared chain file cannot send ``~/.ssh/...`` or ``/etc/...`` to a model.
"""

from __future__ import annotations

import os
from pathlib import Path

from eslabon.errors import UserError

__all__ = ["PathNotAllowedError", "allowed_roots", "confine", "outside_message"]


class PathNotAllowedError(UserError):
    """A chain file names a file outside the folders it may read."""

    def __init__(self, what: str, message: str, hint: str) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{what}: {message}\n    fix: {hint}")


def allowed_roots(base_dir: Path) -> list[Path]:
    """The folders a chain file in ``base_dir`` may read from."""
    from eslabon.trust.allow import current_allow
    from eslabon.trust.project import load_project

    roots = [base_dir.resolve()]
    project = load_project()
    if project.marked:
        roots.append(project.root.resolve())
    roots += current_allow().path_roots()
    return roots


def outside_message(raw: str, resolved: Path, base_dir: Path) -> tuple[str, str]:
    """``(message, hint)`` for a path outside every allowed folder."""
    link = " (through a symbolic link)" if resolved != _lexical(raw, base_dir) else ""
    return (
        f"'{raw}' is outside the chain's folder and the project{link}",
        "a chain file may read files in its own folder or the project root only; to trust "
        "another folder, pass --allow-path DIR or add it to [allow] paths in eslabon.toml",
    )


def _lexical(raw: str, base_dir: Path) -> Path:
    path = Path(os.path.expanduser(raw))
    return Path(os.path.normpath(path if path.is_absolute() else base_dir / path))


def confine(raw: str, base_dir: Path, what: str = "file", relative_to: Path | None = None) -> Path:
    """``raw`` resolved against ``relative_to`` (default: ``base_dir``, the chain's folder);
    raises :class:`PathNotAllowedError` when it lies outside the folders a chain file in
    ``base_dir`` may read."""
    start = (relative_to or base_dir).resolve()
    try:
        resolved = _lexical(raw, start).resolve()
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long, a link loop
        reason = getattr(exc, "strerror", None) or str(exc)
        raise PathNotAllowedError(
            what, f"{raw!r} is not a usable path ({reason})", "give a plain relative path"
        ) from None
    roots = allowed_roots(base_dir)
    if any(resolved == root or resolved.is_relative_to(root) for root in roots):
        return resolved
    raise PathNotAllowedError(what, *outside_message(raw, resolved, start))
