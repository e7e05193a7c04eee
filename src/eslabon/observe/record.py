"""A run as the run log keeps it, and the ways runs get there.

:func:`run_record` builds the log's record of one run (:mod:`eslabon.observe.runlog` stores
it) from the chain, its inputs, the run's :class:`~eslabon.observe.meter.Meter` and its result
or error. :class:`RunWriter` writes records for a command (``eslabon run``, ``chat``, ``batch``):
never failing the run — a damaged or locked log is a warning. :class:`LoggedChain` is a chain
that logs its own runs, for Python code that asks (``chain.with_log()``): a library must not
write files unasked.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
import warnings
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig

from eslabon.observe.meter import Meter, metered

__all__ = [
    "LoggedChain",
    "RunNotLogged",
    "RunWriter",
    "cost_text",
    "gather",
    "run_record",
    "summary_line",
    "usage_text",
]


class RunNotLogged(UserWarning):
    """A run completed but its log could not be written (the message says why)."""


def _file_hash(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


# each chain's file hash, read at its first logged run: the file as it was loaded (an edit
# after that is not what runs), and not read again for each of a batch's or a chat's runs
_HASHES: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()


def _chain_hash(chain: Any, source: Path | None) -> str | None:
    try:
        return _HASHES[chain]
    except KeyError:
        pass
    except TypeError:  # a chain that cannot be a weak key: read each time
        return _file_hash(source)
    found = _HASHES[chain] = _file_hash(source)
    return found


def _data(value: Any) -> Any:
    """A step's output as data: text as it is (most outputs), a structured one dumped."""
    if type(value) is str:
        return value
    from eslabon.running.structured import as_data

    return as_data(value)


_ROLES = {"human": "user", "ai": "assistant"}


def _message(message: Any) -> dict[str, Any]:
    content = message.content
    # text content as it is; blocks (images, tool calls) as LangChain's text of them
    text = content if type(content) is str else message.text
    return {"role": _ROLES.get(message.type, message.type), "content": text}


def run_record(
    chain: Any,
    inputs: dict[str, Any],
    meter: Meter,
    result: dict[str, Any] | None = None,
    error: BaseException | None = None,
    kind: str = "run",
    **extra: Any,
) -> dict[str, Any]:
    """The log's record of one run of ``chain`` (``extra``: ``session``, ``row``)."""
    from eslabon.running.structured import as_data

    stats = result["stats"] if result is not None else meter.stats()
    steps = []
    for step in chain.steps:
        figures = stats["steps"].get(step.id)
        if figures is None:  # not reached: an earlier step failed
            continue
        done = result is not None or step.id != next(reversed(stats["steps"]))
        output = as_data(result[step.id]) if result is not None else meter.reply(step.id)
        steps.append(
            {
                "id": step.id,
                **figures,
                "messages": [_message(m) for m in meter.messages(step.id) or ()],
                "output": output,
                "error": None if done or error is None else f"{type(error).__name__}: {error}",
            }
        )
    source = getattr(chain.spec, "source", None)
    return {
        "started": datetime.fromtimestamp(meter.wall, UTC).isoformat(timespec="milliseconds"),
        "kind": kind,
        "chain": chain.name,
        "file": str(source) if source is not None else None,
        "file_hash": _chain_hash(chain, source),
        "model": ", ".join(dict.fromkeys(s.label for s in chain.steps)),
        "inputs": inputs,
        "output": as_data(result["output"]) if result is not None else None,
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "usage": stats["usage"],
        "latency_ms": stats["latency_ms"],
        "ttft_ms": stats["ttft_ms"],
        "cost": stats["cost"],
        "steps": steps,
        "session": extra.get("session"),
        "row": None if extra.get("row") is None else str(extra["row"]),
    }


class RunWriter:
    """Writes a command's runs to the run log; a failure to write is returned as a reason
    (the command warns), never raised: the run itself has completed."""

    def __init__(self, path: Path | None = None, kept: bool = True) -> None:
        from eslabon.observe.runlog import RunLog, log_path

        # kept: a command's process ends soon after; leaving the log open saves it the disk
        # flushes of closing it (eslabon.observe.runlog._KEPT)
        self.log = RunLog(path or log_path(), kept=kept)
        self._said: set[str] = set()

    def write(self, record: dict[str, Any]) -> str | None:
        """None when written, else why not — once per reason (a chat's every turn, a batch's
        every row would repeat it)."""
        reasons = self.write_many([record])
        return reasons[0] if reasons else None

    def write_many(self, records: list[Any]) -> list[str]:
        """``records`` (or their rows: :func:`eslabon.observe.runlog.prepared`) in one
        transaction; the reasons, each said once, why some were not written (none: all
        were)."""
        return self._once(self._failures(records))

    def _failures(self, records: list[Any]) -> list[str]:
        from eslabon.observe.runlog import DuplicateRun, LogUnavailable

        try:
            self.log.record_many(records)
            return []
        except DuplicateRun as exc:
            if len(records) == 1:
                return [str(exc)]
        except LogUnavailable as exc:
            return [str(exc)]
        # one record's id was taken: the others still go in, one by one
        return [reason for record in records for reason in self._failures([record])]

    def _once(self, reasons: list[str]) -> list[str]:
        new = [r for r in dict.fromkeys(reasons) if r not in self._said]
        self._said.update(new)
        return new


def _warn(reason: str | None) -> None:
    if reason is not None:
        warnings.warn(f"this run was not logged: {reason}", RunNotLogged, stacklevel=2)


class BackgroundWriter:
    """Writes records to the run log from one thread of its own, off the runs' path: a run
    hands its record over (:meth:`put`, a queue append) and goes on. The thread lets records
    gather for a moment, then writes them in one transaction — one commit, and one wake-up of
    the thread, for many runs when they come fast (a thread that wakes for each record takes
    Python's lock from the runs each time) — in order. :meth:`flush` writes what is still
    queued on the calling thread (after any batch the thread is writing): handing it to the
    thread and waiting for it cost each record ≈ 20 µs more (bench/overhead.py). The
    interpreter flushes too before it exits. A log that cannot be written is a
    :class:`RunNotLogged` warning, once per reason. The thread ends once the writer is
    garbage: what was put is written first."""

    def __init__(self, writer: RunWriter) -> None:
        from eslabon.observe.runlog import prepared

        self.writer = writer
        self._prepared = prepared
        self._lock = threading.Lock()
        self._line: _Line | None = None
        self._pid: int | None = None

    def put(self, record: dict[str, Any]) -> None:
        # encoded here, by the run (its thread holds Python's lock anyway): the writer's thread
        # is left the database, whose work lets go of that lock and overlaps the runs
        rows = self._prepared(record)
        self._running().put(record if rows is None else rows)

    def put_rows(self, rows: Any) -> None:
        """A record as :func:`eslabon.observe.runlog.prepared` (or ``run_rows``) gave it."""
        self._running().put(rows)

    def flush(self) -> None:
        """Write every record put so far (or warn about it) before returning."""
        if self._line is not None and self._pid == os.getpid():
            self._line.write_here()

    def _running(self) -> _Line:
        if self._pid != os.getpid():  # not started, or forked: the parent writes its own
            with self._lock:
                if self._pid != os.getpid():
                    line = _Line(self.writer)
                    weakref.finalize(self, line.stop).atexit = False
                    self._line, self._pid = line, os.getpid()
        assert self._line is not None
        return self._line


_BATCH = 512  # at most this many records a transaction: a reader waits for none long
_GATHER_S = 0.25  # how long records gather before the thread writes them (unless flushed)


class _Line:
    """A writer thread and its queue of records."""

    def __init__(self, writer: RunWriter) -> None:
        self.writer = writer
        self.queue: SimpleQueue[Any] = SimpleQueue()
        self.pending = threading.Event()  # set by a put the thread has not seen: it wakes
        self.halt = threading.Event()  # set when the BackgroundWriter is garbage
        # held while records are taken from the queue and written, by the thread or by a
        # flush: each record once, in order, and a flush returns after the thread's batch
        self.taking = threading.Lock()
        # a daemon (flushed at exit by _flush_all): a thread waiting for records must not
        # keep the interpreter from exiting
        self.thread = threading.Thread(target=self._run, name="eslabon-log", daemon=True)
        _LINES.add(self)
        self.thread.start()

    def put(self, item: Any) -> None:
        self.queue.put(item)
        if not self.pending.is_set():  # the thread is told once per batch, not per record
            self.pending.set()

    def stop(self) -> None:
        """The thread writes what is queued, and ends."""
        self.halt.set()
        self.pending.set()

    def write_here(self) -> None:
        """Write what is queued on the calling thread, after the batch the thread may be
        writing."""
        with self.taking:
            self._write(self._drain())

    def _run(self) -> None:
        try:
            while True:
                self.pending.wait()
                self.halt.wait(_GATHER_S)  # let records gather (a flush may take them first)
                with self.taking:
                    # cleared before taking: a put from now on sets it again (at worst one
                    # wake-up finds the queue empty)
                    self.pending.clear()
                    self._write(self._drain())
                if self.halt.is_set():
                    return
        finally:
            _LINES.discard(self)

    def _drain(self) -> list[Any]:
        records: list[Any] = []  # records, or their rows
        while True:
            try:
                records.append(self.queue.get_nowait())
            except Empty:
                return records

    def _write(self, records: list[Any]) -> None:
        for start in range(0, len(records), _BATCH):
            try:
                for reason in self.writer.write_many(records[start : start + _BATCH]):
                    _warn(reason)
            except Exception as exc:  # never let the thread die: later runs still log
                _warn(f"{type(exc).__name__}: {exc}")


_LINES: set[_Line] = set()  # the running writer threads


@atexit.register
def _flush_all() -> None:
    """Every record put is written before the interpreter exits (the writers are daemons)."""
    for line in list(_LINES):
        if line.thread.is_alive():  # not a line a fork copied from the parent: its own
            line.write_here()


_DONE: Any = object()  # the end of a stream


class LoggedChain(Runnable[dict[str, Any], dict[str, Any]]):
    """``chain`` whose every run (invoke, ainvoke, stream, astream, batch) is written to the
    run log; a log that cannot be written is a :class:`RunNotLogged` warning.

    A run builds its record and hands it to a :class:`BackgroundWriter`: it returns without
    waiting for the log. :meth:`flush` waits for the records; they are all written before
    the interpreter exits."""

    def __init__(self, chain: Any, path: str | Path | None = None) -> None:
        from eslabon.observe.runlog import run_rows

        self.chain = chain
        # not kept open: a Python program may log to many files, for long
        self.writer = RunWriter(Path(path) if path is not None else None, kept=False)
        self.name = chain.name
        self._background = BackgroundWriter(self.writer)
        self._run_rows = run_rows
        # what every record of this chain repeats, worked out once (the file read now)
        source = getattr(chain.spec, "source", None)
        self._same = {
            "chain": chain.name,
            "file": str(source) if source is not None else None,
            "file_hash": _chain_hash(chain, source),
            "model": ", ".join(dict.fromkeys(s.label for s in chain.steps)),
        }

    def flush(self) -> None:
        """Wait until every run so far is in the log."""
        self._background.flush()

    def _meter(self) -> Meter:
        """This run's own meter, handed to the chain run (:func:`metered`) rather than put in
        its callbacks: a caller's meter shared by concurrent runs must not be the one the log
        reads, and a handler in the callbacks costs the run ≈ 70 µs more."""
        return Meter(getattr(self.chain, "prices", None), capture_messages=True)

    def _log(
        self, input: Any, meter: Meter, result: Any = None, error: BaseException | None = None
    ) -> None:
        """Hand this run to the writer: as rows built straight from the run when it answered
        (what every run costs, kept small), else as its record. Never fails the run."""
        try:
            inputs = self.chain._values(input)
        except Exception:  # the input itself was the mistake: keep what was given
            inputs = input if isinstance(input, dict) else {"input": input}
        rows = None
        if error is None:
            with suppress(Exception):  # what the short way does not expect: the long way
                rows = self._rows(inputs, meter, result)
        try:
            if rows is not None:
                self._background.put_rows(rows)
            else:
                record = run_record(self.chain, inputs, meter, result, error, kind="python")
                self._background.put(record)
        except Exception as exc:  # the run itself went well: its log must not fail it
            _warn(f"{type(exc).__name__}: {exc}")

    def _rows(self, inputs: dict[str, Any], meter: Meter, result: dict[str, Any]) -> Any:
        """:func:`eslabon.observe.runlog.run_rows` of this run: what ``run_record`` and
        ``prepared`` make of it, without the record in between."""
        first = meter.first_messages()
        figures = result["stats"]["steps"]
        steps = [
            (step.id, [_message(m) for m in first.get(step.id, ())], _data(result[step.id]))
            for step in self.chain.steps
            if step.id in figures
        ]
        return self._run_rows(
            started=meter.wall,
            kind="python",
            **self._same,
            inputs=inputs,
            output=_data(result["output"]),
            stats=result["stats"],
            steps=steps,
        )

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        meter = self._meter()
        try:
            with metered(meter):
                result: dict[str, Any] = self.chain.invoke(input, config)
        except Exception as exc:
            self._log(input, meter, error=exc)
            raise
        self._log(input, meter, result)
        return result

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        meter = self._meter()
        try:
            with metered(meter):
                result: dict[str, Any] = await self.chain.ainvoke(input, config)
        except Exception as exc:
            self._log(input, meter, error=exc)
            raise
        self._log(input, meter, result)
        return result

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        meter = self._meter()
        result: dict[str, Any] = {}
        try:
            chunks = iter(self.chain.stream(input, config))
            # the run starts, and claims its meter, at its first chunk: the meter is handed
            # over for that step alone, not across the yields (the caller's context between)
            with metered(meter):
                chunk = next(chunks, _DONE)
            while chunk is not _DONE:
                gather(result, chunk)
                yield chunk
                chunk = next(chunks, _DONE)
        except Exception as exc:
            self._log(input, meter, error=exc)
            raise
        self._log(input, meter, result)

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        meter = self._meter()
        result: dict[str, Any] = {}
        try:
            chunks = aiter(self.chain.astream(input, config))
            with metered(meter):  # as in stream
                chunk = await anext(chunks, _DONE)
            while chunk is not _DONE:
                gather(result, chunk)
                yield chunk
                chunk = await anext(chunks, _DONE)
        except Exception as exc:
            self._log(input, meter, error=exc)
            raise
        self._log(input, meter, result)


def gather(result: dict[str, Any], chunk: dict[str, Any]) -> None:
    """A streamed run's result, chunk by chunk: tokens add up, whole values replace."""
    for key, value in chunk.items():
        before: Any = result.get(key)
        # tokens are str subclasses (LangChain's TextAccessor): isinstance, not type() ==
        if isinstance(before, str) and isinstance(value, str):
            result[key] = before + value
        elif isinstance(before, list) and isinstance(value, list):
            result[key] = [*before, *value]
        else:
            result[key] = value


def summary_line(stats: dict[str, Any], steps: int) -> str:
    """One line people read after a run: ``3 steps · 412 → 268 tokens · 1.8 s · $0.00021``."""
    parts = [f"{steps} step{'s' if steps != 1 else ''}", usage_text(stats)]
    seconds = stats["latency_ms"] / 1000
    parts.append(f"{seconds:.1f} s" if seconds >= 0.1 else f"{stats['latency_ms']:.0f} ms")
    if (failed := stats.get("attempts", 0) - stats.get("calls", 0)) > 0:
        parts.append(f"{failed} failed attempt{'s' if failed != 1 else ''}")
    parts.append(cost_text(stats.get("cost")))
    return " · ".join(parts)


def usage_text(stats: dict[str, Any]) -> str:
    """``412 → 268 tokens`` (input → output), or that the provider did not report them."""
    usage = stats.get("usage")
    if usage is None:
        return "tokens not reported"
    return f"{usage['input_tokens']:,} → {usage['output_tokens']:,} tokens"


def cost_text(cost: float | None) -> str:
    """``$0.00021``; ``$0`` for a free model; ``cost unknown`` when a price is not known."""
    if cost is None:
        return "cost unknown"
    if cost == 0:
        return "$0"
    if cost >= 0.01:
        return f"${cost:.4f}".rstrip("0").rstrip(".")
    # two significant digits, written out: $0.000015 rather than Python's $1.5e-05
    return "$" + format(Decimal(f"{cost:.2g}"), "f")
