"""Tutorial page 11 ("¿Funciona?") stays true: its YAML is the files in docs/es/mejorar/, they
validate, and what it quotes — each version's cases passed and tokens on local, fake:echo and an
OpenAI-compatible server, the --compare last summary, the forgotten step's failure — is what
`eslabon test` gives. The local model answers greedily (temperature 0), so the figures repeat;
the server is the same model behind llama_cpp.server (the session's, from conftest.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from eslabon.interfaces import cli
from helpers import CHAINS, ROOT, command_problems, fenced_blocks

PAGE = ROOT / "docs" / "es" / "11-funciona.md"
TEXT = PAGE.read_text(encoding="utf-8")
FOLDER = ROOT / "docs" / "es" / "mejorar"
VERSIONS = ("v1.yaml", "v2.yaml", "v3.yaml", "v4.yaml")
MODELS = "local,fake:echo,servidor"


def data(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llama_server: str) -> Path:
    """A copy of docs/es/mejorar whose `servidor` is the session's llama_cpp.server."""
    folder = tmp_path / "mejorar"
    shutil.copytree(FOLDER, folder)
    toml = folder / "eslabon.toml"
    text = toml.read_text(encoding="utf-8")
    assert "http://127.0.0.1:8765/v1" in text  # the port the page starts the server on
    toml.write_text(text.replace("http://127.0.0.1:8765/v1", llama_server), encoding="utf-8")
    monkeypatch.chdir(folder)
    monkeypatch.setenv("ESLABON_LOGS", str(tmp_path / "logs.sqlite"))
    return folder


def eslabon_test(*args: str) -> Any:
    return CliRunner().invoke(cli.app, ["test", *args])


def figures_tables() -> list[dict[str, tuple[str, int]]]:
    """Each quoted `model passed tokens ...` table of the page: model → (passed, tokens)."""
    tables = []
    for block in fenced_blocks(TEXT, ""):
        lines = block.splitlines()
        for n, line in enumerate(lines):
            if line.split()[:3] == ["model", "passed", "tokens"]:
                rows = {}
                for row in lines[n + 1 :]:
                    cells = row.split()
                    if len(cells) < 3 or "/" not in cells[1]:
                        break
                    rows[cells[0]] = (cells[1], int(cells[2].replace(",", "")))
                tables.append(rows)
    return tables


def test_the_pages_yaml_is_the_folders_files() -> None:
    shown = [yaml.safe_load(b) for b in fenced_blocks(TEXT, "yaml")]
    assert shown[0] == data(FOLDER / "casos.yaml")
    assert shown[1] == data(FOLDER / "v1.yaml")
    # each version adds what the page shows to the one before
    for block, version in zip(shown[2:5], VERSIONS[1:], strict=True):
        file = data(FOLDER / version)
        assert {k: file[k] for k in block} == block, version
    expected = {"name", "inputs", "params", "prompt", "tests"}
    assert set(data(FOLDER / "v1.yaml")) == expected
    assert set(data(FOLDER / "v2.yaml")) == expected | {"system"}
    assert set(data(FOLDER / "v3.yaml")) == expected | {"system", "examples"}
    assert set(data(FOLDER / "v4.yaml")) == expected | {"system", "examples", "selector"}
    # the three-step chain's checks that each step received the previous one's answer
    (case,) = shown[5]["tests"]
    canonical = data(CHAINS / "analizar_planificar_resolver.yaml")["tests"][0]
    assert case["inputs"] == canonical["inputs"]
    assert all(check in canonical["expect"] for check in case["expect"])
    # olvido.yaml is that chain with {analisis} left out of plan's prompt, and nothing else
    forgot = data(FOLDER / "olvido.yaml")
    plan = forgot["steps"][1]["prompt"]
    assert "{analisis}" not in plan
    original = data(CHAINS / "analizar_planificar_resolver.yaml")
    original["steps"][1]["prompt"] = plan
    assert {**original, "name": forgot["name"]} == forgot


def test_the_folder_validates_and_the_commands_parse() -> None:
    result = CliRunner().invoke(cli.app, ["validate", str(FOLDER)])
    assert result.exit_code == 0, result.output
    assert "casos.yaml" not in result.output  # a file of cases, not a chain
    count, problems = command_problems(TEXT)
    assert count >= 4 and not problems, problems


@pytest.mark.model
def test_each_versions_scores_are_the_pages(project: Path) -> None:
    out = project / "r.json"
    result = eslabon_test(*VERSIONS, "-m", MODELS, "--json", str(out), "--no-log")
    assert result.exit_code == 1, result.output
    report = json.loads(out.read_text(encoding="utf-8"))
    measured = [
        {m["model"]: (f"{m['passed']}/{m['total']}", m["tokens"]) for m in chain["models"]}
        for chain in report["chains"]
    ]
    assert figures_tables() == measured
    # v1's failures, as quoted
    v1 = next(b for b in fenced_blocks(TEXT, "") if "traductor_v1 (v1.yaml)" in b)
    checks = [line for line in v1.splitlines() if line.startswith("    ")]
    assert checks and all(line in result.stdout for line in checks), checks
    # the summary table: cases passed per version and model
    summary = [
        [cell.strip() for cell in line.strip("|").split("|")[1:]]
        for line in TEXT.splitlines()
        if re.match(r"^\| \d\. ", line)
    ]
    assert summary == [[m[k][0] for k in MODELS.split(",")] for m in measured]
    # v3's matrix, mark by mark
    grid = next(b for b in fenced_blocks(TEXT, "") if "traductor_v3 (v3.yaml)" in b)
    marks = {r[1].strip(): [c.strip() for c in r[2:5]] for r in _rows(grid)}
    v3 = report["chains"][2]["models"]
    for n, case in enumerate(v3[0]["cases"]):
        assert marks[case["name"]] == ["✓" if m["cases"][n]["passed"] else "✗" for m in v3]


def _rows(grid: str) -> list[list[str]]:
    return [line.split("│") for line in grid.splitlines() if line.startswith("│")]


@pytest.mark.model
def test_compare_last_says_what_the_page_says(project: Path) -> None:
    mine = project / "mi_traductor.yaml"
    mine.write_text((project / "v3.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    assert eslabon_test(mine.name, "-m", "local").exit_code == 1
    mine.write_text((project / "v4.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    result = eslabon_test(mine.name, "-m", "local", "--compare", "last")
    assert result.exit_code == 1, result.output
    block = next(b for b in fenced_blocks(TEXT, "") if "compared with the run log" in b)
    fixed = re.search(r"fixed \(fail → pass\): \d\n(  ✓ .*\n)+", block)
    assert fixed is not None
    ours = [line for line in fixed[0].splitlines() if line.endswith(("fail → pass): 2", "local"))]
    assert "\n".join(ours).replace(": 2", ": 1") in result.stdout
    tokens = re.search(r"^local +(\d+ → \d+ \([+-]\d+\))", block, re.MULTILINE)
    assert tokens is not None and tokens[1] in result.stdout


@pytest.mark.model
def test_the_forgotten_step_fails_on_every_model(project: Path) -> None:
    out = project / "r.json"
    result = eslabon_test("olvido.yaml", "-m", "fake:echo,local,servidor", "--json", str(out))
    assert result.exit_code == 1, result.output
    models = json.loads(out.read_text(encoding="utf-8"))["chains"][0]["models"]
    for model in models:
        (case,) = model["cases"]
        failed = [c for c in case["runs"][0]["checks"] if not c["passed"]]
        assert [(c["kind"], c["expected"]) for c in failed] == [("received", "analisis")]
    block = next(b for b in fenced_blocks(TEXT, "") if "tres_pasos_con_olvido" in b)
    quoted = block[block.index("✗ manzanas · fake:echo") :].splitlines()[:2]
    assert quoted[0].replace(" · olvido.yaml", "") in result.stdout  # one file: not named
    assert quoted[1] in result.stdout
