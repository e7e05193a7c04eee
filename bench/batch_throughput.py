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

``--engine ray``: the same 1,000 rows in-process and on a local Ray runtime (extra ``ray``)
with 2 workers, in one run, with the same number of rows in flight for both: 50 (in-process
concurrency 50; 2 workers x 25) and 100 (in-process 100; 2 x 50, each worker with the bench's
concurrency, as ``--concurrency`` is per worker). Ray's start-up — the runtime (``ray.init``),
then a batch's workers started, eslabon imported and the chain compiled in each, up to the first
finished row — is reported apart from its rows/s (first to last row), with the number of rows
from which Ray finishes sooner all told, and the load average before and after (Ray needs both
cores: other work on the machine lowers its figure first). Each is run twice, the best counts.
Last line: ``ray_speedup=X``: Ray's rows/s over the in-process engine's, at 100 in flight.
"""

from __future__ import annotations

import argparse
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("process", "ray"), default="process")
    engine = parser.parse_args().engine
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
    from eslabon import compile_chain, spec_from_yaml
    from eslabon.interfaces.batch import _background_loop, run_batch

    code = SERVER.format(tests=str(ROOT / "tests"), latency=LATENCY)
    server = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    if engine == "ray":
        try:
            engines(url)
        finally:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(timeout=10)
        return
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


WORKERS = 2


def engines(url: str) -> None:
    """In-process vs Ray, the same rows and the same number in flight."""
    from eslabon import compile_chain, spec_from_yaml
    from eslabon.interfaces.batch import run_batch
    from eslabon.interfaces.ray_engine import connect

    ref = {"provider": "openai", "name": "gpt-4o-mini", "openai_api_base": url + "/v1"}
    chain = compile_chain(spec_from_yaml("inputs: {q: x}\nprompt: '{q}'\n"), model=ref)
    rows = [{"id": n, "q": f"pregunta {n}"} for n in range(ROWS)]
    tmp = Path(tempfile.mkdtemp())
    run_batch(chain, rows[:CONCURRENCY], tmp / "warm.jsonl", concurrency=CONCURRENCY)

    def batch(name: str, **options: object) -> tuple[float, float, float]:
        """Wall time, time to the first finished row, rows/s from the first row to the last."""
        finished: list[float] = []
        start = time.perf_counter()
        report = run_batch(
            chain,
            rows,
            tmp / f"{name}.jsonl",
            on_row=lambda record, report: finished.append(time.perf_counter()),
            **options,
        )
        wall = time.perf_counter() - start
        assert report.done == ROWS, report.summary()
        return wall, finished[0] - start, (ROWS - 1) / (finished[-1] - finished[0])

    load_before = os.getloadavg()[0]  # a shared machine's other work moves the figures
    started = time.perf_counter()
    connect("local")  # the runtime --address local starts: loopback, no dashboard
    init_s = time.perf_counter() - started
    # the same rows in flight for both engines: the bench's concurrency, and twice it (each Ray
    # worker then has the in-process engine's concurrency, as `--concurrency` is per worker)
    levels = (CONCURRENCY, 2 * CONCURRENCY)
    runs: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for n in range(2):
        for level in levels:
            runs.setdefault(("process", level), []).append(
                batch(f"process{level}-{n}", concurrency=level)
            )
            runs.setdefault(("ray", level), []).append(
                batch(
                    f"ray{level}-{n}", engine="ray", workers=WORKERS, concurrency=level // WORKERS
                )
            )
    cpus = os.cpu_count()
    print(f"{ROWS} rows, {LATENCY * 1000:.0f} ms latency, {WORKERS} Ray workers, {cpus} CPUs; "
          f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")  # fmt: skip
    rates: dict[int, tuple[float, float]] = {}
    for level in levels:
        process_wall, _, _ = min(runs["process", level])
        ray_wall, first_s, ray_rate = min(runs["ray", level])
        rates[level] = (ROWS / process_wall, ray_rate)
        print(f"{level} in flight: in-process (concurrency {level}) {process_wall:.2f} s, "
              f"{ROWS / process_wall:.0f} rows/s; ray ({WORKERS} x {level // WORKERS}) "
              f"{ray_wall:.2f} s in the batch, {ray_rate:.0f} rows/s from its first row to its "
              f"last ({ray_rate * process_wall / ROWS:.2f}x)")  # fmt: skip
    process_rate, ray_rate = rates[levels[-1]]
    first_s = min(runs["ray", levels[-1]])[1]
    startup = init_s + first_s
    print(f"ray start-up: {init_s:.2f} s for the runtime (ray.init, once per process) + "
          f"{first_s:.2f} s to a batch's first row (workers, imports, compile)")  # fmt: skip
    gain = 1 / process_rate - 1 / ray_rate  # seconds saved per row once running
    if gain > 0:
        print(f"ray pays off from ~{startup / gain:.0f} rows with its own runtime "
              f"(--address local), ~{first_s / gain:.0f} rows on a running cluster")  # fmt: skip
    else:
        print("ray does not pay off here: its rows/s are not above the in-process engine's")
    print(f"ray_speedup={ray_rate / process_rate:.2f}")


if __name__ == "__main__":
    main()
