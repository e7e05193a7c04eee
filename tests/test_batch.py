"""Batch runs against the loopback OpenAI-protocol server: faults, crashes, rate limits, cache."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from eslabon import load_chain
from eslabon.interfaces.batch import read_rows, run_batch
from eslabon.interfaces.outfile import finished_ids
from helpers import write
from wire_server import WireServer

SECRET = "sk-batch-SECRET-0123456789abcdef"
CHAIN = "inputs: {q: La pregunta}\nprompt: '{q}'\nretry: {attempts: 10, backoff: 0.01}\n"
EXE = str(Path(sys.executable).parent / "eslabon")


@pytest.fixture
def server(server: WireServer, monkeypatch: pytest.MonkeyPatch) -> WireServer:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # the shared server (conftest), with a key
    return server


def ref(server: WireServer, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "openai",
        "name": "gpt-4o-mini",
        "openai_api_base": server.url + "/v1",
        "timeout": 0.5,
        **extra,
    }


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "q": f"pregunta {i}"} for i in range(n)]


def test_two_thousand_rows_through_twenty_percent_faults(
    server: WireServer, tmp_path: Path
) -> None:
    server.fault_rate = 0.2
    server.timeout_sleep = 1.0  # past the client's 0.5 s timeout
    chain = load_chain(write(tmp_path, CHAIN), model=ref(server))
    out = tmp_path / "out.jsonl"
    report = run_batch(chain, rows(2000), out, concurrency=64)
    assert (report.done, report.failed) == (2000, 0)
    faults = Counter(r.fault for r in server.requests)
    assert set(faults) == {None, "rate", "server", "timeout", "malformed", "drop"}
    assert sum(n for kind, n in faults.items() if kind) > 300  # ~20% of ~2,500 requests
    got = records(out)
    assert len(got) == 2000 and len({r["id"] for r in got}) == 2000  # each row exactly once
    for record in got:
        assert record["error"] is None
        assert record["output"] == f"eco: {record['inputs']['q']}"
        assert record["id"] == "r" + record["inputs"]["q"].split()[-1]
        assert record["steps"] == {"output": record["output"]}
        assert record["model"] == "openai:gpt-4o-mini" and record["elapsed_s"] > 0


def test_kill_dash_nine_then_resume_loses_and_duplicates_nothing(
    server: WireServer, tmp_path: Path
) -> None:
    server.delay = 0.02
    server.hold_after = 80  # the batch cannot finish before it is killed
    inputs = tmp_path / "rows.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows(400)), encoding="utf-8")
    chain, out = write(tmp_path, CHAIN), tmp_path / "out.jsonl"
    model = json.dumps(ref(server))
    args = [EXE, "batch", str(chain), str(inputs), "-o", str(out), "-c", "8", "-m", model]
    env = {**os.environ, "OPENAI_API_KEY": SECRET}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while (not out.exists() or len(out.read_bytes().splitlines()) < 60) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    first_out, first_err = proc.communicate()
    server.hold_after = None
    server.released.set()
    assert proc.returncode == -signal.SIGKILL
    before = len(records(out))
    assert 60 <= before <= 80

    again = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"{before} skipped" in again.stdout
    got = records(out)
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in rows(400))
    assert all(r["error"] is None for r in got)
    # the key reached the server and nowhere else
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    shown = [out.read_text(), again.stdout, again.stderr, first_out.decode(), first_err.decode()]
    assert not any(SECRET in text for text in shown)


def test_a_torn_last_line_is_dropped_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    whole = json.dumps({"id": "a", "inputs": {}, "output": "x", "error": None})
    error = {"type": "X", "message": "m"}
    failed = json.dumps({"id": "b", "inputs": {}, "output": None, "error": error})
    out.write_text(f"{whole}\n{failed}\n" + '{"id": "c", "inputs": {"q', encoding="utf-8")
    assert finished_ids(out, retry_failed=False) == {"a", "b"}
    assert out.read_text(encoding="utf-8") == f"{whole}\n{failed}\n"
    assert finished_ids(out, retry_failed=True) == {"a"}
    assert out.read_text(encoding="utf-8") == f"{whole}\n"


def test_the_rate_limit_spaces_requests(server: WireServer, tmp_path: Path) -> None:
    # no faults here: a timeout a loaded machine could hit (0.5 s) would send a row twice
    chain = load_chain(write(tmp_path, CHAIN), model=ref(server, timeout=5))
    run_batch(chain, rows(12), tmp_path / "out.jsonl", concurrency=8, rate=10.0)
    times = sorted(r.at for r in server.requests)
    assert len(times) == 12
    # Only a lower bound: a loaded machine can delay one request and bunch it with the next at
    # the server (a minimum gap there flaked), but nothing can make 12 requests at 10/s, with
    # no burst allowed, arrive faster than 11 intervals.
    assert times[-1] - times[0] >= 11 * 0.1 * 0.9


def test_failed_rows_are_recorded_and_can_be_retried(server: WireServer, tmp_path: Path) -> None:
    chain = load_chain(write(tmp_path, CHAIN), model=ref(server))
    out = tmp_path / "out.jsonl"
    server.fail_next("auth")  # a refused key is not retried: that row fails, the rest go on
    report = run_batch(chain, rows(5), out, concurrency=1)
    assert (report.done, report.failed) == (4, 1)
    [bad] = [r for r in records(out) if r["error"]]
    assert (
        bad["error"]["type"] == "KeyRejectedError" and "OPENAI_API_KEY" in bad["error"]["message"]
    )
    assert SECRET not in out.read_text()
    report = run_batch(chain, rows(5), out, resume=True, retry_failed=True)
    assert (report.done, report.failed, report.skipped) == (1, 0, 4), records(out)[-1]["error"]
    assert sorted(r["id"] for r in records(out)) == [f"r{i}" for i in range(5)]


def test_a_cache_hit_makes_no_request(server: WireServer, tmp_path: Path) -> None:
    pytest.importorskip("langchain_community")
    inputs = tmp_path / "rows.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows(3)), encoding="utf-8")
    chain = write(tmp_path, CHAIN)
    args = ["--cache", str(tmp_path / "cache.sqlite"), "-m", json.dumps(ref(server))]
    env = {**os.environ, "OPENAI_API_KEY": SECRET}
    for name in ("one.jsonl", "two.jsonl"):
        done = subprocess.run(
            [EXE, "batch", str(chain), str(inputs), "-o", str(tmp_path / name), *args],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        # LangChain's cache lookup once warned on every hit (LangChainPendingDeprecationWarning)
        assert "Warning" not in done.stderr, done.stderr
    assert len(server.requests) == 3  # the second batch was answered from the cache
    first, second = (
        sorted((r["id"], r["output"]) for r in records(tmp_path / n))
        for n in ("one.jsonl", "two.jsonl")
    )
    assert first == second == [(f"r{i}", f"eco: pregunta {i}") for i in range(3)]


def test_csv_and_jsonl_rows_and_bad_rows(tmp_path: Path) -> None:
    with (tmp_path / "rows.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["q", "otro"])
        writer.writeheader()
        writer.writerows([{"q": "uno", "otro": "x"}, {"q": "dos", "otro": "y"}])
    assert read_rows(tmp_path / "rows.csv") == [
        {"q": "uno", "otro": "x", "id": 1},
        {"q": "dos", "otro": "y", "id": 2},
    ]
    chain = load_chain(write(tmp_path, "inputs: {q: x}\nprompt: '{q}'\n"), model="fake:echo")
    mixed = [{"id": 1, "q": "uno"}, {"id": 2, "otra": "falta q"}]
    report = run_batch(chain, mixed, tmp_path / "out.jsonl")
    assert (report.done, report.failed) == (1, 1)
    errors = {r["id"]: r["error"] for r in records(tmp_path / "out.jsonl")}
    assert errors[1] is None and errors[2]["type"] == "InputError"
    assert "missing input 'q'" in errors[2]["message"]


def test_parquet_rows(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"id": ["a", "b"], "q": ["uno", "dos"]}), tmp_path / "rows.parquet")
    assert read_rows(tmp_path / "rows.parquet") == [
        {"id": "a", "q": "uno"},
        {"id": "b", "q": "dos"},
    ]


def test_batch_mistakes_are_clear(tmp_path: Path) -> None:
    chain = write(tmp_path, "inputs: {q: x}\nprompt: '{q}'\n")
    (tmp_path / "dup.jsonl").write_text('{"id": 1, "q": "a"}\n{"id": 1, "q": "b"}\n')
    (tmp_path / "rows.txt").write_text("x\n")
    for inputs, message in (
        ("dup.jsonl", "the id '1' appears more than once"),
        ("rows.txt", "inputs must be .jsonl, .csv, .parquet"),
        ("nope.jsonl", "no such file"),
    ):
        done = subprocess.run(
            [EXE, "batch", str(chain), str(tmp_path / inputs), "-o", str(tmp_path / "o.jsonl")],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    bad_rate = subprocess.run(
        [EXE, "batch", str(chain), str(tmp_path / "dup.jsonl"), "-o", "o", "--rate", "fast"],
        capture_output=True,
        text=True,
    )
    assert bad_rate.returncode == 2 and "--rate 'fast'" in bad_rate.stderr


def test_a_pool_of_servers_shares_the_batch_within_each_ones_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with WireServer(delay=0.05) as a, WireServer(delay=0.05) as b:
        pool = {
            "provider": "openai",
            "name": "qwen2.5",
            "base_urls": [a.url + "/v1", b.url + "/v1"],
            "per_endpoint_concurrency": 3,
        }
        chain = load_chain(write(tmp_path, CHAIN), model=pool)
        report = run_batch(chain, rows(40), tmp_path / "out.jsonl", concurrency=12)
        assert (report.done, report.failed) == (40, 0)
        # both servers worked, each never beyond its limit, and together they ran 6 at once
        assert len(a.requests) + len(b.requests) == 40
        assert min(len(a.requests), len(b.requests)) >= 15
        assert a.max_in_flight <= 3 and b.max_in_flight <= 3
        assert a.max_in_flight + b.max_in_flight == 6
        assert {r["output"] for r in records(tmp_path / "out.jsonl")} == {
            f"eco: pregunta {i}" for i in range(40)
        }
        # the synchronous path shares the same limits
        chain.batch([{"q": "x"}] * 10, {"max_concurrency": 10})
        assert a.max_in_flight <= 3 and b.max_in_flight <= 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"base_urls": "http://127.0.0.1:1/v1"}, "model.base_urls: input should be a valid list"),
        ({"base_urls": ["http://127.0.0.1:1/v1"], "base_url": "http://127.0.0.1:2"}, "not both"),
        (
            {"base_urls": ["http://127.0.0.1:1/v1"], "per_endpoint_concurrency": 0},
            "per_endpoint_concurrency: input should be greater than or equal to 1",
        ),
    ],
)
def test_pool_mistakes(extra: dict[str, Any], message: str, tmp_path: Path) -> None:
    from eslabon import UserError

    with pytest.raises(UserError, match=message):
        load_chain(write(tmp_path, CHAIN), model={"provider": "ollama", "name": "m", **extra})


def test_progress_bar_on_a_terminal_and_plain_lines_otherwise(tmp_path: Path) -> None:
    import pty

    inputs = tmp_path / "rows.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows(40)), encoding="utf-8")
    chain = write(tmp_path, "inputs: {q: x}\nprompt: '{q}'\n")
    args = [EXE, "batch", str(chain), str(inputs), "-m", "fake:echo", "-o"]
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: eslabon on a pseudo-terminal
        os.execve(EXE, [*args, str(tmp_path / "tty.jsonl")], env)
    screen = b""
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        screen += data
    os.waitpid(pid, 0)
    text = screen.decode(errors="replace")
    assert "batch" in text and "━" in text and "rows/s" in text  # rich's bar, redrawn in place
    assert "40 done, 0 failed" in text

    piped = subprocess.run(
        [*args, str(tmp_path / "pipe.jsonl")], capture_output=True, text=True, env=env
    )
    assert "━" not in piped.stderr and "40/40 rows (0 failed" in piped.stderr
    assert piped.stdout.startswith("40 done, 0 failed")


EMPTY_CHAIN = """\
inputs:
  q: La pregunta
  tono: {description: El tono, default: amable}
prompt: "{q} ({tono})"
"""


def test_an_empty_cell_is_a_missing_value_the_default_or_an_error_naming_the_column(
    tmp_path: Path,
) -> None:
    (tmp_path / "rows.csv").write_text("id,q,tono\na,hola,\nb,,serio\nc,adios,seco\n")
    rows_ = read_rows(tmp_path / "rows.csv")
    assert rows_[0] == {"id": "a", "q": "hola", "tono": None}  # was "" (and "NaN values found")
    chain = load_chain(write(tmp_path, EMPTY_CHAIN), model="fake:echo")
    report = run_batch(chain, rows_, tmp_path / "out.jsonl")
    assert (report.done, report.failed) == (2, 1)
    got = {r["id"]: r for r in records(tmp_path / "out.jsonl")}
    assert got["a"]["output"] == "hola (amable)"  # the input's default
    assert got["c"]["output"] == "adios (seco)"
    error = got["b"]["error"]
    assert error["type"] == "InputError"
    assert error["message"].startswith("row b: column 'q' is empty (or null)"), error
    assert "no default" in error["message"] and 'default: ""' in error["message"]


def test_jsonl_nulls_are_missing_values_never_the_text_none(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text(
        '{"q": "hola", "tono": null}\n{"q": null}\n{"id": null, "q": "x"}\n'
    )
    rows_ = read_rows(tmp_path / "rows.jsonl")
    assert [r["id"] for r in rows_] == [1, 2, 3]  # a null id is the row number
    chain = load_chain(write(tmp_path, EMPTY_CHAIN), model="fake:echo")
    run_batch(chain, rows_, tmp_path / "out.jsonl")
    got = {r["id"]: r for r in records(tmp_path / "out.jsonl")}
    assert got[1]["output"] == "hola (amable)"
    assert got[2]["output"] is None and "row 2: column 'q' is empty" in got[2]["error"]["message"]
    assert "None" not in json.dumps([r["output"] for r in got.values()])


def test_an_input_whose_default_is_empty_text_may_be_left_empty(tmp_path: Path) -> None:
    chain = load_chain(
        write(tmp_path, 'inputs:\n  q: {description: x, default: ""}\nprompt: "[{q}]"\n'),
        model="fake:echo",
    )
    (tmp_path / "rows.csv").write_text('q\n""\n')
    run_batch(chain, read_rows(tmp_path / "rows.csv"), tmp_path / "out.jsonl")
    assert [r["output"] for r in records(tmp_path / "out.jsonl")] == ["[]"]


def test_the_exit_code_says_whether_rows_failed(tmp_path: Path) -> None:
    chain = write(tmp_path, EMPTY_CHAIN)
    (tmp_path / "good.csv").write_text("q\nhola\n")
    (tmp_path / "bad.csv").write_text('q\nhola\n""\n')
    codes = {}
    for name in ("good", "bad"):
        rows_, out = tmp_path / f"{name}.csv", tmp_path / f"{name}.jsonl"
        done = subprocess.run(
            [EXE, "batch", str(chain), str(rows_), "-m", "fake:echo", "-o", str(out)],
            capture_output=True,
            text=True,
        )
        codes[name] = done.returncode
        assert "Traceback" not in done.stderr
    # was 0 for both: a script could not tell that rows failed
    assert codes == {"good": 0, "bad": 3}


def test_each_record_names_each_steps_model(tmp_path: Path) -> None:
    chain = load_chain(
        write(
            tmp_path,
            "model: fake:echo\nsteps:\n  - {id: a, prompt: hola}\n"
            "  - {id: b, model: {provider: fake, responses: [listo]}, prompt: '{a}'}\n",
        )
    )
    run_batch(chain, [{"id": 1}], tmp_path / "out.jsonl")
    (record,) = records(tmp_path / "out.jsonl")
    assert record["models"] == {"a": "fake:echo", "b": "fake"}  # not the chain's model for both
    assert record["model"] == "fake:echo, fake" and record["output"] == "listo"
