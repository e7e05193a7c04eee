"""Compiled chains on the fake models: exact messages, streaming, async, callbacks, composition."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableLambda

from eslabon import Chain, CompiledChain, FakeChatModel, InputError, Step, load_chain
from eslabon.chainfile.loader import spec_from_yaml
from eslabon.chainfile.spec import Assertion, TestCase
from eslabon.running.compile import compile_chain
from helpers import CHAINS, timeless, unmetered, unmetered_chunks, write

CANONICAL = CHAINS / "analizar_planificar_resolver.yaml"


def calls_of(chain: CompiledChain) -> list[list[BaseMessage]]:
    models = {id(s.model): s.model for s in chain.steps}
    assert len(models) == 1, "steps with the same model share one instance"
    model = next(iter(models.values()))
    assert isinstance(model, FakeChatModel)
    return model.calls


def test_each_step_receives_exact_messages_with_earlier_outputs() -> None:
    chain = load_chain(CANONICAL, model={"provider": "fake", "responses": ["A1", "P2", "S3"]})
    assert isinstance(chain, Runnable)
    result = chain.invoke({"problema": "sumar 2+2"})
    assert unmetered(result) == {"analisis": "A1", "plan": "P2", "solucion": "S3", "output": "S3"}
    stats = result["stats"]
    assert list(stats["steps"]) == ["analisis", "plan", "solucion"]
    assert (stats["calls"], stats["attempts"], stats["models"]) == (3, 3, ["fake"])
    first, second, third = calls_of(chain)
    assert first == [
        SystemMessage("Eres un analista cuidadoso."),
        HumanMessage("Analiza el problema:\nsumar 2+2"),
    ]
    assert second == [
        HumanMessage("Problema:\nsumar 2+2\n\nAnálisis:\nA1\n\nIdentifica los pasos a seguir.")
    ]
    assert third == [HumanMessage("Resuelve paso a paso siguiendo este plan:\nP2")]


def test_values_are_inserted_as_data_never_retemplated() -> None:
    chain = load_chain(CANONICAL, model={"provider": "fake", "responses": ["{problema} }}"]})
    nasty = "usa {problema} y {{ y {0} y {x.__class__}"
    chain.invoke({"problema": nasty})
    first, second, _ = calls_of(chain)
    assert first[1].content == "Analiza el problema:\n" + nasty
    assert second[0].content == (
        f"Problema:\n{nasty}\n\nAnálisis:\n{{problema}} }}}}\n\nIdentifica los pasos a seguir."
    )


def test_literal_braces_in_templates() -> None:
    chain = compile_chain(Chain(inputs={"x": "X"}, prompt='JSON: {{"a": {x}}}'), model="fake:echo")
    assert chain.invoke({"x": "1"})["output"] == 'JSON: {"a": 1}'


def test_few_shot_pairs_come_between_system_and_prompt(tmp_path: Path) -> None:
    (tmp_path / "more.csv").write_text("input,output\ngato,cat\n", encoding="utf-8")
    (tmp_path / "more.yaml").write_text("- {input: sol, output: sun}\n", encoding="utf-8")
    path = write(
        tmp_path,
        "inputs: {frase: x}\n"
        "system: Traduce.\n"
        "examples:\n"
        "  - {input: hola, output: hello}\n"
        "  - file: more.csv\n"
        "  - file: more.yaml\n"
        "prompt: '{frase}'\n",
    )
    chain = load_chain(path, model={"provider": "fake", "responses": ["dog"]})
    assert unmetered(chain.invoke({"frase": "perro"})) == {"output": "dog"}
    [messages] = calls_of(chain)
    assert messages == [
        SystemMessage("Traduce."),
        HumanMessage("hola"),
        AIMessage("hello"),
        HumanMessage("gato"),
        AIMessage("cat"),
        HumanMessage("sol"),
        AIMessage("sun"),
        HumanMessage("perro"),
    ]


def test_stream_yields_chunks_keyed_by_step_then_output() -> None:
    chain = load_chain(
        CANONICAL, model={"provider": "fake", "responses": ["uno dos", "tres", "x y"]}
    )
    chunks = list(chain.stream({"problema": "p"}))
    assert unmetered_chunks(chunks) == [
        {"analisis": "uno "},
        {"analisis": "dos"},
        {"plan": "tres"},
        {"solucion": "x "},
        {"solucion": "y"},
        {"output": "x y"},
    ]
    stats = chunks[-1]["stats"]
    assert list(stats["steps"]) == ["analisis", "plan", "solucion"] and stats["calls"] == 3
    assert stats["ttft_ms"] is not None  # streamed: the first token's time is known


async def test_async_invoke_stream_and_events() -> None:
    chain = load_chain(CANONICAL, model={"provider": "fake", "responses": ["a b", "c", "d e"]})
    assert (await chain.ainvoke({"problema": "p"}))["output"] == "d e"
    chunks = unmetered_chunks([c async for c in chain.astream({"problema": "p"})])
    assert chunks[0] == {"analisis": "a "} and chunks[-1] == {"output": "d e"}
    tokens: list[str] = []
    names: set[str] = set()
    async for event in chain.astream_events({"problema": "p"}, version="v2"):
        names.add(event["name"])
        if event["event"] == "on_chat_model_stream" and event["data"]["chunk"].content:
            tokens.append(event["data"]["chunk"].content)
    assert tokens == ["a ", "b", "c", "d ", "e"]
    assert "analizar_planificar_resolver" in names


def test_batch_and_abatch() -> None:
    chain = load_chain(CANONICAL, model="fake:echo")
    out = chain.batch([{"problema": "uno"}, {"problema": "dos"}])
    assert out[0]["analisis"].endswith("uno") and out[1]["analisis"].endswith("dos")


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.parents: list[UUID | None] = []
        self.tags: list[tuple[Any, Any]] = []

    def on_chain_start(self, serialized: Any, inputs: Any, **kw: Any) -> None:
        self.events.append(("chain_start", kw.get("name")))

    def on_chain_end(self, outputs: Any, **kw: Any) -> None:
        self.events.append(("chain_end", outputs))

    def on_chat_model_start(self, serialized: Any, messages: Any, **kw: Any) -> None:
        self.events.append(("model_start", messages[0][-1].content))
        self.parents.append(kw.get("parent_run_id"))
        self.tags.append((kw.get("tags"), (kw.get("metadata") or {}).get("eslabon_step")))


def test_callbacks_see_one_chain_run_with_model_runs_as_children() -> None:
    chain = load_chain(CANONICAL, model={"provider": "fake", "responses": ["A", "B", "C"]})
    rec = Recorder()
    result = chain.invoke({"problema": "q"}, config={"callbacks": [rec], "run_name": "mio"})
    assert rec.events[0] == ("chain_start", "mio")
    assert [e for e in rec.events if e[0] == "model_start"] == [
        ("model_start", "Analiza el problema:\nq"),
        ("model_start", "Problema:\nq\n\nAnálisis:\nA\n\nIdentifica los pasos a seguir."),
        ("model_start", "Resuelve paso a paso siguiendo este plan:\nB"),
    ]
    assert rec.events[-1] == ("chain_end", result)
    assert len(set(rec.parents)) == 1 and rec.parents[0] is not None


def test_model_runs_are_tagged_with_their_step() -> None:
    chain = load_chain(CANONICAL, model="fake:echo")
    rec = Recorder()
    config: Any = {"callbacks": [rec], "tags": ["mine"], "metadata": {"user": "ana"}}
    chain.invoke({"problema": "q"}, config=config)
    list(chain.stream({"problema": "q"}, config=config))
    expected = [
        (["mine", "step:analisis"], "analisis"),
        (["mine", "step:plan"], "plan"),
        (["mine", "step:solucion"], "solucion"),
    ]
    assert rec.tags == expected * 2


def test_pipe_composition_both_ways() -> None:
    chain = compile_chain(Chain(inputs={"texto": "t"}, prompt="Repite: {texto}"), model="fake:echo")
    pipeline = RunnableLambda(lambda s: {"texto": s.upper()}) | chain | (lambda r: r["output"])
    assert pipeline.invoke("hola") == "Repite: HOLA"
    streamed = "".join(
        c.get("output", "") for c in (RunnableLambda(lambda s: {"texto": s}) | chain).stream("a b")
    )
    assert streamed == "Repite: a b"


async def test_output_text_gives_the_answer_as_text_token_by_token() -> None:
    from operator import itemgetter

    from langchain_core.output_parsers import StrOutputParser

    chain = load_chain(
        CANONICAL, model={"provider": "fake", "responses": ["A1", "P2", "al fin sí"]}
    )
    text = chain.output_text()
    given = {"problema": "x"}
    assert text.invoke(given) == "al fin sí"
    assert list(text.stream(given)) == ["al ", "fin ", "sí"]  # the last step's tokens only
    assert [t async for t in text.astream(given)] == ["al ", "fin ", "sí"]
    assert await text.ainvoke(given) == "al fin sí"
    assert (text | StrOutputParser()).invoke(given) == "al fin sí"
    assert (text | StrOutputParser()).batch([given, given]) == ["al fin sí"] * 2
    # what output_text replaces: a dict is not text, and a plain function runs once, on the
    # whole result (docs/python.md)
    with pytest.raises(ValueError, match="valid string"):
        (chain | StrOutputParser()).invoke(given)
    assert list((chain | itemgetter("output")).stream(given)) == ["al fin sí"]


def test_output_text_of_an_earlier_step_and_of_a_structured_step(tmp_path: Path) -> None:
    path = write(
        tmp_path, "steps:\n  - {id: a, prompt: uno dos}\n  - {id: b, prompt: tres}\noutput: a\n"
    )
    text = load_chain(path, model="fake:echo").output_text()
    assert list(text.stream({})) == ["uno ", "dos"]  # not b's tokens, nor the closing output
    schema = "{type: object, properties: {n: {type: integer}}, required: [n]}"
    path = write(tmp_path, f"prompt: hola\noutput_schema: {schema}\n", "s.yaml")
    text = load_chain(path, model=FakeChatModel(responses=['{"n": 1}'])).output_text()
    assert text.invoke({}) == '{"n": 1}'  # JSON text, as later templates see it
    assert list(text.stream({})) == ['{"n": 1}']


def test_string_input_for_single_input_chains_and_defaults() -> None:
    chain = load_chain(CHAINS / "hola.yaml", model="fake:echo")
    assert chain.invoke({})["output"] == "Saluda a Mundo con una sola frase amable."
    assert chain.invoke("Ana")["output"] == "Saluda a Ana con una sola frase amable."
    schema = chain.get_input_schema().model_json_schema()
    assert schema["properties"]["nombre"]["default"] == "Mundo"


def test_missing_input_is_a_clear_error() -> None:
    chain = load_chain(CANONICAL, model="fake:echo")
    with pytest.raises(InputError, match=r"missing input 'problema' \(got 'problem'\?\)"):
        chain.invoke({"problem": "x"})
    with pytest.raises(InputError, match="takes a dict"):
        chain.invoke(42)  # type: ignore[arg-type]


def test_model_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, "model: {provider: fake, responses: [archivo]}\nprompt: hola\n")
    assert load_chain(path).invoke({})["output"] == "archivo"
    monkeypatch.setenv("ESLABON_MODEL", "fake:echo")
    assert load_chain(path).invoke({})["output"] == "hola"
    override = {"provider": "fake", "responses": ["override"]}
    assert load_chain(path, model=override).invoke({})["output"] == "override"


def test_default_model_is_local(tmp_path: Path) -> None:
    chain = load_chain(write(tmp_path, "prompt: hola\n"))
    assert chain.model_label == "local"
    assert type(chain.steps[0].model).__name__ == "ChatLlamaCppLocal"


def test_step_model_and_params_override(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "model: fake:echo\n"
        "params: {temperature: 0.5, max_tokens: 10}\n"
        "steps:\n"
        "  - {id: a, prompt: uno}\n"
        "  - id: b\n"
        "    prompt: '{a}'\n"
        "    model: local\n"
        '    params: {max_tokens: 7, stop: ["\\n"]}\n',
    )
    chain = load_chain(path)
    a, b = chain.steps
    assert type(a.model).__name__ == "EchoChatModel"
    local: Any = b.model
    assert (local.temperature, local.max_tokens, local.stop) == (0.5, 7, ["\n"])
    # an explicit override replaces every model, step overrides included
    overridden = load_chain(path, model="fake:echo")
    assert {type(s.model).__name__ for s in overridden.steps} == {"EchoChatModel"}


def test_output_can_name_an_earlier_step(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "steps:\n  - {id: a, prompt: uno}\n  - {id: b, prompt: dos}\noutput: a\n",
    )
    chain = load_chain(path, model="fake:echo")
    assert unmetered(chain.invoke({})) == {"a": "uno", "b": "dos", "output": "uno"}
    assert unmetered_chunks(list(chain.stream({})))[-1] == {"output": "uno"}


def test_chain_built_in_code_matches_the_file() -> None:
    spec = Chain(
        name="analizar_planificar_resolver",
        description="Divide un problema en tres llamadas encadenadas.",
        model="local",
        params={"temperature": 0.2, "max_tokens": 256},
        inputs={"problema": "El problema a resolver"},
        steps=[
            Step(
                id="analisis",
                system="Eres un analista cuidadoso.",
                prompt="Analiza el problema:\n{problema}",
            ),
            Step(
                id="plan",
                prompt="Problema:\n{problema}\n\nAnálisis:\n{analisis}\n\n"
                "Identifica los pasos a seguir.",
            ),
            Step(id="solucion", prompt="Resuelve paso a paso siguiendo este plan:\n{plan}"),
        ],
        output="solucion",
        tests=[
            TestCase(
                name="manzanas",
                inputs={"problema": "Tengo 3 manzanas y me como una. ¿Cuántas me quedan?"},
                expect=[
                    Assertion(regex="\\w", step="analisis"),
                    Assertion(regex="\\w", step="plan"),
                    Assertion(regex="\\w"),
                    Assertion(received="problema", step="analisis"),
                    Assertion(received="analisis", step="plan"),
                    Assertion(received="plan"),
                    Assertion(max_tokens=768),
                ],
            )
        ],
    )
    assert spec.to_data() == spec_from_yaml(CANONICAL).to_data()
    a = compile_chain(spec, model="fake:echo").invoke({"problema": "x"})
    b = load_chain(CANONICAL, model="fake:echo").invoke({"problema": "x"})
    assert unmetered(a) == unmetered(b)
    assert timeless(a["stats"]) == timeless(b["stats"])  # the same calls; only timings differ


def test_a_ready_langchain_model_can_be_passed() -> None:
    model = FakeChatModel(responses=["listo"])
    chain = load_chain(CHAINS / "hola.yaml", model=model)
    assert chain.invoke({})["output"] == "listo"
    assert chain.steps[0].model is model
