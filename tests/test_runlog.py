"""The run log's store (eslabon.observe.runlog): what goes in comes out, searchable, totalled;
no secret reaches the file; many processes write at once; a broken log is one clear reason."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from eslabon.errors import ChainConfigError, UserError
from eslabon.observe import runlog
from eslabon.observe.runlog import (
    BUSY_TIMEOUT_S,
    SCHEMA_VERSION,
    LogUnavailable,
    RunLog,
    log_path,
    logging_enabled,
)
from eslabon.trust import redaction
from eslabon.trust.project import load_project
from helpers import ROOT


def step(step_id: str, model: str | None = "openai:gpt-4o-mini", **over: Any) -> dict[str, Any]:
    data = {
        "id": step_id,
        "model": model,
        "messages": [
            {"role": "system", "content": "Eres un traductor."},
            {"role": "user", "content": f"Paso {step_id}: traduce «buenas noches»"},
        ],
        "output": f"salida de {step_id}",
        "usage": {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120},
        "latency_ms": 900.5,
        "ttft_ms": None,
        "calls": 1,
        "attempts": 1,
        "cost": 0.0001,
        "error": None,
    }
    return {**data, **over}


def record(**over: Any) -> dict[str, Any]:
    data = {
        "started": "2026-11-27T05:01:02.345Z",
        "kind": "run",
        "chain": "traductor",
        "file": "/abs/chains/traductor.yaml",
        "file_hash": "ab" * 32,
        "model": "rapido (openai:gpt-4o-mini)",
        "inputs": {"frase": "buenas noches"},
        "output": "Good night",
        "error": None,
        "session": None,
        "row": None,
        "usage": {
            "input_tokens": 412,
            "output_tokens": 268,
            "total_tokens": 680,
            "input_token_details": {"cache_read": 0},
            "output_token_details": {"reasoning": 0},
        },
        "latency_ms": 1834.2,
        "ttft_ms": 210.5,
        "cost": 0.00021,
        "steps": [step("analisis"), step("respuesta")],
    }
    return {**data, **over}


@pytest.fixture
def log(tmp_path: Path) -> RunLog:
    return RunLog(tmp_path / "nested" / "logs.sqlite")


def test_a_record_comes_back_whole_with_its_steps(log: RunLog) -> None:
    given = record(extra_note={"retriever": "chroma:curso"})
    run_id = log.record(given)
    assert log.path.exists()  # the folder and the file are made on the first record
    back = log.get(run_id)
    assert back is not None
    assert back == {**given, "id": run_id}
    assert [s["id"] for s in back["steps"]] == ["analisis", "respuesta"]


def test_ids_are_made_sortable_by_time_or_kept_when_given(log: RunLog) -> None:
    made = log.record(record())
    assert len(made) == 20 and int(made, 16) >= 0
    # the first 8 hex digits are the start's Unix seconds: ids sort by time
    assert int(made[:8], 16) == 1795755662
    earlier = log.record(record(started="2025-01-01T00:00:00Z"))
    assert earlier < made
    assert log.record(record(id="mi-id-propio")) == "mi-id-propio"
    assert log.get("mi-id-propio") is not None


def test_times_are_kept_in_utc_with_milliseconds(log: RunLog) -> None:
    a = log.record(record(started="2026-11-27T06:01:02.345678+01:00"))
    b = log.record(record(started="2026-11-27T05:01:03"))  # no offset: UTC, as records say
    assert log.get(a)["started"] == "2026-11-27T05:01:02.345Z"  # type: ignore[index]
    assert log.get(b)["started"] == "2026-11-27T05:01:03.000Z"  # type: ignore[index]
    c = log.record(record(started=None))  # a missing or bad time: now, not a lost record
    assert log.get(c)["started"].endswith("Z")  # type: ignore[index]


def test_a_unique_prefix_finds_a_run_and_a_shared_one_says_so(log: RunLog) -> None:
    for run_id in ("0a1b2c3d0000000000aa", "0a1b2c3d0000000000bb", "0a1b2c3e1111111111cc"):
        log.record(record(id=run_id))
    assert log.get("0a1b2c3e")["id"] == "0a1b2c3e1111111111cc"  # type: ignore[index]
    assert log.get("0a1b2c3d0000000000b")["id"] == "0a1b2c3d0000000000bb"  # type: ignore[index]
    with pytest.raises(UserError, match="several runs") as caught:
        log.get("0a1b2c3d")
    assert "0a1b2c3d0000000000aa" in str(caught.value) and "fix:" in str(caught.value)
    assert log.get("ffff") is None
    with pytest.raises(UserError):
        log.get("  ")
    assert log.short_ids(["0a1b2c3d0000000000aa", "0a1b2c3e1111111111cc"]) == {
        "0a1b2c3d0000000000aa": "0a1b2c3d0000000000a",
        "0a1b2c3e1111111111cc": "0a1b2c3e",  # never shorter than 8
    }


def test_the_newest_come_first_filtered_by_chain_and_time(log: RunLog) -> None:
    log.record(record(started="2026-11-20T10:00:00Z", chain="resumen"))
    log.record(record(started="2026-11-27T10:00:00Z"))
    log.record(record(started="2026-11-25T10:00:00Z"))
    assert [r["started"][:10] for r in log.runs()] == ["2026-11-27", "2026-11-25", "2026-11-20"]
    assert "steps" not in log.runs()[0]  # a listing leaves the steps out
    assert len(log.runs(limit=2)) == 2
    assert {r["chain"] for r in log.runs(chain="resumen")} == {"resumen"}
    assert len(log.runs(since="2026-11-24")) == 2
    assert len(log.runs(since="2026-11-27T11:00:00+01:00")) == 1  # 10:00 UTC: included


def test_search_ignores_accents_and_reads_inputs_outputs_prompts_errors(log: RunLog) -> None:
    accent = log.record(record(inputs={"frase": "¿Dónde está la estación de tren?"}))
    prompt = log.record(
        record(steps=[step("s", messages=[{"role": "user", "content": "Camión rojo"}])])
    )
    answer = log.record(record(output={"respuesta": "el AVIÓN sale a las 5"}))
    failed = log.record(record(error="RateLimitedError: límite de peticiones", output=None))

    def found(query: str) -> set[str]:
        return {r["id"] for r in log.runs(query=query)}

    assert found("estacion") == found("ESTACIÓN") == found("estación") == {accent}
    assert found("tren estacion") == {accent}  # every word
    assert found("tren avion") == set()
    assert found("estac*") == {accent}  # a prefix
    assert found("camion") == {prompt}
    assert found("avion") == {answer}
    assert found("limite peticiones") == {failed}
    assert len(found("traductor")) == 4  # the chain's name
    # the user's punctuation is text, not query syntax
    for odd in ('gpt-4o "cita', "a OR b NOT", "(", "*", "col:umna", "¿?"):
        assert isinstance(log.runs(query=odd), list)
    assert found("   ") == {accent, prompt, answer, failed}  # no words: no filter


def _indexed(log: RunLog) -> list[int]:
    with sqlite3.connect(log.path) as db:
        return [row[0] for row in db.execute("SELECT rowid FROM runs_text ORDER BY rowid")]


def test_a_run_is_indexed_by_the_first_search_after_it(
    log: RunLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runlog, "_INDEX_CHUNK", 2)  # several transactions' worth
    ids = [log.record(record(inputs={"frase": f"pera {n}"})) for n in range(5)]
    assert _indexed(log) == []  # writing a run does not index it
    assert {r["id"] for r in log.runs(query="pera")} == set(ids)
    assert _indexed(log) == [1, 2, 3, 4, 5]
    later = log.record(record(inputs={"frase": "pera madura"}))
    assert _indexed(log) == [1, 2, 3, 4, 5]
    assert [r["id"] for r in log.runs(query="madura")] == [later]
    assert len(_indexed(log)) == 6
    log.runs()  # a listing without a query leaves the index alone
    log.record(record(inputs={"frase": "manzana"}))
    log.runs(limit=50)
    assert len(_indexed(log)) == 6


def test_searches_at_once_index_each_run_once(log: RunLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runlog, "_INDEX_CHUNK", 3)
    log.record_many([record(inputs={"frase": f"uva {n}"}) for n in range(40)])
    found: list[int] = []
    errors: list[BaseException] = []

    def search() -> None:
        try:
            found.append(len(RunLog(log.path).runs(limit=100, query="uva")))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=search) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and found == [40] * 4
    assert _indexed(log) == list(range(1, 41))


def test_stats_per_model_and_per_chain_count_unknown_costs_apart(log: RunLog) -> None:
    gpt, local, own = "openai:gpt-4o-mini", "local", "openai:qwen2.5-7b"
    log.record(record(started="2026-11-27T10:00:00Z", cost=0.0002))
    log.record(
        record(
            started="2026-11-27T11:00:00Z",
            chain="resumen",
            cost=None,  # one step's price is unknown: so is the run's
            steps=[step("a", model=local, cost=0.0), step("b", model=own, cost=None, calls=3)],
        )
    )
    log.record(
        record(
            started="2026-11-27T12:00:00Z",
            chain="resumen",
            cost=None,
            error="boom",
            steps=[step("b", model=own, cost=None, error="boom")],
        )
    )
    log.record(record(started="2026-11-01T00:00:00Z", cost=5.0))  # outside the period below
    totals = log.stats(since="2026-11-27", until="2026-11-28")
    models = {m["model"]: m for m in totals["models"]}
    assert models[gpt] == {
        "model": gpt,
        "runs": 1,
        "steps": 2,
        "calls": 2,
        "errors": 0,
        "input_tokens": 200,
        "output_tokens": 40,
        "cost": pytest.approx(0.0002),
        "unknown_cost": 0,
    }
    assert models[local]["cost"] == 0.0 and models[local]["unknown_cost"] == 0  # free, known
    assert models[own]["cost"] is None  # never a guess, never 0
    assert (models[own]["unknown_cost"], models[own]["calls"], models[own]["errors"]) == (2, 4, 1)
    chains = {c["chain"]: c for c in totals["chains"]}
    assert chains["traductor"]["cost"] == pytest.approx(0.0002)
    assert chains["resumen"] == {
        "chain": "resumen",
        "runs": 2,
        "errors": 1,
        "input_tokens": 824,
        "output_tokens": 536,
        "cost": None,
        "unknown_cost": 2,
    }
    assert totals["total"]["runs"] == 3 and totals["total"]["unknown_cost"] == 2
    assert totals["total"]["cost"] == pytest.approx(0.0002)
    assert totals["since"] == "2026-11-27T00:00:00.000Z"
    assert log.stats()["total"]["cost"] == pytest.approx(5.0002)


def test_values_that_are_not_json_are_kept_as_data_or_text(log: RunLog) -> None:
    from pydantic import BaseModel

    class Answer(BaseModel):
        texto: str

    run_id = log.record(
        record(
            cost=Decimal("0.00021"),
            output=Answer(texto="hola"),
            inputs={"cuando": time, "tupla": (1, 2)},
            steps=[step("s", latency_ms=Decimal("12.5")), "not a step"],
        )
    )
    back = log.get(run_id)
    assert back is not None
    assert back["cost"] == 0.00021 and back["output"] == {"texto": "hola"}
    assert back["inputs"]["tupla"] == [1, 2] and "module 'time'" in back["inputs"]["cuando"]
    assert [s["latency_ms"] for s in back["steps"]] == [12.5]


def _files(log: RunLog) -> bytes:
    return b"".join(
        p.read_bytes() for p in log.path.parent.iterdir() if p.name.startswith(log.path.name)
    )


def test_no_secret_reaches_the_file(log: RunLog, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-test-" + os.urandom(12).hex()
    handed = "hx" + os.urandom(3).hex()  # a short key eslabon handed to a client
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setattr(redaction, "_SECRETS", set())
    redaction.add_secret(handed)
    leaky = f"Authorization: Bearer {key} / {handed}"
    run_id = log.record(
        record(
            id=f"run-{key}",
            inputs={"frase": leaky, key: "as a key", "lista": [leaky]},
            output={"respuesta": leaky},
            error=f"ProviderError: 401 for key {key}",
            model=f"openai:gpt-4o-mini?key={key}",
            file=f"/tmp/{handed} /chain.yaml",
            extra_field=leaky,
            steps=[
                step(
                    "s",
                    messages=[{"role": "user", "content": [{"type": "text", "text": leaky}]}],
                    output=leaky,
                    error=leaky,
                    model=f"https://user:{key}@example.org/v1",
                )
            ],
        )
    )
    assert run_id == "run-***"
    # the WAL holds the record until a checkpoint: the file and its -wal are read
    assert (log.path.parent / (log.path.name + "-wal")).stat().st_size > 0
    raw = _files(log)
    assert key.encode() not in raw and handed.encode() not in raw
    back = log.get(run_id)
    assert back is not None and "***" in back["inputs"]["frase"]
    assert back["steps"][0]["model"] == "https://***@example.org/v1"
    assert log.runs(query="Bearer")  # the rest is still searchable
    log.close()  # the last connection checkpoints the WAL into the file
    raw = _files(log)
    assert key.encode() not in raw and handed.encode() not in raw and b"Bearer" in raw


@pytest.mark.parametrize(
    "secret",
    ['pa"ss\\word-0123', "contraseña-01234", "dos\nlíneas-0123", "emoji-😀-0123456"],
    ids=["quote and backslash", "accent", "newline", "emoji"],
)
def test_a_secret_json_escapes_is_found_too(
    log: RunLog, monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    """A record of plain data is checked as the JSON text it is written as: with its escapes
    undone, a password holding a quote, a backslash, a newline or an accent is found."""
    import json as json_module

    monkeypatch.setenv("DB_PASSWORD", secret)
    leaky = record(
        inputs={"frase": f"la clave {secret} ya"},
        output=["x", {"y": secret}],
        steps=[step("s", messages=[{"role": "user", "content": secret}])],
    )
    run_id = log.record(leaky)  # one record (a command's)
    log.record_many([record(), leaky, record()])  # a batch (a background writer's)
    log.close()
    raw = _files(log)
    for form in (
        secret,
        json_module.dumps(secret)[1:-1],
        json_module.dumps(secret, ensure_ascii=False)[1:-1],
    ):
        assert form.encode() not in raw
    back = log.get(run_id)
    assert back is not None and back["inputs"] == {"frase": "la clave *** ya"}
    assert back["output"] == ["x", {"y": "***"}]


def test_the_check_on_the_text_as_written_never_misses_a_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """_surely_clean reads the JSON as it is written (escapes not undone): whenever it says
    clean, redacting the strings themselves changes nothing. Random texts of letters, the
    characters JSON escapes, accents and a long and a short key, encoded by both encoders."""
    import random

    long_key, short_key = "sk-long-0123456789", "hx12ab"
    monkeypatch.setenv("SOME_API_KEY", long_key)
    monkeypatch.setattr(redaction, "_SECRETS", {short_key})
    pieces = ["a", "b", " ", "-", "\n", '"', "\\", "\t", "\x01", "ñ", "😀", "://u:p@h", "@"]
    pieces += [long_key, short_key, long_key[:7], short_key[2:]]
    rng = random.Random(5)
    said_clean = 0
    for _ in range(3000):
        strings = ["".join(rng.choices(pieces, k=rng.randint(0, 6))) for _ in range(3)]
        truth = all(redaction.redact(text) == text for text in strings)
        for written in (
            runlog._PLAIN(strings),
            json.dumps(strings, ensure_ascii=False, separators=(",", ":")),
        ):
            if runlog._surely_clean([written]):
                said_clean += 1
                assert truth, strings
            rows: Any = SimpleNamespace(written=written)
            assert runlog._clean([rows]) == truth, strings
    assert said_clean > 1000  # the quick answer is the usual one


def test_many_records_in_one_transaction_and_a_taken_id(log: RunLog) -> None:
    from eslabon.observe.record import RunWriter
    from eslabon.observe.runlog import DuplicateRun

    ids = log.record_many([record(chain=f"c{n}") for n in range(300)])
    assert len(set(ids)) == 300
    assert [r["chain"] for r in log.runs(limit=1000)][::-1] == [f"c{n}" for n in range(300)]
    assert len(log.runs(query="c150")) == 1  # each one searchable
    with pytest.raises(DuplicateRun):
        log.record_many([record(chain="nuevo"), record(id=ids[0])])
    assert not log.runs(chain="nuevo")  # none of a failed transaction is written
    writer = RunWriter(log.path)
    reasons = writer.write_many([record(chain="nuevo"), record(id=ids[0]), record(chain="otro")])
    assert len(reasons) == 1 and ids[0] in reasons[0]  # the taken one, said once
    assert len(log.runs(chain="nuevo")) == 1 and len(log.runs(chain="otro")) == 1


def test_a_damaged_log_is_a_reason_not_a_crash(log: RunLog) -> None:
    log.path.parent.mkdir(parents=True)
    log.path.write_bytes(b"these bytes are not a database; " * 200)
    with pytest.raises(LogUnavailable) as caught:
        log.record(record())
    reason = str(caught.value)
    assert "\n" not in reason and str(log.path) in reason
    assert "damaged" in reason and "move it away" in reason
    with pytest.raises(LogUnavailable, match="damaged"):
        log.runs()
    log.path.unlink()  # the user's fix: a new log is made
    assert log.get(log.record(record())) is not None


def test_a_log_damaged_after_it_was_written(log: RunLog) -> None:
    log.record(record())
    log.close()
    with log.path.open("r+b") as file:  # the header and every page after it
        file.seek(0)
        file.write(os.urandom(log.path.stat().st_size))
    with pytest.raises(LogUnavailable, match=r"damaged|cannot be used"):
        log.record(record())


@pytest.mark.parametrize("existing", [True, False], ids=["wal log", "a file another made"])
def test_a_locked_log_gives_up_within_its_timeout(log: RunLog, existing: bool) -> None:
    if existing:
        log.record(record())
    else:
        log.path.parent.mkdir(parents=True)
    other = sqlite3.connect(log.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # on a new file: a rollback-journal database, locked
    try:
        start = time.perf_counter()
        with pytest.raises(LogUnavailable, match="locked") as caught:
            log.record(record())
        waited = time.perf_counter() - start
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert BUSY_TIMEOUT_S * 0.8 <= waited <= BUSY_TIMEOUT_S + 1.5
    assert "\n" not in str(caught.value)
    log.record(record())  # the lock gone, the same log writes again
    assert len(log.runs()) == (2 if existing else 1)


READ_ONLY = """
import sys
from pathlib import Path
from eslabon.observe.runlog import LogUnavailable, RunLog
base = Path(sys.argv[1])
cases = {
    "a new log": base / "ro" / "logs.sqlite",
    "a new folder": base / "ro" / "sub" / "logs.sqlite",
    "a log in a read-only folder": base / "ro-with-log" / "logs.sqlite",
    "a read-only log": base / "ro-file" / "logs.sqlite",
}
for case, path in cases.items():
    try:
        RunLog(path).record({"chain": "x"})
        print(case, "-> written")
    except LogUnavailable as exc:
        print(case, "->", exc)
"""


def _unprivileged() -> list[str]:
    """A command prefix that runs without root's power to write through permissions."""
    if os.geteuid() != 0:
        return []
    import shutil

    if shutil.which("setpriv") is None:
        pytest.skip("root writes through permissions, and setpriv is not here to drop that")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


def test_a_read_only_folder_or_file(tmp_path: Path) -> None:
    for name in ("ro-with-log", "ro-file"):
        made = RunLog(tmp_path / name / "logs.sqlite")
        made.record(record())
        made.close()  # its -wal and -shm go: writing again must make them
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro-file" / "logs.sqlite").chmod(0o444)
    for name in ("ro", "ro-with-log"):
        (tmp_path / name).chmod(0o555)
    try:
        done = subprocess.run(
            [*_unprivileged(), sys.executable, "-c", READ_ONLY, str(tmp_path)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            timeout=60,
        )
    finally:
        for name in ("ro", "ro-with-log"):
            (tmp_path / name).chmod(0o755)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4, done.stdout
    for line in lines:
        assert "cannot be written" in line and "ESLABON_LOGS" in line, line


SEARCH_READ_ONLY = """
import sys
from eslabon.observe.runlog import LogUnavailable, RunLog
for path in sys.argv[1:]:
    log = RunLog(path)
    print(len(log.runs()))  # reading needs no write
    try:
        print(len(log.runs(query="traductor")))
    except LogUnavailable as exc:
        print(exc)
"""


def test_a_search_that_cannot_index_a_read_only_log_says_why(tmp_path: Path) -> None:
    paths = [tmp_path / "unindexed.sqlite", tmp_path / "indexed.sqlite"]
    for path in paths:
        made = RunLog(path)
        made.record(record())
        if path.name == "indexed.sqlite":
            assert len(made.runs(query="traductor")) == 1  # indexed while it could be written
        made.close()
        path.chmod(0o444)
    done = subprocess.run(
        [*_unprivileged(), sys.executable, "-c", SEARCH_READ_ONLY, *map(str, paths)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    listed, searched, listed_too, found = done.stdout.splitlines()
    assert listed == listed_too == found == "1"
    assert "cannot be written" in searched and "full-text index" in searched, searched


def test_a_log_of_the_first_format_is_upgraded_and_searched_whole(log: RunLog) -> None:
    # version 1 indexed each run as it was written: those rows stay, later runs are added
    old = log.record(record(inputs={"frase": "higo viejo"}))
    log.runs(query="higo")
    with sqlite3.connect(log.path) as db:
        db.execute("PRAGMA user_version = 1")
    log.close()
    reopened = RunLog(log.path)
    new = reopened.record(record(inputs={"frase": "higo nuevo"}))
    assert {r["id"] for r in reopened.runs(query="higo")} == {old, new}
    with sqlite3.connect(log.path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


def test_a_row_edited_by_hand_does_not_break_search(log: RunLog) -> None:
    edited = log.record(record(inputs={"frase": "kiwi"}))
    with sqlite3.connect(log.path) as db:
        db.execute("UPDATE runs SET inputs = 'kiwi a mano, no JSON' WHERE id = ?", (edited,))
    assert [r["id"] for r in log.runs(query="mano")] == [edited]


@pytest.mark.parametrize("searched", [True, False], ids=["indexed", "not indexed yet"])
def test_runs_deleted_by_hand_leave_no_stale_match(log: RunLog, searched: bool) -> None:
    """The newest run deleted with sqlite3 (which leaves its steps: foreign keys are off
    unless asked), before or after a search indexed it: a new run is written with a seq of
    its own, is not found by the deleted run's words, and is found by its own."""
    log.record(record(inputs={"frase": "manzana"}))
    gone = log.record(record(inputs={"frase": "frambuesa"}))
    if searched:
        assert [r["id"] for r in log.runs(query="frambuesa")] == [gone]
    with sqlite3.connect(log.path) as db:
        db.execute("DELETE FROM runs WHERE id = ?", (gone,))
    new = log.record(record(inputs={"frase": "granada"}, steps=[step("nuevo")]))
    assert log.runs(query="frambuesa") == []
    assert [r["id"] for r in log.runs(query="granada")] == [new]
    assert log.get(new) is not None and log.get(gone) is None
    assert [s["id"] for s in log.get(new)["steps"]] == ["nuevo"]  # its own, not the leftovers


def test_a_file_where_the_folder_should_be(tmp_path: Path) -> None:
    (tmp_path / "eslabon-folder").write_text("a file\n")
    log = RunLog(tmp_path / "eslabon-folder" / "logs.sqlite")
    with pytest.raises(LogUnavailable, match="cannot be written") as caught:
        log.record(record())
    assert "\n" not in str(caught.value)
    assert log.runs() == []  # nothing to read there either


def test_reading_a_missing_log_creates_nothing(log: RunLog) -> None:
    assert log.runs() == [] and log.get("abc") is None
    assert log.stats()["total"] == {
        "runs": 0,
        "errors": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost": None,
        "unknown_cost": 0,
    }
    assert not log.path.parent.exists()


def test_the_schema_is_versioned(log: RunLog) -> None:
    log.record(record())
    with sqlite3.connect(log.path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    fresh = RunLog(log.path)
    with pytest.raises(LogUnavailable, match="newer eslabon"):
        fresh.record(record())
    with pytest.raises(LogUnavailable, match="newer eslabon"):
        fresh.runs()


def test_every_migration_is_in_the_table_of_migrations() -> None:
    # a later schema appends a migration: the version is their count
    assert len(runlog._MIGRATIONS) == SCHEMA_VERSION


WRITER = """
import sys, threading, time
from eslabon.observe.runlog import RunLog
path, process, threads, each, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
    int(sys.argv[4]), float(sys.argv[5])
log = RunLog(path)  # one instance shared by the threads, as eslabon batch shares it
ids, failures = [], []
def write(thread):
    for n in range(each):
        chat = n % 2 == 0  # chat turns and batch rows, interleaved
        try:
            ids.append(log.record({
                "kind": "chat" if chat else "batch", "chain": "concurrente",
                "session": f"p{process}" if chat else None,
                "row": None if chat else f"p{process}-t{thread}-{n}",
                "inputs": {"q": f"p{process} t{thread} n{n}"}, "output": "ok",
                "steps": [{"id": "a", "model": "fake:echo", "messages": [
                    {"role": "user", "content": f"p{process} t{thread} n{n}"}]}],
            }))
        except Exception as exc:
            failures.append(repr(exc))
time.sleep(max(0.0, start - time.time()))  # every process begins at once
workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
for w in workers: w.start()
for w in workers: w.join()
print("\\n".join(ids))
print("\\n".join(failures), file=sys.stderr)
sys.exit(1 if failures else 0)
"""


def test_many_processes_and_threads_write_without_losing_a_row(tmp_path: Path) -> None:
    path = tmp_path / ".eslabon" / "logs.sqlite"  # not made yet: the writers race to make it
    processes, threads, each = 4, 5, 10  # 200 records
    start = time.time() + 1.5
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(p), str(threads), str(each), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for p in range(processes)
    ]
    ids = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        ids.extend(out.split())
    assert len(ids) == len(set(ids)) == 200
    with sqlite3.connect(path) as db:
        logged = [row[0] for row in db.execute("SELECT id FROM runs")]
        inputs = [row[0] for row in db.execute("SELECT inputs FROM runs")]
        assert db.execute("SELECT COUNT(*) FROM steps").fetchone()[0] == 200
    assert sorted(logged) == sorted(ids)  # every row exactly once
    assert len({json.loads(i)["q"] for i in inputs}) == 200
    log = RunLog(path)
    assert len(log.runs(limit=500, query="concurrente")) == 200
    with sqlite3.connect(path) as db:  # the search indexed each run once
        assert db.execute("SELECT COUNT(*) FROM runs_text").fetchone()[0] == 200
    assert {s["chain"]: s["runs"] for s in log.stats()["chains"]} == {"concurrente": 200}


COMMAND = """
import os, sys
from eslabon.observe import runlog
runlog._WAL_LIMIT = int(sys.argv[2])
log = runlog.RunLog(sys.argv[1], kept=True)  # as a command's writer: never closed
for n in range(int(sys.argv[3])):
    log.record({"chain": "c", "inputs": {"q": "x" * 3000}, "output": str(n)})
os._exit(0)  # as a command that ends: the connection is left open, the WAL not checkpointed
"""


def test_the_wal_stays_small_when_commands_log_one_after_another(tmp_path: Path) -> None:
    # each process recovers the WAL from the file and cannot know it was checkpointed: without
    # a checkpoint that truncates it, the WAL grew with every command, for ever
    path = tmp_path / "logs.sqlite"
    wal = Path(f"{path}-wal")
    limit, env = 64 * 1024, {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    sizes = []
    for _ in range(4):  # four commands, each writing more than the limit
        subprocess.run(
            [sys.executable, "-c", COMMAND, str(path), str(limit), "12"], env=env, check=True
        )
        sizes.append(wal.stat().st_size if wal.exists() else 0)
    one_write = 48 * 1024  # a record's pages, about
    assert max(sizes) <= limit + one_write, sizes
    assert len(RunLog(path).runs(limit=100)) == 48


def test_one_log_shared_by_threads_and_a_forked_process(log: RunLog) -> None:
    log.record(record())
    threads = [threading.Thread(target=lambda: log.record(record())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pid = os.fork()
    if pid == 0:  # the child: the parent's connection is not for it
        code = 1
        try:
            log.record(record(kind="batch"))
            code = 0
        finally:
            os._exit(code)
    # bounded: a child forked from a process with threads could hang on a lock one held
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not finish its record within 60 s")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    log.record(record())  # the parent's connection still works
    assert len(log.runs(limit=50)) == 11
    assert len(log.runs(limit=50, query="traductor")) == 11


def test_where_the_log_is_and_whether_it_is_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ESLABON_LOGS", raising=False)
    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path)
    assert log_path() == tmp_path / ".eslabon" / "logs.sqlite"
    assert logging_enabled()
    (tmp_path / "eslabon.toml").write_text('[logs]\nenabled = false\npath = "registro/l.db"\n')
    assert log_path() == tmp_path / "registro" / "l.db"
    assert not logging_enabled()
    assert log_path(load_project(tmp_path)) == tmp_path / "registro" / "l.db"
    monkeypatch.setenv("ESLABON_LOGS", str(tmp_path / "otro.sqlite"))
    assert log_path() == tmp_path / "otro.sqlite"


@pytest.mark.parametrize(
    ("table", "message", "hint"),
    [
        ("[logs]\nenable = false\n", "unknown key 'enable' in [logs]", "enabled"),
        ('[logs]\nenabled = "no"\n', "enabled must be true or false", "enabled = false"),
        ("[logs]\npath = 3\n", "path must be the log file's path", "path ="),
        ("logs = 1\n", "[logs] must be a table", "enabled = false"),
    ],
)
def test_a_wrong_logs_table_is_a_clear_error(
    tmp_path: Path, table: str, message: str, hint: str
) -> None:
    (tmp_path / "eslabon.toml").write_text(table)
    with pytest.raises(ChainConfigError) as caught:
        load_project(tmp_path)
    [problem] = caught.value.problems
    assert message in problem.message and hint in (problem.hint or "")
    assert problem.file == str(tmp_path / "eslabon.toml") and problem.path.startswith("logs")


def test_recording_stays_cheap(log: RunLog) -> None:
    """The budget is 5 ms per run (bench/logging_overhead.py measures it); here, only a loose
    bound that a loaded machine still meets."""
    log.record(record())
    times = []
    for _ in range(30):
        start = time.perf_counter()
        log.record(record())
        times.append(time.perf_counter() - start)
    assert sorted(times)[15] < 0.05


def test_the_logging_benchmark_runs_and_prints_its_figure_last() -> None:
    env = {**os.environ, "BENCH_QUICK": "1"}
    env.pop("ESLABON_MODEL", None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "logging_overhead.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"log_overhead_ms=-?\d+\.\d{2}", lines[-1])
    labels = ("RunLog.record", "whole commands, 3 pairs", "forked runs, 5 pairs", "95% interval")
    for label in (*labels, "run log: one row for each run with the log on"):
        assert any(label in line for line in lines), label
