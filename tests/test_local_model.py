"""The real bundled model (SmolLM2-135M-Instruct GGUF, via llama.cpp), no network, no key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage

from conftest import CHAINS, write
from eslabon import ModelError, load_chain
from eslabon.allow import Allow

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
    path = write(tmp_path, "model: {provider: local, max_tokens: 8}\nprompt: Hello!\n")
    chain = load_chain(path)
    chunks = [c["output"] for c in chain.stream({}) if c.get("output")]
    assert len(chunks) > 1
    model: Any = chain.steps[0].model
    # greedy: a sampled reply may end on its own inside 8 tokens (finish_reason "stop")
    reply = model.invoke("Count from one to one hundred.", temperature=0, seed=1)
    assert reply.usage_metadata["output_tokens"] <= 8
    assert reply.response_metadata["finish_reason"] == "length"


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
    assert set(result) == {*(s.id for s in chain.steps), "output"}
    assert all(isinstance(v, str) for v in result.values()) and result["output"].strip()


def test_llamacpp_path_runs_any_gguf(tmp_path: Path) -> None:
    from eslabon.local import bundled_model_path

    gguf = tmp_path / "modelo.gguf"
    gguf.symlink_to(bundled_model_path())
    path = write(tmp_path, "model: llamacpp:modelo.gguf\nparams: {max_tokens: 6}\nprompt: Hi\n")
    # the link leads out of the chain's folder, into site-packages: the user allows that folder
    chain = load_chain(path, allow=Allow.of(paths=[bundled_model_path().parent]))
    model: Any = chain.steps[0].model
    assert model.model_path == str(gguf.resolve())  # links are followed, then confined
    assert chain.invoke({})["output"].strip()
