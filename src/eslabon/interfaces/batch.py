"""Batch runs: one chain over many rows, concurrently, losing and duplicating nothing.

* Rows come from .jsonl, .csv or .parquet (extra ``parquet``); each row's fields are the chain's
  inputs, its ``id`` (or its 1-based row number) names it. An empty CSV cell, a JSON ``null``
  and a parquet null are a missing value: the input's default applies, and an input without one
  fails that row with an error naming the column.
* Rows run as asyncio tasks through ``chain.ainvoke``, at most ``concurrency`` at a time; an
  optional requests-per-second limit is LangChain's ``InMemoryRateLimiter`` on every model call.
  The chain's own retry and fallback settings apply to each row.
* Each finished row is one JSON line in the output, written as it finishes (a failed row too,
  with its error), with its ``stats`` (tokens, time, attempts, cost: see
  :mod:`eslabon.observe.meter`); the report adds them up. Given a run-log writer (the
  command line's), each row is a logged run.
* ``resume`` skips the ids the output already holds, after dropping a line a crash cut short;
  ``retry_failed`` also re-runs the rows recorded with an error.
* One run per output file at a time (a lock), and resume only touches a file of eslabon's own
  records (:mod:`eslabon.interfaces.outfile`).

Written by hand rather than on ``Runnable.abatch``: abatch returns only when every row is done
and keeps results in memory, while a batch of thousands must write each row as it finishes and
survive being killed half-way.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eslabon.errors import InputError, UserError
from eslabon.interfaces.outfile import LineSink, finished_ids, output_lock, prepare_output
from eslabon.trust.redaction import redact

__all__ = [
    "BatchReport",
    "Rows",
    "arun_batch",
    "batch_output",
    "check_options",
    "read_rows",
    "run_batch",
    "run_row",
    "run_sync",
]

ROW_FORMATS = (".jsonl", ".csv", ".parquet")


@dataclass
class BatchReport:
    """What a batch did: rows run now, how many failed, how many a resume skipped."""

    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)  # error type -> count
    stats: dict[str, Any] | None = None  # the rows' usage, calls and cost, added up
    unlogged: str | None = None  # why rows could not be written to the run log, if so

    def count(self, record: dict[str, Any]) -> None:
        """A finished row's record, counted: done or failed (by error type), and its stats."""
        error = record.get("error")
        if error is None:
            self.done += 1
        else:
            self.failed += 1
            kind = str(error.get("type", "Error")) if isinstance(error, dict) else "Error"
            self.errors[kind] = self.errors.get(kind, 0) + 1
        if isinstance(record.get("stats"), dict):
            self.add(record["stats"])

    def add(self, stats: dict[str, Any]) -> None:
        from eslabon.observe.meter import add_stats

        self.stats = stats if self.stats is None else add_stats(self.stats, stats)

    @property
    def rate(self) -> float:
        return (self.done + self.failed) / self.elapsed_s if self.elapsed_s else 0.0

    def summary(self) -> str:
        parts = [f"{self.done} done", f"{self.failed} failed"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped (already in the output)")
        line = f"{', '.join(parts)} in {self.elapsed_s:.1f} s ({self.rate:.1f} rows/s)"
        if self.stats is not None:
            from eslabon.observe.record import cost_text, usage_text

            line += f" · {usage_text(self.stats)} · {cost_text(self.stats.get('cost'))}"
        if self.errors:
            line += "; errors: " + ", ".join(f"{k} ×{v}" for k, v in self.errors.items())
        return line


class Rows(list[dict[str, Any]]):
    """Rows read from ``source``, which a batch then refuses to write its results over."""

    source: Path | None = None


def read_rows(path: str | Path) -> Rows:
    """The rows of a .jsonl, .csv or .parquet file, each with an ``id`` (its own, or its row
    number from 1)."""
    path = Path(path)
    if path.suffix not in ROW_FORMATS:
        raise UserError(f"{path}: inputs must be {', '.join(ROW_FORMATS)} (got '{path.suffix}')")
    try:
        raw = list(_raw_rows(path))
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except OSError as exc:  # a folder, no permission
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows = Rows()
    rows.source = path
    csv_file = path.suffix == ".csv"
    for n, row in enumerate(raw, 1):
        if not isinstance(row, dict):
            raise UserError(f"{path}: row {n} is not an object with the chain's inputs")
        if csv_file:  # CSV cannot tell an empty text from a missing one: missing (a default)
            row = {k: None if v == "" else v for k, v in row.items()}
        rows.append({**row, "id": n if row.get("id") is None else row["id"]})
    ids = [str(r["id"]) for r in rows]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise UserError(f"{path}: the id '{dup}' appears more than once; ids must be unique")
    return rows


def _raw_rows(path: Path) -> Iterator[Any]:
    if path.suffix == ".jsonl":
        for n, line in enumerate(_text(path).split("\n"), 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise UserError(f"{path}:{n}: not a JSON line: {exc}") from None
    elif path.suffix == ".csv":
        yield from csv.DictReader(io.StringIO(_text(path), newline=""))
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            from eslabon.errors import MissingDependencyError

            raise MissingDependencyError("Reading .parquet inputs", "parquet", "pyarrow") from None
        yield from pq.read_table(path).to_pylist()


def _text(path: Path) -> str:
    # utf-8-sig: spreadsheets and Windows editors start UTF-8 files with a byte-order mark,
    # which would otherwise become part of the first column's name
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#04x}); "
            "save the file as UTF-8"
        ) from None


def _check_empty(chain: Any, row: dict[str, Any], inputs: list[str]) -> None:
    """Refuse a row whose empty cell (CSV) or null (JSONL, parquet) is an input with no
    default, naming the column; with a default, the chain uses it."""
    spec = chain.spec
    empty = [n for n in inputs if n in row and row[n] is None and spec.input_default(n) is None]
    if empty:
        names = ", ".join(f"'{n}'" for n in empty)
        raise InputError(
            f"row {row['id']}: column {names} is empty (or null), and the chain gives "
            f"{'it' if len(empty) == 1 else 'them'} no default\n    fix: fill it in, or give the "
            f'input a default in the chain file ({empty[0]}: {{description: ..., default: ""}} '
            "lets it be empty)"
        )


def _error_record(exc: BaseException) -> dict[str, str]:
    kind = type(exc).__name__
    return {"type": kind, "message": redact(str(exc)).strip()[:2000]}


async def arun_batch(
    chain: Any,
    rows: Iterable[dict[str, Any]],
    out: str | Path,
    *,
    concurrency: int = 8,
    rate: float | None = None,
    resume: bool = False,
    retry_failed: bool = False,
    on_row: Callable[[dict[str, Any], BatchReport], None] | None = None,
    log: Any = None,
    log_kind: str = "batch",
    prompts: bool = False,
) -> BatchReport:
    """Run ``chain`` over ``rows``, appending one JSON line per finished row to ``out``.

    ``rate`` caps model requests per second (all steps' calls count). ``on_row`` is called
    after each row is written (progress bars). ``out`` is locked while the batch runs: a second
    batch on it is refused (:mod:`eslabon.interfaces.outfile`). ``log``: a run-log writer
    (:class:`eslabon.observe.record.RunWriter`) each row is written to, or None; ``log_kind``:
    what the log calls those runs (``eslabon test`` logs its rows as ``test``). ``prompts``:
    each record also holds the prompt each step sent, as text (``prompts``: step id → text;
    ``eslabon test``'s ``received`` check reads them).
    """
    check_options(concurrency, rate)
    with batch_output(chain, rows, out, resume, retry_failed) as (todo, sink, report):
        if rate is not None:
            chain = chain.with_rate_limit(rate)
        logged = (log, log_kind) if log is not None else None
        await _run_rows(chain, todo, sink, concurrency, report, on_row, logged, prompts)
    return report


def check_options(concurrency: int, rate: float | None) -> None:
    """A batch's concurrency and rate, checked before anything runs."""
    if concurrency < 1:
        raise UserError("concurrency must be at least 1")
    if rate is not None and not _positive_finite(rate):
        # nan, inf or 0 would leave the rate limiter waiting forever
        raise UserError(f"rate must be a positive, finite number of requests per second: {rate!r}")


@contextmanager
def batch_output(
    chain: Any, rows: Iterable[dict[str, Any]], out: str | Path, resume: bool, retry_failed: bool
) -> Iterator[tuple[list[dict[str, Any]], LineSink, BatchReport]]:
    """OUT made ready and locked for one batch (whatever engine runs its rows): the rows still
    to run (``resume``: those OUT does not hold; ``retry_failed``: and those it holds failed),
    the sink their records go to, and the report that counts them."""
    protect = {
        "the chain file": getattr(getattr(chain, "spec", None), "source", None),
        "the inputs file": getattr(rows, "source", None),
    }
    target = prepare_output(Path(out), protect)
    with output_lock(target):
        if resume:
            LineSink(target).close()  # fail now, not after a rewrite, if OUT cannot be written
            done_ids = finished_ids(target, retry_failed)
        elif target.is_file() and target.stat().st_size:
            raise UserError(f"{out} exists; pass --resume to continue it (or remove it)")
        else:
            done_ids = set()
        rows = list(rows)
        todo = [r for r in rows if str(r["id"]) not in done_ids]
        report = BatchReport(total=len(rows), skipped=len(rows) - len(todo))
        sink = LineSink(target)
        try:
            yield todo, sink, report
        finally:
            sink.close()


def _positive_finite(rate: object) -> bool:
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        return False
    try:
        value = float(rate)
    except OverflowError:  # an int past float's range
        return False
    return math.isfinite(value) and value > 0


async def _run_rows(
    chain: Any,
    todo: list[dict[str, Any]],
    sink: LineSink,
    concurrency: int,
    report: BatchReport,
    on_row: Callable[[dict[str, Any], BatchReport], None] | None,
    log: tuple[Any, str] | None = None,
    prompts: bool = False,
) -> None:
    inputs_of = chain.spec.input_names()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for row in todo:
        queue.put_nowait(row)
    start = time.perf_counter()

    async def worker() -> None:
        while True:
            try:
                row = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            record = await run_row(chain, row, inputs_of, report, log, prompts)
            sink.write(record)
            report.elapsed_s = time.perf_counter() - start
            if on_row is not None:
                on_row(record, report)

    workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(todo)) or 1)]
    try:
        await asyncio.gather(*workers)
    finally:
        # one worker failing (OUT cannot be written) or the batch cancelled stops them all:
        # none may go on calling the model, or write, once the run has ended
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        report.elapsed_s = time.perf_counter() - start


async def run_row(
    chain: Any,
    row: dict[str, Any],
    inputs_of: list[str],
    report: BatchReport,
    log: tuple[Any, str] | None = None,
    prompts: bool = False,
) -> dict[str, Any]:
    """One row run: its OUT record (counted in ``report``; written to ``log`` if given)."""
    from eslabon.observe.meter import Meter
    from eslabon.running.structured import as_data

    inputs = {k: v for k, v in row.items() if k in inputs_of}
    began = time.perf_counter()
    record: dict[str, Any] = {"id": row["id"], "inputs": inputs}
    # the row's own meter: a failed row's attempts are counted too (they may have cost)
    meter = Meter(chain.prices, capture_messages=log is not None or prompts)
    result: dict[str, Any] | None = None
    error: Exception | None = None
    try:
        _check_empty(chain, row, inputs_of)
        result = await chain.ainvoke(inputs, {"callbacks": [meter]})
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        error = exc
        record.update(output=None, steps=None, error=_error_record(exc))
    else:
        steps = {s.id: as_data(result[s.id]) for s in chain.steps}
        record.update(output=as_data(result["output"]), steps=steps, error=None)
        record.update({k: result[k] for k in ("documents", "tool_calls") if k in result})
    # each step's own model (steps may differ), as `eslabon run --json` reports them
    models = {s.id: s.label for s in chain.steps}
    record["model"] = ", ".join(dict.fromkeys(models.values()))
    record["models"] = models
    record["elapsed_s"] = round(time.perf_counter() - began, 4)
    record["stats"] = result["stats"] if result is not None else meter.stats()
    if prompts:
        record["prompts"] = {
            s.id: prompt_text(found) for s in chain.steps if (found := meter.messages(s.id))
        }
    report.count(record)
    if log is not None:
        await _log_row(log, chain, inputs, meter, result, error, row["id"], report)
    return record


def prompt_text(messages: Iterable[Any]) -> str:
    """A prompt's messages as one text: each message's role and text, a blank line between."""
    return "\n\n".join(f"{m.type}: {m.text}" for m in messages)


async def _log_row(
    log: tuple[Any, str],
    chain: Any,
    inputs: dict[str, Any],
    meter: Any,
    result: dict[str, Any] | None,
    error: Exception | None,
    row_id: Any,
    report: BatchReport,
) -> None:
    """The row as a run in the run log, written off the event loop (other rows go on)."""
    from eslabon.observe.record import run_record

    writer, kind = log
    entry = run_record(chain, inputs, meter, result, error, kind=kind, row=row_id)
    if (reason := await asyncio.to_thread(writer.write, entry)) is not None:
        report.unlogged = reason


_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    # One event loop for every run_batch in the process: SDK clients (httpx) cache async
    # connections on the loop they first ran on, so a second asyncio.run() would find them
    # bound to a closed loop ("Event loop is closed").
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = asyncio.new_event_loop()
            threading.Thread(target=_LOOP.run_forever, name="eslabon-batch", daemon=True).start()
        return _LOOP


ENGINES = ("process", "ray")


def run_batch(
    chain: Any,
    rows: Iterable[dict[str, Any]],
    out: str | Path,
    engine: str = "process",
    **options: Any,
) -> BatchReport:
    """:func:`arun_batch` from synchronous code (on one background event loop per process);
    ``engine="ray"``: the rows spread over Ray workers (:mod:`eslabon.interfaces.ray_engine`,
    extra ``ray``; ``address``, ``workers``), with the same OUT, resume and report."""
    if engine == "ray":
        from eslabon.interfaces.ray_engine import run_batch_ray

        ray_report: BatchReport = run_batch_ray(chain, rows, out, **options)
        return ray_report
    if engine != "process":
        raise UserError(f"engine {engine!r}: write one of {', '.join(ENGINES)}")
    report: BatchReport = run_sync(arun_batch(chain, rows, out, **options))
    return report


def run_sync(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """``coroutine``'s result, run on the batch runner's background event loop (the one loop
    every batch of the process uses; ``eslabon test`` runs its batches there too)."""
    future = asyncio.run_coroutine_threadsafe(coroutine, _background_loop())
    try:
        return future.result()
    except KeyboardInterrupt:
        future.cancel()
        raise
