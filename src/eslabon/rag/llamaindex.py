"""llama-index, bridged: any llama-index retriever as a LangChain ``BaseRetriever``.

langchain-community's ``LlamaIndexRetriever`` calls ``index.query()`` and fails on a
``VectorStoreIndex``; this bridge calls a llama-index retriever's ``retrieve`` / ``aretrieve``
and turns each scored node into a ``Document`` with ``source`` and ``score``. A persisted index is
loaded with eslabon's embeddings (llama-index's default embedding model is OpenAI's, which needs a
key and the network).
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever

from eslabon.errors import MissingDependencyError, UserError
from eslabon.rag.retrieval import checked_k

__all__ = ["LlamaIndexRetriever", "is_llamaindex_retriever", "load_persisted", "to_llamaindex"]


def _node_document(hit: Any) -> Document:
    node = hit.node
    metadata = dict(node.metadata or {})
    source = metadata.get("source") or metadata.get("file_name") or node.ref_doc_id or node.node_id
    metadata.update(source=source, score=None if hit.score is None else float(hit.score))
    return Document(node.get_content(), metadata=metadata)


class LlamaIndexRetriever(BaseRetriever):
    """A llama-index retriever (anything with ``retrieve``/``aretrieve``) behind LangChain's API.

    A call's own ``k`` (``invoke(query, k=2)``) sets the ``similarity_top_k`` of a copy of the
    llama-index retriever, which then returns that many nodes; a retriever without that setting
    returns at most ``k`` of its hits."""

    retriever: Any

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        retriever, k = _sized(self.retriever, k)
        return [_node_document(hit) for hit in retriever.retrieve(query)[:k]]

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
    ) -> list[Document]:
        retriever, k = _sized(self.retriever, k)
        return [_node_document(hit) for hit in (await retriever.aretrieve(query))[:k]]


def _sized(retriever: Any, k: int | None) -> tuple[Any, int | None]:
    """The llama-index retriever to ask for ``k`` nodes (a copy: calls may run at once), and
    how many of its hits to keep (None: all)."""
    if k is None:
        return retriever, None
    k = checked_k(k)
    if hasattr(retriever, "similarity_top_k"):
        import copy

        retriever = copy.copy(retriever)
        retriever.similarity_top_k = k
    return retriever, k


def _import() -> Any:
    try:
        import llama_index.core as core
    except ImportError:
        raise MissingDependencyError(
            "The 'llamaindex' retriever", "rag", "llama-index-core"
        ) from None
    return core


def to_llamaindex(embeddings: Embeddings) -> Any:
    """LangChain embeddings as a llama-index embedding model (a ten-line adapter instead of the
    separate llama-index-embeddings-langchain package)."""
    from llama_index.core.base.embeddings.base import BaseEmbedding

    class _Adapter(BaseEmbedding):
        def _get_query_embedding(self, query: str) -> list[float]:
            return embeddings.embed_query(query)

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return await embeddings.aembed_query(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return embeddings.embed_documents([text])[0]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return embeddings.embed_documents(texts)

    return _Adapter(model_name="eslabon")


def load_persisted(path: str, embeddings: Embeddings, k: int) -> LlamaIndexRetriever:
    """A retriever over an index persisted with ``index.storage_context.persist(path)``."""
    core = _import()
    try:
        storage = core.StorageContext.from_defaults(persist_dir=path)
        index = core.load_index_from_storage(storage, embed_model=to_llamaindex(embeddings))
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"no llama-index index at {path}: {exc}") from None
    return LlamaIndexRetriever(retriever=index.as_retriever(similarity_top_k=k))


def is_llamaindex_retriever(obj: Any) -> bool:
    try:
        from llama_index.core.base.base_retriever import BaseRetriever as LlamaRetriever
    except ImportError:
        return False
    return isinstance(obj, LlamaRetriever)
