"""The eslabon command, run as a real process: exit codes, messages, no tracebacks, no secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from eslabon.chainfile.spec import json_schema_text
from helpers import CHAINS, ROOT, write

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
    from eslabon.trust.redaction import add_secret, redact

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
    "torch",
    "transformers",
    "ray",
    "mistralai",
    "cohere",
)


@pytest.mark.parametrize("args", [["--help"], ["validate", "chains/"], ["schema"]])
def test_fast_commands_import_nothing_heavy(args: list[str]) -> None:
    code = (
        "import sys\n"
        "from eslabon.interfaces.cli import main\n"
        f"sys.argv = ['eslabon', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "HEAVY []" in out.stderr, out.stderr


# -- paths a new user takes (issue 13) -----------------------------------------------------------
def test_an_unknown_input_is_an_error_with_a_suggestion() -> None:
    out = eslabon("run", "chains/hola.yaml", "-m", "fake:echo", "-i", "nombr=Ana")
    assert out.returncode == 2, out.stdout
    assert "-i nombr: the chain has no input 'nombr' (did you mean 'nombre'?)" in out.stderr
    assert out.stdout == ""  # nothing ran on the default instead


def test_run_json_names_each_steps_model(tmp_path: Path) -> None:
    chain = write(
        tmp_path,
        "model: fake:echo\nsteps:\n  - {id: a, prompt: hola}\n"
        "  - {id: b, model: {provider: fake, responses: [listo]}, prompt: '{a}'}\n",
    )
    data = json.loads(eslabon("run", str(chain), "--json").stdout)
    assert data["models"] == {"a": "fake:echo", "b": "fake"}  # not the chain's model for both
    assert data["model"] == "fake:echo, fake"
    one = json.loads(eslabon("run", str(chain), "--json", "-m", "fake:echo").stdout)
    assert one["model"] == "fake:echo" and one["models"] == {"a": "fake:echo", "b": "fake:echo"}


def test_validate_warns_about_templates_that_pass_but_do_the_wrong_thing(tmp_path: Path) -> None:
    chain = write(tmp_path, "inputs: {texto: x, sobra: y}\nprompt: 'Resume {{texto}}'\n")
    out = eslabon("validate", str(chain))
    assert out.returncode == 0, out.stdout + out.stderr  # warnings: the chain still runs
    assert (
        f"{chain}:1:20: warning: inputs.sobra: input 'sobra' is used by no template" in out.stdout
    )
    assert (
        f"{chain}:2:9: warning: prompt: '{{{{texto}}}}' is sent as the literal text" in out.stdout
    )


def test_a_broken_project_file_is_reported_once(tmp_path: Path) -> None:
    (tmp_path / "eslabon.toml").write_text("[models\n", encoding="utf-8")
    chain = write(tmp_path, "model: local\nprompt: hola\n")
    out = eslabon("validate", str(chain), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stdout.count("invalid TOML") == 1, out.stdout
    assert f"{chain}: not checked: fix {tmp_path / 'eslabon.toml'} first" in out.stdout
    assert out.stderr.strip().endswith(
        "1 problem in the project's configuration; 1 of 1 file not checked."
    )


def test_errors_while_running_name_the_file(tmp_path: Path) -> None:
    chain = write(tmp_path, "model: anthropic:claude-x\nparams: {seed: 1}\nprompt: hola\n")
    for args in (["run", str(chain)], ["render", str(chain), "-p", "anthropic"]):
        out = eslabon(*args, env={"ANTHROPIC_API_KEY": "not-used"})
        assert out.returncode == 2
        assert out.stderr.startswith(f"error: {chain}: params.seed: "), out.stderr


def test_ui_says_a_missing_folder_before_any_banner() -> None:
    out = eslabon("ui", "nope/")
    assert out.returncode == 2
    assert out.stderr == "error: no such file or folder: nope\n"  # no URL to a server never started


def test_piped_chat_prints_a_transcript(tmp_path: Path) -> None:
    (tmp_path / "eslabon.toml").write_text("", encoding="utf-8")  # the session stays in tmp_path
    out = eslabon(
        "chat",
        str(CHAINS / "conversacion.yaml"),
        "-m",
        "fake:echo",
        cwd=tmp_path,
        stdin="hola\nprimera línea\n",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "> hola\nhola\n\n> primera línea\nprimera línea\n"


def test_search_explains_scores_without_langchains_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relevance below 0 (a chunk further from the query than unrelated text) made LangChain warn
    with every chunk's text; eslabon shows the score between 0 and 1 and says why."""
    import warnings

    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import InMemoryVectorStore
    from typer.testing import CliRunner

    import eslabon.rag.indexing
    from eslabon.interfaces.cli import app

    class Opposite(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [[1.0, 0.0] if "gato" in t else [-1.0, 0.0] for t in texts]

        def embed_query(self, text: str) -> list[float]:
            return [1.0, 0.0]

    class Store(InMemoryVectorStore):
        def _select_relevance_score_fn(self) -> Any:
            return lambda similarity: similarity  # cosine: -1 for the opposite chunk

    store = Store(Opposite())
    texts = ["el gato duerme", "SECRETO DE OTRO CHUNK " * 20]
    store.add_texts(
        texts, metadatas=[{"source": "a.md", "chunk": 0}, {"source": "b.md", "chunk": 0}]
    )
    monkeypatch.setattr(eslabon.rag.indexing, "open_store", lambda *args, **kwargs: store)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = CliRunner().invoke(app, ["search", "chroma:curso", "gato", "-k", "2"])
    assert result.exit_code == 0, result.output
    assert not [w for w in seen if "Relevance scores" in str(w.message)]
    assert "a.md #0  score 1.000" in result.stdout and "b.md #0  score 0.000" in result.stdout
    assert "score -1" not in result.output and "shares next to nothing" in result.stderr
