"""The run core: every control flow of a chain run written once, carried out by two drivers.

A chain run — retrieval, steps, the structured-output retry, the tool-calling loop — is written
as a generator that *yields what it needs done* and receives the result:

* :class:`Call` — invoke this Runnable (a model, a retriever, a tool) with this input; the
  generator receives its output, or has the exception thrown in at the ``yield``, so its own
  ``try``/``except``/``with`` blocks handle failures where they are written;
* :class:`Stream` — stream this model, giving each chunk's text to the caller as
  ``{key: text}``; the generator receives the whole text;
* :class:`Emit` — give this chunk to the caller (a stream's consumer); nothing comes back.

:func:`drive` carries the requests out with ``invoke``/``stream`` and :func:`adrive` with
``ainvoke``/``astream``; a sub-flow is a sub-generator (``yield from``). So ``invoke``,
``ainvoke``, ``stream`` and ``astream`` (and ``batch``, ``abatch``, ``astream_events`` on top of
them) run the same code, and a feature is written once.

Why generators rather than async-first with a sync bridge (pydantic-ai's way): a sync
``invoke`` must not need an event loop — Jupyter and Gradio already run one, a bridge would
need a thread for it, and llama.cpp's lock is taken in the calling thread — and a generator
costs well under a microsecond a request, where a loop round trip costs tens
(``bench/overhead.py`` measures the whole chain against LCEL).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.utils import AddableDict

__all__ = ["Call", "Emit", "Flow", "Outcome", "Request", "Stream", "adrive", "arun", "drive", "run"]

T = TypeVar("T")


@dataclass(slots=True)
class Call:
    """Run ``runnable`` on ``input`` (``invoke`` / ``ainvoke``); the flow gets its output."""

    runnable: Runnable[Any, Any]
    input: Any
    config: RunnableConfig | None = None


@dataclass(slots=True)
class Stream:
    """Stream ``runnable`` on ``input``; each chunk's text goes to the caller as
    ``{key: text}`` as it arrives, and the flow gets the whole text."""

    runnable: Runnable[Any, Any]
    input: Any
    config: RunnableConfig
    key: str


@dataclass(slots=True)
class Emit:
    """A chunk for the caller of a stream (ignored by ``invoke``)."""

    chunk: dict[str, Any]


Request = Call | Stream | Emit
# a control flow: yields requests, receives their results, returns its own
Flow = Generator[Request, Any, T]


class Outcome:
    """Where a driver puts the flow's return value (an async generator cannot return one)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Any = None


def _advance(
    flow: Flow[Any], send: Any, error: BaseException | None, outcome: Outcome | None
) -> Request | None:
    """The flow's next request, given the last one's result or failure; None when it is done."""
    try:
        return flow.throw(error) if error is not None else flow.send(send)
    except StopIteration as stop:
        if outcome is not None:
            outcome.value = stop.value
        return None


def drive(flow: Flow[Any], outcome: Outcome | None = None) -> Iterator[AddableDict]:
    """Carry ``flow`` out synchronously; yield the chunks it emits or streams."""
    try:
        request = _advance(flow, None, None, outcome)
        while request is not None:
            send: Any = None
            error: Exception | None = None
            try:
                if isinstance(request, Call):
                    send = request.runnable.invoke(request.input, request.config)
                elif isinstance(request, Stream):
                    parts: list[str] = []
                    for piece in request.runnable.stream(request.input, request.config):
                        if text := piece.text:
                            parts.append(text)
                            yield AddableDict({request.key: text})
                    send = "".join(parts)
                else:
                    yield AddableDict(request.chunk)
            except Exception as exc:  # thrown into the flow, at the yield that asked
                error = exc
            request = _advance(flow, send, error, outcome)
    finally:
        flow.close()  # a stream abandoned midway: the flow's own finally blocks run now


async def adrive(flow: Flow[Any], outcome: Outcome | None = None) -> AsyncIterator[AddableDict]:
    """Carry ``flow`` out asynchronously; yield the chunks it emits or streams."""
    try:
        request = _advance(flow, None, None, outcome)
        while request is not None:
            send: Any = None
            error: Exception | None = None
            try:
                if isinstance(request, Call):
                    send = await request.runnable.ainvoke(request.input, request.config)
                elif isinstance(request, Stream):
                    parts: list[str] = []
                    async for piece in request.runnable.astream(request.input, request.config):
                        if text := piece.text:
                            parts.append(text)
                            yield AddableDict({request.key: text})
                    send = "".join(parts)
                else:
                    yield AddableDict(request.chunk)
            except Exception as exc:
                error = exc
            request = _advance(flow, send, error, outcome)
    finally:
        flow.close()


def run(flow: Flow[T]) -> T:
    """``flow``'s result, carried out synchronously (a flow that only calls: no chunks)."""
    outcome = Outcome()
    for _ in drive(flow, outcome):
        pass
    return outcome.value  # type: ignore[no-any-return]


async def arun(flow: Flow[T]) -> T:
    """``flow``'s result, carried out asynchronously."""
    outcome = Outcome()
    async for _ in adrive(flow, outcome):
        pass
    return outcome.value  # type: ignore[no-any-return]
