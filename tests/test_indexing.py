"""eslabon index / search over real embedded Chroma: idempotent, replaces changed files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from eslabon import UserError
from eslabon.rag.indexing import index_paths, open_store, parse_target, search


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


# -- chunks keyed on content and settings; one embeddings per collection; deleted files go ------


def test_other_chunk_settings_replace_the_chunks(project: Path) -> None:
    store = open_store("curso_sizes")
    (project / "docs" / "a.md").write_text("# Tokens\n\n" + "El modelo predice tokens. " * 40)
    first = index_paths(["docs"], store)
    smaller = index_paths(["docs"], store, chunk_size=200, chunk_overlap=20)
    # before: "0 chunks added", both files "unchanged", the old 800-character chunks kept
    assert sorted(smaller.replaced_files) == ["docs/a.md", "docs/b.html"]
    assert smaller.added > first.added
    metadatas = store.get()["metadatas"]
    assert len(metadatas) == smaller.added
    assert {m["settings"] for m in metadatas} == {
        "chunk_size=200,chunk_overlap=20,embeddings=local"
    }
    again = index_paths(["docs"], store, chunk_size=200, chunk_overlap=20)
    assert again.added == 0 and len(again.unchanged_files) == 2


def test_a_collection_keeps_one_embeddings_and_rebuild_starts_over(project: Path) -> None:
    from eslabon.rag.embeddings import HashingEmbeddings
    from eslabon.rag.retrieval import EmbeddingsMismatchError, chroma_store, stored_embeddings

    store = open_store("curso_emb")
    index_paths(["docs"], store)
    assert stored_embeddings(store._collection) == "local"
    assert store._collection.metadata["eslabon:embeddings"] == "local"
    other = HashingEmbeddings(dimensions=256)  # vectors of another size, as another model's
    for create in (True, False):  # indexing, and searching or a chain opening it
        # before: indexing added nothing ("unchanged"), then a search failed on dimensions
        with pytest.raises(EmbeddingsMismatchError) as info:
            chroma_store("curso_emb", other, None, None, 8000, project, create=create)
        message = str(info.value)
        assert "holds vectors of the embeddings 'local', not 'local:256'" in message
        assert "--rebuild" in message and "chroma:curso_emb" in message
    rebuilt = chroma_store("curso_emb", other, None, None, 8000, project, rebuild=True)
    assert rebuilt._collection.count() == 0
    assert index_paths(["docs"], rebuilt).added == 2
    assert stored_embeddings(rebuilt._collection) == "local:256"
    [hit] = search(rebuilt, "siguiente token", k=1)
    assert hit["source"] == "docs/a.md"
    with pytest.raises(EmbeddingsMismatchError, match="'local:256', not 'local'"):
        open_store("curso_emb", create=False)  # eslabon search with the default embeddings


def test_a_collection_indexed_before_embeddings_were_recorded(project: Path) -> None:
    import chromadb
    from chromadb.config import Settings
    from langchain_chroma import Chroma

    from eslabon.rag.embeddings import HashingEmbeddings
    from eslabon.rag.retrieval import EmbeddingsMismatchError

    # as eslabon left collections: vectors of other embeddings, and nothing recorded
    client = chromadb.PersistentClient(
        path=str(project / ".eslabon" / "chroma"), settings=Settings(anonymized_telemetry=False)
    )
    old = Chroma("curso_old", HashingEmbeddings(dimensions=256), client=client)
    old.add_texts(["Los LLM predicen el siguiente token."], metadatas=[{"source": "x.md"}])
    store = open_store("curso_old")
    with pytest.raises(EmbeddingsMismatchError, match="holds vectors of other embeddings"):
        index_paths(["docs"], store)  # before: chromadb's "expecting embedding with dimension"
    with pytest.raises(EmbeddingsMismatchError, match="--rebuild"):
        search(store, "token")


def test_files_deleted_from_an_indexed_folder_are_removed(project: Path) -> None:
    store = open_store("curso_prune")
    index_paths(["docs"], store)
    (project / "docs" / "b.html").unlink()
    (project / "docs" / "sub").mkdir()
    (project / "docs" / "sub" / "c.txt").write_text("Los embeddings representan palabras.")
    report = index_paths(["docs"], store)
    # before: b.html's chunks stayed, and searches kept citing a file that no longer exists
    assert report.removed_files == ["docs/b.html"]
    assert sorted({m["source"] for m in store.get()["metadatas"]}) == [
        "docs/a.md",
        "docs/sub/c.txt",
    ]
    (project / "docs" / "sub" / "c.txt").unlink()
    assert index_paths(["docs/a.md"], store).removed_files == []  # a file given: nothing else
    assert index_paths(["docs/sub"], store).removed_files == ["docs/sub/c.txt"]
    assert {m["source"] for m in store.get()["metadatas"]} == {"docs/a.md"}


def test_sources_are_named_from_the_project_root(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store("curso_root")
    index_paths(["docs"], store)
    monkeypatch.chdir(project / "docs")
    again = index_paths(["."], store)  # the same files, from another folder
    # before: sources "a.md" and "b.html" beside "docs/a.md": every chunk twice
    assert again.added == 0 and sorted(again.unchanged_files) == ["docs/a.md", "docs/b.html"]
    assert again.removed_files == [] and len(store.get()["ids"]) == 2


def test_identical_files_keep_their_own_chunks(project: Path) -> None:
    (project / "docs" / "copia.md").write_bytes((project / "docs" / "a.md").read_bytes())
    store = open_store("curso_twins")
    index_paths(["docs"], store)
    # before: both files' chunks had the same ids, and one overwrote the other
    sources = sorted(m["source"] for m in store.get()["metadatas"])
    assert sources == ["docs/a.md", "docs/b.html", "docs/copia.md"]
    assert index_paths(["docs"], store).added == 0


def test_cli_settings_embeddings_rebuild_and_missing_collections(project: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(project, *args)

    assert cli("index", "docs", "--into", "chroma:curso_cli2").returncode == 0
    resized = cli("index", "docs", "--into", "chroma:curso_cli2", "--chunk-size", "300")
    assert "2 files replaced" in resized.stdout, resized.stdout
    (project / "docs" / "b.html").unlink()
    pruned = cli("index", "docs", "--into", "chroma:curso_cli2", "--chunk-size", "300")
    assert "0 chunks added, 0 files replaced, 1 unchanged, 1 removed" in pruned.stdout

    import chromadb

    client = chromadb.PersistentClient(path=str(project / ".eslabon" / "chroma"))
    client.get_collection("curso_cli2").modify(metadata={"eslabon:embeddings": "openai:x"})
    del client
    refused = cli("index", "docs", "--into", "chroma:curso_cli2")
    assert refused.returncode == 2, refused.stderr
    assert "holds vectors of the embeddings 'openai:x', not 'local'" in refused.stderr
    assert "Traceback" not in refused.stderr
    rebuilt = cli("index", "docs", "--into", "chroma:curso_cli2", "--rebuild")
    assert rebuilt.returncode == 0 and "1 chunks added" in rebuilt.stdout, rebuilt.stderr

    missing = cli("search", "chroma:curso_nada", "token")
    # before: an empty collection was created, and "no hits" said with exit code 0
    assert missing.returncode == 2
    assert "chroma collection 'curso_nada' has nothing to search" in missing.stderr
    assert "eslabon index DOCS --into chroma:curso_nada" in missing.stderr
    collections = chromadb.PersistentClient(path=str(project / ".eslabon" / "chroma"))
    assert [c.name for c in collections.list_collections()] == ["curso_cli2"]


def test_searching_a_project_that_was_never_indexed_creates_nothing(project: Path) -> None:
    done = run_cli(project, "search", "chroma:curso", "token")
    assert done.returncode == 2 and "no index at" in done.stderr, done.stderr
    assert not (project / ".eslabon").exists()
