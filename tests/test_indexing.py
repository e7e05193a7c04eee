"""eslabon index / search over real embedded Chroma: idempotent, replaces changed files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from eslabon import UserError
from eslabon.indexing import index_paths, open_store, parse_target, search


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "eslabon.toml").write_text("[models]\n", encoding="utf-8")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Tokens\n\nLos LLM predicen el siguiente token del texto.\n")
    (docs / "b.html").write_text(
        "<html><style>p {color: red}</style><body><p>La atención pondera todas las "
        "palabras del contexto.</p><script>var x = 1;</script></body></html>"
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_index_is_idempotent_and_replaces_changed_files(project: Path) -> None:
    store = open_store("curso_idx")
    first = index_paths(["docs"], store)
    assert (first.files, first.added) == (2, 2)
    again = index_paths(["docs"], store)
    assert again.added == 0 and sorted(again.unchanged_files) == ["docs/a.md", "docs/b.html"]
    assert len(store.get()["ids"]) == 2
    (project / "docs" / "a.md").write_text("# Tokens\n\nUn token es un trozo de palabra.\n")
    changed = index_paths(["docs"], store)
    assert changed.replaced_files == ["docs/a.md"] and changed.added == 1
    contents = sorted(store.get()["documents"])
    assert contents[0].startswith("# Tokens\n\nUn token es un trozo")  # the old chunk is gone
    assert len(contents) == 2


def test_chunks_carry_source_chunk_and_hash(project: Path) -> None:
    store = open_store("curso_meta")
    index_paths(["docs/b.html"], store)
    [meta] = store.get()["metadatas"]
    assert meta["source"] == "docs/b.html" and meta["chunk"] == 0 and len(meta["hash"]) == 64
    [text] = store.get()["documents"]
    assert "color" not in text and "var x" not in text  # html text only


def test_search_ranks_and_reports_scores(project: Path) -> None:
    store = open_store("curso_search")
    index_paths(["docs"], store)
    [hit] = search(store, "¿qué hace la atención con las palabras?", k=1)
    assert hit["source"] == "docs/b.html" and 0 < hit["score"] <= 1


def test_bad_targets_and_files(project: Path) -> None:
    with pytest.raises(UserError, match="chroma:COLLECTION"):
        parse_target("pinecone:x")
    with pytest.raises(UserError, match="unsupported"):
        index_paths([project / "eslabon.toml"], open_store("curso_bad"))
    with pytest.raises(UserError, match="no such file"):
        index_paths(["nope"], open_store("curso_bad"))


def run_cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "eslabon"), *args],
        capture_output=True,
        text=True,
        cwd=project,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_cli_index_then_search_then_a_chain_finds_it(project: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(project, *args)

    out = cli("index", "docs", "--into", "chroma:curso_cli")
    assert out.returncode == 0, out.stderr
    assert "2 files: 2 chunks added" in out.stdout
    assert "0 chunks added" in cli("index", "docs", "--into", "chroma:curso_cli").stdout
    found = cli("search", "chroma:curso_cli", "siguiente token", "-k", "1")
    assert found.returncode == 0 and "docs/a.md" in found.stdout
    (project / "c.yaml").write_text(
        "inputs: {q: x}\nretriever: {type: chroma, collection: curso_cli, k: 1}\n"
        "prompt: '{context}'\n"
    )
    ran = cli("run", "c.yaml", "-i", "q=siguiente token", "-m", "fake:echo", "--json")
    assert ran.returncode == 0, ran.stderr
    assert '"source": "docs/a.md"' in ran.stdout
    assert cli("index", "docs", "--into", "nada").returncode == 2


def test_pdf_files_are_indexed(project: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.multi_cell(0, 10, "La ventana de contexto limita cuantos tokens ve el modelo.")
    pdf.output(str(project / "docs" / "c.pdf"))
    store = open_store("curso_pdf")
    report = index_paths(["docs/c.pdf"], store)
    assert report.added == 1
    [hit] = search(store, "ventana de contexto", k=1)
    assert hit["source"] == "docs/c.pdf" and "ventana de contexto" in hit["content"]


def test_cli_index_and_search_against_a_chroma_server(chroma_server: int, project: Path) -> None:
    where = ["--host", "127.0.0.1", "--port", str(chroma_server)]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(project, *args)

    out = cli("index", "docs", "--into", "chroma:curso_srv", *where)
    assert out.returncode == 0, out.stderr
    assert "2 chunks added" in out.stdout
    assert "0 chunks added" in cli("index", "docs", "--into", "chroma:curso_srv", *where).stdout
    found = cli("search", "chroma:curso_srv", "la atención y las palabras", "-k", "1", *where)
    assert found.returncode == 0 and "docs/b.html" in found.stdout
    assert not (project / ".eslabon").exists()  # nothing went to the local folder
