"""What eslabon's in-process chat models share: llama.cpp (:mod:`eslabon.chat.local`) and
transformers (:mod:`eslabon.chat.huggingface`).

Neither runtime has a tool-calling channel or a structured-output mode of its own: both decode
under a JSON Schema (a llama.cpp grammar; lm-format-enforcer's token filter), and the same
conventions turn LangChain's tools and messages into that schema and back. Written once here so
the two answer in the same shape: messages as chat-template turns (:func:`chat_payload`), which
constraint a call decodes under (:func:`constraint`: the tool choice, or the output schema), the
reply read back as an answer or one tool call (:func:`tool_reply`), stop strings found in
streamed text (:func:`first_stop`, :func:`partial_stop`), and misspelled settings refused with a
suggestion (:func:`refuse_unknown`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.messages.tool import tool_call, tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk

from eslabon.errors import ModelError

__all__ = [
    "ANSWER",
    "ANSWER_PROMPT",
    "Constraint",
    "bounded_schema",
    "chat_payload",
    "constraint",
    "first_stop",
    "ls_params",
    "partial_stop",
    "refuse_unknown",
    "string_cap",
    "tool_choice_schema",
    "tool_reply",
    "whole_chunk",
]

ToolMode = Literal["call", "either", "answer"]
ANSWER: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}
ANSWER_PROMPT = 'Reply {"answer": "..."} with your answer to the user.'


# Counted repetitions nest one group per optional item in a llama.cpp grammar ("(c (c (c)?)?)?"),
# parsed recursively: maxLength 2000 segfaulted, 1000 did not.
MAX_COUNT = 500
COUNTS = ("maxLength", "maxItems")
# A string with no maxLength gets at most max_tokens / (number of such strings) characters, and
# at least this many: a token is at least one character, so the strings of the longest answer
# fit in max_tokens and the grammar closes the JSON before the budget runs out.
MIN_STRING_CAP = 16


def free_strings(schema: Any) -> list[dict[str, Any]]:
    """The plain string schemas in ``schema`` with no ``maxLength`` (formats, enums and
    constants have fixed shapes and are left alone)."""
    from eslabon.chainfile.patterns import walk_schemas

    return [
        sub
        for _, sub in walk_schemas(schema)
        if sub.get("type") == "string"
        and "maxLength" not in sub
        and not {"enum", "const", "format"} & set(sub)
    ]


def string_cap(schema: Any, max_tokens: int | None) -> int:
    """How long a string without ``maxLength`` may be in the grammar (see ``MIN_STRING_CAP``);
    free-form objects' keys and values get it too."""
    if not max_tokens or max_tokens < 1:
        return MAX_COUNT
    share = max_tokens // max(1, len(free_strings(schema)))
    return max(MIN_STRING_CAP, min(MAX_COUNT, share))


def bounded_schema(schema: Any, cap: int = MAX_COUNT) -> Any:
    """``schema`` as constrained decoding may take it: no ``pattern`` (llama-cpp-python's
    regex-to-grammar translation segfaults on ``\\d``, and nested counts such as
    ``^(x{0,30}){0,30}$`` took 23 s for 40 tokens), strings without ``maxLength`` bounded by
    ``cap``, and no count above ``MAX_COUNT`` (left out). eslabon still validates the answer
    against the whole schema, and asks again when it does not match."""
    from eslabon.chainfile.patterns import walk_schemas, without_patterns

    bounded = without_patterns(schema)
    for sub in free_strings(bounded):
        sub["maxLength"] = max(
            cap, sub.get("minLength", 0) if isinstance(sub.get("minLength"), int) else 0
        )
    for _, sub in walk_schemas(bounded):
        for key in COUNTS:
            if isinstance(sub.get(key), int) and sub[key] > MAX_COUNT:
                del sub[key]
    return bounded


def chat_payload(message: BaseMessage) -> dict[str, str]:
    """A message as a model's chat template takes it. Tool turns become plain text: small
    models' templates have no tool role."""
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": message.text}
    if isinstance(message, HumanMessage):
        return {"role": "user", "content": message.text}
    if isinstance(message, AIMessage):
        if message.tool_calls:
            calls = [{"tool": c["name"], "arguments": c["args"]} for c in message.tool_calls]
            return {"role": "assistant", "content": json.dumps(calls[0], ensure_ascii=False)}
        return {"role": "assistant", "content": message.text}
    if isinstance(message, ToolMessage):
        # worded so that the bundled 135M model answers with the result (measured against
        # "Tool result (NAME): ...", which it answered by calling the tool with the result)
        if message.status == "error":
            return {"role": "user", "content": f"The tool {message.name} failed: {message.text}"}
        return {
            "role": "user",
            "content": f"The tool {message.name} returned: {message.text}\n"
            "Answer the question with this result.",
        }
    return {"role": message.type, "content": message.text}


def tool_choice_schema(tools: list[dict[str, Any]], mode: ToolMode) -> dict[str, Any]:
    """One JSON shape per tool and/or a final answer: decoding then allows nothing else."""
    options: list[dict[str, Any]] = []
    if mode != "answer":
        options = [
            {
                "type": "object",
                "properties": {
                    "tool": {"const": t["function"]["name"]},
                    "arguments": t["function"].get("parameters") or {"type": "object"},
                },
                "required": ["tool", "arguments"],
            }
            for t in tools
        ]
    if mode != "call":
        options.append(ANSWER)
    return {"anyOf": options} if len(options) > 1 else options[0]


def tool_mode(kwargs: dict[str, Any], messages: list[BaseMessage]) -> ToolMode:
    """``tool_choice`` "any"/"required" (or a tool's name) always calls. "auto", the default,
    is what a small model needs: call on the first turn (left to choose, it nearly always
    answered without the tool it was given), answer after a result (left to choose, it called
    the tool again with the result, every time), and after a failed call either retry or
    answer."""
    choice = kwargs.get("tool_choice") or "auto"
    if choice != "auto":
        return "call"
    results = [m for m in messages if isinstance(m, ToolMessage)]
    if not results:
        return "call"
    return "either" if results[-1].status == "error" else "answer"


def named_tool(choice: Any) -> str | None:
    """The tool ``tool_choice`` names, in any of LangChain's spellings."""
    if isinstance(choice, dict):
        name = choice.get("function", {}).get("name") or choice.get("name")
        return str(name) if name else None
    if isinstance(choice, str) and choice not in ("auto", "any", "required", "none"):
        return choice
    return None


def tools_prompt(tools: list[dict[str, Any]]) -> str:
    lines = ["Tools you can call:"]
    for t in tools:
        fn = t["function"]
        params = fn.get("parameters", {}).get("properties", {})
        lines.append(f"- {fn['name']}({', '.join(params)}): {fn.get('description', '')}")
    first = tools[0]["function"]
    arg = next(iter(first.get("parameters", {}).get("properties", {})), "x")
    lines.append(
        'To call a tool, reply {"tool": "NAME", "arguments": {...}}, for example '
        f'{{"tool": "{first["name"]}", "arguments": {{"{arg}": "..."}}}}. '
        'When you have the result, reply {"answer": "..."}.'
    )
    return "\n".join(lines)


@dataclass(frozen=True)
class Constraint:
    """What a call decodes under: ``schema`` (None: free text), eslabon's instructions to put
    before the chain's own system message, and whether the reply is a tool-or-answer JSON to
    be read by :func:`tool_reply`."""

    schema: dict[str, Any] | None = None
    system: str = ""
    tool_json: bool = False


def constraint(messages: list[BaseMessage], kwargs: dict[str, Any]) -> Constraint:
    """The constraint of a call: its ``tools`` (the tool choice, see :func:`tool_mode`), else
    its ``response_format`` (a JSON Schema), else — after tool calls, asked without tools (a
    tool loop's last turn) — an answer: the model has replied in JSON all along, and free text
    imitates a tool call."""
    if tools := kwargs.get("tools"):
        if name := named_tool(kwargs.get("tool_choice")):
            tools = [t for t in tools if t["function"]["name"] == name] or tools
        schema = tool_choice_schema(tools, tool_mode(kwargs, messages))
        return Constraint(schema, tools_prompt(tools), tool_json=True)
    if response_format := kwargs.get("response_format"):
        return Constraint(response_format)
    if any(isinstance(m, ToolMessage) for m in messages):
        return Constraint(ANSWER, ANSWER_PROMPT, tool_json=True)
    return Constraint()


def with_system(payload: list[dict[str, str]], system: str) -> list[dict[str, str]]:
    """``payload`` with eslabon's ``system`` instructions first, merged with the chain's own
    system message after them, nearer the question (a small model follows what it read last)."""
    if not system:
        return payload
    merged = [{"role": "system", "content": system}, *payload]
    if len(merged) > 1 and merged[1]["role"] == "system":
        merged[0] = {"role": "system", "content": system + "\n\n" + merged.pop(1)["content"]}
    return merged


def tool_reply(text: str, max_tokens: int | None, who: str) -> tuple[str, list[ToolCall]]:
    """The constrained JSON reply as an answer, or as one tool call. ``who``: the model, as an
    error names it."""
    try:
        data = json.loads(text, strict=False)
    except ValueError:  # constrained JSON always parses, unless max_tokens cut it short
        raise ModelError(
            f"{who}'s reply was cut off at max_tokens={max_tokens} before its tool "
            f"call or answer ended: {text[:200]}\n"
            "    fix: raise max_tokens in the step's params"
        ) from None
    if isinstance(data, dict) and "tool" in data:
        found = data.get("arguments")
        args: dict[str, Any] = found if isinstance(found, dict) else {}
        return "", [
            tool_call(name=str(data["tool"]), args=args, id=f"call_{uuid.uuid4().hex[:12]}")
        ]
    if isinstance(data, dict) and "answer" in data:
        return str(data["answer"]), []
    return text, []


def first_stop(text: str, stops: list[str]) -> int | None:
    """Where the first stop string in ``text`` begins (None: there is none)."""
    found = [i for s in stops if (i := text.find(s)) >= 0]
    return min(found) if found else None


def partial_stop(text: str, stops: list[str]) -> int:
    """How many characters at the end of ``text`` may begin a stop string: held back until the
    next token says whether they do."""
    return max(
        (
            n
            for s in stops
            for n in range(min(len(s) - 1, len(text)), 0, -1)
            if s.startswith(text[-n:])
        ),
        default=0,
    )


# BaseChatModel's own fields: LangChain plumbing, not settings to suggest for a misspelling
_LANGCHAIN_FIELDS = frozenset(BaseChatModel.model_fields)


def refuse_unknown(data: Any, known: Iterable[str], cls_name: str, why: str) -> None:
    """Raise ``ValueError`` naming each key of ``data`` that is not in ``known``, with a
    did-you-mean among the model's own settings; ``why``: what the model is (no server, no
    key, ...), so the user sees why ``api_key=`` or ``timeout=`` has no place here."""
    if not isinstance(data, dict):
        return
    known = set(known)
    unknown = [k for k in data if k not in known]
    if not unknown:
        return
    from eslabon.chainfile.suggest import did_you_mean

    settings = sorted(k for k in known if k not in _LANGCHAIN_FIELDS)
    named = []
    for key in unknown:
        hint = did_you_mean(str(key), settings)
        named.append(f"'{key}'" + (f" ({hint})" if hint else ""))
    raise ValueError(
        f"{cls_name} does not take {', '.join(named)}: {why}. Its settings: {', '.join(settings)}"
    )


def ls_params(
    model: Any, provider: str, name: str, stop: list[str] | None, kwargs: dict[str, Any]
) -> LangSmithParams:
    """What LangSmith and tracing callbacks record about a call of an in-process ``model``
    (its own ``temperature``, ``max_tokens`` and ``stop`` unless the call gives them); a
    call's ``model=`` is shown as given (the model refuses any but its own)."""
    named = kwargs.get("model")
    params = LangSmithParams(
        ls_provider=provider,
        ls_model_name=named if isinstance(named, str) else name,
        ls_model_type="chat",
        ls_temperature=kwargs.get("temperature", model.temperature),
    )
    if (max_tokens := kwargs.get("max_tokens", model.max_tokens)) is not None:
        params["ls_max_tokens"] = max_tokens
    if stops := stop or kwargs.get("stop") or model.stop:
        params["ls_stop"] = list(stops)
    return params


def whole_chunk(whole: AIMessage) -> ChatGenerationChunk:
    """A constrained reply, streamed as one chunk: it means something only whole (a tool call,
    one JSON value)."""
    return ChatGenerationChunk(
        message=AIMessageChunk(
            content=whole.content,
            tool_call_chunks=[
                tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=n)
                for n, c in enumerate(whole.tool_calls)
            ],
            usage_metadata=whole.usage_metadata,
            response_metadata=whole.response_metadata,
        )
    )
