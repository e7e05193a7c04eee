"""``bind_tools`` and ``with_structured_output`` for eslabon's own chat models.

The fakes, the llama.cpp adapter and server pools read ``tools`` (OpenAI tool format) and
``response_format`` (a JSON Schema) from their call kwargs; these mixins bind them the way
LangChain's integrations do, so the same chain file works on all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool

__all__ = ["BindsTools", "JsonModeOutput"]


class BindsTools:
    """``bind_tools``: the tools in OpenAI's format, as the ``tools`` call kwarg."""

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        # no class-level annotation for bind: pydantic would take it for a field
        model: Any = self
        return model.bind(  # type: ignore[no-any-return]
            tools=[convert_to_openai_tool(t) for t in tools], **kwargs
        )


class JsonModeOutput:
    """``with_structured_output``: the JSON Schema as the ``response_format`` call kwarg, and
    the reply parsed as JSON (see :func:`eslabon.structured.json_mode`)."""

    def with_structured_output(
        self, schema: dict[str, Any] | type, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[LanguageModelInput, Any]:
        from eslabon.structured import json_mode

        json_schema = schema if isinstance(schema, dict) else convert_to_json_schema(schema)
        model: Any = self
        return json_mode(model.bind(response_format=json_schema), include_raw)
