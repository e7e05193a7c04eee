"""LangChain's standard retriever suite (langchain-tests) on every retriever type a chain file
builds: static, memory, bm25, chroma (embedded, in a temporary folder) and llamaindex (a
persisted index). Each is built the way a chain file builds it (``build_retriever`` from its
``retriever:`` mapping), with the offline ``local`` embeddings.

No flag to declare: the suite's only capability is the number of results, ``k``, given to the
constructor (``retriever: {k: 3}``) or to a call (``invoke(query, k=1)``); both must work.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, ClassVar

import pytest
from langchain_core.retrievers import BaseRetriever
from langchain_tests.integration_tests import RetrieversIntegrationTests

from eslabon.chainfile.spec import (
    BM25RetrieverSpec,
    ChromaRetriever,
    LlamaIndexRetrieverSpec,
    MemoryRetriever,
    StaticRetriever,
)
from eslabon.rag.retrieval import build_embeddings, build_retriever, chroma_store

CORPUS = [
    {"content": "Los LLM predicen el siguiente token.", "source": "llm.md"},
    {"content": "Un token es un trozo de palabra.", "source": "tokens.md"},
    {"content": "Los embeddings representan palabras como vectores.", "source": "embeddings.md"},
    {"content": "El mecanismo de atención pondera el contexto.", "source": "transformers.md"},
    {"content": "El tokenizador parte el texto en tokens.", "source": "tokenizador.md"},
]
QUERY = "¿Qué es un token?"


class _ChainFileRetriever(RetrieversIntegrationTests):
    """A retriever type as a chain file builds it; ``folder`` holds its index, if any."""

    spec: ClassVar[Any]
    kind: ClassVar[str]
    folder: ClassVar[Path] = Path.cwd()  # static, memory and bm25 read no files

    @property
    def retriever_constructor(self) -> Any:
        return self.build

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"k": 2}

    @property
    def retriever_query_example(self) -> str:
        return QUERY

    def build(self, k: int) -> BaseRetriever:
        return build_retriever(
            self.make_spec(k), build_embeddings("local"), self.folder, chain_dir=self.folder
        )

    def make_spec(self, k: int) -> Any:
        return self.spec(type=self.kind, documents=CORPUS, k=k)

    async def test_ainvoke_with_k_kwarg(self, retriever: BaseRetriever) -> None:
        """As the suite's ``test_invoke_with_k_kwarg``, on the async path."""
        assert len(await retriever.ainvoke(QUERY, None, k=1)) == 1
        assert len(await retriever.ainvoke(QUERY, None, k=3)) == 3

    def test_k_keeps_the_best_hits_first(self, retriever: BaseRetriever) -> None:
        """A call's ``k`` changes how many, not which: the shorter list leads the longer."""
        three = [d.page_content for d in retriever.invoke(QUERY, k=3)]
        assert [d.page_content for d in retriever.invoke(QUERY, k=1)] == three[:1]

    def test_a_k_that_is_not_a_count_is_refused(self, retriever: BaseRetriever) -> None:
        with pytest.raises(ValueError, match="k must be a whole number >= 1"):
            retriever.invoke(QUERY, k=0)


class TestStaticRetriever(_ChainFileRetriever):
    spec, kind = StaticRetriever, "static"


class TestMemoryRetriever(_ChainFileRetriever):
    spec, kind = MemoryRetriever, "memory"


class TestBM25Retriever(_ChainFileRetriever):
    spec, kind = BM25RetrieverSpec, "bm25"


class TestChromaRetriever(_ChainFileRetriever):
    spec, kind = ChromaRetriever, "chroma"

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _index(cls, tmp_path_factory: pytest.TempPathFactory) -> None:
        folder = tmp_path_factory.mktemp("standard_chroma")
        collection = f"standard_{uuid.uuid4().hex[:12]}"
        store = chroma_store(
            collection, build_embeddings("local"), str(folder / "chroma"), None, 8000, folder
        )
        store.add_texts(
            [d["content"] for d in CORPUS], metadatas=[{"source": d["source"]} for d in CORPUS]
        )
        cls.folder = folder
        cls.collection = collection

    def make_spec(self, k: int) -> Any:
        return ChromaRetriever(
            type="chroma", collection=self.collection, path=str(self.folder / "chroma"), k=k
        )


class TestLlamaIndexRetriever(_ChainFileRetriever):
    spec, kind = LlamaIndexRetrieverSpec, "llamaindex"

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _index(cls, tmp_path_factory: pytest.TempPathFactory) -> None:
        from llama_index.core import Document, VectorStoreIndex

        from eslabon.rag.llamaindex import to_llamaindex

        folder = tmp_path_factory.mktemp("standard_llamaindex")
        docs = [Document(text=d["content"], metadata={"source": d["source"]}) for d in CORPUS]
        index = VectorStoreIndex.from_documents(
            docs, embed_model=to_llamaindex(build_embeddings("local"))
        )
        index.storage_context.persist(str(folder / "indice"))
        cls.folder = folder

    def make_spec(self, k: int) -> Any:
        return LlamaIndexRetrieverSpec(type="llamaindex", path=str(self.folder / "indice"), k=k)
