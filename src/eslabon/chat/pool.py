"""A pool of identical model servers (vLLM, Ollama, llama.cpp) behind one chat model.

``{provider: openai, name: qwen2.5, base_urls: [http://a:8000/v1, http://b:8000/v1],
per_endpoint_concurrency: 8}`` builds one LangChain chat model per server; each call goes to the
least busy server (round-robin among equals) and waits only when every server has
``per_endpoint_concurrency`` calls in flight.

Written by hand: LangChain has fallbacks (one after another) but nothing that spreads calls over
equivalent servers with a cap per server.

Tools, structured output and tracing metadata are the endpoints' own: ``bind_tools`` and
``with_structured_output`` are built by the first endpoint's integration (so an OpenAI server
gets ``tool_choice: "required"`` and ``response_format: json_schema`` exactly as a single
``ChatOpenAI`` would send them) and then routed through the pool.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from pydantic import BaseModel, PrivateAttr

from eslabon.running.binding import BindsTools

__all__ = ["EndpointPool"]


class EndpointPool(BindsTools, BaseChatModel):
    """One chat model over several equivalent servers (see the module doc). Tools and
    structured output are bound as the endpoints' integration binds them."""

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

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        # the servers' provider and model (the same on every endpoint), for tracing
        return self.endpoints[0]._get_ls_params(stop=stop, **kwargs)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        routed = self._routed(self.endpoints[0].bind_tools(tools, **kwargs))
        return routed if routed is not None else super().bind_tools(tools, **kwargs)

    def with_structured_output(
        self, schema: dict[str, Any] | type, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[LanguageModelInput, Any]:
        built = self.endpoints[0].with_structured_output(schema, include_raw=include_raw, **kwargs)
        routed = self._routed(built)
        if routed is None:  # built around something else than the endpoint: LangChain's default
            return super().with_structured_output(schema, include_raw=include_raw, **kwargs)
        return routed

    def _routed(self, runnable: Runnable[Any, Any]) -> Runnable[Any, Any] | None:
        """``runnable`` (built by the first endpoint's integration) with this pool in that
        endpoint's place, or None when the endpoint is nowhere in it."""
        endpoint = self.endpoints[0]

        def swap(node: Any) -> Any:
            if node is endpoint:
                return self
            if isinstance(node, list | tuple):
                items = [swap(n) for n in node]
                same = all(a is b for a, b in zip(items, node, strict=True))
                return node if same else type(node)(items)
            if isinstance(node, dict):
                values = {k: swap(v) for k, v in node.items()}
                return node if all(values[k] is v for k, v in node.items()) else values
            if not (isinstance(node, Runnable) and isinstance(node, BaseModel)):
                return node
            updates = {}
            for name in type(node).model_fields:
                value = getattr(node, name)
                if (new := swap(value)) is not value:
                    updates[name] = new
            return node.model_copy(update=updates) if updates else node

        routed: Runnable[Any, Any] = swap(runnable)
        return None if routed is runnable else routed

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
