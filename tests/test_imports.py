"""Code import from chain files is opt-in and checked; registered retrievers are trusted."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import write
from eslabon import FakeChatModel, load_chain
from eslabon.imports import ImportNotAllowedError, is_allowed, resolve_import
from eslabon.loader import validate_file
from eslabon.registry import register_retriever

PLUGIN = """
from langchain_core.documents import Document
from eslabon.retrieval import StaticRetriever

def make(k, palabra="hola"):
    return StaticRetriever(documents=[Document(palabra, metadata={"source": "plugin"})], k=k)

def not_a_retriever(k, palabra):
    return "text"
"""


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "misretrievers.py").write_text(PLUGIN, encoding="utf-8")
    (folder / "misretrievers_evil.py").write_text(PLUGIN, encoding="utf-8")
    (folder / "reexporta.py").write_text("from os import system\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.chdir(tmp_path)
    for name in ("misretrievers", "misretrievers_evil", "reexporta"):
        sys.modules.pop(name, None)
    return tmp_path


def python_chain(folder: Path, factory: str) -> Path:
    return write(
        folder,
        "inputs: {q: x}\n"
        f"retriever: {{type: python, factory: '{factory}', palabra: secreto, k: 1}}\n"
        "prompt: '{context}'\n",
    )


def run(path: Path, **kw: Any) -> str:
    model = FakeChatModel(responses=["ok"])
    load_chain(path, model=model, **kw).invoke({"q": "x"})
    return model.calls[0][-1].text


def test_imports_are_off_by_default_and_nothing_is_imported(plugins: Path) -> None:
    path = python_chain(plugins, "misretrievers:make")
    assert validate_file(path) == []  # validation never imports
    with pytest.raises(ImportNotAllowedError, match="--allow-import misretrievers"):
        load_chain(path, model="fake:echo")
    assert "misretrievers" not in sys.modules


def test_allowed_import_runs(plugins: Path) -> None:
    path = python_chain(plugins, "misretrievers:make")
    assert run(path, allow_imports=["misretrievers"]) == "[1] (source: plugin)\nsecreto"


def test_project_file_can_allow(plugins: Path) -> None:
    (plugins / "eslabon.toml").write_text('[allow]\nimports = ["misretrievers"]\n')
    assert run(python_chain(plugins, "misretrievers:make")).endswith("secreto")


def test_prefix_tricks_and_reexports_are_refused(plugins: Path) -> None:
    with pytest.raises(ImportNotAllowedError):
        load_chain(
            python_chain(plugins, "misretrievers_evil:make"),
            model="fake:echo",
            allow_imports=["misretrievers"],
        )
    assert "misretrievers_evil" not in sys.modules
    with pytest.raises(ImportNotAllowedError, match="really comes from 'posix'"):
        resolve_import("reexporta:system", ["reexporta"])
    assert not is_allowed("mypkg_evil.x", ["mypkg"]) and is_allowed("mypkg.sub", ["mypkg"])


def test_bad_factories(plugins: Path) -> None:
    from eslabon import UserError

    with pytest.raises(UserError, match="not a BaseRetriever"):
        load_chain(
            python_chain(plugins, "misretrievers:not_a_retriever"),
            model="fake:echo",
            allow_imports=["misretrievers"],
        )
    with pytest.raises(UserError, match="not an import path"):
        resolve_import("misretrievers.make", ["misretrievers"])
    missing = write(plugins, "inputs: {q: x}\nretriever: {type: python}\nprompt: '{context}'\n")
    [problem] = validate_file(missing)
    assert problem.path == "retriever.factory"


def test_registered_retrievers_are_trusted(tmp_path: Path) -> None:
    from langchain_core.documents import Document

    from eslabon.retrieval import StaticRetriever

    @register_retriever("palabras_test")
    def palabras(k: int, palabra: str) -> StaticRetriever:
        return StaticRetriever(documents=[Document(palabra, metadata={"source": "reg"})], k=k)

    path = write(
        tmp_path,
        "inputs: {q: x}\nretriever: {type: palabras_test, palabra: hola}\nprompt: '{context}'\n",
    )
    assert validate_file(path) == []
    assert run(path) == "[1] (source: reg)\nhola"
    typo = write(tmp_path, "inputs: {q: x}\nretriever: {type: palabra_test}\nprompt: x\n", "t.yaml")
    [problem] = validate_file(typo)
    assert "did you mean 'palabras_test'?" in (problem.hint or "")


def test_cli_allow_import(plugins: Path) -> None:
    import os
    import subprocess

    path = python_chain(plugins, "misretrievers:make")
    exe = str(Path(sys.executable).parent / "eslabon")
    env = {**os.environ, "PYTHONPATH": str(plugins / "plugins")}
    refused = subprocess.run(
        [exe, "run", str(path), "-i", "q=x", "-m", "fake:echo"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert refused.returncode == 2 and "--allow-import misretrievers" in refused.stderr
    allowed = subprocess.run(
        [exe, "run", str(path), "-i", "q=x", "-m", "fake:echo", "--allow-import", "misretrievers"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "secreto" in allowed.stdout


def test_an_installed_package_provides_a_retriever_by_entry_point(tmp_path: Path) -> None:
    """A real distribution installed by pip (into a target folder) registers ``type: temas``."""
    import os
    import subprocess

    source = tmp_path / "eslabon-temas"
    (source / "eslabon_temas").mkdir(parents=True)
    (source / "eslabon_temas" / "__init__.py").write_text(
        PLUGIN.replace("plugin", "temas-instalado"), encoding="utf-8"
    )
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "eslabon-temas"\nversion = "0.1"\n'
        '[project.entry-points."eslabon.retrievers"]\ntemas = "eslabon_temas:make"\n',
        encoding="utf-8",
    )
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    chain = write(
        tmp_path, "inputs: {q: x}\nretriever: {type: temas, palabra: hola}\nprompt: '{context}'\n"
    )
    exe = str(Path(sys.executable).parent / "eslabon")
    env = {**os.environ, "PYTHONPATH": str(site)}
    for args in (["validate", str(chain)], ["run", str(chain), "-i", "q=x", "-m", "fake:echo"]):
        done = subprocess.run([exe, *args], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
    assert "[1] (source: temas-instalado)\nhola" in done.stdout
    # without the package on the path, the same file is a clear mistake, not a crash
    done = subprocess.run([exe, "validate", str(chain)], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown retriever type 'temas'" in done.stdout + done.stderr
