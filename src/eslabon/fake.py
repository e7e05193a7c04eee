"""Fake chat models for tests and lessons: ``fake:echo`` and ``{provider: fake, responses: [...]}``.

LangChain ships fakes too, but they either do not stream token by token or run out of answers;
these two stream word by word, never run out (responses cycle) and record every call, so users'
own tests can assert the exact messages each step received.
"""

from __future__ import annotations

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

__all__ = ["EchoChatModel", "FakeChatModel"]

_TOKENS = re.compile(r"\S+\s*|\s+")


class FakeChatModel(BaseChatModel):
    """Answers from ``responses`` in turn (cycling); with no responses, echoes the last user text.

    Every call's messages are kept in ``calls`` (a list of message lists).
    """

    can_stream: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = False

    responses: list[str] = Field(default_factory=list)
    _index: int = PrivateAttr(default=0)
    _calls: list[list[BaseMessage]] = PrivateAttr(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "eslabon-fake"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"responses": len(self.responses)}

    @property
    def calls(self) -> list[list[BaseMessage]]:
        return self._calls

    def _answer(self, messages: Sequence[BaseMessage]) -> str:
        self._calls.append(list(messages))
        if self.responses:
            text = self.responses[self._index % len(self.responses)]
            self._index += 1
            return text
        for message in reversed(messages):
            if isinstance(message, HumanMessage):
                return message.text
        return ""

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(
            generations=[ChatGeneration(message=AIMessage(content=self._answer(messages)))]
        )

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._generate(messages, stop)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for token in _TOKENS.findall(self._answer(messages)):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=token))
            if run_manager:
                run_manager.on_llm_new_token(token, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for token in _TOKENS.findall(self._answer(messages)):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=token))
            if run_manager:
                await run_manager.on_llm_new_token(token, chunk=chunk)
            yield chunk


class EchoChatModel(FakeChatModel):
    """``fake:echo``: answers with the last user message, streaming it word by word."""

    @property
    def _llm_type(self) -> str:
        return "eslabon-echo"
