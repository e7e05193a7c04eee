"""The real bundled model (SmolLM2-135M-Instruct GGUF, via llama.cpp), no network, no key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage

from eslabon import ModelError, load_chain
from eslabon.trust.allow import Allow
from helpers import CHAINS, unmetered, write

pytestmark = pytest.mark.model


class Capture(BaseCallbackHandler):
    def __init__(self) -> None:
        self.prompts: list[list[BaseMessage]] = []
        self.tokens: list[str] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, **kw: Any) -> None:
        self.prompts.append(messages[0])

    def on_llm_new_token(self, token: str, **kw: Any) -> None:
        self.tokens.append(token)


def test_two_step_chain_carries_step_one_output_into_step_two(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "model: local\n"
        "params: {temperature: 0, max_tokens: 24, seed: 7}\n"
        "inputs: {tema: x}\n"
        "steps:\n"
        "  - id: idea\n"
        "    system: You are a helpful assistant.\n"
        "    prompt: 'Name one fact about {tema}.'\n"
        "  - id: resumen\n"
        "    prompt: 'Summarize in five words: {idea}'\n",
    )
    chain = load_chain(path)
    capture = Capture()
    result = chain.invoke({"tema": "the sun"}, config={"callbacks": [capture]})
    assert result["idea"].strip() and result["resumen"].strip()
    assert result["output"] == result["resumen"]
    first, second = capture.prompts
    assert first[-1].content == "Name one fact about the sun."
    assert second[-1].content == f"Summarize in five words: {result['idea']}"


def test_local_streaming_is_token_by_token_and_honors_max_tokens(tmp_path: Path) -> None:
    # greedy, and the prompt asks for far more than 8 tokens: the reply is the same on every
    # run, whichever tests ran before, and always runs to max_tokens
    path = write(
        tmp_path,
        "model: {provider: local, max_tokens: 8, temperature: 0}\n"
        "prompt: Count from one to one hundred.\n",
    )
    chain = load_chain(path)
    chunks = [c["output"] for c in chain.stream({}) if c.get("output")]
    assert len(chunks) > 1
    model: Any = chain.steps[0].model
    pieces = list(model.stream("Count from one to one hundred."))
    # usage when streaming too (LangChain's test_usage_metadata_streaming), on the last chunk
    usage = [p.usage_metadata for p in pieces if p.usage_metadata]
    assert len(usage) == 1 and usage[0]["output_tokens"] == 8 and usage[0]["input_tokens"] > 0
    finish = [p.response_metadata["finish_reason"] for p in pieces if p.response_metadata]
    assert finish == ["length"]
    reply = model.invoke("Count from one to one hundred.")
    assert reply.usage_metadata["output_tokens"] == 8
    assert reply.response_metadata["finish_reason"] == "length"
    assert reply.content == "".join(p.content for p in pieces) == "".join(chunks)


def test_a_seeded_chain_does_not_decide_what_a_later_unseeded_one_samples() -> None:
    # llama-cpp-python derives an unseeded call's seed from the last one set: a chain with
    # seed 7 fixed what every later chain sampled. Now each unseeded call draws its own.
    seeded = load_chain(
        CHAINS / "hola.yaml",
        model={"provider": "local", "temperature": 1.5, "seed": 7, "max_tokens": 24},
    )
    free = load_chain(
        CHAINS / "hola.yaml", model={"provider": "local", "temperature": 1.5, "max_tokens": 24}
    )
    model: Any = free.steps[0].model
    seeds = []
    for _ in range(3):
        seeded.invoke({"nombre": "Ana"})
        seeds.append(model._call_params()["seed"])
    assert len(set(seeds)) == 3 and 7 not in seeds  # the mechanism: a fresh seed per call
    outputs = set()
    for _ in range(3):  # the behavior: after the same seeded call, other samples
        seeded.invoke({"nombre": "Ana"})
        outputs.add(free.invoke({"nombre": "Ana"})["output"])
    assert len(outputs) > 1, outputs  # before: three times the same reply


def test_unknown_keywords_are_refused_with_a_suggestion() -> None:
    from pydantic import ValidationError

    from eslabon import UserError
    from eslabon.chat.local import ChatLlamaCppLocal, bundled_model_path

    path = str(bundled_model_path())
    for wrong, hint in (("api_key", None), ("timeout", None), ("temprature", "temperature")):
        with pytest.raises(ValidationError) as caught:
            ChatLlamaCppLocal(model_path=path, **{wrong: 1})
        message = str(caught.value)
        assert f"does not take '{wrong}'" in message
        assert hint is None or f"did you mean '{hint}'" in message
    model = ChatLlamaCppLocal(model_path=path, temperature=0.5)
    assert model.temperature == 0.5
    with pytest.raises(UserError, match="cannot switch it"):  # one GGUF per model object
        model.invoke("hola", model="otro.gguf")


def test_threads_come_from_the_mapping_the_environment_or_the_physical_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from eslabon import UserError
    from eslabon.chat.local import ChatLlamaCppLocal, bundled_model_path, default_threads

    path = str(bundled_model_path())
    monkeypatch.delenv("ESLABON_THREADS", raising=False)
    auto = default_threads()
    logical = len(os.sched_getaffinity(0))
    assert 1 <= auto <= max(1, logical - 1)  # never every logical core (a shared machine)
    monkeypatch.setenv("ESLABON_THREADS", "3")
    assert default_threads() == 3 and ChatLlamaCppLocal(model_path=path).n_threads == 3
    assert ChatLlamaCppLocal(model_path=path, n_threads=2).n_threads == 2  # the mapping wins
    monkeypatch.setenv("ESLABON_THREADS", "muchos")
    with pytest.raises(UserError, match="ESLABON_THREADS='muchos'"):
        default_threads()


def test_structured_output_closes_its_json_within_max_tokens(tmp_path: Path) -> None:
    # a free string could run on until max_tokens and leave invalid JSON; the grammar now
    # bounds free strings by the step's max_tokens
    path = write(
        tmp_path,
        "model: local\nparams: {temperature: 0, max_tokens: 40}\ninputs: {tema: x}\n"
        "prompt: 'Describe {tema} at great length, with every detail you know.'\n"
        "output_schema:\n  type: object\n  properties:\n"
        "    descripcion: {type: string}\n    detalles: {type: string}\n"
        "  required: [descripcion, detalles]\n",
    )
    for tema in ("the sea", "the history of Rome", "a long train journey"):
        result = load_chain(path).invoke({"tema": tema})["output"]
        assert set(result) == {"descripcion", "detalles"}, result


def test_same_seed_same_answer() -> None:
    chain = load_chain(
        CHAINS / "hola.yaml",
        model={"provider": "local", "temperature": 0.8, "seed": 3, "max_tokens": 16},
    )
    assert chain.invoke({})["output"] == chain.invoke({})["output"]


def test_prompt_longer_than_the_context_is_a_clear_error() -> None:
    chain = load_chain(CHAINS / "hola.yaml", model={"provider": "local", "n_ctx": 64})
    with pytest.raises(ModelError, match="context window"):
        chain.invoke({"nombre": "palabra " * 200})


def test_canonical_chain_runs_on_the_bundled_model() -> None:
    chain = load_chain(CHAINS / "analizar_planificar_resolver.yaml")
    capture = Capture()
    result = chain.invoke(
        {"problema": "Tengo 3 manzanas y me como una."}, config={"callbacks": [capture]}
    )
    assert len(capture.prompts) == 3
    assert result["analisis"] in capture.prompts[1][-1].content
    assert result["plan"] in capture.prompts[2][-1].content


# the canonical chain has its own test above; rag_curso needs an index (tests/test_rag_curso.py);
# extraer_persona and calculadora are run in tests/test_local_structured.py
OWN_TESTS = ("analizar_planificar_resolver", "rag_curso", "extraer_persona", "calculadora")


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(CHAINS.glob("*.yaml")) if p.stem not in OWN_TESTS],
    ids=lambda p: p.stem,
)
def test_every_example_chain_runs_on_the_bundled_model(path: Path) -> None:
    chain = load_chain(path)
    inputs = {name: "Ana" for name in chain.spec.input_names()}
    result = chain.invoke(inputs)
    assert chain.model_label == "local"
    assert set(result) == {*(s.id for s in chain.steps), "output", "stats"}
    texts = unmetered(result)
    assert all(isinstance(v, str) for v in texts.values()) and texts["output"].strip()
    stats = result["stats"]
    assert stats["usage"]["input_tokens"] > 0 and stats["usage"]["output_tokens"] > 0
    assert stats["cost"] == 0.0 and stats["calls"] == len(chain.steps)  # local: free


def test_llamacpp_path_runs_any_gguf(tmp_path: Path) -> None:
    from eslabon.chat.local import bundled_model_path

    gguf = tmp_path / "modelo.gguf"
    gguf.symlink_to(bundled_model_path())
    path = write(tmp_path, "model: llamacpp:modelo.gguf\nparams: {max_tokens: 6}\nprompt: Hi\n")
    # the link leads out of the chain's folder, into site-packages: the user allows that folder
    chain = load_chain(path, allow=Allow.of(paths=[bundled_model_path().parent]))
    model: Any = chain.steps[0].model
    assert model.model_path == str(gguf.resolve())  # links are followed, then confined
    assert chain.invoke({})["output"].strip()
