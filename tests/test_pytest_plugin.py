"""The pytest plugin (`pytest --eslabon PATH`): chain cases as pytest items, in a pytest run
inside this one (pytester), on fake models. Without the option it does nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

pytest_plugins = ["pytester"]

TRADUCE = """\
name: traduce
inputs: {frase: a phrase}
prompt: "{frase}"
tests:
  - name: buenas noches
    inputs: {frase: good night}
    expect:
      - contains: NIGHT
  - name: estacion
    inputs: {frase: where is the station}
    expect:
      - regex: "(?i)station"
      - not_contains: "{"
"""
# answers in turn: right for 'buenas noches', wrong for 'estacion' (one at a time: -c 1)
HALF = "{provider: fake, responses: ['good night', 'no idea']}"
# the inner runs' own ini (pytest-asyncio warns when it is not set)
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


@pytest.fixture(autouse=True)
def _ini(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)


@pytest.fixture
def chains(pytester: pytest.Pytester) -> Path:
    folder = pytester.mkdir("chains")
    (folder / "traduce.yaml").write_text(TRADUCE, encoding="utf-8")
    (folder / "sin_tests.yaml").write_text("inputs: {q: x}\nprompt: '{q}'\n", encoding="utf-8")
    (folder / "ejemplos.yaml").write_text("- {input: a, output: b}\n", encoding="utf-8")
    return folder


def test_each_case_on_each_model_is_an_item_named_after_both(
    pytester: pytest.Pytester, chains: Path
) -> None:
    result = pytester.runpytest(
        "--eslabon", "chains", "--eslabon-models", f"fake:echo,{HALF}", "--collect-only", "-q"
    )
    result.assert_outcomes()
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "chains/traduce.yaml::buenas noches[[]fake:echo[]]",
            "chains/traduce.yaml::buenas noches[[]fake[]]",
            "chains/traduce.yaml::estacion[[]fake:echo[]]",
            "chains/traduce.yaml::estacion[[]fake[]]",
            "4 tests collected*",
        ]
    )


def test_passing_and_failing_items_and_the_failed_checks_as_the_report(
    pytester: pytest.Pytester, chains: Path
) -> None:
    pytester.makepyfile(test_otro="def test_ordinario():\n    assert True\n")
    result = pytester.runpytest(
        "--eslabon",
        "chains/traduce.yaml",
        "--eslabon-models",
        f"fake:echo,{HALF}",
        "--eslabon-concurrency",
        "1",
        "-rA",
    )
    # the team's other tests run beside the chain cases
    result.assert_outcomes(passed=4, failed=1)
    assert result.ret == 1
    out = result.stdout.str()
    assert "PASSED chains/traduce.yaml::buenas noches[fake:echo]" in out
    assert "PASSED test_otro.py::test_ordinario" in out
    assert "FAILED chains/traduce.yaml::estacion[fake]" in out
    result.stdout.fnmatch_lines(
        [
            "*_ estacion on fake _*",
            "estacion on fake (chains/traduce.yaml tests[1])",
            "  ✗ regex",
            "      expected: (?i)station",
            "      got:      no idea",
            "      reason:   *",
        ]
    )
    # the check that passed is not in the report; no Python traceback either
    failure = out[out.index("_ estacion on fake _") :]
    assert "not_contains" not in failure.split("short test summary")[0]
    assert "Traceback" not in out and "runtest" not in out


def test_a_run_that_fails_shows_its_error_once(pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".yaml",
        persona="inputs: {texto: x}\nprompt: '{texto}'\n"
        "output_schema: {type: object, required: [nombre]}\n"
        "tests:\n  - name: ana\n    inputs: {texto: Ana}\n"
        "    expect: [{equals: Ana, field: nombre}, {schema: {type: object}}]\n",
    )
    # the echo model answers with the prompt, which is not JSON: every run fails
    result = pytester.runpytest("--eslabon", "persona.yaml", "--eslabon-models", "fake:echo")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "ana on fake:echo (persona.yaml tests[[]0[]])",
            "  the run failed: OutputValidationError: *",
            "  so every check fails: equals, schema",
        ]
    )
    # once in the failure's report; pytest's short summary repeats the message on CI (where it
    # does not truncate to the terminal's width), so count above that summary only
    report = result.stdout.str().split("short test summary info")[0]
    assert report.count("the run failed") == 1
    # the error's own lines are indented under the case, not at the margin
    body = re.split(r"_ ana on fake:echo _+\n", result.stdout.str())[1].split("\n====")[0]
    assert all(line.startswith("  ") for line in body.splitlines()[1:]), body


def test_the_batch_runs_once_per_file(pytester: pytest.Pytester, chains: Path) -> None:
    # a scripted model answers in turn: were the second item to run the batch again, its case
    # would get 'good night' (the fourth answer) and fail
    script = "{provider: fake, responses: ['good night', 'the station', 'wrong']}"
    result = pytester.runpytest(
        "--eslabon",
        "chains",
        "--eslabon-models",
        script,
        "--eslabon-concurrency",
        "1",
    )
    result.assert_outcomes(passed=2)


def test_a_deselected_case_is_not_run(pytester: pytest.Pytester, chains: Path) -> None:
    script = "{provider: fake, responses: ['the station', 'wrong']}"
    result = pytester.runpytest(
        "--eslabon",
        "chains",
        "--eslabon-models",
        script,
        "--eslabon-concurrency",
        "1",
        "-k",
        "estacion",
    )
    # were 'buenas noches' run too, it would take the first answer, and 'estacion' the second
    result.assert_outcomes(passed=1, deselected=1)


def test_the_ini_option_and_the_file_model(pytester: pytest.Pytester) -> None:
    folder = pytester.mkdir("cadenas")
    (folder / "eco.yaml").write_text(
        "model: fake:echo\n" + TRADUCE.replace("name: traduce\n", ""), encoding="utf-8"
    )
    pytester.makeini(INI + "eslabon_paths = cadenas\n")
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["cadenas/eco.yaml::buenas noches[[]fake:echo[]] PASSED*"])


def test_a_mistake_in_a_file_is_a_collection_error_with_eslabons_message(
    pytester: pytest.Pytester, chains: Path
) -> None:
    (chains / "roto.yaml").write_text(
        "inputs: {frase: x}\nprompt: '{frase}'\ntests:\n"
        "  - inputs: {frase: hola}\n    expect: [{contans: hola}]\n",
        encoding="utf-8",
    )
    result = pytester.runpytest("--eslabon", "chains", "--eslabon-models", "fake:echo")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # collection errors stop the run
    result.stdout.fnmatch_lines(
        [
            "*ERROR collecting chains/roto.yaml*",
            "error: chains/roto.yaml:*tests[[]0[]].expect[[]0[]]*contans*",
            "*did you mean 'contains'?*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_bad_options_are_usage_errors(pytester: pytest.Pytester, chains: Path) -> None:
    result = pytester.runpytest("--eslabon", "no_existe")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--eslabon: no such file or folder: *no_existe*"])
    result = pytester.runpytest("--eslabon", "chains", "--eslabon-models", "fake:echo,,local")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--eslabon-models *empty model*"])
    result = pytester.runpytest("--eslabon", "chains", "--eslabon-concurrency", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--eslabon-concurrency: at least 1*"])


def test_without_the_option_it_does_nothing(pytester: pytest.Pytester, chains: Path) -> None:
    pytester.makepyfile(test_otro="def test_ordinario():\n    assert True\n")
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=1)
    assert "traduce.yaml" not in result.stdout.str()
    result = pytester.runpytest("chains", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_the_plugin_is_registered_and_loading_it_imports_no_langchain() -> None:
    code = (
        "import sys, pytest\n"
        "from importlib.metadata import entry_points\n"
        "(ep,) = [e for e in entry_points(group='pytest11') if e.name == 'eslabon']\n"
        "assert ep.value == 'eslabon.evaluate.pytest_plugin', ep.value\n"
        "ep.load()\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('langchain_core', 'langchain', 'pydantic', 'yaml', 'typer', 'rich')]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_this_suite_loads_the_plugin_and_it_stays_idle(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("eslabon")
    from eslabon.evaluate import pytest_plugin

    assert pytest_plugin._SETTINGS not in pytestconfig.stash
