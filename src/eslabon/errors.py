"""One exception hierarchy.

``EslabonError`` is the root. Under it, two branches:

* ``UserError`` — the user can fix it (a chain file, a missing input, a missing extra or key).
  The CLI prints it without a traceback and exits with code 2.
* ``EslabonRuntimeError`` — something failed while running (a provider call, the local model).
  The CLI prints it and exits with code 1.

Each class says its exit code (``exit_code``), and every error pickles (to another process and
back) with its type, message and attributes. Keeping secrets out of messages is
:mod:`eslabon.trust.redaction`; turning a provider's exceptions into these,
:mod:`eslabon.chat.provider_errors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

__all__ = [
    "ChainConfigError",
    "ContextLengthError",
    "EslabonError",
    "EslabonRuntimeError",
    "InputError",
    "KeyRejectedError",
    "MissingCredentialsError",
    "MissingDependencyError",
    "ModelError",
    "ModelNotFoundError",
    "OutputValidationError",
    "Problem",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderUnavailableError",
    "RateLimitedError",
    "UserError",
]

_E = TypeVar("_E", bound="EslabonError")


def _unpickle(cls: type[_E], args: tuple[Any, ...]) -> _E:
    """An error rebuilt by pickle without calling its ``__init__`` (which may take other
    arguments than the message it passed on); pickle then restores its attributes."""
    error = cls.__new__(cls, *args)
    error.args = args
    return error


class EslabonError(Exception):
    """Root of every error eslabon raises on purpose."""

    exit_code: ClassVar[int] = 1  # the ``eslabon`` command's exit code when this error stops it

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle's default calls ``type(self)(*self.args)``: wrong for a subclass whose
        # __init__ takes other arguments (a provider, a status...); ``self.__dict__`` holds them
        return (_unpickle, (type(self), self.args), self.__dict__ or None)


class UserError(EslabonError):
    """A mistake the user can fix; the message says how."""

    exit_code = 2


class EslabonRuntimeError(EslabonError):
    """A failure while running a chain (provider, network, local model). Its exit code is
    the base's 1; a class that is also a ``UserError`` gets 2 from it (the MRO finds it first)."""


@dataclass(frozen=True)
class Problem:
    """One problem found in a chain file, with where it is and how to fix it."""

    message: str
    path: str = ""  # key path such as ``steps[1].prompt``
    file: str | None = None
    line: int | None = None  # 1-based
    col: int | None = None  # 1-based
    hint: str | None = None
    warning: bool = False  # worth saying, but the chain still runs

    def location(self) -> str:
        where = self.file or "<chain>"
        if self.line is not None:
            where += f":{self.line}:{self.col or 1}"
        return where

    def format(self) -> str:
        head = f"{self.location()}: " + ("warning: " if self.warning else "")
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


class OutputValidationError(ModelError):
    """A step's output did not match its ``output_schema``, even after the retries.

    ``raw`` is the model's last text, ``errors`` what the validation said about it.
    """

    def __init__(
        self, step: str, raw: str, errors: str, attempts: int, fix: str | None = None
    ) -> None:
        self.step = step
        self.raw = raw
        self.errors = errors
        self.attempts = attempts
        shown = raw if len(raw) <= 500 else raw[:500] + "…"
        fix = fix or "raise retry.attempts, simplify the schema, or use a stronger model"
        super().__init__(
            f"step '{step}': the model's output does not match output_schema "
            f"after {attempts} attempt(s): {errors}\n    output was: {shown}\n    fix: {fix}"
        )


class ProviderError(ModelError):
    """The provider answered with an error (or could not be reached)."""

    def __init__(self, message: str, provider: str, status: int | None = None) -> None:
        self.provider = provider
        self.status = status
        super().__init__(message)


class KeyRejectedError(ProviderError, UserError):
    """The provider refused the API key (HTTP 401/403). The key is never shown."""


class ModelNotFoundError(ProviderError, UserError):
    """The provider does not know the model (HTTP 404)."""


class ContextLengthError(ProviderError, UserError):
    """The prompt does not fit the model's context window."""


class RateLimitedError(ProviderError):
    """The provider is rate limiting (HTTP 429)."""


class ProviderUnavailableError(ProviderError):
    """Server error (5xx), timeout or connection failure."""


class ProviderConnectionError(ProviderUnavailableError):
    """The provider's server could not be reached (refused, unreachable, no answer to the
    connection). ``url`` is where the request was going, when known. A chain's ``retry:``
    retries it (its name says it is a connection error); the SDKs do not."""

    def __init__(self, message: str, provider: str, url: str | None = None) -> None:
        self.url = url
        super().__init__(message, provider)
