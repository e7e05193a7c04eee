"""Function calling: tools named in a chain file, and the loop that runs them.

The loop is written here rather than taken from ``langchain.agents.create_agent``: that one
brings LangGraph and its own state graph, while a step needs only ask → call → feed back, with
a cap on calls and tool failures returned to the model instead of raised. Each model call and
each tool call is still a LangChain run, so callbacks and tracing see them.

The loop ends with an answer or with :class:`NoAnswerError`, never with a tool call passed off
as the answer. A call repeated with the same arguments learns nothing new (small models repeat
their first call again and again): its earlier result is sent back and the model is asked for
its answer, without tools, as when ``max_tool_calls`` is reached.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool

from eslabon.errors import ModelError, UserError
from eslabon.running.runcore import Call, Flow

__all__ = [
    "DEFAULT_MAX_TOOL_CALLS",
    "TRUSTED_TOOLS",
    "NoAnswerError",
    "ToolLoop",
    "call_summary",
    "load_tools",
]

DEFAULT_MAX_TOOL_CALLS = 5
TRUSTED_TOOLS = ("eslabon.tools",)  # eslabon's own tools need no import allowance


def load_tools(paths: list[str], allowed: list[str], step_id: str) -> list[BaseTool]:
    """Import each tool (opt-in) and make it a LangChain tool; a plain function's schema comes
    from its type hints and docstring."""
    from eslabon.trust.imports import resolve_import

    tools: list[BaseTool] = []
    for path in paths:
        obj = resolve_import(path, [*allowed, *TRUSTED_TOOLS], f"tool of step '{step_id}'")
        if isinstance(obj, BaseTool):
            tools.append(obj)
        elif callable(obj):
            try:
                tools.append(StructuredTool.from_function(obj, parse_docstring=_has_args(obj)))
            except (ValueError, TypeError) as exc:
                raise UserError(f"tool '{path}' of step '{step_id}': {exc}") from None
        else:
            raise UserError(f"tool '{path}' of step '{step_id}' is not a function")
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise UserError(f"step '{step_id}' lists two tools with the same name: {names}")
    return tools


def _has_args(fn: Callable[..., Any]) -> bool:
    # parse_docstring=True rejects docstrings without an Args section; use it only when present
    return "Args:" in (fn.__doc__ or "")


def _error(call: dict[str, Any], text: str) -> ToolMessage:
    return ToolMessage(text, tool_call_id=call["id"] or "", name=call["name"], status="error")


def _reply(call: dict[str, Any], result: Any) -> ToolMessage:
    return ToolMessage(_text(result), tool_call_id=call["id"] or "", name=call["name"])


def _tool_flow(
    tool: BaseTool | None, call: dict[str, Any], config: RunnableConfig
) -> Flow[ToolMessage]:
    """Run one tool call: its reply, or the error as a reply (a tool's failure is the model's
    to handle, not a crash)."""
    if tool is None:
        return _error(call, f"Error: there is no tool named '{call['name']}'")
    try:
        result = yield Call(tool, call["args"], config)
    except Exception as exc:
        return _error(call, f"Error: {type(exc).__name__}: {exc}")
    return _reply(call, result)


def _text(result: Any) -> str:
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, ensure_ascii=False)
    except TypeError:
        return str(result)


def call_summary(call: dict[str, Any]) -> tuple[str, str]:
    """A recorded call as shown to people: ``name(arg='value')``, and its result (prefixed
    ``error:`` when the tool failed). The CLI and the playground both print it."""
    args = ", ".join(f"{k}={v!r}" for k, v in call["args"].items())
    return f"{call['name']}({args})", ("error: " if call["error"] else "") + str(call["output"])


_LIMIT = "Tool call limit reached ({n}). Answer now with what you have, without calling tools."
_REPEATED = "You already have that result. Answer now with it, without calling tools."


class NoAnswerError(ModelError):
    """The tool-calling loop ended without an answer: the model's last reply was a tool call
    (or its JSON as text), or nothing."""


def _looks_like_a_call(text: str) -> bool:
    """A tool call written out as text (``{"tool"|"name": ..., "arguments": ...}``), which is
    not an answer: models that were shown calls as JSON imitate them."""
    try:
        data = json.loads(text.strip(), strict=False)
    except ValueError:
        return False
    calls = data if isinstance(data, list) else [data]
    return bool(calls) and all(
        isinstance(c, dict)
        and bool({"tool", "name", "function"} & set(c))
        and bool({"arguments", "args", "parameters"} & set(c))
        for c in calls
    )


def _checked(answer: AIMessage, calls: int, config: RunnableConfig) -> AIMessage:
    """``answer``, if it is one."""
    text = answer.text.strip()
    if text and not answer.tool_calls and not _looks_like_a_call(text):
        return answer
    step = (config.get("metadata") or {}).get("eslabon_step")
    where = f"step '{step}': " if step else ""
    last = (
        f"a call to {answer.tool_calls[0]['name']}"
        if answer.tool_calls
        else f"a tool call written as text: {text[:200]}"
        if text
        else "empty"
    )
    raise NoAnswerError(
        f"{where}the model gave no answer after {calls} tool call(s); its last reply was {last}"
        "\n    fix: raise max_tool_calls or max_tokens, say in the system prompt when to answer, "
        "or use a stronger model"
    )


class ToolLoop:
    """A step's model with its tools bound, and the loop that answers its tool calls."""

    def __init__(
        self,
        with_tools: Runnable[Any, Any],
        without_tools: Runnable[Any, Any],
        tools: list[BaseTool],
        max_calls: int,
    ) -> None:
        self.with_tools = with_tools
        self.without_tools = without_tools  # for the last answer once the cap is reached
        self.tools = {t.name: t for t in tools}
        self.max_calls = max_calls

    def _record(self, call: dict[str, Any], reply: ToolMessage) -> dict[str, Any]:
        return {
            "name": call["name"],
            "args": call["args"],
            "output": reply.content,
            "error": reply.status == "error",
        }

    def _turn(
        self, answer: AIMessage, messages: list[BaseMessage], records: list[dict[str, Any]]
    ) -> tuple[list[tuple[dict[str, Any], ToolMessage | None]], str | None]:
        """The tool calls of ``answer`` paired with a ready reply (None: run the tool), and the
        message asking for the last answer when the loop must end after this turn."""
        messages.append(answer)
        turn: list[tuple[dict[str, Any], ToolMessage | None]] = []
        repeated = False
        for call in answer.tool_calls:
            earlier = next(
                (r for r in records if r["name"] == call["name"] and r["args"] == call["args"]),
                None,
            )
            if earlier is not None:  # the result is in the conversation already
                repeated = True
                reply: ToolMessage | None = ToolMessage(
                    earlier["output"],
                    tool_call_id=call["id"] or "",
                    name=call["name"],
                    status="error" if earlier["error"] else "success",
                )
            elif len(records) + sum(r is None for _, r in turn) >= self.max_calls:
                reply = self._refused(call)
            else:
                reply = None
            turn.append((dict(call), reply))
        over = len(records) + sum(r is None for _, r in turn) >= self.max_calls
        last = _LIMIT.format(n=self.max_calls) if over else _REPEATED if repeated else None
        return turn, last

    def flow(
        self, messages: list[BaseMessage], config: RunnableConfig
    ) -> Flow[tuple[AIMessage, list[dict[str, Any]]]]:
        """The final answer and a record of every tool call made on the way."""
        messages, records = list(messages), list[dict[str, Any]]()
        while True:
            answer: AIMessage = yield Call(self.with_tools, messages, config)
            if not answer.tool_calls:
                return _checked(answer, len(records), config), records
            turn, last = self._turn(answer, messages, records)
            for call, reply in turn:
                if reply is None:
                    reply = yield from _tool_flow(self.tools.get(call["name"]), call, config)
                    records.append(self._record(call, reply))
                messages.append(reply)
            if last is not None:
                messages.append(HumanMessage(last))
                final = yield Call(self.without_tools, messages, config)
                return _checked(final, len(records), config), records

    def _refused(self, call: Any) -> ToolMessage:
        # every tool call needs an answer, or providers reject the next request
        return _error(call, _LIMIT.format(n=self.max_calls))
