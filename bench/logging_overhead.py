"""What the run log adds to ``eslabon run``: at most 5 ms per run (issue 15).

``eslabon run`` of the 3-step example chain on ``fake:echo``, in a temporary project (its own
eslabon.toml and log), with the log on and with ``--no-log``.

The figure: **forked runs.** A whole command takes ~0.9 s, almost all of it Python starting
and importing LangChain, the same with the log or without; on this 2-core machine two such
runs differ by tens of ms from the machine alone (±30 ms a pair), so hundreds of pairs of
whole commands still leave the log's few ms uncertain by ±5. So the part both ways share
is done once: a parent process imports every module an ``eslabon run --no-log`` imports
(listed by running one), freezes them out of the garbage collector's reach, and then, for each
run, forks a child that runs the ``eslabon run`` command itself (``main()``, the CLI's own
entry point, with the arguments above), runs the exit handlers, and ends. The parent times
fork to exit. What differs between the two ways — importing the log's module, opening the
file (recovering its WAL), building, checking and writing the record — happens in the child,
timed. The copy-on-write of the forked memory makes that work, if anything, a little dearer
than in a fresh process (the log's module imports in ≈ 1.6 ms forked, ≈ 0.6 ms fresh): the
figure errs against the log. Interpreter shut-down is left out both ways (``os._exit``, as
the log never closes its file: see ``eslabon.observe.runlog._KEPT``).

- **Pairs, interleaved**, the order alternating from pair to pair, so drift in the machine's
  load hits both runs of a pair alike.
- **The median of the paired differences** (log on minus log off), in ms: ``log_overhead_ms``,
  with a distribution-free 95% interval (order statistics of the binomial distribution: no
  assumption about the noise's shape), and the mean difference beside it (which counts the
  run now and then that checkpoints the log: ``_trim_wal``).
- **Complete**: the log-on runs must each have put exactly one row in the log, the log-off
  runs none, or the bench fails.

Printed as a cross-check, not the figure: the same pairs as whole ``eslabon run`` subprocesses
(``BENCH_RUNS`` pairs, 40 by default), with their interval — consistent with the figure, and
as wide as the machine's noise makes it; and ``RunLog.record`` of a realistic 3-step record in
process (on a log kept open, and on a fresh one: connect, write, close).

Run: ``make bench`` (or ``.venv/bin/python bench/logging_overhead.py``; ``BENCH_FORKS=N`` forked
pairs, 300 by default; about 3 minutes on an idle machine).
Last line: ``log_overhead_ms=X`` (target <= 5).
"""

from __future__ import annotations

import atexit
import gc
import importlib
import json
import math
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# BENCH_QUICK=1: one tiny round, to check that the benchmark runs (the test suite does this)
QUICK = bool(os.environ.get("BENCH_QUICK"))
RECORDS, PAIRS, FORKS, WARMUP = (20, 3, 5, 1) if QUICK else (500, 40, 300, 3)
PAIRS = int(os.environ.get("BENCH_RUNS", PAIRS))  # whole commands, for the cross-check
FORKS = int(os.environ.get("BENCH_FORKS", FORKS))  # forked runs: the figure
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
    from eslabon.observe.runlog import RunLog

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


def command(logged: bool) -> list[str]:
    """The ``eslabon run`` command's arguments (after ``eslabon``)."""
    args = ["run", str(CHAIN), "-m", "fake:echo", "-i", f"problema={PROBLEM}"]
    return args if logged else [*args, "--no-log"]


# what a process runs to list the modules an ``eslabon run --no-log`` imports
LIST_MODULES = """
import atexit, sys
out, sys.argv = sys.argv[1], ["eslabon", *sys.argv[2:]]
atexit.register(lambda: open(out, "w").write("\\n".join(sorted(sys.modules))))
from eslabon.interfaces.cli import main
main()
"""


def forked_once(main: Any, logged: bool) -> float:
    """One ``eslabon run`` in a forked child; its wall time, fork to exit, in seconds."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: the command, its exit handlers, the end (no clean-up: see above)
        code = 3
        try:
            quiet = os.open(os.devnull, os.O_WRONLY)
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)
            sys.argv = ["eslabon", *command(logged)]
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            atexit._run_exitfuncs()
            sys.stdout.flush()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"a forked eslabon run ended with status {status}")
    return elapsed


def forked_pairs(project: Path, modules: Path) -> None:
    """(In a process of its own, started by :func:`forked`.) Import what ``eslabon run
    --no-log`` imports, then time ``FORKS`` pairs of forked runs; print them as JSON."""
    for name in modules.read_text(encoding="utf-8").split():
        with suppress(Exception):  # a module only importable where it was: left out
            importlib.import_module(name)
    from eslabon.interfaces.cli import main

    os.chdir(project)
    gc.collect()
    gc.freeze()  # the shared part out of the collector's reach: fewer copies on write
    for _ in range(WARMUP):
        forked_once(main, True)
        forked_once(main, False)
    times: dict[str, list[float]] = {"on": [], "off": []}
    for n in range(FORKS):
        for way in ("on", "off") if n % 2 == 0 else ("off", "on"):
            times[way].append(forked_once(main, way == "on"))
    print(json.dumps(times))


def forked(project: Path, env: dict[str, str], folder: Path) -> dict[str, list[float]]:
    """The forked runs' times (see the docstring), from a fresh process."""
    modules = folder / "modules.txt"
    subprocess.run(
        [sys.executable, "-c", LIST_MODULES, str(modules), *command(False)],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
    )
    done = subprocess.run(
        [sys.executable, __file__, "--forked", str(project), str(modules)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the forked runs failed:\n{done.stderr}")
    times: dict[str, list[float]] = json.loads(done.stdout)
    return times


def run_once(project: Path, env: dict[str, str], logged: bool) -> tuple[float, float]:
    """One ``eslabon run``: its wall time and its CPU time (user + system), in seconds."""
    args = [EXE, *command(logged)]
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


def interval_text(diffs: list[float]) -> str:
    low, high = median_interval(diffs)
    return (
        f"median {statistics.median(diffs):+.2f} ms (95% interval {low:+.2f} to {high:+.2f}), "
        f"mean {statistics.fmean(diffs):+.2f} ms"
    )


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

        # the cross-check: whole commands
        before = rows(log)
        started = time.perf_counter()
        times = paired_runs(project, env)
        minutes = (time.perf_counter() - started) / 60
        written = rows(log) - before
        if written != PAIRS:
            raise SystemExit(f"the log-on runs wrote {written} rows, not {PAIRS}")
        wall = {way: statistics.median(t[0] for t in times[way]) for way in times}
        wall_diff = [(a[0] - b[0]) * 1e3 for a, b in zip(times["on"], times["off"], strict=True)]
        cpu_diff = [(a[1] - b[1]) * 1e3 for a, b in zip(times["on"], times["off"], strict=True)]
        print(
            f"whole commands, {PAIRS} pairs in {minutes:.1f} min: log on {wall['on']:.3f} s, "
            f"off {wall['off']:.3f} s (medians); on - off: {interval_text(wall_diff)}; CPU "
            f"median {statistics.median(cpu_diff):+.2f} ms"
        )

        # the figure: forked runs
        before = rows(log)
        started = time.perf_counter()
        forks = forked(project, env, folder)
        minutes = (time.perf_counter() - started) / 60
        written = rows(log) - before
        if written != FORKS + WARMUP:
            raise SystemExit(f"the forked log-on runs wrote {written} rows, not {FORKS + WARMUP}")
        diffs = [(a - b) * 1e3 for a, b in zip(forks["on"], forks["off"], strict=True)]
        on, off = (statistics.median(forks[way]) * 1e3 for way in ("on", "off"))
        print(
            f"forked runs, {FORKS} pairs in {minutes:.1f} min: log on {on:.1f} ms, off {off:.1f} "
            f"ms (medians, fork to exit); on - off: {interval_text(diffs)}"
        )
        print(
            f"run log: one row for each run with the log on, none for the others; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end"
        )
        print(f"log_overhead_ms={statistics.median(diffs):.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--forked"]:
        forked_pairs(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
