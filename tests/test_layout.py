"""Modules live in subpackages by concern; each one's former flat path imports the same module."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys

import pytest

import eslabon
from helpers import ROOT

PACKAGE = ROOT / "src" / "eslabon"
TOP_LEVEL = {"__init__.py", "errors.py", "tools.py", "testing.py"}  # the public top


def test_every_module_lives_in_its_concern() -> None:
    assert {p.name for p in PACKAGE.glob("*.py")} == TOP_LEVEL
    placed = {
        f"{p.parent.name}.{p.stem}" for p in PACKAGE.glob("*/*.py") if p.name != "__init__.py"
    }
    assert placed == {f"{package}.{name}" for name, package in eslabon.MOVED.items()}


@pytest.mark.parametrize("name", sorted(eslabon.MOVED))
def test_a_former_path_is_the_same_module(name: str) -> None:
    new = importlib.import_module(f"eslabon.{eslabon.MOVED[name]}.{name}")
    old = importlib.import_module(f"eslabon.{name}")
    assert old is new and new.__spec__ is not None
    assert new.__name__ == new.__spec__.name == f"eslabon.{eslabon.MOVED[name]}.{name}"


def test_the_paths_the_docs_name_still_import() -> None:
    # docs/python.md and users' code name these; a fresh interpreter, as a user's script
    code = (
        "from eslabon.local import ChatLlamaCppLocal, bundled_model_path\n"
        "from eslabon.retrieval import build_embeddings, KeywordRetriever\n"
        "from eslabon.batch import run_batch, read_rows\n"
        "from eslabon.pool import EndpointPool\n"
        "from eslabon.registry import register_retriever\n"
        "from eslabon.structured import OutputSchema\n"
        "from eslabon.toolcalls import ToolLoop\n"
        "from eslabon.spec import json_schema\n"
        "from eslabon.allow import Allow\n"
        "import eslabon.transport, eslabon.indexing, eslabon.llamaindex\n"
        "import eslabon.chat.local as real\n"
        "assert sys.modules['eslabon.local'] is real\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr


def test_objects_pickle_under_their_real_module() -> None:
    from eslabon.modelspec import ModelRefError  # the former path

    error = ModelRefError("no such provider", "use openai:MODEL")
    assert type(error).__module__ == "eslabon.chat.modelspec"
    assert type(pickle.loads(pickle.dumps(error))) is ModelRefError
