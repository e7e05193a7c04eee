"""A provider that cannot be reached: a clear error naming the URL, quickly, for every provider.

Only loopback: a port nothing listens on (refused), and a listener whose accept queue is full
(the connection never completes, as with a server behind a firewall that drops packets).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eslabon import load_chain
from eslabon.chat.provider_errors import translate_model_error
from eslabon.errors import ProviderConnectionError, ProviderUnavailableError
from helpers import CHAINS

EXE = str(Path(sys.executable).parent / "eslabon")
KEYS = {"OPENAI_API_KEY": "sk-x", "ANTHROPIC_API_KEY": "sk-x", "GOOGLE_API_KEY": "k-x"}


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose connections never complete (a full accept queue drops SYNs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.05)
    probe = socket.socket()
    probe.settimeout(0.2)
    try:
        probe.connect(("127.0.0.1", port))
        pytest.skip("this system completes connections past a full accept queue")
    except (TimeoutError, BlockingIOError):
        pass
    finally:
        probe.close()
    yield port
    for sock in (*fillers, server):
        sock.close()


def ref(provider: str, port: int) -> dict[str, Any]:
    """The provider pointed at loopback, with its SDK's default retries."""
    base = f"http://127.0.0.1:{port}"
    names = {"ollama": "llama3.2", "google_genai": "gemini-2.5-flash"}
    names |= {"openai": "gpt-4o-mini", "anthropic": "claude-x"}
    url = base + "/v1" if provider == "openai" else base
    return {"provider": provider, "name": names[provider], "base_url": url}


def attempt(chain: Any, how: str, deadline: float = 60.0) -> tuple[BaseException, float]:
    """Call the chain (in a thread: without a connect timeout it would wait minutes); the
    error it raised and how long it took."""
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            if how == "invoke":
                chain.invoke({"nombre": "Ana"})
            elif how == "stream":
                list(chain.stream({"nombre": "Ana"}))
            else:
                asyncio.run(chain.ainvoke({"nombre": "Ana"}))
        except BaseException as exc:
            outcome.append(exc)

    start = time.perf_counter()
    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(deadline)
    elapsed = time.perf_counter() - start
    assert not worker.is_alive(), f"still waiting after {deadline} s"
    assert outcome, "the call succeeded"
    assert isinstance(outcome[0], ProviderUnavailableError), repr(outcome[0])
    return outcome[0], elapsed


@pytest.mark.parametrize("how", ["invoke", "stream", "ainvoke"])
@pytest.mark.parametrize("provider", ["ollama", "google_genai"])
def test_a_refused_connection_fails_at_once_naming_the_url(
    provider: str, how: str, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var, value in KEYS.items():
        monkeypatch.setenv(var, value)
    chain = load_chain(CHAINS / "hola.yaml", model=ref(provider, closed_port))
    error, elapsed = attempt(chain, how)
    # before: a raw httpx.ConnectError naming no URL; Gemini's SDK retried it for ~35 s
    assert isinstance(error, ProviderConnectionError)
    assert elapsed < 10, elapsed  # not Gemini's ~35 s of retries (a loose bound: busy machines)
    message = str(error)
    assert f"could not connect to {provider}:" in message
    assert f"at http://127.0.0.1:{closed_port}/" in message and "Connection refused" in message
    assert error.url is not None and error.url.startswith(f"http://127.0.0.1:{closed_port}/")
    if provider == "ollama":
        assert "is Ollama running?" in message and "ollama serve" in message


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_openai_and_anthropic_connection_errors_name_the_url_too(
    provider: str, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var, value in KEYS.items():
        monkeypatch.setenv(var, value)
    chain = load_chain(CHAINS / "hola.yaml", model={**ref(provider, closed_port), "max_retries": 0})
    error, _ = attempt(chain, "invoke")
    assert isinstance(error, ProviderConnectionError)
    assert f"at http://127.0.0.1:{closed_port}/" in str(error)


@pytest.mark.parametrize("provider", ["ollama", "google_genai"])
def test_a_connection_that_never_completes_times_out(
    provider: str, silent_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import eslabon.chat.transport

    monkeypatch.setattr(eslabon.chat.transport, "CONNECT_TIMEOUT", 0.3)
    monkeypatch.setenv("GOOGLE_API_KEY", "k-x")
    chain = load_chain(CHAINS / "hola.yaml", model=ref(provider, silent_port))
    for how in ("invoke", "ainvoke"):
        error, elapsed = attempt(chain, how, deadline=5)  # before: no connect timeout at all
        assert isinstance(error, ProviderConnectionError)
        assert "no connection within 0.3 s" in str(error)
        assert elapsed < 4, elapsed  # the 0.3 s bound, not minutes (loose: busy machines)


def test_a_timeout_the_model_sets_is_kept(silent_port: int) -> None:
    chain = load_chain(CHAINS / "hola.yaml", model={**ref("ollama", silent_port), "timeout": 0.2})
    error, elapsed = attempt(chain, "invoke", deadline=5)
    assert "no connection within 0.2 s" in str(error) and elapsed < 4


def test_the_command_line_names_the_url(closed_port: int) -> None:
    model = f'{{provider: ollama, name: llama3.2, base_url: "http://127.0.0.1:{closed_port}"}}'
    done = subprocess.run(
        [EXE, "run", str(CHAINS / "hola.yaml"), "-m", model],
        capture_output=True,
        text=True,
        env={**os.environ, "ESLABON_MODEL": ""},
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(
        f"error: could not connect to ollama:llama3.2 at http://127.0.0.1:{closed_port}/api/chat"
    ), done.stderr
    assert "ollama serve" in done.stderr and "ConnectError" not in done.stderr


def test_a_chains_retry_retries_a_connection_error() -> None:
    from eslabon.chat.provider_errors import connection_error
    from eslabon.chat.resilience import is_retryable

    assert is_retryable(connection_error("ollama", "ollama:x", "http://127.0.0.1:9/", "refused"))


def test_the_ollama_clients_own_connection_error_is_mapped() -> None:
    # ollama's non-streaming calls raise a bare ConnectionError (no URL) in place of httpx's
    try:
        raise ConnectionError("Failed to connect to Ollama.")
    except ConnectionError as exc:
        mapped = translate_model_error(exc, "ollama", "llama3.2")
    assert isinstance(mapped, ProviderConnectionError)
    assert "could not connect to ollama:llama3.2" in str(mapped) and "ollama serve" in str(mapped)


@pytest.mark.parametrize("provider", ["ollama", "google_genai"])
def test_embeddings_connection_errors_name_the_url_too(
    provider: str, closed_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from helpers import write

    monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("GOOGLE_API_KEY", "k-x")
    name = {"ollama": "nomic-embed-text", "google_genai": "gemini-embedding-001"}[provider]
    from eslabon.rag.retrieval import build_embeddings

    chain = write(
        tmp_path,
        f"embeddings: {provider}:{name}\ninputs: {{nombre: x}}\n"
        "retriever: {type: memory, documents: [hola]}\nprompt: '{context}'\n",
    )
    embeddings = build_embeddings(f"{provider}:{name}")
    for call in (
        lambda: load_chain(chain, model="fake:echo"),  # a memory retriever embeds its documents
        lambda: embeddings.embed_query("hola"),
        lambda: asyncio.run(embeddings.aembed_documents(["hola"])),
    ):
        # before: a bare ConnectError (ollama), or Gemini's own error around it, no URL
        with pytest.raises(ProviderConnectionError) as caught:
            call()
        assert f"could not connect to {provider}:{name} at http://127.0.0.1:{closed_port}/" in (
            str(caught.value)
        )
