"""The llama-index bridge: a persisted index, or any llama-index retriever, in a chain file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from eslabon import FakeChatModel, UserError, load_chain
from eslabon.rag.retrieval import build_embeddings
from eslabon.testing import RetrieverConformance
from helpers import write

pytest.importorskip("llama_index.core")
from llama_index.core import Document, VectorStoreIndex

from eslabon.rag.llamaindex import LlamaIndexRetriever, to_llamaindex

TEXTS = {
    "llm.md": "Los LLM predicen el siguiente token.",
    "embeddings.md": "Los embeddings representan palabras como vectores.",
    "transformers.md": "El mecanismo de atención pondera el contexto.",
}


def make_index() -> Any:
    docs = [Document(text=t, metadata={"source": s}) for s, t in TEXTS.items()]
    return VectorStoreIndex.from_documents(
        docs, embed_model=to_llamaindex(build_embeddings("local"))
    )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "eslabon.toml").write_text("[models]\n", encoding="utf-8")
    make_index().storage_context.persist(str(tmp_path / "indice"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_persisted_index_in_a_chain_file(project: Path) -> None:
    path = write(
        project,
        "inputs: {q: x}\nretriever: {type: llamaindex, path: indice, k: 1}\nprompt: '{context}'\n",
    )
    model = FakeChatModel(responses=["ok"])
    result = load_chain(path, model=model).invoke({"q": "vectores y embeddings"})
    [doc] = result["documents"]
    assert doc["source"] == "embeddings.md" and isinstance(doc["score"], float)
    assert model.calls[0][-1].text.startswith("[1] (source: embeddings.md)")


def test_a_missing_index_is_a_clear_error(project: Path) -> None:
    path = write(
        project, "inputs: {q: x}\nretriever: {type: llamaindex, path: nada}\nprompt: '{context}'\n"
    )
    with pytest.raises(UserError, match="no llama-index index"):
        load_chain(path, model="fake:echo")


def test_a_python_factory_may_return_a_llama_index_retriever(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "mis_indices.py").write_text(
        "from llama_index.core import StorageContext, load_index_from_storage\n"
        "from eslabon.rag.llamaindex import to_llamaindex\n"
        "from eslabon.rag.retrieval import build_embeddings\n"
        "def abrir(k, carpeta):\n"
        "    storage = StorageContext.from_defaults(persist_dir=carpeta)\n"
        "    index = load_index_from_storage(storage,\n"
        "        embed_model=to_llamaindex(build_embeddings('local')))\n"
        "    return index.as_retriever(similarity_top_k=k)\n"
    )
    monkeypatch.syspath_prepend(str(project))
    path = write(
        project,
        "inputs: {q: x}\nretriever: {type: python, factory: 'mis_indices:abrir',"
        " carpeta: indice, k: 1}\nprompt: '{context}'\n",
    )
    result = load_chain(path, model="fake:echo", allow_imports=["mis_indices"]).invoke(
        {"q": "atención y contexto"}
    )
    assert result["documents"][0]["source"] == "transformers.md"


class TestLlamaIndexConformance(RetrieverConformance):
    query, expected_source = "el siguiente token", "llm.md"

    def make_retriever(self, k: int) -> Any:
        return LlamaIndexRetriever(retriever=make_index().as_retriever(similarity_top_k=k))
