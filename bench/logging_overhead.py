"""What the run log adds to ``eslabon run``: at most 5 ms per run (issue 15).

Measured side by side in one run:

- ``RunLog.record`` of a realistic 3-step record, in process: on a log kept open (``eslabon
  batch`` shares one) and on a fresh one (``eslabon run``: connect, write, close), and the
  import of the run log module in a fresh interpreter — what logging adds to one run;
- the ``eslabon run`` command itself, in process (typer's runner on the real app, the same
  code path), with the log on and off (``--no-log``), interleaved, a few hundred times each: the
  median difference is what logging adds to a run once its module is loaded;
- the figure, ``log_overhead_ms``: that difference plus the module's import in a fresh process
  (what a command pays once). A whole command takes ~0.8 s and varies by tens of ms on a busy
  2-core machine, far more than the log's few ms, so the subprocess wall times below are a
  cross-check rather than the figure: ``eslabon run ... -m fake:echo`` as a whole command with
  the log on and off, interleaved, in a temporary project (its own eslabon.toml and log).

Run: ``make bench`` (or ``.venv/bin/python bench/logging_overhead.py``).
Last line: ``log_overhead_ms=X`` (target <= 5).
"""

from __future__ import annotations

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
RECORDS, RUNS, WARMUP, IN_PROCESS = (20, 2, 1, 5) if QUICK else (500, 31, 2, 300)
RUNS = int(os.environ.get("BENCH_RUNS", RUNS))  # more pairs on a busy machine
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


IMPORT = (
    "import time, eslabon.interfaces.cli\n"  # what eslabon run has loaded before it logs
    "start = time.perf_counter()\n"
    "import eslabon.observe.runlog\n"
    "print(time.perf_counter() - start)\n"
)


def import_ms(env: dict[str, str]) -> float:
    """Importing the run log module (sqlite3 with it) in a fresh ``eslabon`` process."""
    times = []
    for _ in range(3 if QUICK else 9):
        out = subprocess.run(
            [sys.executable, "-c", IMPORT], capture_output=True, text=True, check=True, env=env
        )
        times.append(float(out.stdout))
    return statistics.median(times) * 1e3


def has_no_log_flag() -> bool:
    out = subprocess.run([EXE, "run", "--help"], capture_output=True, text=True, check=True)
    return "--no-log" in out.stdout


def run_once(project: Path, env: dict[str, str], extra: list[str]) -> tuple[float, float]:
    """One ``eslabon run``: its wall time and its CPU time (user + system), in seconds."""
    args = [EXE, "run", str(CHAIN), "-m", "fake:echo", "-i", f"problema={PROBLEM}", *extra]
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(args, cwd=project, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)


def in_process_ms(project: Path) -> tuple[float, float, float]:
    """``eslabon run`` through typer's runner on the real app, log on and off interleaved:
    median ms per run on, off, and the median of the paired differences."""
    from typer.testing import CliRunner

    from eslabon.interfaces.cli import app

    runner = CliRunner()
    args = ["run", str(CHAIN), "-m", "fake:echo", "-i", f"problema={PROBLEM}"]
    saved = os.environ.pop("ESLABON_LOGS", None)
    cwd = os.getcwd()
    os.chdir(project)  # its eslabon.toml: the log goes to its .eslabon/
    try:
        times: dict[bool, list[float]] = {True: [], False: []}
        for n in range(IN_PROCESS + 3):
            for logged in (True, False) if n % 2 == 0 else (False, True):
                start = time.perf_counter()
                done = runner.invoke(app, args if logged else [*args, "--no-log"])
                if done.exit_code != 0:
                    raise RuntimeError(done.output)
                if n >= 3:  # the first runs load modules and make the log
                    times[logged].append(time.perf_counter() - start)
    finally:
        os.chdir(cwd)
        if saved is not None:
            os.environ["ESLABON_LOGS"] = saved
    on, off = times[True], times[False]
    paired = statistics.median(a - b for a, b in zip(on, off, strict=True))
    return statistics.median(on) * 1e3, statistics.median(off) * 1e3, paired * 1e3


def fastest_quarter(times: list[float]) -> float:
    """The mean of the fastest quarter: what a run takes when other work leaves it alone."""
    fast = sorted(times)[: max(1, len(times) // 4)]
    return sum(fast) / len(fast)


def rows(path: Path) -> int:
    if not path.exists():
        return 0
    with closing(sqlite3.connect(path)) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
        except sqlite3.OperationalError:
            return 0  # made, but nothing written


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
        }
        env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
        import_ms(env)  # compiles and caches
        imported = import_ms(env)
        print(f"import eslabon.observe.runlog in eslabon's process: {imported:.1f} ms median")
        print(f"the parts, import + a fresh log's record: {imported + fresh_us / 1e3:.1f} ms")

        # two temporary projects: the logs stay out of the repository's .eslabon
        on_project, off_project = folder / "on", folder / "off"
        on_project.mkdir()
        (on_project / "eslabon.toml").write_text("[logs]\nenabled = true\n")
        if has_no_log_flag():
            off_project, off_args, off_how = on_project, ["--no-log"], "--no-log"
        else:
            off_project.mkdir()
            (off_project / "eslabon.toml").write_text("[logs]\nenabled = false\n")
            off_args, off_how = [], "[logs] enabled = false (eslabon run has no --no-log yet)"
        ways = {"on": (on_project, []), "off": (off_project, off_args)}
        for _ in range(WARMUP):
            for project, extra in ways.values():
                run_once(project, env, extra)
        on_log = on_project / ".eslabon" / "logs.sqlite"
        before = rows(on_log)
        wall: dict[str, list[float]] = {"on": [], "off": []}
        cpu: dict[str, list[float]] = {"on": [], "off": []}
        for n in range(RUNS):
            order = ("on", "off") if n % 2 == 0 else ("off", "on")  # neither always goes first
            for way in order:
                project, extra = ways[way]
                seconds, used = run_once(project, env, extra)
                wall[way].append(seconds)
                cpu[way].append(used)
        logged = rows(on_log) - before
        load = os.getloadavg()[0]
        print(
            f"load average {load:.1f} on {os.cpu_count()} cores during the runs"
            + (": other work's noise in the wall times is far above 5 ms" if load > 0.5 else "")
        )
        on, off = (statistics.median(wall[w]) for w in ("on", "off"))
        for way, how in (("on", ""), ("off", f" ({off_how})")):
            print(
                f"eslabon run (3 steps, fake:echo), log {way + ':':4} "
                f"{statistics.median(wall[way]):.3f} s wall, "
                f"{statistics.median(cpu[way]):.3f} s CPU, medians of {RUNS}{how}"
            )
        # the figure is the wall time's; the others say how much of it is noise
        paired = statistics.median(a - b for a, b in zip(wall["on"], wall["off"], strict=True))
        quarter = fastest_quarter(wall["on"]) - fastest_quarter(wall["off"])
        cpu_diff = statistics.median(cpu["on"]) - statistics.median(cpu["off"])
        print(
            f"log on - off: {(on - off) * 1e3:+.1f} ms (medians), {paired * 1e3:+.1f} ms (median "
            f"of the pairs), {quarter * 1e3:+.1f} ms (fastest quarters), "
            f"{cpu_diff * 1e3:+.1f} ms CPU"
        )
        if logged != RUNS:
            print(
                f"note: the log on got {logged} of {RUNS} runs: eslabon run does not log (yet), "
                "so on and off measure the same thing"
            )
        run_on, run_off, per_run = in_process_ms(on_project)
        print(
            f"eslabon run in process (typer runner), log on: {run_on:.2f} ms, off: "
            f"{run_off:.2f} ms, medians of {IN_PROCESS}; paired difference {per_run:+.2f} ms"
        )
        print(f"the figure: {per_run:.2f} ms per run + {imported:.2f} ms import, once per command")
        print(f"log_overhead_ms={per_run + imported:.2f}")


if __name__ == "__main__":
    main()
