"""The eslabon command, run as a real process: exit codes, messages, no tracebacks, no secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CHAINS, ROOT, write
from eslabon.spec import json_schema_text

EXE = str(Path(sys.executable).parent / "eslabon")
SECRET = "sk-test-NEVER-SHOW-THIS-123456789"


def eslabon(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "ESLABON_MODEL"}
    full_env.update(env or {})
    return subprocess.run(
        [EXE, *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=120,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
    )


def test_help_lists_the_commands() -> None:
    out = eslabon("--help")
    assert out.returncode == 0
    for command in ("run", "validate", "schema", "models"):
        assert command in out.stdout


def test_validate_all_example_chains() -> None:
    out = eslabon("validate", "chains/")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("ok  ") == len(list(CHAINS.glob("*.yaml")))


def test_validate_reports_every_problem_with_positions(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        "model: opnai:gpt-4o\ninputs: {problema: x}\nsteps:\n"
        "  - {id: a, promt: '{problema}'}\n  - {id: b, prompt: '{c}'}\noutput: z\n",
    )
    out = eslabon("validate", str(bad), "chains/hola.yaml")
    assert out.returncode == 2
    assert "Traceback" not in out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if not line.startswith(" ")]
    assert f"{bad}:1:8: model: unknown provider 'opnai'" in lines
    assert f"{bad}:4:13: steps[0].promt: unknown key 'promt'" in lines
    assert any(line.startswith(f"{bad}:5:") and "unknown name '{c}'" in line for line in lines)
    assert f"{bad}:6:9: output: 'output' names no step: 'z'" in lines
    assert "    hint: did you mean 'openai'?" in out.stdout
    assert "ok  chains/hola.yaml" in out.stdout
    assert "4 problems in 1 of 2 files." in out.stderr


def test_validate_folder_skips_examples_files(tmp_path: Path) -> None:
    write(tmp_path, "examples: [{file: sub/ej.yaml}]\nprompt: '{x}'\ninputs: {x: x}\n", "c.yaml")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "- {input: a, output: b}\n", "ej.yaml")
    write(tmp_path / "sub", "examples: [{input: a, output: b}]\n", "ej2.yml")
    out = eslabon("validate", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == [f"ok  {tmp_path / 'c.yaml'}"]


def test_validate_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = write(tmp_path, "prompt: 'unclosed\n")
    out = eslabon("validate", str(bad), str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "invalid YAML" in out.stdout and "file not found" in out.stdout


def test_schema_matches_the_committed_file() -> None:
    out = eslabon("schema")
    assert out.returncode == 0
    assert out.stdout == json_schema_text()
    assert (ROOT / "docs" / "chain.schema.json").read_text(encoding="utf-8") == out.stdout
    assert json.loads(out.stdout)["properties"]["steps"]


def test_run_json_on_fake_model() -> None:
    out = eslabon(
        "run",
        "chains/analizar_planificar_resolver.yaml",
        "-i",
        "problema=2+2",
        "--model",
        "fake:echo",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["chain"] == "analizar_planificar_resolver" and data["model"] == "fake:echo"
    assert list(data["steps"]) == ["analisis", "plan", "solucion"]
    assert data["steps"]["analisis"] == "Analiza el problema:\n2+2"
    assert data["output"] == data["steps"]["solucion"]


def test_run_input_from_file_and_stream_headers(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("desde archivo", encoding="utf-8")
    out = eslabon(
        "run",
        str(CHAINS / "analizar_planificar_resolver.yaml"),
        "-i",
        f"problema=@{tmp_path / 'p.txt'}",
        "-m",
        "fake:echo",
        "--stream",
    )
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout.index("── analisis")
        < out.stdout.index("── plan")
        < out.stdout.index("── solucion")
    )
    assert "Analiza el problema:\ndesde archivo" in out.stdout


def test_piped_stdin_fills_the_missing_input() -> None:
    out = eslabon("run", "chains/traductor.yaml", "-m", "fake:echo", stdin="buenas tardes\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "¿Cómo se dice 'buenas tardes' en inglés?\n"


def test_env_model_is_used_when_no_flag() -> None:
    out = eslabon("run", "chains/hola.yaml", "--json", env={"ESLABON_MODEL": "fake:echo"})
    assert json.loads(out.stdout)["output"] == "Saluda a Mundo con una sola frase amable."


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "chains/analizar_planificar_resolver.yaml", "-m", "fake:echo"],
            "missing input 'problema'",
        ),
        (["run", "chains/hola.yaml", "-i", "sin-igual"], "write -i name=value"),
        (["run", "chains/hola.yaml", "-i", "nombre=@/no/such/file"], "cannot read"),
        (["run", "chains/hola.yaml", "-m", "opnai:gpt-4o"], "did you mean 'openai'?"),
        (["run", "chains/hola.yaml", "-m", "openai:gpt-4o-mini"], "OPENAI_API_KEY"),
        (["run", "no/such.yaml"], "file not found"),
    ],
)
def test_user_mistakes_exit_2_without_traceback(
    args: list[str], message: str, tmp_path: Path
) -> None:
    out = eslabon(*args, env={"OPENAI_API_KEY": ""})
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_models_shows_project_aliases_and_a_broken_project_file(tmp_path: Path) -> None:
    (tmp_path / "eslabon.toml").write_text('[models]\nrapido = "openai:gpt-4o-mini"\n')
    out = eslabon("models", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "alias rapido -> openai:gpt-4o-mini  (eslabon.toml)" in out.stdout
    (tmp_path / "eslabon.toml").write_text("[models\n")
    for args in (["models"], ["validate", str(CHAINS / "hola.yaml")]):
        out = eslabon(*args, cwd=tmp_path)
        assert out.returncode == 2 and "invalid TOML" in out.stdout + out.stderr
        assert "Traceback" not in out.stderr


def test_secrets_never_appear(tmp_path: Path) -> None:
    chain = write(
        tmp_path,
        "model: {provider: openai, name: gpt-4o-mini, base_url: 'http://127.0.0.1:9/v1',"
        " max_retries: 0, timeout: 5}\nprompt: hola\n",
    )
    env = {"OPENAI_API_KEY": SECRET}
    runs = [eslabon("models", env=env), eslabon("run", str(chain), env=env)]
    assert runs[0].returncode == 0 and "OPENAI_API_KEY" in runs[0].stdout
    assert runs[1].returncode == 1 and "error:" in runs[1].stderr
    assert "Traceback" not in runs[1].stderr
    for out in runs:
        assert SECRET not in out.stdout + out.stderr


def test_a_refused_key_exits_2_naming_the_variable_not_the_key(tmp_path: Path) -> None:
    from wire_server import WireServer

    with WireServer() as server:
        server.fail_next("auth")
        model = f"{{provider: openai, name: m, base_url: '{server.url}/v1', api_key_env: MI_LLAVE}}"
        chain = write(tmp_path, f"model: {model}\nprompt: hola\n")
        grant = f"MI_LLAVE@{server.url}"  # the user approves sending MI_LLAVE there
        out = eslabon("run", str(chain), "--allow-key", grant, env={"MI_LLAVE": SECRET})
    assert out.returncode == 2, out.stderr
    assert "openai refused the API key (HTTP 401)" in out.stderr
    assert "MI_LLAVE" in out.stderr and SECRET not in out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_redact_hides_keys_handed_to_clients() -> None:
    from eslabon.errors import add_secret, redact

    add_secret("a-custom-credential-value")
    assert redact("oops: a-custom-credential-value leaked") == "oops: *** leaked"


HEAVY = (
    "langchain_core",
    "langchain",
    "openai",
    "anthropic",
    "google",
    "langchain_openai",
    "llama_cpp",
    "chromadb",
    "llama_index",
    "numpy",
)


@pytest.mark.parametrize("args", [["--help"], ["validate", "chains/"], ["schema"]])
def test_fast_commands_import_nothing_heavy(args: list[str]) -> None:
    code = (
        "import sys\n"
        "from eslabon.cli import main\n"
        f"sys.argv = ['eslabon', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "HEAVY []" in out.stderr, out.stderr
