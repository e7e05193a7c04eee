"""What reaches the run log: every `eslabon run`, chat turn and batch row (unless turned off),
Python runs only when asked; never a secret; many writers at once; a broken log never fails
a run. (The log's own store and the `eslabon logs` commands: test_runlog.py, test_logs_cli.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from eslabon import load_chain
from eslabon.observe.record import RunNotLogged
from eslabon.observe.runlog import RunLog
from helpers import CHAINS, write
from wire_server import WireServer

CANONICAL = CHAINS / "analizar_planificar_resolver.yaml"
SECRET = "sk-run-log-secret-0123456789"


def eslabon(
    *args: str, cwd: Path, log: Path, input: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "eslabon"
    environ = {**os.environ, "ESLABON_LOGS": str(log), **env}
    return subprocess.run(
        [str(exe), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        input=input,
        timeout=180,
        env=environ,
    )


def runs(log: Path) -> list[dict[str, Any]]:
    store = RunLog(log)
    return [store.get(r["id"]) for r in store.runs(limit=1000)]  # type: ignore[misc]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / ".git").mkdir()  # the project root: its .eslabon/ stays in tmp_path
    return tmp_path


def test_a_run_is_logged_with_each_steps_messages_output_and_figures(project: Path) -> None:
    log = project / "logs.sqlite"
    done = eslabon(
        "run",
        str(CANONICAL),
        "-m",
        "fake:echo",
        "-i",
        "problema=tres manzanas",
        cwd=project,
        log=log,
    )
    assert done.returncode == 0, done.stderr
    [run] = runs(log)
    assert (run["kind"], run["chain"], run["model"]) == ("run", CANONICAL.stem, "fake:echo")
    assert run["inputs"] == {"problema": "tres manzanas"} and run["error"] is None
    assert run["file"] == str(CANONICAL) and len(run["file_hash"]) == 64
    assert [s["id"] for s in run["steps"]] == ["analisis", "plan", "solucion"]
    first = run["steps"][0]
    assert first["messages"] == [
        {"role": "system", "content": "Eres un analista cuidadoso."},
        {"role": "user", "content": "Analiza el problema:\ntres manzanas"},
    ]
    assert first["output"] == "Analiza el problema:\ntres manzanas"  # fake:echo
    assert first["usage"]["output_tokens"] > 0 and first["cost"] == 0
    assert run["output"] == run["steps"][-1]["output"]
    assert run["usage"]["output_tokens"] == sum(s["usage"]["output_tokens"] for s in run["steps"])
    # streamed runs too; --no-log keeps nothing
    args = ("run", str(CANONICAL), "-m", "fake:echo", "-i", "problema=tres manzanas")
    assert eslabon(*args, "--stream", cwd=project, log=log).returncode == 0
    assert eslabon(*args, "--no-log", cwd=project, log=log).returncode == 0
    streamed, invoked = runs(log)  # newest first; streamed tokens are logged whole
    assert [s["output"] for s in streamed["steps"]] == [s["output"] for s in invoked["steps"]]
    assert streamed["output"] == invoked["output"]


def test_logs_enabled_false_in_the_project_keeps_nothing(project: Path) -> None:
    (project / "eslabon.toml").write_text("[logs]\nenabled = false\n", encoding="utf-8")
    log = project / "logs.sqlite"
    done = eslabon(
        "run", str(CANONICAL), "-m", "fake:echo", "-i", "problema=x", cwd=project, log=log
    )
    assert done.returncode == 0, done.stderr
    assert not log.exists()


def test_a_failed_run_is_logged_with_its_error_and_the_step_it_reached(
    project: Path, server: WireServer
) -> None:
    log = project / "logs.sqlite"
    model = f"{{provider: openai, name: gpt-4o-mini, base_url: '{server.url}/v1'}}"
    path = write(project, f"model: {model}\nprompt: hola\n")
    server.fail_next("auth")
    done = eslabon("run", str(path), cwd=project, log=log, OPENAI_API_KEY=SECRET)
    assert done.returncode == 2 and "error:" in done.stderr
    [run] = runs(log)
    assert run["error"].startswith("KeyRejectedError") and run["output"] is None
    [step] = run["steps"]
    assert (step["attempts"], step["calls"]) == (1, 0) and step["error"] == run["error"]


def test_a_key_never_enters_the_log(project: Path, server: WireServer) -> None:
    log = project / "logs.sqlite"
    model = f"{{provider: openai, name: gpt-4o-mini, base_url: '{server.url}/v1'}}"
    path = write(project, f"model: {model}\ninputs: {{frase: x}}\nprompt: '{{frase}}'\n")
    # the key pasted into an input, echoed back by the server, and in a failed call's error
    given = f"mi clave es {SECRET}"
    args = ("run", str(path), "-i", f"frase={given}")
    assert eslabon(*args, cwd=project, log=log, OPENAI_API_KEY=SECRET).returncode == 0
    server.fail_next("auth")
    assert eslabon(*args, cwd=project, log=log, OPENAI_API_KEY=SECRET).returncode == 2
    assert len(runs(log)) == 2
    for file in log.parent.glob(log.name + "*"):  # the database, its -wal and -shm
        assert SECRET.encode() not in file.read_bytes(), file


def test_a_damaged_log_never_fails_a_run(project: Path) -> None:
    log = project / "logs.sqlite"
    log.write_bytes(b"this is not a database" * 100)
    done = eslabon(
        "run", str(CANONICAL), "-m", "fake:echo", "-i", "problema=x", cwd=project, log=log
    )
    assert done.returncode == 0
    assert "Resuelve paso a paso" in done.stdout
    assert "warning: this run was not logged:" in done.stderr
    assert "Traceback" not in done.stderr


LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")  # held until this process is told to let go
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


def test_a_log_another_process_holds_never_fails_a_run(project: Path) -> None:
    log = project / "logs.sqlite"
    RunLog(log).record({"chain": "earlier"})
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(log)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        done = eslabon(
            "run", str(CANONICAL), "-m", "fake:echo", "-i", "problema=x", cwd=project, log=log
        )
    finally:
        locker.communicate("", timeout=30)
    assert done.returncode == 0, done.stderr
    assert "Resuelve paso a paso" in done.stdout  # the answer, printed in full
    [warning] = [line for line in done.stderr.splitlines() if "not logged" in line]
    assert warning.startswith("warning: this run was not logged:") and "locked" in warning
    assert "Traceback" not in done.stderr
    assert [r["chain"] for r in runs(log)] == ["earlier"]  # and the log is as it was


def test_chat_turns_and_batch_rows_from_many_processes_all_land(project: Path) -> None:
    log = project / "logs.sqlite"
    rows = project / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"problema": f"fila {n}"}) + "\n" for n in range(30)), encoding="utf-8"
    )
    exe = Path(sys.executable).parent / "eslabon"
    env = {**os.environ, "ESLABON_LOGS": str(log)}
    batch = [str(exe), "batch", str(CANONICAL), str(rows), "-m", "fake:echo", "-c", "4"]
    chat = [str(exe), "chat", str(CHAINS / "conversacion.yaml"), "-m", "fake:echo"]
    turns = "".join(f"turno {n}\n" for n in range(10))
    procs = [
        subprocess.Popen([*batch, "-o", str(project / f"out{n}.jsonl")], cwd=project, env=env)
        for n in range(2)
    ]
    procs += [
        subprocess.Popen(
            [*chat, "-s", f"s{n}"],
            cwd=project,
            env=env,
            stdin=subprocess.PIPE,
            text=True,
            stdout=subprocess.DEVNULL,
        )
        for n in range(2)
    ]
    for proc in procs[2:]:
        assert proc.stdin is not None
        proc.stdin.write(turns)
        proc.stdin.close()
    assert [p.wait(timeout=180) for p in procs] == [0, 0, 0, 0]
    logged = RunLog(log).runs(limit=1000)
    kinds = [r["kind"] for r in logged]
    assert kinds.count("batch") == 60 and kinds.count("chat") == 20
    batch_rows = sorted(r["row"] for r in logged if r["kind"] == "batch")
    assert batch_rows == sorted([str(n) for n in range(1, 31)] * 2)  # each row once per batch
    chats = [r for r in logged if r["kind"] == "chat"]
    assert {r["session"] for r in chats} == {"s0", "s1"}


def test_python_runs_are_logged_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "logs.sqlite"
    monkeypatch.setenv("ESLABON_LOGS", str(log))
    chain = load_chain(CANONICAL, model="fake:echo")
    chain.invoke({"problema": "x"})
    assert not log.exists()  # a library writes no file unasked
    logged = chain.with_log()
    given = {"problema": "y"}
    result = logged.invoke(given)
    assert result["output"] == chain.invoke(given)["output"]
    chunks = list(logged.stream(given))
    assert chunks[-1]["stats"]["calls"] == 3

    async def both() -> None:
        await logged.ainvoke(given)
        async for _ in logged.astream(given):
            pass

    asyncio.run(both())
    logged.batch([given, given])
    logged.flush()  # written by a background thread, off the runs' path
    found = runs(log)
    assert len(found) == 6 and {r["kind"] for r in found} == {"python"}
    assert all(len(r["steps"]) == 3 and r["output"] == result["output"] for r in found)
    assert all(r["steps"][0]["messages"] for r in found)
    with pytest.raises(Exception, match="missing input"):
        logged.invoke({})
    logged.flush()
    assert runs(log)[0]["error"].startswith("InputError")


def test_the_log_reads_its_own_meter_and_hands_it_to_no_other_run(tmp_path: Path) -> None:
    from eslabon.observe.meter import Meter, handed_meter

    log = tmp_path / "logs.sqlite"
    chain = load_chain(CANONICAL, model="fake:echo")
    logged = chain.with_log(log)
    mine = Meter(chain.prices)  # a caller's own meter, in the callbacks: left free
    result = logged.invoke({"problema": "uno"}, {"callbacks": [mine]})
    assert mine.owner is None and result["stats"]["calls"] == 3
    # a stream left after its first chunk: the meter was handed over for that step alone
    chunks = logged.stream({"problema": "dos"})
    next(chunks)
    assert handed_meter() is None
    other = chain.invoke({"problema": "tres"})
    assert other["stats"]["calls"] == 3
    rest = list(chunks)
    assert rest[-1]["stats"]["calls"] == 3

    async def streamed() -> None:
        async for _ in logged.astream({"problema": "cuatro"}):
            assert handed_meter() is None  # not across the yields either

    asyncio.run(streamed())
    logged.flush()
    found = {r["inputs"]["problema"]: r for r in runs(log)}
    assert set(found) == {"uno", "dos", "cuatro"}  # the plain run is not logged
    assert all(len(r["steps"]) == 3 and r["steps"][0]["messages"] for r in found.values())


THREADS = """
import sys
from concurrent.futures import ThreadPoolExecutor
from eslabon import load_chain
logged = load_chain(sys.argv[1], model="fake:echo").with_log(sys.argv[2])
with ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda n: logged.invoke({"problema": f"hilo {n}"}), range(200)))
# no flush: what the writer thread has not written yet is written before the exit
"""


def test_python_runs_from_many_threads_all_land_even_without_a_flush(tmp_path: Path) -> None:
    log = tmp_path / "logs.sqlite"
    done = subprocess.run(
        [sys.executable, "-c", THREADS, str(CANONICAL), str(log)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    found = RunLog(log).runs(limit=1000)
    assert sorted(r["inputs"]["problema"] for r in found) == sorted(f"hilo {n}" for n in range(200))
    assert len({r["id"] for r in found}) == 200


def test_a_log_that_cannot_be_written_is_a_warning_in_python(tmp_path: Path) -> None:
    bad = tmp_path / "logs.sqlite"
    bad.write_bytes(b"garbage" * 200)
    logged = load_chain(CANONICAL, model="fake:echo").with_log(bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = logged.invoke({"problema": "x"})
        logged.flush()
    assert result["output"]
    assert [w.category for w in caught] == [RunNotLogged]


def test_a_chat_turn_is_logged_whole(project: Path) -> None:
    log = project / "logs.sqlite"
    path = write(
        project,
        "inputs: {mensaje: x}\nsteps:\n"
        "  - {id: borrador, prompt: 'borrador para {mensaje}'}\n"
        "  - {id: final, history: true, prompt: 'mejora esto: {borrador}'}\n",
    )
    done = eslabon(
        "chat", str(path), "-m", "fake:echo", "-s", "s", cwd=project, log=log, input="hola amigo\n"
    )
    assert done.returncode == 0, done.stderr
    [turn] = runs(log)
    assert turn["kind"] == "chat" and turn["session"] == "s"
    steps = {s["id"]: s["output"] for s in turn["steps"]}
    # fake:echo answers with its prompt: every token of each step, not the last one
    assert steps == {
        "borrador": "borrador para hola amigo",
        "final": "mejora esto: borrador para hola amigo",
    }
    assert turn["output"] == steps["final"]


@pytest.mark.parametrize(
    ("text", "given"),
    [
        (CANONICAL.read_text(encoding="utf-8"), {"problema": "¿cuántas? «dos»"}),
        (
            "inputs: {x: x}\nsteps:\n  - {id: datos, prompt: '{x}', output_schema: "
            "{type: object, properties: {n: {type: integer}}, required: [n]}}\n"
            "  - {id: fin, prompt: 'n es {datos}'}\n",
            {"x": '{"n": 3}'},
        ),
    ],
    ids=["three steps", "structured output"],
)
def test_a_logged_chains_rows_are_those_of_its_record(
    tmp_path: Path, text: str, given: dict[str, str]
) -> None:
    """``with_log`` builds each run's rows straight from the run (fewer steps on every run's
    path); they are what the record every other way of logging makes would give."""
    from eslabon.observe.meter import Meter
    from eslabon.observe.record import run_record
    from eslabon.observe.runlog import prepared

    path = write(tmp_path, text)
    logged = load_chain(path, model="fake:echo").with_log(tmp_path / "logs.sqlite")
    meter = Meter(None, capture_messages=True)
    result = logged.chain.invoke(given, {"callbacks": [meter]})
    inputs = logged.chain._values(given)
    short = logged._rows(inputs, meter, result)
    long = prepared(run_record(logged.chain, inputs, meter, result, kind="python"))
    assert short is not None and long is not None
    assert short.run[1:] == long.run[1:]  # all but the id, new for each
    assert short.steps == long.steps
    assert len(short.steps) == len(logged.chain.steps)
