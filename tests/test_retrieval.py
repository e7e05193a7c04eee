"""Retrievers in chain files: static, memory, bm25, chroma (embedded); {context} and documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from eslabon import FakeChatModel, load_chain
from eslabon.chainfile.loader import validate_file
from eslabon.rag.retrieval import build_embeddings, chroma_store
from helpers import unmetered_chunks, write

DOCS = """\
    documents:
      - {content: "Los LLM predicen el siguiente token.", source: llm.md}
      - {content: "Los embeddings representan palabras como vectores.", source: embeddings.md}
      - {content: "El mecanismo de atención pondera el contexto.", source: transformers.md}
"""


def chain(
    tmp_path: Path, retriever: str, prompt: str = "{context}\\n\\nPregunta: {pregunta}"
) -> Path:
    return write(
        tmp_path,
        f'inputs: {{pregunta: x}}\nretriever:\n{retriever}prompt: "{prompt}"\n',
    )


def run(path: Path, pregunta: str) -> tuple[dict[str, Any], str]:
    model = FakeChatModel(responses=["respuesta"])
    result = load_chain(path, model=model).invoke({"pregunta": pregunta})
    return result, model.calls[0][-1].text


def test_static_retriever_fills_context_and_the_result(tmp_path: Path) -> None:
    path = chain(tmp_path, f"    type: static\n    k: 2\n{DOCS}")
    result, prompt = run(path, "¿Qué es un token?")
    assert prompt == (
        "[1] (source: llm.md)\nLos LLM predicen el siguiente token.\n\n"
        "[2] (source: embeddings.md)\nLos embeddings representan palabras como vectores.\n\n"
        "Pregunta: ¿Qué es un token?"
    )
    assert result["output"] == "respuesta"
    assert [d["source"] for d in result["documents"]] == ["llm.md", "embeddings.md"]
    assert result["documents"][0] == {
        "content": "Los LLM predicen el siguiente token.",
        "source": "llm.md",
        "score": None,
        "step": None,
    }


def test_memory_retriever_ranks_by_similarity_with_scores(tmp_path: Path) -> None:
    path = chain(tmp_path, f"    type: memory\n    k: 1\n{DOCS}")
    result, prompt = run(path, "¿qué son los embeddings y los vectores?")
    [doc] = result["documents"]
    assert doc["source"] == "embeddings.md" and 0 < doc["score"] <= 1
    assert "[1] (source: embeddings.md)" in prompt


@pytest.mark.parametrize("pregunta", ["", "   ", "¿?!"])
def test_a_question_without_words_still_searches(tmp_path: Path, pregunta: str) -> None:
    # the offline embedding of a text without words was a zero vector: cosine search failed
    # with numpy's "NaN values found"
    path = chain(tmp_path, f"    type: memory\n    k: 2\n{DOCS}")
    result, _ = run(path, pregunta)
    assert len(result["documents"]) == 2 and all(
        d["score"] is not None for d in result["documents"]
    )
    from eslabon.rag.embeddings import HashingEmbeddings

    vector = HashingEmbeddings().embed_query(pregunta)
    assert abs(sum(v * v for v in vector) - 1) < 1e-9  # unit length, like every other text


def test_bm25_retriever(tmp_path: Path) -> None:
    path = chain(tmp_path, f"    type: bm25\n    k: 1\n{DOCS}")
    result, _ = run(path, "atención contexto")
    assert [d["source"] for d in result["documents"]] == ["transformers.md"]


def test_chroma_embedded_persistent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "eslabon.toml").write_text("[models]\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    store = chroma_store("curso_test", build_embeddings("local"), None, None, 8000, tmp_path)
    store.add_texts(
        ["Los LLM predicen el siguiente token.", "La atención pondera el contexto."],
        metadatas=[{"source": "llm.md"}, {"source": "transformers.md"}],
    )
    assert (tmp_path / ".eslabon" / "chroma").is_dir()  # the default, in the project root
    sub = tmp_path / "chains"
    sub.mkdir()
    path = chain(sub, "    type: chroma\n    collection: curso_test\n    k: 1\n")
    result, prompt = run(path, "¿cómo predicen el siguiente token los LLM?")
    assert [d["source"] for d in result["documents"]] == ["llm.md"]
    assert isinstance(result["documents"][0]["score"], float)
    assert "(source: llm.md)" in prompt


def test_step_retriever_searches_with_an_earlier_output(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "inputs: {pregunta: x}\n"
        "steps:\n"
        "  - {id: tema, prompt: 'Tema de: {pregunta}'}\n"
        "  - id: respuesta\n"
        "    retriever:\n"
        f"      type: bm25\n      k: 1\n      query: '{{tema}}'\n{DOCS.replace('    ', '      ')}"
        "    prompt: '{context} | {pregunta}'\n",
    )
    model = FakeChatModel(responses=["atención", "ok"])
    result = load_chain(path, model=model).invoke({"pregunta": "x"})
    assert result["documents"][0]["source"] == "transformers.md"
    assert result["documents"][0]["step"] == "respuesta"
    assert model.calls[1][-1].text.startswith("[1] (source: transformers.md)")


def test_stream_yields_documents_first_and_adds_up_to_invoke(tmp_path: Path) -> None:
    path = chain(tmp_path, f"    type: static\n    k: 1\n{DOCS}")
    chain_ = load_chain(path, model={"provider": "fake", "responses": ["uno dos"]})
    chunks = unmetered_chunks(list(chain_.stream({"pregunta": "q"})))
    assert chunks[0] == {
        "documents": [
            {
                "content": "Los LLM predicen el siguiente token.",
                "source": "llm.md",
                "score": None,
                "step": None,
            }
        ]
    }
    assert [c["output"] for c in chunks[1:]] == ["uno ", "dos"]


async def test_retriever_runs_show_in_events(tmp_path: Path) -> None:
    path = chain(tmp_path, f"    type: memory\n    k: 2\n{DOCS}")
    chain_ = load_chain(path, model="fake:echo")
    events = [e["event"] async for e in chain_.astream_events({"pregunta": "q"}, version="v2")]
    assert "on_retriever_start" in events and "on_retriever_end" in events
    assert len((await chain_.ainvoke({"pregunta": "q"}))["documents"]) == 2


def test_validation_of_retrievers(tmp_path: Path) -> None:
    no_retriever = write(tmp_path, "inputs: {q: x}\nprompt: '{context} {q}'\n", "a.yaml")
    [problem] = validate_file(no_retriever)
    assert problem.message == "unknown name '{context}'"
    typo = chain(tmp_path, "    type: chromma\n    collection: abc\n")
    [problem] = validate_file(typo)
    assert problem.path == "retriever.type" and "did you mean 'chroma'?" in (problem.hint or "")
    bad_query = chain(tmp_path, f"    type: static\n    query: '{{preguntaa}}'\n{DOCS}")
    [problem] = validate_file(bad_query)
    assert problem.path == "retriever.query" and "did you mean 'pregunta'?" in (problem.hint or "")
    reserved = write(
        tmp_path,
        f"inputs: {{context: x}}\nretriever:\n    type: static\n{DOCS}prompt: hi\n",
        "r.yaml",
    )
    assert any("reserved" in p.message for p in validate_file(reserved))


def test_cli_json_includes_the_documents(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    path = chain(tmp_path, f"    type: bm25\n    k: 1\n{DOCS}")
    exe = str(Path(sys.executable).parent / "eslabon")
    out = subprocess.run(
        [exe, "run", str(path), "-i", "pregunta=token", "-m", "fake:echo", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["documents"][0]["source"] == "llm.md"
    assert data["output"].startswith("[1] (source: llm.md)")
    shown = subprocess.run(
        [exe, "run", str(path), "-i", "pregunta=token", "-m", "fake:echo", "--stream"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert "── documents" in shown.stdout and "[1] llm.md" in shown.stdout


def test_chroma_client_server(chroma_server: int, tmp_path: Path) -> None:
    store = chroma_store(
        "curso_server", build_embeddings("local"), None, "127.0.0.1", chroma_server, tmp_path
    )
    store.add_texts(
        ["Los LLM predicen el siguiente token.", "La atención pondera el contexto."],
        metadatas=[{"source": "llm.md"}, {"source": "transformers.md"}],
    )
    retriever = (
        f"    type: chroma\n    collection: curso_server\n    host: 127.0.0.1\n"
        f"    port: {chroma_server}\n    k: 1\n"
    )
    result, prompt = run(chain(tmp_path, retriever), "la atención y el contexto")
    assert [d["source"] for d in result["documents"]] == ["transformers.md"]
    assert "(source: transformers.md)" in prompt


# -- the shared conformance suite, on eslabon's own retrievers ------------------------------
from eslabon.chainfile.spec import BM25RetrieverSpec, MemoryRetriever  # noqa: E402
from eslabon.rag.retrieval import build_retriever  # noqa: E402
from eslabon.testing import RetrieverConformance  # noqa: E402

CORPUS = [
    {"content": "Los LLM predicen el siguiente token.", "source": "llm.md"},
    {"content": "Los embeddings representan palabras como vectores.", "source": "embeddings.md"},
    {"content": "El mecanismo de atención pondera el contexto.", "source": "transformers.md"},
]


class TestMemoryConformance(RetrieverConformance):
    query, expected_source = "el siguiente token", "llm.md"

    def make_retriever(self, k: int) -> Any:
        spec = MemoryRetriever(type="memory", documents=CORPUS, k=k)
        return build_retriever(spec, build_embeddings("local"), Path.cwd())


class TestBM25Conformance(RetrieverConformance):
    query, expected_source = "atención contexto", "transformers.md"

    def make_retriever(self, k: int) -> Any:
        spec = BM25RetrieverSpec(type="bm25", documents=CORPUS, k=k)
        return build_retriever(spec, build_embeddings("local"), Path.cwd())


class TestChromaConformance(RetrieverConformance):
    query, expected_source = "vectores y embeddings", "embeddings.md"

    @pytest.fixture(autouse=True)
    def _folder(self, tmp_path: Path) -> None:
        self.folder = tmp_path  # pytest removes it (a mkdtemp folder stayed behind per test)

    def make_retriever(self, k: int) -> Any:
        from eslabon.rag.retrieval import ChromaRetriever

        if not hasattr(self, "_store"):
            self._store = chroma_store(
                "conformance", build_embeddings("local"), str(self.folder), None, 8000, self.folder
            )
            self._store.add_texts(
                [d["content"] for d in CORPUS], metadatas=[{"source": d["source"]} for d in CORPUS]
            )
        return ChromaRetriever(vectorstore=self._store, k=k)

    def test_same_hits_and_scores_as_langchain_chroma(self) -> None:
        """The hand-written query path agrees with langchain-chroma's own scored search."""
        retriever = self.make_retriever(3)
        ours = retriever.invoke("atención y contexto")
        theirs = self._store.similarity_search_with_relevance_scores("atención y contexto", k=3)
        assert [d.id for d in ours] == [d.id for d, _ in theirs]
        assert [d.metadata["score"] for d in ours] == pytest.approx([s for _, s in theirs])
        assert [d.page_content for d in ours] == [d.page_content for d, _ in theirs]


# -- an index that is missing, empty or of other embeddings: a clear error, never an empty
# -- {context}; and running or validating a chain creates no store -----------------------------


def test_a_chroma_collection_never_indexed_is_a_clear_error_that_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eslabon.rag.retrieval import IndexNotFoundError

    (tmp_path / "eslabon.toml").write_text("[models]\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    path = chain(tmp_path, "    type: chroma\n    collection: curso\n    k: 2\n")
    assert validate_file(path) == []
    # before: the chain ran with an empty "Contexto:" and left an empty store behind
    with pytest.raises(IndexNotFoundError) as info:
        load_chain(path, model="fake:echo")
    message = str(info.value)
    assert message.startswith("chroma collection 'curso' has nothing to search: no index at")
    assert "eslabon index DOCS --into chroma:curso" in message
    assert not (tmp_path / ".eslabon").exists()

    store = chroma_store("apuntes", build_embeddings("local"), None, None, 8000, tmp_path)
    with pytest.raises(IndexNotFoundError, match=r"collections there: apuntes"):
        load_chain(path, model="fake:echo")  # another collection is there, not this one
    with pytest.raises(IndexNotFoundError, match=r"'apuntes' has nothing to search: it is empty"):
        load_chain(
            chain(tmp_path, "    type: chroma\n    collection: apuntes\n"), model="fake:echo"
        )
    store.add_texts(["Los LLM predicen el siguiente token."], metadatas=[{"source": "llm.md"}])
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(
        path=str(tmp_path / ".eslabon" / "chroma"), settings=Settings(anonymized_telemetry=False)
    )
    assert [c.name for c in client.list_collections()] == ["apuntes"]  # no 'curso' was made


def test_a_chain_whose_embeddings_differ_from_its_collection_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eslabon.rag.embeddings import HashingEmbeddings
    from eslabon.rag.retrieval import EmbeddingsMismatchError

    (tmp_path / "eslabon.toml").write_text("[models]\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    store = chroma_store("curso_256", HashingEmbeddings(256), None, None, 8000, tmp_path)
    store.add_texts(["Los LLM predicen el siguiente token."], metadatas=[{"source": "llm.md"}])
    path = chain(tmp_path, "    type: chroma\n    collection: curso_256\n")
    # before: the first question failed inside Chroma with an embedding-dimension error
    with pytest.raises(EmbeddingsMismatchError, match="'local:256', not 'local'"):
        load_chain(path, model="fake:echo")


def test_a_llamaindex_folder_missing_or_empty_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("llama_index.core")
    monkeypatch.chdir(tmp_path)  # the project root: index folders are relative to it
    from llama_index.core import VectorStoreIndex

    from eslabon.rag.llamaindex import to_llamaindex
    from eslabon.rag.retrieval import IndexNotFoundError

    missing = chain(tmp_path, "    type: llamaindex\n    path: indice\n")
    with pytest.raises(IndexNotFoundError, match=r"no llama-index index at .*indice"):
        load_chain(missing, model="fake:echo")
    assert not (tmp_path / "indice").exists()
    empty = VectorStoreIndex.from_documents(
        [], embed_model=to_llamaindex(build_embeddings("local"))
    )
    empty.storage_context.persist(str(tmp_path / "indice"))
    # before: every question got an empty {context}
    with pytest.raises(IndexNotFoundError, match="holds no documents"):
        load_chain(missing, model="fake:echo")
