"""``eslabon models``: every provider and OpenAI-compatible service, installed or not, its key
variable set or not (never the key), a service's base URL; fast, importing no provider SDK."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eslabon.chat.modelspec import PRESETS, PROVIDERS
from helpers import ROOT

EXE = str(Path(sys.executable).parent / "eslabon")
SECRET = "sk-models-NEVER-SHOWN-0123456789"
# provider SDKs and integrations: none may be imported to list them
SDKS = (
    "openai",
    "anthropic",
    "google",
    "cohere",
    "mistralai",
    "together",
    "ollama",
    "langchain_openai",
    "langchain_together",
    "langchain_anthropic",
    "langchain_google_genai",
    "langchain_mistralai",
    "langchain_cohere",
    "langchain_ollama",
    "transformers",
    "torch",
    "llama_cpp",
    "chromadb",
)


def _models(cwd: Path, **env: str) -> str:
    full = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    full.pop("ESLABON_MODEL", None)
    out = subprocess.run(
        [EXE, "models"], capture_output=True, text=True, cwd=cwd, env={**full, **env}, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert SECRET not in out.stdout + out.stderr
    return out.stdout


def _row(text: str, name: str) -> list[str]:
    [line] = [line for line in text.splitlines() if line.split()[:1] == [name]]
    return line.split()


def test_every_provider_and_service_with_its_key_state(tmp_path: Path) -> None:
    text = _models(tmp_path, TOGETHER_API_KEY=SECRET, AI21_API_KEY=SECRET)
    for name, info in PROVIDERS.items():
        row = _row(text, name)
        assert row[2] == (info.env_var or "-"), row
    assert _row(text, "together")[1:4] == ["yes", "TOGETHER_API_KEY", "yes"]
    assert _row(text, "mistralai")[2:4] == ["MISTRAL_API_KEY", "no"]
    assert _row(text, "ai21")[1:5] == [
        "https://api.ai21.com/studio/v1",
        "yes",
        "AI21_API_KEY",
        "yes",
    ]
    for name, url in [
        ("vllm", "http://localhost:8000/v1"),
        ("lmstudio", "http://localhost:1234/v1"),
        ("tgi", "http://localhost:8080/v1"),
        ("ovms", "http://localhost:8000/v3"),
    ]:
        assert _row(text, name)[1:5] == [url, "yes", "-", "-"]  # a local server: no key
    assert set(PRESETS) == {"ai21", "vllm", "lmstudio", "tgi", "ovms"}  # each one shown above


def test_aliases_to_services_show_what_they_add(tmp_path: Path) -> None:
    (tmp_path / "eslabon.toml").write_text(
        '[models]\njamba = "ai21:jamba-mini"\n'
        'gpu = {provider = "vllm", name = "qwen", base_url = "http://gpu1:8000/v1", '
        f'api_key = "{SECRET}"}}\n',
        encoding="utf-8",
    )
    text = _models(tmp_path)
    assert "alias jamba -> ai21:jamba-mini  (eslabon.toml)" in text  # its own URL unsaid
    assert "alias gpu -> vllm:qwen {'base_url': 'http://gpu1:8000/v1', 'api_key': '***'}" in text


def test_a_missing_integration_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from eslabon.interfaces.cli import app

    real = importlib.util.find_spec
    missing = ("langchain_together", "langchain_openai")
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    out = CliRunner().invoke(app, ["models"])
    assert out.exit_code == 0, out.output
    assert _row(out.output, "together")[-3:] == ["pip", "install", "'eslabon[together]'"]
    assert _row(out.output, "ai21")[2:6] == ["no:", "pip", "install", "'eslabon[openai]'"]


def test_models_imports_no_provider_sdk() -> None:
    code = (
        "import sys\n"
        "from eslabon.interfaces.cli import main\n"
        "sys.argv = ['eslabon', 'models']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({SDKS!r}))\n"
        "print('LOADED', loaded, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "LOADED []" in out.stderr, out.stderr
