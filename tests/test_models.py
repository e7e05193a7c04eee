"""Model references: parsing, provider table, missing extras and keys, the local model adapter."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from eslabon import (
    ChainConfigError,
    MissingCredentialsError,
    MissingDependencyError,
    UserError,
    build_model,
)
from eslabon.chat.modelspec import PROVIDERS, ModelRefError, parse_model_ref


def test_every_langchain_provider_we_list_is_known_to_langchain() -> None:
    from langchain.chat_models.base import _BUILTIN_PROVIDERS

    for name, info in PROVIDERS.items():
        if info.via_langchain:
            assert name in _BUILTIN_PROVIDERS, name
            assert _BUILTIN_PROVIDERS[name][0].split(".")[0] == info.module


@pytest.mark.parametrize(
    ("ref", "provider", "name"),
    [
        ("openai:gpt-4o-mini", "openai", "gpt-4o-mini"),
        ("gemini:gemini-2.5-flash", "google_genai", "gemini-2.5-flash"),
        ("local", "local", "smollm2-135m-instruct"),
        ("fake:echo", "fake", "echo"),
        (
            {"provider": "ollama", "name": "llama3.2", "base_url": "http://127.0.0.1:1"},
            "ollama",
            "llama3.2",
        ),
    ],
)
def test_parse(ref: Any, provider: str, name: str) -> None:
    spec = parse_model_ref(ref)
    assert (spec.provider, spec.name) == (provider, name)


def test_mapping_extra_keys_become_constructor_kwargs() -> None:
    spec = parse_model_ref({"provider": "openai", "name": "m", "base_url": "http://127.0.0.1:9"})
    assert spec.kwargs == {"base_url": "http://127.0.0.1:9"}


@pytest.mark.parametrize(
    ("ref", "message", "hint"),
    [
        ("opnai:gpt-4o", "unknown provider 'opnai'", "did you mean 'openai'?"),
        ("claude-3-5-sonnet", "unknown model", "did you mean 'anthropic:claude-3-5-sonnet'?"),
        ("openai:", "needs a model name", "openai:MODEL-NAME"),
        ("fake:parrot", "unknown fake model", "fake:echo"),
        ("llamacpp:no/such/model.gguf", "GGUF file not found", ".gguf"),
        ("llamacpp:/no/such/model.gguf", "outside the chain's folder", "--allow-path"),
        (42, "a model is", None),
    ],
)
def test_bad_refs(ref: Any, message: str, hint: str | None) -> None:
    with pytest.raises(ModelRefError) as info:
        parse_model_ref(ref)
    assert message in info.value.message
    if hint:
        assert hint in (info.value.hint or "")


def test_llamacpp_relative_path_resolves_against_base_dir(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert parse_model_ref("llamacpp:m.gguf", tmp_path).name == "m.gguf"


def test_missing_key_names_the_variable_and_dotenv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).parent)  # no .env here
    with pytest.raises(MissingCredentialsError) as info:
        build_model("openai:gpt-4o-mini")
    text = str(info.value)
    assert "OPENAI_API_KEY" in text and ".env" in text
    assert isinstance(info.value, UserError)


def test_dotenv_in_working_directory_supplies_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import eslabon.chat.models as models

    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-from-dotenv-123456\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(models, "_ENV_LOADED", False)
    model: Any = build_model("openai:gpt-4o-mini", {"temperature": 0.3, "max_tokens": 12})
    assert model.openai_api_key.get_secret_value() == "sk-from-dotenv-123456"
    assert (model.model_name, model.temperature, model.max_tokens) == ("gpt-4o-mini", 0.3, 12)
    monkeypatch.delenv("OPENAI_API_KEY")


def test_missing_integration_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "langchain_google_genai" else real(name, *a),
    )
    with pytest.raises(MissingDependencyError) as info:
        build_model("google_genai:gemini-2.5-flash")
    assert "pip install 'eslabon[gemini]'" in str(info.value)


def test_provider_without_an_extra_names_its_package() -> None:
    if importlib.util.find_spec("langchain_groq") is not None:
        pytest.skip("langchain-groq is installed here")
    with pytest.raises(MissingDependencyError) as info:
        build_model("groq:llama-3.1-8b-instant")
    assert "fix: pip install langchain-groq" in str(info.value)


def test_missing_llama_cpp_names_the_local_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llama_cpp" else real(name, *a),
    )
    with pytest.raises(MissingDependencyError, match=r"eslabon\[local\]"):
        build_model("local")


def test_unknown_provider_at_build_time_is_a_config_error() -> None:
    with pytest.raises(ChainConfigError, match="did you mean 'openai'"):
        build_model("opnai:gpt-4o")


def test_fake_models() -> None:
    echo = build_model("fake:echo")
    assert echo.invoke("hola").text == "hola"
    assert [c.text for c in echo.stream("uno dos") if c.text] == ["uno ", "dos"]
    listed = build_model({"provider": "fake", "responses": ["a", "b"]})
    assert [listed.invoke("x").text for _ in range(3)] == ["a", "b", "a"]


def test_local_model_gets_params() -> None:
    model: Any = build_model(
        "local", {"temperature": 0.0, "max_tokens": 5, "top_p": 0.5, "seed": 1}
    )
    assert (model.temperature, model.max_tokens, model.top_p, model.seed) == (0.0, 5, 0.5, 1)
    assert Path(model.model_path).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert Path(model.model_path).is_file()


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ({"provider": "local", "n_ctxx": 512}, "did you mean 'n_ctx'?"),
        ({"provider": "local", "timeout": 3}, "in-process"),
        ({"provider": "fake", "respones": ["a"]}, "did you mean 'responses'?"),
    ],
)
def test_unknown_settings_of_local_and_fake_models(ref: dict[str, Any], message: str) -> None:
    with pytest.raises(ChainConfigError, match=message):
        build_model(ref)
