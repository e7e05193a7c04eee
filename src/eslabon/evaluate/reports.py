"""What ``eslabon test`` shows and writes: the terminal matrix, ``--json``, ``--junit``,
``--html``, and ``--compare`` (what changed since a previous ``--json`` report).

Every text a report holds passes through :func:`eslabon.trust.redaction.redact`: a model's
answer, an error message or a check's reason may quote a key (a provider echoing a header, a
chain that put one in a prompt), and reports are files people attach to CI runs and share.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eslabon.evaluate.assertions import text_of
from eslabon.evaluate.runner import Attempt, CaseResult, ChainRun, ModelRun, TestRun
from eslabon.trust.redaction import redact

__all__ = [
    "compare_reports",
    "html_report",
    "json_report",
    "json_text",
    "junit_report",
    "load_report",
    "print_report",
    "write_report",
]

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


def print_report(run: TestRun, console: Any, comparison: dict[str, Any] | None = None) -> None:
    """The matrix of each chain (cases × models), each model's figures, then the failures;
    then, given a :func:`compare_reports` result, what changed since the previous run."""
    from rich.text import Text

    for chain in run.chains:
        if chain.models and chain.models[0].results:
            _print_chain(chain, console)
    _print_failures(run, console)
    for file in run.skipped:
        console.print(Text(redact(f"skipped {file}: it has no tests"), style="dim"))
    if comparison is not None:
        print_comparison(comparison, console)
    passed, total = run.counts()
    line = f"{passed}/{total} cases passed in {run.elapsed_s:.1f} s"
    console.print(Text(line, style="bold green" if passed == total else "bold red"))


def _print_chain(chain: ChainRun, console: Any) -> None:
    """A chain's matrix, its models' figures, and what their judges used."""
    from rich.table import Table
    from rich.text import Text

    from eslabon.observe.record import cost_text

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
            redact(model.label), Text(f"{model.passed}/{total}", style=style), tokens, cost, latency
        )
    console.print(figures)
    for model in chain.models:
        if (judged := model.judging()) is not None:
            calls = f"{judged['calls']} judge call{'s' if judged['calls'] != 1 else ''}"
            line = f"{model.label}: {calls} · {judged['tokens']:,} tokens · "
            console.print(Text(redact(line + cost_text(judged["cost"])), style="dim"))
    console.print()


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
def json_report(run: TestRun, comparison: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything: each chain, model, case and run, with outputs, verdicts and stats (and,
    given one, the :func:`compare_reports` result under ``comparison``). ``--html`` is drawn
    from this same structure."""
    passed, total = run.counts()
    data: dict[str, Any] = {
        "passed": run.passed,
        "cases": {"passed": passed, "total": total},
        "elapsed_s": round(run.elapsed_s, 3),
        "skipped": list(run.skipped),
        "chains": [
            {
                "file": chain.file,
                "path": chain.path,
                "name": chain.name,
                "models": [_model_data(m) for m in chain.models],
            }
            for chain in run.chains
        ],
    }
    if comparison is not None:
        data["comparison"] = comparison
    return data


def _model_data(model: ModelRun) -> dict[str, Any]:
    return {
        "model": model.label,
        "passed": model.passed,
        "total": len(model.results),
        "tokens": model.tokens(),
        "cost": model.cost(),
        "median_latency_ms": model.median_latency_ms(),
        "judging": model.judging(),
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


def check_report_path(path: Path, option: str) -> None:
    """That a report can be written at ``path`` — checked before any model is called, so a
    typo does not cost the whole run: not a folder, and the nearest existing folder above it
    writable. Raises :class:`~eslabon.errors.UserError` naming ``option``."""
    import os

    from eslabon.errors import UserError

    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder\n    fix: give a file name")
    above = path.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise UserError(f"{option} {path}: {above} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write in {above} (permission denied)")
    if path.is_file() and not os.access(path, os.W_OK):
        raise UserError(f"{option} {path}: the file is read-only")


def write_report(path: Path, text: str, option: str = "report") -> None:
    """``text`` written to ``path`` (its folder made), as UTF-8; a
    :class:`~eslabon.errors.UserError` saying why when it cannot be."""
    from eslabon.errors import UserError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise UserError(f"{option} {path}: cannot write it: {why}") from None


def json_text(run: TestRun | dict[str, Any], comparison: dict[str, Any] | None = None) -> str:
    """The ``--json`` report, redacted: of a run, or of :func:`json_report`'s data."""
    data = run if isinstance(run, dict) else json_report(run, comparison)
    return redact(json.dumps(data, ensure_ascii=False, indent=2, default=str)) + "\n"


# -- --compare ------------------------------------------------------------------------------------
MAX_REPORT_BYTES = 200 * 1024 * 1024  # a previous --json report read by --compare
_REPORT_FIX = "    fix: give a file written by `eslabon test ... --json OUT` (docs/testing.md)"


def load_report(path: Path) -> dict[str, Any]:
    """A previous ``--json`` report, for ``--compare``; anything else is a :class:`UserError`
    saying what is wrong with it. Read before any model is called."""
    from eslabon.errors import UserError

    where = f"--compare {path}"
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            raise UserError(f"{where}: larger than {MAX_REPORT_BYTES // 2**20} MB\n{_REPORT_FIX}")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{where}: no such file\n{_REPORT_FIX}") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UserError(f"{where}: cannot read it: {why}\n{_REPORT_FIX}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{where}: not JSON ({exc})\n{_REPORT_FIX}") from None
    problem = report_problem(data)
    if problem:
        raise UserError(f"{where}: not an `eslabon test --json` report: {problem}\n{_REPORT_FIX}")
    report: dict[str, Any] = data
    return report


def report_problem(data: Any) -> str:
    """What makes ``data`` not a ``--json`` report ("" when it is one)."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    if not isinstance(data.get("chains"), list):
        return "no 'chains' list"
    for i, chain in enumerate(data["chains"]):
        at = f"chains[{i}]"
        if not isinstance(chain, dict) or not isinstance(chain.get("file"), str):
            return f"{at} has no 'file'"
        if not isinstance(chain.get("models"), list):
            return f"{at} has no 'models' list"
        for j, model in enumerate(chain["models"]):
            problem = _model_problem(model, f"{at}.models[{j}]")
            if problem:
                return problem
    return ""


def _model_problem(model: Any, at: str) -> str:
    if not isinstance(model, dict) or not isinstance(model.get("model"), str):
        return f"{at} has no 'model'"
    if not isinstance(model.get("cases"), list):
        return f"{at} has no 'cases' list"
    for k, case in enumerate(model["cases"]):
        if not isinstance(case, dict) or not isinstance(case.get("name"), str):
            return f"{at}.cases[{k}] has no 'name'"
        if not isinstance(case.get("passed"), bool):
            return f"{at}.cases[{k}] has no 'passed' true/false"
    return ""


def _file_key(previous: dict[str, Any], current: dict[str, Any]) -> str:
    """How chain files are matched between reports: by resolved ``path`` when both have it and
    they name some file in common (the same file, from whatever folder each ran), else as
    shown (``file``: a report from another machine or checkout has other paths)."""

    def paths(report: dict[str, Any]) -> set[str] | None:
        found = [c.get("path") for c in report["chains"]]
        return {p for p in found if isinstance(p, str)} if all(found) else None

    before, after = paths(previous), paths(current)
    return "path" if before is not None and after is not None and before & after else "file"


def trimmed(report: dict[str, Any], paths: list[str], match: str | None) -> dict[str, Any]:
    """``report`` cut to the chain files at ``paths`` and, given a ``--filter`` text, to the
    cases whose name contains it: what a run of those files with that filter tests."""
    wanted = set(paths)
    chains = []
    for chain in report["chains"]:
        if chain.get("path") not in wanted:
            continue
        models = [
            {
                **model,
                "cases": [
                    c
                    for c in model["cases"]
                    if match is None or match.casefold() in c["name"].casefold()
                ],
            }
            for model in chain["models"]
        ]
        chains.append({**chain, "models": models})
    return {**report, "chains": chains}


def _outcomes(
    report: dict[str, Any], key: str = "file"
) -> dict[tuple[str, str, str], tuple[str, bool]]:
    """(chain file, case, model) → (chain name, passed)."""
    return {
        (chain[key], case["name"], model["model"]): (
            str(chain.get("name") or chain["file"]),
            case["passed"],
        )
        for chain in report["chains"]
        for model in chain["models"]
        for case in model["cases"]
    }


def _change(before: Any, after: Any) -> dict[str, Any]:
    def number(value: Any) -> float | None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return value if ok else None

    b, a = number(before), number(after)
    return {"before": b, "after": a, "change": None if a is None or b is None else a - b}


def compare_reports(
    previous: dict[str, Any], current: dict[str, Any], source: str = ""
) -> dict[str, Any]:
    """What changed between two ``--json`` reports: for each (chain file, case, model) in
    both, pass → fail (``broke``) and fail → pass (``fixed``); those only in the current one
    (``new``) or only in the previous one (``removed``); and for each (chain, model) in both,
    the change in total tokens, cost and median latency."""
    by = _file_key(previous, current)
    before, after = _outcomes(previous, by), _outcomes(current, by)
    shown = {c[by]: c["file"] for r in (previous, current) for c in r["chains"]}

    def entry(key: tuple[str, str, str], chain: str) -> dict[str, str]:
        return {"file": shown[key[0]], "chain": chain, "case": key[1], "model": key[2]}

    broke, fixed, new, removed = [], [], [], []
    for key, (chain, passed) in after.items():
        if key not in before:
            new.append(entry(key, chain))
        elif before[key][1] and not passed:
            broke.append(entry(key, chain))
        elif passed and not before[key][1]:
            fixed.append(entry(key, chain))
    removed = [entry(key, chain) for key, (chain, _) in before.items() if key not in after]
    old_models = {
        (chain[by], model["model"]): model
        for chain in previous["chains"]
        for model in chain["models"]
    }
    models = []
    for chain in current["chains"]:
        for model in chain["models"]:
            old = old_models.get((chain[by], model["model"]))
            if old is None:
                continue
            models.append(
                {
                    "file": chain["file"],
                    "chain": chain["name"],
                    "model": model["model"],
                    **{
                        k: _change(old.get(k), model.get(k))
                        for k in ("tokens", "cost", "median_latency_ms")
                    },
                }
            )
    return {
        "previous": source,
        "broke": broke,
        "fixed": fixed,
        "new": new,
        "removed": removed,
        "models": models,
    }


def _money(value: float | None) -> str:
    from eslabon.observe.record import cost_text

    return cost_text(value) if value is None or value >= 0 else "-" + cost_text(-value)


def _moved(figure: dict[str, Any], kind: str) -> str:
    """``14 → 20 (+6)`` for tokens, cost or latency; ``?`` for an unknown side."""

    def shown(value: float | None, signed: bool = False) -> str:
        if value is None:
            return "?"
        if kind != "cost":
            value = round(value) or 0  # no "-0 ms" for a change of -0.3 ms
        sign = "+" if signed and value >= 0 else ""
        if kind == "tokens":
            return f"{sign}{value:,.0f}"
        if kind == "cost":
            return ("+" if signed and value >= 0 else "") + _money(value)
        return f"{sign}{value:,.0f} ms"

    text = f"{shown(figure['before'])} → {shown(figure['after'])}"
    if figure["change"] is not None:
        text += f" ({shown(figure['change'], signed=True)})"
    return text


def _where(item: dict[str, Any], many: bool) -> str:
    return f"{item['case']} · {item['model']}" + (f" · {item['file']}" if many else "")


def _many_files(comparison: dict[str, Any]) -> bool:
    lists = ("broke", "fixed", "new", "removed", "models")
    return len({i["file"] for k in lists for i in comparison[k]}) > 1


def print_comparison(comparison: dict[str, Any], console: Any) -> None:
    """``--compare`` in the terminal: what broke, what was fixed, new and removed cases, and
    how each model's tokens, cost and median latency moved."""
    from rich.table import Table
    from rich.text import Text

    console.print(Text(redact(f"compared with {comparison['previous']}"), style="bold"))
    many = _many_files(comparison)
    groups = (
        ("broke", "broke (pass → fail)", "✗", "red"),
        ("fixed", "fixed (fail → pass)", "✓", "green"),
        ("new", "new", "+", "cyan"),
        ("removed", "removed", "-", "dim"),
    )
    for key, title, mark, style in groups:
        if comparison[key]:
            console.print(Text(f"{title}: {len(comparison[key])}", style=style))
            for item in comparison[key]:
                console.print(Text(redact(f"  {mark} {_where(item, many)}"), style=style))
    if not any(comparison[k] for k, *_ in groups):
        console.print(Text("no case changed", style="dim"))
    if comparison["models"]:
        table = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
        for name in ("model", "tokens", "cost", "median latency"):
            table.add_column(name, justify="left" if name == "model" else "right")
        for item in comparison["models"]:
            label = item["model"] + (f" · {item['chain']}" if many else "")
            table.add_row(
                redact(label),
                _moved(item["tokens"], "tokens"),
                _moved(item["cost"], "cost"),
                _moved(item["median_latency_ms"], "latency"),
            )
        console.print(table)
    console.print()


# -- --html ---------------------------------------------------------------------------------------
HTML_TEXT = 20_000  # characters of one output on the page
HTML_SHORT = 400  # characters of an input, an expected value or a check's 'got'
_PALETTE = ("#4f6bed", "#e8743b", "#19a979", "#945ecf", "#13a4b4", "#bf399e", "#6c8893", "#ee6868")
_CSS = """
:root { --ok: #1a7f37; --bad: #cf222e; --line: #d0d7de; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
  padding: 1.5rem; max-width: 1400px; color: #1f2328; background: #fff; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; } h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; }
h2 small { color: #656d76; font-weight: normal; font-size: .85rem; }
.summary.passed { color: var(--ok); } .summary.failed { color: var(--bad); }
.summary { font-weight: 600; margin: 0 0 1rem; }
table.grid { border-collapse: collapse; width: 100%; table-layout: fixed; }
.grid th, .grid td { border: 1px solid var(--line); padding: .5rem; vertical-align: top;
  text-align: left; }
.grid thead th { background: var(--soft); }
.grid th.case { width: 14rem; } .grid th.case .inputs { font-weight: normal; color: #656d76;
  font-size: .8rem; white-space: pre-wrap; word-break: break-word; margin-top: .25rem; }
.grid .model .tally { display: block; font-weight: normal; font-size: .8rem; color: #656d76; }
td.cell.passed { background: #f0fff4; } td.cell.failed { background: #fff5f5; }
.run + .run { border-top: 1px dashed var(--line); margin-top: .5rem; padding-top: .5rem; }
.mark { font-weight: 700; } .run.passed .mark { color: var(--ok); }
.run.failed .mark { color: var(--bad); }
pre.output { white-space: pre-wrap; word-break: break-word; margin: .25rem 0; padding: .4rem;
  background: #fff; border: 1px solid var(--line); border-radius: 4px; max-height: 24rem;
  overflow: auto; font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; }
.error { color: var(--bad); font-weight: 600; white-space: pre-wrap; word-break: break-word; }
ul.checks { list-style: none; margin: .25rem 0; padding: 0; font-size: .85rem; }
.check { padding: .15rem .35rem; border-radius: 3px; margin: .1rem 0; word-break: break-word; }
.check.passed { color: #57606a; }
.check.passed .sign { color: var(--ok); }
.check.failed { background: #ffebe9; border-left: 3px solid var(--bad); color: #82071e; }
.check.failed .sign { font-weight: 700; }
.check .kind { font-weight: 600; } .check .why { font-style: italic; }
.stats { color: #656d76; font-size: .8rem; }
.chart { margin: .5rem 0 1rem; } .chart svg { max-width: 100%; height: auto; }
.comparison ul { margin: .25rem 0 .75rem; } .broke { color: var(--bad); }
.fixed { color: var(--ok); }
table.figures { border-collapse: collapse; } .figures td, .figures th { padding: .2rem .8rem;
  border-bottom: 1px solid var(--line); text-align: right; }
.figures td:first-child, .figures th:first-child { text-align: left; }
"""


def _h(value: Any, limit: int | None = None) -> str:
    """Any value as page text: as text (JSON for data), redacted, cut, HTML-escaped."""
    import html

    text = redact(text_of(value))
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return html.escape(text, quote=True)


def html_report(data: dict[str, Any]) -> str:
    """A self-contained page (inline CSS and SVG, no script, nothing fetched) from
    :func:`json_report`'s data: per chain, a chart of each model's tokens, cost and median
    latency, then the cases × models grid with every run's output and checks (failed ones
    highlighted); and what changed, when the data holds a comparison. Every text is redacted
    and escaped: model outputs are untrusted."""
    cases = data.get("cases") or {}
    passed, total = cases.get("passed", 0), cases.get("total", 0)
    verdict = "passed" if data.get("passed") else "failed"
    title = f"eslabon test: {passed}/{total} cases passed"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # nothing on the page may load or run anything: outputs are untrusted
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">",
        f"<title>{_h(title)}</title><style>{_CSS}</style></head><body>",
        "<header><h1>eslabon test</h1>",
        f'<p class="summary {verdict}">{_h(title[len("eslabon test: ") :])}'
        f" in {float(data.get('elapsed_s') or 0):.1f} s</p></header>",
    ]
    if data.get("comparison"):
        parts.append(_html_comparison(data["comparison"]))
    for n, chain in enumerate(data.get("chains") or []):
        parts.append(_html_chain(n, chain))
    for file in data.get("skipped") or []:
        parts.append(f'<p class="skipped">skipped {_h(file)}: it has no tests</p>')
    parts.append("</body></html>\n")
    return redact("\n".join(parts))


def _html_chain(n: int, chain: dict[str, Any]) -> str:
    models = chain.get("models") or []
    parts = [
        f'<section class="chain" id="chain-{n}">',
        f"<h2>{_h(chain.get('name'))} <small>{_h(chain.get('file'))}</small></h2>",
    ]
    if not models or not models[0].get("cases"):
        parts.append("<p>no cases ran</p></section>")
        return "\n".join(parts)
    parts.append(f'<div class="chart">{_chart(models)}</div>')
    parts.append('<table class="grid"><thead><tr><th class="case">case</th>')
    for model in models:
        tally = f"{model.get('passed', 0)}/{model.get('total', 0)} passed"
        parts.append(
            f'<th class="model">{_h(model["model"])}<span class="tally">{tally}</span></th>'
        )
    parts.append("</tr></thead><tbody>")
    for i, first in enumerate(models[0]["cases"]):
        inputs = first.get("inputs") or {}
        shown = "\n".join(f"{k}: {text_of(v)}" for k, v in inputs.items())
        parts.append(
            f'<tr class="case"><th class="case" scope="row">{_h(first["name"])}'
            f'<div class="inputs">{_h(shown, HTML_SHORT)}</div></th>'
        )
        for model in models:
            cases = model.get("cases") or []
            parts.append(_html_cell(cases[i] if i < len(cases) else None, model["model"]))
        parts.append("</tr>")
    parts.append("</tbody></table></section>")
    return "\n".join(parts)


def _html_cell(case: dict[str, Any] | None, model: str) -> str:
    if case is None:
        return '<td class="cell missing">-</td>'
    state = "passed" if case.get("passed") else "failed"
    runs = case.get("runs") or []
    parts = [f'<td class="cell {state}" data-model="{_h(model)}" data-case="{_h(case["name"])}">']
    for k, run in enumerate(runs, 1):
        ok = bool(run.get("passed"))
        mark = ("✓" if ok else "✗") + (f" run {k}" if len(runs) > 1 else "")
        parts.append(f'<div class="run {"passed" if ok else "failed"}">')
        parts.append(f'<div class="mark">{mark}</div>')
        error = run.get("error")
        if error:
            why = f"the run failed: {error.get('type')}: {error.get('message')}"
            parts.append(f'<div class="error">{_h(why, HTML_SHORT * 2)}</div>')
        else:
            parts.append(f'<pre class="output">{_h(run.get("output"), HTML_TEXT)}</pre>')
        checks = run.get("checks") or []
        if checks:
            parts.append('<ul class="checks">')
            for c in checks:
                parts.append(_html_check(c))
            parts.append("</ul>")
        parts.append(f'<div class="stats">{_h(_run_figures(run.get("stats") or {}))}</div>')
        parts.append("</div>")
    if len(runs) > 1:
        parts.append(f'<div class="mark">{sum(bool(r.get("passed")) for r in runs)}/{len(runs)}')
        parts.append("runs passed</div>")
    parts.append("</td>")
    return "".join(parts)


def _html_check(check: dict[str, Any]) -> str:
    ok = bool(check.get("passed"))
    text = f'<span class="kind">{_h(check.get("kind"))}</span>: {_h(check.get("expected"), 200)}'
    if not ok:
        if check.get("got") is not None:
            text += f" · got {_h(check.get('got'), HTML_SHORT)}"
        if check.get("reason"):
            text += f' · <span class="why">{_h(check.get("reason"), HTML_SHORT)}</span>'
    state, sign = ("passed", "✓") if ok else ("failed", "✗")
    return f'<li class="check {state}"><span class="sign">{sign}</span> {text}</li>'


def _run_figures(stats: dict[str, Any]) -> str:
    from eslabon.observe.record import cost_text

    usage = stats.get("usage") or {}
    tokens = usage.get("total_tokens") if isinstance(usage, dict) else None
    latency = stats.get("latency_ms")
    parts = [
        f"{tokens:,} tokens" if isinstance(tokens, int) else "tokens not reported",
        cost_text(stats.get("cost")),
        f"{latency:,.0f} ms" if isinstance(latency, int | float) else "",
    ]
    if stats.get("cached"):
        parts.append("cached")
    return " · ".join(p for p in parts if p)


def _chart(models: list[dict[str, Any]]) -> str:
    """Each model's total tokens, cost and median latency as horizontal bars (inline SVG),
    each measure scaled to its largest value; an unknown value is written, with no bar."""
    from eslabon.observe.record import cost_text

    label_w, panel_w, bar_w, row_h, top = 170, 250, 150, 24, 28
    width = label_w + 3 * panel_w
    height = top + row_h * len(models) + 6

    def count(value: float) -> str:
        return f"{value:,.0f}"

    def millis(value: float) -> str:
        return f"{value:,.0f} ms"

    measures: tuple[tuple[str, str, Callable[[float], str]], ...] = (
        ("tokens", "total tokens", count),
        ("cost", "cost (USD)", cost_text),
        ("median_latency_ms", "median latency", millis),
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="figures-chart" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="system-ui, sans-serif" font-size="12">',
        "<title>tokens, cost and median latency per model</title>",
    ]
    for m, (key, title, shown) in enumerate(measures):
        x0 = label_w + m * panel_w
        parts.append(f'<text x="{x0}" y="16" font-weight="600">{title}</text>')
        values = [_number(model.get(key)) for model in models]
        largest = max((v for v in values if v is not None), default=0.0)
        for i, value in enumerate(values):
            y = top + i * row_h
            if value is None:
                unknown = "cost unknown" if key == "cost" else "not reported"
                parts.append(f'<text x="{x0}" y="{y + 14}" fill="#656d76">{unknown}</text>')
                continue
            w = bar_w * value / largest if largest > 0 else 0.0
            color = _PALETTE[i % len(_PALETTE)]
            parts.append(
                f'<rect class="bar" data-measure="{key}" x="{x0}" y="{y + 3}" '
                f'width="{max(w, 1.5):.1f}" height="{row_h - 8}" fill="{color}" rx="2"/>'
            )
            parts.append(f'<text x="{x0 + w + 5:.1f}" y="{y + 15}">{_h(shown(value))}</text>')
    for i, model in enumerate(models):
        y = top + i * row_h
        color = _PALETTE[i % len(_PALETTE)]
        parts.append(f'<rect x="0" y="{y + 6}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="16" y="{y + 15}">{_h(model.get("model"), 24)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _html_comparison(comparison: dict[str, Any]) -> str:
    many = _many_files(comparison)
    parts = [
        '<section class="comparison" id="comparison">',
        f"<h2>compared with <small>{_h(comparison.get('previous'))}</small></h2>",
    ]
    groups = (
        ("broke", "broke (pass → fail)"),
        ("fixed", "fixed (fail → pass)"),
        ("new", "new"),
        ("removed", "removed"),
    )
    for key, title in groups:
        items = comparison.get(key) or []
        if items:
            parts.append(f'<h3 class="{key}">{title}: {len(items)}</h3><ul class="{key}">')
            parts.extend(f"<li>{_h(_where(item, many))}</li>" for item in items)
            parts.append("</ul>")
    if not any(comparison.get(k) for k, _ in groups):
        parts.append("<p>no case changed</p>")
    if comparison.get("models"):
        parts.append(
            '<table class="figures"><thead><tr><th>model</th><th>tokens</th><th>cost</th>'
            "<th>median latency</th></tr></thead><tbody>"
        )
        for item in comparison["models"]:
            label = item["model"] + (f" · {item['chain']}" if many else "")
            parts.append(
                f"<tr><td>{_h(label)}</td><td>{_h(_moved(item['tokens'], 'tokens'))}</td>"
                f"<td>{_h(_moved(item['cost'], 'cost'))}</td>"
                f"<td>{_h(_moved(item['median_latency_ms'], 'latency'))}</td></tr>"
            )
        parts.append("</tbody></table>")
    parts.append("</section>")
    return "\n".join(parts)
