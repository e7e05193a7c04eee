"""Provider failures in eslabon's terms.

LangChain's integrations, the provider SDKs and httpx each raise their own exceptions;
:func:`translate_model_error` maps them to :mod:`eslabon.errors` (a rejected key, an unknown
model, a prompt too long, rate limiting, a server that is down or cannot be reached), with
secrets scrubbed from the message. :func:`connection_error` is the error for a request that
could not connect, naming where it was going.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import suppress
from dataclasses import dataclass

from eslabon.errors import (
    ContextLengthError,
    EslabonError,
    KeyRejectedError,
    ModelNotFoundError,
    ProviderConnectionError,
    ProviderUnavailableError,
    RateLimitedError,
)
from eslabon.trust.redaction import redact

__all__ = [
    "connect_reason",
    "connection_error",
    "request_url",
    "translate_model_error",
]

_CONNECT_FIX = {
    "ollama": "is Ollama running? start it with `ollama serve` (or check base_url / OLLAMA_HOST)",
}


def connection_error(
    provider: str, where: str, url: str | None, reason: str
) -> ProviderConnectionError:
    """The error for a request to ``url`` that could not connect (``where``: provider:model)."""
    at = f" at {url}" if url else ""
    fix = _CONNECT_FIX.get(provider, "check the network connection and the model's base_url")
    from eslabon.chat.modelspec import PRESETS

    if (preset := PRESETS.get(provider)) is not None and preset.serve:  # vllm:, lmstudio:, ...
        fix = f"is {preset.what} running? start it with `{preset.serve}` (or check base_url)"
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
    r"context_length_exceeded|token count .* exceeds|too many tokens",
    re.IGNORECASE,
)
# Mistral answers an unknown model with HTTP 400, {"type": "invalid_model", ...}
_UNKNOWN_MODEL = re.compile(r"\binvalid_model\b|Invalid model:", re.IGNORECASE)


@dataclass(frozen=True)
class _Failure:
    """A provider's exception, with what the translation reads from it."""

    exc: BaseException
    provider: str
    model: str
    status: int | None  # the HTTP status, when the exception carries one
    detail: str  # its message's first line, scrubbed of secrets

    @property
    def where(self) -> str:
        return f"{self.provider}:{self.model}" if self.model else self.provider


def _own_cause(exc: BaseException) -> EslabonError | None:
    """Ours, raised from within an integration that wrapped it in its own exception."""
    cause = exc.__cause__
    for _ in range(8):
        if cause is None or isinstance(cause, EslabonError):
            break
        cause = cause.__cause__
    return cause if isinstance(cause, EslabonError) else None


def _http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    # httpx's HTTPStatusError (langchain-mistralai raises it as is) carries the response
    with suppress(RuntimeError):  # httpx: an exception with no response attached
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _body_message(exc: BaseException) -> str | None:
    """The message in an API's error body, where the exception's own text buries it: Cohere's
    SDK shows the response headers first, httpx's HTTPStatusError the whole URL and body."""
    body: object = None
    kind, module = type(exc).__name__, type(exc).__module__
    if module.split(".")[0] == "cohere":
        body = getattr(exc, "body", None)  # its ApiError keeps the parsed JSON body
    elif kind == "HTTPStatusError" and module.startswith("httpx"):
        with suppress(RuntimeError, ValueError, AttributeError):
            body = exc.response.json()  # type: ignore[attr-defined]
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            text = body.get(key)
            if isinstance(text, str) and text.strip():
                etype = body.get("type")
                return f"{text} ({etype})" if isinstance(etype, str) and etype else text
    return None


def _key_rejected(failure: _Failure) -> bool:
    from langchain_core import exceptions as lc

    return (
        isinstance(failure.exc, lc.ModelAuthenticationError | lc.ModelPermissionDeniedError)
        or failure.status in (401, 403)
        or "API key not valid" in failure.detail
        or "API_KEY_INVALID" in failure.detail
    )


def _refused(failure: _Failure, key_hint: str) -> EslabonError | None:
    """The provider turned the request down: the key, the model's name, the prompt's length,
    or the rate of requests."""
    from langchain_core import exceptions as lc

    exc, provider, status = failure.exc, failure.provider, failure.status
    if _key_rejected(failure):
        shown = f"HTTP {status}" if status else "invalid key"
        return KeyRejectedError(
            f"{provider} refused the API key ({shown}).\n    fix: {key_hint}; "
            "the key is not shown here",
            provider,
            status,
        )
    if (
        isinstance(exc, lc.ModelNotFoundError)
        or status == 404
        or (status == 400 and _UNKNOWN_MODEL.search(failure.detail))
    ):
        return ModelNotFoundError(
            f"{provider} does not know the model '{failure.model}' (HTTP {status or 404}).\n"
            "    fix: check the model name (for Ollama: ollama pull MODEL)",
            provider,
            status,
        )
    if isinstance(exc, lc.ContextOverflowError) or (
        status in (400, 413, None) and _CONTEXT.search(failure.detail)
    ):
        return ContextLengthError(
            f"the prompt does not fit the context window of {failure.where}: {failure.detail}\n"
            "    fix: shorten the inputs, lower max_tokens, or use a model with a longer context",
            provider,
            status,
        )
    if isinstance(exc, lc.ModelRateLimitError) or status == 429:
        from eslabon.chat.resilience import retry_after_seconds

        after = retry_after_seconds(exc)
        wait = f"; it asks to wait {after:g} s" if after is not None else ""
        return RateLimitedError(
            f"{failure.where} is rate limiting (HTTP 429{wait}): {failure.detail}", provider, 429
        )
    return None


def _unavailable(failure: _Failure) -> EslabonError | None:
    """The provider could not answer: unreachable, a broken response, a server error."""
    from langchain_core import exceptions as lc

    exc, provider, status, where = failure.exc, failure.provider, failure.status, failure.where
    if (failed := _failed_connection(exc)) is not None:
        return connection_error(provider, where, *failed)
    if isinstance(exc, json.JSONDecodeError):
        return ProviderUnavailableError(
            f"{where} sent a response that is not valid JSON: {failure.detail}", provider, status
        )
    if isinstance(exc, lc.ModelAPIError | lc.ModelConnectionError | lc.ModelTimeoutError) or (
        status is not None and status >= 500
    ):
        return ProviderUnavailableError(f"{where} failed: {failure.detail}", provider, status)
    return None


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
    if (ours := _own_cause(exc)) is not None:
        return ours
    text = _body_message(exc) or str(exc)
    detail = redact(text).strip().splitlines()[0][:300] if text.strip() else ""
    failure = _Failure(exc, provider, model, _http_status(exc), detail)
    key_hint = key_hint or (f"check {env_var}" if env_var else "check the key")
    refused = _refused(failure, key_hint)
    return refused if refused is not None else _unavailable(failure)
