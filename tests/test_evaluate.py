"""The engine of `eslabon test`: checks on finished runs, and cases read from chain files and
files of cases (every bad row named, with its file and row)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from eslabon.chainfile.loader import load_spec
from eslabon.chainfile.spec import Assertion, Chain
from eslabon.errors import ChainConfigError, UserError
from eslabon.evaluate import cases as cases_module
from eslabon.evaluate.assertions import Context, Verdict, check
from eslabon.evaluate.cases import expand_cases
from eslabon.trust.imports import ImportNotAllowedError
from helpers import write

USAGE = {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}


def run_of(output: Any, **extra: Any) -> dict[str, Any]:
    stats = {"usage": USAGE, "latency_ms": 120.0, "cost": 0.0002}
    return {"output": output, "stats": {**stats, **extra.pop("stats", {})}, **extra}


def verdict(check_data: dict[str, Any], run: dict[str, Any], **kw: Any) -> Verdict:
    return check(Assertion.model_validate(check_data), run, **kw)


# -- checks on text -------------------------------------------------------------------------------
def test_contains_is_case_insensitive_unless_asked() -> None:
    run = run_of("Good Night, Ana")
    assert verdict({"contains": "good night"}, run).passed
    strict = verdict({"contains": "good night", "case": True}, run)
    assert not strict.passed and strict.reason == "'good night' not found"
    assert strict.got == "Good Night, Ana" and strict.score == 0.0
    assert not verdict({"not_contains": "NIGHT"}, run).passed
    assert verdict({"not_contains": "{"}, run).passed


def test_regex_runs_on_re2_anywhere_in_the_text() -> None:
    run = run_of("Where is the Station?")
    assert verdict({"regex": "(?i)station"}, run).passed
    missed = verdict({"regex": "^station"}, run)
    assert not missed.passed and missed.reason == "no match for /^station/"
    # a pattern that would backtrack for minutes on Python's re answers at once on RE2
    assert not verdict({"regex": "^(a+)+$"}, run_of("a" * 5000 + "!")).passed


def test_equals_strips_text_and_compares_data_exactly() -> None:
    assert verdict({"equals": "hola"}, run_of("  hola\n")).passed
    assert not verdict({"equals": "hola"}, run_of("hola!")).passed
    data = {"nombre": "Ana", "edad": 30, "tags": ["a"]}
    assert verdict({"equals": {"edad": 30.0, "nombre": "Ana", "tags": ["a"]}}, run_of(data)).passed
    assert not verdict({"equals": 1}, run_of(True)).passed  # JSON: true is not 1
    assert verdict({"equals": "30", "field": "edad"}, run_of(data)).passed  # a CSV cell: text


def test_field_walks_structured_values_and_says_what_is_missing() -> None:
    data = {"persona": {"edad": 30, "hijos": [{"nombre": "Leo"}]}}
    assert verdict({"equals": 30, "field": "persona.edad"}, run_of(data)).passed
    assert verdict({"equals": "Leo", "field": "persona.hijos.0.nombre"}, run_of(data)).passed
    missing = verdict({"equals": 1, "field": "persona.altura"}, run_of(data))
    assert not missing.passed
    assert missing.reason == "no field 'altura' in 'persona' of the output (it has: edad, hijos)"
    text = verdict({"equals": 1, "field": "edad"}, run_of("no JSON here"))
    assert text.reason == "the output is text, not structured data: no field 'edad'"
    # text that is JSON (no output_schema) is walked too
    assert verdict({"equals": 30, "field": "edad"}, run_of('{"edad": 30}')).passed


def test_step_picks_a_steps_value() -> None:
    run = run_of("final", plan="1. buscar 2. responder")
    assert verdict({"contains": "buscar", "step": "plan"}, run).passed
    assert not verdict({"contains": "buscar"}, run).passed
    nope = verdict({"contains": "x", "step": "resumen"}, run)
    assert nope.reason == "no step 'resumen' in the run"


def test_schema_validates_data_and_json_text() -> None:
    schema = {"type": "object", "required": ["edad"], "properties": {"edad": {"type": "integer"}}}
    assert verdict({"schema": schema}, run_of({"edad": 3})).passed
    bad = verdict({"schema": schema}, run_of({"edad": "tres"}))
    assert not bad.passed and bad.reason.startswith("at 'edad': 'tres' is not of type 'integer'")
    assert verdict({"schema": schema}, run_of('{"edad": 3}')).passed
    assert verdict({"schema": {"type": "string", "pattern": "^h"}}, run_of("hola")).passed
    assert not verdict({"schema": {"type": "string", "pattern": "^x"}}, run_of("hola")).passed


# -- checks on the run's figures ------------------------------------------------------------------
def test_figures_checks_read_the_runs_stats() -> None:
    run = run_of("x")
    assert verdict({"max_tokens": 5}, run).passed
    over = verdict({"max_tokens": 4}, run)
    assert not over.passed and over.got == 5
    no_usage = verdict({"max_tokens": 4}, run_of("x", stats={"usage": None}))
    assert not no_usage.passed and no_usage.reason == "the model reported no usage"
    assert verdict({"max_latency_ms": 200}, run).passed
    assert not verdict({"max_latency_ms": 100}, run).passed
    assert verdict({"max_cost": 0.001}, run).passed
    assert not verdict({"max_cost": 0.0001}, run).passed
    unknown = verdict({"max_cost": 1}, run_of("x", stats={"cost": None}))
    assert not unknown.passed and unknown.reason.startswith("price unknown")


def test_calls_tool_with_an_args_subset() -> None:
    calls = [
        {"name": "buscar", "args": {"q": "gato"}, "output": "...", "error": False},
        {"name": "calculadora", "args": {"expresion": "2+2", "precision": 2}, "output": "4"},
    ]
    run = run_of("4", tool_calls=calls)
    assert verdict({"calls_tool": "calculadora"}, run).passed
    assert verdict({"calls_tool": "calculadora", "args": {"expresion": "2+2"}}, run).passed
    wrong = verdict({"calls_tool": "calculadora", "args": {"expresion": "3+3"}}, run)
    assert not wrong.passed and "never with" in wrong.reason
    none = verdict({"calls_tool": "reloj"}, run)
    assert none.reason == "'reloj' was not called (called: buscar, calculadora)"
    assert verdict({"calls_tool": "reloj"}, run_of("x")).reason.endswith("(no tool was called)")


# -- python checks --------------------------------------------------------------------------------
CHECKS = """
def short(output, run):
    return len(output) < 10

def score(output, run):
    return 0.7 if run["stats"]["usage"] else 0.2

def why(output, run):
    return False, "too polite: " + output

def boom(output, run):
    raise ValueError("nope")

def odd(output, run):
    return "yes"
"""


@pytest.fixture
def checks_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "mischecks.py").write_text(CHECKS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mischecks", raising=False)
    return tmp_path


def test_python_checks_only_with_an_allowance(checks_module: Path) -> None:
    run = run_of("hola")
    with pytest.raises(ImportNotAllowedError, match="--allow-import mischecks"):
        verdict({"python": "mischecks:short"}, run)
    assert "mischecks" not in sys.modules
    context = Context(allow_imports=["mischecks"])
    assert verdict({"python": "mischecks:short"}, run, context=context).passed
    scored = verdict({"python": "mischecks:score"}, run, context=context)
    assert scored.passed and scored.score == 0.7
    low = verdict(
        {"python": "mischecks:score"}, run_of("x", stats={"usage": None}), context=context
    )
    assert not low.passed and low.score == 0.2
    assert verdict({"python": "mischecks:why"}, run, context=context).reason == "too polite: hola"
    boom = verdict({"python": "mischecks:boom"}, run, context=context)
    assert boom.reason == "mischecks:boom raised ValueError: nope"
    assert "return a bool" in verdict({"python": "mischecks:odd"}, run, context=context).reason
    with pytest.raises(UserError, match="cannot import"):
        verdict({"python": "mischecks:nothing"}, run, context=context)


def test_judge_and_similar_are_built() -> None:  # more in test_evaluate_judge.py
    judge = {"judge": "¿Es un saludo?", "model": {"provider": "fake", "responses": ["SÍ"]}}
    assert verdict(judge, run_of("hola")).passed
    result = verdict({"similar": "hola", "threshold": 0.5}, run_of("hola"))
    assert result.passed and result.score == 1.0


# -- cases ----------------------------------------------------------------------------------------
CHAIN = """\
inputs:
  frase: the text
  tono: {description: the tone, default: neutral}
prompt: "{frase} {tono}"
tests:
  - name: saludo
    inputs: {frase: hola}
    expect: [{contains: hola}]
  - inputs: {frase: adios}
    expect: [{equals: adios}]
    repeat: 3
  - name: saludo
    inputs: {frase: otra}
  - file: casos.jsonl
"""


def test_cases_are_expanded_with_unique_names(tmp_path: Path) -> None:
    write(
        tmp_path,
        '{"name": "desde archivo", "inputs": {"frase": "x"}, "expect": [{"regex": "x"}]}\n'
        '\n{"inputs": {"frase": "y", "tono": "serio"}, "pass_score": 0.5}\n',
        "casos.jsonl",
    )
    cases = expand_cases(load_spec(write(tmp_path, CHAIN)))
    assert [c.name for c in cases] == ["saludo", "case 2", "saludo (2)", "desde archivo", "case 5"]
    assert [c.repeat for c in cases] == [1, 3, 1, 1, 1]
    assert cases[4].inputs == {"frase": "y", "tono": "serio"} and cases[4].pass_score == 0.5
    assert cases[3].where.endswith("casos.jsonl line 1")
    assert cases[4].where.endswith("casos.jsonl line 3")


def test_every_bad_row_is_named_with_its_file_and_row(tmp_path: Path) -> None:
    write(
        tmp_path,
        '{"inputs": {"frase": "x"}, "expect": [{"contans": "x"}]}\n'
        "not json\n"
        '{"inputs": {"frace": "x"}}\n'
        '{"inputs": {"tono": "x"}}\n'
        '{"inputs": {"frase": "x"}, "expect": [{"regex": "(?=a)"}]}\n'
        '{"inputs": {"frase": "x"}, "expect": [{"schema": {"type": "nada"}}]}\n'
        "[1, 2]\n"
        '{"inputs": {"frase": "ok"}}\n',
        "casos.jsonl",
    )
    with pytest.raises(ChainConfigError) as caught:
        expand_cases(load_spec(write(tmp_path, CHAIN)))
    text = str(caught.value)
    lines = [p.line for p in caught.value.problems]
    assert lines == [1, 2, 3, 3, 4, 5, 6, 7], text
    assert all(
        p.file == "casos.jsonl" or p.file.endswith("casos.jsonl") for p in caught.value.problems
    )
    assert "line 1.expect[0]" in text and "did you mean 'contains'?" in text
    assert "invalid JSON" in text
    assert "the chain has no input 'frace'" in text and "did you mean 'frase'?" in text
    assert "does not give the input 'frase'" in text
    assert "lookahead" in text
    assert "not a valid JSON Schema" in text
    assert "expected a mapping, got list" in text


def test_yaml_cases(tmp_path: Path) -> None:
    write(
        tmp_path,
        "tests:\n  - name: uno\n    inputs: {frase: a}\n    expect:\n      - max_tokens: 3\n"
        "  - inputs: {frase: b}\n    expect: [{contains: b, case: true}]\n",
        "casos.yaml",
    )
    spec = load_spec(write(tmp_path, CHAIN.replace("casos.jsonl", "casos.yaml")))
    cases = expand_cases(spec)
    assert [c.name for c in cases][-2:] == ["uno", "case 5"]
    assert cases[-1].expect[0].case is True
    write(tmp_path, "- inputs: {frase: a}\n  expect: [{max_tokens: -1}]\n", "casos.yaml")
    with pytest.raises(ChainConfigError, match=r"row 1\.expect\[0\]\.max_tokens"):
        expand_cases(spec)


CSV_CHAIN = """\
inputs: {frase: x, tono: {description: t, default: neutral}}
prompt: "{frase} {tono}"
tests:
  - file: casos.csv
"""


def test_csv_columns_are_inputs_settings_and_checks(tmp_path: Path) -> None:
    write(
        tmp_path,
        "name,frase,tono,contains,not_contains,max_tokens,schema,repeat\n"
        'uno,hola,,hola,{,40,"{""type"": ""string""}",2\n'
        "dos,adios,serio,,,,,\n",
        "casos.csv",
    )
    cases = expand_cases(load_spec(write(tmp_path, CSV_CHAIN)))
    assert [c.name for c in cases] == ["uno", "dos"]
    assert cases[0].inputs == {"frase": "hola"}  # an empty cell: the input's default
    assert [(a.kind, a.expected) for a in cases[0].expect] == [
        ("contains", "hola"),
        ("not_contains", "{"),
        ("max_tokens", 40),
        ("schema", {"type": "string"}),
    ]
    assert cases[0].repeat == 2
    assert cases[1].inputs == {"frase": "adios", "tono": "serio"} and cases[1].expect == []


def test_an_unknown_csv_column_is_named_with_a_suggestion(tmp_path: Path) -> None:
    write(tmp_path, "frase,contiene\nhola,hola\n", "casos.csv")
    with pytest.raises(ChainConfigError) as caught:
        expand_cases(load_spec(write(tmp_path, CSV_CHAIN)))
    (problem,) = caught.value.problems
    assert problem.message == "unknown column 'contiene'"
    assert problem.hint is not None and problem.hint.startswith("did you mean 'contains'?")
    write(tmp_path, "frase,schema,max_tokens\nhola,{bad,x\n", "casos.csv")
    with pytest.raises(ChainConfigError) as caught:
        expand_cases(load_spec(write(tmp_path, CSV_CHAIN)))
    text = str(caught.value)
    assert "casos.csv:2" in text and "row 2.schema: not JSON" in text


def test_case_files_are_confined_bounded_and_utf8(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    inside = tmp_path / "proyecto"
    inside.mkdir()
    write(tmp_path, '{"inputs": {"frase": "x"}}\n', "fuera.jsonl")
    spec = Chain(inputs={"frase": "x"}, prompt="{frase}", tests=[{"file": "../fuera.jsonl"}])
    spec._source = inside / "chain.yaml"
    with pytest.raises(ChainConfigError, match="outside the chain's folder"):
        expand_cases(spec)
    write(inside, '{"inputs": {"frase": "x"}}\n', "casos.jsonl")
    spec = Chain(inputs={"frase": "x"}, prompt="{frase}", tests=[{"file": "casos.jsonl"}])
    spec._source = inside / "chain.yaml"
    assert len(expand_cases(spec)) == 1
    monkeypatch.setattr(cases_module, "MAX_CASES_BYTES", 10)
    with pytest.raises(ChainConfigError, match="a tests file may be up to 10 bytes"):
        expand_cases(spec)
    monkeypatch.undo()
    (inside / "casos.jsonl").write_bytes(b'{"inputs": {"frase": "\xe9"}}\n')
    with pytest.raises(ChainConfigError, match="not UTF-8 text"):
        expand_cases(spec)


def test_a_schema_check_never_reads_a_file_or_calls_a_host(tmp_path: Path) -> None:
    import subprocess
    import sys

    secret = tmp_path.parent / f"{tmp_path.name}-outside.json"
    secret.write_text('{"const": "TOPSECRET-outside-folder"}', encoding="utf-8")
    outside = f"file://{secret}"
    for ref in (outside, "http://127.0.0.1:9/x.json"):
        path = write(
            tmp_path,
            "model: fake:echo\ninputs: {x: x}\nprompt: '{x}'\n"
            f"tests:\n  - inputs: {{x: hola}}\n    expect:\n      - schema: {{$ref: '{ref}'}}\n",
        )
        exe = Path(sys.executable).parent / "eslabon"
        done = subprocess.run(
            [str(exe), "test", str(path), "--no-log"], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2, done.stdout + done.stderr  # refused before any run
        assert "TOPSECRET" not in done.stdout + done.stderr
    # and the validator itself resolves nothing outside the schema, whoever calls it
    from eslabon.chainfile.patterns import validator_for

    with pytest.raises(Exception, match=r"Unresolvable|PointerToNowhere|cannot"):
        list(validator_for({"$ref": outside}).iter_errors("x"))


def test_equals_reads_a_json_text_answer() -> None:
    from eslabon.chainfile.spec import Assertion
    from eslabon.evaluate.assertions import check

    for expected, answer in ((30, "30"), ({"a": 1}, '{"a": 1}'), (True, " true\n")):
        verdict = check(Assertion(equals=expected), {"output": answer, "stats": {}})
        assert verdict.passed, verdict
    assert not check(Assertion(equals=30), {"output": "treinta", "stats": {}}).passed


def test_received_looks_for_a_steps_answer_or_an_input_in_a_prompt() -> None:
    run = {"analisis": {"pasos": [1, 2]}, "plan": "  haz\nesto ", "output": "ok", "stats": {}}
    prompts = {"plan": 'human: Análisis: {"pasos": [1, 2]}', "output": "human: haz esto\n\nya"}
    got = verdict({"received": "analisis", "step": "plan"}, run, prompts=prompts)
    assert got.passed  # structured data as JSON text, whatever its spacing
    assert verdict({"received": "plan"}, run, prompts=prompts).passed  # whitespace ignored
    inputs = {"tema": "ya"}
    assert verdict({"received": "tema"}, run, prompts=prompts, inputs=inputs).passed
    missed = verdict({"received": "tema", "step": "plan"}, run, prompts=prompts, inputs=inputs)
    assert (
        not missed.passed
        and missed.reason == "the prompt of step 'plan' does not include input 'tema'"
    )
    empty = {**run, "plan": " "}
    said = verdict({"received": "plan"}, empty, prompts=prompts)
    assert (
        not said.passed
        and said.reason == "the answer of step 'plan' is empty: nothing shows it was passed on"
    )
    # a run checked without its prompts cannot pass
    assert verdict({"received": "plan"}, run).reason == "the run's prompts were not recorded"


def test_received_must_name_an_input_or_an_earlier_step(tmp_path: Path) -> None:
    chain = """\
inputs: {problema: x}
steps:
  - {id: analisis, prompt: "{problema}"}
  - {id: plan, prompt: "{analisis}"}
tests:
  - inputs: {problema: y}
    expect:
      - {received: plan, step: analisis}
      - {received: plan}
      - {received: analisys, step: plan}
      - {received: problema, step: nada}
retriever: {type: bm25, documents: docs}
"""
    with pytest.raises(ChainConfigError) as caught:
        load_spec(write(tmp_path, chain))
    text = str(caught.value)
    assert "tests[0].expect[0].received" in text
    assert "step 'plan' runs after step 'analisis': it cannot have received it" in text
    assert "step 'plan' cannot receive its own answer" in text
    assert "no step or input 'analisys'" in text and "did you mean 'analisis'?" in text
    assert text.count("nada") == 1  # the unknown step, said once
    # a field inside a prompt means nothing; the passages are not a step
    chain = chain.replace("{received: plan}", "{received: plan, field: a.b}")
    chain = chain.replace(
        "{received: problema, step: nada}", "{received: problema, step: documents}"
    )
    with pytest.raises(ChainConfigError) as caught:
        load_spec(write(tmp_path, chain))
    text = str(caught.value)
    assert "'field' goes with checks on a value, not with received" in text
    assert "received looks at a step's prompt: 'documents' are the retrieved passages" in text


def test_received_context_means_every_retrieved_passage_reached_the_prompt() -> None:
    docs = [{"content": "el rol system", "step": None}, {"content": "few  shot", "step": None}]
    run = {"output": "ok", "stats": {}, "documents": docs}
    prompts = {"output": "system: usa el contexto\n\nhuman: [1] el rol system\n[2] few shot"}
    assert verdict({"received": "context"}, run, prompts=prompts).passed
    short = {"output": "human: [1] el rol system"}
    missed = verdict({"received": "context"}, run, prompts=short)
    assert missed.reason == "the prompt of the output step lacks retrieved passage(s) 2 of 2"
    none = verdict({"received": "context"}, {**run, "documents": []}, prompts=prompts)
    assert not none.passed and none.reason == "no passages were retrieved"


def test_received_reads_defaults_and_the_checked_steps_own_passages() -> None:
    context = Context(output_step="respuesta", defaults={"idioma": "inglés"})
    run = {"output": "ok", "stats": {}, "respuesta": "ok"}
    prompts = {"respuesta": "human: traduce al inglés"}
    assert verdict({"received": "idioma"}, run, context=context, prompts=prompts).passed
    # the output step's own retriever's passages, not the chain's
    docs = [{"content": "de la cadena", "step": None}, {"content": "del paso", "step": "respuesta"}]
    own = {"respuesta": "human: [1] del paso"}
    checked = verdict(
        {"received": "context"}, {**run, "documents": docs}, context=context, prompts=own
    )
    assert checked.passed, checked.reason
