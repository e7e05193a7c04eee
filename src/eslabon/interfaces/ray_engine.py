"""``eslabon batch --engine ray``: a batch's rows spread over Ray workers, one machine or many.

Why Ray actors rather than Ray Data: a worker must compile the chain once and keep it (its
models, clients, connection pools, a loaded GGUF) for every row it runs, and a row must reach
OUT the moment it finishes; an actor per worker does both, running its rows as asyncio tasks
(``concurrency`` at a time, as the in-process runner does). Ray Data's ``map_batches`` would
batch rows, hold results until a block completes, and suit datasets rather than a stream of
rows written one by one.

The driver talks to each worker with one call at a time (:meth:`_Worker.step`): the call brings
the rows to start and returns, as soon as there is one, every row finished since the last call.
So rows travel in groups when the worker is busy (a Ray call costs both sides CPU: one call per
row made Ray's share of a row's CPU about a fifth) and one by one when rows are few, and a row
that finishes early is never held back by a slow one sent with it. A worker whose rows finish
gets new ones at once, so a slow or restarting worker does not hold rows back while the others
idle.

The driver (the ``eslabon batch`` process) keeps everything that makes the in-process engine
safe: it reads the rows, holds OUT's lock, skips the ids OUT already holds (``--resume``), writes
and flushes one line per finished row as its record comes back, and counts the progress. So a
row is in OUT exactly once whatever dies: a worker killed mid-row is restarted by Ray
(``max_restarts``) and the driver sends the rows it was running again (:class:`_Feed`); each row
goes out with a ticket and only a record whose ticket is still out is written; a driver killed
with ``kill -9`` is resumed like any batch (Ray ends the workers of a driver that died). A row
whose worker is lost on each of its :data:`ROW_ATTEMPTS` attempts (it died: out of memory, a
native crash; or Ray cannot restart it, or it stops answering) is recorded failed
(``WorkerDiedError``) and the batch goes on; the rows that died beside it are run again with no
other such row, so they are not taken down with it again. A call Ray fails without an answer
costs no row an attempt by itself: only the rows the worker's next life says it lacks do. A
worker Ray cannot restart, or that answers no call for :data:`PROBE_SECONDS`, is given up (its
rows lose an attempt); with none left the batch stops, and ``--resume`` goes on.

An error raised in a worker outside a row (the chain does not compile there: a key missing from
the worker's environment, a file missing on its node) stops the batch and is raised in the
driver as itself, with its type and message, not as Ray's wrapper with the worker's traceback.

``--address local`` starts a Ray runtime on loopback only, with no dashboard: on Linux Ray binds
a node to the machine's network address even when asked for 127.0.0.1, so the runtime is
started with the switch Ray itself uses on macOS and Windows to stay on loopback.

What travels with the job: the chain file's spec (parsed, as data), the model reference, the
allowances, and the paths of the cache and the run log (SQLite files each worker opens) — never
a key. Workers compile the chain where they run, so the files it names (few-shot examples, an
index) must be at the same path there: a shared folder, or the same checkout on every node.
Workers reserve no CPU of the cluster's (they wait on the network) and are spread over its
nodes. Keys come from each worker's own environment (a
local runtime's workers inherit this process's; on a cluster, the cluster's — a Kubernetes
secret, the nodes' environment), never from Ray's runtime environment, which the dashboard
shows.

``--rate`` is global: one small actor holds the schedule of every worker's model calls (a
LangChain rate limiter asks it before each call), so N workers together keep to the rate.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.rate_limiters import BaseRateLimiter

from eslabon.errors import EslabonRuntimeError, MissingDependencyError, UserError

__all__ = [
    "ADDRESSES",
    "PROBE_SECONDS",
    "ROW_ATTEMPTS",
    "BucketLimiter",
    "Recipe",
    "WorkerDiedError",
    "connect",
    "loopback_only",
    "run_batch_ray",
]

ADDRESSES = ("local", "auto")  # or ray://HOST:PORT (a cluster's client server)
# A row runs on at most this many lives of a worker: one that kills its worker every time is
# recorded failed rather than retried for ever (Ray restarts the worker each time)
ROW_ATTEMPTS = 3
# A worker that answers no call for this long is given up (its rows run elsewhere): Ray answers
# a call to a worker it is restarting after about a second, and a restart takes seconds
PROBE_SECONDS = 120.0


class WorkerDiedError(EslabonRuntimeError):
    """The Ray worker running a row was lost (it died, or was given up) on each of the row's
    attempts."""


@dataclass
class Recipe:
    """How a worker compiles the driver's chain: picklable data only."""

    spec: Any  # the parsed chain file (eslabon.chainfile.spec.Chain)
    model: Any  # the model reference it was compiled with (a string or mapping), or None
    allow_imports: list[str] | None
    allow: Any  # eslabon.trust.allow.Allow, or None
    cache: str | None  # the SQLite cache's path, if the chain has one

    @classmethod
    def of(cls, chain: Any) -> Recipe:
        """The recipe of a compiled chain, or a :class:`UserError` saying why it cannot travel."""
        args = dict(getattr(chain, "compiled_with", {}) or {})
        model = args.get("model")
        if model is not None and not isinstance(model, str | dict):
            raise UserError(
                "--engine ray: the chain runs on a model object, which cannot be sent to Ray "
                "workers\n    fix: give the model as a reference (a 'provider:model' string or "
                "a mapping), as a chain file or --model does"
            )
        settings = dict(args.get("model_settings") or {})
        cache = settings.pop("cache", None)
        settings.pop("rate_limiter", None)  # replaced by the cluster-wide one
        if settings:
            raise UserError(
                f"--engine ray: the chain's model settings {sorted(settings)} cannot travel to "
                "Ray workers\n    fix: set them in an alias in eslabon.toml"
            )
        path = getattr(cache, "path", None) if cache is not None else None
        if cache is not None and path is None:
            raise UserError(
                "--engine ray: only a SQLite cache given by its path can be shared by workers"
            )
        return cls(chain.spec, model, args.get("allow_imports"), args.get("allow"), path)

    def compile(self) -> Any:
        from eslabon.running.compile import compile_chain

        chain = compile_chain(
            self.spec, model=self.model, allow_imports=self.allow_imports, allow=self.allow
        )
        return chain.with_cache(self.cache) if self.cache else chain


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--engine ray", "ray", "ray") from None
    return ray


def connect(address: str) -> bool:
    """Join the Ray cluster at ``address`` (``auto``: the one ``ray start`` runs here;
    ``ray://HOST:PORT``: a remote one), or start one in this process (``local``). True when this
    call started Ray (the caller shuts it down)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    if address not in ADDRESSES and not address.startswith("ray://"):
        raise UserError(
            f"--address {address!r}: write local (a Ray runtime on this machine), auto (the "
            "cluster `ray start` runs here) or ray://HOST:PORT"
        )
    options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address == "local":
        # no dashboard, and loopback only: a batch does not open ports to the network
        options["include_dashboard"] = False
        with loopback_only():
            ray.init(address=address, **options)
        return True
    try:
        ray.init(address=address, **options)
    except ConnectionError as exc:
        raise UserError(f"--address {address}: no Ray cluster answers there ({exc})") from None
    return True


_CLUSTERS = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def loopback_only() -> Iterator[None]:
    """A Ray runtime started inside (``ray.init(address="local")``) listens on 127.0.0.1 only.

    On Linux Ray replaces 127.0.0.1 with the machine's network address and listens on every
    interface, for clusters; its clusters-off switch (the default on macOS and Windows) keeps
    the node on loopback. The switch is read by this process when Ray was imported, and by the
    runtime's processes (which inherit the environment) when they start."""
    from ray._private import ray_constants

    saved_env, saved = os.environ.get(_CLUSTERS), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTERS] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(_CLUSTERS, None)
        else:
            os.environ[_CLUSTERS] = saved_env


# -- the cluster-wide rate ------------------------------------------------------------------------
class _Schedule:
    """The next free moment for a model call, for every worker (a Ray actor)."""

    def __init__(self, per_second: float) -> None:
        self.gap = 1.0 / per_second
        self.next = time.monotonic()

    def reserve(self) -> float:
        """Seconds the caller waits before its call (0: go now)."""
        now = time.monotonic()
        at = max(now, self.next)
        self.next = at + self.gap
        return at - now


class BucketLimiter(BaseRateLimiter):
    """LangChain's rate limiter interface over the schedule actor: each model call, in any
    worker, takes the next slot."""

    def __init__(self, schedule: Any) -> None:
        self.schedule = schedule

    def acquire(self, *, blocking: bool = True) -> bool:
        wait = _ray().get(self.schedule.reserve.remote())
        if wait > 0:
            time.sleep(wait)
        return True

    async def aacquire(self, *, blocking: bool = True) -> bool:
        wait = await self.schedule.reserve.remote()
        if wait > 0:
            await asyncio.sleep(wait)
        return True


# -- the workers ----------------------------------------------------------------------------------
@dataclass
class _Setup:
    """What every worker needs: the recipe, the rate's schedule actor, the run log."""

    recipe: Recipe
    schedule: Any
    log: tuple[str, str] | None  # (the log's path, what it calls these runs)


# A worker's result: (the ticket its row was sent with, the row's OUT record, why the row was
# not logged or None)
Finished = tuple[int, dict[str, Any], str | None]


class _Worker:
    """One worker: the chain compiled at its first call and kept, its rows run as asyncio tasks
    (a Ray actor). The setup comes once, to the constructor (Ray runs it again, with the same
    setup, when it restarts a worker that died), not with every call. The chain is compiled at
    the first call rather than in the constructor, so an error doing so reaches the driver as
    that call's error (see :meth:`_Feed.collect`).

    The driver talks to it with :meth:`step`, one call at a time: the call brings the rows to
    start (each with the driver's ticket for it), and returns every row finished since the
    last call, as soon as there is at least one. So a call carries as many rows as finished
    while the previous one travelled: one at a time when rows are few, several at once when
    the worker is busy, and a row that finishes early is never held back by a slow one."""

    def __init__(self, setup: _Setup) -> None:
        self.setup = setup
        self.chain: Any = None
        self.inputs_of: list[str] = []
        self.log: tuple[Any, str] | None = None
        self.held: dict[int, asyncio.Future[None]] = {}  # ticket -> its row, till returned
        self.finished: list[Finished] = []
        self.returned: list[Finished] = []  # what the last call returned (its reply may be lost)
        self.failure: Exception | None = None
        self.calls = 0
        self.wake: asyncio.Event | None = None

    def pid(self) -> int:
        return os.getpid()

    def _ready(self) -> asyncio.Event:
        if self.wake is None:
            self.wake = asyncio.Event()
        if self.chain is not None:
            return self.wake
        setup = self.setup
        chain = setup.recipe.compile()
        if setup.schedule is not None:
            chain = chain.with_model_settings(rate_limiter=BucketLimiter(setup.schedule))
        self.inputs_of = chain.spec.input_names()
        if setup.log is not None:
            from eslabon.observe.record import RunWriter

            self.log = (RunWriter(Path(setup.log[0])), setup.log[1])
        self.chain = chain
        # what the worker holds from here on (Ray, the chain, its clients and their modules)
        # lives as long as it does: out of the garbage collector's reach, rather than walked by
        # every full collection its rows' allocations set off (≈ 0.4 ms of each row's ≈ 2.2 ms
        # of CPU in the benchmark). The worker is eslabon's own process; the in-process engine
        # leaves the caller's collector alone
        gc.collect()
        gc.freeze()
        return self.wake

    async def step(
        self, rows: list[tuple[int, dict[str, Any]]], held: list[int]
    ) -> tuple[list[Finished], list[int]]:
        """Start ``rows`` (ticket, row), then return the rows finished since the last call, at
        least one, as soon as one is; and, at once, those of ``held`` (the tickets the driver
        thinks this worker has) it does not have: a former life of the worker had them. Rows
        the last call returned whose tickets come back in ``held`` are returned again (that
        reply never reached the driver: it ran them, it did not die with them).

        A row that failed outside its own error (:meth:`_row`) stops the worker: it starts no
        more rows, returns those finished before, then raises that error."""
        wake = self._ready()
        self.calls += 1
        call = self.calls
        lost = [ticket for ticket in held if ticket not in self.held]
        again: list[Finished] = []
        if lost and self.returned:  # rare: the driver had no reply to the last call
            missing = set(lost)
            again = [item for item in self.returned if item[0] in missing]
            found = {ticket for ticket, _, _ in again}
            lost = [ticket for ticket in lost if ticket not in found]
        if self.failure is None:  # else the batch stops: no more model calls
            for ticket, row in rows:
                self.held[ticket] = asyncio.ensure_future(self._row(ticket, row))
        wake.set()  # a call the driver gave up on (it thought this worker dead) gives way
        while call == self.calls and not (self.finished or again or lost or self.failure):
            wake.clear()
            await wake.wait()
        if call != self.calls:
            return [], []
        if self.failure is not None and not (self.finished or again):
            raise self.failure
        done, self.finished = self.finished, []
        for ticket, _, _ in done:
            del self.held[ticket]
        if again:
            done = again + done
        self.returned = done
        return done, lost

    async def _row(self, ticket: int, row: dict[str, Any]) -> None:
        try:
            from eslabon.interfaces.batch import BatchReport, run_row

            report = BatchReport()
            record = await run_row(self.chain, row, self.inputs_of, report, self.log)
        except Exception as exc:  # not the row's own error (run_row records those): stop
            self.failure = exc
        except BaseException as exc:
            # asyncio.CancelledError (run_row lets it through) stops an in-process batch; here
            # too, as an error that travels back to the driver (Ray would take a raised
            # CancelledError for a cancelled call)
            self.failure = EslabonRuntimeError(
                f"row {row.get('id')!r}: its run in a Ray worker was stopped by "
                f"{type(exc).__name__}"
            )
        else:
            self.finished.append((ticket, record, report.unlogged))
        finally:  # the call waiting for this row (maybe its only one) returns
            assert self.wake is not None
            self.wake.set()


def run_batch_ray(
    chain: Any,
    rows: Iterable[dict[str, Any]],
    out: str | Path,
    *,
    address: str = "local",
    workers: int | None = None,
    concurrency: int = 8,
    rate: float | None = None,
    resume: bool = False,
    retry_failed: bool = False,
    on_row: Callable[[dict[str, Any], Any], None] | None = None,
    log: Any = None,
    log_kind: str = "batch",
    on_workers: Callable[[list[int]], None] | None = None,
) -> Any:
    """:func:`eslabon.interfaces.batch.run_batch` on Ray: the same OUT, resume, failed rows,
    progress and report, the rows run by ``workers`` Ray actors (default: one per CPU the
    cluster has), each ``concurrency`` rows at a time; ``rate`` is for all of them together.
    ``on_workers`` gets the workers' process ids once they are up (tests kill one)."""
    from eslabon.interfaces.batch import BatchReport, batch_output, check_options

    check_options(concurrency, rate)
    if workers is not None and workers < 1:
        raise UserError("--workers must be at least 1")
    recipe = Recipe.of(chain)  # before Ray starts: a chain that cannot travel costs nothing
    with batch_output(chain, rows, out, resume, retry_failed) as (todo, sink, report):
        assert isinstance(report, BatchReport)
        started = connect(address)
        try:
            run = _Run(chain, recipe, sink, report, on_row)
            run.go(todo, workers, concurrency, rate, (log, log_kind), on_workers)
        finally:
            if started:
                _ray().shutdown()
    return report


class _Run:
    """The driver's side of one batch on Ray: the workers started and fed, records written."""

    def __init__(
        self,
        chain: Any,
        recipe: Recipe,
        sink: Any,
        report: Any,
        on_row: Callable[[dict[str, Any], Any], None] | None,
    ) -> None:
        self.chain, self.recipe, self.sink, self.report = chain, recipe, sink, report
        self.on_row = on_row

    def go(
        self,
        todo: list[dict[str, Any]],
        workers: int | None,
        concurrency: int,
        rate: float | None,
        log: tuple[Any, str],
        on_workers: Callable[[list[int]], None] | None,
    ) -> None:
        ray = _ray()
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        schedule = ray.remote(num_cpus=0)(_Schedule).remote(rate) if rate is not None else None
        log_at = (str(log[0].log.path), log[1]) if log[0] is not None else None
        # a worker that dies is started again (max_restarts); the driver, not Ray, runs again
        # the rows it was running (max_task_retries=0: a worker's rows live in it, a call
        # retried on its successor would not bring them back), and only a record that comes
        # back is written, so none is lost or written twice. A call sent while Ray restarts the
        # worker fails too (max_task_retries=0), never run: _Feed probes before charging rows.
        # num_cpus=0: a worker waits on the network and reserves no CPU of the cluster's;
        # SPREAD: on a cluster, the workers go over its nodes rather than packed on one
        actor = ray.remote(
            max_restarts=-1, max_task_retries=0, num_cpus=0, scheduling_strategy="SPREAD"
        )(_Worker)
        setup = _Setup(self.recipe, schedule, log_at)
        actors = [actor.remote(setup) for _ in range(count)]
        began = time.perf_counter()
        try:
            pids = ray.get([a.pid.remote() for a in actors])  # up
            if on_workers is not None:
                on_workers(pids)
            feed = _Feed(actors, todo, concurrency, self.died)
            while feed.send():
                ready, _ = ray.wait(list(feed.calls), num_returns=1)
                for record, unlogged in feed.collect(ready[0]):
                    self.finish(record, unlogged)
                self.report.elapsed_s = time.perf_counter() - began
        finally:
            # the batch ended, or stopped early: no worker goes on calling models
            for a in [*actors, *([schedule] if schedule is not None else [])]:
                ray.kill(a, no_restart=True)
            self.report.elapsed_s = time.perf_counter() - began

    def finish(self, record: dict[str, Any], unlogged: str | None) -> None:
        """A row's record, written to OUT and counted."""
        self.sink.write(record)
        self.report.count(record)
        if unlogged is not None:
            self.report.unlogged = unlogged
        if self.on_row is not None:
            self.on_row(record, self.report)

    def died(self, row: dict[str, Any]) -> dict[str, Any]:
        """The record of a row whose worker was lost on each of its attempts."""
        from eslabon.interfaces.batch import _error_record

        error = WorkerDiedError(
            f"the Ray worker running this row was lost on each of its {ROW_ATTEMPTS} attempts "
            "(it died: killed, out of memory, a crash; or it stopped answering); --resume "
            "--retry-failed runs it again"
        )
        inputs_of = self.chain.spec.input_names()
        models = {s.id: s.label for s in self.chain.steps}
        return {
            "id": row["id"],
            "inputs": {k: v for k, v in row.items() if k in inputs_of},
            "output": None,
            "steps": None,
            "error": _error_record(error),
            "model": ", ".join(dict.fromkeys(models.values())),
            "models": models,
            "elapsed_s": 0.0,
        }


class _Feed:
    """Which rows run where: each worker has at most ``concurrency`` rows out to it (sent, and
    neither returned nor given up on) and at most one call (:meth:`_Worker.step`) outstanding,
    which brings it new rows and returns its finished ones.

    Each row is sent with a ticket; a record is written only if its ticket is still out (a
    row run again elsewhere has a new one), so a row is never written twice.

    A call that fails with no answer from its worker (a Ray error other than the worker's own
    exception) charges nothing: Ray reports a worker that died, one it is restarting (the call
    never reached it) and one briefly unreachable alike. The worker is *probed* instead: sent
    calls that start nothing and ask which of its rows it lacks, until one is answered; no
    rows go to it meanwhile. The rows a life of the worker that answers lacks died with a
    former one: those with attempts left are *suspects*, run again with at most one suspect
    per worker at a time, so a row that kills its worker does not take the same rows down
    with it twice; a row lost so on each of its :data:`ROW_ATTEMPTS` attempts is recorded
    failed. A worker dead for good (``ActorDiedError``: killed, or Ray could not restart it)
    or unanswering for :data:`PROBE_SECONDS` is given up: its rows are lost with it (an
    attempt each) and it gets no more."""

    def __init__(
        self,
        actors: list[Any],
        todo: list[dict[str, Any]],
        concurrency: int,
        died: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        self.actors, self.todo, self.concurrency, self.died = actors, todo, concurrency, died
        self.fresh: deque[int] = deque(range(len(todo)))  # rows never sent, by index
        self.suspects: deque[int] = deque()  # rows whose worker died running them
        self.deaths: dict[int, int] = {}  # row -> how many of its workers died running it
        self.tickets = itertools.count()
        self.running: list[dict[int, int]] = [{} for _ in actors]  # per worker: ticket -> row
        self.suspect: list[int | None] = [None] * len(actors)  # per worker: its suspect's ticket
        self.calls: dict[Any, int] = {}  # each outstanding call -> its worker
        self.probing: dict[int, float] = {}  # worker not answering -> since when (monotonic)
        self.gone: set[int] = set()  # workers given up

    def send(self) -> bool:
        """Every worker without a call outstanding gets one, with new rows if it has room (and
        answers); False when no call is outstanding (every row is done)."""
        waiting = set(self.calls.values())
        for worker in range(len(self.actors)):
            if worker not in waiting and worker not in self.gone:
                self._send(worker)
        if not self.calls and (self.fresh or self.suspects):  # every worker given up
            raise EslabonRuntimeError(
                f"--engine ray: every Ray worker is gone (dead for good, or unanswering for "
                f"{PROBE_SECONDS:.0f} s); {len(self.fresh) + len(self.suspects)} rows were not "
                "run: OUT holds the others, --resume runs them"
            )
        return bool(self.calls)

    def _send(self, worker: int) -> None:
        running = self.running[worker]
        new: list[tuple[int, int]] = []
        room = self.concurrency - len(running)
        if worker in self.probing:  # only asked what it holds: it may be dead or restarting
            room = 0
        if room > 0 and self.suspects and self.suspect[worker] is None:
            new.append((next(self.tickets), self.suspects.popleft()))
            self.suspect[worker] = new[0][0]
        while len(new) < room and self.fresh:
            new.append((next(self.tickets), self.fresh.popleft()))
        held = list(running)
        running.update(new)
        if running:  # else it has nothing to run nor to return
            rows = [(ticket, self.todo[index]) for ticket, index in new]
            self.calls[self.actors[worker].step.remote(rows, held)] = worker

    def collect(self, ref: Any) -> list[tuple[dict[str, Any], str | None]]:
        """The records a call brought back (with why each was not logged, or None), and those
        of rows its worker died on for the last time."""
        from ray.exceptions import RayError, RayTaskError

        worker = self.calls.pop(ref)
        try:
            finished, lost = _ray().get(ref)
        except RayTaskError as exc:
            # raised in a worker outside any row (the chain does not compile there): stop, as
            # the in-process engine does, with the error itself rather than Ray's wrapper
            cause = exc.cause
            raise (cause if isinstance(cause, Exception) else exc) from None
        except RayError as exc:  # no answer (the worker, or its reply's node, is gone)
            return self._unanswered(worker, exc)
        if self.probing:
            self.probing.pop(worker, None)  # it answers: what it lacks is below
        records: list[tuple[dict[str, Any], str | None]] = []
        for ticket, record, unlogged in finished:
            if self.running[worker].pop(ticket, None) is not None:  # else given up on there
                records.append((record, unlogged))
                if self.suspect[worker] == ticket:
                    self.suspect[worker] = None
        return records + self._lost(worker, lost)

    def _unanswered(self, worker: int, exc: Exception) -> list[tuple[dict[str, Any], str | None]]:
        """A call to ``worker`` failed with no answer: probed, or given up (see the class)."""
        from ray.exceptions import ActorDiedError

        now = time.monotonic()
        since = self.probing.setdefault(worker, now)
        # ActorDiedError: dead for good (max_restarts=-1, so killed, or its restart failed);
        # a restartable worker's death is ActorUnavailableError. A preempted node's worker is
        # restarted elsewhere
        dead = isinstance(exc, ActorDiedError) and not exc.preempted
        if not dead and now - since <= PROBE_SECONDS:
            return []
        self.gone.add(worker)
        del self.probing[worker]
        # one only unreachable may still be running its rows: stopped, as they run elsewhere
        # (best effort: the batch's end kills every worker again)
        with suppress(Exception):
            _ray().kill(self.actors[worker], no_restart=True)
        return self._lost(worker, list(self.running[worker]))

    def _lost(self, worker: int, tickets: list[int]) -> list[tuple[dict[str, Any], str | None]]:
        """Rows that died with their worker: run again, or recorded failed at the last time."""
        failed: list[tuple[dict[str, Any], str | None]] = []
        for ticket in tickets:
            index = self.running[worker].pop(ticket, None)
            if index is None:
                continue
            if self.suspect[worker] == ticket:
                self.suspect[worker] = None
            self.deaths[index] = self.deaths.get(index, 0) + 1
            if self.deaths[index] < ROW_ATTEMPTS:
                self.suspects.append(index)
            else:
                failed.append((self.died(self.todo[index]), None))
        return failed
