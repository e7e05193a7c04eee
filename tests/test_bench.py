"""The benchmarks run and print their figure last (timings are not asserted, only the format)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT


def run_quick(script: str) -> list[str]:
    env = {**os.environ, "BENCH_QUICK": "1"}
    env.pop("ESLABON_MODEL", None)
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


def test_overhead_benchmark_runs_and_prints_its_figure_last() -> None:
    lines = run_quick("overhead.py")
    assert re.fullmatch(r"ratio_vs_lcel=\d+\.\d{3}", lines[-1])
    for label in ("eslabon:", "lcel:", "hand-wired:", "eslabon --help:", "validate chains/:"):
        assert any(label in line for line in lines), label


def test_stream_latency_benchmark_runs_and_prints_its_figure_last() -> None:
    lines = run_quick("stream_latency.py")
    assert re.fullmatch(r"ttft_overhead_ms=-?\d+\.\d{2}", lines[-1])
    assert any("bare ChatOpenAI.stream" in line for line in lines)


def test_retrieval_benchmark_runs_and_prints_its_figure_last() -> None:
    lines = run_quick("retrieval.py")
    assert re.fullmatch(r"query_overhead_ratio=\d+\.\d{3}", lines[-1])
    assert any("chunks/s" in line for line in lines)


@pytest.mark.model
def test_structured_local_benchmark_runs_and_prints_its_figure_last() -> None:
    lines = run_quick("structured_local.py")
    assert re.fullmatch(r"valid_rate=\d\.\d{2}", lines[-1])
    assert re.fullmatch(r"unconstrained_valid_rate=\d\.\d{2}", lines[-2])
    assert any(line.strip().startswith("constrained:") for line in lines)


def test_batch_throughput_benchmark_runs_and_prints_its_figure_last() -> None:
    lines = run_quick("batch_throughput.py")
    assert re.fullmatch(r"efficiency=\d+\.\d{2}", lines[-1])
    for label in ("ideal", "eslabon run_batch", "LangChain abatch", "client floor"):
        assert any(label in line for line in lines), label
