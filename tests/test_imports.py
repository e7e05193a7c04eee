"""Code import from chain files is opt-in and checked; registered retrievers are trusted."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eslabon import FakeChatModel, UserError, load_chain
from eslabon.chainfile.loader import validate_file
from eslabon.rag.registry import register_retriever
from eslabon.trust.imports import ImportNotAllowedError, is_allowed, resolve_import
from helpers import write

PLUGIN = """
from langchain_core.documents import Document
from eslabon.rag.retrieval import StaticRetriever

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

    from eslabon.rag.retrieval import StaticRetriever

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


# -- own code beside the chain file (issue 13) ---------------------------------------------------
@pytest.fixture
def beside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project with ``mipaquete/`` (not installed) beside a chain file in ``cadenas/``."""
    (tmp_path / ".git").mkdir()  # the project root
    folder = tmp_path / "cadenas"
    (folder / "mipaquete").mkdir(parents=True)
    (folder / "mipaquete" / "__init__.py").write_text("", encoding="utf-8")
    (folder / "mipaquete" / "buscar.py").write_text(PLUGIN, encoding="utf-8")
    (folder / "otro.py").write_text("def make(k): raise SystemExit('imported!')\n")
    monkeypatch.chdir(tmp_path)
    yield folder
    for name in [m for m in sys.modules if m.split(".")[0] in ("mipaquete", "otro", "colorsys")]:
        del sys.modules[name]


def test_an_allowed_package_beside_the_chain_is_found(beside: Path) -> None:
    path = python_chain(beside, "mipaquete.buscar:make")
    before = list(sys.path)
    assert run(path, allow_imports=["mipaquete"]) == "[1] (source: plugin)\nsecreto"
    assert sys.path == before  # found without putting the folder on the path


def test_not_allowed_it_is_not_even_looked_for(beside: Path) -> None:
    with pytest.raises(ImportNotAllowedError, match="--allow-import mipaquete"):
        load_chain(python_chain(beside, "mipaquete.buscar:make"), model="fake:echo")
    assert "mipaquete" not in sys.modules
    # allowing one package does not open the folder to the others beside it
    with pytest.raises(ImportNotAllowedError):
        load_chain(
            python_chain(beside, "otro:make"), model="fake:echo", allow_imports=["mipaquete"]
        )
    assert "otro" not in sys.modules


def test_an_installed_package_wins_over_a_folder_of_the_same_name(tmp_path: Path) -> None:
    from eslabon.trust.imports import chain_folder

    sys.modules.pop("colorsys", None)
    (tmp_path / "colorsys.py").write_text("def rgb_to_hls(*a): return 'from the folder'\n")
    with chain_folder(tmp_path):
        found = resolve_import("colorsys:rgb_to_hls", ["colorsys"])
    assert found(0.0, 0.0, 0.0) == (0.0, 0.0, 0.0)  # the standard library's


def test_a_link_out_of_the_folder_is_not_followed(tmp_path: Path) -> None:
    from eslabon.trust.imports import chain_folder

    outside = tmp_path / "fuera"
    (outside / "paquete_link").mkdir(parents=True)
    (outside / "paquete_link" / "__init__.py").write_text("def f(): return 1\n")
    chains = tmp_path / "cadenas"
    chains.mkdir()
    (chains / "paquete_link").symlink_to(outside / "paquete_link")
    with chain_folder(chains), pytest.raises(UserError, match="No module named 'paquete_link'"):
        resolve_import("paquete_link:f", ["paquete_link"])
    assert "paquete_link" not in sys.modules


def test_not_found_anywhere_says_where_it_looked(beside: Path) -> None:
    path = python_chain(beside, "nopaquete.x:make")
    with pytest.raises(UserError) as info:
        load_chain(path, model="fake:echo", allow_imports=["nopaquete"])
    text = str(info.value)
    assert "No module named 'nopaquete'" in text
    assert f"looked in: installed packages, {beside}, {beside.parent}" in text


def test_cli_allow_import_finds_the_package_beside_the_chain(beside: Path) -> None:
    import os
    import subprocess

    path = python_chain(beside, "mipaquete.buscar:make")
    exe = str(Path(sys.executable).parent / "eslabon")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [exe, "run", str(path), "-i", "q=x", "-m", "fake:echo", "--allow-import", "mipaquete"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path("/"),  # from anywhere: the chain's folder is what counts
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "secreto" in done.stdout
