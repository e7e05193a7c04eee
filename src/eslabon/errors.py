"""One exception hierarchy.

``EslabonError`` is the root. Under it, two branches:

* ``UserError`` — the user can fix it (a chain file, a missing input, a missing extra or key).
  The CLI prints it without a traceback and exits with code 2.
* ``EslabonRuntimeError`` — something failed while running (a provider call, the local model).
  The CLI prints it and exits with code 1.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

__all__ = [
    "ChainConfigError",
    "EslabonError",
    "EslabonRuntimeError",
    "InputError",
    "MissingCredentialsError",
    "MissingDependencyError",
    "ModelError",
    "Problem",
    "UserError",
    "redact",
]

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)


def redact(text: str) -> str:
    """Replace the value of every secret-looking environment variable in ``text`` with ***."""
    for name, value in os.environ.items():
        if len(value) >= 8 and _SECRET_NAME.search(name) and value in text:
            text = text.replace(value, "***")
    return text


class EslabonError(Exception):
    """Root of every error eslabon raises on purpose."""


class UserError(EslabonError):
    """A mistake the user can fix; the message says how."""


class EslabonRuntimeError(EslabonError):
    """A failure while running a chain (provider, network, local model)."""


@dataclass(frozen=True)
class Problem:
    """One problem found in a chain file, with where it is and how to fix it."""

    message: str
    path: str = ""  # key path such as ``steps[1].prompt``
    file: str | None = None
    line: int | None = None  # 1-based
    col: int | None = None  # 1-based
    hint: str | None = None

    def location(self) -> str:
        where = self.file or "<chain>"
        if self.line is not None:
            where += f":{self.line}:{self.col or 1}"
        return where

    def format(self) -> str:
        head = f"{self.location()}: "
        if self.path:
            head += f"{self.path}: "
        text = head + self.message
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class ChainConfigError(UserError):
    """A chain file (or a chain built in code) is invalid. Carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        n = len(self.problems)
        lines = [p.format() for p in self.problems]
        if n > 1:
            lines.append(f"{n} problems found.")
        return "\n".join(lines)


class InputError(UserError):
    """The inputs given to a chain do not match what it declares."""


class MissingDependencyError(UserError):
    """An optional package is not installed; the message names the extra (or package) to install."""

    def __init__(self, what: str, extra: str | None, package: str | None = None) -> None:
        self.extra = extra
        self.package = package
        pkg = f" (package '{package}')" if package else ""
        fix = f"pip install 'eslabon[{extra}]'" if extra else f"pip install {package}"
        super().__init__(
            f"{what} needs an optional dependency that is not installed{pkg}.\n    fix: {fix}"
        )


class MissingCredentialsError(UserError):
    """An API key is missing; the message names the environment variable, never a value."""

    def __init__(self, provider: str, env_var: str) -> None:
        self.provider = provider
        self.env_var = env_var
        super().__init__(
            f"No API key for provider '{provider}'.\n"
            f"    fix: set the {env_var} environment variable "
            f"(or add {env_var}=... to a .env file in the working directory; "
            f"see .env.example)"
        )


class ModelError(EslabonRuntimeError):
    """A chat model failed while answering."""
