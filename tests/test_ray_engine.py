"""``--engine ray`` on a real local Ray runtime on 127.0.0.1, against the loopback OpenAI-protocol
server: faults, a worker killed mid-run, the driver killed with ``kill -9`` then resumed, a
global rate, results identical to the in-process engine's, errors across the process boundary.

One runtime serves the whole module (starting one costs seconds). Its processes get the key
the workers use (:data:`SECRET`) in their environment when it starts; this process, the driver,
holds another (:data:`DRIVER_KEY`), so a request carrying the driver's key would show that a key
travelled with the job.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from eslabon import load_chain
from eslabon.errors import EslabonRuntimeError, MissingCredentialsError, UserError
from eslabon.interfaces import ray_engine
from eslabon.interfaces.batch import run_batch
from helpers import ROOT, write
from wire_server import ToolCall, WireServer

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.ray

SECRET = "sk-ray-workers-SECRET-0123456789abcdef"
DRIVER_KEY = "sk-ray-driver-SECRET-fedcba9876543210"
CHAIN = "inputs: {q: La pregunta}\nprompt: '{q}'\nretry: {attempts: 10, backoff: 0.01}\n"
EXE = str(Path(sys.executable).parent / "eslabon")


class Cluster:
    """The module's Ray runtime: its raylet's process id (every worker is the raylet's child),
    and the environment another driver joins it with (``--address auto``)."""

    def __init__(self, raylet: int, env: dict[str, str]) -> None:
        self.raylet, self.env = raylet, env

    def workers(self, title: str = "ray::_Worker") -> list[int]:
        """The live processes of this runtime whose title starts with ``title``."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # it ended while we looked
            if parent == self.raylet and cmdline.startswith(title.encode()):
                found.append(int(entry.name))
        return found

    def wait_until_no(self, title: str, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while self.workers(title):
            assert time.monotonic() < deadline, f"{title} still running: {self.workers(title)}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from eslabon.chat.modelspec import PROVIDERS

    saved = dict(os.environ)
    # the runtime's processes inherit this environment when they start: the workers' key, a
    # run log of the tests' own, and none of a developer's model, tracing or other keys
    for name in [n for n in os.environ if n.startswith(("OTEL_", "LANGSMITH_", "LANGCHAIN_"))]:
        del os.environ[name]
    for info in PROVIDERS.values():
        if info.env_var:
            os.environ.pop(info.env_var, None)
    os.environ.pop("ESLABON_MODEL", None)
    os.environ["ESLABON_LOGS"] = str(tmp_path_factory.mktemp("raylog") / "logs.sqlite")
    os.environ["OPENAI_API_KEY"] = SECRET
    try:
        with ray_engine.loopback_only():  # as --address local starts one
            ray.init(
                address="local",
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                num_cpus=2,
                log_to_driver=False,
            )
        # what ray.init set to join its cluster (RAY_AUTH_MODE=token: the token is in ~/.ray)
        joins = {k: v for k, v in os.environ.items() if k.startswith("RAY_") and k not in saved}
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        # a lambda travels by value (this module cannot be imported in a worker)
        raylet = ray.get(ray.remote(num_cpus=0)(lambda: os.getppid()).remote())
        # `--address auto` joins the cluster RAY_ADDRESS names, as after `ray start`; one on
        # loopback only is reached with the switch that started it (else Ray would swap
        # 127.0.0.1 for the machine's address, where nothing listens)
        joins["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        joins["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        yield Cluster(raylet, joins)
    finally:
        ray.shutdown()


@pytest.fixture
def server(cluster: Cluster, server: WireServer, monkeypatch: pytest.MonkeyPatch) -> WireServer:
    # the driver compiles the chain too, with its own key: never the one the workers send
    monkeypatch.setenv("OPENAI_API_KEY", DRIVER_KEY)
    return server


def ref(server: WireServer, timeout: float = 0.5) -> dict[str, Any]:
    base = server.url + "/v1"
    return {
        "provider": "openai",
        "name": "gpt-4o-mini",
        "openai_api_base": base,
        "timeout": timeout,
    }


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "q": f"pregunta {i}"} for i in range(n)]


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def fresh_request_of(pid: int, server: WireServer, within: float = 0.15) -> int:
    """How many chat requests the server is answering, if one of them came from process
    ``pid`` less than ``within`` s ago (told by its client port); else 0."""
    import psutil

    now = time.monotonic()
    with server._lock:
        ports = {port for port, at in server.answering.items() if now - at < within}
        in_flight = server.in_flight
    if not ports:
        return 0
    server_port = server._httpd.server_address[1]
    try:
        # only its connections to the server: a port of its others (to Ray's own processes)
        # may be the same number as another process's connection to the server
        mine = {
            c.laddr.port
            for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.raddr and c.raddr.port == server_port
        }
    except psutil.Error:
        return 0
    return in_flight if ports & mine else 0


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def listening(port: int) -> list[str]:
    """The local addresses (hex, as /proc/net shows them) of the sockets listening on
    ``port``, IPv4 and IPv6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, ::ffff:127.0.0.1


def test_the_local_runtime_listens_on_loopback_only(cluster: Cluster) -> None:
    # Ray on Linux swaps 127.0.0.1 for the machine's address and listens on every interface
    # (address 0 / ::), unless started as --address local starts it
    node, gcs = ray.nodes()[0], cluster.env["RAY_ADDRESS"]
    assert gcs.startswith("127.0.0.1:") and node["NodeManagerAddress"] == "127.0.0.1"
    ports = [int(gcs.rsplit(":", 1)[1]), node["NodeManagerPort"], node["ObjectManagerPort"]]
    for port in ports:
        addresses = listening(port)
        assert addresses and set(addresses) <= LOOPBACK, (port, addresses)
    assert ray_engine.connect("local") is False  # an initialized Ray is joined, not restarted


def test_twenty_percent_faults_every_row_once_and_keys_nowhere(
    server: WireServer, tmp_path: Path
) -> None:
    server.fault_rate = 0.2
    server.timeout_sleep = 1.0  # past the client's 0.5 s timeout
    chain = load_chain(write(tmp_path, CHAIN), model=ref(server))
    out = tmp_path / "out.jsonl"
    # three rows fail on their own (an empty input): recorded with their error, the batch goes on
    todo = [*rows(150), *({"id": f"vacia{i}", "q": None} for i in range(3))]
    report = run_batch(chain, todo, out, engine="ray", workers=2, concurrency=8)
    assert (report.done, report.failed, report.errors) == (150, 3, {"InputError": 3})
    faults = Counter(r.fault for r in server.requests)
    assert set(faults) == {None, "rate", "server", "timeout", "malformed", "drop"}, faults
    assert sum(n for kind, n in faults.items() if kind) > 20  # ~20% of ~190 requests
    got = records(out)
    assert Counter(r["id"] for r in got) == Counter(r["id"] for r in todo)  # each exactly once
    for record in got:
        if record["id"].startswith("vacia"):
            assert record["output"] is None and record["error"]["type"] == "InputError"
            message = f"row {record['id']}: column 'q' is empty (or null)"
            assert record["error"]["message"].startswith(message)
        else:
            assert record["error"] is None
            assert record["output"] == f"eco: {record['inputs']['q']}"
            assert record["id"] == "r" + record["inputs"]["q"].split()[-1]
    # the workers sent the key of their own environment; the driver's travelled nowhere
    assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {SECRET}"}
    assert SECRET not in out.read_text() and DRIVER_KEY not in out.read_text()


def test_a_worker_killed_mid_run_is_restarted_and_no_row_is_lost_or_duplicated(
    server: WireServer, tmp_path: Path
) -> None:
    server.delay = 0.3  # rows stay in flight long enough to be killed in the middle
    chain = load_chain(write(tmp_path, CHAIN), model=ref(server, timeout=5))
    out = tmp_path / "out.jsonl"
    killed: list[int] = []

    def kill_one(pids: list[int]) -> None:
        assert len(set(pids)) == 2

        def later() -> None:
            # kill the worker while one of *its own* requests has just reached the server
            # (the server's in-flight count alone may all be the other worker's rows)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                in_flight = fresh_request_of(pids[0], server) if len(server.requests) >= 8 else 0
                if in_flight:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(in_flight)
                    return
                time.sleep(0.005)

        threading.Thread(target=later, daemon=True).start()
        killed.append(pids[0])

    report = run_batch(
        chain, rows(40), out, engine="ray", workers=2, concurrency=4, on_workers=kill_one
    )
    assert len(killed) == 2, "the worker was never killed mid-run"
    pid, in_flight = killed
    assert not alive(pid) and in_flight >= 1
    assert (report.done, report.failed) == (40, 0)
    got = records(out)
    assert Counter(r["id"] for r in got) == Counter(r["id"] for r in rows(40))
    assert all(r["output"] == f"eco: {r['inputs']['q']}" for r in got)
    # the rows the dead worker was running were sent again by its successor
    assert len(server.requests) > 40


POISON = '''\
import os
import signal


def veneno(x: str) -> str:
    """Kills the process that runs it."""
    os.kill(os.getpid(), signal.SIGKILL)
    return x
'''


class PoisonServer(WireServer):
    """Asks for the tool that kills its caller whenever the question is 'veneno', at once; the
    other questions are answered after ``slow`` seconds (so they are in flight when it kills)."""

    slow = 0.0

    def _reply_for(self, last_user: str) -> str | ToolCall:
        if last_user == "veneno":
            return ToolCall("veneno", {"x": "1"})
        time.sleep(self.slow)
        return f"eco: {last_user}"


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_row_that_kills_its_worker_every_time_is_recorded_failed(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, concurrency: int
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", DRIVER_KEY)
    (tmp_path / "venenos").mkdir()
    (tmp_path / "venenos" / "__init__.py").write_text("")
    (tmp_path / "venenos" / "herramientas.py").write_text(POISON)
    text = "inputs: {q: x}\nprompt: '{q}'\ntools: [venenos.herramientas:veneno]\n"
    # the poisoned row among others: alone on its worker (concurrency 1), or sent with 3 others
    # at a time, which die with it and are run again (each innocent row dies at most once: it
    # is run again with no other row that took a worker down)
    others = rows(5 if concurrency == 1 else 15)
    todo = [others[0], {"id": "veneno", "q": "veneno"}, *others[1:]]
    with PoisonServer() as server:
        server.slow = 0.0 if concurrency == 1 else 0.5
        chain = load_chain(
            write(tmp_path, text), model=ref(server, timeout=5), allow_imports=["venenos"]
        )
        out = tmp_path / "out.jsonl"
        report = run_batch(chain, todo, out, engine="ray", workers=2, concurrency=concurrency)
        asked = Counter(r.body["messages"][-1]["content"] for r in server.requests)
    assert (report.done, report.failed) == (len(others), 1)
    assert report.errors == {"WorkerDiedError": 1}
    # tried once on each of ROW_ATTEMPTS lives of its worker, then given up: not for ever
    assert asked.pop("veneno") == ray_engine.ROW_ATTEMPTS == 3
    if concurrency > 1:  # rows were in flight beside it when it killed: run again, once
        assert max(asked.values()) == 2, asked
    got = {r["id"]: r for r in records(out)}
    assert sorted(got) == sorted(r["id"] for r in todo)
    message = "the Ray worker running this row was lost on each of its 3 attempts"
    assert got["veneno"]["error"]["message"].startswith(message)
    assert got["veneno"]["inputs"] == {"q": "veneno"} and got["veneno"]["output"] is None
    assert all(got[r["id"]]["output"] == f"eco: {r['q']}" for r in others)


def test_a_worker_returns_its_finished_rows_together_and_says_which_it_lacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a worker's side of a call, in this process (no Ray): rows finished while the driver was
    # away come back together, a slow row does not hold back a finished one, tickets a former
    # life of the worker had come back at once as lost, and a call the driver gave up on gives
    # way to the next
    from eslabon.interfaces import batch

    gates: dict[str, asyncio.Event] = {}

    async def run_row(chain: Any, row: dict[str, Any], *args: Any) -> dict[str, Any]:
        await gates[row["id"]].wait()
        return {"id": row["id"]}

    monkeypatch.setattr(batch, "run_row", run_row)

    async def scenario() -> None:
        worker = ray_engine._Worker(None)  # type: ignore[arg-type]
        worker.chain = "compiled"  # as after its first call
        gates.update({k: asyncio.Event() for k in "abcd"})
        rows = [(1, {"id": "a"}), (2, {"id": "b"}), (3, {"id": "c"})]
        call = asyncio.ensure_future(worker.step(rows, []))
        await asyncio.sleep(0.05)
        assert not call.done()  # nothing finished yet
        gates["a"].set()
        gates["b"].set()
        done, lost = await call
        assert [ticket for ticket, _, _ in done] == [1, 2] and lost == []
        # c still runs; 9 was sent to a former life of this worker
        done, lost = await asyncio.wait_for(worker.step([(4, {"id": "d"})], [3, 9]), 1)
        assert (done, lost) == ([], [9])
        stale = asyncio.ensure_future(worker.step([], [3, 4]))
        await asyncio.sleep(0.05)
        call = asyncio.ensure_future(worker.step([], [3, 4]))
        assert await asyncio.wait_for(stale, 1) == ([], [])
        gates["d"].set()
        done, lost = await asyncio.wait_for(call, 1)
        assert [ticket for ticket, _, _ in done] == [4] and lost == []
        assert list(worker.held) == [3]
        gates["c"].set()
        await asyncio.sleep(0)

    asyncio.run(scenario())


def gated_rows(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, asyncio.Event], list[str]]:
    """``run_row`` faked for a worker in this process: each row waits for its gate, then row
    ``x`` raises an error outside its own (as an unwritable run log would), row ``parado`` is
    stopped by ``CancelledError``, the others finish. Returns the gates and the rows started."""
    from eslabon.interfaces import batch

    gates: dict[str, asyncio.Event] = {}
    started: list[str] = []

    async def run_row(chain: Any, row: dict[str, Any], *args: Any) -> dict[str, Any]:
        started.append(row["id"])
        await gates.setdefault(row["id"], asyncio.Event()).wait()
        if row["id"] == "x":
            raise RuntimeError("boom")
        if row["id"] == "parado":
            raise asyncio.CancelledError
        return {"id": row["id"]}

    monkeypatch.setattr(batch, "run_row", run_row)
    return gates, started


def new_worker() -> ray_engine._Worker:
    worker = ray_engine._Worker(None)  # type: ignore[arg-type]
    worker.chain = "compiled"  # as after its first call
    return worker


def test_a_worker_returns_again_the_rows_of_a_reply_the_driver_never_got(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a reply lost on the way (Ray failed the call, the worker lived): the driver, probing,
    # still holds its tickets; the worker returns those rows again rather than calling them
    # lost, which would cost them an attempt as if the worker had died
    gates, _ = gated_rows(monkeypatch)

    async def scenario() -> None:
        worker = new_worker()
        call = asyncio.ensure_future(worker.step([(1, {"id": "a"}), (2, {"id": "b"})], []))
        await asyncio.sleep(0.01)
        gates["a"].set()
        done, _ = await asyncio.wait_for(call, 1)
        assert [ticket for ticket, _, _ in done] == [1]
        done, lost = await asyncio.wait_for(worker.step([], [1, 2]), 1)  # the reply was lost
        assert [(ticket, record) for ticket, record, _ in done] == [(1, {"id": "a"})]
        assert lost == []
        done, lost = await asyncio.wait_for(worker.step([], [1, 2]), 1)  # that one too
        assert [ticket for ticket, _, _ in done] == [1] and lost == []
        gates["b"].set()
        done, lost = await asyncio.wait_for(worker.step([], [2]), 1)
        assert [ticket for ticket, _, _ in done] == [2] and lost == []
        # the driver got that reply: 1, returned two calls ago, is no longer this worker's
        done, lost = await asyncio.wait_for(worker.step([], [1]), 1)
        assert done == [] and lost == [1]

    asyncio.run(scenario())


def test_a_worker_that_fails_returns_its_finished_rows_then_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # row x fails outside its own error while no call is waiting, after y finished: y (it ran,
    # it cost) comes back first, the worker starts no more rows, and the next call raises
    gates, started = gated_rows(monkeypatch)

    async def scenario() -> None:
        worker = new_worker()
        gates["c"] = asyncio.Event()
        gates["c"].set()
        rows = [(1, {"id": "c"}), (2, {"id": "y"}), (3, {"id": "x"})]
        done, _ = await asyncio.wait_for(worker.step(rows, []), 1)
        assert [ticket for ticket, _, _ in done] == [1]
        gates["y"].set()
        await asyncio.sleep(0.01)
        gates["x"].set()
        await asyncio.sleep(0.01)
        done, lost = await asyncio.wait_for(worker.step([(4, {"id": "z"})], [2, 3]), 1)
        assert [ticket for ticket, _, _ in done] == [2] and lost == []
        with pytest.raises(RuntimeError, match="boom"):
            await asyncio.wait_for(worker.step([], [3, 4]), 1)
        assert started == ["c", "y", "x"]  # z was not started

    asyncio.run(scenario())


def test_a_row_stopped_by_cancelled_error_stops_the_batch_rather_than_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # run_row lets CancelledError through (it stops an in-process batch); a worker's only row
    # stopped so must not leave its call waiting for ever
    gates, _ = gated_rows(monkeypatch)

    async def scenario() -> None:
        worker = new_worker()
        gates["parado"] = asyncio.Event()
        gates["parado"].set()
        with pytest.raises(EslabonRuntimeError, match=r"'parado'.* stopped by CancelledError"):
            await asyncio.wait_for(worker.step([(1, {"id": "parado"})], []), 1)

    asyncio.run(scenario())


class FakeRay:
    """Ray as the driver's bookkeeping (:class:`ray_engine._Feed`) uses it, with the calls to
    the workers faked: each call is kept, and gives what the test sets."""

    def __init__(self) -> None:
        self.calls: list[FakeCall] = []
        self.killed: list[int] = []

    def actors(self, count: int) -> list[FakeActor]:
        return [FakeActor(self, worker) for worker in range(count)]

    @staticmethod
    def get(call: FakeCall) -> Any:
        if isinstance(call.result, Exception):
            raise call.result
        assert call.result is not None, "a call collected before it gave anything"
        return call.result

    def kill(self, actor: FakeActor, no_restart: bool) -> None:
        assert no_restart
        self.killed.append(actor.worker)

    def ticket(self, row_id: str) -> int:
        """The ticket ``row_id`` was last sent with."""
        return [t for call in self.calls for t, row in call.rows if row["id"] == row_id][-1]


class FakeActor:
    def __init__(self, ray: FakeRay, worker: int) -> None:
        self.ray, self.worker, self.step = ray, worker, self

    def remote(self, rows: list[tuple[int, dict[str, Any]]], held: list[int]) -> FakeCall:
        self.ray.calls.append(FakeCall(self.ray, self.worker, rows, held))
        return self.ray.calls[-1]


class FakeCall:
    """A worker call the driver made (:meth:`ray_engine._Worker.step`), and what it gives."""

    def __init__(
        self, ray: FakeRay, worker: int, rows: list[tuple[int, dict[str, Any]]], held: list[int]
    ) -> None:
        self.ray, self.worker, self.rows, self.held = ray, worker, rows, held
        self.result: Any = None

    def ids(self) -> list[str]:
        return [row["id"] for _, row in self.rows]

    def back(self, *ids: str, lost: tuple[str, ...] = ()) -> None:
        """The worker returns the rows named ``ids`` (as last sent), finished, and says it
        does not have the rows ``lost``."""
        done = [(self.ray.ticket(i), {"id": i}, None) for i in ids]
        self.result = (done, [self.ray.ticket(i) for i in lost])


UNAVAILABLE = ray.exceptions.ActorUnavailableError("the actor is restarting", None)
GONE = ray.exceptions.ActorDiedError()  # what Ray raises once it cannot restart a worker


class Driver:
    """A :class:`ray_engine._Feed` on :class:`FakeRay`, and the ids it has written."""

    def __init__(self, ray: FakeRay, rows: int, workers: int, concurrency: int) -> None:
        self.ray = ray
        self.written: list[str] = []
        todo = [{"id": f"r{i}"} for i in range(rows)]
        self.feed = ray_engine._Feed(ray.actors(workers), todo, concurrency, self.died)
        assert self.feed.send()

    @staticmethod
    def died(row: dict[str, Any]) -> dict[str, Any]:
        return {"id": row["id"], "error": "died"}

    def step(self, call: FakeCall) -> FakeCall:
        """Collect ``call``, send again: the last call made."""
        self.written.extend(record["id"] for record, _ in self.feed.collect(call))
        self.feed.send()
        return self.ray.calls[-1]


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> FakeRay:
    fake = FakeRay()
    monkeypatch.setattr(ray_engine, "_ray", lambda: fake)
    return fake


def test_rows_lost_with_a_worker_are_run_again_and_never_written_twice(fake_ray: FakeRay) -> None:
    # the driver's bookkeeping alone: which rows go where, that a call Ray fails without an
    # answer costs nothing until the worker says which rows it lacks, and what a death costs
    driver = Driver(fake_ray, rows=6, workers=2, concurrency=2)
    a, b = fake_ray.calls
    assert (a.worker, a.ids(), b.worker, b.ids()) == (0, ["r0", "r1"], 1, ["r2", "r3"])
    t0, t1 = (ticket for ticket, _ in a.rows)
    # Ray fails worker 0's call (dead, restarting, or unreachable: it cannot say which): no row
    # is charged, and the worker is only probed, with no rows, until it answers
    a.result = UNAVAILABLE
    a2 = driver.step(a)
    assert (a2.worker, a2.ids(), a2.held) == (0, [], [t0, t1]) and driver.feed.deaths == {}
    # the reply of a probe lost with its node, then the worker still restarting: no charge
    a2.result = ray.exceptions.ObjectLostError("00ff", None, "")
    a3 = driver.step(a2)
    assert (a3.worker, a3.ids(), a3.held) == (0, [], [t0, t1])
    a3.result = UNAVAILABLE
    a4 = driver.step(a3)
    assert (a4.worker, a4.ids(), a4.held) == (0, [], [t0, t1]) and driver.feed.deaths == {}
    # it was alive all along: it returns r0 (and a record whose ticket is not out, dropped)
    a4.back("r0")
    a4.result[0].append((999, {"id": "r0"}, None))
    a5 = driver.step(a4)
    assert driver.written == ["r0"] and (a5.worker, a5.ids(), a5.held) == (0, ["r4"], [t1])
    # now it dies: the call fails, and its next life says it lacks r1 and r4, which lose an
    # attempt; it gets back one of them (one suspect per worker at a time) and a fresh row
    a5.result = UNAVAILABLE
    a6 = driver.step(a5)
    assert a6.ids() == [] and driver.feed.deaths == {}
    a6.back(lost=("r1", "r4"))
    a7 = driver.step(a6)
    assert driver.feed.deaths == {1: 1, 4: 1} and (a7.worker, a7.ids()) == (0, ["r1", "r5"])
    b.back("r2", "r3")
    b2 = driver.step(b)
    assert driver.written == ["r0", "r2", "r3"] and (b2.worker, b2.ids()) == (1, ["r4"])
    # r1 kills worker 0 again, and r5 with it
    a7.result = UNAVAILABLE
    a8 = driver.step(a7)
    a8.back(lost=("r1", "r5"))
    a9 = driver.step(a8)
    assert driver.feed.deaths == {1: 2, 4: 1, 5: 1} and (a9.worker, a9.ids()) == (0, ["r1"])
    # the third time Ray cannot restart it: r1 is recorded failed, worker 0 gets no more
    a9.result = GONE
    made = len(fake_ray.calls)
    driver.step(a9)
    assert len(fake_ray.calls) == made and driver.written[-1] == "r1"
    assert fake_ray.killed == [0] and driver.feed.suspects == deque([5])
    b2.back("r4")
    b3 = driver.step(b2)
    assert (b3.worker, b3.ids()) == (1, ["r5"])
    b3.back("r5")
    driver.written.extend(record["id"] for record, _ in driver.feed.collect(b3))
    assert not driver.feed.send()  # every row done, no call left out
    assert {call.worker for call in fake_ray.calls[made:]} == {1}
    assert driver.feed.deaths == {1: 3, 4: 1, 5: 1}
    assert sorted(driver.written) == [f"r{i}" for i in range(6)]


def test_a_worker_restarting_over_several_calls_costs_its_rows_one_attempt(
    fake_ray: FakeRay,
) -> None:
    # before probing, each call sent to a worker Ray was still restarting failed and charged
    # its rows again, so a row was recorded failed after one real death
    driver = Driver(fake_ray, rows=3, workers=1, concurrency=3)
    (call,) = fake_ray.calls
    for _ in range(ray_engine.ROW_ATTEMPTS + 2):
        call.result = UNAVAILABLE
        call = driver.step(call)
        assert call.ids() == []
    call.back(lost=("r0", "r1", "r2"))
    call = driver.step(call)
    assert driver.written == [] and driver.feed.deaths == {0: 1, 1: 1, 2: 1}
    assert call.ids() == ["r0"]  # one suspect at a time


def test_a_worker_gone_for_good_gets_no_more_rows_and_with_none_left_the_batch_stops(
    fake_ray: FakeRay, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(ray_engine, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    driver = Driver(fake_ray, rows=4, workers=2, concurrency=1)
    a, b = fake_ray.calls
    # worker 0 answers no call for PROBE_SECONDS: given up (and killed: it may be alive)
    a.result = UNAVAILABLE
    a2 = driver.step(a)
    clock[0] += ray_engine.PROBE_SECONDS
    a2.result = UNAVAILABLE
    a3 = driver.step(a2)  # just within the bound: probed again
    assert a3.worker == 0 and a3.ids() == [] and fake_ray.killed == []
    clock[0] += 1
    a3.result = UNAVAILABLE
    made = len(fake_ray.calls)
    driver.step(a3)
    assert fake_ray.killed == [0] and driver.feed.deaths == {0: 1}
    assert len(fake_ray.calls) == made  # worker 1 is busy, worker 0 gone
    # worker 1 cannot be restarted: no worker is left, and the batch stops rather than hang
    b.result = GONE
    with pytest.raises(EslabonRuntimeError, match=r"every Ray worker is gone.*4 rows were not"):
        driver.step(b)
    assert fake_ray.killed == [0, 1] and driver.feed.deaths == {0: 1, 1: 1}
    assert driver.written == []


def test_the_driver_killed_with_dash_nine_then_resume(
    cluster: Cluster, server: WireServer, tmp_path: Path
) -> None:
    server.delay = 0.1
    server.hold_after = 40  # the batch cannot finish before it is killed
    inputs = tmp_path / "rows.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows(200)), encoding="utf-8")
    chain, out = write(tmp_path, CHAIN), tmp_path / "out.jsonl"
    args = [EXE, "batch", str(chain), str(inputs), "-o", str(out), "-c", "4", "-m"]
    args += [json.dumps(ref(server, timeout=5)), "--engine", "ray", "--address", "auto"]
    args += ["--workers", "2"]
    env = {**os.environ, **cluster.env, "OPENAI_API_KEY": DRIVER_KEY}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while (not out.exists() or len(out.read_bytes().splitlines()) < 20) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    first_out, first_err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, first_err.decode()
    server.hold_after = None
    server.released.set()  # the held requests are answered to no one: their rows run again
    # Ray ends the workers of a driver that died: none goes on calling the model
    cluster.wait_until_no("ray::_Worker")
    before = len(records(out))
    assert 20 <= before <= 40

    again = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"{before} skipped" in again.stdout
    got = records(out)
    assert Counter(r["id"] for r in got) == Counter(r["id"] for r in rows(200))
    assert all(r["error"] is None for r in got)
    assert "200/200 rows (0 failed" in again.stderr  # the progress counts every worker's rows
    assert "not logged" not in again.stderr  # the workers wrote their rows to the run log
    shown = [out.read_text(), again.stdout, again.stderr, first_out.decode(), first_err.decode()]
    assert not any(SECRET in text or DRIVER_KEY in text for text in shown)


def test_the_rate_is_global_across_two_workers(
    cluster: Cluster, server: WireServer, tmp_path: Path
) -> None:
    # no faults here: a timeout a loaded machine could hit (0.5 s) would send a row twice
    chain = load_chain(write(tmp_path, CHAIN), model=ref(server, timeout=5))
    # an earlier test's workers are ended by Ray in the background: gone before these start
    cluster.wait_until_no("ray::_Worker")
    started: list[list[int]] = []

    def up(pids: list[int]) -> None:
        # the processes looked for below are found while the batch runs (not a vacuous check)
        assert sorted(pids) == sorted(cluster.workers("ray::_Worker"))
        deadline = time.monotonic() + 10
        while not cluster.workers("ray::_Schedule"):
            assert time.monotonic() < deadline, "no schedule actor"
            time.sleep(0.05)
        started.append(pids)

    report = run_batch(
        chain,
        rows(16),
        tmp_path / "out.jsonl",
        engine="ray",
        workers=2,
        concurrency=4,
        rate=10.0,
        on_workers=up,
    )
    assert report.done == 16 and len(set(started[0])) == 2
    times = sorted(r.at for r in server.requests)
    assert len(times) == 16
    # a lower bound only, as in test_batch.py: two workers each keeping 10/s on their own would
    # send the 16 requests in ~0.75 s; together at 10/s they need 15 intervals
    assert times[-1] - times[0] >= 15 * 0.1 * 0.9
    # the batch's workers and its rate's schedule end with it (in a driver that goes on)
    cluster.wait_until_no("ray::_Worker", 10)
    cluster.wait_until_no("ray::_Schedule", 10)


def test_the_result_file_is_the_in_process_engines(server: WireServer, tmp_path: Path) -> None:
    chain = load_chain(write(tmp_path, CHAIN), model=ref(server))
    todo = [*rows(30), {"id": "vacia", "q": None}]
    seen: list[tuple[int, int]] = []
    run_batch(chain, todo, tmp_path / "process.jsonl")
    run_batch(
        chain,
        todo,
        tmp_path / "ray.jsonl",
        engine="ray",
        workers=2,
        concurrency=4,
        on_row=lambda record, report: seen.append((report.done, report.failed)),
    )
    keys = ("id", "inputs", "output", "steps", "error", "model", "models")

    def kept(name: str) -> list[tuple[str, ...]]:
        got = records(tmp_path / name)
        return sorted(tuple(json.dumps(r[k], sort_keys=True) for k in keys) for r in got)

    assert kept("ray.jsonl") == kept("process.jsonl")
    assert len(kept("ray.jsonl")) == 31
    # the progress saw every row of both workers, one at a time
    assert [done + failed for done, failed in seen] == list(range(1, 32)) and seen[-1] == (30, 1)


def test_a_chain_that_cannot_travel_is_refused_before_ray_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    def no_ray(address: str) -> bool:
        raise AssertionError("Ray was asked to start")

    monkeypatch.setattr(ray_engine, "connect", no_ray)
    model = GenericFakeChatModel(messages=iter(["hola"]))
    chain = load_chain(write(tmp_path, CHAIN), model=model)
    out = tmp_path / "out.jsonl"
    with pytest.raises(UserError, match="runs on a model object, which cannot be sent to Ray"):
        run_batch(chain, rows(2), out, engine="ray")
    assert not out.exists()


def test_an_error_in_a_worker_arrives_as_itself(
    server: WireServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the driver has an Anthropic key, the workers' environment has none: each worker fails to
    # compile the chain, and the batch stops with that error as the in-process engine would
    monkeypatch.setenv("ANTHROPIC_API_KEY", DRIVER_KEY)
    model = {"provider": "anthropic", "name": "claude-haiku-4-5", "anthropic_api_url": server.url}
    chain = load_chain(write(tmp_path, CHAIN), model=model)
    out = tmp_path / "out.jsonl"
    with pytest.raises(MissingCredentialsError) as raised:
        run_batch(chain, rows(4), out, engine="ray", workers=2, concurrency=2)
    error = raised.value
    assert type(error) is MissingCredentialsError  # not Ray's RayTaskError(...) wrapper
    assert str(error) == str(MissingCredentialsError("anthropic", "ANTHROPIC_API_KEY"))
    assert (error.provider, error.env_var) == ("anthropic", "ANTHROPIC_API_KEY")
    assert server.requests == [] and out.read_text() == ""
    assert DRIVER_KEY not in str(error)


def test_the_throughput_benchmark_compares_the_engines() -> None:
    # bench/batch_throughput.py --engine ray, quick (100 rows): it runs and prints its figure
    # last (timings are not asserted); it starts its own runtime, as --address local does
    env = {**os.environ, "BENCH_QUICK": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "batch_throughput.py"), "--engine", "ray"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1].startswith("ray_speedup=") and float(lines[-1].split("=")[1]) > 0
    for label in ("20 in flight: in-process", "40 in flight: in-process", "ray start-up:"):
        assert any(line.startswith(label) for line in lines), (label, lines)
