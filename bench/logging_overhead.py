"""What the run log adds to ``eslabon run``: at most 5 ms per run (issue 15).

The figure is measured on the whole command, as a user runs it: ``eslabon run`` of the
3-step example chain on ``fake:echo``, as a subprocess, with the log on and with ``--no-log``,
in a temporary project (its own eslabon.toml and log), with compiled modules cached as an
installed eslabon has them.

How the figure is taken, and why:

- **Pairs, interleaved.** The runs come in pairs, one with the log and one without, back to
  back, the order alternating from pair to pair. What the machine does meanwhile (another
  program's load rising and falling, the disk cache warming) drifts slowly compared with one
  pair, so it hits both runs of a pair about alike, and their difference keeps what the log
  adds rather than the drift.
- **The median of the paired differences** (log on minus log off), in ms: ``log_overhead_ms``.
  A whole command takes ~0.8 s, and on a busy 2-core machine one run now and then loses the CPU
  for tens of milliseconds — far more than the log's few. Such a run makes its pair's difference
  an outlier; a mean would move with every outlier, the median does not (half the pairs would
  have to be disturbed the same way to move it). With no effect at all, the differences are as
  often positive as negative, and the median is near 0.
- **How sure it is**: a distribution-free 95% interval for that median, read from the sorted
  differences (the order statistics the binomial distribution gives: no assumption about the
  noise's shape), and the Hodges-Lehmann estimate (the median of the pairwise means of the
  differences), a second robust estimate that should agree. If the interval is wide, the
  machine was too busy: run more pairs (``BENCH_RUNS=400``) or run it when the machine is
  quieter.
- **Complete**: the log-on runs must each have put exactly one row in the log, the log-off
  runs none, or the bench fails.

Also printed, for context: ``RunLog.record`` of a realistic 3-step record in process (on a log
kept open, and on a fresh one: connect, write, close), and the wall and CPU medians.

Run: ``make bench`` (or ``.venv/bin/python bench/logging_overhead.py``; ``BENCH_RUNS=N`` pairs,
200 by default: about 6 minutes on an idle machine).
Last line: ``log_overhead_ms=X`` (target <= 5).
"""

from __future__ import annotations

import math
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from eslabon.observe.runlog import RunLog

ROOT = Path(__file__).resolve().parent.parent
# BENCH_QUICK=1: one tiny round, to check that the benchmark runs (the test suite does this)
QUICK = bool(os.environ.get("BENCH_QUICK"))
RECORDS, PAIRS, WARMUP = (20, 3, 1) if QUICK else (500, 200, 3)
PAIRS = int(os.environ.get("BENCH_RUNS", PAIRS))  # more pairs on a busy machine
CHAIN = ROOT / "chains" / "analizar_planificar_resolver.yaml"
PROBLEM = "Tengo 3 manzanas y me como una. ¿Cuántas me quedan?"
EXE = str(Path(sys.executable).parent / "eslabon")


def three_steps() -> dict[str, Any]:
    """A record as ``eslabon run`` makes it for a 3-step chain (prompts of a few hundred
    characters, as the example chain's are)."""
    steps = []
    text = PROBLEM
    for name in ("analisis", "plan", "solucion"):
        prompt = f"Eres un analista cuidadoso.\n\nPaso {name}:\n{text}\n" * 3
        text = f"Resultado de {name}: " + "se resta uno de tres y quedan dos. " * 6
        steps.append(
            {
                "id": name,
                "model": "openai:gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "Eres un analista cuidadoso."},
                    {"role": "user", "content": prompt},
                ],
                "output": text,
                "usage": {
                    "input_tokens": 140,
                    "output_tokens": 90,
                    "total_tokens": 230,
                    "input_token_details": {"cache_read": 0},
                },
                "latency_ms": 612.4,
                "ttft_ms": 180.2,
                "calls": 1,
                "attempts": 1,
                "cost": 0.000075,
                "error": None,
            }
        )
    return {
        "started": "2026-11-27T05:01:02.345Z",
        "kind": "run",
        "chain": "analizar_planificar_resolver",
        "file": str(CHAIN),
        "file_hash": "9f" * 32,
        "model": "rapido (openai:gpt-4o-mini)",
        "inputs": {"problema": PROBLEM},
        "output": text,
        "error": None,
        "session": None,
        "row": None,
        "usage": {"input_tokens": 420, "output_tokens": 270, "total_tokens": 690},
        "latency_ms": 1837.2,
        "ttft_ms": 180.2,
        "cost": 0.000225,
        "steps": steps,
    }


def record_us(folder: Path) -> tuple[float, float]:
    """Median µs per record: on an open log, and on a fresh one (connect, write, close)."""
    record = three_steps()
    log = RunLog(folder / "open.sqlite")
    log.record(record)  # made: the runs below time writing, not the log's creation
    warm = []
    for _ in range(RECORDS):
        start = time.perf_counter()
        log.record(record)
        warm.append(time.perf_counter() - start)
    log.close()
    RunLog(folder / "fresh.sqlite").record(record)
    fresh = []
    for _ in range(max(RECORDS // 5, 5)):
        start = time.perf_counter()
        once = RunLog(folder / "fresh.sqlite")
        once.record(record)
        once.close()
        fresh.append(time.perf_counter() - start)
    return statistics.median(warm) * 1e6, statistics.median(fresh) * 1e6


def run_once(project: Path, env: dict[str, str], logged: bool) -> tuple[float, float]:
    """One ``eslabon run``: its wall time and its CPU time (user + system), in seconds."""
    args = [EXE, "run", str(CHAIN), "-m", "fake:echo", "-i", f"problema={PROBLEM}"]
    if not logged:
        args.append("--no-log")
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or "not logged" in done.stderr:
        raise RuntimeError(f"eslabon run failed or did not log:\n{done.stderr}")
    return wall, (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free ``level`` interval for the median of ``values``: the order
    statistics ``(k, n - k + 1)`` with P(k <= B <= n - k) >= level, B ~ Binomial(n, 1/2)."""
    ordered = sorted(values)
    n = len(ordered)
    k = 0  # the largest k whose tails each hold at most (1 - level) / 2
    tail = 0.0
    for i in range(n // 2 + 1):
        tail += math.comb(n, i) / 2**n
        if tail > (1 - level) / 2:
            break
        k = i + 1
    if k == 0:  # too few pairs for that level: the whole range
        return ordered[0], ordered[-1]
    return ordered[k - 1], ordered[n - k]


def hodges_lehmann(values: list[float]) -> float:
    """The median of the means of every pair of values (each with itself included)."""
    return statistics.median((a + b) / 2 for i, a in enumerate(values) for b in values[i:])


def rows(path: Path) -> int:
    if not path.exists():
        return 0
    with closing(sqlite3.connect(path)) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
        except sqlite3.OperationalError:
            return 0  # made, but nothing written


def paired_runs(project: Path, env: dict[str, str]) -> dict[str, list[tuple[float, float]]]:
    """``PAIRS`` pairs of runs, log on and off, the order alternating; (wall, CPU) of each."""
    times: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
    for n in range(PAIRS):
        order = ("on", "off") if n % 2 == 0 else ("off", "on")  # neither always goes first
        for way in order:
            times[way].append(run_once(project, env, logged=way == "on"))
    return times


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        warm_us, fresh_us = record_us(folder)
        print(f"RunLog.record, 3-step record, log kept open: {warm_us:8.0f} µs median")
        print(f"RunLog.record, 3-step record, fresh log:     {fresh_us:8.0f} µs median")
        # as an installed eslabon runs: compiled modules cached (here in a temporary folder,
        # not beside the sources), whatever PYTHONDONTWRITEBYTECODE says in this shell
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("ESLABON_MODEL", "ESLABON_LOGS", "PYTHONDONTWRITEBYTECODE")
            and not k.startswith("OTEL_")
        }
        env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
        project = folder / "project"
        project.mkdir()
        (project / "eslabon.toml").write_text("[logs]\nenabled = true\n", encoding="utf-8")
        log = project / ".eslabon" / "logs.sqlite"
        for _ in range(WARMUP):  # compiles and caches the modules, makes the log
            run_once(project, env, logged=True)
            run_once(project, env, logged=False)
        before = rows(log)
        started = time.perf_counter()
        times = paired_runs(project, env)
        minutes = (time.perf_counter() - started) / 60
        written = rows(log) - before
        print(
            f"{PAIRS} pairs of eslabon run (3 steps, fake:echo) in {minutes:.1f} min; load "
            f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end"
        )
        if written != PAIRS:
            raise SystemExit(f"the log-on runs wrote {written} rows, not {PAIRS}")
        print(f"run log: {written} rows for the {PAIRS} runs with the log on, none for the others")
        for way, how in (("on", ""), ("off", " (--no-log)")):
            wall = statistics.median(t[0] for t in times[way])
            cpu = statistics.median(t[1] for t in times[way])
            print(f"log {way + ':':4} {wall:.3f} s wall, {cpu:.3f} s CPU, medians{how}")
        wall_diff = [(a[0] - b[0]) * 1e3 for a, b in zip(times["on"], times["off"], strict=True)]
        cpu_diff = [(a[1] - b[1]) * 1e3 for a, b in zip(times["on"], times["off"], strict=True)]
        low, high = median_interval(wall_diff)
        figure = statistics.median(wall_diff)
        print(
            f"log on - off, per pair: median {figure:+.2f} ms (95% interval {low:+.2f} to "
            f"{high:+.2f}), Hodges-Lehmann {hodges_lehmann(wall_diff):+.2f} ms; CPU "
            f"{statistics.median(cpu_diff):+.2f} ms"
        )
        print(f"log_overhead_ms={figure:.2f}")


if __name__ == "__main__":
    main()
