"""invoke, ainvoke, stream and astream run one core (eslabon.running.runcore), and batch runs
invoke: every example chain and the failure cases give the same result (its stats included, but
for timings), the same callbacks and the same error on every path."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from eslabon import FakeChatModel, load_chain
from eslabon.errors import OutputValidationError
from eslabon.running.toolcalls import NoAnswerError
from helpers import CHAINS, timeless, unmetered, unmetered_chunks, write

PATHS = ("invoke", "ainvoke", "stream", "astream", "batch")
STREAMED = ("stream", "astream")


class Events(BaseCallbackHandler):
    """What callbacks see, in order (tokens left out: only a stream has them)."""

    run_inline = True  # the async paths call it in order too

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def _name(self, serialized: Any, kwargs: dict[str, Any]) -> str:
        return str(kwargs.get("name") or (serialized or {}).get("name") or "")

    def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        self.seen.append(("chain_start", self._name(serialized, kwargs)))

    def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
        self.seen.append(("chain_end", ""))

    def on_chain_error(self, error: BaseException, **kwargs: Any) -> None:
        self.seen.append(("chain_error", type(error).__name__))

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.seen.append(("model_start", json.dumps([m.text for m in messages[0]])))

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.seen.append(("model_end", ""))

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        self.seen.append(("model_error", type(error).__name__))

    def on_tool_start(self, serialized: Any, input_str: str, **kwargs: Any) -> None:
        self.seen.append(("tool_start", self._name(serialized, kwargs)))

    def on_tool_end(self, output: Any, **kwargs: Any) -> None:
        self.seen.append(("tool_end", ""))

    def on_tool_error(self, error: BaseException, **kwargs: Any) -> None:
        self.seen.append(("tool_error", type(error).__name__))

    def on_retriever_start(self, serialized: Any, query: str, **kwargs: Any) -> None:
        self.seen.append(("retriever_start", query))

    def on_retriever_end(self, documents: Any, **kwargs: Any) -> None:
        self.seen.append(("retriever_end", str(len(documents))))


def _sum(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """A stream's chunks added up, as LangChain adds them (texts and lists concatenate); the
    closing ``{"stats": ...}`` chunk (checked: last, alone) gives the result's stats."""
    total: dict[str, Any] = {}
    for chunk in unmetered_chunks(chunks):
        for key, value in chunk.items():
            total[key] = total[key] + value if key in total else value
    return {**total, "stats": chunks[-1]["stats"]}


def through(path: str, make: Callable[[], Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """Run a freshly made chain one way: its result (a stream's chunks added up), the
    callbacks seen, and the error raised (type and message), if any."""
    chain, events = make(), Events()
    config: Any = {"callbacks": [events]}
    result: Any = None
    error: tuple[str, str] | None = None
    try:
        if path == "invoke":
            result = chain.invoke(inputs, config)
        elif path == "ainvoke":
            result = asyncio.run(chain.ainvoke(inputs, config))
        elif path == "batch":
            [result] = chain.batch([inputs], config)
        elif path == "stream":
            result = _sum(list(chain.stream(inputs, config)))
        else:

            async def collect() -> list[dict[str, Any]]:
                return [c async for c in chain.astream(inputs, config)]

            result = _sum(asyncio.run(collect()))
    except Exception as exc:
        error = (type(exc).__name__, str(exc))
    return {"result": result, "events": events.seen, "error": error}


def assert_same_on_every_path(make: Callable[[], Any], inputs: dict[str, Any]) -> dict[str, Any]:
    runs = {path: through(path, make, inputs) for path in PATHS}
    first = runs["invoke"]
    for path in PATHS[1:]:
        assert runs[path]["error"] == first["error"], path
        assert runs[path]["events"] == first["events"], path
        result = runs[path]["result"]
        if result is None:  # it failed, as the first did
            assert first["result"] is None, path
            continue
        assert unmetered(result) == unmetered(first["result"]), path
        # the same calls, attempts, usage, cost and models on every path; latency_ms and
        # ttft_ms are timings, different on each run (and ttft_ms is only set when streamed)
        assert timeless(result["stats"]) == timeless(first["result"]["stats"]), path
    for path, run in runs.items():
        if run["result"] is not None and path not in STREAMED:
            assert run["result"]["stats"]["ttft_ms"] is None, path  # no token was streamed
    return first


# -- every example chain ------------------------------------------------------------------------
def _rag_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """chains/rag_curso.yaml in a project whose collection holds two documents."""
    from eslabon.rag.indexing import index_paths, open_store

    (tmp_path / "eslabon.toml").write_text("")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tokens.md").write_text("Un token es un trozo de palabra que el modelo predice.")
    (docs / "rag.md").write_text("RAG recupera pasajes y los pone en el contexto del modelo.")
    monkeypatch.chdir(tmp_path)
    index_paths([docs], open_store("curso", "local"), root=tmp_path)
    (tmp_path / "chains").mkdir()
    return Path(shutil.copy(CHAINS / "rag_curso.yaml", tmp_path / "chains"))


EXAMPLES: dict[str, tuple[Any, dict[str, Any]]] = {
    "hola": ("fake:echo", {"nombre": "Ana"}),
    "traductor": ("fake:echo", {"frase": "buenas noches"}),
    "nutricionista": ("fake:echo", {}),
    "analizar_planificar_resolver": ("fake:echo", {"problema": "3 manzanas menos 1"}),
    "extraer_persona": (
        lambda: FakeChatModel(
            responses=[
                '{"nombre": "Ana", "edad": 30, "ciudad": "Lima", "profesion": "médica", '
                '"idiomas": ["es"]}'
            ]
        ),
        {"texto": "Ana tiene 30 años"},
    ),
    "calculadora": (
        lambda: FakeChatModel(
            responses=[
                AIMessage(
                    "",
                    tool_calls=[{"name": "calculadora", "args": {"expresion": "2*3"}, "id": "c"}],
                ),
                "Son 6.",
            ]
        ),
        {"pregunta": "¿2 por 3?"},
    ),
    "conversacion": (
        "fake:echo",
        {"mensaje": "¿y ahora?", "history": [HumanMessage("hola"), AIMessage("¡hola!")]},
    ),
    "rag_curso": ("fake:echo", {"pregunta": "¿Qué es un token?"}),
}


def test_every_example_chain_is_covered() -> None:
    assert {p.stem for p in CHAINS.glob("*.yaml")} == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_chains_agree_on_every_path(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, inputs = EXAMPLES[name]
    path = _rag_project(tmp_path, monkeypatch) if name == "rag_curso" else CHAINS / f"{name}.yaml"
    seen = assert_same_on_every_path(
        lambda: load_chain(path, model=model() if callable(model) else model), inputs
    )
    assert seen["error"] is None and seen["result"]["output"]
    assert ("model_start", "") not in seen["events"] and len(seen["events"]) > 2
    stats = seen["result"]["stats"]
    assert stats["usage"]["total_tokens"] > 0 and stats["calls"] == stats["attempts"] >= 1


# -- failure cases --------------------------------------------------------------------------
CALCULA = (
    "inputs: {pregunta: x}\nprompt: '{pregunta}'\ntools: [eslabon.tools:calculadora]\n"
    "max_tool_calls: 2\n"
)


def _calls(n: int) -> list[str | AIMessage]:
    return [
        AIMessage(
            "", tool_calls=[{"name": "calculadora", "args": {"expresion": f"{i}+1"}, "id": "c"}]
        )
        for i in range(n)
    ]


def test_the_tool_call_cap_agrees_on_every_path(tmp_path: Path) -> None:
    path = write(tmp_path, CALCULA)
    # the model keeps calling: two run, then it is asked to answer without tools, and calls again
    seen = assert_same_on_every_path(
        lambda: load_chain(path, model=FakeChatModel(responses=_calls(5))), {"pregunta": "x"}
    )
    assert seen["error"] is not None and seen["error"][0] == NoAnswerError.__name__
    assert [e for e in seen["events"] if e[0] == "tool_start"] == [
        ("tool_start", "calculadora")
    ] * 2


def test_the_cap_then_an_answer_agrees_on_every_path(tmp_path: Path) -> None:
    path = write(tmp_path, CALCULA)
    seen = assert_same_on_every_path(
        lambda: load_chain(path, model=FakeChatModel(responses=[*_calls(2), "Listo: 3."])),
        {"pregunta": "x"},
    )
    assert seen["result"]["output"] == "Listo: 3." and len(seen["result"]["tool_calls"]) == 2
    assert seen["result"]["stats"]["calls"] == 3  # two turns that called the tool, the answer


def test_exhausted_structured_retries_agree_on_every_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "inputs: {t: x}\nprompt: '{t}'\nretry: {attempts: 2}\n"
        "output_schema: {type: object, properties: {n: {type: integer}}, required: [n]}\n",
    )
    seen = assert_same_on_every_path(
        lambda: load_chain(path, model=FakeChatModel(responses=['{"n": "tres"}', "no json"])),
        {"t": "x"},
    )
    assert seen["error"] is not None and seen["error"][0] == OutputValidationError.__name__
    assert sum(e[0] == "model_start" for e in seen["events"]) >= 2  # it asked again


class Overloaded(Exception):
    status_code = 503


class FailsMidway(FakeChatModel):
    """Says two words, then the provider fails (the whole reply fails when not streamed)."""

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        raise Overloaded("upstream overloaded")

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        yield ChatGenerationChunk(message=AIMessageChunk(content="Hola "))
        raise Overloaded("upstream overloaded")

    async def _agenerate(self, *args: Any, **kwargs: Any) -> ChatResult:
        raise Overloaded("upstream overloaded")

    async def _astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        yield ChatGenerationChunk(message=AIMessageChunk(content="Hola "))
        raise Overloaded("upstream overloaded")


def test_a_provider_error_mid_stream_agrees_on_every_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "inputs: {t: x}\nsteps:\n  - {id: a, prompt: '{t}'}\n  - {id: b, prompt: 'sobre {a}'}\n",
    )
    runs = {
        path_: through(path_, lambda: load_chain(path, model=FailsMidway()), {"t": "x"})
        for path_ in PATHS
    }
    errors = {p: r["error"] for p, r in runs.items()}
    assert len(set(errors.values())) == 1, errors  # one error, translated alike
    kind, message = errors["invoke"]
    assert kind == "ProviderUnavailableError" and "upstream overloaded" in message, message
    assert all(r["events"][-1] == ("chain_error", kind) for r in runs.values())
