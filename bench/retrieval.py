"""Retrieval overhead: eslabon's chroma retriever vs chromadb directly, same embeddings.

Indexes 10,000 chunks (eslabon's `index_paths` from files vs `collection.add` directly), then runs
500 queries both ways on the same collection, interleaved: eslabon's retriever (LangChain Runnable
with callbacks, scores and sources) vs `collection.query` with the same query embedding. Both
sides embed with eslabon's offline embedding, so the difference is eslabon's own cost.
Run: ``make bench`` or ``.venv/bin/python bench/retrieval.py``.
Last line: ``query_overhead_ratio=X`` (eslabon time / chromadb time; target <= 1.10).
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import chromadb
from chromadb.config import Settings

from eslabon.rag.embeddings import HashingEmbeddings
from eslabon.rag.indexing import index_paths
from eslabon.rag.retrieval import ChromaRetriever, chroma_store

QUICK = bool(os.environ.get("BENCH_QUICK"))
CHUNKS, QUERIES = (300, 30) if QUICK else (10_000, 500)
PER_FILE = 100
WORDS = [
    *("modelo", "token", "contexto", "atención", "vector", "embedding", "prompt", "sistema"),
    *("usuario", "asistente", "cadena", "paso", "plan", "análisis", "solución", "ejemplo"),
    *("traductor", "curso", "clase", "lección"),
]


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(12)) + "."


def main() -> None:
    rng = random.Random(7)
    chunks = [sentence(rng) for _ in range(CHUNKS)]
    queries = [sentence(rng) for _ in range(QUERIES)]
    emb = HashingEmbeddings()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        docs = root / "docs"
        docs.mkdir()
        for n in range(0, CHUNKS, PER_FILE):  # one chunk per paragraph, short enough to stay whole
            (docs / f"f{n:05d}.txt").write_text("\n\n".join(chunks[n : n + PER_FILE]) + "\n")

        store = chroma_store("bench_eslabon", emb, str(root / "a"), None, 8000, root)
        start = time.perf_counter()
        report = index_paths([docs], store, chunk_size=120, chunk_overlap=0)
        eslabon_index_s = time.perf_counter() - start

        client = chromadb.PersistentClient(
            path=str(root / "b"), settings=Settings(anonymized_telemetry=False)
        )
        collection = client.get_or_create_collection(
            "bench_direct", metadata={"hnsw:space": "cosine"}
        )
        start = time.perf_counter()
        for n in range(0, CHUNKS, 1000):
            batch = chunks[n : n + 1000]
            collection.add(
                ids=[str(n + i) for i in range(len(batch))],
                documents=batch,
                embeddings=emb.embed_documents(batch),
                metadatas=[{"source": "direct"} for _ in batch],
            )
        direct_index_s = time.perf_counter() - start

        retriever = ChromaRetriever(vectorstore=store, k=4)
        # queries go to the collection eslabon indexed, read with chromadb's own client: the
        # same data and HNSW graph, so the difference is eslabon's cost alone
        indexed = chromadb.PersistentClient(
            path=str(root / "a"), settings=Settings(anonymized_telemetry=False)
        ).get_collection("bench_eslabon")

        def via_eslabon(q: str) -> int:
            return len(retriever.invoke(q))

        def direct(q: str) -> int:
            hits = indexed.query(
                query_embeddings=[emb.embed_query(q)],
                n_results=4,
                include=["documents", "metadatas", "distances"],
            )
            return len(hits["ids"][0])

        assert via_eslabon(queries[0]) == direct(queries[0]) == 4
        # ABBA order per query: whichever runs first in a pair pays for cold caches, and this
        # machine's noise (~10%) is larger than the overhead being measured
        times: dict[str, list[float]] = {"eslabon": [], "chromadb": []}
        for n, q in enumerate(queries):
            order = (("eslabon", via_eslabon), ("chromadb", direct))
            for name, fn in order if n % 2 else order[::-1]:
                start = time.perf_counter()
                fn(q)
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(
        f"indexed {report.added} chunks: eslabon {report.added / eslabon_index_s:,.0f} chunks/s "
        f"(files, splitting, hashes), chromadb add {CHUNKS / direct_index_s:,.0f} chunks/s"
    )
    print(
        f"query median: eslabon {med['eslabon']:.3f} ms, chromadb {med['chromadb']:.3f} ms "
        f"({QUERIES} queries, k=4)"
    )
    print(f"query_overhead_ratio={med['eslabon'] / med['chromadb']:.3f}")


if __name__ == "__main__":
    main()
