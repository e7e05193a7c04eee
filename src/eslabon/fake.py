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
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field, PrivateAttr

from eslabon.binding import BindsTools, JsonModeOutput

__all__ = ["EchoChatModel", "FakeChatModel"]

_TOKENS = re.compile(r"\S+\s*|\s+")


class FakeChatModel(BindsTools, JsonModeOutput, BaseChatModel):
    """Answers from ``responses`` in turn (cycling); with no responses, echoes the last user text.

    Every call's messages are kept in ``calls`` (a list of message lists).
    """

    can_stream: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = True

    responses: list[str | AIMessage] = Field(default_factory=list)
    _index: int = PrivateAttr(default=0)
    _calls: list[list[BaseMessage]] = PrivateAttr(default_factory=list)
    _bound: list[dict[str, Any]] = PrivateAttr(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "eslabon-fake"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"responses": len(self.responses)}

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

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages, kwargs))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._generate(messages, stop, **kwargs)

    def _chunks(self, answer: AIMessage) -> Iterator[ChatGenerationChunk]:
        if answer.tool_calls:  # tool calls arrive whole, in one chunk
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content=answer.text,
                    tool_call_chunks=[
                        {
                            "name": c["name"],
                            "args": json.dumps(c["args"]),
                            "id": c["id"],
                            "index": n,
                            "type": "tool_call_chunk",
                        }
                        for n, c in enumerate(answer.tool_calls)
                    ],
                )
            )
            return
        for token in _TOKENS.findall(answer.text):
            yield ChatGenerationChunk(message=AIMessageChunk(content=token))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._answer(messages, kwargs)):
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
        for chunk in self._chunks(self._answer(messages, kwargs)):
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


class EchoChatModel(FakeChatModel):
    """``fake:echo``: answers with the last user message, streaming it word by word."""

    @property
    def _llm_type(self) -> str:
        return "eslabon-echo"
