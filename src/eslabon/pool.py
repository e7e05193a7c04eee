"""A pool of identical model servers (vLLM, Ollama, llama.cpp) behind one chat model.

``{provider: openai, name: qwen2.5, base_urls: [http://a:8000/v1, http://b:8000/v1],
per_endpoint_concurrency: 8}`` builds one LangChain chat model per server; each call goes to the
least busy server (round-robin among equals) and waits only when every server has
``per_endpoint_concurrency`` calls in flight.

Written by hand: LangChain has fallbacks (one after another) but nothing that spreads calls over
equivalent servers with a cap per server.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr

from eslabon.binding import BindsTools

__all__ = ["EndpointPool"]


class EndpointPool(BindsTools, BaseChatModel):
    """One chat model over several equivalent servers (see the module doc). Tools are bound in
    OpenAI's format, which the OpenAI-compatible and Ollama clients both take."""

    endpoints: list[BaseChatModel]
    per_endpoint_concurrency: int | None = None
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _busy: list[int] = PrivateAttr(default_factory=list)
    _turn: Iterator[int] = PrivateAttr(default_factory=lambda: itertools.count())
    _free: threading.Condition | None = PrivateAttr(default=None)
    _afree: dict[int, asyncio.Condition] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        self._busy = [0] * len(self.endpoints)
        self._free = threading.Condition(self._lock)

    @property
    def _llm_type(self) -> str:
        return "eslabon-pool"

    @property
    def in_flight(self) -> list[int]:
        """Calls in flight on each endpoint right now."""
        return list(self._busy)

    def _pick(self) -> int | None:
        """The least busy endpoint with room (round-robin among equals), or None. Lock held."""
        start = next(self._turn)
        order = sorted(
            range(len(self.endpoints)),
            key=lambda i: (self._busy[i], (i - start) % len(self.endpoints)),
        )
        cap = self.per_endpoint_concurrency
        for i in order:
            if cap is None or self._busy[i] < cap:
                return i
        return None

    @contextmanager
    def _endpoint(self) -> Iterator[BaseChatModel]:
        assert self._free is not None
        with self._free:
            while (i := self._pick()) is None:
                self._free.wait()
            self._busy[i] += 1
        try:
            yield self.endpoints[i]
        finally:
            with self._free:
                self._busy[i] -= 1
                self._free.notify()

    @asynccontextmanager
    async def _aendpoint(self) -> AsyncIterator[BaseChatModel]:
        loop_id = id(asyncio.get_running_loop())
        free = self._afree.setdefault(loop_id, asyncio.Condition())
        async with free:
            while True:
                with self._lock:
                    i = self._pick()
                    if i is not None:
                        self._busy[i] += 1
                        break
                await free.wait()
        try:
            yield self.endpoints[i]
        finally:
            with self._lock:
                self._busy[i] -= 1
            async with free:
                free.notify()

    # -- BaseChatModel --------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with self._endpoint() as model:
            return model._generate(messages, stop, run_manager, **kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        async with self._aendpoint() as model:
            return await model._agenerate(messages, stop, run_manager, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        with self._endpoint() as model:
            yield from model._stream(messages, stop, run_manager, **kwargs)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async with self._aendpoint() as model:
            async for chunk in model._astream(messages, stop, run_manager, **kwargs):
                yield chunk
