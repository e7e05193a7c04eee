"""The Python examples in README.md and docs/ run as written (on fake:echo, via ESLABON_MODEL)."""

from __future__ import annotations

import re

import pytest

from helpers import ROOT

BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
CASES = [
    pytest.param(code, id=f"{path.name}-{n}")
    for path in DOCS
    for n, code in enumerate(BLOCK.findall(path.read_text(encoding="utf-8")), 1)
]


@pytest.mark.parametrize("code", CASES)
def test_python_example_runs(
    code: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("ESLABON_MODEL", "fake:echo")
    exec(compile(code, "<docs>", "exec"), {})


def test_docs_have_examples_and_the_two_commands() -> None:
    assert len(CASES) >= 4
    readme = DOCS[0].read_text(encoding="utf-8")
    assert "make run" in readme and "make test" in readme
