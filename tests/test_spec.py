"""The spec object: YAML round-trip, JSON Schema in sync, public API pinned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import eslabon
from eslabon import Chain, ChainConfigError, spec_from_yaml
from eslabon.chainfile.loader import load_spec
from eslabon.chainfile.spec import json_schema, json_schema_text
from helpers import CHAINS, ROOT, write


@pytest.mark.parametrize("path", sorted(CHAINS.glob("*.yaml")), ids=lambda p: p.name)
def test_yaml_round_trip(path: Path, tmp_path: Path) -> None:
    spec = spec_from_yaml(path)
    text = spec.to_yaml()
    assert text.startswith("# yaml-language-server: $schema=")
    again = spec_from_yaml(text) if "file:" not in text else None
    if again is None:  # example files are relative to the chain file: write it beside them
        copy = path.parent / f"_roundtrip_{path.name}"
        try:
            spec.to_yaml(copy)
            again = load_spec(copy)
        finally:
            copy.unlink()
    assert again.to_data() == spec.to_data()


def test_to_yaml_writes_a_loadable_file(tmp_path: Path) -> None:
    spec = Chain(inputs={"x": {"description": "X", "default": "1"}}, prompt="{x}")
    out = tmp_path / "c.yaml"
    spec.to_yaml(out)
    assert load_spec(out).input_default("x") == "1"


def test_every_example_chain_references_the_schema() -> None:
    for path in CHAINS.glob("*.yaml"):
        assert path.read_text(encoding="utf-8").startswith(
            "# yaml-language-server: $schema=../docs/chain.schema.json"
        ), path


def test_committed_schema_is_in_sync() -> None:
    committed = (ROOT / "docs" / "chain.schema.json").read_text(encoding="utf-8")
    assert committed == json_schema_text(), "run `make schema` to refresh docs/chain.schema.json"


def test_schema_forbids_unknown_keys_and_lists_selector_types() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    text = json.dumps(schema)
    for kind in ("all", "length", "ngram", "semantic", "mmr"):
        assert f'"const": "{kind}"' in text or f'"{kind}"' in text
    assert schema["$defs"]["Step"]["additionalProperties"] is False
    assert schema["$defs"]["Step"]["required"] == ["id", "prompt"]


def test_public_api_is_pinned() -> None:
    assert sorted(eslabon.__all__) == sorted(
        [
            "Chain", "ChainConfigError", "CompiledChain", "ContextLengthError", "EchoChatModel",
            "EslabonError", "EslabonRuntimeError", "FakeChatModel", "InputError",
            "KeyRejectedError", "MissingCredentialsError", "MissingDependencyError", "ModelError",
            "ModelNotFoundError", "OutputValidationError", "Problem", "ProviderError",
            "ProviderUnavailableError", "RateLimitedError", "Step", "UserError", "build_model",
            "check_spec", "compile_chain", "load_chain", "spec_from_yaml",
        ]
    )  # fmt: skip
    from importlib.metadata import version

    assert eslabon.__version__ == version("eslabon")  # one version: the package's metadata
    for name in eslabon.__all__:
        assert getattr(eslabon, name) is not None
    with pytest.raises(AttributeError):
        eslabon.nothing_here  # noqa: B018


def test_model_mapping_typo_of_a_param_is_caught(tmp_path: Path) -> None:
    with pytest.raises(ChainConfigError, match="did you mean 'temperature'"):
        load_spec(write(tmp_path, "model: {provider: fake, temprature: 0.1}\nprompt: x\n"))
