"""Indexing documents into a Chroma collection, and searching it.

``index_paths`` loads .md / .txt / .html files (and .pdf with the ``pdf`` extra), splits them
with langchain-text-splitters and stores each chunk with its ``source`` (the file's path from
the project root), ``chunk`` number, content ``hash`` and the ``settings`` that made it (chunk
size and overlap, embeddings). It is idempotent and keeps the collection true to the files:

* a file whose content and settings are unchanged adds nothing;
* a changed file, or the same file indexed with other settings, replaces its old chunks;
* a file that was indexed from a folder being indexed again, and is no longer there (deleted,
  renamed), has its chunks removed;
* a collection holds one embedding model's vectors: it records which (its metadata), and
  indexing, searching or a chain with other embeddings is refused — ``rebuild`` starts over.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from eslabon.errors import MissingDependencyError, UserError

__all__ = ["IndexReport", "index_paths", "open_store", "parse_target", "search"]

SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")
_WORDS = re.compile(r"\w+")


@dataclass
class IndexReport:
    files: int = 0
    added: int = 0  # chunks added
    replaced_files: list[str] = field(default_factory=list)
    unchanged_files: list[str] = field(default_factory=list)
    removed_files: list[str] = field(default_factory=list)  # gone from the folders indexed


def parse_target(target: str) -> str:
    """``chroma:NAME`` -> the collection name."""
    kind, _, name = target.partition(":")
    if kind != "chroma" or len(name) < 3:
        raise UserError(f"unknown index '{target}': write chroma:COLLECTION (3 or more characters)")
    return name


def open_store(
    collection: str,
    embeddings: str | None = None,
    path: str | None = None,
    host: str | None = None,
    port: int = 8000,
    create: bool = True,
    rebuild: bool = False,
) -> Any:
    """The Chroma collection a chain's ``retriever: {type: chroma, ...}`` would read (``path``
    relative to the project root). ``create=False`` (searching): it must exist and hold
    documents. ``rebuild``: emptied first (to index it with other embeddings)."""
    from eslabon.rag.retrieval import build_embeddings, chroma_store
    from eslabon.trust.project import load_project

    return chroma_store(
        collection,
        build_embeddings(embeddings),
        path,
        host,
        port,
        load_project().root,
        create=create,
        rebuild=rebuild,
    )


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.parts.append(data.strip())


def _read(path: Path) -> str:
    if path.suffix.lower() == ".pdf":
        try:
            from pypdf import PdfReader
        except ImportError:
            raise MissingDependencyError("Indexing PDF files", "pdf", "pypdf") from None
        return "\n\n".join(page.extract_text() or "" for page in PdfReader(path).pages)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".html", ".htm"):
        parser = _Text()
        parser.feed(text)
        return "\n\n".join(parser.parts)
    return text


def _files(paths: Iterable[str | Path]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES))
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise UserError(f"{path}: unsupported file type; use {', '.join(SUFFIXES)}")
            found.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return found


def _source(path: Path, root: Path) -> str:
    """How a file is named in the collection: its path from the project root (the same
    whatever folder eslabon runs from), or its absolute path outside the project."""
    absolute = Path(os.path.abspath(path))
    for candidate, base in ((absolute, root), (absolute.resolve(), root.resolve())):
        if candidate.is_relative_to(base):
            return candidate.relative_to(base).as_posix()
    return absolute.as_posix()


def _under(source: str, folder: str) -> bool:
    if folder == ".":
        return not source.startswith("/")
    return source == folder or source.startswith(folder.rstrip("/") + "/")


def index_paths(
    paths: Iterable[str | Path],
    store: Any,
    chunk_size: int = 800,
    chunk_overlap: int = 100,
    progress: Callable[[str], None] | None = None,
    root: Path | None = None,
) -> IndexReport:
    """Index files into ``store`` (a LangChain Chroma store): unchanged ones are skipped,
    changed ones (content or settings) replaced, and files gone from a folder being indexed
    removed. ``root``: what sources are relative to (default: the project root)."""
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

    from eslabon.rag.retrieval import EMBEDDINGS_KEY, embeddings_id

    if chunk_overlap >= chunk_size:
        raise UserError("--chunk-overlap must be smaller than --chunk-size")
    if root is None:
        from eslabon.trust.project import load_project

        root = load_project().root
    plain = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    markdown = RecursiveCharacterTextSplitter.from_language(
        Language.MARKDOWN, chunk_size=chunk_size, chunk_overlap=chunk_overlap
    )
    embeddings = embeddings_id(store.embeddings)
    settings = f"chunk_size={chunk_size},chunk_overlap={chunk_overlap},embeddings={embeddings}"
    paths = list(paths)
    report = IndexReport()
    seen: set[str] = set()
    for path in _files(paths):
        report.files += 1
        source = _source(path, root)
        seen.add(source)
        text = _read(path)
        file_hash = hashlib.sha256(text.encode()).hexdigest()
        old = store.get(where={"source": source}, include=["metadatas"])
        if old["ids"] and all(
            m.get("file_hash") == file_hash and m.get("settings") == settings
            for m in old["metadatas"]
        ):
            report.unchanged_files.append(source)
        else:
            if old["ids"]:
                store.delete(ids=old["ids"])
                report.replaced_files.append(source)
            splitter = markdown if path.suffix.lower() in (".md", ".markdown") else plain
            # markdown splitting leaves fences and rules ("```", "---") as chunks of their own
            chunks = [c for c in splitter.split_text(text) if len(_WORDS.findall(c)) >= 3]
            metadatas = [
                {
                    "source": source,
                    "chunk": n,
                    "file_hash": file_hash,
                    "hash": hashlib.sha256(c.encode()).hexdigest(),
                    "settings": settings,
                    "embeddings": embeddings,
                }
                for n, c in enumerate(chunks)
            ]
            # one file's chunks under these settings: two files with the same text stay apart
            key = hashlib.sha256(f"{source}\0{file_hash}\0{settings}".encode()).hexdigest()
            ids = [f"{key[:16]}-{n}" for n in range(len(chunks))]
            if chunks:
                _add(store, chunks, metadatas, ids, embeddings)
            report.added += len(chunks)
        if progress:
            progress(source)
    report.removed_files = _prune(store, [_source(Path(p), root) for p in paths], seen)
    _record_embeddings(store, EMBEDDINGS_KEY, embeddings)
    return report


def _add(
    store: Any, chunks: list[str], metadatas: list[dict[str, Any]], ids: list[str], given: str
) -> None:
    try:
        store.add_texts(chunks, metadatas=metadatas, ids=ids)
    except Exception as exc:  # chromadb's InvalidArgumentError: a collection of other vectors
        if "dimension" not in str(exc):
            raise
        from eslabon.rag.retrieval import _mismatch

        raise _mismatch(store._collection.name, None, given) from None


def _prune(store: Any, indexed: list[str], seen: set[str]) -> list[str]:
    """Remove the chunks of files that were under ``indexed`` (the folders and files given)
    and are no longer there; the sources removed."""
    folders = [p for p in indexed if p not in seen]  # a file given is in ``seen``
    if not folders:
        return []
    everything = store.get(include=["metadatas"])
    gone: dict[str, list[str]] = {}
    for id_, meta in zip(everything["ids"], everything["metadatas"], strict=True):
        source = str((meta or {}).get("source", ""))
        if source and source not in seen and any(_under(source, f) for f in folders):
            gone.setdefault(source, []).append(id_)
    if gone:
        store.delete(ids=[i for ids in gone.values() for i in ids])
    return sorted(gone)


def _record_embeddings(store: Any, key: str, embeddings: str) -> None:
    """Say in the collection's metadata which embeddings its vectors come from (a collection
    made before eslabon recorded it, or by other code)."""
    collection = store._collection  # langchain-chroma exposes no public accessor
    metadata = dict(collection.metadata or {})
    if metadata.get(key) == embeddings:
        return
    # Chroma refuses hnsw settings in modify (they are fixed at creation, and kept)
    kept = {k: v for k, v in metadata.items() if not k.startswith("hnsw:")}
    with suppress(Exception):  # a server that refuses: the chunks record it too
        collection.modify(metadata={**kept, key: embeddings})


def search(store: Any, query: str, k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` best chunks for ``query``: content, source, chunk and relevance score."""
    try:
        hits = store.similarity_search_with_relevance_scores(query, k=k)
    except Exception as exc:  # chromadb's InvalidArgumentError: vectors of other embeddings
        if "dimension" not in str(exc):
            raise
        from eslabon.rag.retrieval import _mismatch, embeddings_id

        raise _mismatch(store._collection.name, None, embeddings_id(store.embeddings)) from None
    return [
        {
            "score": round(float(score), 4),
            "source": doc.metadata.get("source"),
            "chunk": doc.metadata.get("chunk"),
            "content": doc.page_content,
        }
        for doc, score in hits
    ]
