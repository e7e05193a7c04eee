"""The `tests:` key of a chain file: what it accepts, and one clear message per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from eslabon.chainfile.loader import load_spec, validate_file
from eslabon.chainfile.spec import ASSERTION_KINDS, Assertion, TestCase, TestFile
from eslabon.errors import ChainConfigError
from helpers import write

CHAIN = """\
inputs: {frase: x, tono: {description: t, default: neutro}}
steps:
  - {id: traduccion, prompt: "{frase} {tono}"}
  - {id: revision, prompt: "revisa {traduccion}"}
tests:
"""


def problems(tmp_path: Path, tests: str) -> list[str]:
    path = write(tmp_path, CHAIN + tests)
    found = validate_file(path)
    return [f"{p.path}: {p.message}" + (f" | {p.hint}" if p.hint else "") for p in found]


def test_every_kind_and_its_options_load(tmp_path: Path) -> None:
    (tmp_path / "casos.jsonl").write_text("", encoding="utf-8")
    path = write(
        tmp_path,
        CHAIN
        + """\
  - name: saludo
    inputs: {frase: buenas noches}
    repeat: 3
    pass_score: 0.5
    expect:
      - {contains: night, case: true, weight: 2}
      - {not_contains: "{", step: revision}
      - regex: "(?i)night"
      - {equals: 30, field: persona.edad}
      - {schema: {type: object}}
      - max_tokens: 40
      - max_latency_ms: 5000
      - max_cost: 0.001
      - {judge: "¿Es una traducción fiel?", model: fake:echo, threshold: 0.5}
      - {similar: "Good night", threshold: 0.7}
      - {calls_tool: calculadora, args: {expresion: "2+2"}}
      - {received: frase, step: revision}
      - python: "mis_pruebas:es_corta"
      - equals: null
  - file: casos.jsonl
""",
    )
    spec = load_spec(path)
    assert spec.tests is not None
    case, file = spec.tests
    assert isinstance(case, TestCase) and isinstance(file, TestFile)
    kinds = [a.kind for a in case.expect]
    assert kinds == [*ASSERTION_KINDS, "equals"]
    assert case.expect[4].expected == {"type": "object"}  # `schema`, kept as json_schema
    assert case.expect[-1].kind == "equals" and case.expect[-1].expected is None
    assert validate_file(path) == []
    assert "tests" in spec.to_data()  # and it round-trips through YAML
    assert load_spec(write(tmp_path, spec.to_yaml(), "again.yaml")).tests == spec.tests


@pytest.mark.parametrize(
    ("item", "said"),
    [
        ("{contain: night}", "unknown key 'contain' | did you mean 'contains'?"),
        ("{contains: a, regex: b}", "one check per item, not contains and regex"),
        ("{regex: a, case: true}", "'case' goes with contains or not_contains, not with regex"),
        ("{contains: a, args: {x: 1}}", "'args' goes with calls_tool, not with contains"),
        ("{step: revision}", "no check given; one of: contains, not_contains"),
        ("{max_tokens: 0}", "max_tokens"),
        ("{python: 'not a path'}", "not an import path"),
    ],
)
def test_a_mistake_in_a_check_is_one_clear_message(tmp_path: Path, item: str, said: str) -> None:
    found = problems(tmp_path, f"  - inputs: {{frase: x}}\n    expect:\n      - {item}\n")
    assert len(found) == 1 and said in found[0], found
    assert found[0].startswith("tests[0].expect[0]")


def test_cases_are_checked_against_the_chain(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "  - inputs: {frse: hola}\n"
        "    expect:\n"
        "      - {contains: a, step: traducion}\n"
        '      - regex: "(?<=a)b"\n'
        "  - file: ../../etc/passwd\n"
        "  - file: nada.jsonl\n"
        "  - file: casos.txt\n"
        "  - inputs: {frase: x}\n"
        "    expect:\n"
        "      - schema: {$ref: 'file:///etc/passwd'}\n",
    )
    assert found == [
        "tests[0].inputs: this case does not give the input 'frase'"
        " | give it in the case's inputs (or a default in the chain's inputs)",
        "tests[0].inputs.frse: the chain has no input 'frse'"
        " | did you mean 'frase'? its inputs: frase, tono",
        "tests[0].expect[0].step: no step 'traducion'"
        " | did you mean 'traduccion'? step ids: traduccion, revision",
        found[3],
        found[4],
        "tests[2].file: tests file not found: nada.jsonl | paths are relative to the chain file",
        "tests[3].file: unsupported tests file type '.txt' | use .jsonl, .yaml or .csv",
        found[7],
    ]
    assert found[7].startswith("tests[4].expect[0].schema.$ref: ")
    assert "lookbehind" in found[3] and "outside the chain's folder" in found[4]


def test_the_file_and_line_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, CHAIN + "  - inputs: {frase: x}\n    expect:\n      - contain: a\n")
    with pytest.raises(ChainConfigError) as caught:
        load_spec(path)
    assert f"{path}:8:9: tests[0].expect[0].contain: unknown key 'contain'" in str(caught.value)


def test_the_published_schema_knows_the_checks() -> None:
    from eslabon.chainfile.spec import json_schema

    schema = json_schema()
    properties = schema["$defs"]["Assertion"]["properties"]
    assert set(ASSERTION_KINDS) <= set(properties)  # editors complete every check's name
    assert Assertion.model_fields["json_schema"].alias == "schema"
