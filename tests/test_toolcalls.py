"""How the tool-calling loop ends (on the fake model): an answer, or NoAnswerError."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, ToolMessage

from eslabon import FakeChatModel, ModelError, load_chain
from eslabon.running.toolcalls import NoAnswerError
from helpers import write

CALCULA = """\
inputs: {pregunta: x}
prompt: "{pregunta}"
tools: [eslabon.tools:calculadora]
max_tool_calls: 3
"""


def call(args: dict[str, Any], id_: str = "c1") -> AIMessage:
    return AIMessage("", tool_calls=[{"name": "calculadora", "args": args, "id": id_}])


def test_a_repeated_call_is_not_run_again_and_the_model_is_asked_to_answer(
    tmp_path: Path,
) -> None:
    model = FakeChatModel(
        responses=[call({"expresion": "17*23"}), call({"expresion": "17*23"}, "c2"), "391"]
    )
    result = load_chain(write(tmp_path, CALCULA), model=model).invoke({"pregunta": "17*23?"})
    assert result["output"] == "391"
    assert [c["args"] for c in result["tool_calls"]] == [{"expresion": "17*23"}]  # run once
    last = model.calls[2]
    assert "tools" not in model.bound[2]  # the answer is asked for without tools
    repeat = last[-2]
    assert isinstance(repeat, ToolMessage) and repeat.content == "391"  # its earlier result
    assert repeat.tool_call_id == "c2"  # every call gets its reply
    assert "You already have that result" in last[-1].text


@pytest.mark.parametrize(
    "last",
    [
        call({"expresion": "1"}, "c9"),  # still calling after the cap
        AIMessage(json.dumps({"tool": "calculadora", "arguments": {"expresion": "17"}})),
        AIMessage('[{"name": "calculadora", "arguments": {"expresion": "17"}}]'),
        AIMessage("  "),
    ],
    ids=["a call", "a call as JSON text", "a list of calls as text", "nothing"],
)
def test_a_tool_call_or_nothing_is_never_the_answer(tmp_path: Path, last: AIMessage) -> None:
    model = FakeChatModel(
        responses=[
            call({"expresion": "1+1"}),
            call({"expresion": "2+2"}, "c2"),
            call({"expresion": "3+3"}, "c3"),
            last,
        ]
    )
    chain = load_chain(write(tmp_path, CALCULA), model=model)
    with pytest.raises(NoAnswerError, match=r"step 'output': the model gave no answer after 3"):
        chain.invoke({"pregunta": "x"})
    with pytest.raises(ModelError, match="fix: raise max_tool_calls"):  # a ModelError
        asyncio.run(
            load_chain(
                write(tmp_path, CALCULA),
                model=FakeChatModel(responses=[*model.responses]),
            ).ainvoke({"pregunta": "x"})
        )


def test_an_answer_that_merely_mentions_json_is_an_answer(tmp_path: Path) -> None:
    model = FakeChatModel(responses=[call({"expresion": "2+2"}), '{"resultado": 4}'])
    result = load_chain(write(tmp_path, CALCULA), model=model).invoke({"pregunta": "2+2?"})
    assert result["output"] == '{"resultado": 4}'
