"""One check of a test case on one finished run: :func:`check` gives a :class:`Verdict`.

A run is the chain's result dict (``{step_id: value, ..., "output": value, "stats": {...},
"tool_calls"?: [...]}``), structured values as plain data. A check looks at the output, or at
``step``'s value, and at ``field`` (a dotted path) inside it; the figures checks
(``max_tokens``, ``max_latency_ms``, ``max_cost``) read the run's ``stats``.

Every pattern from a file runs on RE2 (:mod:`eslabon.chainfile.patterns`), never Python's ``re``;
a ``python`` check's function is imported only under the import allowance
(:mod:`eslabon.trust.imports`). ``judge`` and ``similar`` are not built yet: they fail, saying so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eslabon.chainfile.spec import Assertion

__all__ = ["Context", "Verdict", "check", "failed_run", "text_of"]

PYTHON_PASS = 0.5  # a python check returning a score passes at this or more
NOT_YET = ("judge", "similar")


@dataclass(frozen=True)
class Verdict:
    """What one check said about one run. ``score`` is in 0..1 (1 or 0, except a ``python``
    check's own score); ``got`` is what the run gave (the text, the value, the figure)."""

    passed: bool
    score: float
    kind: str
    expected: Any
    got: Any
    reason: str = ""

    def to_data(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "score": self.score,
            "kind": self.kind,
            "expected": self.expected,
            "got": self.got,
            "reason": self.reason,
        }


@dataclass
class Context:
    """What checks need besides the run: packages ``python`` checks may import, and the chain's
    folder (where an allowed package that is not installed is looked for)."""

    allow_imports: list[str] | None = None
    folder: Path | None = None
    _functions: dict[str, Callable[..., Any]] = field(default_factory=dict)

    def function(self, path: str) -> Callable[..., Any]:
        """The function ``path`` names (imported once, under the allowance); raises
        :class:`~eslabon.errors.UserError` when it is not allowed or not found."""
        if path not in self._functions:
            from eslabon.errors import UserError
            from eslabon.trust.imports import allowed_imports, chain_folder, resolve_import

            with chain_folder(self.folder):
                found = resolve_import(path, allowed_imports(self.allow_imports), "python check")
            if not callable(found):
                raise UserError(f"python check: '{path}' is not a function")
            self._functions[path] = found
        return self._functions[path]


def failed_run(assertion: Assertion, error: dict[str, Any]) -> Verdict:
    """The verdict of every check of a run that failed: the error is the reason."""
    reason = f"the run failed: {error.get('type', 'error')}: {error.get('message', '')}"
    return Verdict(False, 0.0, assertion.kind, _shown(assertion), None, reason)


def check(assertion: Assertion, run: dict[str, Any], context: Context | None = None) -> Verdict:
    """``assertion`` judged on ``run`` (a finished run's result dict)."""
    kind = assertion.kind
    expected = _shown(assertion)
    if kind in NOT_YET:
        return Verdict(False, 0.0, kind, expected, None, f"'{kind}' checks are not supported yet")
    if kind in _FIGURES:
        return _FIGURES[kind](assertion, run)
    if kind == "calls_tool":
        return _calls_tool(assertion, run)
    found, value = _target(assertion, run)
    if not found:
        return Verdict(False, 0.0, kind, expected, None, str(value))
    if kind == "python":
        return _python(assertion, value, run, context or Context())
    return _VALUE_CHECKS[kind](assertion, value)


def _shown(assertion: Assertion) -> Any:
    expected = assertion.expected
    if assertion.kind == "calls_tool" and assertion.args is not None:
        return {"tool": expected, "args": assertion.args}
    return expected


# -- what a check looks at ------------------------------------------------------------------------
def _target(assertion: Assertion, run: dict[str, Any]) -> tuple[bool, Any]:
    """``(True, value)`` of the output / step / field, or ``(False, why it is missing)``."""
    if assertion.step is not None:
        if assertion.step not in run or assertion.step in ("stats", "tool_calls", "documents"):
            return False, f"no step '{assertion.step}' in the run"
        value = _data(run[assertion.step])
        what = f"step '{assertion.step}'"
    else:
        value = _data(run.get("output"))
        what = "the output"
    if assertion.field is None:
        return True, value
    if isinstance(value, str):  # a model that answered JSON without an output_schema
        try:
            value = json.loads(value)
        except ValueError:
            return False, f"{what} is text, not structured data: no field '{assertion.field}'"
    walked: list[str] = []
    for part in assertion.field.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            at = f" in '{'.'.join(walked)}'" if walked else ""
            keys = f" (it has: {', '.join(map(str, value))})" if isinstance(value, dict) else ""
            return False, f"no field '{part}'{at} of {what}{keys}"
        walked.append(part)
    return True, value


def _data(value: Any) -> Any:
    """A structured value (a pydantic object) as plain data; anything else as it is."""
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def text_of(value: Any) -> str:
    """A value as the text checks read: text itself; structured data as JSON text."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False)


def _verdict(assertion: Assertion, passed: bool, got: Any, reason: str) -> Verdict:
    return Verdict(
        passed,
        1.0 if passed else 0.0,
        assertion.kind,
        _shown(assertion),
        got,
        reason if not passed else "",
    )


# -- checks on a value ----------------------------------------------------------------------------
def _contains(assertion: Assertion, value: Any) -> Verdict:
    text, needle = text_of(value), str(assertion.expected)
    if not assertion.case:
        text, needle = text.casefold(), needle.casefold()
    present = needle in text
    wanted = assertion.kind == "contains"
    how = "" if assertion.case else " (any case)"
    reason = f"'{assertion.expected}' {'not ' if wanted else ''}found{how}"
    return _verdict(assertion, present == wanted, text_of(value), reason)


def _regex(assertion: Assertion, value: Any) -> Verdict:
    from eslabon.chainfile.patterns import search

    text = text_of(value)
    matched = search(str(assertion.expected), text)
    return _verdict(assertion, matched, text, f"no match for /{assertion.expected}/")


def _equals(assertion: Assertion, value: Any) -> Verdict:
    expected = assertion.expected
    if isinstance(expected, str):
        # text compares without the whitespace around it; a structured value by its JSON text
        # (a CSV cell is always text: "30" equals the number 30)
        same = text_of(value).strip() == expected.strip()
    else:
        same = _canonical(value) == _canonical(expected)
    return _verdict(assertion, same, value, "not equal")


def _canonical(value: Any) -> Any:
    """A comparable form under JSON's equality: 1 == 1.0, but true != 1."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, int | float):
        return ("number", float(value))
    if isinstance(value, list | tuple):
        return ("array", tuple(_canonical(v) for v in value))
    if isinstance(value, dict):
        return ("object", frozenset((k, _canonical(v)) for k, v in value.items()))
    return ("other", repr(value))


def _schema(assertion: Assertion, value: Any) -> Verdict:
    from jsonschema.exceptions import best_match

    from eslabon.chainfile.patterns import validator_for

    validator = validator_for(assertion.expected)
    error = best_match(validator.iter_errors(value))
    if error is not None and isinstance(value, str):
        # text that is JSON (a model answering JSON without an output_schema): its value
        try:
            parsed = json.loads(value)
        except ValueError:
            pass
        else:
            if (again := best_match(validator.iter_errors(parsed))) is None:
                return _verdict(assertion, True, parsed, "")
            error = again
    if error is None:
        return _verdict(assertion, True, value, "")
    where = "/".join(str(p) for p in error.absolute_path)
    return _verdict(assertion, False, value, (f"at '{where}': " if where else "") + error.message)


_VALUE_CHECKS: dict[str, Callable[[Assertion, Any], Verdict]] = {
    "contains": _contains,
    "not_contains": _contains,
    "regex": _regex,
    "equals": _equals,
    "schema": _schema,
}


# -- checks on the run's figures ------------------------------------------------------------------
def _stats(run: dict[str, Any]) -> dict[str, Any]:
    stats = run.get("stats")
    return stats if isinstance(stats, dict) else {}


def _max_tokens(assertion: Assertion, run: dict[str, Any]) -> Verdict:
    usage = _stats(run).get("usage")
    if usage is None:
        return _verdict(assertion, False, None, "the model reported no usage")
    tokens = usage.get("output_tokens", 0)
    return _verdict(
        assertion, tokens <= assertion.expected, tokens, f"{tokens} output tokens (the whole run)"
    )


def _max_latency(assertion: Assertion, run: dict[str, Any]) -> Verdict:
    latency = _stats(run).get("latency_ms")
    if latency is None:
        return _verdict(assertion, False, None, "the run's time is not known")
    return _verdict(assertion, latency <= assertion.expected, latency, f"took {latency:g} ms")


def _max_cost(assertion: Assertion, run: dict[str, Any]) -> Verdict:
    from eslabon.observe.record import cost_text

    cost = _stats(run).get("cost")
    if cost is None:
        return _verdict(assertion, False, None, "price unknown (the model's price is not known)")
    return _verdict(assertion, cost <= assertion.expected, cost, f"cost {cost_text(cost)}")


_FIGURES: dict[str, Callable[[Assertion, dict[str, Any]], Verdict]] = {
    "max_tokens": _max_tokens,
    "max_latency_ms": _max_latency,
    "max_cost": _max_cost,
}


# -- tools, python --------------------------------------------------------------------------------
def _calls_tool(assertion: Assertion, run: dict[str, Any]) -> Verdict:
    calls = [c for c in run.get("tool_calls") or [] if isinstance(c, dict)]
    called = [c.get("name") for c in calls]
    named = [c for c in calls if c.get("name") == assertion.calls_tool]
    if not named:
        reason = f"'{assertion.calls_tool}' was not called"
        reason += f" (called: {', '.join(map(str, called))})" if called else " (no tool was called)"
        return _verdict(assertion, False, called, reason)
    if assertion.args is None:
        return _verdict(assertion, True, called, "")
    wanted = assertion.args
    for call in named:
        args = call.get("args") or {}
        if all(k in args and _canonical(args[k]) == _canonical(v) for k, v in wanted.items()):
            return _verdict(assertion, True, args, "")
    got = [c.get("args") for c in named]
    return _verdict(
        assertion, False, got, f"'{assertion.calls_tool}' was called, never with {wanted}"
    )


def _python(assertion: Assertion, value: Any, run: dict[str, Any], context: Context) -> Verdict:
    function = context.function(str(assertion.expected))
    try:
        answer = function(value, run)
    except Exception as exc:  # the user's code: its failure fails the check, not the run
        reason = f"{assertion.expected} raised {type(exc).__name__}: {exc}"
        return Verdict(False, 0.0, "python", assertion.expected, value, reason)
    reason = ""
    if isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[1], str):
        answer, reason = answer
    if isinstance(answer, bool):
        score = 1.0 if answer else 0.0
    elif isinstance(answer, int | float) and math.isfinite(answer):
        score = min(1.0, max(0.0, float(answer)))
    else:
        reason = (
            f"{assertion.expected} returned {type(answer).__name__}; return a bool, a score "
            "0..1, or (bool, reason)"
        )
        return Verdict(False, 0.0, "python", assertion.expected, value, reason)
    passed = score >= PYTHON_PASS
    if not passed and not reason:
        reason = f"{assertion.expected} said no" + ("" if score == 0 else f" (score {score:g})")
    return Verdict(passed, score, "python", assertion.expected, value, reason if not passed else "")
