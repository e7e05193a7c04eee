"""``eslabon logs``: the newest runs, a search, one run with every step, totals, the log's path;
mistakes are one clear message (exit code 2), an empty log a friendly line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from eslabon.interfaces import cli
from eslabon.observe.runlog import RunLog
from helpers import ROOT

EXE = str(Path(sys.executable).parent / "eslabon")


def run_record(**over: Any) -> dict[str, Any]:
    steps = [
        {
            "id": "analisis",
            "model": "openai:gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Eres un analista [bold]cuidadoso[/bold]."},
                {"role": "user", "content": "Analiza: ¿dónde está la estación?"},
            ],
            "output": "Hay que buscar la estación.",
            "usage": {"input_tokens": 300, "output_tokens": 200, "total_tokens": 500},
            "latency_ms": 900.0,
            "ttft_ms": 120.0,
            "calls": 1,
            "attempts": 2,
            "cost": 0.00015,
            "error": None,
        },
        {
            "id": "respuesta",
            "model": "openai:qwen2.5-7b",
            "messages": [{"role": "user", "content": "Responde según el análisis."}],
            "output": {"respuesta": "Al norte", "confianza": 0.9},
            "usage": {"input_tokens": 112, "output_tokens": 68, "total_tokens": 180},
            "latency_ms": 934.2,
            "ttft_ms": None,
            "calls": 1,
            "attempts": 1,
            "cost": None,
            "error": None,
        },
    ]
    data = {
        "started": "2024-03-05T05:01:02.345Z",
        "kind": "run",
        "chain": "orientacion",
        "file": "/abs/chains/orientacion.yaml",
        "file_hash": "0123456789abcdef" * 4,
        "model": "rapido (openai:gpt-4o-mini)",
        "inputs": {"pregunta": "¿Dónde está la estación?"},
        "output": {"respuesta": "Al norte", "confianza": 0.9},
        "error": None,
        "session": None,
        "row": None,
        "usage": {"input_tokens": 412, "output_tokens": 268, "total_tokens": 680},
        "latency_ms": 1834.2,
        "ttft_ms": 120.0,
        "cost": None,
        "steps": steps,
    }
    return {**data, **over}


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunLog:
    path = tmp_path / "logs.sqlite"
    monkeypatch.setenv("ESLABON_LOGS", str(path))
    monkeypatch.setenv("COLUMNS", "200")  # rich's tables: room for every column
    monkeypatch.chdir(tmp_path)
    return RunLog(path)


@pytest.fixture
def filled(log: RunLog) -> dict[str, str]:
    """Three runs: a run, a chat turn that failed, a batch row of another chain."""
    return {
        "run": log.record(run_record(id="6b0a0000aaaa00000001")),
        "chat": log.record(
            run_record(
                id="6b0a0000bbbb00000002",
                started="2024-03-05T06:00:00.000Z",
                kind="chat",
                session="clase1",
                inputs={"pregunta": "hola"},
                output=None,
                error="RateLimitedError: openai said 429\nretry later",
                steps=[],
                cost=0.0,
            )
        ),
        "batch": log.record(
            run_record(
                id="6b0a0001cccc00000003",
                started="2024-03-05T07:00:00.000Z",
                kind="batch",
                row="7",
                chain="traductor",
                model="local",
                inputs={"frase": "buenas noches"},
                output="Good night",
                cost=0.0,
                steps=[],
            )
        ),
    }


def logs(*args: str) -> Any:
    return CliRunner().invoke(cli.app, ["logs", *args])


def test_the_newest_runs_in_a_table(filled: dict[str, str]) -> None:
    result = logs()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "id",
        "started",
        "kind",
        "chain",
        "model",
        "tokens",
        "time",
        "cost",
        "output",
    ]
    batch, chat, run = lines[1:4]  # newest first
    assert batch.startswith("6b0a0001 ") and "batch 7" in batch and "Good night" in batch
    assert chat.startswith("6b0a0000b ")  # the shortest prefix no other run's id shares
    assert "error: RateLimitedError: openai said 429 retry later" in chat  # on one line
    assert run.startswith("6b0a0000a ") and "rapido (openai:gpt-4o-mini)" in run
    assert "412 → 268" in run and "1.8 s" in run and "unknown" in run  # cost: never $0
    assert '{"respuesta": "Al norte", "confianza": 0.9}' in run
    assert "$0" in batch
    assert len(logs("-n", "1").stdout.splitlines()) == 2


@pytest.mark.parametrize("width", [200, 70])
def test_on_a_terminal_lines_fit_it(
    filled: dict[str, str], monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    import re

    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: a terminal, though the runner's is not
    monkeypatch.setenv("COLUMNS", str(width))
    out = re.sub(r"\x1b\[[0-9;]*m", "", logs().stdout)  # colours off
    lines = out.splitlines()
    assert all(len(line) <= width for line in lines), out
    if width == 200:  # the output last on each run's line, cut to the terminal
        assert len(lines) == 4 and lines[0].endswith("output")
        assert lines[2].startswith("6b0a0000b ") and "error: RateLimitedError" in lines[2]
    else:  # too narrow: each run's output on the line under it
        assert len(lines) == 7 and lines[0].endswith("…")
        assert lines[3].startswith("6b0a0000b ")
        assert lines[4].startswith(" " * 11 + "error: RateLimitedError")  # under the id's column
        assert lines[6].startswith(" " * 11 + '{"respuesta": "Al norte"')


def test_search_filter_and_json(filled: dict[str, str]) -> None:
    found = logs("-q", "estacion", "--json")
    assert found.exit_code == 0, found.output
    assert [r["id"] for r in json.loads(found.stdout)] == [filled["run"]]
    assert [r["id"] for r in json.loads(logs("--chain", "traductor", "--json").stdout)] == [
        filled["batch"]
    ]
    everything = json.loads(logs("--json").stdout)
    assert [r["kind"] for r in everything] == ["batch", "chat", "run"]
    assert everything[1]["session"] == "clase1" and "steps" not in everything[0]
    assert json.loads(logs("--since", "2024-03-05T06:30:00+00:00", "--json").stdout) == [
        everything[0]
    ]
    assert json.loads(logs("--since", "1h", "--json").stdout) == []  # 2024: not the last hour
    assert (
        len(json.loads(logs("--since", "2024-03-04", "--json").stdout)) == 3
    )  # a date: local time
    assert logs("-q", "nada parecido").stdout.strip() == "no runs match"


def test_show_prints_every_step(filled: dict[str, str]) -> None:
    result = logs("show", "6b0a0000a")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(f"run {filled['run']} · ")
    assert "orientacion  (/abs/chains/orientacion.yaml, sha256 0123456789ab)" in out
    assert "input pregunta: ¿Dónde está la estación?" in out
    assert "total:  412 → 268 tokens · 1.8 s · first token 120 ms · cost unknown" in out
    analisis = out[out.index("step analisis") : out.index("step respuesta")]
    assert "model:  openai:gpt-4o-mini" in analisis
    assert "300 → 200 tokens · 900 ms · first token 120 ms · 2 attempts · $0.00015" in analisis
    assert "[system]\nEres un analista [bold]cuidadoso[/bold]." in analisis  # text, not markup
    assert "[user]\nAnaliza: ¿dónde está la estación?" in analisis
    assert "[output]\nHay que buscar la estación." in analisis
    respuesta = out[out.index("step respuesta") :]
    assert (
        "openai:qwen2.5-7b" in respuesta and "112 → 68 tokens · 934 ms · cost unknown" in respuesta
    )
    assert '"respuesta": "Al norte"' in out.split("output ─")[-1]


def test_show_without_an_id_is_the_newest_and_json_has_the_steps(
    filled: dict[str, str],
) -> None:
    assert logs("show").stdout.startswith(f"run {filled['batch']} · ")
    failed = logs("show", filled["chat"])
    assert "session clase1" in failed.stdout
    assert "error: RateLimitedError: openai said 429" in failed.stdout
    whole = json.loads(logs("show", filled["run"], "--json").stdout)
    assert [s["id"] for s in whole["steps"]] == ["analisis", "respuesta"]
    assert whole["steps"][0]["messages"][1]["content"] == "Analiza: ¿dónde está la estación?"
    assert whole["steps"][0]["attempts"] == 2 and whole["steps"][1]["cost"] is None


def test_stats_per_model_and_chain(filled: dict[str, str]) -> None:
    result = logs("stats")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.splitlines()[0] == "3 runs · 1 failed · 1,236 → 804 tokens · $0 + 1 unknown"
    model_line = next(line for line in out.splitlines() if line.startswith("openai:gpt-4o-mini"))
    assert model_line.split() == ["openai:gpt-4o-mini", "1", "1", "0", "300", "200", "$0.00015"]
    qwen = next(line for line in out.splitlines() if line.startswith("openai:qwen2.5-7b"))
    assert qwen.split()[-1] == "unknown"
    chain_line = next(line for line in out.splitlines() if line.startswith("orientacion"))
    assert chain_line.split() == ["orientacion", "2", "1", "824", "536", "$0", "+", "1", "unknown"]
    since = json.loads(logs("stats", "--since", "2024-03-05T06:30:00Z", "--json").stdout)
    assert since["total"]["runs"] == 1 and since["chains"][0]["chain"] == "traductor"
    assert since["since"] == "2024-03-05T06:30:00.000Z"
    assert logs("stats", "--until", "2000-01-01").stdout.strip() == "no runs in that period"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "zzzz"], "error: no run 'zzzz' in the log"),
        (["show", "6b0a000"], "starts the ids of several runs"),
        (["--since", "7x"], "error: --since '7x' is neither a period nor a date"),
        (["stats", "--until", "ayer"], "error: --until 'ayer' is neither a period nor a date"),
        (["-n", "0"], "Invalid value for '-n'"),
    ],
)
def test_mistakes_are_one_clear_message(
    filled: dict[str, str], args: list[str], message: str
) -> None:
    result = logs(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    if args[0] != "-n":  # eslabon's own messages say the fix
        assert "fix:" in result.stderr


def test_an_empty_or_missing_log_is_a_friendly_line(log: RunLog) -> None:
    for args in ([], ["show"], ["stats"], ["-q", "hola"]):
        result = logs(*args)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("no runs logged yet"), (args, result.stdout)
        assert str(log.path) in result.stdout
    assert logs("--json").stdout.strip() == "[]"
    assert json.loads(logs("stats", "--json").stdout)["total"]["runs"] == 0
    assert not log.path.exists()  # reading made nothing


def test_a_damaged_log_is_a_clear_message(log: RunLog) -> None:
    log.path.write_bytes(b"not a database at all " * 100)
    for args in ([], ["show", "abc"], ["stats"]):
        result = logs(*args)
        assert result.exit_code == 2, result.output
        assert "is damaged" in result.stderr and "move it away" in result.stderr
        assert "Traceback" not in result.output


def test_secrets_stay_out_of_what_is_printed(
    filled: dict[str, str], log: RunLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-test-" + os.urandom(10).hex()
    log.record(run_record(id="6b0a0002dddd00000004", inputs={"pregunta": key}, output=key))
    # logged before the key was a secret here (another shell): printing still hides it
    with pytest.MonkeyPatch.context() as later:
        later.setenv("OPENAI_API_KEY", key)
        for args in ([], ["--json"], ["show"], ["show", "--json"], ["-q", key]):
            result = logs(*args)
            assert result.exit_code == 0, result.output
            assert key not in result.output, args
        assert "input pregunta: ***" in logs("show", "6b0a0002").stdout


def test_the_log_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ESLABON_LOGS", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".git").mkdir()
    assert logs("path").stdout.strip() == str(tmp_path / ".eslabon" / "logs.sqlite")
    (tmp_path / "eslabon.toml").write_text("[logs]\nenabled = false\n")
    off = logs("path")
    assert off.stdout.strip() == str(tmp_path / ".eslabon" / "logs.sqlite")
    assert "logging is off" in off.stderr
    assert "logging is off" in logs().stdout  # the empty log says why it stays empty
    (tmp_path / "eslabon.toml").write_text("[logs]\nenabld = false\n")
    broken = logs("path")
    assert broken.exit_code == 2 and "enabled" in broken.stderr  # did you mean


def test_eslabon_logs_as_a_real_process(log: RunLog) -> None:
    log.record(run_record(id="6b0a0003eeee00000005"))
    env = {**os.environ, "ESLABON_LOGS": str(log.path)}
    done = subprocess.run(
        [EXE, "logs", "--json"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in json.loads(done.stdout)] == ["6b0a0003eeee00000005"]
    helped = subprocess.run(
        [EXE, "--help"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert "logs" in helped.stdout
