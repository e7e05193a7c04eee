"""A chain file is untrusted input (docs/security.md): hostile files, tried for real.

Each class of defect from the security review has its tests here: keys sent to hosts the user did
not approve, files read outside the chain's folder, YAML that expands or nests without bound,
settings that skip validation, keys shown, raw errors, and project files above the project root.
Batch-output and cache safety are in test_batch_safety.py; regex patterns in test_patterns.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from helpers import ROOT, write
from wire_server import WireServer

EXE = str(Path(sys.executable).parent / "eslabon")
SECRET = "sk-live-NEVER-LEAVE-THIS-MACHINE-42"
AWS = "aws-secret-NEVER-SEND-1234567890"


def eslabon(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k != "ESLABON_MODEL" and not k.startswith("ESLABON_ALLOW")
    }
    full_env.update(env or {})
    return subprocess.run(
        [EXE, *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def project(tmp_path: Path, toml: str = "") -> Path:
    """A project folder (it holds .git, so nothing above it is read) with a chains/ folder."""
    root = tmp_path / "proj"
    (root / ".git").mkdir(parents=True)
    (root / "chains").mkdir()
    if toml:
        (root / "eslabon.toml").write_text(toml, encoding="utf-8")
    return root


@contextmanager
def recording_http(status: int, body: bytes = b"") -> Iterator[tuple[int, list[dict[str, str]]]]:
    """A loopback HTTP server answering every GET/POST with ``status`` and ``body``; yields its
    port and the requests it got (headers, plus the path under ``:path``)."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append({":path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_address[1], seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def auth_headers(server: WireServer) -> list[str]:
    return [
        r.headers.get("authorization") or r.headers.get("x-api-key") or "" for r in server.requests
    ]


# -- 1. keys go only where the user approved --------------------------------------------------


def test_a_chain_file_base_url_gets_a_placeholder_not_the_provider_key(
    server: WireServer, tmp_path: Path
) -> None:
    root = project(tmp_path)
    chain = write(
        root / "chains",
        f"model: {{provider: openai, name: m, base_url: '{server.url}/v1'}}\nprompt: hola\n",
    )
    out = eslabon("run", str(chain), env={"OPENAI_API_KEY": SECRET}, cwd=root)
    assert out.returncode == 0, out.stderr
    assert auth_headers(server) == ["Bearer not-needed"]  # the loopback server still works
    assert SECRET not in str([r.headers for r in server.requests])


@pytest.mark.parametrize("variable", ["AWS_SECRET_ACCESS_KEY", "HOME"])
def test_api_key_env_cannot_send_any_variable_anywhere(
    server: WireServer, tmp_path: Path, variable: str
) -> None:
    root = project(tmp_path)
    model = f"{{provider: openai, name: m, base_url: '{server.url}/v1', api_key_env: {variable}}}"
    chain = write(root / "chains", f"model: {model}\nprompt: hola\n")
    out = eslabon("run", str(chain), env={variable: AWS}, cwd=root)
    assert out.returncode == 2
    assert server.requests == []  # refused before any request
    assert f"you have not approved for {variable}" in out.stderr
    assert f"--allow-key {variable}@{server.url}/v1" in out.stderr
    assert AWS not in out.stdout + out.stderr and "Traceback" not in out.stderr


def test_the_default_host_variable_elsewhere_is_refused_too(tmp_path: Path) -> None:
    """api_key_env naming another variable, with no base_url: it would go to the provider."""
    from eslabon.chat.models import KeyNotAllowedError, build_model

    root = project(tmp_path)
    chain = write(
        root / "chains",
        "model: {provider: openai, name: gpt-4o-mini, api_key_env: AWS_SECRET_ACCESS_KEY}\n"
        "prompt: hola\n",
    )
    from eslabon import load_chain

    os.environ["AWS_SECRET_ACCESS_KEY"] = AWS
    try:
        with pytest.raises(KeyNotAllowedError, match=r"api\.openai\.com"):
            load_chain(chain)
        # the user's own code decides for itself
        assert build_model(
            {"provider": "openai", "name": "m", "api_key_env": "AWS_SECRET_ACCESS_KEY"}
        )
    finally:
        del os.environ["AWS_SECRET_ACCESS_KEY"]


def test_the_provider_key_goes_to_its_own_host() -> None:
    from eslabon.chat.models import key_refusal
    from eslabon.chat.modelspec import parse_model_ref

    own = parse_model_ref("openai:gpt-4o-mini")
    assert key_refusal(own, "OPENAI_API_KEY", named=False) is None
    explicit = parse_model_ref(
        {"provider": "anthropic", "name": "c", "base_url": "https://api.anthropic.com"}
    )
    assert key_refusal(explicit, "ANTHROPIC_API_KEY", named=False) is None
    elsewhere = parse_model_ref(
        {"provider": "anthropic", "name": "c", "base_url": "https://api.anthropic.com.evil.io"}
    )
    assert key_refusal(elsewhere, "ANTHROPIC_API_KEY", named=False) is not None


@pytest.mark.parametrize(
    ("how", "env", "flag"),
    [
        ("flag", {}, "--allow-endpoint"),
        ("env", {"ESLABON_ALLOW_ENDPOINTS": "{url}"}, None),
        ("toml", {}, None),
    ],
)
def test_the_user_can_approve_an_endpoint(
    server: WireServer, tmp_path: Path, how: str, env: dict[str, str], flag: str | None
) -> None:
    toml = f'[allow]\nendpoints = ["{server.url}"]\n' if how == "toml" else ""
    root = project(tmp_path, toml)
    chain = write(
        root / "chains",
        f"model: {{provider: openai, name: m, base_url: '{server.url}/v1'}}\nprompt: hola\n",
    )
    args = ["run", str(chain)] + ([flag, server.url] if flag else [])
    environ = {k: v.format(url=server.url) for k, v in env.items()}
    out = eslabon(*args, env={"OPENAI_API_KEY": SECRET, **environ}, cwd=root)
    assert out.returncode == 0, out.stderr
    assert auth_headers(server) == [f"Bearer {SECRET}"]


def test_the_user_can_pair_a_variable_with_a_host(server: WireServer, tmp_path: Path) -> None:
    root = project(tmp_path, f'[allow]\nkeys = {{VLLM_KEY = ["{server.url}"]}}\n')
    model = f"{{provider: openai, name: m, base_url: '{server.url}/v1', api_key_env: VLLM_KEY}}"
    chain = write(root / "chains", f"model: {model}\nprompt: hola\n")
    out = eslabon("run", str(chain), env={"VLLM_KEY": SECRET}, cwd=root)
    assert out.returncode == 0, out.stderr
    assert auth_headers(server) == [f"Bearer {SECRET}"]
    out = eslabon("validate", str(chain), cwd=root)
    assert f"allow key VLLM_KEY -> '{server.url}' (from {root / 'eslabon.toml'})" in out.stderr
    # the pairing is for that host only: another port is not approved
    other = chain.read_text().replace(server.url, "http://127.0.0.1:9")
    out = eslabon("run", str(write(root / "chains", other, "b.yaml")), cwd=root)
    assert out.returncode == 2 and "not approved for VLLM_KEY" in out.stderr


def test_the_users_own_settings_send_keys_as_written(server: WireServer, tmp_path: Path) -> None:
    """--model and eslabon.toml aliases are the user's: their base_url gets the key."""
    alias = (
        f'[models]\npropio = {{provider = "openai", name = "m", base_url = "{server.url}/v1"}}\n'
    )
    root = project(tmp_path, alias)
    chain = write(root / "chains", "model: propio\nprompt: hola\n")
    assert eslabon("run", str(chain), env={"OPENAI_API_KEY": SECRET}, cwd=root).returncode == 0
    flag = f"{{provider: openai, name: m, base_url: '{server.url}/v1'}}"
    out = eslabon("run", str(chain), "-m", flag, env={"OPENAI_API_KEY": SECRET}, cwd=root)
    assert out.returncode == 0, out.stderr
    assert auth_headers(server) == [f"Bearer {SECRET}"] * 2


def test_fallbacks_and_pools_follow_the_same_rule(server: WireServer, tmp_path: Path) -> None:
    root = project(tmp_path)
    url = server.url + "/v1"
    chain = write(
        root / "chains",
        "model: {provider: openai, name: m, base_url: 'http://127.0.0.1:9/v1'}\n"
        f"fallbacks:\n  - {{provider: openai, name: m, base_urls: ['{url}', '{url}']}}\n"
        "prompt: hola\n",
    )
    env = {"OPENAI_API_KEY": SECRET, "ANTHROPIC_API_KEY": SECRET}
    out = eslabon("run", str(chain), env=env, cwd=root)
    assert out.returncode == 0, out.stderr
    assert auth_headers(server) == ["Bearer not-needed"]


def test_other_providers_need_an_approved_endpoint(server: WireServer, tmp_path: Path) -> None:
    """Their clients send credentials from the environment by themselves (Anthropic's custom
    headers, Vertex AI's keys, Azure AD tokens): a chain file's base_url must be approved."""
    root = project(tmp_path)
    env = {
        "ANTHROPIC_API_KEY": SECRET,
        "ANTHROPIC_CUSTOM_HEADERS": f"X-Gateway-Secret: {AWS}",
        "GOOGLE_API_KEY": SECRET,
        "GOOGLE_GENAI_USE_VERTEXAI": "true",
    }
    for n, provider in enumerate(("anthropic", "google_genai")):
        chain = write(
            root / "chains",
            f"model: {{provider: {provider}, name: m, base_url: '{server.url}'}}\nprompt: hola\n",
            f"c{n}.yaml",
        )
        out = eslabon("run", str(chain), env=env, cwd=root)
        assert out.returncode == 2, out.stderr
        assert f"points {provider} at {server.url}, which you have not approved" in out.stderr
        assert f"--allow-endpoint {server.url}" in out.stderr
        assert "warning: model: run will stop here" in eslabon("validate", str(chain)).stdout
    assert server.requests == []
    chain = root / "chains" / "c0.yaml"
    out = eslabon("run", str(chain), "--allow-endpoint", server.url, env=env, cwd=root)
    assert out.returncode == 0, out.stderr  # approved: the user's credentials go there
    assert SECRET in str(server.requests[0].headers)


def test_ollama_never_sends_its_key_to_a_chain_files_server(
    server: WireServer, tmp_path: Path
) -> None:
    root = project(tmp_path)
    chain = write(
        root / "chains",
        f"model: {{provider: ollama, name: m, base_url: '{server.url}'}}\nprompt: hola\n",
    )
    out = eslabon("run", str(chain), env={"OLLAMA_API_KEY": SECRET}, cwd=root)
    assert out.returncode == 0, out.stderr
    assert auth_headers(server) == ["Bearer not-needed"]
    out = eslabon(
        "run", str(chain), "--allow-endpoint", server.url, env={"OLLAMA_API_KEY": SECRET}, cwd=root
    )
    assert auth_headers(server)[-1] == f"Bearer {SECRET}"


def test_a_refused_placeholder_says_why_the_key_was_not_sent(
    server: WireServer, tmp_path: Path
) -> None:
    root = project(tmp_path)
    server.fail_next("auth")
    chain = write(
        root / "chains",
        f"model: {{provider: openai, name: m, base_url: '{server.url}/v1'}}\nprompt: hola\n",
    )
    out = eslabon("run", str(chain), env={"OPENAI_API_KEY": SECRET}, cwd=root)
    assert out.returncode == 2
    assert "eslabon did not send OPENAI_API_KEY" in out.stderr
    assert f"--allow-endpoint {server.url}/v1" in out.stderr
    assert SECRET not in out.stderr


@pytest.mark.parametrize(
    "setting",
    [
        "openai_api_base: 'http://127.0.0.1:9/v1'",
        "anthropic_api_url: 'http://127.0.0.1:9'",
        "default_headers: {x-key: a}",
        "openai_proxy: 'http://127.0.0.1:9'",
        "client_options: {api_endpoint: 'http://127.0.0.1:9'}",
        "base_url: 'file:///etc/passwd'",
    ],
)
def test_other_connection_settings_cannot_come_from_a_chain_file(
    tmp_path: Path, setting: str
) -> None:
    root = project(tmp_path)
    chain = write(root / "chains", f"model: {{provider: openai, name: m, {setting}}}\nprompt: x\n")
    out = eslabon("validate", str(chain), cwd=root)
    assert out.returncode == 2
    assert f"{chain}:1:" in out.stdout and "model." in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_chroma_server_credentials_only_for_an_approved_host(tmp_path: Path) -> None:
    """Chroma reads auth settings from the environment; a chain file's host must not get them."""
    from eslabon.rag.embeddings import HashingEmbeddings
    from eslabon.rag.retrieval import chroma_store

    env = {
        "CHROMA_CLIENT_AUTH_PROVIDER": "chromadb.auth.token_authn.TokenAuthClientProvider",
        "CHROMA_CLIENT_AUTH_CREDENTIALS": SECRET,
    }
    os.environ.update(env)
    try:
        with recording_http(500) as (port, seen):  # a "server" that fails every call
            with pytest.raises(Exception):  # noqa: B017
                chroma_store(
                    "coleccion", HashingEmbeddings(), None, "127.0.0.1", port, tmp_path, False
                )
            assert seen and SECRET not in str(seen)
            seen.clear()
            with pytest.raises(Exception):  # noqa: B017
                chroma_store(
                    "coleccion", HashingEmbeddings(), None, "127.0.0.1", port, tmp_path, True
                )
            assert SECRET in str(seen)  # approved: the user's credentials are used
    finally:
        for key in env:
            del os.environ[key]


# -- 2. files stay inside the chain's folder and the project ----------------------------------

OUTSIDE = "input,output\nTOP-SECRET-HEADER,never\n"


@pytest.mark.parametrize("kind", ["relative", "absolute", "symlink"])
def test_examples_outside_the_folder_are_refused(tmp_path: Path, kind: str) -> None:
    root = project(tmp_path)
    secret = tmp_path / "elsewhere" / "private.csv"
    secret.parent.mkdir()
    secret.write_text(OUTSIDE, encoding="utf-8")
    ref = {"relative": "../../elsewhere/private.csv", "absolute": str(secret)}.get(kind)
    if kind == "symlink":
        (root / "chains" / "link.csv").symlink_to(secret)
        ref = "link.csv"
    chain = write(
        root / "chains", f"examples:\n  - file: '{ref}'\nprompt: '{{x}}'\ninputs: {{x: t}}\n"
    )
    out = eslabon("validate", str(chain), cwd=root)
    assert out.returncode == 2
    assert f"{chain}:2:" in out.stdout and "outside the chain's folder" in out.stdout
    assert ("symbolic link" in out.stdout) == (kind == "symlink")
    run = eslabon("run", str(chain), "-m", "fake:echo", "-i", "x=a", cwd=root)
    assert run.returncode == 2
    for text in (out.stdout + out.stderr, run.stdout + run.stderr):
        assert "TOP-SECRET" not in text and "Traceback" not in text


def test_files_in_the_project_and_allowed_folders_are_read(tmp_path: Path) -> None:
    root = project(tmp_path)
    (root / "data").mkdir()
    (root / "data" / "ejemplos.jsonl").write_text('{"input": "a", "output": "b"}\n')
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "mas.jsonl").write_text('{"input": "c", "output": "d"}\n')
    chain = write(
        root / "chains",
        f"examples:\n  - file: ../data/ejemplos.jsonl\n  - file: '{shared}/mas.jsonl'\n"
        "prompt: '{x}'\ninputs: {x: t}\n",
    )
    assert eslabon("validate", str(chain), cwd=root).returncode == 2
    out = eslabon("validate", str(chain), "--allow-path", str(shared), cwd=root)
    assert out.returncode == 0, out.stdout
    env = {"ESLABON_ALLOW_PATHS": str(shared)}
    out = eslabon("run", str(chain), "-m", "fake:echo", "-i", "x=hola", env=env, cwd=root)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    "ref",
    ["file:///etc/passwd", "http://127.0.0.1:{port}/schema.json", "otro.json", "#/$defs/x"],
)
def test_output_schema_refs_stay_inside_the_schema(tmp_path: Path, ref: str) -> None:
    root = project(tmp_path)
    (root / "chains" / "otro.json").write_text('{"type": "string"}')
    with recording_http(200, b'{"type": "string"}') as (port, hits):
        chain = write(
            root / "chains",
            "prompt: 'Dime algo de {x}'\ninputs: {x: t}\noutput_schema:\n  type: object\n"
            "  $defs: {x: {type: string}}\n"
            f"  properties:\n    nombre: {{$ref: '{ref.format(port=port)}'}}\n"
            "  required: [nombre]\n",
        )
        out = eslabon("validate", str(chain), cwd=root)
        run = eslabon("run", str(chain), "-i", "x=a", cwd=root)
    if ref.startswith("#"):
        assert out.returncode == 0, out.stdout
        return
    assert out.returncode == 2 and run.returncode == 2
    assert f"{chain}:7:" in out.stdout and "points outside the schema" in out.stdout
    assert hits == []  # no request, ever
    assert "root:" not in run.stdout + run.stderr  # /etc/passwd never read


def test_index_and_model_paths_are_confined(tmp_path: Path) -> None:
    root = project(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "m.gguf").write_bytes(b"GGUF")
    cases = {
        "chroma": "retriever: {type: chroma, collection: cosas, path: ../../outside}\n"
        "prompt: '{context} {x}'\n",
        "llamaindex": f"retriever: {{type: llamaindex, path: '{outside}'}}\n"
        "prompt: '{context} {x}'\n",
        "embeddings": f"embeddings: 'llamacpp:{outside}/m.gguf'\n"
        "retriever: {type: memory, documents: [a]}\nprompt: '{context} {x}'\n",
        "gguf": "model: 'llamacpp:../../outside/m.gguf'\nprompt: '{x}'\n",
    }
    for name, body in cases.items():
        chain = write(root / "chains", "inputs: {x: t}\n" + body, f"{name}.yaml")
        out = eslabon("validate", str(chain), cwd=root)
        assert out.returncode == 2, (name, out.stdout)
        assert "outside the chain's folder" in out.stdout, (name, out.stdout)
    # chroma's path resolves against the project root, and may be anywhere inside it
    inside = write(
        root / "chains",
        "inputs: {x: t}\nretriever: {type: chroma, collection: cosas, path: indices/chroma}\n"
        "prompt: '{context} {x}'\n",
        "inside.yaml",
    )
    assert eslabon("validate", str(inside), cwd=root).returncode == 0


# -- 3. YAML that expands or nests without bound ----------------------------------------------


def _bomb() -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for n in range(8):
        p, q = chr(97 + n), chr(98 + n)
        lines.append(f"{q}: &{q} [" + ", ".join([f"*{p}"] * 9) + "]")
    return "\n".join(lines) + "\nprompt: hola\n"


def test_alias_bombs_and_deep_nesting_are_refused_and_others_still_checked(tmp_path: Path) -> None:
    folder = tmp_path / "chains"
    folder.mkdir()
    bomb = write(folder, _bomb(), "bomba.yaml")
    assert len(bomb.read_bytes()) < 500
    deep = write(folder, "prompt: hola\nx: " + "[" * 600 + "]" * 600 + "\n", "hondo.yaml")
    deep_map = write(folder, "prompt: hola\n" + "".join(f"{' ' * n}k{n}:\n" for n in range(200)))
    good = write(folder, "prompt: hola\n", "bueno.yaml")
    started = time.monotonic()
    out = eslabon("validate", str(folder))
    assert out.returncode == 2, out.stdout
    assert f"{bomb}:1:1: the YAML expands to more than 100,000 values" in out.stdout
    assert f"{deep}:2:" in out.stdout and "nest deeper than 64 levels" in out.stdout
    assert f"{deep_map}:" in out.stdout
    assert f"ok  {good}" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr
    run = eslabon("run", str(deep), "-m", "fake:echo")
    assert run.returncode == 2 and "nest deeper" in run.stderr and "Traceback" not in run.stderr
    assert time.monotonic() - started < 60  # generous: the bomb alone took 25 s before


def test_bombs_in_examples_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "ejemplos.yaml").write_text(_bomb().replace("prompt: hola\n", ""))
    (tmp_path / "hondo.jsonl").write_text('{"input": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    (tmp_path / "latin1.csv").write_bytes("input,output\nni\xf1o,boy\n".encode("latin-1"))
    for name in ("ejemplos.yaml", "hondo.jsonl", "latin1.csv"):
        chain = write(
            tmp_path, f"examples: [{{file: {name}}}]\nprompt: '{{x}}'\ninputs: {{x: t}}\n"
        )
        out = eslabon("validate", str(chain))
        assert out.returncode == 2, (name, out.stdout)
        assert f"{chain}:1:" in out.stdout and "Traceback" not in out.stdout + out.stderr
    assert "not UTF-8" in out.stdout


def test_a_chain_file_over_the_size_limit_is_refused_at_once(tmp_path: Path) -> None:
    chain = tmp_path / "grande.yaml"
    with chain.open("w") as f:
        f.write("prompt: hola\nexamples:\n")
        f.write("  - {input: aaaaaaaaaaaaaaaaaaaa, output: bbbbbbbbbbbbbbbbbbbbbbbbbbb}\n" * 30_000)
    out = eslabon("validate", str(chain))
    assert out.returncode == 2 and "up to 1,000,000 bytes" in out.stdout


# -- 8. model settings are validated wherever they are given ----------------------------------


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ("{provider: local, max_tokens: -1}", "max_tokens"),
        ("{provider: local, temperature: 50}", "temperature"),
        ("{provider: local, top_k: -5}", "top_k"),
        ("{provider: openai, name: m, top_p: 9.0}", "top_p"),
        ("{provider: openai, name: m, presence_penalty: 99.0}", "presence_penalty"),
        ("{provider: local, max_tokens: abc}", "max_tokens"),
        ("{provider: local, stop: ['']}", "stop"),
        ("{provider: local, n_ctx: -3}", "n_ctx"),
        ("{provider: openai, name: m, timeout: abc}", "timeout"),
        ("{provider: openai, name: m, n_ctx: 512}", "n_ctx"),
    ],
)
def test_model_mapping_settings_are_validated(tmp_path: Path, mapping: str, key: str) -> None:
    chain = write(tmp_path, f"model: {mapping}\nprompt: hola\n")
    out = eslabon("validate", str(chain))
    assert out.returncode == 2, out.stdout
    assert f"{chain}:1:" in out.stdout and f"model.{key}" in out.stdout
    # the same mapping on the command line is refused with the same exit code, no traceback
    hola = write(tmp_path, "prompt: hola\n", "hola.yaml")
    run = eslabon("run", str(hola), "-m", mapping, env={"OPENAI_API_KEY": "x"})
    assert run.returncode == 2, run.stderr
    assert key in run.stderr and "Traceback" not in run.stderr


def test_params_stop_cannot_be_empty(tmp_path: Path) -> None:
    chain = write(tmp_path, "params: {stop: ['', '\\n']}\nprompt: hola\n")
    out = eslabon("validate", str(chain))
    assert out.returncode == 2 and "params.stop" in out.stdout


# -- 9. keys are never shown -------------------------------------------------------------------


def test_models_never_prints_an_alias_key(tmp_path: Path) -> None:
    root = project(
        tmp_path, '[models]\nmio = {provider = "openai", name = "m", api_key = "abc12"}\n'
    )
    out = eslabon("models", cwd=root)
    assert out.returncode == 0, out.stderr
    assert "alias mio -> openai:m" in out.stdout and "abc12" not in out.stdout


def test_a_literal_key_warns_and_is_never_shown_whatever_its_length(
    server: WireServer, tmp_path: Path
) -> None:
    root = project(tmp_path)
    server.fail_next("auth")
    chain = write(
        root / "chains",
        f"model: {{provider: openai, name: m, base_url: '{server.url}/v1', api_key: k9}}\n"
        "prompt: hola\n",
    )
    out = eslabon("validate", str(chain), cwd=root)
    assert out.returncode == 0
    assert f"{chain}:1:" in out.stdout and "warning: model.api_key" in out.stdout
    assert "k9" not in out.stdout
    run = eslabon("run", str(chain), cwd=root)
    assert run.returncode == 2 and auth_headers(server) == ["Bearer k9"]
    assert "k9" not in run.stderr


def test_short_keys_are_redacted_as_whole_words() -> None:
    from eslabon.trust.redaction import add_secret, redact

    add_secret("zq7")
    assert redact("key zq7 refused; zq77 and azq7 are other words") == (
        "key *** refused; zq77 and azq7 are other words"
    )


# -- 10. user mistakes exit 2 with a clear message --------------------------------------------


@pytest.mark.model
def test_a_tiny_context_window_is_a_clear_error(tmp_path: Path) -> None:
    chain = write(tmp_path, "prompt: Saluda a Ana con una frase amable, por favor.\n")
    out = eslabon("run", str(chain), "-m", "{provider: local, n_ctx: 16}")
    assert out.returncode == 2, out.stderr
    assert "context window" in out.stderr and "n_ctx" in out.stderr
    assert "broadcast" not in out.stderr


def test_a_corrupt_chat_database_names_the_file(tmp_path: Path) -> None:
    root = project(tmp_path)
    (root / ".eslabon").mkdir()
    (root / ".eslabon" / "chat.sqlite").write_bytes(b"this is not a database" * 100)
    chain = write(root / "chains", "history: true\ninputs: {q: t}\nprompt: '{q}'\n")
    out = subprocess.run(
        [EXE, "chat", str(chain), "-m", "fake:echo"],
        input="hola\n",
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "chat.sqlite" in out.stderr and "not a database" in out.stderr
    assert "Traceback" not in out.stderr


# -- 11. inputs and limits ----------------------------------------------------------------------


def test_a_null_input_is_never_sent_as_none(tmp_path: Path) -> None:
    from eslabon import load_chain
    from eslabon.errors import InputError

    chain = load_chain(
        write(tmp_path, "inputs: {frase: t, tono: {default: amable}}\nprompt: '{frase} {tono}'\n"),
        model="fake:echo",
    )
    with pytest.raises(InputError, match="'frase' is null"):
        chain.invoke({"frase": None})
    assert chain.invoke({"frase": "hola", "tono": None})["output"].endswith("hola amable")


# -- 13. eslabon.toml above the project root is not read --------------------------------------


def test_a_project_file_above_the_project_root_grants_nothing(tmp_path: Path) -> None:
    (tmp_path / "eslabon.toml").write_text('[allow]\nimports = ["subprocess"]\n')
    root = project(tmp_path)
    chain = write(
        root / "chains",
        "tools: ['subprocess:getoutput']\ninputs: {q: t}\nprompt: '{q}'\n",
    )
    out = eslabon("run", str(chain), "-m", "fake:echo", "-i", "q=id", cwd=root / "chains")
    assert out.returncode == 2
    assert "importing code is off" in out.stderr
    out = eslabon("validate", str(chain), cwd=root / "chains")
    assert "subprocess" not in out.stderr  # nothing granted, nothing said
    # the project's own file does grant, and validate says which file did
    (root / "eslabon.toml").write_text('[allow]\nimports = ["mipaquete"]\n')
    out = eslabon("validate", str(chain), cwd=root / "chains")
    assert f"allow import 'mipaquete' (from {root / 'eslabon.toml'})" in out.stderr


def test_an_unwritable_or_full_file_is_the_users_to_fix(capsys: pytest.CaptureFixture[str]) -> None:
    from eslabon.interfaces.cli import _report

    full = OSError(28, "No space left on device", "/data/out.jsonl")
    assert _report(full) == 2
    assert capsys.readouterr().err == "error: /data/out.jsonl: No space left on device\n"
    assert _report(ConnectionError("reset")) == 1  # not a file of the user's: a failure


def test_a_chat_store_in_an_unusable_place_is_a_clear_error(tmp_path: Path) -> None:
    from eslabon.errors import UserError
    from eslabon.running.history import SQLiteChatHistory

    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot use the conversation store"):
        SQLiteChatHistory(tmp_path / "file" / "chat.sqlite", "s")


def test_a_schema_built_in_code_cannot_ref_outside_either() -> None:
    from eslabon.errors import UserError
    from eslabon.running.structured import resolve_output_schema

    schema = {"type": "object", "properties": {"a": {"items": [{"$ref": "file:///etc/passwd"}]}}}
    with pytest.raises(UserError, match=r"properties\.a\.items\.0\.\$ref"):
        resolve_output_schema(schema, "paso", [])


def test_allow_table_mistakes_are_clear(tmp_path: Path) -> None:
    cases = {
        '[allow]\nendpoint = ["http://x"]\n': "did you mean 'endpoints'?",
        '[allow]\nkeys = {VLLM_KEY = "http://x"}\n': "[allow] keys.VLLM_KEY must be a list",
        '[allow]\nendpoints = ["http://"]\n': "is not a URL or host",
    }
    for n, (toml, message) in enumerate(cases.items()):
        root = project(tmp_path / str(n), toml)
        write(root / "chains", "prompt: hola\n")
        out = eslabon("validate", "chains", cwd=root)
        assert out.returncode == 2, out.stdout
        assert str(root / "eslabon.toml") in out.stdout + out.stderr
        assert message in out.stdout + out.stderr and "Traceback" not in out.stderr


# -- the red-team review's variants ---------------------------------------------------------------


def test_more_ways_to_exhaust_the_machine_are_refused(tmp_path: Path) -> None:
    big = "A" * 300_000
    cases = {
        # one long anchored text used in many places
        "texto.yaml": f"x: &t {big}\nexamples:\n"
        + "".join("  - {input: *t, output: b}\n" for _ in range(30))
        + "prompt: hola\n",
        # nesting built from aliases, 60 levels each
        "alias.yaml": "".join(
            f"a{i}: &a{i} " + "[" * 60 + (f"*a{i - 1}" if i else "x") + "]" * 60 + "\n"
            for i in range(3)
        )
        + "prompt: hola\n",
        # $refs that double at each level: 2**30 subschemas to check an answer against
        "refs.yaml": "prompt: hola\noutput_schema:\n  type: object\n  $defs:\n"
        + "".join(
            f"    d{i}: {{allOf: [{{$ref: '#/$defs/d{i + 1}'}}, {{$ref: '#/$defs/d{i + 1}'}}]}}\n"
            for i in range(30)
        )
        + "    d30: {type: string}\n  properties: {a: {$ref: '#/$defs/d0'}}\n",
        # a pool of thousands of clients
        "pool.yaml": "model: {provider: openai, name: m, base_urls: ["
        + ", ".join(f"'http://127.0.0.1:{1000 + n}'" for n in range(3000))
        + "]}\nprompt: hola\n",
    }
    (tmp_path / "big.jsonl").write_text('{"input": "a", "output": "' + "b" * 4_000_000 + '"}\n')
    cases["many.yaml"] = "examples: [" + ", ".join(["{file: big.jsonl}"] * 5) + "]\nprompt: x\n"
    for name, body in cases.items():
        write(tmp_path, body, name)
    # a template the old check's regex took a minute over (cubic backtracking): fine, at once
    jinja = write(tmp_path, 'prompt: "{{' + " " * 30_000 + 'x"\n', "jinja.yaml")
    out = eslabon("validate", *(str(tmp_path / name) for name in cases), str(jinja), timeout=120)
    assert out.returncode == 2
    for name in cases:
        assert f"{tmp_path / name}:" in out.stdout, (name, out.stdout[-2000:])
    assert out.stdout.count("ok  ") == 1 and f"ok  {jinja}" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_a_prompt_too_big_to_send_is_refused_before_it_is_built(tmp_path: Path) -> None:
    from eslabon import load_chain
    from eslabon.errors import InputError

    body = "inputs: {x: {default: AAAA}}\nprompt: '" + "{x}" * 15_000 + "'\n"
    chain = load_chain(write(tmp_path, body), model="fake:echo")
    assert chain.invoke({})["output"].startswith("AAAA")
    with pytest.raises(InputError, match="its prompt would be 1,500,000,000 characters"):
        chain.invoke({"x": "A" * 100_000})


def test_files_that_are_not_files_do_not_stop_validate(tmp_path: Path) -> None:
    folder = tmp_path / "chains"
    folder.mkdir()
    (folder / "cero.yaml").symlink_to("/dev/zero")
    os.mkfifo(folder / "tubo.yaml")
    write(folder, "examples: [{file: \"a\\0b.csv\"}]\nprompt: '{x}'\ninputs: {x: t}\n", "nul.yaml")
    write(folder, f"examples: [{{file: {'n' * 300}.csv}}]\nprompt: x\n", "largo.yaml")
    write(folder, "model: 'llamacpp:a\\0b.gguf'\nprompt: x\n", "gguf.yaml")
    good = write(folder, "prompt: hola\n", "bueno.yaml")
    out = eslabon("validate", str(folder), timeout=60)
    assert out.returncode == 2 and f"ok  {good}" in out.stdout
    for name in ("cero", "tubo", "nul", "largo", "gguf"):
        assert f"{folder / name}.yaml" in out.stdout, (name, out.stdout)
    assert "not a regular file" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_a_property_named_ref_is_data_not_a_reference(tmp_path: Path) -> None:
    chain = write(
        tmp_path,
        "prompt: hola\noutput_schema:\n  type: object\n  properties:\n"
        "    $ref: {type: string}\n  required: [$ref]\n",
    )
    assert eslabon("validate", str(chain)).returncode == 0


def test_urls_are_checked_as_urls(tmp_path: Path) -> None:
    chain = write(
        tmp_path,
        "model: {provider: ollama, name: m, base_url: 'localhost:11434'}\nprompt: x\n"
        "fallbacks:\n  - {provider: openai, name: m, base_url: 'http://127.0.0.1:9[@api.openai.com'}\n"
        "  - {provider: openai, name: m, base_url: 'HTTP://127.0.0.1:9/v1'}\n",
    )
    out = eslabon("validate", str(chain))
    assert out.returncode == 2
    assert "model.base_url: not an http(s) URL" in out.stdout
    assert "fallbacks[0].base_url: not a valid URL" in out.stdout
    assert "fallbacks[1]" not in out.stdout  # an upper-case scheme is a URL too


def test_models_hides_secrets_at_any_depth(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        "[models]\nmio = {provider = 'openai', name = 'm', base_url = 'http://ana:hunter2pw@h/v1',"
        " client_kwargs = {headers = {Authorization = 'Bearer zzsecret'}},"
        " extra_body = {token = 'tok-secret', n = 1}}\n",
    )
    out = eslabon("models", cwd=root)
    assert out.returncode == 0, out.stderr
    for secret in ("hunter2pw", "zzsecret", "tok-secret"):
        assert secret not in out.stdout
    assert "'n': 1" in out.stdout


def test_a_dotenv_grant_is_shown_and_unsafe_config_files_are_refused(tmp_path: Path) -> None:
    root = project(tmp_path)
    chain = write(root / "chains", "prompt: hola\n")
    (root / ".env").write_text("ESLABON_ALLOW_ENDPOINTS=http://127.0.0.1:9\n")
    out = eslabon("validate", str(chain), cwd=root)
    assert (
        f"allow endpoint 'http://127.0.0.1:9' (from $ESLABON_ALLOW_ENDPOINTS in {root}/.env)"
        in (out.stderr)
    )
    (root / ".env").chmod(0o666)
    out = eslabon("validate", str(chain), cwd=root)
    assert out.returncode == 2 and "every user may write it" in out.stdout + out.stderr
    (root / ".env").unlink()
    (root / "eslabon.toml").write_text('[allow]\nimports = ["subprocess"]\n')
    if os.getuid() == 0:  # root can give the file away, as another user's planted file would be
        os.chown(root / "eslabon.toml", 4242, 4242)
        out = eslabon("run", str(chain), "-m", "fake:echo", cwd=root)
        assert out.returncode == 2 and "belongs to another user (uid 4242)" in out.stderr


def test_the_search_stops_at_the_home_folder(tmp_path: Path) -> None:
    (tmp_path / "eslabon.toml").write_text('[allow]\nimports = ["subprocess"]\n')
    home = tmp_path / "home"
    work = home / "trabajo"
    work.mkdir(parents=True)
    chain = write(work, "tools: ['subprocess:getoutput']\ninputs: {q: t}\nprompt: '{q}'\n")
    out = eslabon(
        "run", str(chain), "-m", "fake:echo", "-i", "q=id", env={"HOME": str(home)}, cwd=work
    )
    assert out.returncode == 2 and "importing code is off" in out.stderr


def test_the_calculator_refuses_results_too_big_to_compute() -> None:
    from eslabon.tools import calculadora

    with pytest.raises(ValueError, match="result too large"):
        calculadora("((9**999)**999)**999")
    assert calculadora("2**10 * (3 + 4)") == 7168
