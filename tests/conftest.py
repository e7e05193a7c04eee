"""Test guards (no network but loopback, no real keys, no inherited model override) and the
shared fixtures: the loopback provider server and a Chroma server. Helpers: tests/helpers.py."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from wire_server import WireServer

_LOOPBACK = ("127.", "::1", "localhost")
_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    host = address[0] if isinstance(address, tuple) else address
    if self.family == socket.AF_UNIX or str(host).startswith(_LOOPBACK):
        return _real_connect(self, address)
    raise RuntimeError(f"tests must not use the network (tried to connect to {address!r})")


_real_getaddrinfo = socket.getaddrinfo


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host is None or str(host).startswith(_LOOPBACK):
        return _real_getaddrinfo(host, *args, **kwargs)
    raise RuntimeError(f"tests must not use the network (tried to resolve {host!r})")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", _guarded_getaddrinfo)


@pytest.fixture(scope="session")
def _run_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runlog") / "logs.sqlite"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, _run_log: Path) -> Iterator[None]:
    from eslabon.chat.modelspec import PROVIDERS

    monkeypatch.delenv("ESLABON_MODEL", raising=False)
    # commands the tests run keep their run log here, never in the repository's .eslabon/
    monkeypatch.setenv("ESLABON_LOGS", str(_run_log))
    # a developer's own tracing setup (OTEL_EXPORTER_OTLP_ENDPOINT, ...) is not the tests'
    import os

    for name in [n for n in os.environ if n.startswith(("OTEL_", "LANGSMITH_", "LANGCHAIN_"))]:
        monkeypatch.delenv(name)
    for info in PROVIDERS.values():
        if info.env_var:
            monkeypatch.delenv(info.env_var, raising=False)
    yield


@pytest.fixture
def server() -> Iterator[WireServer]:
    """A loopback server speaking OpenAI's, Gemini's, Anthropic's and Ollama's protocols
    (tests/wire_server.py), new for each test."""
    with WireServer() as wire:
        yield wire


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serving(args: list[str], ready: str, name: str, log: Path) -> Iterator[None]:
    """``args`` run as a server until the block ends; ``ready``: a URL that answers once it
    serves (waited for, at most 60 s; its output, in ``log``, says why it did not start)."""
    import subprocess
    import time
    import urllib.request

    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(ready, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start:\n{log.read_text()}") from None
                time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # it would not stop: no server outlives the tests
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    import shutil
    import sys

    exe = Path(sys.executable).parent / "chroma"
    if not exe.exists() and shutil.which("chroma") is None:
        pytest.skip("the chroma CLI is not installed")
    port = _free_port()
    folder = tmp_path_factory.mktemp("chroma_server")
    args = [str(exe), "run", "--path", str(folder), "--host", "127.0.0.1", "--port", str(port)]
    ready = f"http://127.0.0.1:{port}/api/v2/heartbeat"
    with _serving(args, ready, "chroma run", folder.parent / "chroma_server.log"):
        yield port


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real OpenAI-compatible server: llama_cpp.server serving the bundled GGUF on
    127.0.0.1; its ``/v1`` URL."""
    import os
    import sys

    pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server]")
    from eslabon.chat.local import bundled_model_path

    port = _free_port()
    args = [
        *(sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_model_path())),
        *("--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"),
        *("--n_threads", str(os.cpu_count() or 1)),
    ]
    url = f"http://127.0.0.1:{port}/v1"
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    with _serving(args, f"{url}/models", "llama_cpp.server", log):
        yield url
