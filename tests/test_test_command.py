"""`eslabon test` end to end: the matrix over models, exit codes, JUnit and JSON reports,
--filter, --repeat pass rates, the cache, and keys kept out of every report."""

from __future__ import annotations

import itertools
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from eslabon.interfaces import cli
from helpers import RIGHT, TRADUCE, write
from wire_server import WireServer

# answers in turn, cycling: the first right for 'noche', the second wrong for 'estacion'
HALF = "{provider: fake, responses: ['good night', 'no idea']}"


def eslabon(*args: str) -> Any:
    return CliRunner().invoke(cli.app, ["test", *args, "--no-log"])


def test_a_matrix_of_three_models_where_one_fails_a_case(tmp_path: Path) -> None:
    path = write(tmp_path, TRADUCE)
    out, junit = tmp_path / "r.json", tmp_path / "r.xml"
    result = eslabon(
        str(path),
        "--models",
        f"fake:echo,{HALF},{RIGHT}",
        "-c",
        "1",  # one at a time: the scripted fakes answer the cases in order
        "--json",
        str(out),
        "--junit",
        str(junit),
    )
    assert result.exit_code == 1, result.output
    stdout = result.stdout
    assert "fake:echo" in stdout and "fake #2" in stdout
    assert "5/6 cases passed" in stdout
    assert "✗ estacion · fake" in stdout
    assert "regex: expected (?i)station · got no idea" in stdout
    # --json: everything
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["passed"] is False and data["cases"] == {"passed": 5, "total": 6}
    (chain,) = data["chains"]
    assert [m["model"] for m in chain["models"]] == ["fake:echo", "fake", "fake #2"]
    assert [m["passed"] for m in chain["models"]] == [2, 1, 2]
    failed = chain["models"][1]["cases"][1]
    assert failed["name"] == "estacion" and failed["passed"] is False
    run = failed["runs"][0]
    assert run["output"] == "no idea" and run["stats"]["usage"]["output_tokens"] == 2
    assert [c["kind"] for c in run["checks"]] == ["regex", "not_contains"]
    assert [c["passed"] for c in run["checks"]] == [False, True]
    assert chain["models"][0]["cost"] == 0 and chain["models"][0]["tokens"] > 0
    # --junit: one testsuite per model, a testcase per case, failures with messages
    root = ET.fromstring(junit.read_text(encoding="utf-8"))
    assert root.tag == "testsuites" and root.get("tests") == "6" and root.get("failures") == "1"
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [
        "traduce · fake:echo",
        "traduce · fake",
        "traduce · fake #2",
    ]
    for suite in suites:
        assert [c.get("name") for c in suite.findall("testcase")] == ["noche", "estacion"]
    assert [s.get("failures") for s in suites] == ["0", "1", "0"]
    (failure,) = root.iter("failure")
    assert failure.get("type") == "regex"
    assert failure.get("message", "").startswith("regex: expected (?i)station")
    assert suites[1].findall("testcase")[1].findtext("system-out") == "no idea"


def test_all_passing_exits_0_and_the_files_own_model_is_the_default(tmp_path: Path) -> None:
    path = write(tmp_path, "model: fake:echo\n" + TRADUCE)
    result = eslabon(str(path))
    assert result.exit_code == 0, result.output
    assert "2/2 cases passed" in result.stdout and "failures" not in result.stdout


def test_a_mistake_in_the_files_exits_2_before_any_run(tmp_path: Path) -> None:
    path = write(tmp_path, TRADUCE)
    write(tmp_path, '{"inputs": {"frase": "x"}, "expect": [{"contans": "x"}]}\n', "c.jsonl")
    bad = write(tmp_path, TRADUCE + "  - file: c.jsonl\n", "bad.yaml")
    result = eslabon(str(bad), "-m", "fake:echo")
    assert result.exit_code == 2
    assert "c.jsonl:1" in result.stderr and "did you mean 'contains'?" in result.stderr
    assert eslabon(str(path), "-m", "nada:modelo").exit_code == 2  # an unknown provider
    assert eslabon(str(path), "-m", "fake:echo,,fake:echo").exit_code == 2
    empty = write(tmp_path, "prompt: hola\n", "sin.yaml")
    result = eslabon(str(empty), "-m", "fake:echo")
    assert result.exit_code == 2 and "no tests to run" in result.stderr
    filtered = eslabon(str(path), "-m", "fake:echo", "--filter", "zzz")
    assert filtered.exit_code == 2 and "no case's name contains it" in filtered.stderr


def test_files_without_tests_are_skipped_in_a_folder(tmp_path: Path) -> None:
    write(tmp_path, TRADUCE)
    write(tmp_path, "prompt: hola\n", "sin.yaml")
    write(tmp_path, "tests:\n  - inputs: {frase: x}\n", "casos.yaml")  # cases, not a chain
    result = eslabon(str(tmp_path), "-m", "fake:echo")
    assert result.exit_code == 0, result.output
    assert "sin.yaml: it has no tests" in result.stdout


def test_filter_picks_cases_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, TRADUCE)
    out = tmp_path / "r.json"
    result = eslabon(str(path), "-m", "fake:echo", "--filter", "NOCHE", "--json", str(out))
    assert result.exit_code == 0, result.output
    (model,) = json.loads(out.read_text(encoding="utf-8"))["chains"][0]["models"]
    assert [c["name"] for c in model["cases"]] == ["noche"]


def test_repeat_reports_the_pass_rate(tmp_path: Path) -> None:
    chain = (
        "inputs: {frase: x}\nprompt: '{frase}'\n"
        "model: {provider: fake, responses: ['sí', 'no']}\n"
        "tests:\n  - name: flip\n    inputs: {frase: x}\n    expect: [{equals: sí}]\n"
    )
    path = write(tmp_path, chain)
    out = tmp_path / "r.json"
    result = eslabon(str(path), "--repeat", "4", "--json", str(out))
    assert result.exit_code == 1
    assert "2/4" in result.stdout  # the matrix cell
    (case,) = json.loads(out.read_text(encoding="utf-8"))["chains"][0]["models"][0]["cases"]
    assert case["pass_rate"] == 0.5 and len(case["runs"]) == 4
    assert sorted(r["output"] for r in case["runs"]) == ["no", "no", "sí", "sí"]
    # a case's own repeat, and a pass_score that accepts a partial score
    lenient = chain.replace("expect: [{equals: sí}]", "expect: [{equals: sí}]\n    repeat: 2")
    result = eslabon(str(write(tmp_path, lenient)), "--json", str(out))
    assert "1/2" in result.stdout and result.exit_code == 1
    weighted = (
        "inputs: {frase: x}\nprompt: '{frase}'\nmodel: fake:echo\n"
        "tests:\n  - inputs: {frase: hola}\n    pass_score: 0.7\n    expect:\n"
        "      - {contains: hola, weight: 3}\n      - {contains: adios}\n"
    )
    assert eslabon(str(write(tmp_path, weighted))).exit_code == 0  # 3/4 >= 0.7


def test_a_failed_run_fails_every_check_with_its_error(tmp_path: Path) -> None:
    path = write(tmp_path, TRADUCE)
    out = tmp_path / "r.json"
    bad = "{provider: openai, name: gpt-4o-mini, base_url: 'http://127.0.0.1:9/v1'}"
    result = eslabon(
        str(path), "-m", bad, "--json", str(out), "--allow-endpoint", "http://127.0.0.1:9"
    )
    assert result.exit_code == 1, result.output
    run = json.loads(out.read_text(encoding="utf-8"))["chains"][0]["models"][0]["cases"][0]
    checks = run["runs"][0]["checks"]
    assert run["runs"][0]["error"] is not None
    assert all(c["reason"].startswith("the run failed: ") for c in checks)


@pytest.fixture
def openai(server: WireServer, monkeypatch: pytest.MonkeyPatch) -> WireServer:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return server


KEY = "sk-test-command-secret-987654321"


def test_a_key_is_never_in_any_report(openai: WireServer, tmp_path: Path) -> None:
    # the case sends the key's text; the loopback server echoes it back: every report must hide it
    chain = (
        "inputs: {frase: x}\nprompt: '{frase}'\n"
        f"tests:\n  - name: eco\n    inputs: {{frase: 'the key is {KEY}'}}\n"
        "    expect: [{contains: nothing-like-this}, {max_cost: 0}]\n"
    )
    path = write(tmp_path, chain)
    model = f"{{provider: openai, name: gpt-4o-mini, base_url: '{openai.url}/v1'}}"
    out, junit = tmp_path / "r.json", tmp_path / "r.xml"
    result = eslabon(str(path), "-m", model, "--json", str(out), "--junit", str(junit))
    assert result.exit_code == 1, result.output
    assert openai.requests[0].headers["authorization"] == f"Bearer {KEY}"  # it was used
    assert "eco: the key is ***" in result.stdout
    for text in (result.stdout, result.stderr, out.read_text(), junit.read_text()):
        assert KEY not in text
    assert (
        "eco: the key is ***"
        in json.loads(out.read_text())["chains"][0]["models"][0]["cases"][0]["runs"][0]["output"]
    )


def test_the_cache_answers_a_second_run_with_no_request(openai: WireServer, tmp_path: Path) -> None:
    path = write(tmp_path, TRADUCE)
    model = f"{{provider: openai, name: gpt-4o-mini, base_url: '{openai.url}/v1'}}"
    cache = tmp_path / "cache.sqlite"
    out = tmp_path / "r.json"
    first = eslabon(str(path), "-m", model, "--cache", str(cache))
    assert first.exit_code == 0, first.output
    sent = len(openai.requests)
    assert sent == 2
    second = eslabon(str(path), "-m", model, "--cache", str(cache), "--json", str(out))
    assert second.exit_code == 0, second.output
    assert len(openai.requests) == sent
    model_data = json.loads(out.read_text())["chains"][0]["models"][0]
    assert all(c["runs"][0]["stats"]["cached"] == 1 for c in model_data["cases"])
    assert "warning" not in second.stderr
    # repeats on a cache: said, since their pass rate then shows no variation
    third = eslabon(str(path), "-m", model, "--cache", str(cache), "--repeat", "3")
    assert third.exit_code == 0, third.output
    assert "warning: --cache with repeated cases" in third.stderr
    assert len(openai.requests) == sent  # every repeat answered from the cache


def test_runs_are_logged_unless_no_log(tmp_path: Path) -> None:
    path = write(tmp_path, "model: fake:echo\n" + TRADUCE)

    def logged() -> int:  # the test runs of this chain, as `eslabon logs` lists them
        shown = CliRunner().invoke(cli.app, ["logs", "-n", "100", "--chain", "traduce"]).stdout
        return sum(" test " in line for line in shown.splitlines())

    before = logged()
    assert eslabon(str(path)).exit_code == 0  # --no-log
    assert logged() == before
    result = CliRunner().invoke(cli.app, ["test", str(path)])
    assert result.exit_code == 0, result.output
    assert logged() == before + 2  # each case's run


# three steps; the second forgets to pass on the first's answer: 'received' catches it
PIPELINE = """\
inputs: {problema: x}
steps:
  - {id: analisis, prompt: "Analiza: {problema}"}
  - {id: plan, prompt: "Planifica: {problema}"}
  - {id: solucion, prompt: "Resuelve, con este plan:\\n   {plan}"}
tests:
  - name: cadena
    inputs: {problema: "3 manzanas, me como 1"}
    expect:
      - {received: problema, step: analisis}
      - {received: analisis, step: plan}
      - {received: plan}
"""


def test_received_sees_what_each_step_was_given(tmp_path: Path) -> None:
    path = write(tmp_path, PIPELINE)
    out = tmp_path / "r.json"
    result = eslabon(str(path), "--models", "fake:echo", "--json", str(out))
    assert result.exit_code == 1, result.output
    run = json.loads(out.read_text(encoding="utf-8"))["chains"][0]["models"][0]["cases"][0]
    checks = run["runs"][0]["checks"]
    assert [c["passed"] for c in checks] == [True, False, True]
    reason = "the prompt of step 'plan' does not include the answer of step 'analisis'"
    assert checks[1]["reason"] == reason
    # what the step was given is shown: its prompt
    assert checks[1]["got"] == "human: Planifica: 3 manzanas, me como 1"
    # once the template passes it on, it passes
    fixed = write(tmp_path, PIPELINE.replace("Planifica: {problema}", "Planifica: {analisis}"))
    assert eslabon(str(fixed), "--models", "fake:echo").exit_code == 0


def test_every_example_chain_carries_tests_and_each_step_checks_its_input() -> None:
    from eslabon.chainfile.loader import load_spec
    from eslabon.chainfile.spec import TestCase
    from helpers import CHAINS

    for path in sorted(CHAINS.glob("*.yaml")):
        spec = load_spec(path)
        assert spec.tests, f"{path.name} has no tests (make test runs them on the bundled model)"
    # the three-step chain: each step after the first is checked to receive the one before
    spec = load_spec(CHAINS / "analizar_planificar_resolver.yaml")
    cases = [c for c in spec.tests or [] if isinstance(c, TestCase)]
    received = {(a.step or spec.output_step(), a.received) for c in cases for a in c.expect}
    steps = [s.id for s in spec.steps or []]
    assert {(later, earlier) for earlier, later in itertools.pairwise(steps)} <= received


def test_validate_and_the_playground_skip_files_of_cases_and_examples(tmp_path: Path) -> None:
    from eslabon.chainfile.discover import chain_files
    from eslabon.interfaces.ui import chain_files as offered

    write(tmp_path, "inputs: {frase: x}\nprompt: '{frase}'\ntests: [{file: casos.yaml}]\n")
    write(tmp_path, "tests:\n  - {inputs: {frase: a}, expect: [{contains: a}]}\n", "casos.yaml")
    write(tmp_path, "- {input: a, output: b}\n", "ejemplos.yaml")
    assert chain_files([tmp_path]) == offered(tmp_path) == [tmp_path / "chain.yaml"]
    result = CliRunner().invoke(cli.app, ["validate", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "casos.yaml" not in result.output and "ejemplos.yaml" not in result.output
