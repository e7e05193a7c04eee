"""Fake chat models for tests and lessons: ``fake:echo`` and ``{provider: fake, responses: [...]}``.

LangChain ships fakes too, but they either do not stream token by token, run out of answers, or
cannot ``bind_tools`` / ``with_structured_output``; these stream word by word, never run out
(responses cycle), take ``AIMessage`` responses carrying tool calls, answer structured output in
JSON mode, and record every call (messages and the tools or schema bound), so users' own tests
can assert exactly what each step received.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, ClassVar

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field, PrivateAttr

from eslabon.running.binding import BindsTools, JsonModeOutput

__all__ = ["EchoChatModel", "FakeChatModel"]

_TOKENS = re.compile(r"\S+\s*|\s+")


class FakeChatModel(BindsTools, JsonModeOutput, BaseChatModel):
    """Answers from ``responses`` in turn (cycling); with no responses, echoes the last user text.

    Every call's messages are kept in ``calls`` (a list of message lists). Answers carry usage
    metadata counted in the fake's own tokens (words and the spaces after them) and, as
    ``model_name``, :attr:`model_name` (or a call's ``model=``).
    """

    can_stream: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = True

    responses: list[str | AIMessage] = Field(default_factory=list)
    model_name: str = "fake"
    _index: int = PrivateAttr(default=0)
    _calls: list[list[BaseMessage]] = PrivateAttr(default_factory=list)
    _bound: list[dict[str, Any]] = PrivateAttr(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "eslabon-fake"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "responses": len(self.responses)}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="fake", ls_model_name=self._name(kwargs), ls_model_type="chat"
        )
        if stop:
            params["ls_stop"] = stop
        return params

    def _name(self, kwargs: dict[str, Any]) -> str:
        """The model name a call reports: its ``model=`` kwarg, else :attr:`model_name`."""
        model = kwargs.get("model")
        return model if isinstance(model, str) and model else self.model_name

    @property
    def calls(self) -> list[list[BaseMessage]]:
        return self._calls

    @property
    def bound(self) -> list[dict[str, Any]]:
        """Per call, what was bound to the model: ``tools`` (OpenAI format), ``response_format``."""
        return self._bound

    def _answer(self, messages: Sequence[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        self._calls.append(list(messages))
        self._bound.append({k: v for k, v in kwargs.items() if k in ("tools", "response_format")})
        if self.responses:
            answer = self.responses[self._index % len(self.responses)]
            self._index += 1
            return (
                answer.model_copy(deep=True) if isinstance(answer, AIMessage) else AIMessage(answer)
            )
        for message in reversed(messages):
            if isinstance(message, HumanMessage):
                return AIMessage(message.text)
        return AIMessage("")

    def _reply(self, messages: Sequence[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        """The answer, with usage and the model name as a provider's reply carries them (a
        scripted ``AIMessage`` keeps its own)."""
        answer = self._answer(messages, kwargs)
        if answer.usage_metadata is None:
            answer.usage_metadata = _usage(_count(messages), len(_TOKENS.findall(answer.text)))
        answer.response_metadata = {"model_name": self._name(kwargs), **answer.response_metadata}
        return answer

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages, kwargs))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._generate(messages, stop, **kwargs)

    def _chunks(
        self, messages: Sequence[BaseMessage], kwargs: dict[str, Any]
    ) -> Iterator[ChatGenerationChunk]:
        """The answer as a stream: word by word (tool calls whole, in one chunk). The first
        chunk carries the input tokens (or a scripted answer's whole usage), each chunk its own
        output tokens, and the last one the model name, so the chunks add up to what ``invoke``
        reports."""
        answer = self._answer(messages, kwargs)
        scripted = answer.usage_metadata
        if answer.tool_calls:  # tool calls arrive whole, in one chunk
            tokens = [answer.text]
            calls = [
                {
                    "name": c["name"],
                    "args": json.dumps(c["args"]),
                    "id": c["id"],
                    "index": n,
                    "type": "tool_call_chunk",
                }
                for n, c in enumerate(answer.tool_calls)
            ]
        else:
            tokens, calls = _TOKENS.findall(answer.text) or [""], []
        inputs = _count(messages)
        closing = {"model_name": self._name(kwargs), **answer.response_metadata}
        for n, token in enumerate(tokens):
            usage = _usage(inputs if n == 0 else 0, len(_TOKENS.findall(token)))
            if scripted is not None:
                usage = scripted if n == 0 else _usage(0, 0)
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content=token,
                    tool_call_chunks=calls,
                    usage_metadata=usage,
                    response_metadata=closing if n == len(tokens) - 1 else {},
                )
            )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, kwargs):
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, kwargs):
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


class EchoChatModel(FakeChatModel):
    """``fake:echo``: answers with the last user message, streaming it word by word. It never
    calls a tool, and its structured output parses only when that message is JSON."""

    model_name: str = "echo"

    @property
    def _llm_type(self) -> str:
        return "eslabon-echo"


def _count(messages: Sequence[BaseMessage]) -> int:
    """The fake's tokens in ``messages`` (words and the spaces after them)."""
    return sum(len(_TOKENS.findall(m.text)) for m in messages)


def _usage(inputs: int, outputs: int) -> UsageMetadata:
    return UsageMetadata(input_tokens=inputs, output_tokens=outputs, total_tokens=inputs + outputs)
