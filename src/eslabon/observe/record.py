"""A run as the run log keeps it, and the ways runs get there.

:func:`run_record` builds the log's record of one run (:mod:`eslabon.observe.runlog` stores
it) from the chain, its inputs, the run's :class:`~eslabon.observe.meter.Meter` and its result
or error. :class:`RunWriter` writes records for a command (``eslabon run``, ``chat``, ``batch``):
never failing the run — a damaged or locked log is a warning. :class:`LoggedChain` is a chain
that logs its own runs, for Python code that asks (``chain.with_log()``): a library must not
write files unasked.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig

from eslabon.observe.meter import Meter

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


def _message(message: Any) -> dict[str, Any]:
    role = {"human": "user", "ai": "assistant"}.get(message.type, message.type)
    return {"role": role, "content": message.text}


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
        "file_hash": _file_hash(source),
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

    def __init__(self, path: Path | None = None) -> None:
        from eslabon.observe.runlog import RunLog, log_path

        self.log = RunLog(path or log_path())
        self._said: set[str] = set()

    def write(self, record: dict[str, Any]) -> str | None:
        """None when written, else why not — once per reason (a chat's every turn, a batch's
        every row would repeat it)."""
        from eslabon.observe.runlog import LogUnavailable

        try:
            self.log.record(record)
        except LogUnavailable as exc:
            reason = str(exc)
            if reason not in self._said:
                self._said.add(reason)
                return reason
        return None


def _warn(reason: str | None) -> None:
    if reason is not None:
        warnings.warn(f"this run was not logged: {reason}", RunNotLogged, stacklevel=2)


class LoggedChain(Runnable[dict[str, Any], dict[str, Any]]):
    """``chain`` whose every run (invoke, ainvoke, stream, astream, batch) is written to the
    run log; a log that cannot be written is a :class:`RunNotLogged` warning.

    Records are written by one background thread, in order, off the run's path: a run returns
    as soon as its record is built. :meth:`flush` waits for them; they are all written before
    the interpreter exits (``concurrent.futures`` joins its threads then)."""

    def __init__(self, chain: Any, path: str | Path | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.chain = chain
        self.writer = RunWriter(Path(path) if path is not None else None)
        self.name = chain.name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eslabon-log")

    def _log(self, record: dict[str, Any]) -> None:
        def write() -> None:
            _warn(self.writer.write(record))

        self._pool.submit(write)

    def flush(self) -> None:
        """Wait until every run so far is in the log."""
        self._pool.submit(lambda: None).result()

    def _start(self, input: Any, given: RunnableConfig | None) -> tuple[Meter, RunnableConfig]:
        """This run's own meter, first in its callbacks: the chain claims the first free one,
        and a caller's meter shared by concurrent runs must not be the one the log reads."""
        config: RunnableConfig = {**(given or {})}
        meter = Meter(getattr(self.chain, "prices", None), capture_messages=True)
        callbacks = config.get("callbacks")
        if callbacks is None or isinstance(callbacks, list):
            config["callbacks"] = [meter, *(callbacks or [])]
        else:
            manager = callbacks.copy()
            manager.handlers.insert(0, meter)
            manager.inheritable_handlers.insert(0, meter)
            config["callbacks"] = manager
        return meter, config

    def _record(
        self, input: Any, meter: Meter, result: Any = None, error: BaseException | None = None
    ) -> dict[str, Any]:
        try:
            inputs = self.chain._values(input)
        except Exception:  # the input itself was the mistake: keep what was given
            inputs = input if isinstance(input, dict) else {"input": input}
        return run_record(self.chain, inputs, meter, result, error, kind="python")

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        meter, config = self._start(input, config)
        try:
            result: dict[str, Any] = self.chain.invoke(input, config)
        except Exception as exc:
            self._log(self._record(input, meter, error=exc))
            raise
        self._log(self._record(input, meter, result))
        return result

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        meter, config = self._start(input, config)
        try:
            result: dict[str, Any] = await self.chain.ainvoke(input, config)
        except Exception as exc:
            self._log(self._record(input, meter, error=exc))
            raise
        self._log(self._record(input, meter, result))
        return result

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        meter, config = self._start(input, config)
        result: dict[str, Any] = {}
        try:
            for chunk in self.chain.stream(input, config):
                gather(result, chunk)
                yield chunk
        except Exception as exc:
            self._log(self._record(input, meter, error=exc))
            raise
        self._log(self._record(input, meter, result))

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        meter, config = self._start(input, config)
        result: dict[str, Any] = {}
        try:
            async for chunk in self.chain.astream(input, config):
                gather(result, chunk)
                yield chunk
        except Exception as exc:
            self._log(self._record(input, meter, error=exc))
            raise
        self._log(self._record(input, meter, result))


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
