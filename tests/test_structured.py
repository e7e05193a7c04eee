"""output_schema and tools in chain files, on the fake model (wire and local tests: elsewhere)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from eslabon import ChainConfigError, FakeChatModel, OutputValidationError, UserError, load_chain
from eslabon.chainfile.loader import validate_file
from eslabon.tools import calculadora
from eslabon.trust.imports import ImportNotAllowedError
from helpers import unmetered, unmetered_chunks, write

PERSONA = """\
inputs: {texto: Texto con una persona}
prompt: "Extrae la persona: {texto}"
output_schema:
  type: object
  properties:
    nombre: {type: string}
    edad: {type: integer, minimum: 0}
  required: [nombre, edad]
"""


def call(name: str, args: dict[str, Any], id_: str = "c1") -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": id_}])


def test_structured_output_is_a_validated_dict(tmp_path: Path) -> None:
    model = FakeChatModel(responses=['{"nombre": "Ana", "edad": 34}'])
    result = load_chain(write(tmp_path, PERSONA), model=model).invoke({"texto": "Ana, 34"})
    assert unmetered(result) == {"output": {"nombre": "Ana", "edad": 34}}
    schema = model.bound[0]["response_format"]
    assert schema["required"] == ["nombre", "edad"] and schema["title"] == "output"


def test_invalid_output_is_fed_back_then_raises_with_the_raw_text(tmp_path: Path) -> None:
    model = FakeChatModel(
        responses=['{"nombre": "Ana", "edad": -1}', '{"nombre": "Ana", "edad": 3}']
    )
    chain = load_chain(write(tmp_path, PERSONA), model=model)
    result = chain.invoke({"texto": "x"})
    assert result["output"]["edad"] == 3
    assert result["stats"]["calls"] == 2  # the answer asked again is a model call of its own
    retry = model.calls[1]
    assert retry[-2] == AIMessage('{"nombre": "Ana", "edad": -1}')
    assert (
        isinstance(retry[-1], HumanMessage)
        and "edad: -1 is less than the minimum" in retry[-1].text
    )

    bad = FakeChatModel(responses=["no es JSON", '{"nombre": 5}', '{"nombre": "x"}'])
    path = write(tmp_path, PERSONA + "retry: {attempts: 3, backoff: 0}\n", "r.yaml")
    with pytest.raises(OutputValidationError) as info:
        load_chain(path, model=bad).invoke({"texto": "x"})
    assert len(bad.calls) == 3 and info.value.attempts == 3
    assert info.value.raw == '{"nombre": "x"}'
    assert "'edad' is a required property" in info.value.errors
    assert "not valid JSON" in bad.calls[1][-1].text  # the first answer was not JSON at all


def test_later_steps_see_structured_output_as_json_and_the_result_keeps_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "inputs: {texto: x}\nsteps:\n"
        "  - id: persona\n    prompt: 'Extrae: {texto}'\n"
        "    output_schema: {type: object, properties: {nombre: {type: string}}}\n"
        "  - id: saludo\n    prompt: 'Saluda a {persona}'\n",
    )
    model = FakeChatModel(responses=['{"nombre": "Ñandú"}', "¡Hola!"])
    result = load_chain(path, model=model).invoke({"texto": "x"})
    assert unmetered(result) == {
        "persona": {"nombre": "Ñandú"},
        "saludo": "¡Hola!",
        "output": "¡Hola!",
    }
    assert model.calls[1][-1].text == 'Saluda a {"nombre": "Ñandú"}'


def test_streaming_and_async_give_the_structured_value(tmp_path: Path) -> None:
    model = FakeChatModel(responses=['{"nombre": "Ana", "edad": 1}'])
    chain = load_chain(write(tmp_path, PERSONA), model=model)
    chunks = list(chain.stream({"texto": "x"}))
    assert unmetered_chunks(chunks) == [{"output": {"nombre": "Ana", "edad": 1}}]
    assert chunks[-1]["stats"]["ttft_ms"] is None  # a structured answer comes whole, unstreamed
    assert asyncio.run(chain.ainvoke({"texto": "x"}))["output"]["nombre"] == "Ana"


def test_result_json_schema_includes_the_output_schema(tmp_path: Path) -> None:
    chain = load_chain(write(tmp_path, PERSONA), model="fake:echo")
    schema = chain.get_output_jsonschema()
    assert schema["properties"]["output"]["required"] == ["nombre", "edad"]


PYDANTIC = """
from pydantic import BaseModel, Field

class Persona(BaseModel):
    nombre: str
    edad: int = Field(ge=0)
"""


@pytest.fixture
def esquemas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "esquemas.py").write_text(PYDANTIC, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("esquemas", None)
    return write(
        tmp_path,
        "inputs: {texto: x}\nprompt: '{texto}'\noutput_schema: {pydantic: 'esquemas:Persona'}\n",
    )


def test_pydantic_output_schema_needs_an_import_allowance(esquemas: Path) -> None:
    with pytest.raises(ImportNotAllowedError, match="--allow-import esquemas"):
        load_chain(esquemas, model="fake:echo")
    assert "esquemas" not in sys.modules
    model = FakeChatModel(
        responses=['{"nombre": "Ana", "edad": -2}', '{"nombre": "Ana", "edad": 2}']
    )
    chain = load_chain(esquemas, model=model, allow_imports=["esquemas"])
    persona = chain.invoke({"texto": "x"})["output"]
    assert type(persona).__name__ == "Persona" and persona.edad == 2
    assert "edad: Input should be greater than or equal to 0" in model.calls[1][-1].text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("output_schema: {type: string}", "must describe an object"),
        ("output_schema: {type: object, properties: {a: {type: numero}}}", "not a valid JSON"),
        ("tools: ['eslabon.tools:calculadora']\noutput_schema: {type: object}", "not both"),
        ("max_tool_calls: 3", "'max_tool_calls' without 'tools'"),
        ("tools: [calculadora]", "is not an import path"),
    ],
)
def test_schema_and_tool_mistakes_are_reported(tmp_path: Path, text: str, message: str) -> None:
    problems = validate_file(write(tmp_path, f"prompt: hola\n{text}\n"))
    assert problems and message in problems[0].message, problems
    assert problems[0].line is not None


# -- tools ------------------------------------------------------------------------------------
CALCULA = """\
inputs: {pregunta: x}
prompt: "{pregunta}"
tools: [eslabon.tools:calculadora]
"""


def test_the_tool_loop_calls_the_tool_and_feeds_the_result_back(tmp_path: Path) -> None:
    model = FakeChatModel(
        responses=[call("calculadora", {"expresion": "17*23"}), "17 por 23 son 391."]
    )
    result = load_chain(write(tmp_path, CALCULA), model=model).invoke({"pregunta": "17*23?"})
    assert result["output"] == "17 por 23 son 391."
    assert result["tool_calls"] == [
        {
            "step": "output",
            "name": "calculadora",
            "args": {"expresion": "17*23"},
            "output": "391",
            "error": False,
        }
    ]
    [tool] = model.bound[0]["tools"]
    assert tool["function"]["name"] == "calculadora"
    assert tool["function"]["parameters"]["properties"]["expresion"]["type"] == "string"
    reply = model.calls[1][-1]
    assert isinstance(reply, ToolMessage) and reply.content == "391" and reply.tool_call_id == "c1"


def test_tool_errors_go_back_to_the_model(tmp_path: Path) -> None:
    model = FakeChatModel(
        responses=[
            call("calculadora", {"expresion": "__import__('os')"}),
            call("no_existe", {}, "c2"),
            "No puedo.",
        ]
    )
    result = load_chain(write(tmp_path, CALCULA), model=model).invoke({"pregunta": "x"})
    assert result["output"] == "No puedo."
    first, second = model.calls[1][-1], model.calls[2][-1]
    assert isinstance(first, ToolMessage) and first.status == "error"
    assert "not allowed in an arithmetic expression" in first.text
    assert "no tool named 'no_existe'" in second.text
    assert [(c["name"], c["error"]) for c in result["tool_calls"]] == [
        ("calculadora", True),
        ("no_existe", True),
    ]


def test_max_tool_calls_ends_the_loop_with_an_answer_without_tools(tmp_path: Path) -> None:
    model = FakeChatModel(
        responses=[
            call("calculadora", {"expresion": "1+1"}),
            call("calculadora", {"expresion": "2+2"}),
            "4",
        ]
    )
    path = write(tmp_path, CALCULA + "max_tool_calls: 2\n")
    chain = load_chain(path, model=model)
    result = chain.invoke({"pregunta": "x"})
    assert len(result["tool_calls"]) == 2
    assert len(model.calls) == 3 and "tools" not in model.bound[2]  # the last call has none
    assert "Tool call limit reached (2)" in model.calls[2][-1].text
    assert result["output"] == "4"  # (a tool call there is NoAnswerError: tests/test_toolcalls.py)


def test_tools_stream_and_run_async(tmp_path: Path) -> None:
    responses: list[str | AIMessage] = [call("calculadora", {"expresion": "2**10"}), "1024"]
    chain = load_chain(write(tmp_path, CALCULA), model=FakeChatModel(responses=responses))
    chunks = unmetered_chunks(list(chain.stream({"pregunta": "x"})))
    assert chunks[0]["tool_calls"][0]["output"] == "1024" and chunks[-1] == {"output": "1024"}
    chain = load_chain(write(tmp_path, CALCULA), model=FakeChatModel(responses=responses))
    result = asyncio.run(chain.ainvoke({"pregunta": "x"}))
    assert result["output"] == "1024" and len(result["tool_calls"]) == 1


def test_user_tools_need_an_allowance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mis_tools.py").write_text(
        "def clima(ciudad: str) -> str:\n"
        '    """El tiempo que hace en una ciudad."""\n'
        "    return f'Sol en {ciudad}'\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mis_tools", None)
    path = write(tmp_path, "inputs: {q: x}\nprompt: '{q}'\ntools: ['mis_tools:clima']\n")
    with pytest.raises(ImportNotAllowedError):
        load_chain(path, model="fake:echo")
    model = FakeChatModel(responses=[call("clima", {"ciudad": "Lima"}), "Hace sol."])
    result = load_chain(path, model=model, allow_imports=["mis_tools"]).invoke({"q": "x"})
    assert result["tool_calls"][0]["output"] == "Sol en Lima"
    assert (
        model.bound[0]["tools"][0]["function"]["description"] == "El tiempo que hace en una ciudad."
    )


def test_a_model_without_tool_support_is_a_clear_error(tmp_path: Path) -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    with pytest.raises(UserError, match="does not support tool calling"):
        load_chain(write(tmp_path, CALCULA), model=FakeListChatModel(responses=["x"]))


def test_chain_level_schema_needs_the_shorthand(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "output_schema: {type: object}\nsteps:\n  - {id: a, prompt: hola}\n",
    )
    with pytest.raises(ChainConfigError, match="move 'output_schema' into a step"):
        load_chain(path)


@pytest.mark.parametrize(
    ("expression", "value"),
    [("17*23", 391), ("(1 + 2) * 3 / 2", 4.5), ("2^10", 1024), ("-7 // 2", -4), ("10 % 4", 2)],
)
def test_calculadora(expression: str, value: float) -> None:
    assert calculadora(expression) == value


@pytest.mark.parametrize(
    "expression", ["__import__('os').system('x')", "9**9**9", "a + 1", "True + 1", "[1] * 9"]
)
def test_calculadora_refuses_anything_but_arithmetic(expression: str) -> None:
    with pytest.raises(ValueError):
        calculadora(expression)


def test_tool_call_records_are_json(tmp_path: Path) -> None:
    model = FakeChatModel(responses=[call("calculadora", {"expresion": "1/3"}), "ok"])
    result = load_chain(write(tmp_path, CALCULA), model=model).invoke({"pregunta": "x"})
    assert json.loads(json.dumps(result))["tool_calls"][0]["output"].startswith("0.333")
