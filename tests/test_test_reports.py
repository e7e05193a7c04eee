"""`eslabon test --html` (a self-contained page, opened in headless Chromium) and `--compare`
(what changed since a previous --json report): broke, fixed, new, removed, figures moved."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from eslabon.evaluate.reports import compare_reports, html_report
from eslabon.interfaces import cli
from helpers import RIGHT, TRADUCE, write

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# the scripted fakes answer the cases in order (run with -c 1): the second answer is untrusted
# markup that tries to run a script in whoever opens the page
ATTACK = "<script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>"
HALF = f'{{provider: fake, responses: ["good night", "{ATTACK}"]}}'


def eslabon(*args: str) -> Any:
    return CliRunner().invoke(cli.app, ["test", *args, "--no-log"])


def three_models(tmp_path: Path, *extra: str) -> Any:
    path = write(tmp_path, TRADUCE)
    return eslabon(str(path), "-m", f"fake:echo,{HALF},{RIGHT}", "-c", "1", *extra)


# -- --html ---------------------------------------------------------------------------------------
def test_the_page_is_self_contained_and_escapes_every_output(tmp_path: Path) -> None:
    page, out = tmp_path / "r.html", tmp_path / "r.json"
    result = three_models(tmp_path, "--html", str(page), "--json", str(out))
    assert result.exit_code == 1, result.output
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    # the model's markup is text on the page, never markup
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in text
    assert "<script" not in text and "<img" not in text and "onerror='" not in text
    # nothing is fetched: no external stylesheet, script, image or font
    assert not re.search(r"<[^>]*\b(src|href)=", text)  # in a tag, not in escaped text
    for tag in ("<link", "@import", "url("):
        assert tag not in text, tag
    assert "<style>" in text and "<svg" in text
    # built from the same data as --json
    data = json.loads(out.read_text(encoding="utf-8"))
    assert html_report(data) == text


def test_the_page_hides_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-report-page-secret-12345678"
    monkeypatch.setenv("SOME_SERVICE_API_KEY", key)
    chain = (
        "inputs: {frase: x}\nprompt: '{frase}'\nmodel: fake:echo\n"
        f"tests:\n  - name: 'eco {key}'\n    inputs: {{frase: 'the key is {key}'}}\n"
        f"    expect: [{{contains: 'nothing {key}'}}]\n"
    )
    page = tmp_path / "r.html"
    result = eslabon(str(write(tmp_path, chain)), "--html", str(page))
    assert result.exit_code == 1, result.output
    text = page.read_text(encoding="utf-8")
    assert key not in text
    assert "the key is ***" in text and "eco ***" in text


def test_repeated_runs_unknown_costs_and_errors_on_the_page() -> None:
    def run(passed: bool, output: Any, **more: Any) -> dict[str, Any]:
        return {
            "passed": passed,
            "output": output,
            "error": None,
            "stats": {"latency_ms": 5, "cost": None},
            "checks": [
                {"passed": passed, "kind": "equals", "expected": 1, "got": output, "reason": ""}
            ],
            **more,
        }

    failed = run(False, None, error={"type": "Timeout", "message": "took <too> long"})
    data = {
        "passed": False,
        "cases": {"passed": 0, "total": 1},
        "elapsed_s": 1.0,
        "skipped": ["sin.yaml"],
        "chains": [
            {
                "file": "c.yaml",
                "name": "c",
                "models": [
                    {
                        "model": "m",
                        "passed": 0,
                        "total": 1,
                        "tokens": None,
                        "cost": None,
                        "median_latency_ms": 5,
                        "cases": [
                            {
                                "name": "dato",
                                "inputs": {"x": {"a": [1, 2]}},
                                "passed": False,
                                "runs": [run(True, {"a": 1}), failed],
                            }
                        ],
                    }
                ],
            }
        ],
    }
    text = html_report(data)
    assert "✓ run 1" in text and "✗ run 2" in text and "1/2" in text
    assert "the run failed: Timeout: took &lt;too&gt; long" in text
    assert "cost unknown" in text and "not reported" in text  # no bar for an unknown figure
    assert "{&quot;a&quot;: 1}" in text  # structured output as JSON text
    assert "skipped sin.yaml" in text


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def test_the_page_in_a_browser(
    browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ESLABON_REPORT_SCREENSHOT=docs/img/test-report.png refreshes the picture in the docs
    wanted = os.environ.get("ESLABON_REPORT_SCREENSHOT")
    shot = Path(wanted).resolve() if wanted else tmp_path / "report.png"
    monkeypatch.chdir(tmp_path)  # files shown as on a learner's screen: traduce.yaml, old.json
    page_file = tmp_path / "r.html"
    write(tmp_path, TRADUCE, "traduce.yaml")
    # a previous run where every model passed: the page also says what broke since
    models = f"fake:echo,{RIGHT},{RIGHT}"
    before = eslabon("traduce.yaml", "-m", models, "-c", "1", "--json", "old.json")
    assert before.exit_code == 0, before.output
    models = f"fake:echo,{HALF},{RIGHT}"
    result = eslabon(
        "traduce.yaml", "-m", models, "-c", "1", "--html", str(page_file), "--compare", "old.json"
    )
    assert result.exit_code == 1, result.output
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(page_file.as_uri())
    assert page.title() == "eslabon test: 5/6 cases passed"
    # the grid: a row per case, a column per model
    heads = page.locator("table.grid thead th.model").all_inner_texts()
    assert [h.split("\n")[0] for h in heads] == ["fake:echo", "fake", "fake #2"]
    rows = page.locator("table.grid tbody tr.case")
    assert rows.count() == 2
    assert [r.split("\n")[0] for r in rows.locator("th.case").all_inner_texts()] == [
        "noche",
        "estacion",
    ]
    assert page.locator("td.cell").count() == 6
    assert page.locator("td.cell.failed").count() == 1
    # the failed check, highlighted, in the failed cell; the passing ones are not
    cell = page.locator('td.cell[data-model="fake"][data-case="estacion"]')
    assert "failed" in (cell.get_attribute("class") or "")
    failed = cell.locator("li.check.failed")
    assert failed.count() == 1 and failed.inner_text().startswith("✗ regex")
    background = failed.evaluate("e => getComputedStyle(e).backgroundColor")
    assert background not in ("rgba(0, 0, 0, 0)", "transparent")
    assert page.locator("li.check.failed").count() == 1
    assert cell.locator("li.check.passed").count() == 1
    # the untrusted output is shown as text, and nothing in it ran
    assert cell.locator("pre.output").inner_text() == ATTACK
    assert page.evaluate("() => window.pwned") is None
    assert page.locator("img").count() == 0
    # the chart: one bar per model and measure (tokens, cost, latency)
    chart = page.locator("section.chain svg.figures-chart")
    assert chart.count() == 1 and chart.is_visible()
    assert chart.locator("rect.bar").count() == 9
    assert chart.locator('rect.bar[data-measure="tokens"]').count() == 3
    # what changed since the previous report
    comparison = page.locator("#comparison").inner_text()
    assert "broke (pass → fail): 1" in comparison and "estacion · fake" in comparison
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.close()


# -- --compare ------------------------------------------------------------------------------------
def test_compare_says_what_broke_was_fixed_added_and_removed(tmp_path: Path) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    path = write(tmp_path, TRADUCE)
    first = eslabon(str(path), "-m", f"fake:echo,{RIGHT},{HALF}", "-c", "1", "--json", str(old))
    assert first.exit_code == 1, first.output
    # the second run: 'estacion' breaks on fake, is fixed on fake #2; 'noche' is gone, 'nueva' new
    changed = TRADUCE.replace("name: noche", "name: nueva")
    write(tmp_path, changed)
    page = tmp_path / "r.html"
    second = eslabon(
        str(path),
        "-m",
        f"fake:echo,{HALF},{RIGHT}",
        "-c",
        "1",
        "--compare",
        str(old),
        "--json",
        str(new),
        "--html",
        str(page),
    )
    assert second.exit_code == 1, second.output
    out = second.stdout
    # printed after the matrix and the failures, before the last line
    assert out.index("✗ estacion · fake") < out.index(f"compared with {old}")
    assert out.index(f"compared with {old}") < out.index("cases passed in")
    assert "broke (pass → fail): 1\n  ✗ estacion · fake\n" in out
    assert "fixed (fail → pass): 1\n  ✓ estacion · fake #2\n" in out
    assert "new: 3" in out and "removed: 3" in out and "  + nueva · fake:echo" in out
    comparison = json.loads(new.read_text(encoding="utf-8"))["comparison"]
    assert comparison["previous"] == str(old)

    def keys(kind: str) -> list[tuple[str, str]]:
        return [(c["case"], c["model"]) for c in comparison[kind]]

    assert keys("broke") == [("estacion", "fake")]
    assert keys("fixed") == [("estacion", "fake #2")]
    assert sorted(keys("new")) == [("nueva", m) for m in ("fake", "fake #2", "fake:echo")]
    assert sorted(keys("removed")) == [("noche", m) for m in ("fake", "fake #2", "fake:echo")]
    assert all(c["file"] == comparison["broke"][0]["file"] for c in comparison["new"])
    # per model: tokens, cost and median latency, before → after
    figures = {m["model"]: m for m in comparison["models"]}
    assert set(figures) == {"fake:echo", "fake", "fake #2"}
    assert figures["fake:echo"]["tokens"]["change"] == 0
    fake = figures["fake"]["tokens"]
    assert fake["change"] == fake["after"] - fake["before"] != 0  # other answers, other counts
    assert figures["fake"]["cost"] == {"before": 0, "after": 0, "change": 0}
    assert figures["fake"]["median_latency_ms"]["after"] is not None
    assert "$0 → $0 (+$0)" in out
    html = page.read_text(encoding="utf-8")
    assert 'id="comparison"' in html and "broke (pass → fail): 1" in html


def test_compare_with_an_identical_run_changes_nothing(tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    path = write(tmp_path, "model: fake:echo\n" + TRADUCE)
    assert eslabon(str(path), "--json", str(old)).exit_code == 0
    result = eslabon(str(path), "--compare", str(old))
    assert result.exit_code == 0, result.output
    assert "no case changed" in result.stdout and "12 → 12 (+0)" in result.stdout


def test_compare_figures_with_an_unknown_side() -> None:
    def report(tokens: Any, cost: Any) -> dict[str, Any]:
        model = {"model": "m", "tokens": tokens, "cost": cost, "median_latency_ms": None}
        case = {"name": "a", "passed": True}
        return {"chains": [{"file": "c.yaml", "name": "c", "models": [{**model, "cases": [case]}]}]}

    (figures,) = compare_reports(report(10, None), report(7, 0.5))["models"]
    assert figures["tokens"] == {"before": 10, "after": 7, "change": -3}
    assert figures["cost"] == {"before": None, "after": 0.5, "change": None}
    assert figures["median_latency_ms"]["change"] is None


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "no such file"),
        ("name: traduce\n", "not JSON"),
        ("[1, 2]", "a JSON list, not an object"),
        ('{"passed": true}', "no 'chains' list"),
        ('{"chains": [{"file": "c.yaml", "models": [{"model": "m"}]}]}', "has no 'cases' list"),
        (
            '{"chains": [{"file": "c.yaml", "models": [{"model": "m", "cases": [{"name": 1}]}]}]}',
            "chains[0].models[0].cases[0] has no 'name'",
        ),
    ],
)
def test_a_previous_file_that_is_not_a_report_exits_2(
    tmp_path: Path, content: str | None, says: str
) -> None:
    path = write(tmp_path, TRADUCE)
    previous = tmp_path / "old.json"
    if content is not None:
        previous.write_text(content, encoding="utf-8")
    result = eslabon(str(path), "-m", "fake:echo", "--compare", str(previous))
    assert result.exit_code == 2, result.output
    assert says in result.stderr
    assert "fix: give a file written by `eslabon test ... --json OUT`" in result.stderr
    assert "cases passed" not in result.stdout  # refused before any run


def test_compare_last_reads_the_previous_run_of_the_same_files_from_the_run_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESLABON_LOGS", str(tmp_path / "logs.sqlite"))
    monkeypatch.chdir(tmp_path)
    write(tmp_path, TRADUCE, "traduce.yaml")
    other = write(tmp_path, "model: fake:echo\n" + TRADUCE.replace("traduce", "otra"), "otra.yaml")

    def logged(*args: str) -> Any:
        return CliRunner().invoke(cli.app, ["test", *args])

    # nothing kept yet: said before any run
    nothing = logged("traduce.yaml", "-m", RIGHT, "--compare", "last")
    assert nothing.exit_code == 2, nothing.output
    assert "no earlier eslabon test of these files in the run log" in nothing.stderr
    assert "cases passed" not in nothing.stdout
    assert logged("traduce.yaml", "-m", RIGHT).exit_code == 0  # kept in the log
    assert logged(str(other)).exit_code == 0  # another file's report, kept after it
    # --no-log keeps nothing: the next comparison is still with the logged run
    assert logged("traduce.yaml", "-m", HALF, "-c", "1", "--no-log").exit_code == 1
    # from another folder, by another path: the same file
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    out = tmp_path / "r.json"
    second = logged(
        "../traduce.yaml", "-m", HALF, "-c", "1", "--compare", "last", "--json", str(out)
    )
    assert second.exit_code == 1, second.output
    assert "compared with the run log: eslabon test " in second.stdout
    assert "broke (pass → fail): 1\n  ✗ estacion · fake\n" in second.stdout
    comparison = json.loads(out.read_text(encoding="utf-8"))["comparison"]
    (broke,) = comparison["broke"]
    assert broke["case"] == "estacion" and broke["file"].endswith("traduce.yaml")
    assert comparison["new"] == comparison["removed"] == []
    # and that run is now the last one
    third = logged("../traduce.yaml", "-m", HALF, "-c", "1", "--compare", "last")
    assert "no case changed" in third.stdout


def test_compare_last_keeps_to_the_files_and_cases_run_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESLABON_LOGS", str(tmp_path / "logs.sqlite"))
    monkeypatch.chdir(tmp_path)
    write(tmp_path, TRADUCE, "a.yaml")
    write(tmp_path, TRADUCE.replace("traduce", "otra"), "b.yaml")

    def logged(*args: str) -> Any:
        return CliRunner().invoke(cli.app, ["test", *args])

    assert logged("a.yaml", "b.yaml", "-m", RIGHT).exit_code == 0  # one report of both files
    # one file, some cases: compared with that file's cases in the report, nothing else
    one = logged("a.yaml", "-m", RIGHT, "-k", "noche", "--compare", "last")
    assert one.exit_code == 0, one.output
    assert "no case changed" in one.stdout and "removed" not in one.stdout
    # a filtered run is not kept: the next full run compares with the full report
    full = logged("a.yaml", "-m", RIGHT, "--compare", "last")
    assert "no case changed" in full.stdout and "new:" not in full.stdout
    # with the log turned off, there is nothing to compare with, and it says why
    (tmp_path / "eslabon.toml").write_text("[logs]\nenabled = false\n", encoding="utf-8")
    off = logged("a.yaml", "-m", RIGHT, "--compare", "last")
    assert off.exit_code == 2 and "[logs] enabled = false" in off.stderr


def test_a_report_from_another_machine_is_matched_by_the_file_as_shown(tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    path = write(tmp_path, "model: fake:echo\n" + TRADUCE)
    assert eslabon(str(path), "--json", str(old)).exit_code == 0
    report = json.loads(old.read_text(encoding="utf-8"))
    for chain in report["chains"]:
        chain["path"] = "/home/ci/work/" + Path(chain["path"]).name  # another checkout
    old.write_text(json.dumps(report), encoding="utf-8")
    result = eslabon(str(path), "--compare", str(old))
    assert result.exit_code == 0, result.output
    assert "no case changed" in result.stdout
