"""What eslabon adds to the Mistral and Cohere LangChain integrations, so that they behave as the
other providers do (tested at the wire: tests/test_providers.py).

* **Mistral** (langchain-mistralai): its model builds its own httpx clients, with no setting for
  a transport, a 120 s connect timeout, and retries of a refused connection with 4–10 s waits.
  eslabon rebuilds them (same URL and headers) on :class:`ConnectCapTransport` (eslabon's
  :class:`~eslabon.chat.transport.FastFailTransport`): a 5 s connect timeout and a clear
  :class:`~eslabon.errors.ProviderConnectionError`, not retried. ``presence_penalty`` and
  ``frequency_penalty``, which the API takes but the model has no field for, go in
  ``model_kwargs``.
* **Cohere** (langchain-cohere 0.6): :class:`ChatCohereParams` fixes what its ``ChatCohere``
  gets wrong for eslabon — it sends ``temperature`` alone of the generation settings (and drops
  ``max_tokens``, ``p``, ``k``, ``seed``, the penalties and ``stop`` without a word), ignores
  ``include_raw`` in ``with_structured_output``, streams tool calls that never join up and
  usage that is missing (sync) or billed units (async), and its SDK retries 429 and 5xx twice
  with no setting for it. Its clients get the same transport (without it a connection may take
  the SDK's whole 300 s timeout); eslabon's ``api_key``, ``timeout`` and ``max_retries`` reach
  the fields it names differently.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal, cast

import httpx

from eslabon.chat import transport as _transport
from eslabon.chat.transport import FastFailTransport

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages.ai import UsageMetadata
    from langchain_core.outputs import ChatGenerationChunk

    from eslabon.chat.modelspec import ModelSpec

__all__ = ["ConnectCapTransport", "build_integration"]

MISTRAL_TIMEOUT = 120.0  # langchain-mistralai's own default, seconds
_MISTRAL_EXTRA = ("presence_penalty", "frequency_penalty")


def build_integration(
    spec: ModelSpec, kwargs: dict[str, Any], settings: dict[str, Any]
) -> BaseChatModel | None:
    """The chat model for ``spec`` when eslabon builds it itself (None: ``init_chat_model``
    does). ``kwargs``: its settings, credentials filled; ``settings``: its params, in the
    provider's names."""
    if spec.provider == "mistralai":
        return _mistral(spec, dict(kwargs), dict(settings))
    if spec.provider == "cohere":
        return _cohere(spec, dict(kwargs), dict(settings))
    return None


class ConnectCapTransport(FastFailTransport):
    """eslabon's transport, the connection bounded by its 5 s even when the request says more:
    Cohere's SDK gives every request its whole timeout (300 s by default) as one number, which
    httpx applies to connecting too."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _cap_connect(request)
        return super().handle_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        _cap_connect(request)
        return await super().handle_async_request(request)

    def __deepcopy__(self, memo: dict[int, Any]) -> ConnectCapTransport:
        return ConnectCapTransport(self.provider, self.where)


def _cap_connect(request: httpx.Request) -> None:
    timeout = dict(request.extensions.get("timeout") or {})
    connect, limit = timeout.get("connect"), _transport.CONNECT_TIMEOUT
    if connect is None or connect > limit:  # a shorter one (the model's timeout) is kept
        timeout["connect"] = limit
        request.extensions["timeout"] = timeout


def _mistral(spec: ModelSpec, kwargs: dict[str, Any], settings: dict[str, Any]) -> BaseChatModel:
    from langchain_mistralai import ChatMistralAI

    seconds = float(kwargs.pop("timeout", MISTRAL_TIMEOUT))
    extra = {k: settings.pop(k) for k in _MISTRAL_EXTRA if k in settings}
    if extra:
        kwargs["model_kwargs"] = {**kwargs.get("model_kwargs", {}), **extra}
    model = ChatMistralAI(model=spec.name, **kwargs, **settings)
    transport = ConnectCapTransport(spec.provider, spec.label)
    # same URL and headers (the key among them) as the ones it built, on eslabon's transport
    sync, async_ = model.client, model.async_client
    model.client = httpx.Client(
        base_url=sync.base_url, headers=sync.headers, timeout=seconds, transport=transport
    )
    model.async_client = httpx.AsyncClient(
        base_url=async_.base_url, headers=async_.headers, timeout=seconds, transport=transport
    )
    sync.close()  # never used; the async one holds no connection yet either
    return model


# eslabon's names -> ChatCohere's
_COHERE_NAMES = {"api_key": "cohere_api_key", "timeout": "timeout_seconds"}


def _cohere(spec: ModelSpec, kwargs: dict[str, Any], settings: dict[str, Any]) -> BaseChatModel:
    cls = _cohere_class()
    renamed = {_COHERE_NAMES.get(k, k): v for k, v in kwargs.items()}
    transport = ConnectCapTransport(spec.provider, spec.label)
    model: BaseChatModel = cls(model=spec.name, transport=transport, **renamed, **settings)
    return model


_COHERE_CLASS: Any = None


def _cohere_class() -> Any:
    """:class:`ChatCohereParams`, defined at first use (langchain-cohere is an optional
    dependency)."""
    global _COHERE_CLASS
    if _COHERE_CLASS is None:
        _COHERE_CLASS = _define_cohere()
    return _COHERE_CLASS


def _define_cohere() -> Any:  # noqa: C901 - one class, defined where its base can be imported
    import cohere
    from langchain_cohere import ChatCohere
    from langchain_cohere.chat_models import get_cohere_chat_request_v2
    from langchain_core.runnables import RunnableMap, RunnablePassthrough, RunnableSequence
    from pydantic import Field, model_validator

    class ChatCohereParams(ChatCohere):
        """``ChatCohere`` sending every generation setting Cohere's v2 chat API takes."""

        max_tokens: int | None = None
        p: float | None = None
        k: int | None = None
        seed: int | None = None
        presence_penalty: float | None = None
        frequency_penalty: float | None = None
        max_retries: int = 2  # the SDK's own default
        transport: Any = Field(default=None, exclude=True)

        @model_validator(mode="after")
        def validate_environment(self) -> ChatCohereParams:
            # the base class's, with eslabon's transport under both clients
            key = self.cohere_api_key.get_secret_value() if self.cohere_api_key else None
            seconds = float(self.timeout_seconds or 300)
            common: dict[str, Any] = {
                "api_key": key,
                "timeout": seconds,
                "client_name": self.user_agent,
                "base_url": self.base_url,
            }
            self.client = cohere.Client(
                **common,
                httpx_client=httpx.Client(
                    timeout=seconds, transport=self.transport, follow_redirects=True
                ),
            )
            self.async_client = cohere.AsyncClient(
                **common,
                httpx_client=httpx.AsyncClient(
                    timeout=seconds, transport=self.transport, follow_redirects=True
                ),
            )
            return self

        @property
        def _default_params(self) -> dict[str, Any]:
            sent = {
                "max_tokens": self.max_tokens,
                "p": self.p,
                "k": self.k,
                "seed": self.seed,
                "presence_penalty": self.presence_penalty,
                "frequency_penalty": self.frequency_penalty,
            }
            return {
                **super()._default_params,
                **{k: v for k, v in sent.items() if v is not None},
                "request_options": {"max_retries": self.max_retries},
            }

        def _generate(self, messages: Any, stop: Any = None, *args: Any, **kw: Any) -> Any:
            return super()._generate(messages, self._stop(stop), *args, **kw)

        async def _agenerate(self, messages: Any, stop: Any = None, *args: Any, **kw: Any) -> Any:
            return await super()._agenerate(messages, self._stop(stop), *args, **kw)

        def _stream(
            self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
        ) -> Iterator[ChatGenerationChunk]:
            if kwargs.get("raw_prompting"):  # the v1 path its ReAct agent needs: as it is
                yield from super()._stream(messages, stop, run_manager, **kwargs)
                return
            request = self._request(messages, stop, kwargs)
            state = _StreamState()
            for event in self.client.v2.chat_stream(**request):
                if (chunk := state.chunk(event)) is not None:
                    if run_manager:
                        run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk

        async def _astream(
            self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
        ) -> AsyncIterator[ChatGenerationChunk]:
            request = self._request(messages, stop, kwargs)
            state = _StreamState()
            async for event in self.async_client.v2.chat_stream(**request):
                if (chunk := state.chunk(event)) is not None:
                    if run_manager:
                        await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk

        def _request(self, messages: Any, stop: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            return get_cohere_chat_request_v2(
                messages, stop_sequences=self._stop(stop), **self._default_params, **kwargs
            )

        def _stop(self, stop: list[str] | None) -> list[str] | None:
            return stop if stop is not None else self.stop

        def with_structured_output(
            self,
            schema: Any,
            method: Literal[
                "function_calling", "tool_calling", "json_mode", "json_schema"
            ] = "json_schema",
            *,
            include_raw: bool = False,
            **kwargs: Any,
        ) -> Any:
            plain = super().with_structured_output(schema, method=method, **kwargs)
            if not include_raw:
                return plain
            # LangChain's usual shape: {"raw", "parsed", "parsing_error"}; its chain is the
            # model, then the parser
            chain = cast("RunnableSequence[Any, Any]", plain)
            llm, parser = chain.first, chain.last
            parsed = RunnablePassthrough.assign(
                parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
            )
            failed = RunnablePassthrough.assign(parsed=lambda _: None)
            return RunnableMap(raw=llm) | parsed.with_fallbacks(
                [failed], exception_key="parsing_error"
            )

    return ChatCohereParams


class _StreamState:
    """Cohere's v2 stream events, as LangChain message chunks.

    langchain-cohere 0.6 builds these wrongly: each tool call chunk gets a new random id (so
    the pieces never join into one call, and the call loses the id its result must name), the
    last argument piece is sent twice, and a sync stream's last chunk has no usage. Here a call's
    id comes with its name (tool-call-start), its arguments follow (tool-call-delta) under the
    same index, and the last chunk (message-end) carries the usage: the tokens the model read
    and wrote, as an invoked reply counts them (not the billed units, which may be fewer).
    """

    def __init__(self) -> None:
        self.thinking = False  # a reasoning model's text goes in blocks after its thinking

    def chunk(self, event: Any) -> ChatGenerationChunk | None:
        from langchain_core.messages import AIMessageChunk
        from langchain_core.messages.tool import tool_call_chunk
        from langchain_core.outputs import ChatGenerationChunk

        kind = getattr(event, "type", None)
        delta = getattr(event, "delta", None)
        message = getattr(delta, "message", None)
        if kind == "content-delta":
            content = getattr(message, "content", None)
            thinking = getattr(content, "thinking", None)
            text = getattr(content, "text", None)
            if thinking is not None:
                self.thinking = True
                block = {"type": "reasoning", "index": 0, "summary": [{"text": thinking}]}
                return ChatGenerationChunk(message=AIMessageChunk(content=[block]))
            if text is None:
                return None
            if self.thinking:
                block = {"type": "text", "index": 1, "text": text}
                return ChatGenerationChunk(message=AIMessageChunk(content=[block]))
            return ChatGenerationChunk(message=AIMessageChunk(content=text))
        if kind == "tool-plan-delta":
            plan = getattr(message, "tool_plan", None) or ""
            return ChatGenerationChunk(message=AIMessageChunk(content=plan))
        if kind in ("tool-call-start", "tool-call-delta"):
            call = getattr(message, "tool_calls", None)
            function = getattr(call, "function", None)
            start = kind == "tool-call-start"
            piece = tool_call_chunk(
                name=getattr(function, "name", None) if start else None,
                args=getattr(function, "arguments", None) or "",
                id=getattr(call, "id", None) if start else None,
                index=getattr(event, "index", None) or 0,
            )
            return ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[piece]))
        if kind == "message-end":
            info: dict[str, Any] = {"finish_reason": getattr(delta, "finish_reason", None)}
            usage = _cohere_usage(getattr(delta, "usage", None))
            if usage is not None:
                info["token_count"] = usage
            last = AIMessageChunk(content="", usage_metadata=usage, chunk_position="last")
            return ChatGenerationChunk(message=last, generation_info=info)
        return None  # message-start, content-start/end, tool-call-end, citations: nothing new


def _cohere_usage(usage: Any) -> UsageMetadata | None:
    """Cohere's ``usage.tokens`` as LangChain's usage metadata."""
    from langchain_core.messages.ai import UsageMetadata

    tokens = getattr(usage, "tokens", None)
    if tokens is None:
        return None
    used_in, used_out = int(tokens.input_tokens or 0), int(tokens.output_tokens or 0)
    return UsageMetadata(
        input_tokens=used_in, output_tokens=used_out, total_tokens=used_in + used_out
    )
