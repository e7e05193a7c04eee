"""Structured output and tool calls on the real bundled model (llama.cpp grammars), no network."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator
from langchain_core.callbacks import BaseCallbackHandler

from conftest import CHAINS
from eslabon import load_chain

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


def test_the_local_model_calls_a_tool_through_the_loop() -> None:
    chain = load_chain(CHAINS / "calculadora.yaml")
    result = chain.invoke({"pregunta": "¿Cuánto es 17 por 23?"})
    calls = result["tool_calls"]
    # first turn: the grammar allows only a call to one of the step's tools
    assert calls and calls[0]["name"] == "calculadora"
    assert set(calls[0]["args"]) == {"expresion"}
    assert 1 <= len(calls) <= 3  # max_tool_calls in the chain file
    assert isinstance(result["output"], str)
