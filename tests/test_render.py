"""eslabon render: each provider's exact request body, offline, without a key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CHAINS, ROOT, write
from eslabon import Chain, UserError
from eslabon.render import render_requests

CANONICAL = Chain.from_yaml(CHAINS / "analizar_planificar_resolver.yaml")


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
    spec = Chain.from_yaml(CHAINS / "traductor.yaml")
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


def test_the_chains_own_model_name_is_kept(tmp_path: Path) -> None:
    spec = Chain.from_yaml(write(tmp_path, "model: openai:gpt-4.1-nano\nprompt: hola\n"))
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
    [calc] = render_requests(Chain.from_yaml(CHAINS / "calculadora.yaml"), "openai")
    assert calc["body"]["tools"][0]["function"]["name"] == "calculadora"
    [gemini] = render_requests(Chain.from_yaml(CHAINS / "extraer_persona.yaml"), "google_genai")
    config = gemini["body"]["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"]["required"][0] == "nombre"
    [claude] = render_requests(Chain.from_yaml(CHAINS / "extraer_persona.yaml"), "anthropic")
    assert claude["body"]["tool_choice"] == {"type": "tool", "name": "output"}
