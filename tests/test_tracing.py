"""OpenTelemetry tracing (eslabon.observe.tracing) against a real OTLP/HTTP receiver on loopback.

The receiver decodes what the SDK's own OTLP exporter sends (protobuf, gzip or not) back into
spans: the tests check the tree (chain -> step -> chat / execute_tool / retrieval), the GenAI
attributes, usage, errors, that no prompt text is sent unless asked, and that no key ever is.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatResult

from eslabon import FakeChatModel, load_chain
from eslabon.errors import ChainConfigError
from eslabon.observe import tracing
from eslabon.trust.project import Project, TracingConfig, load_project
from helpers import CHAINS, ROOT, write
from wire_server import ToolCall, WireServer

EXE = str(Path(sys.executable).parent / "eslabon")
SECRET = "sk-test-secret-123"
PROMPT_TEXT = "PALABRA-DEL-PROMPT"
REPLY_TEXT = "PALABRA-DE-LA-RESPUESTA"


# -- the receiver ---------------------------------------------------------------------------
@dataclass
class Span:
    name: str
    span_id: bytes
    parent_id: bytes
    trace_id: bytes
    kind: int
    status: int  # 0 unset, 1 ok, 2 error
    message: str
    start: int
    end: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclass
class Collector:
    """An OTLP/HTTP traces receiver on 127.0.0.1: POST /v1/traces, protobuf, gzip or not."""

    bodies: list[bytes] = field(default_factory=list)  # as decompressed
    headers: list[dict[str, str]] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                with collector.lock:
                    collector.bodies.append(body)
                    collector.headers.append(dict(self.headers.items()))
                    collector.spans.extend(_decode(request))
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def wait(self, count: int, timeout: float = 10.0) -> list[Span]:
        """The spans received, once there are at least ``count`` (flushing first)."""
        tracing.force_flush(timeout)
        deadline = time.monotonic() + timeout
        while len(self.spans) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.spans)


def _decode(request: Any) -> Iterator[Span]:
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                yield Span(
                    name=s.name,
                    span_id=s.span_id,
                    parent_id=s.parent_span_id,
                    trace_id=s.trace_id,
                    kind=s.kind,
                    status=s.status.code,
                    message=s.status.message,
                    start=s.start_time_unix_nano,
                    end=s.end_time_unix_nano,
                    attributes=_attributes(s.attributes),
                    resource=resource,
                    scope=scope_spans.scope.name,
                )


def children(spans: list[Span], parent: Span) -> list[Span]:
    """``parent``'s children, in the order they started."""
    found = [s for s in spans if s.parent_id == parent.span_id and s.trace_id == parent.trace_id]
    return sorted(found, key=lambda s: s.start)


def roots(spans: list[Span]) -> list[Span]:
    return sorted((s for s in spans if not s.parent_id), key=lambda s: s.start)


def tree(spans: list[Span], node: Span) -> Any:
    """``node`` and its descendants as (name, [children...]): a whole tree in one assert."""
    return (node.name, [tree(spans, c) for c in children(spans, node)])


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _clean_tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No OTEL_* from the machine, and no handler or exporter left for the next test."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    tracing.shutdown(1.0)
    yield
    tracing.shutdown(1.0)


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    """A receiver, and the standard variable pointing at it."""
    receiver = Collector()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    yield receiver
    receiver.close()


def traced(chain: Any, inputs: dict[str, Any], **config: Any) -> dict[str, Any]:
    """``chain.invoke(inputs)`` with the configured handler in its callbacks (what the compiled
    chain does by itself once it asks tracing_handler)."""
    handler = tracing.tracing_handler()
    assert handler is not None
    result: dict[str, Any] = chain.invoke(inputs, config={"callbacks": [handler], **config})
    return result


def answer(text: str, input_tokens: int, output_tokens: int, model: str = "fake") -> AIMessage:
    """A scripted reply with its own usage, as a provider's reply carries it."""
    return AIMessage(
        text,
        usage_metadata={
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        },
        response_metadata={"model_name": model, "finish_reason": "stop"},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- when tracing is on ---------------------------------------------------------------------
def test_off_unless_configured_and_then_nothing_of_opentelemetry_is_loaded(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    code = (
        "import sys\n"
        "from eslabon.observe.tracing import tracing_handler\n"
        "from eslabon.trust.project import load_project\n"
        "assert tracing_handler(load_project()) is None\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("args", [["--help"], ["validate", "chains/"]])
def test_fast_commands_load_no_opentelemetry_even_when_configured(args: list[str]) -> None:
    code = (
        "import sys\n"
        "from eslabon.interfaces.cli import main\n"
        f"sys.argv = ['eslabon', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('OTEL', sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert "OTEL []" in done.stdout, done.stdout + done.stderr


def test_settings_come_from_the_environment_before_the_project_file(tmp_path: Path) -> None:
    project = Project(
        root=tmp_path,
        file=tmp_path / "eslabon.toml",
        tracing=TracingConfig(
            endpoint="http://collector:4318/", capture_content=True, service_name="mi-app"
        ),
    )
    settings = tracing.tracing_settings
    assert settings(None, {}) is None
    assert settings(Project(root=tmp_path), {}) is None  # no [tracing]: off
    from_file = settings(project, {})
    assert from_file is not None
    assert from_file.traces_url == "http://collector:4318/v1/traces"
    assert (from_file.capture_content, from_file.service_name) == (True, "mi-app")
    assert "eslabon.toml" in from_file.source
    base = settings(project, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318"})
    assert base is not None and base.traces_url == "http://otel:4318/v1/traces"
    exact = settings(
        project,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:9999/custom",
        },
    )
    assert exact is not None and exact.traces_url == "http://traces:9999/custom"  # as it is
    no_capture = settings(project, {tracing.CAPTURE_VAR: "false"})
    assert no_capture is not None and not no_capture.capture_content  # the variable wins
    on = settings(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", tracing.CAPTURE_VAR: "True"})
    assert on is not None and on.capture_content
    assert settings(project, {"OTEL_SDK_DISABLED": "true"}) is None
    assert settings(project, {"OTEL_TRACES_EXPORTER": "none"}) is None


def test_the_tracing_table_of_eslabon_toml(tmp_path: Path) -> None:
    (tmp_path / "eslabon.toml").write_text(
        '[tracing]\nendpoint = "http://localhost:4318"\ncapture_content = true\n'
        'service_name = "curso"\n',
        encoding="utf-8",
    )
    assert load_project(tmp_path).tracing == TracingConfig(
        endpoint="http://localhost:4318", capture_content=True, service_name="curso"
    )
    cases = {
        "capture_contents = true": (
            "unknown key 'capture_contents' in [tracing]",
            "capture_content",
        ),
        'headers = {x-api-key = "k"}': ("does not take headers", "OTEL_EXPORTER_OTLP_HEADERS"),
        'endpoint = "localhost:4318"': ("an http(s) URL", "http://localhost:4318"),
        'capture_content = "yes"': ("true or false", "capture_content = true"),
        'service_name = ""': ("non-empty", "service_name ="),
    }
    for n, (line, (message, hint)) in enumerate(cases.items()):
        folder = tmp_path / f"p{n}"
        folder.mkdir()
        (folder / "eslabon.toml").write_text(f"[tracing]\n{line}\n", encoding="utf-8")
        with pytest.raises(ChainConfigError) as caught:
            load_project(folder)
        text = str(caught.value)
        assert message in text and hint in text and "eslabon.toml" in text, text


def test_a_bad_setting_is_one_warning_and_no_tracing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318")
    assert tracing.tracing_handler() is None
    assert tracing.tracing_handler() is None  # cached: said once
    [record] = [r for r in caplog.records if r.name == tracing.__name__]
    assert "not an http(s) URL" in record.getMessage()
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in record.getMessage()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert tracing.tracing_handler() is None
    assert "http/protobuf" in caplog.records[-1].getMessage()


def test_without_the_extra_it_is_one_warning_naming_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    # None in sys.modules: the import fails, as when the package is not installed
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    assert tracing.tracing_handler() is None
    [record] = [r for r in caplog.records if r.name == tracing.__name__]
    assert "pip install 'eslabon[otel]'" in record.getMessage()


# -- the span tree --------------------------------------------------------------------------
def test_a_chain_run_is_a_tree_of_spans_in_the_genai_conventions(collector: Collector) -> None:
    model = FakeChatModel(
        responses=[answer("ANÁLISIS", 21, 3), answer("PLAN", 34, 5), answer("SOLUCIÓN", 13, 8)]
    )
    chain = load_chain(CHAINS / "analizar_planificar_resolver.yaml", model=model)
    result = traced(chain, {"problema": f"el problema {PROMPT_TEXT}"})
    assert result["output"] == "SOLUCIÓN"
    spans = collector.wait(7)
    [root] = roots(spans)
    assert tree(spans, root) == (
        "invoke_workflow analizar_planificar_resolver",
        [
            ("step analisis", [("chat fake", [])]),
            ("step plan", [("chat fake", [])]),
            ("step solucion", [("chat fake", [])]),
        ],
    )
    assert root.attributes == {
        "gen_ai.operation.name": "invoke_workflow",
        "gen_ai.workflow.name": "analizar_planificar_resolver",
        "eslabon.chain": "analizar_planificar_resolver",
        "eslabon.run_id": root.attributes["eslabon.run_id"],
    }
    assert root.resource["service.name"] == "eslabon" and root.scope == "eslabon"
    steps = children(spans, root)
    usage = [(21, 3), (34, 5), (13, 8)]
    ids = ["analisis", "plan", "solucion"]
    for step, step_id, tokens in zip(steps, ids, usage, strict=True):
        [chat] = children(spans, step)
        assert step.attributes == {"eslabon.step": step_id}
        assert chat.kind == 3  # CLIENT
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.provider.name"] == "fake"
        assert chat.attributes["gen_ai.system"] == "fake"
        assert chat.attributes["gen_ai.request.model"] == "fake"
        assert chat.attributes["gen_ai.response.model"] == "fake"
        assert chat.attributes["gen_ai.response.finish_reasons"] == ["stop"]
        got = (
            chat.attributes["gen_ai.usage.input_tokens"],
            chat.attributes["gen_ai.usage.output_tokens"],
        )
        assert got == tokens
        assert chat.attributes["eslabon.step"] == step_id
        # a step lasts from its first call to its last one, inside the chain's run
        assert root.start <= step.start <= chat.start and chat.end == step.end <= root.end
        assert all(s.status == 0 for s in (root, step, chat))
    assert steps[0].end <= steps[1].start  # one after the other
    raw = b"".join(collector.bodies)
    for text in (PROMPT_TEXT, "ANÁLISIS", "PLAN", "SOLUCIÓN", "Analiza el problema"):
        assert text.encode() not in raw  # no prompt or reply text unless asked


def openai_ref(server: WireServer) -> dict[str, Any]:
    """OpenAI itself, at the loopback server (as tests/test_providers.py reaches it)."""
    return {
        "provider": "openai",
        "name": "gpt-4o-mini",
        "openai_api_base": server.url + "/v1",
        "max_retries": 0,
    }


def test_request_settings_reach_the_model_span(
    collector: Collector, server: WireServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    path = write(
        tmp_path,
        "name: hola\ninputs: {x: x}\nprompt: '{x}'\n"
        "params: {temperature: 0.3, max_tokens: 40, top_p: 0.5, seed: 7, stop: ['FIN']}\n",
    )
    traced(load_chain(path, model=openai_ref(server)), {"x": "hola"})
    [chat] = [s for s in collector.wait(3) if s.name.startswith("chat")]
    assert chat.name == "chat gpt-4o-mini"
    assert chat.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert chat.attributes["gen_ai.request.temperature"] == pytest.approx(0.3)
    assert chat.attributes["gen_ai.request.max_tokens"] == 40
    assert chat.attributes["gen_ai.request.top_p"] == pytest.approx(0.5)
    assert chat.attributes["gen_ai.request.seed"] == 7
    assert chat.attributes["gen_ai.request.stop_sequences"] == ["FIN"]


def test_tool_calls_are_spans_of_their_step(collector: Collector) -> None:
    call = AIMessage(
        "", tool_calls=[{"name": "calculadora", "args": {"expresion": "17*23"}, "id": "c1"}]
    )
    model = FakeChatModel(responses=[call, answer("Son 391.", 40, 3)])
    chain = load_chain(CHAINS / "calculadora.yaml", model=model)
    assert traced(chain, {"pregunta": "¿17 por 23?"})["output"] == "Son 391."
    spans = collector.wait(5)
    [root] = roots(spans)
    assert tree(spans, root) == (
        "invoke_workflow calculadora",
        [("step output", [("chat fake", []), ("execute_tool calculadora", []), ("chat fake", [])])],
    )
    [step] = children(spans, root)
    tool = children(spans, step)[1]
    assert tool.kind == 1  # INTERNAL
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "calculadora"
    assert tool.attributes["gen_ai.tool.type"] == "function"
    assert "gen_ai.tool.call.arguments" not in tool.attributes  # content: not by default
    assert "gen_ai.tool.call.result" not in tool.attributes
    assert b"17*23" not in b"".join(collector.bodies)


def test_retrieval_spans_count_documents(collector: Collector, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "name: rag\ninputs: {pregunta: x}\n"
        "retriever:\n  type: static\n  k: 2\n  documents:\n"
        "    - {content: 'Los LLM predicen el siguiente token.', source: llm.md}\n"
        "    - {content: 'Los embeddings son vectores.', source: emb.md}\n"
        "    - {content: 'La atención pondera el contexto.', source: att.md}\n"
        "steps:\n"
        "  - id: responder\n    prompt: '{context} {pregunta}'\n"
        "  - id: revisar\n    prompt: '{context} {responder}'\n"
        "    retriever: {type: static, k: 1, documents: [{content: 'Solo uno.', source: a.md}]}\n"
        "output: revisar\n",
    )
    traced(load_chain(path, model=FakeChatModel(responses=["uno", "dos"])), {"pregunta": "¿?"})
    spans = collector.wait(7)
    [root] = roots(spans)
    assert tree(spans, root) == (
        "invoke_workflow rag",
        [
            ("retrieval StaticRetriever", []),  # the chain's own, before the steps
            ("step responder", [("chat fake", [])]),
            ("step revisar", [("retrieval StaticRetriever", []), ("chat fake", [])]),
        ],
    )
    first = children(spans, root)[0]
    second = children(spans, children(spans, root)[2])[0]
    assert first.attributes["gen_ai.operation.name"] == "retrieval"
    assert first.attributes["eslabon.retrieval.document_count"] == 2
    assert second.attributes["eslabon.retrieval.document_count"] == 1
    assert second.attributes["eslabon.step"] == "revisar"
    assert "gen_ai.retrieval.query.text" not in first.attributes
    assert b"siguiente token" not in b"".join(collector.bodies)


def test_wrappers_inside_a_step_are_no_spans_of_their_own(collector: Collector) -> None:
    wrong = json.dumps({"nombre": "Ana"})  # the rest is missing: asked again
    right = json.dumps(
        {"nombre": "Ana", "edad": 31, "ciudad": "Lima", "profesion": "médica", "idiomas": []}
    )
    model = FakeChatModel(responses=[wrong, right])
    chain = load_chain(CHAINS / "extraer_persona.yaml", model=model)
    traced(chain, {"texto": "Ana tiene 31 años"})
    spans = collector.wait(4)
    [root] = roots(spans)
    [(step, calls)] = tree(spans, root)[1]
    assert step.startswith("step ") and calls == [("chat fake", []), ("chat fake", [])]


# -- failures -------------------------------------------------------------------------------
class BrokenModel(BaseChatModel):
    """A chat model that always fails, quoting its prompt (as some providers' errors do)."""

    @property
    def _llm_type(self) -> str:
        return "broken"

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        raise RuntimeError(f"the model broke on: {messages[-1].text}")


def test_a_failing_model_marks_its_span_its_step_and_the_chain(collector: Collector) -> None:
    model = FakeChatModel(responses=[answer("ANÁLISIS", 1, 1)])
    chain = load_chain(CHAINS / "analizar_planificar_resolver.yaml", model=model)
    chain.steps[1].model = BrokenModel()  # the plan step fails
    with pytest.raises(Exception, match="the model broke"):
        traced(chain, {"problema": PROMPT_TEXT})
    spans = collector.wait(5)
    [root] = roots(spans)
    assert tree(spans, root) == (
        "invoke_workflow analizar_planificar_resolver",
        [("step analisis", [("chat fake", [])]), ("step plan", [("chat", [])])],
    )
    ok, failed = children(spans, root)
    [chat] = children(spans, failed)
    assert [s.status for s in (root, ok, failed, chat)] == [2, 0, 2, 2]
    assert chat.attributes["error.type"] == "RuntimeError"
    assert chat.message == "RuntimeError"  # the message quotes the prompt: not by default
    assert PROMPT_TEXT.encode() not in b"".join(collector.bodies)


def test_a_provider_error_on_the_wire(
    collector: Collector, server: WireServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = openai_ref(server)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server.fail_next("server")
    with pytest.raises(Exception):  # noqa: B017 - which one is the provider tests' concern
        traced(load_chain(CHAINS / "hola.yaml", model=ref), {"nombre": "Ana"})
    spans = collector.wait(3)
    [chat] = [s for s in spans if s.name.startswith("chat")]
    assert chat.status == 2 and chat.attributes["error.type"]
    assert chat.attributes["gen_ai.provider.name"] == "openai"


def test_a_retried_call_is_two_model_spans_in_a_step_that_succeeded(
    collector: Collector, server: WireServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    path = write(
        tmp_path,
        "name: reintento\ninputs: {x: x}\nprompt: '{x}'\nretry: {attempts: 2, backoff: 0.01}\n",
    )
    server.fail_next("server")  # a 500: transient, tried again
    assert traced(load_chain(path, model=openai_ref(server)), {"x": "hola"})["output"]
    spans = collector.wait(4)
    [root] = roots(spans)
    assert tree(spans, root) == (
        "invoke_workflow reintento",
        [("step output", [("chat gpt-4o-mini", []), ("chat gpt-4o-mini", [])])],
    )
    [step] = children(spans, root)
    failed, answered = children(spans, step)
    assert [s.status for s in (root, step, failed, answered)] == [0, 0, 2, 0]
    assert "gen_ai.usage.input_tokens" not in failed.attributes
    assert answered.attributes["gen_ai.usage.input_tokens"] == 10


# -- content, opted in, and keys never ------------------------------------------------------
def test_content_only_when_opted_in_and_redacted_even_then(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tracing.CAPTURE_VAR, "true")
    monkeypatch.setenv("MY_SERVICE_TOKEN", SECRET)  # a secret-looking variable: redacted
    call = AIMessage(
        "", tool_calls=[{"name": "calculadora", "args": {"expresion": "17*23"}, "id": "c1"}]
    )
    model = FakeChatModel(responses=[call, answer(REPLY_TEXT, 40, 3)])
    chain = load_chain(CHAINS / "calculadora.yaml", model=model)
    traced(chain, {"pregunta": f"{PROMPT_TEXT} 17 por 23 con la clave {SECRET}"})
    spans = collector.wait(5)
    first, tool, second = sorted(
        (s for s in spans if s.name.startswith(("chat", "execute_tool"))), key=lambda s: s.start
    )
    asked = json.loads(first.attributes["gen_ai.input.messages"])
    assert asked[0]["role"] == "system" and "calculadora" in asked[0]["parts"][0]["content"]
    assert asked[-1]["role"] == "user"
    assert asked[-1]["parts"][0]["content"] == f"{PROMPT_TEXT} 17 por 23 con la clave ***"
    [called] = json.loads(first.attributes["gen_ai.output.messages"])
    assert called["parts"] == [
        {
            "type": "tool_call",
            "id": "c1",
            "name": "calculadora",
            "arguments": {"expresion": "17*23"},
        }
    ]
    assert json.loads(tool.attributes["gen_ai.tool.call.arguments"]) == {"expresion": "17*23"}
    assert json.loads(tool.attributes["gen_ai.tool.call.result"]) in (391, "391")
    [replied] = json.loads(second.attributes["gen_ai.output.messages"])
    assert replied == {
        "role": "assistant",
        "parts": [{"type": "text", "content": REPLY_TEXT}],
        "finish_reason": "stop",
    }
    assert SECRET.encode() not in b"".join(collector.bodies)


def test_capture_content_from_the_project_file(collector: Collector, tmp_path: Path) -> None:
    project = Project(root=tmp_path, tracing=TracingConfig(capture_content=True))
    handler = tracing.tracing_handler(project)
    assert handler is not None
    chain = load_chain(CHAINS / "hola.yaml", model="fake:echo")
    chain.invoke({"nombre": PROMPT_TEXT}, config={"callbacks": [handler]})
    collector.wait(3)
    assert PROMPT_TEXT.encode() in b"".join(collector.bodies)


def test_a_key_never_reaches_the_collector(
    collector: Collector, server: WireServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real provider (OpenAI's protocol on loopback) with its key, streamed and not, with
    every piece of content opted in: the key is in no exported byte. The collector's own
    header comes from OTEL_EXPORTER_OTLP_HEADERS, to the collector only."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv(tracing.CAPTURE_VAR, "true")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=colector-123456789")
    ref = openai_ref(server)
    chain = load_chain(CHAINS / "calculadora.yaml", model=ref)
    server.replies.extend([ToolCall("calculadora", {"expresion": "17*23"}), "Son 391."])
    traced(chain, {"pregunta": f"¿17 por 23? ({SECRET})"})
    handler = tracing.tracing_handler()
    hola = load_chain(CHAINS / "hola.yaml", model=ref)
    chunks = list(hola.stream({"nombre": "Ana"}, config={"callbacks": [handler]}))
    assert chunks
    spans = collector.wait(8)
    assert len(server.requests) == 3
    chats = sorted((s for s in spans if s.name.startswith("chat")), key=lambda s: s.start)
    assert [s.name for s in chats] == ["chat gpt-4o-mini"] * 3
    first = chats[0].attributes
    assert first["gen_ai.provider.name"] == "openai"
    assert first["gen_ai.response.model"] == "gpt-4o-mini"
    assert first["gen_ai.response.id"].startswith("chatcmpl-")  # the provider's own id
    assert first["gen_ai.usage.input_tokens"] == 10  # as the server reported it
    streamed = chats[2].attributes
    assert streamed["gen_ai.request.stream"] is True
    assert streamed["gen_ai.response.time_to_first_chunk"] > 0
    raw = b"".join(collector.bodies)
    assert SECRET.encode() not in raw
    assert b"colector-123456789" not in raw
    assert all(h.get("x-collector-key") == "colector-123456789" for h in collector.headers)


# -- every way of running -------------------------------------------------------------------
async def test_async_runs_and_batches_are_separate_complete_traces(
    collector: Collector,
) -> None:
    handler = tracing.tracing_handler()
    chain = load_chain(CHAINS / "analizar_planificar_resolver.yaml", model="fake:echo")
    config: Any = {"callbacks": [handler]}
    await chain.ainvoke({"problema": "uno"}, config=config)
    chain.batch([{"problema": "dos"}, {"problema": "tres"}, {"problema": "cuatro"}], config=config)
    spans = collector.wait(4 * 7)
    found = roots(spans)
    assert len(found) == 4 and len({r.trace_id for r in found}) == 4
    for root in found:
        assert tree(spans, root) == (
            "invoke_workflow analizar_planificar_resolver",
            [
                ("step analisis", [("chat echo", [])]),
                ("step plan", [("chat echo", [])]),
                ("step solucion", [("chat echo", [])]),
            ],
        )


def test_a_run_inside_an_applications_span_joins_its_trace(collector: Collector) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    app = TracerProvider(shutdown_on_exit=False).get_tracer("app")
    chain = load_chain(CHAINS / "hola.yaml", model="fake:echo")
    with app.start_as_current_span("request") as request:
        traced(chain, {"nombre": "Ana"})
    [root] = [s for s in collector.wait(3) if s.name.startswith("invoke_workflow")]
    assert root.trace_id == request.get_span_context().trace_id.to_bytes(16, "big")
    assert root.parent_id == request.get_span_context().span_id.to_bytes(8, "big")


def test_a_handler_for_the_applications_own_provider() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exported = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    handler = tracing.handler_for(provider)
    load_chain(CHAINS / "hola.yaml", model="fake:echo").invoke(
        {"nombre": "Ana"}, config={"callbacks": [handler]}
    )
    names = sorted(s.name for s in exported.get_finished_spans())
    assert names == ["chat echo", "invoke_workflow hola", "step output"]


# -- a collector that is down ---------------------------------------------------------------
def test_a_collector_that_is_down_fails_no_run_and_holds_no_exit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    result = traced(load_chain(CHAINS / "hola.yaml", model="fake:echo"), {"nombre": "Ana"})
    assert result["output"]
    started = time.monotonic()
    tracing.shutdown(1.0)  # what the exit hook does, with its bound
    assert time.monotonic() - started < 2.5
    said = [r.getMessage() for r in caplog.records if r.name == tracing.__name__]
    assert said and all("collector" in m for m in said)
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]  # no retry noise


# -- the command line -----------------------------------------------------------------------
def _cli_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OPENAI_API_KEY": SECRET}


def test_eslabon_run_sends_its_spans_before_it_exits(tmp_path: Path) -> None:
    receiver = Collector()
    try:
        path = write(tmp_path, "name: cli\ninputs: {x: x}\nprompt: '{x}'\nmodel: fake:echo\n")
        done = subprocess.run(
            [EXE, "run", str(path), "-i", f"x={PROMPT_TEXT}"],
            env=_cli_env(receiver.url),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert PROMPT_TEXT in done.stdout
        spans = list(receiver.spans)  # already there: sent before the process ended
        [root] = roots(spans)
        assert tree(spans, root) == ("invoke_workflow cli", [("step output", [("chat echo", [])])])
        raw = b"".join(receiver.bodies)
        assert PROMPT_TEXT.encode() not in raw and SECRET.encode() not in raw
    finally:
        receiver.close()


def test_the_projects_tracing_endpoint_exports_spans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[tracing] endpoint`` in eslabon.toml, no OTEL_* variable: ``eslabon run`` and a
    chain loaded in Python (in the project's folder) both send their spans there, named by
    ``service_name``."""
    receiver = Collector()
    try:
        (tmp_path / "eslabon.toml").write_text(
            f'[tracing]\nendpoint = "{receiver.url}"\nservice_name = "curso-proyecto"\n',
            encoding="utf-8",
        )
        path = write(tmp_path, "name: cli\ninputs: {x: x}\nprompt: '{x}'\nmodel: fake:echo\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        done = subprocess.run(
            [EXE, "run", str(path), "-i", "x=hola", "--no-log"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        spans = list(receiver.spans)  # sent before the process ended
        [root] = roots(spans)
        assert tree(spans, root) == ("invoke_workflow cli", [("step output", [("chat echo", [])])])
        assert root.resource["service.name"] == "curso-proyecto"
        # in Python: the compiled chain finds the project's [tracing] by itself
        monkeypatch.chdir(tmp_path)
        chain = load_chain(path)
        assert tracing.tracing_handler(chain.project) is not None
        chain.invoke({"x": "adiós"})
        spans = receiver.wait(6)
        assert len(roots(spans)) == 2
        assert all(s.resource["service.name"] == "curso-proyecto" for s in spans)
    finally:
        receiver.close()


def test_eslabon_run_with_the_collector_down_neither_fails_nor_hangs(tmp_path: Path) -> None:
    path = write(tmp_path, "name: cli\ninputs: {x: x}\nprompt: '{x}'\nmodel: fake:echo\n")
    started = time.monotonic()
    done = subprocess.run(
        [EXE, "run", str(path), "-i", "x=hola"],
        env=_cli_env(f"http://127.0.0.1:{free_port()}"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "hola" in done.stdout
    assert took < 20, took  # the start-up plus at most EXIT_FLUSH_SECONDS
    assert "Traceback" not in done.stderr
    assert SECRET not in done.stderr


def test_langsmith_keeps_working_through_langchains_variables(tmp_path: Path) -> None:
    """``eslabon run`` with LangChain's own LangSmith variables, against a loopback LangSmith
    endpoint: the chain run, its model call as a child tagged with the step, and no key in a
    body (the key goes in LangSmith's header, to LangSmith)."""
    from email import message_from_bytes
    from email.policy import HTTP

    posted: list[tuple[str, bytes]] = []

    class LangSmith(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def do_GET(self) -> None:  # /info: no special flags
            self._reply()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posted.append((self.headers.get("Content-Type", ""), body))
            self._reply()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), LangSmith)
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        path = write(tmp_path, "name: cli\ninputs: {x: x}\nprompt: '{x}'\nmodel: fake:echo\n")
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("OTEL_", "LANGSMITH_", "LANGCHAIN_"))
            },
            "LANGSMITH_TRACING": "true",
            "LANGSMITH_ENDPOINT": f"http://127.0.0.1:{httpd.server_address[1]}",
            "LANGSMITH_API_KEY": SECRET,
            "LANGSMITH_DISABLE_RUN_COMPRESSION": "true",  # plain multipart, readable here
        }
        done = subprocess.run(
            [EXE, "run", str(path), "-i", "x=hola"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    finally:
        httpd.shutdown()
        httpd.server_close()
    runs: dict[str, dict[str, Any]] = {}
    for content_type, body in posted:
        assert SECRET.encode() not in body
        head = f"Content-Type: {content_type}\r\n\r\n".encode()
        for part in message_from_bytes(head + body, policy=HTTP).iter_parts():
            name = str(part.get_param("name", header="content-disposition"))
            _, run_id, *field_name = name.split(".")  # post.ID, post.ID.inputs, patch.ID...
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            data = json.loads(payload)
            run = runs.setdefault(run_id, {})
            if field_name:
                run[field_name[0]] = data
            else:
                run.update(data)
    [chain] = [r for r in runs.values() if r["run_type"] == "chain"]
    [llm] = [r for r in runs.values() if r["run_type"] == "llm"]
    assert chain["name"] == "cli" and chain["outputs"]["output"] == "hola"
    assert llm["parent_run_id"] == chain["id"]
    assert "step:output" in llm["tags"]
    assert llm["extra"]["metadata"]["eslabon_step"] == "output"
