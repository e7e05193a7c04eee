"""Retries and fallbacks for a step's model, on LangChain's ``with_retry`` / ``with_fallbacks``.

* Which failures are retried: rate limits (429), server errors (5xx), timeouts, connection
  failures and malformed (non-JSON) response bodies — what ``langchain_core.exceptions`` marks
  ``is_retryable``, plus SDK errors carrying
  such an HTTP status (Ollama and OpenAI-compatible servers). Never a refused key, an unknown
  model, a too-long prompt or a bad request: retrying those cannot help.
* How long to wait: the server's ``Retry-After`` when it sends one (seconds or an HTTP date),
  else exponential backoff with jitter from ``backoff`` seconds.
* Streaming: a failure before the first token is retried (and falls back); after tokens have
  been shown it is raised, since repeating would duplicate them.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.runnables import Runnable
from langchain_core.runnables.retry import RunnableRetry
from tenacity import RetryCallState, wait_exponential_jitter

__all__ = ["RETRY_AFTER_MAX", "RetryAfterRetry", "is_retryable", "retry_after_seconds", "wrap"]

RETRY_AFTER_MAX = 120.0  # never sleep longer than this on a server's word


def _status(exc: BaseException) -> int | None:
    for value in (getattr(exc, "status_code", None), getattr(exc, "code", None)):
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def is_retryable(exc: BaseException) -> bool:
    """Whether a failure is transient: 408/409/429, 5xx, timeouts, connection errors, and a
    response body that is not JSON (cut short by a proxy or a dropped connection)."""
    from json import JSONDecodeError

    from langchain_core.exceptions import ModelError

    if isinstance(exc, JSONDecodeError):
        return True
    if isinstance(exc, ModelError):
        return exc.is_retryable
    status = _status(exc)
    if status is not None:
        return status in (408, 409, 429) or status >= 500
    name = type(exc).__name__
    return any(word in name for word in ("Timeout", "ConnectError", "ConnectionError"))


def retry_after_seconds(exc: BaseException) -> float | None:
    """The server's ``Retry-After`` (or ``retry-after-ms``) as seconds, if it sent one."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        headers = getattr(exc, "headers", None)  # Cohere's SDK keeps them on the exception
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return min(float(ms) / 1000, RETRY_AFTER_MAX)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            seconds = when.timestamp() - time.time()
    except (TypeError, ValueError, AttributeError):
        return None
    return max(0.0, min(seconds, RETRY_AFTER_MAX))


class _RetryAfterWait:
    """tenacity wait: the server's Retry-After if given, else exponential backoff with jitter."""

    def __init__(self, fallback: Callable[[RetryCallState], float]) -> None:
        self.fallback = fallback

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        after = retry_after_seconds(exc) if exc is not None else None
        return after if after is not None else self.fallback(state)


class RetryAfterRetry(RunnableRetry):  # type: ignore[type-arg,no-redef]
    """LangChain's RunnableRetry, waiting as long as the server asks (Retry-After)."""

    @property
    def _kwargs_retrying(self) -> dict[str, Any]:
        settings: dict[str, Any] = dict(super()._kwargs_retrying)
        settings["wait"] = _RetryAfterWait(settings.get("wait") or wait_exponential_jitter())
        return settings

    def stream(self, input: Any, config: Any = None, **kwargs: Any) -> Iterator[Any]:
        # Retry only until the first chunk: after that, a retry would repeat shown tokens.
        for attempt in self._sync_retrying(reraise=True):
            with attempt:
                chunks = iter(self.bound.stream(input, config, **kwargs))
                first = next(chunks, _END)
        if first is _END:
            return
        yield first
        yield from chunks

    async def astream(self, input: Any, config: Any = None, **kwargs: Any) -> AsyncIterator[Any]:
        async for attempt in self._async_retrying(reraise=True):
            with attempt:
                chunks = aiter(self.bound.astream(input, config, **kwargs))
                first = await anext(chunks, _END)
        if first is _END:
            return
        yield first
        async for chunk in chunks:
            yield chunk


_END = object()


def wrap(
    model: Runnable[Any, Any],
    retry: dict[str, Any] | None,
    fallbacks: Sequence[Runnable[Any, Any]],
) -> Runnable[Any, Any]:
    """``model`` with retries (if configured), then the fallback models in order."""

    def retried(runnable: Runnable[Any, Any]) -> Runnable[Any, Any]:
        if not retry:
            return runnable
        backoff = float(retry.get("backoff", 1.0))
        return RetryAfterRetry(
            bound=runnable,
            retry_exception_types=is_retryable,
            max_attempt_number=int(retry.get("attempts", 3)),
            wait_exponential_jitter=True,
            exponential_jitter_params={"initial": backoff, "max": 60.0, "jitter": backoff},
            kwargs={},
            config={},
        )

    primary = retried(model)
    if not fallbacks:
        return primary
    return primary.with_fallbacks([retried(f) for f in fallbacks])
