"""Batch safety, with real processes, files and SQLite: one writer per output file, a cache that
never fails a call, resume touching only eslabon's own output, clear errors for user mistakes."""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eslabon import load_chain
from eslabon.errors import UserError
from eslabon.interfaces.batch import arun_batch, read_rows, run_batch
from helpers import write
from wire_server import ToolCall, WireServer

SECRET = "sk-safety-SECRET-0123456789abcdef"
CHAIN = "inputs: {q: La pregunta}\nprompt: '{q}'\nretry: {attempts: 10, backoff: 0.01}\n"
EXE = str(Path(sys.executable).parent / "eslabon")


def env() -> dict[str, str]:
    """The commands' environment, read when they start: conftest's ESLABON_LOGS (the test
    session's run log, never the repository's) is set only once the tests run."""
    return {**os.environ, "OPENAI_API_KEY": SECRET}


class HeldServer(WireServer):
    """Holds every answer until ``release`` is set (by the test, or once ``release_after``
    requests have arrived): a batch waiting on it surely holds its lock; answers released
    together finish together."""

    def __init__(self, release_after: int = 0) -> None:
        super().__init__()
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.release_after = release_after
        self._count = itertools.count(1)

    def _reply_for(self, last_user: str) -> str | ToolCall:
        self.arrived.set()
        if next(self._count) == self.release_after:
            self.release.set()
        self.release.wait(60)
        return super()._reply_for(last_user)


@pytest.fixture
def server(server: WireServer, monkeypatch: pytest.MonkeyPatch) -> WireServer:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # the shared server (conftest), with a key
    return server


@pytest.fixture
def held() -> Iterator[HeldServer]:
    with HeldServer() as wire:
        try:
            yield wire
        finally:
            wire.release.set()


def ref(server: WireServer) -> dict[str, Any]:
    # a long timeout: a held answer must not turn into retries
    base = server.url + "/v1"
    return {"provider": "openai", "name": "gpt-4o-mini", "openai_api_base": base, "timeout": 30}


def rows(n: int, q: str | None = None) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "q": q or f"pregunta {i}"} for i in range(n)]


def rows_file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows(n)), encoding="utf-8")
    return path


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def batch_args(tmp_path: Path, server: WireServer, out: Path, n: int = 20) -> list[str]:
    chain, inputs = write(tmp_path, CHAIN), rows_file(tmp_path, n)
    model = json.dumps(ref(server))
    return [EXE, "batch", str(chain), str(inputs), "-o", str(out), "-c", "4", "-m", model]


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env(), capture_output=True, text=True, timeout=120)


# -- one batch per output file ----------------------------------------------------------------


def test_a_second_batch_on_the_same_output_is_refused(
    held: HeldServer, server: WireServer, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    first = subprocess.Popen(
        batch_args(tmp_path, held, out), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert held.arrived.wait(60), "the first batch never called its model"
        # the first batch is now surely running (its rows wait on the held server); a second
        # one, fresh or resuming, on a server that answers at once, must not start
        busy = f"another eslabon batch (pid {first.pid} on {socket.gethostname()}) is writing"
        for extra in ([], ["--resume"], ["--resume", "--retry-failed"]):
            second = run([*batch_args(tmp_path, server, out), *extra])
            assert second.returncode == 2, second.stderr
            assert f"{busy} {out}" in second.stderr and "Traceback" not in second.stderr
        assert server.requests == []
    finally:
        held.release.set()
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    ids = Counter(r["id"] for r in records(out))
    assert ids == Counter(r["id"] for r in rows(20))  # every row exactly once
    assert not (tmp_path / "out.jsonl.lock").exists()  # a finished batch leaves only OUT


def test_the_lock_of_a_batch_killed_with_dash_nine_does_not_block_resume(
    held: HeldServer, server: WireServer, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    first = subprocess.Popen(
        batch_args(tmp_path, held, out), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert held.arrived.wait(60), "the first batch never called its model"
    lock = tmp_path / "out.jsonl.lock"
    assert f"pid {first.pid} on " in lock.read_text()  # held by the running batch
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    assert lock.exists()  # a killed batch leaves its lock file, but the OS dropped the lock
    again = run([*batch_args(tmp_path, server, out), "--resume"])
    assert again.returncode == 0, again.stderr
    assert Counter(r["id"] for r in records(out)) == Counter(r["id"] for r in rows(20))
    assert not lock.exists()


def test_a_second_batch_in_the_same_process_is_refused(tmp_path: Path) -> None:
    from eslabon.interfaces.outfile import output_lock

    chain = load_chain(write(tmp_path, CHAIN), model="fake:echo")
    out = tmp_path / "out.jsonl"
    with output_lock(out), pytest.raises(UserError, match=f"pid {os.getpid()} on "):
        run_batch(chain, rows(3), out)
    assert not out.exists()
    assert run_batch(chain, rows(3), out).done == 3  # released


# -- a cache never fails a call -----------------------------------------------------------------

# LangChain's cache decodes answers with its beta ``loads``, whose warnings this suite turns into
# errors (and LangChain then into undecodable answers): in-process cache tests let them pass.
quiet_loads = pytest.mark.filterwarnings(
    "ignore:The function `loads` is in beta:DeprecationWarning",
    "ignore:The default value of `allowed_objects`:PendingDeprecationWarning",
)


@quiet_loads
def test_identical_rows_at_concurrency_sixteen_all_succeed_with_a_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("langchain_community")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    cache = tmp_path / "cache.sqlite"
    # the first 16 identical calls all miss, and are answered together: 16 writes of one key
    with HeldServer(release_after=16) as server:
        chain = load_chain(write(tmp_path, CHAIN), model=ref(server)).with_cache(cache)
        out = tmp_path / "out.jsonl"
        report = run_batch(chain, rows(100, q="la misma"), out, concurrency=16)
    assert (report.done, report.failed) == (100, 0), report.errors
    assert {r["output"] for r in records(out)} == {"eco: la misma"}
    assert len(server.requests) < 100  # the rest were answered from the cache
    assert SECRET.encode() not in cache.read_bytes()


def test_two_processes_sharing_a_cache_fail_no_row(server: WireServer, tmp_path: Path) -> None:
    pytest.importorskip("langchain_community")
    cache = tmp_path / "cache.sqlite"
    both = [
        [*batch_args(tmp_path, server, tmp_path / name, n=300), "-c", "16", "--cache", str(cache)]
        for name in ("one.jsonl", "two.jsonl")
    ]
    procs = [
        subprocess.Popen(args, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args in both
    ]
    # both finish (or are killed) before any assertion: a process left running would leak
    # into later tests as a ResourceWarning
    try:
        results = [(proc, proc.communicate(timeout=300)[1]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, stderr in results:
        assert proc.returncode == 0, stderr
        assert "IntegrityError" not in stderr and "INSERT" not in stderr
    for name in ("one.jsonl", "two.jsonl"):
        got = records(tmp_path / name)
        assert len(got) == 300 and [r for r in got if r["error"]] == []
    assert SECRET.encode() not in cache.read_bytes()


@quiet_loads
def test_a_write_that_loses_a_race_is_ignored(tmp_path: Path) -> None:
    pytest.importorskip("langchain_community")
    from langchain_core.outputs import Generation
    from sqlalchemy import event

    from eslabon.running.runtime import sqlite_cache

    path = tmp_path / "cache.sqlite"
    cache = sqlite_cache(path)

    # Another writer stores the same key between this update's look and its insert: exactly
    # what two identical calls finishing together do. A real second SQLite connection does it.
    raced = threading.Event()

    @event.listens_for(cache.engine, "before_cursor_execute")
    def other_writer_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT") and not raced.is_set():
            raced.set()
            with sqlite3.connect(path) as other:
                other.execute(
                    "INSERT INTO full_llm_cache (prompt, llm, idx, response) VALUES (?, ?, ?, ?)",
                    ("p", "m", 0, _dumped("theirs")),
                )

    cache.update("p", "m", [Generation(text="mine")])  # raised IntegrityError before
    assert raced.is_set()
    assert [g.text for g in cache.lookup("p", "m")] == ["theirs"]


def _dumped(text: str) -> str:
    from langchain_core.load import dumps
    from langchain_core.outputs import Generation

    return dumps(Generation(text=text))


@quiet_loads
def test_a_cache_that_fails_after_opening_is_a_miss(server: WireServer, tmp_path: Path) -> None:
    pytest.importorskip("langchain_community")
    cache = tmp_path / "cache.sqlite"
    chain = load_chain(write(tmp_path, CHAIN), model=ref(server)).with_cache(cache)
    assert run_batch(chain, rows(2), tmp_path / "one.jsonl").done == 2
    assert len(server.requests) == 2
    assert run_batch(chain, rows(2), tmp_path / "two.jsonl").done == 2
    assert len(server.requests) == 2  # answered from the cache: no request
    with cache.open("r+b") as f:  # corrupted in place, under the open cache
        f.write(b"this is not a database at all!!" * 4)
    report = run_batch(chain, rows(3), tmp_path / "three.jsonl")
    assert (report.done, report.failed) == (3, 0), report.errors
    assert len(server.requests) == 5  # every lookup a miss


@quiet_loads
def test_a_stored_answer_that_cannot_be_decoded_is_a_miss(
    server: WireServer, tmp_path: Path
) -> None:
    pytest.importorskip("langchain_community")
    cache = tmp_path / "cache.sqlite"
    chain = load_chain(write(tmp_path, CHAIN), model=ref(server)).with_cache(cache)
    run_batch(chain, rows(1), tmp_path / "one.jsonl")
    alien = {"lc": 1, "type": "constructor", "id": ["not", "allowed", "Thing"], "kwargs": {}}
    with sqlite3.connect(cache) as db:  # written by another version, or tampered with
        db.execute("UPDATE full_llm_cache SET response = ?", (json.dumps(alien),))
    run_batch(chain, rows(1), tmp_path / "two.jsonl")
    assert [r["output"] for r in records(tmp_path / "two.jsonl")] == ["eco: pregunta 0"]
    assert len(server.requests) == 2  # a miss, not the stored JSON as the answer


def test_a_cache_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("langchain_community")
    chain, inputs = write(tmp_path, CHAIN), rows_file(tmp_path, 2)
    (tmp_path / "notes.txt").write_text("not a folder\n")
    (tmp_path / "broken.sqlite").write_text("not a database, just text " * 20)
    for cache, reason in (
        (tmp_path / "broken.sqlite", "file is not a database"),
        (tmp_path / "notes.txt" / "cache.sqlite", "Not a directory"),
    ):
        args = [EXE, "batch", str(chain), str(inputs), "-o", str(tmp_path / "o.jsonl")]
        done = run([*args, "-m", "fake:echo", "--cache", str(cache)])
        assert done.returncode == 2, done.stderr
        assert f"error: cannot use the cache {cache}: {reason}" in done.stderr
        assert "Traceback" not in done.stderr and "SELECT" not in done.stderr
        assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_a_cache_in_a_read_only_folder_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("langchain_community")
    from eslabon.running.runtime import sqlite_cache

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(UserError, match=r"cannot use the cache .*cache\.sqlite"):
            sqlite_cache(folder / "cache.sqlite")
    finally:
        folder.chmod(0o755)


# -- resume touches only eslabon's own output -------------------------------------------------


def record_line(id_: str, error: dict[str, str] | None = None) -> str:
    output = None if error else f"eco: {id_}"
    return json.dumps({"id": id_, "inputs": {"q": id_}, "output": output, "error": error}) + "\n"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('# notas\nuna línea\n{"id": 1}\n', 1),  # prose
        (record_line("r0") + '{"a": 1}\n' + record_line("r1"), 2),  # JSON, not a record
        (record_line("r0") + "\n" + record_line("r1"), 2),  # a blank line eslabon never writes
        (record_line("r0") + "la última línea", 2),  # a last line that no record starts with
        (record_line("r0") + '{"id": 7}', 2),  # starts like a record, but whole and not one
        ("[1, 2]", 1),
    ],
)
def test_resume_refuses_a_file_it_did_not_write(text: str, line: int, tmp_path: Path) -> None:
    chain = load_chain(write(tmp_path, CHAIN), model="fake:echo")
    out = tmp_path / "notes.txt"
    out.write_text(text, encoding="utf-8")
    before = out.read_bytes()
    for retry_failed in (False, True):
        with pytest.raises(UserError, match=rf"notes.txt:{line}: not a record eslabon batch wrote"):
            run_batch(chain, rows(3), out, resume=True, retry_failed=retry_failed)
        assert out.read_bytes() == before


def test_resume_refuses_the_chain_file_and_the_inputs_file(tmp_path: Path) -> None:
    chain, inputs = write(tmp_path, CHAIN), rows_file(tmp_path, 3)
    for target, role in ((chain, "the chain file"), (inputs, "the inputs file")):
        before = target.read_bytes()
        for extra in ([], ["--resume"], ["--resume", "--retry-failed"]):
            args = [EXE, "batch", str(chain), str(inputs), "-o", str(target), "-m", "fake:echo"]
            done = run([*args, *extra])
            assert done.returncode == 2, done.stderr
            assert f"error: {target} is {role}" in done.stderr
            assert target.read_bytes() == before
    # from Python too: the chain knows its file, the rows theirs
    with pytest.raises(UserError, match="is the inputs file"):
        run_batch(load_chain(chain, model="fake:echo"), read_rows(inputs), inputs, resume=True)
    assert inputs.read_bytes() == before


def test_resume_on_an_empty_file_runs_every_row(tmp_path: Path) -> None:
    chain = load_chain(write(tmp_path, CHAIN), model="fake:echo")
    out = tmp_path / "out.jsonl"
    out.touch()
    report = run_batch(chain, rows(3), out, resume=True)
    assert (report.done, report.skipped) == (3, 0)
    assert sorted(r["id"] for r in records(out)) == ["r0", "r1", "r2"]


def test_resume_drops_only_a_torn_record_and_keeps_every_line_it_wrote(tmp_path: Path) -> None:
    chain = load_chain(write(tmp_path, CHAIN), model="fake:echo")
    out = tmp_path / "out.jsonl"
    kept = record_line("r0") + record_line("r1", {"type": "X", "message": "m"})
    out.write_text(kept + record_line("r2")[:25], encoding="utf-8")  # killed mid-line
    report = run_batch(chain, rows(4), out, resume=True)
    assert (report.done, report.skipped) == (2, 2)
    text = out.read_text(encoding="utf-8")
    assert text.startswith(kept)  # eslabon's lines untouched, byte for byte
    assert Counter(r["id"] for r in records(out)) == Counter(["r0", "r1", "r2", "r3"])
    # a whole last record whose newline is missing is kept, not run again
    out.write_text(kept + record_line("r2").rstrip("\n"), encoding="utf-8")
    report = run_batch(chain, rows(3), out, resume=True, retry_failed=True)
    assert (report.done, report.skipped) == (1, 2)  # r1 failed before: it runs again
    assert Counter(r["id"] for r in records(out)) == Counter(["r0", "r1", "r2"])


# -- user mistakes: exit 2 and one clear line ---------------------------------------------------


def mistake(
    tmp_path: Path, inputs: Path, out: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    chain = write(tmp_path, CHAIN)
    args = [EXE, "batch", str(chain), str(inputs), "-o", out, "-m", "fake:echo", *extra]
    done = run(args)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and "Errno" not in done.stderr
    return done


def test_an_output_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    inputs = rows_file(tmp_path, 3)
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    out = str(tmp_path / "notes.txt" / "out.jsonl")
    done = mistake(tmp_path, inputs, out)
    assert f"error: cannot write {out}: Not a directory" in done.stderr
    if Path("/dev/full").exists():  # a full disk
        done = mistake(tmp_path, inputs, "/dev/full")
        assert "error: cannot write /dev/full: No space left on device" in done.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_a_read_only_output_is_a_clear_error(tmp_path: Path) -> None:
    inputs = rows_file(tmp_path, 3)
    out = tmp_path / "out.jsonl"
    out.write_text(record_line("r0") + record_line("r1", {"type": "X", "message": "m"}))
    out.chmod(0o444)
    before = out.read_bytes()
    done = mistake(tmp_path, inputs, str(out), "--resume", "--retry-failed")
    assert f"error: cannot write {out}: Permission denied" in done.stderr
    assert out.read_bytes() == before  # not replaced by a rewritten copy
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        done = mistake(tmp_path, inputs, str(folder / "out.jsonl"))
        assert "Permission denied" in done.stderr
    finally:
        folder.chmod(0o755)


def test_inputs_that_are_not_utf8_name_the_file_and_line(tmp_path: Path) -> None:
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_bytes(b'{"q": "uno"}\n{"q": "dos"}\n{"q": "tr\xe9s"}\n')
    done = mistake(tmp_path, jsonl, str(tmp_path / "o.jsonl"))
    assert f"error: {jsonl}:3: not UTF-8 text" in done.stderr
    table = tmp_path / "rows.csv"
    table.write_bytes(b"q\nuno\n" + "tres ñ\n".encode("latin-1"))
    done = mistake(tmp_path, table, str(tmp_path / "o.jsonl"))
    assert f"error: {table}:3: not UTF-8 text" in done.stderr


def test_inputs_with_a_byte_order_mark(tmp_path: Path) -> None:
    table = tmp_path / "rows.csv"
    with table.open("w", newline="", encoding="utf-8-sig") as f:  # as spreadsheets save it
        csv.writer(f).writerows([["q", "id"], ["uno", "a"], ["dos", "b"]])
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"q": "uno", "id": "a"}\n{"q": "dos", "id": "b"}\n', encoding="utf-8-sig")
    chain = load_chain(write(tmp_path, CHAIN), model="fake:echo")
    for inputs in (table, jsonl):
        assert read_rows(inputs) == [{"q": "uno", "id": "a"}, {"q": "dos", "id": "b"}]
        out = tmp_path / f"out-{inputs.suffix[1:]}.jsonl"
        report = run_batch(chain, read_rows(inputs), out)
        assert (report.done, report.failed) == (2, 0), report.errors
        assert {r["output"] for r in records(out)} == {"uno", "dos"}


@pytest.mark.parametrize("rate", ["nan", "inf", "-inf", "-0", "0", "1e400", "nan/min", "-5/s"])
def test_a_rate_that_is_not_positive_and_finite_is_refused(rate: str, tmp_path: Path) -> None:
    inputs = rows_file(tmp_path, 2)
    done = mistake(tmp_path, inputs, str(tmp_path / "o.jsonl"), "--rate", rate)
    assert f"--rate {rate!r}" in done.stderr


@pytest.mark.parametrize("rate", [math.nan, math.inf, -math.inf, 0.0, -0.0, -1, True, 10**400])
def test_run_batch_refuses_a_rate_that_is_not_positive_and_finite(
    rate: Any, tmp_path: Path
) -> None:
    chain = load_chain(write(tmp_path, CHAIN), model="fake:echo")
    with pytest.raises(UserError, match="rate must be a positive, finite number"):
        # bounded: before the fix, nan waited forever
        asyncio.run(
            asyncio.wait_for(arun_batch(chain, rows(2), tmp_path / "o.jsonl", rate=rate), 60)
        )
    with pytest.raises(UserError, match="rate must be a positive, finite number"):
        run_batch(chain, rows(2), tmp_path / "out.jsonl", rate=rate)
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "o.jsonl").exists()
