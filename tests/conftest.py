"""Test guards (no network but loopback, no real keys, no inherited model override) and the
shared fixtures: the loopback provider server and a Chroma server. Helpers: tests/helpers.py."""

from __future__ import annotations

import socket
from collections.abc import Iterator
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


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import shutil
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    exe = Path(sys.executable).parent / "chroma"
    if not exe.exists() and shutil.which("chroma") is None:
        pytest.skip("the chroma CLI is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    folder = tmp_path_factory.mktemp("chroma_server")
    proc = subprocess.Popen(
        [str(exe), "run", "--path", str(folder), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("chroma run did not start") from None
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
