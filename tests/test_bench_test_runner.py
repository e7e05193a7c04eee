"""bench/test_runner.py runs (BENCH_QUICK: 10 cases, one model, no promptfoo) and prints its
figure last (timings are not asserted, only the format)."""

from __future__ import annotations

import re

from test_bench import run_quick


def test_test_runner_benchmark_runs_and_prints_its_figure_last() -> None:
    lines = run_quick("test_runner.py")
    assert re.fullmatch(r"test_vs_batch=\d+\.\d{2}", lines[-1])
    assert lines[-2] == "promptfoo_ratio=unavailable"  # promptfoo is skipped in quick mode
    for label in ("ideal", "eslabon batch runner", "eslabon test, in process", "command line"):
        assert any(label in line for line in lines), label
