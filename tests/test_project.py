"""eslabon.toml: model aliases found from the working directory upwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from eslabon import ChainConfigError, load_chain
from eslabon.chainfile.loader import validate_file
from eslabon.chat.modelspec import ModelRefError, parse_model_ref
from eslabon.trust.project import load_project
from helpers import unmetered, write


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "eslabon.toml").write_text(
        "[models]\n"
        'rapido = "openai:gpt-4o-mini"\n'
        'eco = "fake:echo"\n'
        'guion = {provider = "fake", responses = ["uno", "dos"]}\n'
        'propio = "llamacpp:modelos/m.gguf"\n',
        encoding="utf-8",
    )
    (tmp_path / "modelos").mkdir()
    (tmp_path / "modelos" / "m.gguf").write_bytes(b"GGUF")
    sub = tmp_path / "cadenas" / "dentro"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)  # found from the working directory upwards
    return tmp_path


def test_aliases_resolve_from_the_nearest_project_file(project: Path) -> None:
    assert load_project().file == project / "eslabon.toml"
    spec = parse_model_ref("rapido")
    assert (spec.provider, spec.name, spec.alias) == ("openai", "gpt-4o-mini", "rapido")
    assert parse_model_ref("guion").kwargs == {"responses": ["uno", "dos"]}


def test_relative_paths_in_aliases_resolve_against_the_project_root(project: Path) -> None:
    spec = parse_model_ref("propio")
    assert spec.base_dir == project and spec.name == "modelos/m.gguf"


def test_chain_files_use_aliases(project: Path) -> None:
    path = write(
        project / "cadenas",
        "model: guion\nsteps:\n  - {id: a, prompt: x}\n  - {id: b, prompt: '{a}'}\n",
    )
    assert validate_file(path) == []
    assert unmetered(load_chain(path).invoke({})) == {"a": "uno", "b": "dos", "output": "dos"}
    assert load_chain(path, model="eco").invoke({})["b"] == "x"


def test_project_can_redefine_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "eslabon.toml").write_text('[models]\nlocal = "fake:echo"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    chain = load_chain(write(tmp_path, "prompt: hola\n"))  # no model: the default, local
    assert chain.invoke({})["output"] == "hola"


def test_unknown_alias_lists_the_known_ones(project: Path) -> None:
    path = write(project, "model: rapidito\nprompt: x\n")
    [problem] = validate_file(path)
    assert "unknown model 'rapidito'" in problem.message
    assert problem.hint and "rapido" in problem.hint and "eco" in problem.hint


def test_alias_loop_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "eslabon.toml").write_text('[models]\na = "b"\nb = "a"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelRefError, match="alias loop"):
        parse_model_ref("a")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models\n", "invalid TOML"),
        ("[modelos]\nx = 'fake:echo'\n", "did you mean 'models'?"),
        ("[models]\nx = 3\n", "alias 'x' must be"),
    ],
)
def test_bad_project_files(
    text: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "eslabon.toml").write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ChainConfigError) as info:
        load_project()
    assert message in str(info.value) and "eslabon.toml" in str(info.value)
