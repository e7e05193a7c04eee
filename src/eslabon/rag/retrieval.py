"""Retrievers from chain files: static, memory, bm25, chroma — each a LangChain ``BaseRetriever``.

Every retriever returns ``Document``s whose metadata carries ``source`` and, where the backend
gives one, a relevance ``score`` (higher is closer), so answers can cite what they used. Each
returns its configured ``k`` documents, or a call's own: ``retriever.invoke(query, k=1)``
(LangChain's ``BaseRetriever`` passes a call's keyword arguments to the search).
Heavy packages (chromadb, rank-bm25) are imported only when such a retriever is built.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from langchain_core.vectorstores import VectorStore
from pydantic import PrivateAttr

from eslabon.chainfile.spec import RETRIEVER_TYPES
from eslabon.errors import MissingDependencyError, UserError

__all__ = [
    "ChromaRetriever",
    "EmbeddingsMismatchError",
    "IndexNotFoundError",
    "KeywordRetriever",
    "ProviderEmbeddings",
    "ScoredVectorStoreRetriever",
    "StaticRetriever",
    "build_embeddings",
    "build_retriever",
    "checked_k",
    "chroma_store",
    "embeddings_id",
    "format_context",
]


class _Sized(BaseRetriever):
    """A retriever whose search takes a call's own ``k``, on the async path too (LangChain's
    default async path calls the sync search without the call's keyword arguments)."""

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
    ) -> list[Document]:
        search: Any = self._get_relevant_documents
        return await run_in_executor(None, search, query, run_manager=run_manager.get_sync(), k=k)


class StaticRetriever(_Sized):
    """Always the same documents (the first ``k``): a stub for tests and lessons."""

    documents: list[Document]
    k: int = 4

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        return [d.model_copy(deep=True) for d in self.documents[: _k(self.k, k)]]


def _k(configured: int, given: int | None) -> int:
    """How many documents a call returns: its own ``k``, else the retriever's."""
    return configured if given is None else checked_k(given)


def checked_k(k: object) -> int:
    """A call's own ``k``, refused unless it is a whole number >= 1."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a whole number >= 1, got {k!r}")
    return k


class KeywordRetriever(_Sized):
    """BM25 keyword search (rank-bm25's Okapi BM25) over ``documents``, on eslabon's words
    (lower-cased, accents folded, punctuation dropped: LangChain's ``BM25Retriever`` splits
    on spaces only, so "token." never matched "token")."""

    documents: list[Document]
    k: int = 4
    _index: Any = PrivateAttr(None)

    def model_post_init(self, context: Any, /) -> None:
        from rank_bm25 import BM25Okapi

        from eslabon.rag.embeddings import words

        if self.documents:  # BM25Okapi divides by the corpus size
            self._index = BM25Okapi([words(d.page_content) for d in self.documents])

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        if self._index is None:
            return []
        from eslabon.rag.embeddings import words

        hits = self._index.get_top_n(words(query), self.documents, n=_k(self.k, k))
        return [d.model_copy(deep=True) for d in hits]


class ScoredVectorStoreRetriever(_Sized):
    """Similarity search that keeps each hit's relevance score in ``metadata["score"]``.

    LangChain's ``VectorStoreRetriever`` drops the scores; citing answers wants them.
    """

    vectorstore: VectorStore
    k: int = 4

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        k = _k(self.k, k)
        try:
            hits = self.vectorstore.similarity_search_with_relevance_scores(query, k=k)
        except NotImplementedError:  # InMemoryVectorStore: its score is cosine similarity
            hits = self.vectorstore.similarity_search_with_score(query, k=k)
        # new Documents with new metadata dicts: a store may hand out its own metadata objects
        return [
            Document(doc.page_content, id=doc.id, metadata={**doc.metadata, "score": float(s)})
            for doc, s in hits
        ]


class ChromaRetriever(_Sized):
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
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        hits: Any = self._collection.query(
            query_embeddings=[self._embed(query)],
            n_results=_k(self.k, k),
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
    A chain file's model path must lie in its folder or the project
    (:mod:`eslabon.trust.paths`); the user's own (``eslabon index --embeddings``) may be
    anywhere."""
    if ref in (None, "local"):
        from eslabon.rag.embeddings import HashingEmbeddings

        return HashingEmbeddings()
    assert ref is not None
    provider, _, name = ref.partition(":")
    if provider in ("llamacpp", "huggingface"):
        from eslabon.trust.paths import confine

        if from_chain_file:
            path = confine(name, base_dir or Path.cwd(), "embeddings model")
        else:
            path = Path(name).expanduser()
            path = path if path.is_absolute() else (base_dir or Path.cwd()) / path
        if not path.exists():  # a missing folder must not become a model name asked of a hub
            from eslabon.chainfile.checks import LOCAL_EMBEDDINGS

            raise UserError(
                f"embeddings '{ref}': no model at {path}\n"
                f"    fix: {provider}:PATH names {LOCAL_EMBEDDINGS[provider]} on this machine"
            )
        if provider == "llamacpp":
            from eslabon.chat.local import LlamaCppEmbeddings

            return LlamaCppEmbeddings(model_path=str(path))
        return _sentence_transformers(path)
    from langchain.embeddings import init_embeddings

    from eslabon.chat.models import load_env
    from eslabon.chat.modelspec import PROVIDERS

    load_env()
    info = PROVIDERS.get(provider)
    if info is not None and info.env_var and not os.environ.get(info.env_var):
        from eslabon.errors import MissingCredentialsError

        raise MissingCredentialsError(provider, info.env_var)
    # langchain-openai counts tokens with tiktoken, which downloads its encodings at first use
    # (and fails offline); the API checks lengths itself, so eslabon skips the local count.
    extra: dict[str, Any] = {"check_embedding_ctx_length": False} if provider == "openai" else {}
    # connections that fail fast and name the URL, as for their chat models (eslabon.chat.transport)
    if info is not None and (key := info.client_option) is not None:
        from eslabon.chat.transport import FastFailTransport

        extra[key] = {"transport": FastFailTransport(provider, ref)}
    try:
        return ProviderEmbeddings(init_embeddings(ref, **extra), provider, name)
    except ImportError as exc:
        raise MissingDependencyError(f"Embeddings '{ref}'", None, exc.name) from None
    except ValueError as exc:
        raise UserError(f"embeddings '{ref}': {exc}") from None


class ProviderEmbeddings(Embeddings):
    """A provider's embeddings (LangChain's ``init_embeddings``) whose failures come out as
    eslabon's errors (no connection, a refused key, ...), as its chat models' do. ``inner`` is
    the LangChain object."""

    def __init__(self, inner: Embeddings, provider: str, name: str) -> None:
        self.inner = inner
        self.provider = provider
        self.name = name

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            from eslabon.chat.provider_errors import translate_model_error

            mapped = translate_model_error(exc, self.provider, self.name)
            if mapped is None:
                raise
            raise mapped from None

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        with self._translated():
            return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        with self._translated():
            return self.inner.embed_query(text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        with self._translated():
            return await self.inner.aembed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        with self._translated():
            return await self.inner.aembed_query(text)


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
    or an allowed folder (:mod:`eslabon.trust.paths`)."""
    if spec.type not in RETRIEVER_TYPES:  # registered, installed, or type: python
        return _custom(spec, allow_imports or [])
    return _BUILDERS[spec.type](spec, embeddings, project_root, chain_dir or project_root)


def _static(spec: Any, embeddings: Embeddings, root: Path, chain_dir: Path) -> BaseRetriever:
    return StaticRetriever(documents=_documents(spec.documents), k=spec.k)


def _memory(spec: Any, embeddings: Embeddings, root: Path, chain_dir: Path) -> BaseRetriever:
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore(embeddings)
    store.add_documents(_documents(spec.documents))
    return ScoredVectorStoreRetriever(vectorstore=store, k=spec.k)


def _bm25(spec: Any, embeddings: Embeddings, root: Path, chain_dir: Path) -> BaseRetriever:
    try:
        import rank_bm25  # noqa: F401
    except ImportError:
        raise MissingDependencyError("The 'bm25' retriever", "rag", "rank-bm25") from None
    return KeywordRetriever(documents=_documents(spec.documents), k=spec.k)


def _chroma(spec: Any, embeddings: Embeddings, root: Path, chain_dir: Path) -> BaseRetriever:
    from eslabon.trust.paths import confine

    path = spec.path
    if path is not None and not spec.host:
        path = str(confine(path, chain_dir, "chroma path", root))
    credentials = False
    if spec.host:
        from eslabon.trust.allow import current_allow

        # Chroma reads auth settings from the environment: only for a host the user approved
        credentials = current_allow().endpoint_grant(f"{spec.host}:{spec.port}") is not None
    store = chroma_store(
        spec.collection,
        embeddings,
        path,
        spec.host,
        spec.port,
        root,
        credentials=credentials,
        create=False,  # a chain reads an index; it never creates one (an empty one)
    )
    return ChromaRetriever(vectorstore=store, k=spec.k)


def _llamaindex(spec: Any, embeddings: Embeddings, root: Path, chain_dir: Path) -> BaseRetriever:
    from eslabon.rag.llamaindex import load_persisted
    from eslabon.trust.paths import confine

    folder = confine(spec.path, chain_dir, "llamaindex path", root)
    if not (folder / "docstore.json").is_file():
        raise IndexNotFoundError(
            f"llamaindex retriever: no llama-index index at {folder}, so the chain would "
            "search nothing\n    fix: persist one there (index.storage_context.persist(PATH))"
            + _relative_note(spec.path, root)
        )
    built = load_persisted(str(folder), embeddings, spec.k)
    struct = getattr(getattr(built.retriever, "_index", None), "index_struct", None)
    if getattr(struct, "nodes_dict", None) == {}:
        raise IndexNotFoundError(
            f"llamaindex retriever: the index at {folder} holds no documents, so the chain "
            "would search nothing\n    fix: build it from your documents and persist it again"
        )
    return built


_BUILDERS = {
    "static": _static,
    "memory": _memory,
    "bm25": _bm25,
    "chroma": _chroma,
    "llamaindex": _llamaindex,
}


def _custom(spec: Any, allow_imports: list[str]) -> BaseRetriever:
    from eslabon.rag.registry import retriever_factory

    if spec.type == "python":
        from eslabon.trust.imports import resolve_import

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
    from eslabon.rag.llamaindex import LlamaIndexRetriever, is_llamaindex_retriever

    if is_llamaindex_retriever(retriever):  # any llama-index retriever works too
        retriever = LlamaIndexRetriever(retriever=retriever)
    if not isinstance(retriever, BaseRetriever):
        raise UserError(
            f"retriever '{spec.type}' returned {type(retriever).__name__}, not a BaseRetriever"
        )
    return retriever


DEFAULT_STORE = ".eslabon/chroma"
EMBEDDINGS_KEY = "eslabon:embeddings"  # the collection's metadata: whose vectors it holds


class IndexNotFoundError(UserError):
    """A retriever's (or ``eslabon search``'s) index is missing or empty: it would find nothing."""


class EmbeddingsMismatchError(UserError):
    """A collection holds vectors of other embeddings than the ones given."""


_PROVIDER_OF = {
    "OpenAIEmbeddings": "openai",
    "AzureOpenAIEmbeddings": "azure_openai",
    "OllamaEmbeddings": "ollama",
    "GoogleGenerativeAIEmbeddings": "google_genai",
}


def embeddings_id(embeddings: Embeddings) -> str:
    """Which embeddings these are, as a collection records them: ``local``, ``llamacpp:FILE``,
    ``huggingface:FOLDER`` (the file or folder name: a path differs from machine to machine)
    or ``provider:model``."""
    from eslabon.rag.embeddings import HashingEmbeddings

    if isinstance(embeddings, ProviderEmbeddings):
        embeddings = embeddings.inner
    if isinstance(embeddings, HashingEmbeddings):
        dims = embeddings.dimensions
        return "local" if dims == 512 else f"local:{dims}"
    kind = type(embeddings).__name__
    if kind == "LlamaCppEmbeddings":
        return "llamacpp:" + Path(str(getattr(embeddings, "model_path", ""))).name
    if kind == "HuggingFaceEmbeddings":
        return "huggingface:" + Path(str(getattr(embeddings, "model_name", ""))).name
    model = getattr(embeddings, "model", None) or getattr(embeddings, "model_name", None)
    provider = _PROVIDER_OF.get(kind, kind)
    return f"{provider}:{str(model).removeprefix('models/')}" if model else provider


def _relative_note(path: str | None, project_root: Path) -> str:
    if path is not None and Path(path).expanduser().is_absolute():
        return ""
    return (
        f"\n    (index folders are relative to the project root, {project_root}: the folder of "
        "eslabon.toml or .git, else the working directory)"
    )


def _nearby_store(project_root: Path) -> Path | None:
    """A folder above an unmarked project root holding eslabon's default index (the user
    indexed from there and runs from a subfolder)."""
    if (project_root / "eslabon.toml").is_file() or (project_root / ".git").exists():
        return None
    for folder in list(project_root.parents)[:6]:
        if (folder / DEFAULT_STORE / "chroma.sqlite3").is_file():
            return folder
    return None


def _not_indexed(
    collection: str,
    problem: str,
    path: str | None,
    host: str | None,
    port: int,
    project_root: Path,
) -> IndexNotFoundError:
    where = f" --host {host} --port {port}" if host else (f" --path {path}" if path else "")
    message = (
        f"chroma collection '{collection}' has nothing to search: {problem}\n"
        f"    fix: index your documents into it first: eslabon index DOCS --into "
        f"chroma:{collection}{where}"
    )
    if not host:
        message += _relative_note(path, project_root)
        if path is None and (found := _nearby_store(project_root)) is not None:
            message += (
                f"\n    an index exists at {found / DEFAULT_STORE}: run eslabon from {found}, or "
                f"make that folder the project root (create {found / 'eslabon.toml'})"
            )
    return IndexNotFoundError(message)


def _mismatch(collection: str, stored: str | None, given: str) -> EmbeddingsMismatchError:
    """``stored`` None: other embeddings than ``given``, which the collection did not record."""
    held = f"the embeddings '{stored}'" if stored else "other embeddings"
    same = f"the embeddings '{stored}'" if stored else "the embeddings it was indexed with"
    return EmbeddingsMismatchError(
        f"chroma collection '{collection}' holds vectors of {held}, not '{given}': one "
        "collection holds one model's vectors (mixed, searches fail or find the wrong "
        f"passages)\n    fix: use {same} (a chain's embeddings:, or --embeddings), index into "
        f"another collection, or rebuild this one: eslabon index DOCS --into "
        f"chroma:{collection} --embeddings {given} --rebuild"
    )


def stored_embeddings(collection: Any) -> str | None:
    """The embeddings a Chroma collection's vectors come from, as recorded when it was
    indexed (its metadata; else its chunks'); None for a collection eslabon did not record."""
    stored = (collection.metadata or {}).get(EMBEDDINGS_KEY)
    if stored is None:
        peek = collection.get(limit=1, include=["metadatas"])
        metadatas = peek.get("metadatas") or [None]
        stored = (metadatas[0] or {}).get("embeddings")
    return str(stored) if stored is not None else None


def chroma_store(
    collection: str,
    embeddings: Embeddings,
    path: str | None,
    host: str | None,
    port: int,
    project_root: Path,
    credentials: bool = True,
    create: bool = True,
    rebuild: bool = False,
) -> VectorStore:
    """A Chroma collection, always with eslabon's embeddings (Chroma's default downloads a
    model at first use and fails offline). ``credentials=False``: Chroma's auth settings from
    the environment are not used (a server the user has not approved).

    ``create=False`` (a chain, a search): the store and collection must exist and hold
    documents, else :class:`IndexNotFoundError` naming the ``eslabon index`` command; nothing
    is created. ``rebuild``: the collection is emptied first. A collection that holds vectors
    of other embeddings raises :class:`EmbeddingsMismatchError`."""
    try:
        from langchain_chroma import Chroma
    except ImportError:
        raise MissingDependencyError("The 'chroma' retriever", "rag", "langchain-chroma") from None
    client = _chroma_client(collection, path, host, port, project_root, credentials, create)
    import chromadb.errors

    ours = embeddings_id(embeddings)
    missing = getattr(chromadb.errors, "NotFoundError", ValueError)  # ValueError before 0.6
    if rebuild:
        with suppress(missing, ValueError):
            client.delete_collection(collection)
    if not create:
        _check_indexed(client, collection, path, host, port, project_root, missing)
    # cosine distance: eslabon's embeddings are normalized, and L2 would rank empty texts well
    store = Chroma(
        collection_name=collection,
        embedding_function=embeddings,
        client=client,
        collection_metadata={"hnsw:space": "cosine", EMBEDDINGS_KEY: ours},
        create_collection_if_not_exists=create,
    )
    chroma: Any = store
    stored = stored_embeddings(chroma._collection)
    if stored is not None and stored != ours and chroma._collection.count() > 0:
        raise _mismatch(collection, stored, ours)
    return store


def _chroma_client(
    collection: str,
    path: str | None,
    host: str | None,
    port: int,
    project_root: Path,
    credentials: bool,
    create: bool,
) -> Any:
    """A Chroma client for the server at ``host:port``, or the folder ``path`` (relative to the
    project root); with ``create=False``, a folder never indexed is an error, not a new store."""
    import chromadb
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
        return chromadb.HttpClient(host=host, port=port, settings=settings)
    folder = _store_folder(path, project_root)
    if not create and not (folder / "chroma.sqlite3").is_file():  # the client would make it
        problem = f"no index at {folder} (nothing was indexed there)"
        raise _not_indexed(collection, problem, path, host, port, project_root)
    return chromadb.PersistentClient(path=str(folder), settings=settings)


def _store_folder(path: str | None, project_root: Path) -> Path:
    folder = Path(path or DEFAULT_STORE).expanduser()
    return folder if folder.is_absolute() else project_root / folder


def _check_indexed(
    client: Any,
    collection: str,
    path: str | None,
    host: str | None,
    port: int,
    project_root: Path,
    missing: type[Exception],
) -> None:
    """Raise :class:`IndexNotFoundError` unless ``collection`` exists and holds documents."""
    where = f"{host}:{port}" if host else str(_store_folder(path, project_root))
    try:
        found = client.get_collection(collection)
    except (missing, ValueError):
        from eslabon.chainfile.suggest import did_you_mean

        names = sorted(getattr(c, "name", str(c)) for c in client.list_collections())
        held = f" (collections there: {', '.join(names)})" if names else " (none there)"
        guess = did_you_mean(collection, names)
        problem = f"no such collection at {where}{held}" + (f"; {guess}" if guess else "")
        raise _not_indexed(collection, problem, path, host, port, project_root) from None
    if found.count() == 0:
        raise _not_indexed(collection, f"it is empty (at {where})", path, host, port, project_root)


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
