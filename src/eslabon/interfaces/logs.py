"""``eslabon logs``: the run log — the newest runs, a search, one run with every step, totals.

The log itself is :mod:`eslabon.observe.runlog` (docs/observability.md, "The run log"). This
module imports typer only: cli.py registers it on every start, and ``eslabon --help`` stays
fast. Its commands sit behind the command line's one error boundary, looked up when a command
runs (cli.py imports this module while cli.py itself is being imported).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec

import typer

if TYPE_CHECKING:
    from datetime import datetime

    from eslabon.observe.runlog import RunLog

__all__ = ["app"]

app = typer.Typer(
    name="logs",
    help="The run log of eslabon run, chat and batch: the newest runs (-q searches their text);"
    " show ID, stats, path (docs/observability.md).",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_P = ParamSpec("_P")


def _guarded(command: Callable[_P, None]) -> Callable[_P, None]:
    """``command`` behind ``eslabon``'s one error boundary (``cli._reported``): one clear
    message and an exit code, never a traceback."""

    @functools.wraps(command)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> None:
        from eslabon.interfaces.cli import _reported

        _reported(command)(*args, **kwargs)

    return run


SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since", help="Only runs since then: 30m, 24h, 7d, 2w back from now, or a date."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _moment(text: str | None, option: str) -> datetime | None:
    """``--since``/``--until``: a period back from now (``7d``) or an ISO date or time (local
    time unless it says its offset)."""
    if text is None:
        return None
    from datetime import UTC, datetime, timedelta

    from eslabon.errors import UserError

    period = text.strip().lower()
    if len(period) > 1 and period[-1] in _UNITS and period[:-1].isdigit():
        try:
            return datetime.now(UTC) - timedelta(seconds=int(period[:-1]) * _UNITS[period[-1]])
        except OverflowError:  # before year 1: every run
            return datetime.min.replace(tzinfo=UTC)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(
            f"{option} '{text}' is neither a period nor a date\n"
            "    fix: a period back from now (30m, 24h, 7d, 2w) or a date such as 2026-11-01"
        ) from None
    return when if when.tzinfo is not None else when.astimezone()


def _log() -> RunLog:
    from eslabon.observe.runlog import RunLog, log_path

    return RunLog(log_path())


def _reading(read: Callable[[], Any]) -> Any:
    """``read()`` with a log that cannot be read as the user's to fix (exit code 2)."""
    from eslabon.errors import UserError
    from eslabon.observe.runlog import LogUnavailable

    try:
        return read()
    except LogUnavailable as exc:
        raise UserError(str(exc)) from None


def _nothing_yet(log: RunLog) -> str:
    from eslabon.observe.runlog import logging_enabled

    if not logging_enabled():
        return f"no runs logged yet in {log.path}: logging is off ([logs] enabled = false)"
    if not log.path.exists():
        return f"no runs logged yet (the log {log.path} begins with the next eslabon run)"
    return f"no runs logged yet in {log.path}"


def _print_json(data: Any) -> None:
    from eslabon.observe.runlog import redacted

    typer.echo(json.dumps(redacted(data), ensure_ascii=False, indent=2))


@app.callback(invoke_without_command=True)
@_guarded
def recent(
    ctx: typer.Context,
    count: Annotated[
        int, typer.Option("-n", "--count", min=1, max=1_000_000, help="How many runs.")
    ] = 20,
    query: Annotated[
        str | None,
        typer.Option("-q", "--query", help="Only runs whose text has these words (any accents)."),
    ] = None,
    chain: Annotated[str | None, typer.Option("--chain", help="Only this chain's runs.")] = None,
    since: SinceOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the newest runs, newest first; -q searches their inputs, outputs and prompts."""
    if ctx.invoked_subcommand is not None:
        return
    log = _log()
    start = _moment(since, "--since")
    runs = _reading(lambda: log.runs(limit=count, query=query, chain=chain, since=start))
    if as_json:
        _print_json(runs)
        return
    if not runs:
        filtered = query or chain or since
        typer.echo("no runs match" if filtered and log.path.exists() else _nothing_yet(log))
        return
    short = _reading(lambda: log.short_ids([run["id"] for run in runs]))
    _print_table(runs, short)


_COLUMNS = ("id", "started", "kind", "chain", "model", "tokens", "time", "cost")
_MIN_OUTPUT = 16  # on a terminal with less room left, a run's output goes on a line of its own


def _print_table(runs: list[dict[str, Any]], short: dict[str, str]) -> None:
    """One line per run, in columns as wide as their widest cell, its output last. On a
    terminal the output is cut to the line (on the next line when too little is left);
    piped, every line is whole (for grep)."""
    from rich.cells import cell_len, set_cell_size
    from rich.text import Text

    from eslabon.interfaces.cli import _console
    from eslabon.observe.runlog import redacted

    runs = redacted(runs)
    rows = [
        (
            short.get(run["id"], run["id"]),
            _local(run["started"], seconds=False),
            run["kind"] + (f" {run['row']}" if run.get("row") is not None else ""),
            run.get("chain") or "-",
            run.get("model") or "-",
            _tokens(run.get("usage")),
            _duration(run.get("latency_ms")),
            _money(run.get("cost"), 1 if run.get("cost") is None else 0),
        )
        for run in runs
    ]
    widths = [max(cell_len(row[n]) for row in [_COLUMNS, *rows]) for n in range(len(_COLUMNS))]

    def line(cells: tuple[str, ...]) -> str:
        padded = [
            " " * (w - cell_len(c)) + c if name == "cost" else set_cell_size(c, w)
            for name, c, w in zip(_COLUMNS, cells, widths, strict=True)
        ]
        return "  ".join(padded)

    console = _console()
    terminal = console.is_terminal
    fixed = sum(widths) + 2 * len(widths)
    below = terminal and console.width - fixed < _MIN_OUTPUT
    cut = {"no_wrap": True, "overflow": "ellipsis", "crop": True} if terminal else {}
    console.print(Text(line(_COLUMNS) + ("" if below else "  output"), style="bold"), **cut)
    for run, cells in zip(runs, rows, strict=True):
        output = Text(_preview(run), style="red" if run.get("error") else "")
        if below:
            console.print(Text(line(cells)), **cut)  # model text is data, never markup
            console.print(Text(" " * (widths[0] + 2)) + output, **cut)
        else:
            console.print(Text(line(cells) + "  ") + output, **cut)


def _preview(run: dict[str, Any]) -> str:
    """A run's output (or error) on one line."""
    if run.get("error"):
        return "error: " + " ".join(str(run["error"]).split())
    output = run.get("output")
    text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
    return " ".join(text.split())


def _local(started: str, seconds: bool = True) -> str:
    """A logged UTC time in the user's local time."""
    from datetime import datetime

    try:
        when = datetime.fromisoformat(started).astimezone()
    except ValueError:
        return started
    return when.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def _tokens(usage: Any) -> str:
    if not isinstance(usage, dict) or usage.get("input_tokens") is None:
        return "-"
    return f"{usage.get('input_tokens')} → {usage.get('output_tokens', '?')}"


def _duration(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return "-"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def _money(cost: Any, unknown: int = 0) -> str:
    """A cost in USD (cents, or two significant digits below a dollar's hundredth); an unknown
    price is said, never shown as $0."""
    if cost is None:
        return "unknown" if unknown else "-"
    from eslabon.observe.record import cost_text  # as `eslabon run`'s summary line says it

    return cost_text(cost) + (f" + {unknown} unknown" if unknown else "")


@app.command()
@_guarded
def show(
    run_id: Annotated[
        str | None,
        typer.Argument(help="A run's id, or its first characters. Default: the newest run."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """One run with every step: model, messages, output, usage, latency, cost, error."""
    from eslabon.errors import UserError

    log = _log()
    if run_id is None:
        newest = _reading(lambda: log.runs(limit=1))
        if not newest:
            typer.echo(_nothing_yet(log))
            return
        run_id = newest[0]["id"]
    key = run_id
    run = _reading(lambda: log.get(key))
    if run is None:
        raise UserError(
            f"no run '{key}' in the log {log.path}\n"
            "    fix: `eslabon logs` lists the runs with their ids"
        )
    if as_json:
        _print_json(run)
        return
    _print_run(run)


def _print_run(run: dict[str, Any]) -> None:
    from eslabon.interfaces.cli import _console, _header
    from eslabon.observe.runlog import redacted

    run = redacted(run)
    console = _console()
    where = f" {run['row']}" if run.get("row") is not None else ""
    session = f" · session {run['session']}" if run.get("session") else ""
    console.print(f"run {run['id']} · {_local(run['started'])} · {run['kind']}{where}{session}")
    chain = run.get("chain") or "-"
    if run.get("file"):
        chain += f"  ({run['file']}" + (
            f", sha256 {run['file_hash'][:12]})" if run.get("file_hash") else ")"
        )
    console.print(f"chain:  {chain}")
    console.print(f"model:  {run.get('model') or '-'}")
    for name, value in (run.get("inputs") or {}).items():
        console.print(f"input {name}: {_shown(value)}")
    console.print("total:  " + _figures(run))
    for step in run.get("steps") or []:
        console.print()
        _header(console, f"step {step.get('id') or '?'}")
        console.print(f"model:  {step.get('model') or '-'}")
        console.print(_figures(step))
        for message in step.get("messages") or []:
            role = message.get("role", "?") if isinstance(message, dict) else "?"
            content = message.get("content") if isinstance(message, dict) else message
            console.print(f"[{role}]", style="dim")
            console.print(_shown(content))
        if step.get("output") is not None:
            console.print("[output]", style="dim")
            console.print(_shown(step["output"]))
        if step.get("error"):
            console.print(f"error: {step['error']}", style="red")
    console.print()
    _header(console, "output")
    if run.get("output") is not None:
        console.print(_shown(run["output"]))
    if run.get("error"):
        console.print(f"error: {run['error']}", style="red")


def _figures(item: dict[str, Any]) -> str:
    """Tokens, time, time to the first token, calls and cost, as one line."""
    usage = item.get("usage")
    parts = [f"{_tokens(usage)} tokens" if isinstance(usage, dict) else "tokens unknown"]
    parts.append(_duration(item.get("latency_ms")))
    if isinstance(item.get("ttft_ms"), int | float):
        parts.append(f"first token {_duration(item['ttft_ms'])}")
    calls, attempts = item.get("calls"), item.get("attempts")
    if isinstance(calls, int) and calls != 1:
        parts.append(f"{calls} calls")
    if isinstance(attempts, int) and attempts > 1:
        parts.append(f"{attempts} attempts")
    cost = item.get("cost")
    parts.append("cost unknown" if cost is None else _money(cost))
    return " · ".join(parts)


def _shown(value: Any) -> str:
    """Logged text as it was; content blocks by their text; other data as indented JSON."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and all(isinstance(b, dict) and "text" in b for b in value):
        return "\n".join(str(b["text"]) for b in value).strip()
    return json.dumps(value, ensure_ascii=False, indent=2)


@app.command()
@_guarded
def stats(
    since: SinceOption = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Only runs before then (as --since).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Tokens and cost per model and per chain, for all runs or a period."""
    log = _log()
    start, end = _moment(since, "--since"), _moment(until, "--until")
    totals = _reading(lambda: log.stats(since=start, until=end))
    if as_json:
        _print_json(totals)
        return
    if not totals["total"]["runs"]:
        typer.echo("no runs in that period" if log.path.exists() else _nothing_yet(log))
        return
    _print_stats(totals, since, until)


def _print_stats(totals: dict[str, Any], since: str | None, until: str | None) -> None:
    from rich.table import Table
    from rich.text import Text

    from eslabon.interfaces.cli import _console
    from eslabon.observe.runlog import redacted

    totals = redacted(totals)
    console = _console()
    if not console.is_terminal:  # piped: whole lines, never cut to 80 columns with "…"
        console.width = 10_000
    period = " ".join(p for p in (since and f"since {since}", until and f"until {until}") if p)
    total = totals["total"]
    console.print(
        f"{total['runs']} run{'s' if total['runs'] != 1 else ''}"
        f"{' ' + period if period else ''} · {total['errors']} failed · "
        f"{total['input_tokens']:,} → {total['output_tokens']:,} tokens · "
        f"{_money(total['cost'], total['unknown_cost'])}"
    )
    for what, rows, counts in (
        ("model", totals["models"], ("runs", "calls", "errors")),
        ("chain", totals["chains"], ("runs", "errors")),
    ):
        table = Table(box=None, pad_edge=False, title_justify="left")
        table.add_column(what, no_wrap=True)
        for name in (*counts, "tokens in", "tokens out"):
            table.add_column(name, justify="right", no_wrap=True)
        table.add_column("cost", justify="right", no_wrap=True)
        for row in rows:
            table.add_row(
                Text(str(row[what] if row[what] is not None else "(unknown)")),
                *(str(row[c]) for c in counts),
                f"{row['input_tokens']:,}",
                f"{row['output_tokens']:,}",
                _money(row["cost"], row["unknown_cost"]),
            )
        console.print()
        console.print(table)


@app.command()
@_guarded
def path() -> None:
    """Print where the run log is (ESLABON_LOGS, [logs] path, or .eslabon/logs.sqlite)."""
    from eslabon.observe.runlog import log_path, logging_enabled

    typer.echo(str(log_path()))
    if not logging_enabled():
        typer.echo("(logging is off: [logs] enabled = false in eslabon.toml)", err=True)
