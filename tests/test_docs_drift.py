"""What the docs quote from eslabon's output is what eslabon prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from eslabon.chainfile.spec import Step
from helpers import ROOT

PAGES = [ROOT / "docs" / "chains.md", ROOT / "docs" / "es" / "08-errores.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_quoted_lists_of_step_keys_are_the_real_ones(page: Path) -> None:
    quoted = re.findall(r"valid keys here: ([a-z_, ]+)\n", page.read_text(encoding="utf-8"))
    assert quoted, f"{page.name} quotes no list of keys"
    for keys in quoted:
        assert keys.split(", ") == list(Step.model_fields)


def test_the_rag_page_shows_sources_as_indexing_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tutorial page 06 indexes ``chains/docs`` from the project root; the ``source`` it shows in
    ``{context}`` must be the one that command stores."""
    from eslabon.rag.indexing import index_paths, open_store

    monkeypatch.chdir(ROOT)
    page = (ROOT / "docs" / "es" / "06-rag.md").read_text(encoding="utf-8")
    command = re.search(r"eslabon index (\S+) --into chroma:(\w+)", page)
    assert command is not None
    store = open_store(command[2], path=str(tmp_path / "chroma"))
    index_paths([command[1]], store)
    sources = {m["source"] for m in store.get(include=["metadatas"])["metadatas"]}
    shown = re.findall(r"\[1\] \(source: ([^)]+)\)", page)
    assert shown and set(shown) <= sources, (shown, sources)


def test_the_readme_layout_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("\n## ")] if "\n## " in layout else layout
    package = ROOT / "src" / "eslabon"
    modules = {p.name for p in package.rglob("*.py") if p.name != "__init__.py"}
    modules.add("__init__.py")  # the top level's is the public API, and named
    named = set(re.findall(r"[a-z_]+\.py", layout))
    assert modules - named == set(), "README's Layout leaves out these modules"
    assert named - modules == set(), "README's Layout names modules that do not exist"
