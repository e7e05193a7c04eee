"""Structured output: ``output_schema`` resolved, bound to a model, validated, retried.

Providers with native support get LangChain's ``with_structured_output`` (json_schema or tool
calling, the integration's default). The local llama.cpp model and the fakes answer in JSON mode
(llama.cpp constrains decoding with a grammar built from the schema) and are parsed here. Either
way eslabon validates the result itself — LangChain does not validate dict schemas — so a reply
that parses but breaks the schema is caught, fed back to the model, and retried.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import Runnable, RunnableConfig
from pydantic import BaseModel, WithJsonSchema, create_model

from eslabon.errors import OutputValidationError, UserError
from eslabon.running.runcore import Call, Flow

__all__ = [
    "STRUCTURED_METHODS",
    "OutputSchema",
    "resolve_output_schema",
    "structured_flow",
    "structured_model",
]


STRUCTURED_METHODS = ("json_schema", "function_calling", "json_mode")


class _Invalid(Exception):
    """The parsed output breaks the schema (message says where)."""


@dataclass(frozen=True)
class OutputSchema:
    """What a step's ``output_schema`` resolves to."""

    json_schema: dict[str, Any]
    python_type: Any = None  # the pydantic class, for {pydantic: ...}

    def validate(self, data: Any) -> Any:
        """The validated value (a dict, or an instance of the pydantic class)."""
        if self.python_type is not None:
            from pydantic import ValidationError

            try:
                return self.python_type.model_validate(data)
            except ValidationError as exc:
                raise _Invalid(
                    "; ".join(
                        f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}"
                        for e in exc.errors()
                    )
                ) from None
        from eslabon.chainfile.patterns import validator_for

        # jsonschema's own validator runs `pattern` with Python's backtracking re: a hostile
        # pattern in the file could hang here; this one runs patterns on RE2
        errors = sorted(validator_for(self.json_schema).iter_errors(data), key=str)
        if errors:
            raise _Invalid(
                "; ".join(
                    f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                    for e in errors[:5]
                )
            )
        return data


def result_model(
    name: str,
    steps: list[tuple[str, OutputSchema | None]],
    output_id: str,
    retrieves: bool = False,
    uses_tools: bool = False,
) -> type[BaseModel]:
    """The pydantic model of a chain's result: text per step, or each step's output schema."""
    fields: dict[str, Any] = {}
    for step_id, schema in steps:
        if schema is None:
            fields[step_id] = (str, ...)
        elif schema.python_type is not None:
            fields[step_id] = (schema.python_type, ...)
        else:  # an inline JSON Schema, published as written
            fields[step_id] = (Annotated[dict[str, Any], WithJsonSchema(schema.json_schema)], ...)
    fields["output"] = fields[output_id]
    if retrieves:
        fields["documents"] = (list[dict[str, Any]], ...)
    if uses_tools:
        fields["tool_calls"] = (list[dict[str, Any]], ...)
    # tokens, time, attempts and cost, per step and in total (eslabon.observe.meter)
    fields["stats"] = (dict[str, Any], ...)
    model: type[BaseModel] = create_model(f"{name}_output", **fields)
    return model


def spec_result_schema(spec: Any, allowed: list[str]) -> dict[str, Any]:
    """The JSON Schema of a chain file's result, without building its models or retrievers."""
    steps = spec.normalized_steps()
    schemas = [
        (s.id, resolve_output_schema(s.output_schema, s.id, allowed) if s.output_schema else None)
        for s in steps
    ]
    retrieves = spec.retriever is not None or any(s.retriever is not None for s in steps)
    model = result_model(
        spec.name or "chain",
        schemas,
        spec.output_step(),
        retrieves=retrieves,
        uses_tools=any(s.tools for s in steps),
    )
    return model.model_json_schema()


def as_json_text(value: Any) -> str:
    """How a structured result appears in later templates: JSON text."""
    if hasattr(value, "model_dump_json"):
        return str(value.model_dump_json())
    return json.dumps(value, ensure_ascii=False)


def as_data(value: Any) -> Any:
    """A structured result as plain data (pydantic objects dumped), for JSON output."""
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def resolve_output_schema(ref: Any, step_id: str, allowed: list[str]) -> OutputSchema:
    """An inline JSON Schema, or a pydantic class imported under the opt-in import rule."""
    if hasattr(ref, "pydantic"):
        from pydantic import BaseModel

        from eslabon.trust.imports import resolve_import

        cls = resolve_import(ref.pydantic, allowed, f"output_schema of step '{step_id}'")
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            raise UserError(
                f"output_schema of step '{step_id}': '{ref.pydantic}' is not a pydantic model"
            )
        return OutputSchema(cls.model_json_schema(), cls)
    schema = dict(ref)
    from eslabon.chainfile.checks import external_refs
    from eslabon.chainfile.patterns import pattern_problems

    if outside := external_refs(schema):  # never read a file or call a host for a $ref
        raise UserError(
            f"output_schema of step '{step_id}': "
            + "; ".join(f"{'.'.join(map(str, path))}: {message}" for path, message in outside)
        )
    if problems := pattern_problems(schema):  # refused now, not after the model has answered
        raise UserError(
            f"output_schema of step '{step_id}': "
            + "; ".join(f"{'.'.join(map(str, path))}: {message}" for path, message in problems)
        )
    # providers name the schema (OpenAI: ^[a-zA-Z0-9_-]+$); the step id always qualifies
    schema.setdefault("title", step_id)
    return OutputSchema(schema)


def structured_model(
    model: Any, schema: OutputSchema, method: str | None = None
) -> Runnable[Any, dict[str, Any]]:
    """``model`` answering in ``schema``'s shape, raw message included; ``method`` as
    LangChain's ``with_structured_output`` takes it (None: the integration's default)."""
    extra = {"method": method} if method else {}
    return model.with_structured_output(schema.json_schema, include_raw=True, **extra)  # type: ignore[no-any-return]


def _raw_text(message: Any) -> str:
    if isinstance(message, AIMessage) and not message.text and message.tool_calls:
        return json.dumps(message.tool_calls[0]["args"], ensure_ascii=False)
    return str(getattr(message, "text", "") or "")


def _outcome(out: dict[str, Any], schema: OutputSchema) -> tuple[bool, Any, str, str]:
    """(ok, value, raw text, error) for one structured answer."""
    raw = _raw_text(out.get("raw"))
    if out.get("parsing_error") is not None or out.get("parsed") is None:
        return False, None, raw, f"not valid JSON ({out.get('parsing_error') or 'no output'})"
    try:
        return True, schema.validate(out["parsed"]), raw, ""
    except _Invalid as exc:
        return False, None, raw, str(exc)


# how providers say a reply stopped at max_tokens (OpenAI, llama.cpp, Ollama; Anthropic; Gemini)
_CUT = ("length", "max_tokens", "MAX_TOKENS")


def _cut_fix(out: dict[str, Any]) -> str | None:
    """The fix to name when the answer was cut off by ``max_tokens``: a reply cut short is
    not JSON, and asking again does not lengthen it."""
    meta = getattr(out.get("raw"), "response_metadata", None) or {}
    if meta.get("finish_reason") in _CUT or meta.get("stop_reason") in _CUT:
        return (
            "raise max_tokens (the answer was cut off before its end), or bound the schema's "
            "strings and lists with maxLength / maxItems"
        )
    return None


def _feedback(messages: list[BaseMessage], raw: str, error: str) -> list[BaseMessage]:
    return [
        *messages,
        AIMessage(raw),
        HumanMessage(
            f"That answer does not match the required JSON schema: {error}\n"
            "Answer again with only the corrected JSON."
        ),
    ]


def structured_flow(
    model: Runnable[Any, dict[str, Any]],
    messages: list[BaseMessage],
    schema: OutputSchema,
    attempts: int,
    config: RunnableConfig,
    step_id: str,
) -> Flow[Any]:
    """Ask, validate, and on failure ask again with the error; raise after ``attempts``."""
    raw, error, fix = "", "", None
    for _ in range(attempts):
        out = yield Call(model, messages, config)
        ok, value, raw, error = _outcome(out, schema)
        if ok:
            return value
        fix = _cut_fix(out)
        messages = _feedback(messages, raw, error)
    raise OutputValidationError(step_id, raw, error, attempts, fix)
