"""Streaming latency: a chain vs the bare LangChain chat model, on the loopback OpenAI server.

Both stream the same conversation from the same OpenAI-protocol test server on 127.0.0.1, which
waits a fixed 20 ms before the first token and 2 ms between tokens. Runs alternate, so machine
noise hits both alike. Reported: median time to first token (TTFT) and to the last token.
Run: ``make bench`` or ``.venv/bin/python bench/stream_latency.py``.
Last line: ``ttft_overhead_ms=X`` (eslabon's median TTFT minus the bare model's; target <= 2).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the loopback protocol server lives with the tests
from eslabon import Chain, compile_chain  # noqa: E402
from wire_server import WireServer  # noqa: E402

QUICK = bool(os.environ.get("BENCH_QUICK"))
RUNS = 3 if QUICK else 40
REPLY = " ".join(f"palabra{n}" for n in range(20))


def timed(
    stream: Callable[[], Iterator[Any]], has_text: Callable[[Any], bool]
) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    for chunk in stream():
        if first is None and has_text(chunk):
            first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None, "no token arrived"
    return (first - start) * 1000, (end - start) * 1000


def main() -> None:
    with WireServer() as server:
        server.first_token_delay, server.token_delay = 0.020, 0.002
        url = server.url + "/v1"
        bare = ChatOpenAI(model="gpt-4o-mini", base_url=url, api_key="sk-bench", max_retries=0)
        messages = [SystemMessage("Eres breve."), HumanMessage("Cuenta hasta veinte.")]
        chain = compile_chain(
            Chain(system="Eres breve.", inputs={"pedido": "x"}, prompt="{pedido}"),
            model={
                "provider": "openai",
                "name": "gpt-4o-mini",
                "base_url": url,
                "api_key": "sk-bench",
                "max_retries": 0,
            },
        )
        ways: dict[str, tuple[Callable[[], Iterator[Any]], Callable[[Any], bool]]] = {
            "bare ChatOpenAI.stream": (lambda: bare.stream(messages), lambda c: bool(c.text)),
            "eslabon chain.stream": (
                lambda: chain.stream({"pedido": "Cuenta hasta veinte."}),
                lambda c: bool(c.get("output")),
            ),
        }
        ttft: dict[str, list[float]] = {k: [] for k in ways}
        total: dict[str, list[float]] = {k: [] for k in ways}
        for _ in range(3):  # warm up connections and imports
            for stream, has_text in ways.values():
                server.replies.append(REPLY)
                timed(stream, has_text)
        for _ in range(RUNS):
            for name, (stream, has_text) in ways.items():
                server.replies.append(REPLY)
                first, last = timed(stream, has_text)
                ttft[name].append(first)
                total[name].append(last)
    med = {k: (statistics.median(ttft[k]), statistics.median(total[k])) for k in ways}
    for name, (first, last) in med.items():
        print(f"{name:>24}: first token {first:7.2f} ms, last token {last:7.2f} ms")
    (b_first, b_last), (e_first, e_last) = med.values()
    print(f"total-time overhead: {e_last - b_last:.2f} ms")
    print(f"ttft_overhead_ms={e_first - b_first:.2f}")


if __name__ == "__main__":
    main()
