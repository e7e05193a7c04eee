"""Indexing documents into a Chroma collection, and searching it.

``index_paths`` loads .md / .txt / .html files (and .pdf with the ``pdf`` extra), splits them
with langchain-text-splitters and stores each chunk with its ``source``, ``chunk`` number and
content ``hash``. It is idempotent:
a file whose content is unchanged adds nothing; a changed file replaces its old chunks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
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
) -> Any:
    """The Chroma collection a chain's ``retriever: {type: chroma, ...}`` would read."""
    from eslabon.project import load_project
    from eslabon.retrieval import build_embeddings, chroma_store

    return chroma_store(
        collection, build_embeddings(embeddings), path, host, port, load_project().root
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


def index_paths(
    paths: Iterable[str | Path],
    store: Any,
    chunk_size: int = 800,
    chunk_overlap: int = 100,
    progress: Callable[[str], None] | None = None,
) -> IndexReport:
    """Index files into ``store`` (a LangChain Chroma store), skipping unchanged ones."""
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

    if chunk_overlap >= chunk_size:
        raise UserError("--chunk-overlap must be smaller than --chunk-size")
    plain = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    markdown = RecursiveCharacterTextSplitter.from_language(
        Language.MARKDOWN, chunk_size=chunk_size, chunk_overlap=chunk_overlap
    )
    report = IndexReport()
    for path in _files(paths):
        report.files += 1
        source = path.as_posix()
        text = _read(path)
        file_hash = hashlib.sha256(text.encode()).hexdigest()
        old = store.get(where={"source": source}, include=["metadatas"])
        if old["ids"] and all(m.get("file_hash") == file_hash for m in old["metadatas"]):
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
                }
                for n, c in enumerate(chunks)
            ]
            ids = [f"{file_hash[:16]}-{n}" for n in range(len(chunks))]
            if chunks:
                store.add_texts(chunks, metadatas=metadatas, ids=ids)
            report.added += len(chunks)
        if progress:
            progress(source)
    return report


def search(store: Any, query: str, k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` best chunks for ``query``: content, source, chunk and relevance score."""
    hits = store.similarity_search_with_relevance_scores(query, k=k)
    return [
        {
            "score": round(float(score), 4),
            "source": doc.metadata.get("source"),
            "chunk": doc.metadata.get("chunk"),
            "content": doc.page_content,
        }
        for doc, score in hits
    ]
