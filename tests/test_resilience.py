"""retry / fallbacks / timeout, against the loopback OpenAI-protocol server."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from eslabon import KeyRejectedError, ProviderUnavailableError, load_chain
from eslabon.chainfile.loader import validate_file
from eslabon.chat.resilience import (
    RETRY_AFTER_MAX,
    _RetryAfterWait,
    is_retryable,
    retry_after_seconds,
)
from helpers import unmetered, unmetered_chunks, write
from wire_server import WireServer


@pytest.fixture
def server(server: WireServer, monkeypatch: pytest.MonkeyPatch) -> WireServer:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-resilience-test")  # the shared server, with a key
    return server


def chain_file(tmp_path: Path, server: WireServer, extra: str) -> Path:
    model = f"{{provider: openai, name: gpt-4o-mini, base_url: '{server.url}/v1'}}"
    return write(tmp_path, f"model: {model}\n{extra}prompt: hola\n")


def test_rate_limits_are_retried_honoring_retry_after(server: WireServer, tmp_path: Path) -> None:
    chain = load_chain(chain_file(tmp_path, server, "retry: {attempts: 3, backoff: 0}\n"))
    server.fail_next("rate", retry_after="0")
    server.fail_next("server")
    assert chain.invoke({})["output"] == "eco: hola"
    assert len(server.requests) == 3


def test_retries_give_up_after_the_attempts(server: WireServer, tmp_path: Path) -> None:
    chain = load_chain(chain_file(tmp_path, server, "retry: {attempts: 2, backoff: 0}\n"))
    for _ in range(3):
        server.fail_next("server")
    with pytest.raises(ProviderUnavailableError):
        chain.invoke({})
    assert len(server.requests) == 2


def test_a_refused_key_is_never_retried(server: WireServer, tmp_path: Path) -> None:
    chain = load_chain(chain_file(tmp_path, server, "retry: {attempts: 5, backoff: 0}\n"))
    server.fail_next("auth")
    with pytest.raises(KeyRejectedError):
        chain.invoke({})
    assert len(server.requests) == 1


def test_sdk_retries_are_off_when_eslabon_retries(server: WireServer, tmp_path: Path) -> None:
    chain = load_chain(chain_file(tmp_path, server, "retry: {attempts: 2}\n"))
    retry: Any = chain.steps[0].model
    assert retry.bound.max_retries == 0
    plain: Any = load_chain(chain_file(tmp_path, server, "")).steps[0].model
    assert plain.max_retries != 0  # the SDK's own default stays without eslabon's retry


def test_streaming_retries_before_the_first_token(server: WireServer, tmp_path: Path) -> None:
    chain = load_chain(chain_file(tmp_path, server, "retry: {attempts: 3, backoff: 0}\n"))
    server.fail_next("rate", retry_after="0")
    chunks = list(chain.stream({}))
    assert [c["output"] for c in unmetered_chunks(chunks)] == ["eco: ", "hola"]
    assert len(server.requests) == 2
    stats = chunks[-1]["stats"]
    assert (stats["attempts"], stats["calls"]) == (2, 1)  # the refused request counts as one


async def test_async_streaming_retries_too(server: WireServer, tmp_path: Path) -> None:
    chain = load_chain(chain_file(tmp_path, server, "retry: {attempts: 3, backoff: 0}\n"))
    server.fail_next("server")
    chunks = [c async for c in chain.astream({})]
    assert [c["output"] for c in unmetered_chunks(chunks)] == ["eco: ", "hola"]
    assert (chunks[-1]["stats"]["attempts"], chunks[-1]["stats"]["calls"]) == (2, 1)
    result = await chain.ainvoke({})
    assert result["output"] == "eco: hola"
    assert (result["stats"]["attempts"], result["stats"]["calls"]) == (1, 1)


def test_fallbacks_take_over_when_the_model_fails(server: WireServer, tmp_path: Path) -> None:
    extra = "fallbacks: [{provider: fake, responses: [respaldo]}]\n"
    chain = load_chain(chain_file(tmp_path, server, extra))
    server.fail_next("server")
    result = chain.invoke({})
    assert result["output"] == "respaldo"
    stats = result["stats"]
    # the primary's failed request and the fallback's answer; the fallback answered
    assert (stats["attempts"], stats["calls"], stats["models"]) == (2, 1, ["fake"])
    server.fail_next("server")
    chunks = list(chain.stream({}))
    assert "".join(c["output"] for c in unmetered_chunks(chunks)) == "respaldo"
    stats = chunks[-1]["stats"]
    assert (stats["attempts"], stats["calls"], stats["models"]) == (2, 1, ["fake"])
    result = chain.invoke({})
    assert result["output"] == "eco: hola"  # healthy again: the primary answers
    assert result["stats"]["models"] == ["openai:gpt-4o-mini"] and result["stats"]["attempts"] == 1


def test_step_settings_override_the_chain(server: WireServer, tmp_path: Path) -> None:
    model = f"{{provider: openai, name: gpt-4o-mini, base_url: '{server.url}/v1'}}"
    path = write(
        tmp_path,
        f"model: {model}\nfallbacks: [fake:echo]\n"
        "steps:\n"
        "  - {id: a, prompt: uno}\n"
        "  - id: b\n    prompt: dos\n    fallbacks: [{provider: fake, responses: [propio]}]\n",
    )
    chain = load_chain(path)
    server.fail_next("server")
    server.fail_next("server")
    result = chain.invoke({})
    assert unmetered(result) == {"a": "uno", "b": "propio", "output": "propio"}
    steps = result["stats"]["steps"]
    # each step: the primary failed once, then its own fallback answered
    assert (steps["a"]["model"], steps["a"]["attempts"], steps["a"]["calls"]) == ("fake:echo", 2, 1)
    assert (steps["b"]["model"], steps["b"]["attempts"], steps["b"]["calls"]) == ("fake", 2, 1)


def test_an_explicit_model_drops_the_files_fallbacks(tmp_path: Path) -> None:
    path = write(tmp_path, "model: openai:gpt-4o\nfallbacks: [anthropic:claude-x]\nprompt: x\n")
    chain = load_chain(path, model="fake:echo")  # no key needed for either provider
    assert type(chain.steps[0].model).__name__ == "EchoChatModel"


def test_fallbacks_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "fallbacks: [opnai:gpt-4o]\nretry: {attempts: 0}\nprompt: x\n")
    problems = {p.path: p for p in validate_file(path)}
    assert "did you mean 'openai'?" in (problems["fallbacks[0]"].hint or "")
    assert "greater than or equal to 1" in problems["retry.attempts"].message


def test_timeout_reaches_the_client(server: WireServer, tmp_path: Path) -> None:
    model = f"{{provider: openai, name: m, base_url: '{server.url}/v1', timeout: 0.5}}"
    chain = load_chain(write(tmp_path, f"model: {model}\nretry: {{attempts: 1}}\nprompt: x\n"))
    retry: Any = chain.steps[0].model
    assert retry.bound.request_timeout == 0.5
    server.delay = 2.0
    with pytest.raises(ProviderUnavailableError):
        chain.invoke({})


# -- the pieces --------------------------------------------------------------------------------
def _error(status: int | None = None, headers: dict[str, str] | None = None) -> Exception:
    exc = RuntimeError("x")
    exc.status_code = status  # type: ignore[attr-defined]
    exc.response = SimpleNamespace(headers=headers or {})  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (429, True),
        (500, True),
        (503, True),
        (408, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
    ],
)
def test_which_statuses_are_retried(status: int, retryable: bool) -> None:
    assert is_retryable(_error(status)) is retryable


def test_langchain_error_classes_decide_themselves() -> None:
    from langchain_core.exceptions import ContextOverflowError, ModelRateLimitError

    assert is_retryable(ModelRateLimitError("slow down"))
    assert not is_retryable(ContextOverflowError("too long"))


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "100000"}, RETRY_AFTER_MAX),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # in the past
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(_error(429, headers)) == seconds


def test_wait_prefers_retry_after_over_backoff() -> None:
    wait = _RetryAfterWait(lambda state: 99.0)
    outcome = SimpleNamespace(exception=lambda: _error(429, {"retry-after": "3"}))
    assert wait(SimpleNamespace(outcome=outcome)) == 3.0  # type: ignore[arg-type]
    outcome = SimpleNamespace(exception=lambda: _error(500))
    assert wait(SimpleNamespace(outcome=outcome)) == 99.0  # type: ignore[arg-type]
