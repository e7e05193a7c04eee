"""Regexes from chain files run on RE2: hostile patterns finish, unsupported ones are explained,
ordinary ones validate as before (docs/security.md)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from eslabon import FakeChatModel, UserError, load_chain
from eslabon.chainfile.patterns import PatternError, pattern_problems, search, validator_for
from eslabon.running.structured import OutputSchema, _Invalid
from helpers import write

# Each variant reaches Python's backtracking re by another road in jsonschema: `pattern`,
# `patternProperties` with `additionalProperties` or `unevaluatedProperties` (jsonschema's
# helpers call re.search themselves), `propertyNames`, and a subschema whose "$schema" makes
# jsonschema switch to the stock draft-07 validator. On 101 characters, ^(a+)+$ would backtrack
# for about 2**100 steps: a regression hangs until the subprocess timeout, visibly.
HOSTILE = "^(a+)+$"
EVIL = "a" * 100 + "!"
VARIANTS: dict[str, tuple[dict[str, Any], Any]] = {
    "pattern": (
        {"type": "object", "properties": {"v": {"type": "string", "pattern": HOSTILE}}},
        {"v": EVIL},
    ),
    "additionalProperties": (
        {
            "type": "object",
            "patternProperties": {HOSTILE: {"type": "integer"}},
            "additionalProperties": False,
        },
        {EVIL: 1},
    ),
    "unevaluatedProperties": (
        {
            "type": "object",
            "allOf": [{"patternProperties": {HOSTILE: {"type": "integer"}}}],
            "unevaluatedProperties": False,
        },
        {EVIL: 1},
    ),
    "propertyNames": (
        {"type": "object", "propertyNames": {"pattern": HOSTILE}},
        {EVIL: 1},
    ),
    "draft-07 subschema": (
        {
            "type": "object",
            "properties": {"v": {"$ref": "#/$defs/v"}},
            "$defs": {
                "v": {"$schema": "http://json-schema.org/draft-07/schema#", "pattern": HOSTILE}
            },
        },
        {"v": EVIL},
    ),
}

_RUN_VARIANTS = """
import json, sys
from eslabon.running.structured import OutputSchema, _Invalid
out = {}
for name, (schema, data) in json.loads(sys.stdin.read()).items():
    try:
        OutputSchema(schema).validate(data)
        out[name] = "valid"
    except _Invalid as exc:
        out[name] = str(exc)
print(json.dumps(out))
"""


def test_hostile_patterns_finish_whatever_the_road() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _RUN_VARIANTS],
        input=json.dumps(VARIANTS),
        capture_output=True,
        text=True,
        timeout=120,  # RE2 answers in milliseconds; Python's re would not answer at all
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["pattern"].endswith(f"does not match '{HOSTILE}'")
    assert result["additionalProperties"].endswith(
        f"does not match any of the regexes: '{HOSTILE}'"
    )
    assert "Unevaluated properties are not allowed" in result["unevaluatedProperties"]
    assert result["propertyNames"].endswith(f"does not match '{HOSTILE}'")
    assert result["draft-07 subschema"].endswith(f"does not match '{HOSTILE}'")


def test_a_hostile_pattern_still_accepts_what_matches() -> None:
    schema, _ = VARIANTS["pattern"]
    assert OutputSchema(schema).validate({"v": "a" * 100}) == {"v": "a" * 100}


# -- unsupported patterns are explained --------------------------------------------------------
def test_unsupported_patterns_are_reported_where_they_are() -> None:
    schema = {
        "type": "object",
        "properties": {
            "clave": {"type": "string", "pattern": "^(?=.*[0-9])[a-z0-9]{8,}$"},
            "doble": {"type": "string", "pattern": r"^(\w)\1$"},
            "pattern": {"type": "string", "pattern": "^ok$"},  # a property named pattern
        },
        "patternProperties": {"(?<!x)_id$": {"type": "integer"}},
        "$defs": {"fin": {"anyOf": [{"pattern": r"abc\Z"}]}},
    }
    problems = dict(pattern_problems(schema))
    assert set(problems) == {
        ("properties", "clave", "pattern"),
        ("properties", "doble", "pattern"),
        ("patternProperties", "(?<!x)_id$"),
        ("$defs", "fin", "anyOf", 0, "pattern"),
    }
    lookahead = problems["properties", "clave", "pattern"]
    assert "lookahead '(?=...)'" in lookahead and "RE2" in lookahead and "allOf" in lookahead
    assert "backreference" in problems["properties", "doble", "pattern"]
    assert problems["patternProperties", "(?<!x)_id$"].startswith("patternProperties key")
    assert "negative lookbehind" in problems["patternProperties", "(?<!x)_id$"]
    assert "write '$'" in problems["$defs", "fin", "anyOf", 0, "pattern"]


def test_validate_judges_patterns_by_re2_alone(tmp_path: Path) -> None:
    # jsonschema's meta-schema check compiled patterns with Python's re ("format": "regex"),
    # which refuses RE2's Unicode classes: validate refused a pattern the answer check runs
    path = write(
        tmp_path,
        "inputs: {t: x}\nprompt: '{t}'\noutput_schema:\n  type: object\n  properties:\n"
        "    palabra: {type: string, pattern: '^\\p{L}+$'}\n",
    )
    from eslabon.chainfile.loader import validate_file

    assert validate_file(path) == []
    schema = {"type": "object", "properties": {"palabra": {"pattern": r"^\p{L}+$"}}}
    assert OutputSchema(schema).validate({"palabra": "Ñandú"}) == {"palabra": "Ñandú"}
    with pytest.raises(_Invalid):
        OutputSchema(schema).validate({"palabra": "a1"})


def test_data_is_not_taken_for_patterns() -> None:
    schema = {
        "type": "object",
        "properties": {"p": {"const": {"pattern": "(?=x)"}, "examples": [{"pattern": "(?=x)"}]}},
        "default": {"pattern": "(?=x)"},
    }
    assert pattern_problems(schema) == []


def test_a_bad_pattern_is_refused_before_the_model_is_asked(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "inputs: {texto: x}\nprompt: '{texto}'\noutput_schema:\n  type: object\n"
        "  properties:\n    clave: {type: string, pattern: '^(?=.*[0-9]).+$'}\n",
    )
    model = FakeChatModel(responses=['{"clave": "a1"}'])
    with pytest.raises(UserError, match=r"lookahead"):
        load_chain(path, model=model).invoke({"texto": "x"})
    assert model.calls == []
    # a schema built in code gets the same message when it is used
    with pytest.raises(PatternError, match="lookahead"):
        OutputSchema({"type": "string", "pattern": "(?=a)"}).validate("a")


# -- ordinary patterns validate as before ------------------------------------------------------
SAME_AS_BEFORE = [
    (r"^\d{4}-\d{2}-\d{2}$", "2024-05-01", True),
    (r"^\d{4}-\d{2}-\d{2}$", "2024-5-01", False),
    (r"^[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}$", "ana@example.org", True),
    (r"^[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}$", "ana@", False),
    ("b", "abc", True),  # JSON Schema searches: a pattern is not anchored
    ("^b", "abc", False),
    ("colou?r", "my color", True),
    (r"^\w+$", "hola_1", True),
    (r"^\w+$", "hola mundo", False),
    ("^(foo|bar)+$", "foobarfoo", True),
    ("^(foo|bar)+$", "foobaz", False),
    ("^.{3}$", "ñañ", True),  # characters, not bytes
    (r"^\S+$", "a b", False),
    ("^[^aeiou]+$", "xyz", True),
    (r"^\u00e9$", "é", True),
    ("^(?i:hola)$", "HOLA", True),
]


@pytest.mark.parametrize(("pattern", "text", "expected"), SAME_AS_BEFORE)
def test_ordinary_patterns_match_as_with_python_re(pattern: str, text: str, expected: bool) -> None:
    assert (re.search(pattern, text) is not None) is expected  # the case is right
    assert search(pattern, text) is expected
    schema = {"type": "object", "properties": {"v": {"type": "string", "pattern": pattern}}}
    if expected:
        assert OutputSchema(schema).validate({"v": text}) == {"v": text}
    else:
        with pytest.raises(_Invalid, match="does not match"):
            OutputSchema(schema).validate({"v": text})


# where ECMA-262 (JSON Schema's regex dialect) and Python's re part ways, RE2 sides with ECMA
ECMA = [
    ("^abc$", "abc\n", False),  # $ is the end of the text, not before a final newline
    (r"^\d+$", "١٢٣", False),  # \d is ASCII digits
    (r"^\s$", "\u00a0", True),  # ECMA's \s has the no-break space (RE2's own \s has not)
    (r"^\s$", "\v", True),
    (r"^\cJ$", "\n", True),
    ("^a.b$", "a\rb", False),  # . stops at every line terminator
    (r"^[\s-]+$", " -", True),  # after \s in a class, - is a literal, not a range
]


@pytest.mark.parametrize(("pattern", "text", "expected"), ECMA)
def test_ecma_spellings(pattern: str, text: str, expected: bool) -> None:
    assert search(pattern, text) is expected


INSTANCES: list[Any] = [
    {"x-a": 1, "nombre": "Ana"},
    {"x-a": "uno"},
    {"y": 1},
    {"y": 1, "z": 2, "x-b": 3},
    {"nombre": "ana"},
    "no es un objeto",
]


def test_errors_are_the_same_as_jsonschemas_own() -> None:
    schema = {
        "type": "object",
        "properties": {"nombre": {"type": "string", "pattern": "^[A-Z]"}},
        "patternProperties": {"^x-": {"type": "integer"}},
        "additionalProperties": False,
    }
    uneval = {
        "type": "object",
        "allOf": [{"patternProperties": {"^x-": {"type": "integer"}}}],
        "properties": {"nombre": {"pattern": "^[A-Z]"}},
        "unevaluatedProperties": False,
    }
    for one in (schema, uneval):
        for instance in INSTANCES:
            ours = sorted(
                (list(e.path), e.message) for e in validator_for(one).iter_errors(instance)
            )
            stock = Draft202012Validator(one).iter_errors(instance)
            assert ours == sorted((list(e.path), e.message) for e in stock), instance


# -- the local model's grammar ------------------------------------------------------------------
def test_the_grammar_leaves_patterns_and_long_counts_to_validation() -> None:
    from eslabon.chat.local import _grammar_schema

    schema = {
        "type": "object",
        "properties": {
            "anio": {"type": "string", "pattern": r"^\d{4}$", "maxLength": 4},
            "nota": {"type": "string", "maxLength": 5000},
            "tags": {"type": "array", "items": {"pattern": "^(x{0,30}){0,30}$"}, "maxItems": 9999},
            "pattern": {"const": {"pattern": "kept: data"}},
        },
    }
    before = json.dumps(schema)
    bounded = _grammar_schema(schema)
    assert json.dumps(schema) == before  # the step's own schema is untouched
    assert bounded["properties"]["anio"] == {"type": "string", "maxLength": 4}
    assert bounded["properties"]["nota"] == {"type": "string"}
    assert bounded["properties"]["tags"] == {"type": "array", "items": {}}
    assert bounded["properties"]["pattern"] == {"const": {"pattern": "kept: data"}}


_LOCAL_RUN = """
import sys
from eslabon import load_chain
from eslabon.errors import OutputValidationError
try:
    print("output:", load_chain(sys.argv[1]).invoke({"texto": "Ana nació en 1990."})["output"])
except OutputValidationError as exc:
    print("answered, not valid:", exc.errors)
"""


@pytest.mark.model
def test_the_local_model_survives_patterns_and_long_counts(tmp_path: Path) -> None:
    # llama-cpp-python turned ^\\d{4}$ into a grammar llama.cpp crashed on (SIGSEGV), and so
    # did maxLength 2000 (one nested group per optional character)
    path = write(
        tmp_path,
        "model: local\ninputs: {texto: x}\nparams: {temperature: 0, max_tokens: 40}\n"
        "retry: {attempts: 1}\nprompt: 'Año de nacimiento en JSON: {texto}'\n"
        "output_schema:\n  type: object\n  properties:\n"
        "    anio: {type: string, pattern: '^\\d{4}$'}\n"
        "    nota: {type: string, maxLength: 2000}\n"
        "  required: [anio]\n",
    )
    done = subprocess.run(
        [sys.executable, "-c", _LOCAL_RUN, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith(("output:", "answered, not valid:"))
