"""OpenTelemetry tracing of chain runs, in the GenAI semantic conventions, exported over OTLP.

On when the user configures it: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_ENDPOINT``, or ``[tracing] endpoint`` in ``eslabon.toml``
(docs/observability.md). Otherwise :func:`tracing_handler` returns None and nothing of
OpenTelemetry is imported. The spans of one run::

    invoke_workflow {chain}            the chain run (gen_ai.workflow.name, eslabon.chain)
      retrieval {retriever}            the chain's own retriever, if any
      step {id}                        one per step (eslabon.step)
        retrieval {retriever}          the step's retriever
        chat {model}                   every model call: retries, fallbacks, tool-loop turns
        execute_tool {tool}            every tool call

Prompts, replies, tool arguments and results, retrieved text and error messages are left out
unless the user opts in (``[tracing] capture_content = true`` or
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``), and go through
:func:`eslabon.trust.redaction.redact` even then. Keys are never read here: the exporter takes
its headers from ``OTEL_EXPORTER_OTLP_HEADERS`` itself.

Why a callback handler of our own on the OpenTelemetry SDK, rather than an existing LangChain
instrumentation (each tried on eslabon's chains, 2026-11):

* ``opentelemetry-instrumentation-langchain`` 0.62 (OpenLLMetry) patches ``BaseCallbackManager``
  for the whole process (a library must trace only when asked), records prompts, chain inputs
  and all run metadata by default (``TRACELOOP_TRACE_CONTENT`` defaults to true), reports
  ``gen_ai.provider.name=langchain`` and ``gen_ai.request.model=unknown`` for eslabon's models,
  names spans ``FakeChatModel.chat``, and has no step level.
* ``openinference-instrumentation-langchain`` 0.1.80 follows OpenInference (``llm.model_name``,
  ``llm.token_count.prompt``), not the GenAI conventions, and records prompts by default.
* ``opentelemetry-util-genai`` 1.3b0 (the conventions' own helper, not LangChain-aware) is a beta
  whose content switch is environment-only and which attaches each span as the current context
  (callbacks start and end in different frames, and in async code in different tasks).

What remains is small: map LangChain's run ids to spans (``parent_run_id`` to the parent's
context) and its callbacks' data to the conventions' attributes; the SDK does the rest.
Eslabon's steps are not LangChain runs: a step's span is made at its first call (model,
retriever or tool, found by their ``eslabon_step`` metadata) and ends at its last one's end.
LangChain runs inside a step (retry and fallback wrappers, structured-output sequences) get no
span of their own: their calls are the step's.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from eslabon.trust.redaction import redact

if TYPE_CHECKING:
    from langchain_core.documents import Document
    from langchain_core.messages import BaseMessage
    from langchain_core.outputs import LLMResult
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.trace import Span, SpanKind, Tracer, TracerProvider

    from eslabon.trust.project import Project

__all__ = [
    "CAPTURE_VAR",
    "EXIT_FLUSH_SECONDS",
    "SpanHandler",
    "TracingSettings",
    "exporting_handler",
    "force_flush",
    "handler_for",
    "shutdown",
    "tracing_handler",
    "tracing_settings",
]

_log = logging.getLogger(__name__)

TRACES_VAR = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"  # the traces URL, used as it is
BASE_VAR = "OTEL_EXPORTER_OTLP_ENDPOINT"  # the collector's base URL: /v1/traces is added
CAPTURE_VAR = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_PROTOCOL_VARS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
_TRACES_PATH = "/v1/traces"
EXIT_FLUSH_SECONDS = 3.0  # at most this long at exit to send what is left: never hang a command
STEP_KEY = "eslabon_step"  # the metadata a compiled chain gives each step's calls

# LangChain's provider names (``ls_provider``, eslabon's) as the conventions' gen_ai.provider.name
_PROVIDER_NAMES = {
    "google_genai": "gcp.gemini",
    "google_vertexai": "gcp.vertex_ai",
    "vertexai": "gcp.vertex_ai",
    "azure_openai": "azure.ai.openai",
    "azure": "azure.ai.openai",
    "bedrock": "aws.bedrock",
    "amazon_bedrock": "aws.bedrock",
    "mistralai": "mistral_ai",
    "xai": "x_ai",
}
# request settings as LangChain's invocation params name them -> the conventions' attribute
_REQUEST_PARAMS = {
    "temperature": "gen_ai.request.temperature",
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "max_output_tokens": "gen_ai.request.max_tokens",
    "num_predict": "gen_ai.request.max_tokens",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "seed": "gen_ai.request.seed",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
}


# -- settings -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TracingSettings:
    """Where spans go and what they may hold; ``source`` says who asked (for messages)."""

    traces_url: str
    capture_content: bool = False
    service_name: str | None = None
    source: str = TRACES_VAR


def _traces_url(base: str) -> str:
    """A collector's base URL as its traces URL (OTLP/HTTP adds /v1/traces to the base)."""
    base = base.rstrip("/")
    return base if base.endswith(_TRACES_PATH) else base + _TRACES_PATH


def _env_true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def tracing_settings(
    project: Project | None = None, environ: Mapping[str, str] | None = None
) -> TracingSettings | None:
    """What the environment and ``[tracing]`` ask for; None: tracing is off. The environment
    wins over the project file (as OpenTelemetry's variables do everywhere);
    ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off."""
    env = os.environ if environ is None else environ
    if _env_true(env.get("OTEL_SDK_DISABLED")):
        return None
    if (env.get("OTEL_TRACES_EXPORTER") or "").strip().lower() == "none":
        return None
    config = project.tracing if project is not None else None
    if traces := (env.get(TRACES_VAR) or "").strip():
        url, source = traces, TRACES_VAR
    elif base := (env.get(BASE_VAR) or "").strip():
        url, source = base.rstrip("/") + _TRACES_PATH, BASE_VAR
    elif config is not None and config.endpoint:
        url = _traces_url(config.endpoint)
        source = f"[tracing] endpoint in {project.file if project else 'eslabon.toml'}"
    else:
        return None
    capture = env.get(CAPTURE_VAR)
    return TracingSettings(
        traces_url=url,
        capture_content=_env_true(capture)
        if capture is not None and capture.strip()
        else bool(config and config.capture_content),
        service_name=config.service_name if config is not None else None,
        source=source,
    )


def _refusal(settings: TracingSettings, env: Mapping[str, str]) -> str | None:
    """Why these settings cannot be exported (None: they can)."""
    if not settings.traces_url.startswith(("http://", "https://")):
        return (
            f"tracing is off: {settings.source} is not an http(s) URL\n"
            f"    fix: set it to the collector's OTLP/HTTP address, e.g. http://localhost:4318"
        )
    for var in _PROTOCOL_VARS:
        protocol = (env.get(var) or "").strip().lower()
        if protocol and protocol != "http/protobuf":
            return (
                f"tracing is off: eslabon exports OTLP over HTTP (http/protobuf), and {var} "
                f"asks for {protocol}\n"
                f"    fix: unset {var} (or set it to http/protobuf) and point {BASE_VAR} at the "
                "collector's HTTP port (4318)"
            )
    return None


# -- the handlers, one per setting, for the process ------------------------------------------
_LOCK = threading.RLock()  # re-entered: tracing_handler -> exporting_handler
_HANDLERS: dict[tuple[Any, ...], SpanHandler | None] = {}
_PIPELINES: list[_Pipeline] = []
_EXIT_HOOKED = False
_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        _log.warning("eslabon: %s", redact(message))


def tracing_handler(project: Project | None = None) -> BaseCallbackHandler | None:
    """The callback handler that traces runs, when tracing is configured (by the environment
    or ``project``'s ``[tracing]``); None otherwise, cheaply and without importing
    OpenTelemetry. One handler (and exporter) per setting, for the whole process; what it has
    not sent yet is sent at exit (at most :data:`EXIT_FLUSH_SECONDS`). A misconfiguration or
    missing package is one warning, never a failed run."""
    env = os.environ
    key = (
        env.get(TRACES_VAR),
        env.get(BASE_VAR),
        env.get(CAPTURE_VAR),
        env.get("OTEL_SDK_DISABLED"),
        env.get("OTEL_TRACES_EXPORTER"),
        *(env.get(v) for v in _PROTOCOL_VARS),
        project.tracing if project is not None else None,
        project.file if project is not None and project.tracing is not None else None,
    )
    if key in _HANDLERS:  # the common path: a dict lookup
        return _HANDLERS[key]
    with _LOCK:
        if key not in _HANDLERS:
            _HANDLERS[key] = _build(tracing_settings(project), env)
        return _HANDLERS[key]


def _build(settings: TracingSettings | None, env: Mapping[str, str]) -> SpanHandler | None:
    if settings is None:
        return None
    if (why := _refusal(settings, env)) is not None:
        _warn_once(why)
        return None
    try:
        return exporting_handler(
            settings.traces_url,
            capture_content=settings.capture_content,
            service_name=settings.service_name,
            source=settings.source,
        )
    except ImportError as exc:
        _warn_once(
            f"tracing is configured ({settings.source}) but OpenTelemetry is not installed "
            f"({exc.name or exc})\n    fix: pip install 'eslabon[otel]'"
        )
    except Exception as exc:  # an exporter that cannot be made: the run goes on untraced
        _warn_once(f"tracing is off: its exporter could not be set up ({exc})")
    return None


def handler_for(
    tracer_provider: TracerProvider | None = None, *, capture_content: bool = False
) -> SpanHandler:
    """A handler whose spans go to ``tracer_provider`` (default: the application's global
    one, ``opentelemetry.trace.get_tracer_provider()``): for an application that sets up
    OpenTelemetry itself. Pass it in a run's ``config={"callbacks": [...]}``."""
    from opentelemetry import trace

    tracer = trace.get_tracer("eslabon", _version(), tracer_provider)
    return SpanHandler(tracer, capture_content=capture_content)


def exporting_handler(
    traces_url: str,
    *,
    capture_content: bool = False,
    service_name: str | None = None,
    source: str = "eslabon",
) -> SpanHandler:
    """A handler exporting to ``traces_url`` (the full OTLP/HTTP traces URL) through a tracer
    provider of its own (never the global one: that is the application's), batched, sent at
    exit and by :func:`force_flush`."""
    pipeline = _Pipeline(traces_url, service_name, source)
    with _LOCK:
        _PIPELINES.append(pipeline)
        _hook_exit()
    return handler_for(pipeline.provider, capture_content=capture_content)


def _hook_exit() -> None:
    global _EXIT_HOOKED
    if not _EXIT_HOOKED:
        atexit.register(shutdown, EXIT_FLUSH_SECONDS)
        _EXIT_HOOKED = True


def force_flush(timeout: float = 5.0) -> bool:
    """Send the spans not sent yet, waiting at most ``timeout`` seconds in all; False when
    some could not be sent in time."""
    deadline = time.monotonic() + timeout
    sent = [p.flush(max(deadline - time.monotonic(), 0.0)) for p in list(_PIPELINES)]
    return all(sent)


def shutdown(timeout: float = EXIT_FLUSH_SECONDS) -> None:
    """Send what is left and close every exporter made here (at most ``timeout`` seconds);
    later runs build new ones. Registered at exit."""
    with _LOCK:
        pipelines = list(_PIPELINES)
        _PIPELINES.clear()
        _HANDLERS.clear()
        _WARNED.clear()  # a new start: a mistake still there is said again
    deadline = time.monotonic() + timeout
    for pipeline in pipelines:
        pipeline.close(max(deadline - time.monotonic(), 0.0))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("eslabon")
    except PackageNotFoundError:  # running from a source tree
        return ""


# -- export ---------------------------------------------------------------------------------
_EXPORTING = threading.local()  # set while our exporter sends: the SDK's own retry logs are ours
_SDK_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.sdk._shared_internal",
)


class _WhileExporting(logging.Filter):
    """Drops the SDK's log lines about our own exports: its retries say a line each, and a
    stack of them on a terminal is noise. One warning of ours says the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_EXPORTING, "active", False)


_FILTER = _WhileExporting()


class _Exporter:
    """The SDK's OTLP/HTTP exporter, quieter: one warning (of ours) when the collector cannot
    be reached, not one per retry."""

    def __init__(self, url: str, source: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        self.url = url
        self.source = source
        self.inner = OTLPSpanExporter(endpoint=url)  # headers: OTEL_EXPORTER_OTLP_*HEADERS
        self.quiet = False  # set when giving up at exit: a late failure is not worth a line
        for name in _SDK_LOGGERS:
            if _FILTER not in logging.getLogger(name).filters:
                logging.getLogger(name).addFilter(_FILTER)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from opentelemetry.sdk.trace.export import SpanExportResult

        _EXPORTING.active = True
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # a broken exporter must not break the batch thread
            result = SpanExportResult.FAILURE
            _log.debug("exporting spans failed", exc_info=exc)
        finally:
            _EXPORTING.active = False
        if result is not SpanExportResult.SUCCESS and not self.quiet:
            self.warn("spans not sent")  # one text: said once, however many batches fail
        return result

    def warn(self, what: str) -> None:
        _warn_once(
            f"tracing: {what}: the collector at {self.url} did not take them\n"
            f"    fix: start the collector, or correct {self.source}"
        )

    def shutdown(self) -> None:
        self.inner.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _Pipeline:
    """A tracer provider of eslabon's own, its batch processor and exporter."""

    def __init__(self, url: str, service_name: str | None, source: str) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        attributes: dict[str, Any] = {}
        env_names = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""
        )
        if not env_names:  # the environment's service.name wins, as everywhere in OpenTelemetry
            attributes["service.name"] = service_name or "eslabon"
        self.exporter = _Exporter(url, source)
        # shutdown_on_exit=False: the SDK's own exit hook waits up to 30 s on a dead collector
        self.provider: SdkTracerProvider = TracerProvider(
            resource=Resource.create(attributes), shutdown_on_exit=False
        )
        self.processor: BatchSpanProcessor = BatchSpanProcessor(cast("SpanExporter", self.exporter))
        self.provider.add_span_processor(self.processor)

    def _bounded(self, work: Any, timeout: float) -> bool:
        """Run ``work`` in a daemon thread, waiting for it at most ``timeout`` seconds: the
        SDK's flush and shutdown take no deadline of their own."""
        thread = threading.Thread(target=work, name="eslabon-tracing-flush", daemon=True)
        thread.start()
        thread.join(timeout)
        return not thread.is_alive()

    def flush(self, timeout: float) -> bool:
        return self._bounded(self.processor.force_flush, timeout)

    def close(self, timeout: float) -> None:
        if not self._bounded(self.provider.shutdown, timeout):
            self.exporter.quiet = True
            self.exporter.warn(f"spans not sent within {timeout:.0f} s, dropped")
            self.exporter.shutdown()  # ends the SDK's retry wait in the thread left behind


# -- the handler ----------------------------------------------------------------------------
@dataclass(slots=True)
class _Step:
    span: Span
    context: Context
    last_end: int = 0  # ns: the step ends when its last call does
    failed: bool = False  # its last call failed


@dataclass(slots=True)
class _Run:
    span: Span | None  # None: a LangChain run inside a step, folded into it
    context: Context  # its children's parent
    step: str | None = None
    step_record: _Step | None = None
    steps: dict[str, _Step] = field(default_factory=dict)  # a chain's steps, by id
    started: float = 0.0  # perf_counter, for the time to the first chunk
    streamed: bool = False


def _provider(metadata: Mapping[str, Any]) -> str | None:
    name = metadata.get("eslabon_provider") or metadata.get("ls_provider")
    return _PROVIDER_NAMES.get(str(name), str(name)) if name else None


def _error_type(error: BaseException) -> str:
    kind = type(error)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _message(message: BaseMessage, finish: str | None = None) -> dict[str, Any]:
    """A message in the conventions' shape (gen_ai.input.messages / output.messages)."""
    from langchain_core.messages import ToolMessage

    role = {"human": "user", "ai": "assistant"}.get(message.type, message.type)
    parts: list[dict[str, Any]] = []
    if isinstance(message, ToolMessage):
        parts.append(
            {"type": "tool_call_response", "id": message.tool_call_id, "response": message.text}
        )
    elif message.text:
        parts.append({"type": "text", "content": message.text})
    for call in getattr(message, "tool_calls", None) or ():
        parts.append(
            {
                "type": "tool_call",
                "id": call.get("id"),
                "name": call["name"],
                "arguments": call["args"],
            }
        )
    shaped: dict[str, Any] = {"role": role, "parts": parts}
    if finish is not None:
        shaped["finish_reason"] = finish
    return shaped


def _usage(usage: Mapping[str, Any] | None, llm_output: Mapping[str, Any]) -> dict[str, int]:
    """A call's token counts as the conventions name them: LangChain's ``usage_metadata`` on
    the reply, else a completion model's ``token_usage``."""
    if usage:
        given = usage.get("input_token_details") or {}
        thought = (usage.get("output_token_details") or {}).get("reasoning")
        found = {
            "gen_ai.usage.input_tokens": usage.get("input_tokens", 0),
            "gen_ai.usage.output_tokens": usage.get("output_tokens", 0),
            "gen_ai.usage.cache_read.input_tokens": given.get("cache_read"),
            "gen_ai.usage.cache_creation.input_tokens": given.get("cache_creation"),
            "gen_ai.usage.reasoning.output_tokens": thought,
        }
    else:
        counts = llm_output.get("token_usage") or {}
        found = {
            "gen_ai.usage.input_tokens": counts.get("prompt_tokens"),
            "gen_ai.usage.output_tokens": counts.get("completion_tokens"),
        }
    return {k: v for k, v in found.items() if isinstance(v, int) and not isinstance(v, bool)}


def _json(value: Any) -> str:
    return redact(json.dumps(value, ensure_ascii=False, default=str))


class SpanHandler(BaseCallbackHandler):
    """LangChain callbacks as OpenTelemetry spans in the GenAI conventions (module docstring).

    Safe to share between runs and threads: each run's spans hang from its own records, by
    run id. A failure in here is LangChain's to log, never the run's (``raise_error`` False).
    """

    # inline: a span must start in order and in the caller's context (an application's own
    # span, when there is one, becomes the chain span's parent)
    run_inline = True
    raise_error = False

    def __init__(self, tracer: Tracer, *, capture_content: bool = False) -> None:
        from opentelemetry import context as otel_context
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.tracer = tracer
        self.capture_content = capture_content
        self._runs: dict[UUID, _Run] = {}
        self._lock = threading.Lock()
        # bound once: the handler's hot path should not look modules up
        self._current = otel_context.get_current
        self._in_context = trace.set_span_in_context
        self._kinds = SpanKind
        self._status = Status
        self._error = StatusCode.ERROR

    # -- the tree --------------------------------------------------------------------------
    def _place(
        self, parent_run_id: UUID | None, metadata: Mapping[str, Any] | None
    ) -> tuple[Context, str | None, _Step | None, _Run | None]:
        """Where a new run's span goes: its parent context, its step and step record, and
        its parent's record (None: a run we did not see start, the trace's root)."""
        parent = self._runs.get(parent_run_id) if parent_run_id is not None else None
        step = (metadata or {}).get(STEP_KEY)
        if parent is None:
            return self._current(), step, None, None
        if step is None or step == parent.step:
            return parent.context, parent.step, parent.step_record, parent
        with self._lock:  # the first call of a step in this chain opens the step's span
            record = parent.steps.get(step)
            if record is None:
                span = self.tracer.start_span(
                    f"step {step}", context=parent.context, attributes={"eslabon.step": step}
                )
                record = _Step(span, self._in_context(span, parent.context))
                parent.steps[step] = record
        return record.context, step, record, parent

    def _open(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        metadata: Mapping[str, Any] | None,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any],
    ) -> _Run:
        context, step, record, _ = self._place(parent_run_id, metadata)
        if step is not None:
            attributes["eslabon.step"] = step
        span = self.tracer.start_span(
            name,
            context=context,
            kind=kind,
            attributes={k: v for k, v in attributes.items() if v is not None},
        )
        run = _Run(span, self._in_context(span, context), step, record, started=time.perf_counter())
        self._runs[run_id] = run
        return run

    def _close(self, run_id: UUID, error: BaseException | None = None) -> _Run | None:
        run = self._runs.pop(run_id, None)
        if run is None:
            return None
        now = time.time_ns()
        if error is not None and run.span is not None:
            self._fail(run.span, error)
        for record in run.steps.values():  # a chain's steps end with their last call
            if error is not None and record.failed:
                record.span.set_status(self._status(self._error))
            record.span.end(end_time=record.last_end or now)
        if run.span is not None:
            run.span.end(end_time=now)
        if run.step_record is not None:
            run.step_record.last_end = max(run.step_record.last_end, now)
            run.step_record.failed = error is not None
        return run

    def _fail(self, span: Span, error: BaseException) -> None:
        kind = _error_type(error)
        span.set_attribute("error.type", kind)
        # an error's message may quote inputs or replies: content, shown only when opted in
        message = redact(str(error))[:2000] if self.capture_content else kind
        span.set_status(self._status(self._error, message))

    # -- chains ----------------------------------------------------------------------------
    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        parent = self._runs.get(parent_run_id) if parent_run_id is not None else None
        if parent is not None:  # inside a chain: a wrapper, its calls hang where it hangs
            context, step, record, _ = self._place(parent_run_id, metadata)
            self._runs[run_id] = _Run(None, context, step, record)
            return
        name = str(kwargs.get("name") or (serialized or {}).get("name") or "chain")
        self._open(
            run_id,
            None,
            metadata,
            f"invoke_workflow {name}",
            self._kinds.INTERNAL,
            {
                "gen_ai.operation.name": "invoke_workflow",
                "gen_ai.workflow.name": name,
                "eslabon.chain": name,
                "eslabon.run_id": str(run_id),
            },
        )

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, error)

    # -- model calls -----------------------------------------------------------------------
    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        run = self._model_start("chat", run_id, parent_run_id, metadata, kwargs)
        if self.capture_content and messages and run.span is not None:
            run.span.set_attribute(
                "gen_ai.input.messages", _json([_message(m) for m in messages[0]])
            )

    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        run = self._model_start("text_completion", run_id, parent_run_id, metadata, kwargs)
        if self.capture_content and prompts and run.span is not None:
            shaped = [{"role": "user", "parts": [{"type": "text", "content": prompts[0]}]}]
            run.span.set_attribute("gen_ai.input.messages", _json(shaped))

    def _model_start(
        self,
        operation: str,
        run_id: UUID,
        parent_run_id: UUID | None,
        metadata: dict[str, Any] | None,
        kwargs: dict[str, Any],
    ) -> _Run:
        meta = metadata or {}
        params = kwargs.get("invocation_params") or {}
        model = meta.get("eslabon_model_name") or meta.get("ls_model_name")
        if not model:
            model = params.get("model") or params.get("model_name")
        provider = _provider(meta)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider,
            "gen_ai.system": provider,  # the conventions' former name, still widely read
            "gen_ai.request.model": str(model) if model else None,
        }
        for key, attribute in _REQUEST_PARAMS.items():
            value = params.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes.setdefault(attribute, value)
        if isinstance(t := meta.get("ls_temperature"), int | float):
            attributes["gen_ai.request.temperature"] = t
        if isinstance(n := meta.get("ls_max_tokens"), int):
            attributes["gen_ai.request.max_tokens"] = n
        stop = meta.get("ls_stop") or params.get("stop")
        if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
            attributes["gen_ai.request.stop_sequences"] = stop
        name = f"{operation} {model}" if model else operation
        return self._open(run_id, parent_run_id, meta, name, self._kinds.CLIENT, attributes)

    def on_llm_new_token(
        self, token: str | list[str | dict[str, Any]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        run = self._runs.get(run_id)
        if run is not None and not run.streamed and run.span is not None:
            run.streamed = True  # LangChain says a call streams only by its first chunk
            run.span.set_attributes(
                {
                    "gen_ai.request.stream": True,
                    "gen_ai.response.time_to_first_chunk": time.perf_counter() - run.started,
                }
            )

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._runs.get(run_id)
        if run is not None and run.span is not None:
            self._answer(run.span, response)
        self._close(run_id)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, error)

    def _answer(self, span: Span, response: LLMResult) -> None:
        """Usage, the model that answered, why it stopped (and, opted in, the reply)."""
        generation = (
            response.generations[0][0] if response.generations and response.generations[0] else None
        )
        message = getattr(generation, "message", None)
        meta: dict[str, Any] = dict(getattr(message, "response_metadata", None) or {})
        llm_output = response.llm_output or {}
        span.set_attributes(_usage(getattr(message, "usage_metadata", None), llm_output))
        answered = meta.get("model_name") or meta.get("model") or llm_output.get("model_name")
        if isinstance(answered, str) and answered:
            span.set_attribute("gen_ai.response.model", answered)
        if isinstance(ident := meta.get("id"), str) and ident:
            span.set_attribute("gen_ai.response.id", ident)
        info = getattr(generation, "generation_info", None) or {}
        finish = next(
            (
                str(v)
                for k in ("finish_reason", "stop_reason", "done_reason")
                if (v := meta.get(k) or info.get(k))
            ),
            None,
        )
        if finish is not None:
            span.set_attribute("gen_ai.response.finish_reasons", [finish])
        if self.capture_content and generation is not None:
            if message is not None:
                shaped = _message(message, finish or "")
            else:
                text = generation.text
                parts = [{"type": "text", "content": text}]
                shaped = {"role": "assistant", "parts": parts, "finish_reason": finish or ""}
            span.set_attribute("gen_ai.output.messages", _json([shaped]))

    # -- tools -----------------------------------------------------------------------------
    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        info = serialized or {}
        name = str(kwargs.get("name") or info.get("name") or "tool")
        description = info.get("description")
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.type": "function",
            "gen_ai.tool.description": description if isinstance(description, str) else None,
            "gen_ai.tool.call.id": kwargs.get("tool_call_id"),
        }
        if self.capture_content:
            attributes["gen_ai.tool.call.arguments"] = _json(
                inputs if inputs is not None else input_str
            )
        self._open(
            run_id,
            parent_run_id,
            metadata,
            f"execute_tool {name}",
            self._kinds.INTERNAL,
            attributes,
        )

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._runs.get(run_id)
        if self.capture_content and run is not None and run.span is not None:
            content = getattr(output, "content", output)  # a ToolMessage, or the value
            run.span.set_attribute("gen_ai.tool.call.result", _json(content))
        self._close(run_id)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, error)

    # -- retrieval -------------------------------------------------------------------------
    def on_retriever_start(
        self,
        serialized: dict[str, Any] | None,
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        meta = metadata or {}
        name = str(kwargs.get("name") or (serialized or {}).get("name") or "retriever")
        store = meta.get("ls_vector_store_provider")
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "retrieval",
            "gen_ai.data_source.id": name,
            "gen_ai.provider.name": str(store) if store else None,
            "eslabon.retriever": name,
        }
        if self.capture_content:
            attributes["gen_ai.retrieval.query.text"] = redact(query)
        self._open(run_id, parent_run_id, meta, f"retrieval {name}", self._kinds.CLIENT, attributes)

    def on_retriever_end(
        self, documents: Sequence[Document], *, run_id: UUID, **kwargs: Any
    ) -> None:
        run = self._runs.get(run_id)
        if run is not None and run.span is not None:
            run.span.set_attribute("eslabon.retrieval.document_count", len(documents))
            if self.capture_content:
                shaped = [
                    {"id": d.id, "content": d.page_content, "metadata": d.metadata}
                    for d in documents
                ]
                run.span.set_attribute("gen_ai.retrieval.documents", _json(shaped))
        self._close(run_id)

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, error)
