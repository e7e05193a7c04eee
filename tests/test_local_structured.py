"""Structured output and tool calls on the real bundled model (llama.cpp grammars), no network."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator
from langchain_core.callbacks import BaseCallbackHandler

from eslabon import load_chain
from helpers import CHAINS

pytestmark = pytest.mark.model

# twenty short descriptions of people, one per line (bench/structured_local.py uses them too)
PEOPLE = (CHAINS / "ejemplos" / "personas.txt").read_text(encoding="utf-8").splitlines()


class CountCalls(BaseCallbackHandler):
    def __init__(self) -> None:
        self.calls = 0

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1


def test_twenty_prompts_give_schema_valid_json_on_the_first_try() -> None:
    chain = load_chain(CHAINS / "extraer_persona.yaml")
    schema = chain.steps[0].schema
    assert schema is not None
    validator = Draft202012Validator(schema.json_schema)
    counter = CountCalls()
    results = chain.batch([{"texto": t} for t in PEOPLE], {"callbacks": [counter]})
    for result in results:
        person = result["output"]
        assert isinstance(person, dict) and not list(validator.iter_errors(person)), person
    # the grammar makes every first answer valid: no validation retry was needed
    assert counter.calls == len(PEOPLE)
    # and the model reads the easy field most of the time (a 135M model: not always)
    ages = sum(str(r["output"]["edad"]) in text for r, text in zip(results, PEOPLE, strict=True))
    assert ages >= len(PEOPLE) // 2


@pytest.mark.parametrize(
    ("pregunta", "resultado"),
    [("¿Cuánto es 17 por 23?", "391"), ("Calcula 12*12", "144"), ("¿Cuánto es 9 más 4?", "13")],
)
def test_the_local_model_answers_arithmetic_through_the_calculator(
    pregunta: str, resultado: str
) -> None:
    # before: calculadora(expresion='17') three times and the tool-call JSON as the output; or
    # no call and a cut-off string (greedy, so the same every run)
    chain = load_chain(CHAINS / "calculadora.yaml")
    result = chain.invoke({"pregunta": pregunta})
    calls = result["tool_calls"]
    # first turn: the grammar allows only a call to one of the step's tools
    assert calls and calls[0]["name"] == "calculadora"
    assert set(calls[0]["args"]) == {"expresion"}
    assert calls[0]["output"] == resultado and not calls[0]["error"]
    assert 1 <= len(calls) <= 3  # max_tool_calls in the chain file
    output = result["output"]
    assert isinstance(output, str) and resultado in output
    assert '"tool"' not in output and '"arguments"' not in output  # never a call as the answer
