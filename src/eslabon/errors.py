"""One exception hierarchy.

``EslabonError`` is the root. Under it, two branches:

* ``UserError`` — the user can fix it (a chain file, a missing input, a missing extra or key).
  The CLI prints it without a traceback and exits with code 2.
* ``EslabonRuntimeError`` — something failed while running (a provider call, the local model).
  The CLI prints it and exits with code 1.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import suppress
from dataclasses import dataclass

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
    "add_secret",
    "connection_error",
    "hide_secrets",
    "redact",
    "request_url",
    "translate_model_error",
]

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL)", re.IGNORECASE)
_SECRETS: set[str] = set()


def add_secret(value: str) -> None:
    """Remember a key eslabon handed to a client (from the environment, a mapping, an alias)
    for :func:`redact`, whatever its length."""
    if value and value.strip():
        _SECRETS.add(value)


_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")  # user:password@ in a URL
_SHORT = 8  # below this, a key is replaced only where it stands alone, not inside other words


def redact(text: str) -> str:
    """Replace known keys and the values of secret-looking environment variables with ***."""
    # secret-looking variables eslabon never used: only long values (a short one such as
    # PASSWORD_MIN_LENGTH=8 would blank every "8"); keys eslabon used are in _SECRETS
    values = {v for k, v in os.environ.items() if len(v) >= _SHORT and _SECRET_NAME.search(k)}
    for value in sorted(values | _SECRETS, key=len, reverse=True):
        if value not in text:
            continue
        if len(value) >= _SHORT:
            text = text.replace(value, "***")
        else:
            text = re.sub(rf"(?<![\w-]){re.escape(value)}(?![\w-])", "***", text)
    return _USERINFO.sub("***@", text) if "@" in text else text


def is_secret_setting(name: str) -> bool:
    """Whether a setting's name says it holds a secret (``api_key``, ``token``, headers...)."""
    return bool(_SECRET_NAME.search(name)) or name.lower() in (
        "headers",
        "default_headers",
        "authorization",
        "auth",
    )


def hide_secrets(settings: dict[str, object]) -> dict[str, object]:
    """``settings`` as they may be shown: secret-looking settings (at any depth: headers,
    ``extra_body.token``) as ***, and ``user:password@`` in URLs as ***@."""

    def shown(key: str, value: object) -> object:
        if is_secret_setting(key) and value:
            return "***"
        if isinstance(value, dict):
            return {str(k): shown(str(k), v) for k, v in value.items()}
        if isinstance(value, list):
            return [shown(key, v) for v in value]
        if isinstance(value, str):
            return _USERINFO.sub("***@", value)
        return value

    return {k: shown(k, v) for k, v in settings.items()}


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


_CONNECT_FIX = {
    "ollama": "is Ollama running? start it with `ollama serve` (or check base_url / OLLAMA_HOST)",
}


def connection_error(
    provider: str, where: str, url: str | None, reason: str
) -> ProviderConnectionError:
    """The error for a request to ``url`` that could not connect (``where``: provider:model)."""
    at = f" at {url}" if url else ""
    fix = _CONNECT_FIX.get(provider, "check the network connection and the model's base_url")
    return ProviderConnectionError(
        redact(f"could not connect to {where}{at}: {reason}\n    fix: {fix}"), provider, url
    )


def request_url(request: object) -> str | None:
    """An httpx request's URL as errors show it: scheme, host, port and path, no query."""
    url = getattr(request, "url", None)
    scheme, host = getattr(url, "scheme", None), getattr(url, "host", None)
    if not scheme or not host:
        return None
    port = getattr(url, "port", None)
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}{f':{port}' if port else ''}{getattr(url, 'path', '')}"


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from, outermost first (a few levels)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 8 and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def connect_reason(exc: BaseException) -> str:
    """Why a connection failed, in the operating system's words (``[Errno 111] Connection
    refused``) when an ``OSError`` with an errno lies under ``exc``; else ``exc``'s own."""
    for cause in reversed(_causes(exc)):
        if isinstance(cause, OSError) and isinstance(cause.errno, int):
            return f"[Errno {cause.errno}] {os.strerror(cause.errno)}"
    return str(exc).strip() or type(exc).__name__


_BARE_CONNECTION_ERRORS = (ConnectionError, ConnectionRefusedError)


def _failed_connection(exc: BaseException) -> tuple[str | None, str] | None:
    """``(url, reason)`` when ``exc`` is a request that could not connect; else None.

    httpx's (and httpx2's) ConnectError/ConnectTimeout, the OpenAI and Anthropic SDKs'
    APIConnectionError (not their APITimeoutError: a slow answer is not a failed connection),
    and the ``ConnectionError`` the Ollama client raises in its place."""
    causes = _causes(exc)
    found = False
    url: str | None = None
    reason = ""
    for cause in causes:
        name, module = type(cause).__name__, type(cause).__module__.split(".")[0]
        if name in ("ConnectError", "ConnectTimeout") and module.startswith("httpx"):
            found = True
            reason = "connection timed out" if "Timeout" in name else connect_reason(cause)
        elif name == "APIConnectionError" or type(cause) in _BARE_CONNECTION_ERRORS:
            found = True
            reason = reason or connect_reason(cause)
        if url is None:
            with suppress(RuntimeError):  # httpx: an exception with no request attached
                url = request_url(getattr(cause, "request", None))
    return (url, reason.strip() or "connection failed") if found else None


_CONTEXT = re.compile(
    r"context (length|window)|maximum context|too long|exceeds the (maximum|context)|"
    r"context_length_exceeded|token count .* exceeds",
    re.IGNORECASE,
)


def translate_model_error(
    exc: BaseException,
    provider: str,
    model: str,
    env_var: str | None = None,
    key_hint: str | None = None,
) -> EslabonError | None:
    """Map a provider failure to eslabon's hierarchy; None when it is not one we recognize.

    LangChain's integrations raise ``langchain_core.exceptions`` subclasses (auth, not found,
    context overflow, ...); Ollama and OpenAI-compatible servers may raise plain SDK errors, so
    the HTTP status is the fallback. Messages are scrubbed of secrets.
    """
    if isinstance(exc, EslabonError):
        return None
    cause = exc.__cause__
    for _ in range(8):  # ours, raised from within an integration that wrapped it in its own
        if cause is None or isinstance(cause, EslabonError):
            break
        cause = cause.__cause__
    if isinstance(cause, EslabonError):
        return cause
    from langchain_core import exceptions as lc

    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        status = getattr(exc, "code", None) if isinstance(getattr(exc, "code", None), int) else None
    detail = redact(str(exc)).strip().splitlines()[0][:300] if str(exc).strip() else ""
    where = f"{provider}:{model}" if model else provider
    key_hint = key_hint or (f"check {env_var}" if env_var else "check the key")
    if (
        isinstance(exc, lc.ModelAuthenticationError | lc.ModelPermissionDeniedError)
        or status in (401, 403)
        or "API key not valid" in detail
        or "API_KEY_INVALID" in detail
    ):
        shown = f"HTTP {status}" if status else "invalid key"
        return KeyRejectedError(
            f"{provider} refused the API key ({shown}).\n    fix: {key_hint}; "
            "the key is not shown here",
            provider,
            status,
        )
    if isinstance(exc, lc.ModelNotFoundError) or status == 404:
        return ModelNotFoundError(
            f"{provider} does not know the model '{model}' (HTTP 404).\n"
            "    fix: check the model name (for Ollama: ollama pull MODEL)",
            provider,
            status,
        )
    if isinstance(exc, lc.ContextOverflowError) or (
        status in (400, 413, None) and _CONTEXT.search(detail)
    ):
        return ContextLengthError(
            f"the prompt does not fit the context window of {where}: {detail}\n"
            "    fix: shorten the inputs, lower max_tokens, or use a model with a longer context",
            provider,
            status,
        )
    if isinstance(exc, lc.ModelRateLimitError) or status == 429:
        return RateLimitedError(f"{where} is rate limiting (HTTP 429): {detail}", provider, 429)
    if (failed := _failed_connection(exc)) is not None:
        return connection_error(provider, where, *failed)
    if isinstance(exc, json.JSONDecodeError):
        return ProviderUnavailableError(
            f"{where} sent a response that is not valid JSON: {detail}", provider, status
        )
    if isinstance(exc, lc.ModelAPIError | lc.ModelConnectionError | lc.ModelTimeoutError) or (
        status is not None and status >= 500
    ):
        return ProviderUnavailableError(f"{where} failed: {detail}", provider, status)
    return None
