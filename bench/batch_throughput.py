"""Batch throughput: eslabon's batch runner vs the ideal and vs LangChain's abatch.

1,000 rows of a one-step chain against the loopback OpenAI-protocol server (tests/wire_server.py,
run in its own process so its threads do not compete with the client for the GIL), which answers
every request after 100 ms. At concurrency 50 the ideal wall time is rows × latency / concurrency
= 2 s. Measured in the same run: ``run_batch`` (writing each row to a JSONL file as it
finishes), the same chain's ``abatch(max_concurrency=50)`` (results in memory, nothing
written), and the bare chat model's ``ainvoke`` 50 at a time — the floor any LangChain-based
runner stands on — plus the client CPU each request costs. When that CPU times the rows exceeds
the ideal, the client, not the runner, sets the pace. Each is run twice, alternating; the best
time counts. Run: ``make bench`` or ``.venv/bin/python bench/batch_throughput.py``.
Last line: ``efficiency=X`` (ideal / eslabon's wall time; target >= 0.85).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICK = bool(os.environ.get("BENCH_QUICK"))
ROWS, CONCURRENCY, LATENCY = (100, 20, 0.05) if QUICK else (1000, 50, 0.1)

SERVER = """
import sys, time
sys.path.insert(0, {tests!r})
from wire_server import WireServer
with WireServer(delay={latency}) as server:
    print(server.url, flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
"""


def main() -> None:
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
    from eslabon import compile_chain, spec_from_yaml
    from eslabon.interfaces.batch import _background_loop, run_batch

    code = SERVER.format(tests=str(ROOT / "tests"), latency=LATENCY)
    server = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    try:
        ref = {"provider": "openai", "name": "gpt-4o-mini", "openai_api_base": url + "/v1"}
        spec = spec_from_yaml("inputs: {q: x}\nprompt: '{q}'\n")
        chain = compile_chain(spec, model=ref)
        rows = [{"id": n, "q": f"pregunta {n}"} for n in range(ROWS)]
        run_batch(chain, rows[:CONCURRENCY], Path(tempfile.mkdtemp()) / "warm.jsonl",
                  concurrency=CONCURRENCY)  # fmt: skip

        inputs = [{"q": r["q"]} for r in rows]
        model = chain.steps[0].model
        loop = _background_loop()  # SDK clients keep their connections on one event loop

        def eslabon() -> float:
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                report = run_batch(chain, rows, Path(tmp) / "out.jsonl", concurrency=CONCURRENCY)
                assert report.done == ROWS, report.summary()
                return time.perf_counter() - start

        async def lcel() -> float:
            start = time.perf_counter()
            results = await chain.abatch(inputs, {"max_concurrency": CONCURRENCY})
            assert len(results) == ROWS
            return time.perf_counter() - start

        async def bare() -> float:
            # the client-side floor: the chat model alone, no chain, no output file
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(q: str) -> None:
                async with gate:
                    await model.ainvoke(q)

            start = time.perf_counter()
            await asyncio.gather(*(one(r["q"]) for r in rows))
            return time.perf_counter() - start

        times: dict[str, list[float]] = {"eslabon": [], "abatch": [], "bare": []}
        cpu: list[float] = []
        for _ in range(2):
            times["eslabon"].append(eslabon())
            times["abatch"].append(asyncio.run_coroutine_threadsafe(lcel(), loop).result())
            before = time.process_time()
            times["bare"].append(asyncio.run_coroutine_threadsafe(bare(), loop).result())
            cpu.append((time.process_time() - before) / ROWS * 1000)
        eslabon_s, abatch_s, bare_s = (min(times[k]) for k in ("eslabon", "abatch", "bare"))
        cpu_ms = min(cpu)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)
    ideal = ROWS * LATENCY / CONCURRENCY
    print(f"{ROWS} rows, {LATENCY * 1000:.0f} ms latency, concurrency {CONCURRENCY}")
    print(f"ideal (rows x latency / concurrency): {ideal:.2f} s")
    print(f"eslabon run_batch (JSONL written per row): {eslabon_s:.2f} s")
    print(f"LangChain abatch(max_concurrency={CONCURRENCY}): {abatch_s:.2f} s")
    print(f"bare ChatOpenAI.ainvoke, {CONCURRENCY} at a time (client floor): {bare_s:.2f} s")
    print(f"client CPU per request (ChatOpenAI + openai SDK + httpx): {cpu_ms:.1f} ms")
    print(f"eslabon vs abatch: {abatch_s / eslabon_s:.2f}x faster; vs the floor: "
          f"{bare_s / eslabon_s:.2f}")  # fmt: skip
    print(f"efficiency={ideal / eslabon_s:.2f}")


if __name__ == "__main__":
    main()
