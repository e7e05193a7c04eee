"""The command line's one error boundary, and the chat's slash commands (in process)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from eslabon.errors import (
    EslabonRuntimeError,
    KeyRejectedError,
    ProviderError,
    UserError,
)
from eslabon.interfaces import cli
from helpers import write

CHAT = (
    "inputs: {mensaje: Lo que dice el usuario}\nsystem: Eres amable.\n"
    "prompt: '{mensaje}'\nhistory: true\n"
)


def test_every_command_is_behind_the_boundary() -> None:
    boundary = cli._reported(lambda: None).__code__
    commands = cli.app.registered_commands
    assert len(commands) >= 11
    for command in commands:
        assert command.callback is not None
        assert command.callback.__code__ is boundary, command.callback.__name__
        assert inspect.unwrap(command.callback).__doc__ == command.callback.__doc__  # typer's help


def _exit_of(
    exc: BaseException,
    capsys: pytest.CaptureFixture[str],
    interrupted: cli._Interrupted | None = None,
) -> tuple[int, str]:
    def command() -> None:
        raise exc

    with pytest.raises(typer.Exit) as stopped:
        cli._reported(command, interrupted)()
    return stopped.value.exit_code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("exc", "code", "err"),
    [
        (UserError("bad input"), 2, "error: bad input\n"),
        (KeyRejectedError("openai refused the API key", "openai", 401), 2, "error: openai"),
        (ProviderError("openai failed", "openai", 500), 1, "error: openai failed\n"),
        (EslabonRuntimeError("the local model crashed"), 1, "error: the local model crashed\n"),
        (OSError(13, "Permission denied", "/data/out.jsonl"), 2, "error: /data/out.jsonl: Perm"),
    ],
)
def test_an_error_is_one_message_and_its_exit_code(
    exc: BaseException, code: int, err: str, capsys: pytest.CaptureFixture[str]
) -> None:
    got, stderr = _exit_of(exc, capsys)
    assert got == code
    assert stderr.startswith(err)
    assert "Traceback" not in stderr and "ESLABON_DEBUG" not in stderr


def test_anything_else_names_its_type_and_how_to_see_more(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = _exit_of(ValueError("unexpected"), capsys)
    assert code == 1
    assert err == (
        "error: ValueError: unexpected\n    (set ESLABON_DEBUG=1 to see the traceback)\n"
    )


def test_secrets_are_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    from eslabon.trust.redaction import add_secret

    secret = "sk-boundary-NEVER-SHOW-0123456789"
    add_secret(secret)
    code, err = _exit_of(RuntimeError(f"the server said: bad key {secret}"), capsys)
    assert code == 1 and secret not in err and "bad key ***" in err


def test_eslabon_debug_shows_the_error_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESLABON_DEBUG", "1")

    def command() -> None:
        raise UserError("see me")

    with pytest.raises(UserError, match="see me"):
        cli._reported(command)()


def test_typers_own_exits_pass_through(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _exit_of(typer.Exit(3), capsys)
    assert (code, err) == (3, "")

    def command() -> None:
        raise typer.BadParameter("use a number")

    with pytest.raises(typer.BadParameter):  # typer shows it with the usage, exit 2
        cli._reported(command)()


def test_ctrl_c_does_what_the_command_says(capsys: pytest.CaptureFixture[str]) -> None:
    said = cli._Interrupted("\ninterrupted")
    assert _exit_of(KeyboardInterrupt(), capsys, said) == (130, "\ninterrupted\n")
    assert _exit_of(KeyboardInterrupt(), capsys, cli._Interrupted(None, 0)) == (0, "")

    def command() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # typer's own "Aborted!"
        cli._reported(command)()


def test_a_missing_chain_file_is_a_user_mistake_in_each_command(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    runner = CliRunner()
    for args in (
        ["run", missing],
        ["chat", missing],
        ["batch", missing, str(tmp_path / "rows.jsonl"), "-o", str(tmp_path / "out.jsonl")],
        ["render", missing],
        ["graph", missing],
        ["schema", missing],
    ):
        result = runner.invoke(cli.app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_chat_slash_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, CHAT)
    turns = "hola\n/history\n/model\n/nada\n/model {bad\n/model fake:echo\n/reset\n/history\n"
    result = CliRunner().invoke(
        cli.app, ["chat", str(path), "-s", "t", "-m", "fake:echo"], input=turns + "/exit\nno\n"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "> hola",
        "hola",
        "human: hola",
        "ai: hola",
        cli._CHAT_HELP,  # /model without a model
        cli._CHAT_HELP,  # an unknown command
        "(now talking to fake:echo)",
        "(session forgotten)",
    ]  # /exit: "no" is never sent
    assert result.stderr.startswith("error: --model: not a valid mapping")


def test_a_failed_turn_ends_a_piped_chat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, CHAT)

    def fail(*args: object, **kwargs: object) -> None:
        raise ProviderError("openai failed (HTTP 500)", "openai", 500)

    monkeypatch.setattr(cli._Chat, "answer", fail)
    result = CliRunner().invoke(cli.app, ["chat", str(path), "-m", "fake:echo"], input="a\nb\n")
    assert result.exit_code == 1
    assert result.stdout == "> a\n"
    assert result.stderr == "error: openai failed (HTTP 500)\n"
