"""A chain's ``tests``, expanded into a flat list of cases: inline ones and rows of case files.

A case file lies beside the chain (confined like example files: :mod:`eslabon.trust.paths`) and
is .jsonl (one case a line), .yaml/.yml (a list of cases, or ``{tests: [...]}``) or .csv (columns
``name``, the chain's input names, ``repeat``, ``pass_score``, and one column per check kind:
each non-empty cell one check). Every bad row is reported at once, each naming its file and row,
as a :class:`~eslabon.errors.ChainConfigError` (a mistake in the files: ``eslabon test`` exits 2).

Light on purpose (pydantic, yaml): nothing here imports LangChain.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from eslabon.chainfile.spec import ASSERTION_KINDS, Assertion, Chain, TestCase, TestFile
from eslabon.errors import ChainConfigError, Problem

__all__ = [
    "MAX_CASES",
    "MAX_CASES_BYTES",
    "BadRow",
    "Case",
    "expand_cases",
    "file_rows",
    "shown_path",
]

SUFFIXES = (".jsonl", ".yaml", ".yml", ".csv")
MAX_CASES_BYTES = 5_000_000  # a file of cases is read whole; 5 MB is thousands of cases
MAX_CASES = 10_000  # cases of one chain, all files together (each runs on every model)
CSV_SETTINGS = ("name", "repeat", "pass_score")  # CSV columns that are not inputs nor checks
# a CSV cell is text; these kinds take a number or a JSON value, parsed from it
_JSON_CELLS = ("schema",)


@dataclass(frozen=True)
class Case:
    """One test case, ready to run: its name (unique in its chain), inputs and checks."""

    name: str
    inputs: dict[str, str]
    expect: list[Assertion]
    repeat: int = 1
    pass_score: float | None = None
    where: str = ""  # where it was written: 'chain.yaml tests[0]', 'casos.jsonl line 3'
    index: int = 0  # its position in the chain's cases, from 0


def expand_cases(spec: Chain) -> list[Case]:
    """Every case of ``spec``'s ``tests``, in order; raises :class:`ChainConfigError` naming
    every bad row (file, row, key path and a fix)."""
    chain_file = shown_path(spec.source) if spec.source is not None else "<chain>"
    problems: list[Problem] = []
    raw: list[tuple[TestCase, str]] = []
    for i, ref in enumerate(spec.tests or []):
        if isinstance(ref, TestFile):
            raw += _file_cases(spec, ref.file, problems, f"tests[{i}].file", chain_file)
        else:
            raw.append((ref, f"{chain_file} tests[{i}]"))
            _check_checks(ref, chain_file, f"tests[{i}]", None, problems)
        if len(raw) > MAX_CASES:
            problems.append(
                Problem(
                    f"more than {MAX_CASES:,} cases",
                    "tests",
                    chain_file,
                    hint="split them into several chain files, or keep fewer cases",
                )
            )
            break
    if problems:
        raise ChainConfigError(problems)
    return _named(raw)


def _named(raw: list[tuple[TestCase, str]]) -> list[Case]:
    """Cases with unique names: ``case N`` by default, ``name (2)`` for a repeated name."""
    taken: set[str] = set()
    cases = []
    for n, (case, where) in enumerate(raw):
        base = (case.name or "").strip() or f"case {n + 1}"
        name, k = base, 2
        while name in taken:
            name, k = f"{base} ({k})", k + 1
        taken.add(name)
        cases.append(
            Case(
                name=name,
                inputs=dict(case.inputs),
                expect=list(case.expect),
                repeat=case.repeat or 1,
                pass_score=case.pass_score,
                where=where,
                index=n,
            )
        )
    return cases


def shown_path(path: Path) -> str:
    """``path`` as messages show it: relative to the working folder when it is inside."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# -- checks a row's schema cannot make ------------------------------------------------------------
def _check_checks(
    case: TestCase, file: str, path: str, line: int | None, problems: list[Problem]
) -> None:
    """Each ``regex`` runs on RE2, each ``schema`` is a valid JSON Schema whose patterns do."""
    from eslabon.chainfile.patterns import pattern_problem, pattern_problems

    for j, check in enumerate(case.expect):
        where = f"{path}.expect[{j}]"
        if check.kind == "regex" and (message := pattern_problem(check.expected, "regex")):
            problems.append(Problem(message, f"{where}.regex", file, line))
        if check.kind == "schema":
            if (bad := _schema_problem(check.expected)) is not None:
                problems.append(
                    Problem(bad, f"{where}.schema", file, line, hint="write a JSON Schema object")
                )
            for key_path, message in pattern_problems(check.expected):
                inner = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in key_path)
                problems.append(Problem(message, f"{where}.schema{inner}", file, line))


def _schema_problem(schema: Any) -> str | None:
    from jsonschema.exceptions import SchemaError

    from eslabon.chainfile.checks import external_refs
    from eslabon.chainfile.patterns import validator_for, without_patterns

    if outside := external_refs(schema):  # never a file read or a host called for a $ref
        return "; ".join(f"{'.'.join(map(str, path))}: {message}" for path, message in outside)
    try:
        # patterns are checked on RE2 apart: the meta-schema would compile them with Python's re
        type(validator_for({})).check_schema(without_patterns(schema))
    except SchemaError as exc:
        return f"not a valid JSON Schema: {exc.message}"
    return None


# -- files of cases -------------------------------------------------------------------------------
Row = tuple[int, Any]  # (its row or line number, the row as read)


def _file_cases(
    spec: Chain, name: str, problems: list[Problem], key: str, chain_file: str
) -> list[tuple[TestCase, str]]:
    from eslabon.trust.paths import PathNotAllowedError, confine

    try:
        path = confine(name, spec.base_dir, "tests file")
    except PathNotAllowedError as exc:
        problems.append(Problem(exc.message, key, chain_file, hint=exc.hint))
        return []
    shown = shown_path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        problems.append(
            Problem(
                f"unsupported tests file type '{path.suffix}'",
                key,
                chain_file,
                hint=f"use one of {', '.join(SUFFIXES)}",
            )
        )
        return []
    try:
        text = _read(path)
        rows = list(_rows(path, suffix, text))
    except ChainConfigError as exc:
        problems += [replace(p, file=shown) for p in exc.problems]
        return []
    inputs = spec.input_names()
    cases = []
    for number, row in rows:
        what = "line" if suffix == ".jsonl" else "row"
        line = number if suffix in (".jsonl", ".csv") else None
        before = len(problems)
        case = _row_case(row, suffix, inputs, shown, f"{what} {number}", line, problems)
        if case is None:
            continue
        _check_inputs(spec, case, shown, f"{what} {number}", line, problems)
        _check_checks(case, shown, f"{what} {number}", line, problems)
        if len(problems) == before:
            cases.append((case, f"{shown} {what} {number}"))
    return cases


def _file_problem(message: str, hint: str | None = None, line: int | None = None) -> Exception:
    """A whole file cannot be read (its rows are then not looked at); the file is named where
    it is caught (:func:`_file_cases`)."""
    return ChainConfigError([Problem(message, "", None, line, hint=hint)])


def _read(path: Path, what: str = "tests file", limit: int | None = None) -> str:
    limit = MAX_CASES_BYTES if limit is None else limit  # read now: tests lower it
    try:
        size = path.stat().st_size
        if size > limit:
            raise _file_problem(
                f"{size:,} bytes; a {what} may be up to {limit:,} bytes",
                "split it into several files",
            )
        data = path.read_bytes()
    except FileNotFoundError:
        hint = "paths are relative to the chain file" if what == "tests file" else None
        raise _file_problem(f"{what} not found", hint) from None
    except OSError as exc:
        raise _file_problem(f"cannot read it: {exc.strerror or exc}") from None
    try:
        # utf-8-sig: spreadsheets save CSV with a byte-order mark
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise _file_problem(
            f"not UTF-8 text (byte {exc.object[exc.start]:#04x})", "save it as UTF-8", line
        ) from None


def _rows(path: Path, suffix: str, text: str, what: str = "cases") -> Iterator[Row]:
    if suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield n, BadRow(f"invalid JSON: {exc.msg}")
                except RecursionError:
                    yield n, BadRow("values nest too deeply")
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            # the header is line 1; a row's number is the line it starts on
            for n, row in enumerate(reader, 2):
                if None in row:
                    yield n, BadRow(f"{len(row[None])} more cells than the header has columns")
                else:
                    yield n, row
        except csv.Error as exc:
            raise _file_problem(f"not valid CSV: {exc}", line=reader.line_num) from None
    else:
        yield from enumerate(_yaml_list(text, what), 1)


def file_rows(path: Path, what: str = "cases", limit: int | None = None) -> list[tuple[int, Any]]:
    """``(number, row)`` of a .jsonl / .yaml / .csv file read as case files are (size bound,
    UTF-8, a :class:`BadRow` for a row that cannot be read); a file that cannot be read at all
    is a :class:`~eslabon.errors.ChainConfigError` naming it. ``what``: the rows, in messages."""
    try:
        text = _read(path, "file of " + what, limit)
        return list(_rows(path, path.suffix.lower(), text, what))
    except ChainConfigError as exc:
        raise ChainConfigError([replace(p, file=shown_path(path)) for p in exc.problems]) from None


def _yaml_list(text: str, what: str = "cases") -> list[Any]:
    import yaml

    from eslabon.chainfile.yamlsafe import YamlLimitError, load_bounded

    try:
        data = load_bounded(text, MAX_CASES_BYTES)
    except YamlLimitError as exc:
        raise _file_problem(exc.message, exc.hint, exc.line) from None
    except yaml.YAMLError as exc:
        raise _file_problem(f"invalid YAML: {exc}") from None
    if isinstance(data, dict) and set(data) == {"tests"}:
        data = data["tests"]
    if not isinstance(data, list):
        raise _file_problem(
            f"expected a list of {what}",
            "each item: {name, inputs: {...}, expect: [...]}"
            if what == "cases"
            else "each item: the chain's inputs and output",
        )
    return data


@dataclass(frozen=True)
class BadRow:
    """A row that could not be read (bad JSON, stray cells): its message."""

    message: str


def _row_case(
    row: Any,
    suffix: str,
    inputs: list[str],
    file: str,
    where: str,
    line: int | None,
    problems: list[Problem],
) -> TestCase | None:
    """The row as a validated case, or None (its problems added)."""
    from eslabon.chainfile.schema_errors import problems_from_validation

    if isinstance(row, BadRow):
        problems.append(Problem(row.message, where, file, line))
        return None
    if suffix == ".csv":
        data = _csv_case(row, inputs, file, where, line, problems)
        if data is None:
            return None
    elif isinstance(row, dict):
        data = row
    else:
        problems.append(
            Problem(
                f"expected a mapping, got {type(row).__name__}",
                where,
                file,
                line,
                hint="each case: {name, inputs: {...}, expect: [...]}",
            )
        )
        return None
    try:
        return TestCase.model_validate(data)
    except ValidationError as exc:
        for p in problems_from_validation(exc, data, TestCase):
            path = f"{where}.{p.path}" if p.path else where
            problems.append(Problem(p.message, path, file, line, hint=p.hint))
        return None


def _csv_case(
    row: dict[str, str | None],
    inputs: list[str],
    file: str,
    where: str,
    line: int | None,
    problems: list[Problem],
) -> dict[str, Any] | None:
    """A CSV row as a case's data: inputs from the input columns (an empty cell: not given),
    one check per non-empty check cell."""
    from eslabon.chainfile.suggest import did_you_mean

    data: dict[str, Any] = {"inputs": {}, "expect": []}
    ok = True
    for column, cell in row.items():
        column = (column or "").strip()
        value = cell if cell is not None else ""
        if column in inputs:  # an input named like a check kind is the chain's input
            if value != "":
                data["inputs"][column] = value
        elif column in CSV_SETTINGS:
            if value.strip():
                data[column] = value.strip()
        elif column in ASSERTION_KINDS:
            if value.strip() == "":
                continue
            parsed = _cell(column, value)
            if isinstance(parsed, BadRow):
                problems.append(Problem(parsed.message, f"{where}.{column}", file, line))
                ok = False
            else:
                data["expect"].append({column: parsed})
        else:
            known = [*CSV_SETTINGS, *inputs, *ASSERTION_KINDS]
            hint = did_you_mean(column, known)
            problems.append(
                Problem(
                    f"unknown column '{column}'",
                    where,
                    file,
                    1,  # the header
                    hint=(hint + " " if hint else "")
                    + f"columns: name, the chain's inputs ({', '.join(inputs) or 'none'}), "
                    f"repeat, pass_score, or a check: {', '.join(ASSERTION_KINDS)}",
                )
            )
            return None  # every row would say the same: the header is wrong
    return data if ok else None


def _cell(kind: str, text: str) -> Any:
    if kind in _JSON_CELLS:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            return BadRow(f"not JSON: {exc.msg} (a schema cell holds a JSON object)")
    return text  # numbers are parsed by the check's own validation ("40" -> 40)


def _check_inputs(
    spec: Chain, case: TestCase, file: str, where: str, line: int | None, problems: list[Problem]
) -> None:
    """A row's inputs are the chain's, and give each one without a default (like the checks do
    for inline cases)."""
    from eslabon.chainfile.suggest import did_you_mean

    names = spec.input_names()
    for name in case.inputs:
        if name not in names:
            hint = did_you_mean(name, names)
            problems.append(
                Problem(
                    f"the chain has no input '{name}'",
                    f"{where}.inputs.{name}",
                    file,
                    line,
                    hint=(hint + " " if hint else "") + f"its inputs: {', '.join(names) or 'none'}",
                )
            )
    missing = [n for n in names if n not in case.inputs and spec.input_default(n) is None]
    if missing:
        problems.append(
            Problem(
                f"this case does not give the input {', '.join(repr(n) for n in missing)}",
                f"{where}.inputs",
                file,
                line,
                hint="give it in the row (or a default in the chain's inputs)",
            )
        )
