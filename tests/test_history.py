"""Conversations: history in chain files, sessions that persist, trimming, each provider's roles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from eslabon import FakeChatModel, UserError, load_chain
from eslabon.chainfile.loader import validate_file
from helpers import unmetered_chunks, write
from wire_server import WireServer

CHAT = (
    "inputs: {mensaje: Lo que dice el usuario}\nsystem: Eres amable.\n"
    "prompt: '{mensaje}'\nhistory: true\n"
)


@pytest.fixture
def server(server: WireServer, monkeypatch: pytest.MonkeyPatch) -> WireServer:
    for var in ("OPENAI_API_KEY", "GOOGLE_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.setenv(var, "sk-history-test-0123456789")
    return server  # the shared server (conftest), with keys


def openai(server: WireServer) -> dict[str, Any]:
    return {"provider": "openai", "name": "gpt-4o-mini", "openai_api_base": server.url + "/v1"}


def test_each_turn_carries_the_earlier_ones_and_a_new_process_continues(
    server: WireServer, tmp_path: Path
) -> None:
    store = tmp_path / "chat.sqlite"
    path = write(tmp_path, CHAT)
    server.replies.extend(["¡Hola!", "Bien, ¿y tú?", "Hasta luego"])
    chat = load_chain(path, model=openai(server)).with_history("clase1", store=store)
    for text in ("hola", "¿qué tal?"):
        chat.invoke({"mensaje": text})
    # a fresh chain (as a second process would build) on the same session continues it
    again = load_chain(path, model=openai(server)).with_history("clase1", store=store)
    assert again.invoke({"mensaje": "adiós"})["output"] == "Hasta luego"
    turns = [[(m["role"], m["content"]) for m in r.body["messages"]] for r in server.requests]
    assert turns[2] == [
        ("system", "Eres amable."),
        ("user", "hola"),
        ("assistant", "¡Hola!"),
        ("user", "¿qué tal?"),
        ("assistant", "Bien, ¿y tú?"),
        ("user", "adiós"),
    ]
    assert turns[0] == [("system", "Eres amable."), ("user", "hola")]
    other = load_chain(path, model=openai(server)).with_history("otra", store=store)
    other.invoke({"mensaje": "x"})
    assert len(server.requests[-1].body["messages"]) == 2  # sessions are separate


def test_gemini_and_anthropic_get_their_own_roles(server: WireServer, tmp_path: Path) -> None:
    path = write(tmp_path, CHAT)
    gemini = {"provider": "google_genai", "name": "gemini-2.5-flash", "base_url": server.url}
    chat = load_chain(path, model=gemini).with_history("g", store="memory")
    server.replies.extend(["uno", "dos"])
    chat.invoke({"mensaje": "a"})
    chat.invoke({"mensaje": "b"})
    body = server.requests[-1].body
    assert body["systemInstruction"]["parts"][0]["text"] == "Eres amable."
    assert [(c["role"], c["parts"][0]["text"]) for c in body["contents"]] == [
        ("user", "a"),
        ("model", "uno"),
        ("user", "b"),
    ]
    claude = {"provider": "anthropic", "name": "claude-wire-test", "base_url": server.url}
    chat = load_chain(path, model=claude).with_history("a", store="memory")
    server.replies.extend(["uno", "dos"])
    chat.invoke({"mensaje": "a"})
    chat.invoke({"mensaje": "b"})
    body = server.requests[-1].body
    assert body["system"] == "Eres amable."
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("user", "a"),
        ("assistant", "uno"),
        ("user", "b"),
    ]


def test_trimming_keeps_system_and_examples_and_drops_the_oldest_turns(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "inputs: {mensaje: x}\nsystem: Eres amable.\n"
        "examples:\n  - {input: ejemplo, output: respuesta}\n"
        "prompt: '{mensaje}'\nhistory: {max_tokens: 40}\n",
    )
    model = FakeChatModel(responses=[f"respuesta número {n} " * 3 for n in range(6)])
    chat = load_chain(path, model=model).with_history("t", store="memory")
    for n in range(6):
        chat.invoke({"mensaje": f"pregunta número {n} " * 3})
    last = model.calls[-1]
    assert last[:3] == [
        SystemMessage("Eres amable."),
        HumanMessage("ejemplo"),
        AIMessage("respuesta"),
    ]
    kept = last[3:-1]
    assert 0 < len(kept) < 10 and isinstance(kept[0], HumanMessage)  # whole turns, oldest gone
    assert kept[-1].text.startswith("respuesta número 4")  # the newest turn is kept
    assert last[-1].text.startswith("pregunta número 5")


def test_streamed_turns_are_remembered(tmp_path: Path) -> None:
    model = FakeChatModel(responses=["uno dos", "tres"])
    chat = load_chain(write(tmp_path, CHAT), model=model).with_history("s", store="memory")
    chunks = unmetered_chunks(list(chat.stream({"mensaje": "a"})))
    assert "".join(c["output"] for c in chunks) == "uno dos"
    chat.invoke({"mensaje": "b"})
    assert [m.text for m in model.calls[-1]] == ["Eres amable.", "a", "uno dos", "b"]


def test_history_mistakes(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="add  history: true"):
        load_chain(
            write(tmp_path, "inputs: {m: x}\nprompt: '{m}'\n"), model="fake:echo"
        ).with_history("x")
    problems = validate_file(
        write(tmp_path, "inputs: {history: x}\nprompt: '{history}'\nhistory: true\n", "h.yaml")
    )
    assert any("'history' is reserved" in p.message for p in problems)


@pytest.mark.model
def test_the_local_model_counts_tokens_with_its_own_tokenizer(tmp_path: Path) -> None:
    chain = load_chain(write(tmp_path, CHAT.replace("true", "{max_tokens: 50}")))
    step = chain.steps[0]
    assert step.history is not None
    from langchain_core.messages.utils import count_tokens_approximately

    assert step.history.count == step.model.count_message_tokens  # type: ignore[attr-defined]
    turn = [HumanMessage("hola " * 20)]
    # SmolLM2 spends 41 tokens on this text (+4 for the turn); the approximation differs
    assert step.history.count(turn) == 45 != count_tokens_approximately(turn)


def test_eslabon_chat_with_piped_turns_continues_in_a_second_process(
    server: WireServer, tmp_path: Path
) -> None:
    import json
    import os
    import subprocess
    import sys

    exe = str(Path(sys.executable).parent / "eslabon")
    path = write(tmp_path, CHAT)
    args = [exe, "chat", str(path), "--session", "clase1", "-m", json.dumps(openai(server))]
    env = {**os.environ, "OPENAI_API_KEY": "sk-history-test-0123456789"}
    server.replies.extend(["¡Hola!", "Bien.", "Adiós."])
    first = subprocess.run(
        args, input="hola\n¿qué tal?\n", capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    # a transcript: where each answer ends shows (docs/cli.md)
    assert first.stdout.splitlines() == ["> hola", "¡Hola!", "", "> ¿qué tal?", "Bien."]
    second = subprocess.run(
        [*args[:-2]], input="/history\n", capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert "ai: Bien." in second.stdout and "human: hola" in second.stdout
    third = subprocess.run(
        args, input="adiós\n", capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert third.stdout == "> adiós\nAdiós.\n"
    roles = [(m["role"], m["content"]) for m in server.requests[-1].body["messages"]]
    assert roles[1:] == [
        ("user", "hola"),
        ("assistant", "¡Hola!"),
        ("user", "¿qué tal?"),
        ("assistant", "Bien."),
        ("user", "adiós"),
    ]
    assert (tmp_path / ".eslabon" / "chat.sqlite").exists()
    reset = subprocess.run(
        [*args[:-2], "-m", "fake:echo"], input="/reset\n/history\n", capture_output=True,
        text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert "(session forgotten)" in reset.stdout and "human:" not in reset.stdout


def test_interactive_chat_in_a_terminal_with_ctrl_c_and_a_model_switch(
    server: WireServer, tmp_path: Path
) -> None:
    """A real terminal (tmux): type turns, stop a streaming answer with Ctrl-C, switch models."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    import time

    if not shutil.which("tmux"):
        pytest.skip("needs tmux")
    exe = str(Path(sys.executable).parent / "eslabon")
    path = write(tmp_path, CHAT)
    server.token_delay = 0.05  # slow enough to interrupt
    server.replies.extend(["¡Hola, Ana!", " ".join(f"palabra{n}" for n in range(200))])
    tmux = ["tmux", "-L", f"eslabon-test-{os.getpid()}"]
    command = " ".join(
        [exe, "chat", str(path), "--session", "t", "-m", "'" + json.dumps(openai(server)) + "'"]
    )
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "chat", "-x", "160", "-y", "50",
         "-e", "OPENAI_API_KEY=sk-history-test-0123456789", "-c", str(tmp_path), command],
        check=True,
    )  # fmt: skip

    def screen() -> str:
        out = subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "chat", "-S", "-200"],
            capture_output=True, text=True,
        )  # fmt: skip
        return out.stdout

    def wait_for(text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = screen()
            if text in shown:
                return shown
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never appeared:\n{screen()}")

    def send(*keys: str) -> None:
        subprocess.run([*tmux, "send-keys", "-t", "chat", *keys], check=True)

    try:
        wait_for("session 't'")
        send("hola", "Enter")
        wait_for("¡Hola, Ana!")
        send("cuéntame algo largo", "Enter")
        wait_for("palabra5")
        send("C-c")
        shown = wait_for("(interrupted; this turn is not remembered)")
        assert "palabra199" not in shown  # stopped mid-answer
        send("/history", "Enter")
        shown = wait_for("ai: ¡Hola, Ana!")
        assert "human: cuéntame" not in shown
        send("/model fake:echo", "Enter")
        wait_for("(now talking to fake:echo)")
        send("eco eco", "Enter")
        wait_for("> eco eco\neco eco")  # fake:echo answers with the turn itself
        send("/history", "Enter")
        after_switch = wait_for("ai: eco eco").split("(now talking to fake:echo)")[-1]
        assert "human: hola" in after_switch  # the turns carried over to the new model
        send("/exit", "Enter")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
