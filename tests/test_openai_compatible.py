"""A real OpenAI-compatible server: llama_cpp.server serving the bundled GGUF on 127.0.0.1.

The same chain file runs on it through ``provider: openai`` + ``base_url``, as it would on vLLM,
LM Studio or TGI: multi-step, streaming, params, a key from the environment, structured output.
The server is the session's (``llama_server`` in conftest.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from eslabon import load_chain
from helpers import CHAINS, unmetered_chunks, write

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def server_url(llama_server: str) -> str:
    return llama_server


def model(url: str, **extra: Any) -> dict[str, Any]:
    return {"provider": "openai", "name": "smollm2", "base_url": url, **extra}


def test_multi_step_chain_on_a_real_openai_compatible_server(
    server_url: str, tmp_path: Path
) -> None:
    # the canonical chain's shape, with short answers to keep the test quick
    text = (CHAINS / "analizar_planificar_resolver.yaml").read_text(encoding="utf-8")
    path = write(tmp_path, text.replace("max_tokens: 256", "max_tokens: 24"))
    chain = load_chain(path, model=model(server_url))
    result = chain.invoke({"problema": "Tengo 3 manzanas y me como una."})
    assert all(result[k].strip() for k in ("analisis", "plan", "solucion"))
    assert result["output"] == result["solucion"]


def test_streaming_and_params(server_url: str, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "params: {temperature: 0, max_tokens: 12, seed: 1, top_k: 20}\n"
        "steps:\n  - {id: a, prompt: 'Say hello.'}\n  - {id: b, prompt: 'Repeat: {a}'}\n",
    )
    chain = load_chain(path, model=model(server_url))
    chunks = list(chain.stream({}))
    text = unmetered_chunks(chunks)
    a_tokens = [c["a"] for c in text if "a" in c]
    assert len(a_tokens) > 1  # token by token, over SSE
    assert text[-1]["output"] == "".join(c["b"] for c in text if "b" in c)
    again = chain.invoke({})  # temperature 0 and a seed: the same answer as streamed
    assert again["a"] == "".join(a_tokens)
    streamed, invoked = chunks[-1]["stats"], again["stats"]
    usage = invoked["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert invoked["cost"] is None  # a server of one's own: OpenAI's prices do not apply
    picked = ("calls", "attempts", "cost", "models")
    assert {k: streamed[k] for k in picked} == {k: invoked[k] for k in picked}
    # llama_cpp.server (0.3) sends no usage in a streamed reply, stream_options or not: the
    # streamed run's usage is then unknown (None), never a partial count
    assert streamed["usage"] in (None, usage)


def test_api_key_env_is_sent(server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_SERVER_KEY", "anything-goes-here")
    chain = load_chain(
        CHAINS / "hola.yaml", model=model(server_url, api_key_env="LOCAL_SERVER_KEY")
    )
    assert chain.invoke({"nombre": "Ana"})["output"].strip()


def test_structured_output_through_a_forced_function_call(server_url: str) -> None:
    # llama_cpp.server refuses response_format json_schema (HTTP 500) but constrains a forced
    # function call with a grammar: structured_method picks that way instead
    ref = model(server_url, structured_method="function_calling")
    chain = load_chain(CHAINS / "extraer_persona.yaml", model=ref)
    person = chain.invoke({"texto": "María tiene 34 años y vive en Sevilla."})["output"]
    assert set(person) == {"nombre", "edad", "ciudad", "profesion", "idiomas"}
    assert isinstance(person["edad"], int) and isinstance(person["idiomas"], list)
