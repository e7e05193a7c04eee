"""Retrievers from chain files: static, memory, bm25, chroma — each a LangChain ``BaseRetriever``.

Every retriever returns ``Document``s whose metadata carries ``source`` and, where the backend
gives one, a relevance ``score`` (higher is closer), so answers can cite what they used.
Heavy packages (chromadb, langchain-community) are imported only when such a retriever is built.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore
from pydantic import PrivateAttr

from eslabon.errors import MissingDependencyError, UserError
from eslabon.spec import RETRIEVER_TYPES

__all__ = [
    "ChromaRetriever",
    "ScoredVectorStoreRetriever",
    "StaticRetriever",
    "build_embeddings",
    "build_retriever",
    "format_context",
]


class StaticRetriever(BaseRetriever):
    """Always the same documents (the first ``k``): a stub for tests and lessons."""

    documents: list[Document]
    k: int = 4

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return [d.model_copy(deep=True) for d in self.documents[: self.k]]


class ScoredVectorStoreRetriever(BaseRetriever):
    """Similarity search that keeps each hit's relevance score in ``metadata["score"]``.

    LangChain's ``VectorStoreRetriever`` drops the scores; citing answers wants them.
    """

    vectorstore: VectorStore
    k: int = 4

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        try:
            hits = self.vectorstore.similarity_search_with_relevance_scores(query, k=self.k)
        except NotImplementedError:  # InMemoryVectorStore: its score is cosine similarity
            hits = self.vectorstore.similarity_search_with_score(query, k=self.k)
        # new Documents with new metadata dicts: a store may hand out its own metadata objects
        return [
            Document(doc.page_content, id=doc.id, metadata={**doc.metadata, "score": float(s)})
            for doc, s in hits
        ]


class ChromaRetriever(BaseRetriever):
    """A Chroma collection searched directly: one query, one ``Document`` per hit.

    Written by hand because langchain-chroma's scored search re-reads the collection's
    configuration and builds Documents that would be copied again to add the score; together
    that was ~0.4 ms of a ~2.5 ms query (bench/retrieval.py). ``vectorstore`` stays available
    for adding documents and for anything else LangChain's ``Chroma`` offers.
    """

    vectorstore: VectorStore
    k: int = 4
    _collection: Any = PrivateAttr(None)
    _embed: Any = PrivateAttr(None)
    _relevance: Any = PrivateAttr(None)

    def model_post_init(self, context: Any, /) -> None:
        store: Any = self.vectorstore
        self._collection = store._collection  # langchain-chroma exposes no public accessor
        self._embed = store.embeddings.embed_query
        self._relevance = store._select_relevance_score_fn()

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        hits: Any = self._collection.query(
            query_embeddings=[self._embed(query)],
            n_results=self.k,
            include=["documents", "metadatas", "distances"],
        )
        score = self._relevance
        return [
            Document(text, id=id_, metadata={**(meta or {}), "score": float(score(dist))})
            for text, meta, id_, dist in zip(
                hits["documents"][0],
                hits["metadatas"][0],
                hits["ids"][0],
                hits["distances"][0],
                strict=True,
            )
            if text is not None
        ]


def _documents(refs: list[Any]) -> list[Document]:
    docs = []
    for n, ref in enumerate(refs, 1):
        data = ref.model_dump() if hasattr(ref, "model_dump") else ref
        if isinstance(data, str):
            data = {"content": data, "source": None}
        docs.append(Document(data["content"], metadata={"source": data.get("source") or f"#{n}"}))
    return docs


def build_embeddings(
    ref: str | None, base_dir: Path | None = None, from_chain_file: bool = False
) -> Embeddings:
    """``local`` (offline, lexical), ``llamacpp:PATH`` (a GGUF run by llama.cpp), or
    ``provider:model`` through LangChain's init_embeddings (openai, google_genai, ollama, ...).
    A chain file's model path must lie in its folder or the project (:mod:`eslabon.paths`); the
    user's own (``eslabon index --embeddings``) may be anywhere."""
    if ref in (None, "local"):
        from eslabon.embeddings import HashingEmbeddings

        return HashingEmbeddings()
    assert ref is not None
    provider, _, name = ref.partition(":")
    if provider in ("llamacpp", "huggingface"):
        from eslabon.paths import confine

        if from_chain_file:
            path = confine(name, base_dir or Path.cwd(), "embeddings model")
        else:
            path = Path(name).expanduser()
            path = path if path.is_absolute() else (base_dir or Path.cwd()) / path
        if not path.exists():  # a missing folder must not become a model name asked of a hub
            from eslabon.checks import LOCAL_EMBEDDINGS

            raise UserError(
                f"embeddings '{ref}': no model at {path}\n"
                f"    fix: {provider}:PATH names {LOCAL_EMBEDDINGS[provider]} on this machine"
            )
        if provider == "llamacpp":
            from eslabon.local import LlamaCppEmbeddings

            return LlamaCppEmbeddings(model_path=str(path))
        return _sentence_transformers(path)
    from langchain.embeddings import init_embeddings

    from eslabon.models import load_env
    from eslabon.modelspec import PROVIDERS

    load_env()
    info = PROVIDERS.get(provider)
    if info is not None and info.env_var and not os.environ.get(info.env_var):
        from eslabon.errors import MissingCredentialsError

        raise MissingCredentialsError(provider, info.env_var)
    # langchain-openai counts tokens with tiktoken, which downloads its encodings at first use
    # (and fails offline); the API checks lengths itself, so eslabon skips the local count.
    extra: dict[str, Any] = {"check_embedding_ctx_length": False} if provider == "openai" else {}
    try:
        return init_embeddings(ref, **extra)
    except ImportError as exc:
        raise MissingDependencyError(f"Embeddings '{ref}'", None, exc.name) from None
    except ValueError as exc:
        raise UserError(f"embeddings '{ref}': {exc}") from None


def _sentence_transformers(path: Path) -> Embeddings:
    """A sentence-transformers model folder, loaded offline (no hub lookups)."""
    try:
        from langchain_huggingface import HuggingFaceEmbeddings
    except ImportError:
        raise MissingDependencyError(
            "huggingface: embeddings", "huggingface", "langchain-huggingface"
        ) from None
    return HuggingFaceEmbeddings(
        model_name=str(path),
        model_kwargs={"device": "cpu", "local_files_only": True},
        encode_kwargs={"normalize_embeddings": True},
    )


def build_retriever(
    spec: Any,
    embeddings: Embeddings,
    project_root: Path,
    allow_imports: list[str] | None = None,
    chain_dir: Path | None = None,
) -> BaseRetriever:
    """The retriever a chain file's ``retriever:`` mapping describes. Index folders resolve
    against ``project_root`` and must lie in the chain's folder (``chain_dir``), the project
    or an allowed folder (:mod:`eslabon.paths`)."""
    from eslabon.paths import confine

    kind = spec.type
    if kind not in RETRIEVER_TYPES:  # registered, installed, or type: python
        return _custom(spec, allow_imports or [])
    if kind == "static":
        return StaticRetriever(documents=_documents(spec.documents), k=spec.k)
    if kind == "memory":
        from langchain_core.vectorstores import InMemoryVectorStore

        store = InMemoryVectorStore(embeddings)
        store.add_documents(_documents(spec.documents))
        return ScoredVectorStoreRetriever(vectorstore=store, k=spec.k)
    if kind == "bm25":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                from langchain_community.retrievers import BM25Retriever
            import rank_bm25  # noqa: F401
        except ImportError:
            raise MissingDependencyError(
                "The 'bm25' retriever", "rag", "langchain-community, rank-bm25"
            ) from None
        from eslabon.embeddings import words

        # LangChain's default splits on spaces only, so "token." never matches "token"
        return BM25Retriever.from_documents(
            _documents(spec.documents), k=spec.k, preprocess_func=words
        )
    if kind == "chroma":
        path = spec.path
        if path is not None and not spec.host:
            path = str(confine(path, chain_dir or project_root, "chroma path", project_root))
        credentials = False
        if spec.host:
            from eslabon.allow import current_allow

            # Chroma reads auth settings from the environment: only for a host the user approved
            credentials = current_allow().endpoint_grant(f"{spec.host}:{spec.port}") is not None
        return ChromaRetriever(
            vectorstore=chroma_store(
                spec.collection,
                embeddings,
                path,
                spec.host,
                spec.port,
                project_root,
                credentials=credentials,
            ),
            k=spec.k,
        )
    if kind == "llamaindex":
        from eslabon.llamaindex import load_persisted

        folder = confine(spec.path, chain_dir or project_root, "llamaindex path", project_root)
        return load_persisted(str(folder), embeddings, spec.k)
    raise AssertionError(f"unhandled retriever type {kind!r}")


def _custom(spec: Any, allow_imports: list[str]) -> BaseRetriever:
    from eslabon.registry import retriever_factory

    if spec.type == "python":
        from eslabon.imports import resolve_import

        factory = resolve_import(str(spec.factory), allow_imports, "retriever factory")
    else:
        factory = retriever_factory(spec.type)
        if factory is None:
            raise UserError(f"no retriever registered as '{spec.type}'")
    settings = dict(spec.model_extra or {})
    settings["k"] = spec.k
    try:
        retriever = factory(**settings)
    except TypeError as exc:
        raise UserError(f"retriever '{spec.type}': {exc}") from None
    from eslabon.llamaindex import LlamaIndexRetriever, is_llamaindex_retriever

    if is_llamaindex_retriever(retriever):  # any llama-index retriever works too
        retriever = LlamaIndexRetriever(retriever=retriever)
    if not isinstance(retriever, BaseRetriever):
        raise UserError(
            f"retriever '{spec.type}' returned {type(retriever).__name__}, not a BaseRetriever"
        )
    return retriever


DEFAULT_STORE = ".eslabon/chroma"


def chroma_store(
    collection: str,
    embeddings: Embeddings,
    path: str | None,
    host: str | None,
    port: int,
    project_root: Path,
    credentials: bool = True,
) -> VectorStore:
    """A Chroma collection, always with eslabon's embeddings (Chroma's default downloads a
    model at first use and fails offline). ``credentials=False``: Chroma's auth settings from
    the environment are not used (a server the user has not approved)."""
    try:
        import chromadb
        from langchain_chroma import Chroma
    except ImportError:
        raise MissingDependencyError("The 'chroma' retriever", "rag", "langchain-chroma") from None
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if not credentials:
        settings = Settings(
            anonymized_telemetry=False,
            chroma_client_auth_provider=None,
            chroma_client_auth_credentials=None,
            chroma_auth_token_transport_header=None,
            chroma_server_headers=None,
        )
    if host:
        client = chromadb.HttpClient(host=host, port=port, settings=settings)
    else:
        folder = Path(path or DEFAULT_STORE)
        if not folder.is_absolute():
            folder = project_root / folder
        client = chromadb.PersistentClient(path=str(folder), settings=settings)
    # cosine distance: eslabon's embeddings are normalized, and L2 would rank empty texts well
    return Chroma(
        collection_name=collection,
        embedding_function=embeddings,
        client=client,
        collection_metadata={"hnsw:space": "cosine"},
    )


def format_context(docs: list[Document]) -> str:
    """Numbered passages with their source, as ``{context}`` shows them to the model."""
    return "\n\n".join(
        f"[{n}] (source: {d.metadata.get('source', '?')})\n{d.page_content}"
        for n, d in enumerate(docs, 1)
    )


def document_record(doc: Document, step: str | None) -> dict[str, Any]:
    """How a retrieved document appears in a run's result."""
    return {
        "content": doc.page_content,
        "source": doc.metadata.get("source"),
        "score": doc.metadata.get("score"),
        "step": step,
    }
