"""Test runner speed: ``eslabon test`` vs ``eslabon batch`` over the same rows, and vs promptfoo.

200 cases (each a ``contains`` check) × 3 models, against the loopback OpenAI-protocol server
(tests/wire_server.py, in its own process, as bench/batch_throughput.py starts it), which answers
every request after 100 ms; the three models are three model names on that server. At 32 runs
at a time per model (``--concurrency 32``; a chain's models run at the same time) the ideal
wall time is ceil(200 / 32) × 100 ms = 0.7 s.

Measured in the same run, alternating, best of three:

- ``eslabon test`` in process: the chain file loaded, its cases read, compiled on each model,
  run and checked (:func:`eslabon.evaluate.runner.plan` and ``run_tests``);
- ``eslabon batch``'s runner over the same rows: the three models' batches at the same time,
  each at concurrency 32 (``arun_batch``, the floor ``eslabon test`` builds on), no checks;
- the two command lines: ``eslabon test FILE --models A,B,C -c 32`` and promptfoo (``npm i
  promptfoo``, into ~/.cache/eslabon-bench/promptfoo, never the repository) on the same cases,
  the same server and the same models, ``promptfoo eval --no-cache`` with ``--max-concurrency
  96`` (the same 96 requests in flight as eslabon's 32 per model × 3; promptfoo's limit is for
  the whole run) and with ``--max-concurrency 32``. When promptfoo will not install or run, the
  reason is printed and ``promptfoo_ratio=unavailable``.

BENCH_QUICK=1: 10 cases × 1 model, no promptfoo. Run: ``make bench`` or
``.venv/bin/python bench/test_runner.py``. Last line: ``test_vs_batch=X`` (``eslabon test``'s
wall time over the batch runner's, in process; target <= 1.10); the line before it,
``promptfoo_ratio=X`` (promptfoo's wall time over ``eslabon test``'s, command line to command
line, at the same requests in flight).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_throughput import SERVER  # noqa: E402  (the loopback server, in its own process)

QUICK = bool(os.environ.get("BENCH_QUICK"))
CASES, MODELS = (10, 1) if QUICK else (200, 3)
CONCURRENCY, LATENCY, ROUNDS = 32, 0.1, (1 if QUICK else 3)
NAMES = ["modelo-a", "modelo-b", "modelo-c"][:MODELS]
PROMPTFOO_DIR = Path.home() / ".cache" / "eslabon-bench" / "promptfoo"
PROMPTFOO_VERSION = "0.121.20"  # the version measured in docs/testing.md
NODE_ENV = {
    "PROMPTFOO_DISABLE_TELEMETRY": "1",
    "PROMPTFOO_DISABLE_UPDATE": "1",
    "PROMPTFOO_DISABLE_SHARING": "1",
    "CI": "1",  # no first-run questions
}


def write_chain(folder: Path) -> Path:
    """The chain file and its 200 cases (a .jsonl beside it): each answer must contain its
    question (the server answers ``eco: <question>``)."""
    cases = [
        {"name": f"caso {n}", "inputs": {"q": q}, "expect": [{"contains": q}]}
        for n, q in ((n, f"pregunta {n}") for n in range(CASES))
    ]
    lines = [json.dumps(case) for case in cases]
    (folder / "casos.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    chain = folder / "eco.yaml"
    chain.write_text(
        "name: eco\ninputs: {q: a question}\nprompt: '{q}'\ntests:\n  - file: casos.jsonl\n",
        encoding="utf-8",
    )
    return chain


def refs(url: str) -> list[dict[str, Any]]:
    return [
        {"provider": "openai", "name": name, "openai_api_base": url + "/v1", "max_retries": 0}
        for name in NAMES
    ]


def in_process(chain_file: Path, models: list[dict[str, Any]]) -> tuple[float, float]:
    """(eslabon test's best wall time, the batch runner's), alternating."""
    from eslabon import compile_chain
    from eslabon.chainfile.loader import load_spec
    from eslabon.evaluate.cases import expand_cases
    from eslabon.evaluate.runner import plan, run_tests
    from eslabon.interfaces.batch import arun_batch, run_sync

    rows = [{**c.inputs, "id": c.index} for c in expand_cases(load_spec(chain_file))]

    def test() -> float:
        start = time.perf_counter()
        chain_plan = plan(load_spec(chain_file), models)
        run = run_tests([chain_plan], concurrency=CONCURRENCY, log=None)
        elapsed = time.perf_counter() - start
        passed, total = run.counts()
        assert passed == total == CASES * MODELS, (passed, total)
        return elapsed

    def batch() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            spec = load_spec(chain_file)
            chains = [compile_chain(spec, model=m) for m in models]
            batches = [
                arun_batch(chain, rows, Path(tmp) / f"{n}.jsonl", concurrency=CONCURRENCY)
                for n, chain in enumerate(chains)
            ]

            async def every() -> list[Any]:
                return list(await asyncio.gather(*batches))

            reports = run_sync(every())
            elapsed = time.perf_counter() - start
            assert all(r.done == CASES for r in reports), [r.summary() for r in reports]
            return elapsed

    test(), batch()  # warm: imports, connections
    times: dict[str, list[float]] = {"test": [], "batch": []}
    for _ in range(ROUNDS):
        times["test"].append(test())
        times["batch"].append(batch())
    return min(times["test"]), min(times["batch"])


def cli_test(chain_file: Path, models: list[dict[str, Any]]) -> float:
    """``eslabon test`` as a command, start-up included."""
    eslabon = Path(sys.executable).parent / "eslabon"
    listed = ",".join(json.dumps(m) for m in models)  # JSON is YAML: mappings with commas
    command = [str(eslabon), "test", str(chain_file), "--models", listed]
    command += ["--concurrency", str(CONCURRENCY), "--no-log"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=chain_file.parent)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return elapsed


# -- promptfoo ------------------------------------------------------------------------------------
def promptfoo_ready() -> tuple[Path | None, str]:
    """promptfoo's command, installed from the npm registry if it is not yet; or the reason."""
    binary = PROMPTFOO_DIR / "node_modules" / ".bin" / "promptfoo"
    if binary.exists():
        return binary, ""
    npm = shutil.which("npm")
    if npm is None:
        return None, "npm is not on PATH"
    PROMPTFOO_DIR.mkdir(parents=True, exist_ok=True)
    if not (PROMPTFOO_DIR / "package.json").exists():
        (PROMPTFOO_DIR / "package.json").write_text('{"private": true}\n', encoding="utf-8")
    command = [npm, "install", f"promptfoo@{PROMPTFOO_VERSION}", "--no-audit", "--no-fund"]
    try:
        done = subprocess.run(
            command, cwd=PROMPTFOO_DIR, capture_output=True, text=True, timeout=600
        )
    except subprocess.TimeoutExpired:
        return None, "npm install promptfoo took more than 10 minutes"
    if done.returncode != 0 or not binary.exists():
        return None, f"npm install promptfoo failed: {(done.stderr or done.stdout)[-800:]}"
    return binary, ""


def promptfoo_config(folder: Path, url: str) -> Path:
    config = {
        "description": "eslabon bench/test_runner.py",
        "prompts": ["{{q}}"],
        "providers": [
            {
                "id": f"openai:chat:{name}",
                "config": {"apiBaseUrl": url + "/v1", "apiKey": "sk-bench-not-a-real-key"},
            }
            for name in NAMES
        ],
        "tests": [
            {
                "description": f"caso {n}",
                "vars": {"q": f"pregunta {n}"},
                "assert": [{"type": "contains", "value": f"pregunta {n}"}],
            }
            for n in range(CASES)
        ],
    }
    path = folder / "promptfooconfig.yaml"
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")  # JSON is YAML
    return path


def promptfoo(binary: Path, config: Path, concurrency: int) -> float:
    """One ``promptfoo eval``'s wall time; raises RuntimeError saying why it did not run."""
    out = config.parent / f"promptfoo-{concurrency}.json"
    command = [str(binary), "eval", "-c", str(config), "--max-concurrency", str(concurrency)]
    command += ["--no-cache", "--no-write", "--no-table", "--no-progress-bar", "-o", str(out)]
    env = {**os.environ, **NODE_ENV, "PROMPTFOO_CONFIG_DIR": str(config.parent / ".promptfoo")}
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=config.parent, capture_output=True, text=True, env=env, timeout=600
    )
    elapsed = time.perf_counter() - start
    if not out.exists():
        raise RuntimeError(f"exit code {done.returncode}: {(done.stderr or done.stdout)[-800:]}")
    stats = json.loads(out.read_text(encoding="utf-8"))["results"]["stats"]
    if stats.get("successes") != CASES * MODELS:
        raise RuntimeError(f"{stats} (expected {CASES * MODELS} successes)")
    return elapsed


def main() -> None:
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
    code = SERVER.format(tests=str(ROOT / "tests"), latency=LATENCY)
    server = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    pf: dict[int, float] = {}
    pf_error = "skipped (BENCH_QUICK)" if QUICK else ""
    try:
        with tempfile.TemporaryDirectory(prefix="eslabon-bench-") as tmp:
            folder = Path(tmp)
            chain_file = write_chain(folder)
            models = refs(url)
            test_s, batch_s = in_process(chain_file, models)
            cli_s = min(cli_test(chain_file, models) for _ in range(ROUNDS))
            if not QUICK:
                binary, pf_error = promptfoo_ready()
                if binary is not None:
                    config = promptfoo_config(folder, url)
                    try:
                        for level in (CONCURRENCY * MODELS, CONCURRENCY):
                            pf[level] = min(promptfoo(binary, config, level) for _ in range(2))
                    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                        pf_error = f"promptfoo eval did not run: {exc}"
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=10)
    ideal = math.ceil(CASES / CONCURRENCY) * LATENCY
    in_flight = CONCURRENCY * MODELS
    print(f"{CASES} cases x {MODELS} models, {LATENCY * 1000:.0f} ms latency, "
          f"concurrency {CONCURRENCY} per model ({in_flight} requests in flight)")  # fmt: skip
    print(f"ideal (ceil(cases / concurrency) x latency): {ideal:.2f} s")
    print(f"eslabon batch runner, the models' batches at once (the floor): {batch_s:.2f} s")
    print(f"eslabon test, in process (load, plan, run, check): {test_s:.2f} s")
    print(f"eslabon test command line (start-up included): {cli_s:.2f} s")
    if pf:
        print(f"promptfoo eval --max-concurrency {in_flight}: {pf[in_flight]:.2f} s")
        print(f"promptfoo eval --max-concurrency {CONCURRENCY}: {pf[CONCURRENCY]:.2f} s "
              f"({pf[CONCURRENCY] / cli_s:.2f}x eslabon test)")  # fmt: skip
        print(f"promptfoo_ratio={pf[in_flight] / cli_s:.2f}")
    else:
        print(f"promptfoo: {pf_error}")
        print("promptfoo_ratio=unavailable")
    print(f"test_vs_batch={test_s / batch_s:.2f}")


if __name__ == "__main__":
    main()
