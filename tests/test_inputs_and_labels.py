"""What a chain takes and what it ran on: unknown inputs are refused, each step names its model."""

from __future__ import annotations

from pathlib import Path

import pytest

from eslabon import FakeChatModel, InputError, load_chain
from helpers import CHAINS, write


def test_an_input_the_chain_does_not_take_is_refused_with_a_suggestion() -> None:
    chain = load_chain(CHAINS / "hola.yaml", model="fake:echo")  # nombre has a default
    # a typo would otherwise leave 'nombre' at its default, unnoticed
    with pytest.raises(InputError, match=r"has no input 'nombr' \(did you mean 'nombre'\?\)"):
        chain.invoke({"nombr": "Ana"})
    with pytest.raises(InputError, match="it takes: nombre"):
        list(chain.stream({"nombre": "Ana", "extra": "1"}))
    assert chain.invoke({"nombre": "Ana"})["output"].startswith("Saluda a Ana")


def test_a_missing_input_is_still_said_first() -> None:
    chain = load_chain(CHAINS / "analizar_planificar_resolver.yaml", model="fake:echo")
    with pytest.raises(InputError, match=r"missing input 'problema' \(got 'problem'\?\)"):
        chain.invoke({"problem": "x"})


def test_history_is_taken_by_chains_that_keep_a_conversation() -> None:
    chain = load_chain(CHAINS / "conversacion.yaml", model=FakeChatModel(responses=["¡Hola!"]))
    turns = [("human", "hola"), ("ai", "¡Hola!")]
    assert chain.invoke({"mensaje": "¿qué tal?", "history": turns})["output"] == "¡Hola!"
    plain = load_chain(CHAINS / "hola.yaml", model="fake:echo")
    with pytest.raises(InputError, match="has no input 'history'"):
        plain.invoke({"history": turns})


def test_each_step_names_the_model_it_runs_on(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "model: fake:echo\nsteps:\n  - {id: a, prompt: hola}\n"
        "  - {id: b, model: {provider: fake, responses: [x]}, prompt: '{a}'}\n",
    )
    chain = load_chain(path)
    assert [s.label for s in chain.steps] == ["fake:echo", "fake"]
    assert load_chain(path, model="fake:echo").steps[1].label == "fake:echo"  # an override wins
    assert load_chain(CHAINS / "hola.yaml").steps[0].label == "local"  # the built-in alias
    assert load_chain(path, model=FakeChatModel(responses=["x"])).steps[0].label == "FakeChatModel"


def test_a_project_alias_is_shown_with_its_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "eslabon.toml").write_text('[models]\neco = "fake:echo"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    chain = load_chain(write(tmp_path, "model: eco\nprompt: hola\n"))
    assert chain.steps[0].label == "eco (fake:echo)"
