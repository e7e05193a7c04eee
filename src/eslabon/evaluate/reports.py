"""What ``eslabon test`` shows and writes: the terminal matrix, ``--json``, ``--junit``.

Every text a report holds passes through :func:`eslabon.trust.redaction.redact`: a model's
answer, an error message or a check's reason may quote a key (a provider echoing a header, a
chain that put one in a prompt), and reports are files people attach to CI runs and share.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eslabon.evaluate.assertions import text_of
from eslabon.evaluate.runner import Attempt, CaseResult, ModelRun, TestRun
from eslabon.trust.redaction import redact

__all__ = ["json_report", "junit_report", "print_report", "write_report"]

SHOWN = 160  # characters of an expected value or an output in the terminal's failure list
JUNIT_TEXT = 4000  # characters of an output in JUnit's system-out


def _cut(value: Any, limit: int) -> str:
    text = " ".join(text_of(value).split())  # one line: outputs span many
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(result: CaseResult) -> tuple[str, str]:
    """The matrix cell of a case on a model, and its style."""
    if len(result.attempts) == 1:
        return ("✓", "green") if result.passed else ("✗", "red")
    rate = f"{result.passes}/{len(result.attempts)}"
    style = "green" if result.passed else ("yellow" if result.passes else "red")
    return rate, style


def _figures(model: ModelRun) -> tuple[str, str, str]:
    from eslabon.observe.record import cost_text

    tokens = model.tokens()
    latency = model.median_latency_ms()
    return (
        f"{tokens:,}" if tokens is not None else "not reported",
        cost_text(model.cost()),
        f"{latency:,.0f} ms" if latency is not None else "-",
    )


def print_report(run: TestRun, console: Any) -> None:
    """The matrix of each chain (cases × models), each model's figures, then the failures."""
    from rich.table import Table
    from rich.text import Text

    for chain in run.chains:
        if not chain.models or not chain.models[0].results:
            continue
        table = Table(title=redact(f"{chain.name} ({chain.file})"), title_justify="left")
        table.add_column("case", overflow="fold")
        for model in chain.models:
            table.add_column(redact(model.label), justify="center")
        for i, first in enumerate(chain.models[0].results):
            cells = [Text(redact(first.case.name))]
            for model in chain.models:
                mark, style = _cell(model.results[i])
                cells.append(Text(mark, style=style))
            table.add_row(*cells)
        console.print(table)
        figures = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
        for name in ("model", "passed", "tokens", "cost", "median latency"):
            figures.add_column(name, justify="left" if name == "model" else "right")
        for model in chain.models:
            tokens, cost, latency = _figures(model)
            total = len(model.results)
            style = "green" if model.passed == total else "red"
            figures.add_row(
                redact(model.label),
                Text(f"{model.passed}/{total}", style=style),
                tokens,
                cost,
                latency,
            )
        console.print(figures)
        console.print()
    _print_failures(run, console)
    for file in run.skipped:
        console.print(Text(redact(f"skipped {file}: it has no tests"), style="dim"))
    passed, total = run.counts()
    line = f"{passed}/{total} cases passed in {run.elapsed_s:.1f} s"
    console.print(Text(line, style="bold green" if passed == total else "bold red"))


def _print_failures(run: TestRun, console: Any) -> None:
    from rich.text import Text

    failures = [
        (chain, model, result)
        for chain in run.chains
        for model in chain.models
        for result in model.results
        if not result.passed
    ]
    if not failures:
        return
    console.print(Text("failures", style="bold"))
    many = len({c.file for c in run.chains}) > 1
    for chain, model, result in failures:
        head = f"{result.case.name} · {model.label}" + (f" · {chain.file}" if many else "")
        console.print(Text(redact(f"✗ {head}"), style="red"))
        for n, attempt in enumerate(result.attempts, 1):
            if attempt.passed:
                continue
            run_no = f"run {n}: " if len(result.attempts) > 1 else ""
            for line in _failure_lines(attempt):
                console.print(Text(redact(f"    {run_no}{line}")))


def _failure_lines(attempt: Attempt) -> list[str]:
    if attempt.error is not None and not attempt.verdicts:
        return [f"the run failed: {attempt.error.get('type')}: {attempt.error.get('message')}"]
    lines = []
    for verdict in attempt.verdicts:
        if verdict.passed:
            continue
        line = f"{verdict.kind}: expected {_cut(verdict.expected, SHOWN)!s}"
        if verdict.got is not None:
            line += f" · got {_cut(verdict.got, SHOWN)}"
        if verdict.reason:
            line += f" · {verdict.reason}"
        lines.append(line)
    if not lines:  # every check passed, but not the weighted score
        lines.append(f"score {attempt.score:.2f} is under the case's pass_score")
    return lines


# -- files ----------------------------------------------------------------------------------------
def json_report(run: TestRun) -> dict[str, Any]:
    """Everything: each chain, model, case and run, with outputs, verdicts and stats."""
    passed, total = run.counts()
    return {
        "passed": run.passed,
        "cases": {"passed": passed, "total": total},
        "elapsed_s": round(run.elapsed_s, 3),
        "skipped": list(run.skipped),
        "chains": [
            {
                "file": chain.file,
                "name": chain.name,
                "models": [_model_data(m) for m in chain.models],
            }
            for chain in run.chains
        ],
    }


def _model_data(model: ModelRun) -> dict[str, Any]:
    return {
        "model": model.label,
        "passed": model.passed,
        "total": len(model.results),
        "tokens": model.tokens(),
        "cost": model.cost(),
        "median_latency_ms": model.median_latency_ms(),
        "cases": [
            {
                "name": r.case.name,
                "where": r.case.where,
                "inputs": r.case.inputs,
                "passed": r.passed,
                "pass_rate": r.pass_rate,
                "score": r.score,
                "runs": [
                    {
                        "passed": a.passed,
                        "score": a.score,
                        "output": a.output,
                        "steps": a.steps,
                        "tool_calls": a.tool_calls,
                        "error": a.error,
                        "stats": a.stats,
                        "checks": [v.to_data() for v in a.verdicts],
                    }
                    for a in r.attempts
                ],
            }
            for r in model.results
        ],
    }


def junit_report(run: TestRun) -> str:
    """JUnit XML: one ``testsuite`` per chain and model, a ``testcase`` per case, a
    ``failure`` (a check failed) or ``error`` (the run failed) with the reasons."""
    import xml.etree.ElementTree as ET

    passed, total = run.counts()
    root = ET.Element(
        "testsuites",
        name="eslabon test",
        tests=str(total),
        failures=str(total - passed),
        time=f"{run.elapsed_s:.3f}",
    )
    for chain in run.chains:
        for model in chain.models:
            errors = sum(
                1 for r in model.results if not r.passed and all(a.error for a in r.attempts)
            )
            failures = len(model.results) - model.passed - errors
            suite = ET.SubElement(
                root,
                "testsuite",
                name=f"{chain.name} · {model.label}",
                tests=str(len(model.results)),
                failures=str(failures),
                errors=str(errors),
                skipped="0",
                time=f"{model.elapsed_s:.3f}",
            )
            ET.SubElement(
                ET.SubElement(suite, "properties"), "property", name="model", value=model.label
            )
            for result in model.results:
                _junit_case(suite, chain.file, result)
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode", xml_declaration=False)
    return redact('<?xml version="1.0" encoding="UTF-8"?>\n' + _xml_safe(text) + "\n")


def _junit_case(suite: Any, file: str, result: CaseResult) -> None:
    import xml.etree.ElementTree as ET

    seconds = sum((a.stats.get("latency_ms") or 0) for a in result.attempts) / 1000
    case = ET.SubElement(
        suite, "testcase", name=result.case.name, classname=file, time=f"{seconds:.3f}"
    )
    if not result.passed:
        broken = [a for a in result.attempts if not a.passed]
        if all(a.error for a in result.attempts):
            error = broken[0].error or {}
            ET.SubElement(
                case,
                "error",
                message=str(error.get("message", ""))[:500],
                type=str(error.get("type", "error")),
            ).text = str(error.get("message", ""))
        else:
            lines = [line for a in broken for line in _failure_lines(a)]
            rate = (
                f"{result.passes}/{len(result.attempts)} runs passed: "
                if len(result.attempts) > 1
                else ""
            )
            element = ET.SubElement(
                case,
                "failure",
                message=(rate + (lines[0] if lines else "failed"))[:500],
                type=next((v.kind for a in broken for v in a.verdicts if not v.passed), "score"),
            )
            element.text = "\n".join(lines)
    out = "\n---\n".join(_cut_block(a.output) for a in result.attempts)
    ET.SubElement(case, "system-out").text = out


def _cut_block(value: Any) -> str:
    text = text_of(value)
    return text if len(text) <= JUNIT_TEXT else text[:JUNIT_TEXT] + "…"


def _xml_safe(text: str) -> str:
    # XML 1.0 cannot hold most control characters even escaped; a model may emit them
    return "".join(c for c in text if c in "\t\n\r" or ord(c) >= 0x20)


def write_report(path: Path, text: str) -> None:
    """``text`` written to ``path`` (its folder made), as UTF-8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def json_text(run: TestRun) -> str:
    return redact(json.dumps(json_report(run), ensure_ascii=False, indent=2, default=str)) + "\n"
