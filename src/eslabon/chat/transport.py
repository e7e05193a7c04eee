"""The HTTP transport eslabon gives the Ollama and Gemini clients: connections that fail fast
and say where they were going.

Neither SDK sets a connect timeout (a server that never answers the connection waits for the
operating system's, minutes), Ollama's streaming path lets ``httpx.ConnectError`` escape as is,
and Gemini's SDK retries a refused connection with backoff for ~35 s. This transport gives a
request with no connect timeout :data:`CONNECT_TIMEOUT` (what the OpenAI and Anthropic SDKs
use), and turns a failed connection into :class:`~eslabon.errors.ProviderConnectionError`
naming the URL — which the SDKs do not retry (the chain's own ``retry:`` still may).
One object serves both the sync and the async client (LangChain passes both the same settings).
"""

from __future__ import annotations

import threading
from typing import Any

import httpx

from eslabon.chat.provider_errors import connect_reason, connection_error, request_url
from eslabon.errors import ProviderConnectionError

__all__ = ["CONNECT_TIMEOUT", "FastFailTransport"]

CONNECT_TIMEOUT = 5.0  # seconds; a request's own connect timeout, when it has one, wins


def _bound(request: httpx.Request) -> float | None:
    """Give ``request`` a connect timeout if it has none; the one it now has."""
    timeout = dict(request.extensions.get("timeout") or {})
    if timeout.get("connect") is None:
        timeout["connect"] = CONNECT_TIMEOUT
        request.extensions["timeout"] = timeout
    connect = timeout.get("connect")
    return float(connect) if isinstance(connect, int | float) else None


class FastFailTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """httpx's own transports, with a connect timeout and a clear connection error."""

    def __init__(self, provider: str, where: str) -> None:
        self.provider = provider
        self.where = where  # provider:model, as errors name it
        self._lock = threading.Lock()
        self._sync: httpx.HTTPTransport | None = None
        self._async: httpx.AsyncHTTPTransport | None = None

    def _failed(
        self, request: httpx.Request, exc: Exception, connect: float | None
    ) -> ProviderConnectionError:
        if isinstance(exc, httpx.ConnectTimeout):
            reason = f"no connection within {connect:g} s" if connect else "connection timed out"
        else:
            reason = connect_reason(exc)
        return connection_error(self.provider, self.where, request_url(request), reason)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        connect = _bound(request)
        with self._lock:  # built at first use: creating SSL contexts takes time
            if self._sync is None:
                self._sync = httpx.HTTPTransport()
            transport = self._sync
        try:
            return transport.handle_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._failed(request, exc, connect) from exc

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        connect = _bound(request)
        with self._lock:
            if self._async is None:
                self._async = httpx.AsyncHTTPTransport()
            transport = self._async
        try:
            return await transport.handle_async_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._failed(request, exc, connect) from exc

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()

    def __repr__(self) -> str:  # shown in a model's settings (render, tracing)
        return f"FastFailTransport({self.where!r})"

    def __deepcopy__(self, memo: dict[int, Any]) -> FastFailTransport:
        return FastFailTransport(self.provider, self.where)
