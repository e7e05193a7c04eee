"""``eslabon batch --engine ray``: a batch's rows spread over Ray workers, one machine or many.

Why Ray actors rather than Ray Data: a worker must compile the chain once and keep it (its
models, clients, connection pools, a loaded GGUF) for every row it runs, and a row must reach
OUT the moment it finishes; an actor per worker does both, with rows as its async method calls
(``max_concurrency`` of them at a time, the in-process runner's ``concurrency``). Ray Data's
``map_batches`` would batch rows, hold results until a block completes, and suit datasets
rather than a stream of rows written one by one.

The driver (the ``eslabon batch`` process) keeps everything that makes the in-process engine
safe: it reads the rows, holds OUT's lock, skips the ids OUT already holds (``--resume``), writes
and flushes one line per finished row as its record comes back, and counts the progress. So a
row is in OUT exactly once whatever dies: a worker killed mid-row is restarted by Ray and the
row's call retried (``max_restarts``, ``max_task_retries``), and only the record that comes back
is written; a driver killed with ``kill -9`` is resumed like any batch (Ray ends the workers of a
driver that died). A row whose worker dies on each of its :data:`ROW_ATTEMPTS` attempts (out of
memory, a native crash) is recorded failed (``WorkerDiedError``) and the batch goes on. Each
worker keeps ``concurrency`` rows in flight, and gets its next row when one of its own finishes,
so a slow or restarting worker does not hold rows back while the others idle.

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
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.rate_limiters import BaseRateLimiter

from eslabon.errors import EslabonRuntimeError, MissingDependencyError, UserError

__all__ = [
    "ADDRESSES",
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


class WorkerDiedError(EslabonRuntimeError):
    """The Ray worker running a row died on each of the row's attempts."""


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


class _Worker:
    """One worker: the chain compiled at its first row and kept, its rows run as they come (a
    Ray actor). The setup comes once, to the constructor (Ray runs it again, with the same
    setup, when it restarts a worker that died), not with every row: a row's call carries the
    row alone. The chain is compiled at the first row rather than in the constructor, so an
    error doing so reaches the driver as that row's error (see :meth:`_Run.finish`)."""

    def __init__(self, setup: _Setup) -> None:
        self.setup = setup
        self.chain: Any = None
        self.inputs_of: list[str] = []
        self.log: tuple[Any, str] | None = None

    def pid(self) -> int:
        return os.getpid()

    def _ready(self) -> None:
        if self.chain is not None:
            return
        setup = self.setup
        chain = setup.recipe.compile()
        if setup.schedule is not None:
            chain = chain.with_model_settings(rate_limiter=BucketLimiter(setup.schedule))
        self.inputs_of = chain.spec.input_names()
        if setup.log is not None:
            from eslabon.observe.record import RunWriter

            self.log = (RunWriter(Path(setup.log[0])), setup.log[1])
        self.chain = chain

    async def run(self, row: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The row's OUT record, and why it was not logged (None: logged, or no log)."""
        from eslabon.interfaces.batch import BatchReport, run_row

        self._ready()
        report = BatchReport()
        record = await run_row(self.chain, row, self.inputs_of, report, self.log)
        return record, report.unlogged


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
            run = _Run(chain, recipe, sink, report, concurrency, on_row)
            run.go(todo, workers, rate, log, log_kind, on_workers)
        finally:
            if started:
                _ray().shutdown()
    return report


class _Run:
    """The driver's side of one batch on Ray: workers fed row by row, records written."""

    def __init__(
        self,
        chain: Any,
        recipe: Recipe,
        sink: Any,
        report: Any,
        concurrency: int,
        on_row: Callable[[dict[str, Any], Any], None] | None,
    ) -> None:
        self.chain, self.recipe, self.sink, self.report = chain, recipe, sink, report
        self.concurrency, self.on_row = concurrency, on_row

    def go(
        self,
        todo: list[dict[str, Any]],
        workers: int | None,
        rate: float | None,
        log: Any,
        log_kind: str,
        on_workers: Callable[[list[int]], None] | None,
    ) -> None:
        ray = _ray()
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        schedule = ray.remote(num_cpus=0)(_Schedule).remote(rate) if rate is not None else None
        log_at = (str(log.log.path), log_kind) if log is not None else None
        # a worker that dies is started again, and the rows it was running are run again
        # there: only the record that comes back is written, so none is lost or written twice.
        # num_cpus=0: a worker waits on the network and reserves no CPU of the cluster's;
        # SPREAD: on a cluster, the workers go over its nodes rather than packed on one
        actor = ray.remote(
            max_restarts=-1,
            max_task_retries=ROW_ATTEMPTS - 1,
            num_cpus=0,
            scheduling_strategy="SPREAD",
        )(_Worker)
        setup = _Setup(self.recipe, schedule, log_at)
        actors = [
            actor.options(max_concurrency=self.concurrency).remote(setup) for _ in range(count)
        ]
        pending: dict[Any, tuple[int, dict[str, Any]]] = {}
        began = time.perf_counter()
        try:
            pids = ray.get([a.pid.remote() for a in actors])  # up
            if on_workers is not None:
                on_workers(pids)
            queue = iter(todo)

            def submit(worker: int) -> None:
                row = next(queue, None)
                if row is not None:
                    pending[actors[worker].run.remote(row)] = (worker, row)

            for worker in range(count):
                for _ in range(self.concurrency):
                    submit(worker)
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                worker, row = pending.pop(ref)
                self.finish(ref, row)
                self.report.elapsed_s = time.perf_counter() - began
                submit(worker)  # the worker that freed a slot gets the next row
        finally:
            for ref in pending:  # the batch stopped early: no worker goes on calling models
                ray.cancel(ref)
            for a in [*actors, *([schedule] if schedule is not None else [])]:
                ray.kill(a, no_restart=True)
            self.report.elapsed_s = time.perf_counter() - began

    def finish(self, ref: Any, row: dict[str, Any]) -> None:
        """A row's result, written to OUT and counted."""
        from ray.exceptions import RayActorError, RayTaskError

        unlogged = None
        try:
            record, unlogged = _ray().get(ref)
        except RayTaskError as exc:
            # raised in a worker outside any row (the chain does not compile there): stop, as
            # the in-process engine does, with the error itself rather than Ray's wrapper
            cause = exc.cause
            raise (cause if isinstance(cause, Exception) else exc) from None
        except RayActorError:  # its worker died on every attempt (Ray restarted it each time)
            record = self.died(row)
        self.sink.write(record)
        self.report.count(record)
        if unlogged is not None:
            self.report.unlogged = unlogged
        if self.on_row is not None:
            self.on_row(record, self.report)

    def died(self, row: dict[str, Any]) -> dict[str, Any]:
        from eslabon.interfaces.batch import _error_record

        error = WorkerDiedError(
            f"the Ray worker running this row died on each of its {ROW_ATTEMPTS} attempts "
            "(killed, out of memory, or a crash); --resume --retry-failed runs it again"
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
