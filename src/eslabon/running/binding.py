"""``bind_tools`` and ``with_structured_output`` for eslabon's own chat models.

The fakes and the llama.cpp adapter read ``tools`` (OpenAI tool format) and ``response_format``
(a JSON Schema) from their call kwargs; these mixins bind them the way LangChain's integrations
do, so the same chain file works on all of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

__all__ = ["BindsTools", "JsonModeOutput"]

_METHODS = ("json_schema", "function_calling", "json_mode")  # LangChain's structured methods


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
    the reply parsed as JSON — into an instance when ``schema`` is a pydantic class (v2 or v1),
    as LangChain's integrations do. The call's callbacks get ``ls_structured_output_format``
    (the schema and method), as on LangChain's own structured-output path. Every ``method``
    (json_schema, function_calling, json_mode) answers under the schema: these models constrain
    or script their JSON, they have no separate tool-calling channel to route it through."""

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: str | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        if kwargs:  # as LangChain's BaseChatModel: a misspelt option is an error, not ignored
            raise ValueError(f"Received unsupported arguments {kwargs}")
        if method not in (None, *_METHODS):
            raise ValueError(f"method must be one of {', '.join(_METHODS)}, got {method!r}")
        settings: dict[str, Any] = {"method": method or "json_schema"}
        if strict is not None:
            settings["strict"] = strict
        model: Any = self
        bound: Runnable[LanguageModelInput, BaseMessage] = model.bind(
            response_format=_json_schema(schema),
            ls_structured_output_format={"kwargs": settings, "schema": schema},
        )
        parse = partial(_parse, schema=schema, include_raw=include_raw)
        return bound | RunnableLambda(parse, name="parse_json")


def _json_schema(schema: dict[str, Any] | type) -> dict[str, Any]:
    """A JSON Schema as is; a pydantic class (v2 or v1), TypedDict or OpenAI function/tool
    description converted by LangChain."""
    if isinstance(schema, dict) and not ("function" in schema or "parameters" in schema):
        return schema
    return convert_to_json_schema(schema)


def _parse(message: BaseMessage, schema: dict[str, Any] | type, include_raw: bool) -> Any:
    """The reply's JSON (an instance of ``schema`` when it is a pydantic class), or with
    ``include_raw`` LangChain's ``{"raw", "parsed", "parsing_error"}``."""
    text = message.text
    try:
        try:
            # strict=False: llama.cpp's JSON grammar lets raw newlines into strings
            parsed = json.loads(text, strict=False)
        except ValueError as exc:
            raise OutputParserException(str(exc), llm_output=text) from exc
        if isinstance(schema, type) and is_basemodel_subclass(schema):
            parsed = _instance(schema, parsed, text)
    except OutputParserException as exc:
        if not include_raw:
            raise
        return {"raw": message, "parsed": None, "parsing_error": exc}
    return {"raw": message, "parsed": parsed, "parsing_error": None} if include_raw else parsed


def _instance(schema: type, data: Any, text: str) -> Any:
    from pydantic import ValidationError
    from pydantic.v1 import ValidationError as ValidationErrorV1

    cls: Any = schema
    try:
        return cls.model_validate(data) if hasattr(cls, "model_validate") else cls.parse_obj(data)
    except (ValidationError, ValidationErrorV1) as exc:
        raise OutputParserException(
            f"does not match {cls.__name__}: {exc}", llm_output=text
        ) from exc
