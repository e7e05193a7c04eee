"""A compiled chain at run time: the LangChain ``Runnable`` a chain file becomes.

``CompiledChain`` is one sequential Runnable rather than a tower of ``RunnablePassthrough.assign``
calls: each ``assign`` / ``RunnableParallel`` starts a thread pool on every invoke, which costs
about a third of an LCEL pipeline's overhead. It opens one chain run, calls each step's model as
a child run (so callbacks, tracing, streaming and ``astream_events`` see every model call), and
passes values between steps in a plain dict. How a run proceeds is written once, as a flow
(:mod:`eslabon.running.runcore`); :mod:`eslabon.running.compile` builds these objects from a
chain file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import (
    ensure_config,
    get_async_callback_manager_for_config,
    get_callback_manager_for_config,
    patch_config,
    set_config_context,
)
from langchain_core.runnables.utils import coro_with_context
from pydantic import BaseModel, Field, create_model

from eslabon.chainfile.spec import Chain
from eslabon.chainfile.suggest import did_you_mean
from eslabon.chat.modelspec import ModelSpec
from eslabon.chat.provider_errors import translate_model_error
from eslabon.errors import EslabonError, InputError
from eslabon.observe.meter import Meter, find_meter, handed_meter
from eslabon.running.history import ChainWithHistory, History, with_history
from eslabon.running.runcore import Call, Emit, Flow, Stream, adrive, arun, drive, run
from eslabon.running.structured import OutputSchema, as_json_text, result_model, structured_flow

if TYPE_CHECKING:
    from eslabon.running.toolcalls import ToolLoop

__all__ = [
    "MAX_PROMPT_CHARS",
    "CompiledChain",
    "CompiledStep",
    "Retrieval",
    "StructuredOutput",
    "sqlite_cache",
    "step_label",
]


class Retrieval:
    """A retriever and the template of its search query; fills ``{context}``."""

    __slots__ = ("query", "retriever", "step")

    def __init__(self, retriever: Runnable[str, Any], query: str, step: str | None) -> None:
        from langchain_core.prompts import PromptTemplate

        self.retriever = retriever
        self.query = PromptTemplate.from_template(query)
        self.step = step  # None: the chain's own retriever, run once before the steps

    def search_text(self, values: dict[str, Any]) -> str:
        return self.query.format(**{n: values[n] for n in self.query.input_variables})

    def _apply(self, docs: list[Any], values: dict[str, Any]) -> list[dict[str, Any]]:
        from eslabon.rag.retrieval import document_record, format_context

        values["context"] = format_context(docs)
        return [document_record(d, self.step) for d in docs]

    def flow(self, values: dict[str, Any], config: RunnableConfig) -> Flow[list[dict[str, Any]]]:
        """Search, put ``{context}`` into ``values``, and return the documents' records."""
        found = yield Call(self.retriever, self.search_text(values), config)
        return self._apply(found, values)


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """A step's structured answer: its model (bound to answer in the schema's shape), the
    schema its answers are validated against, and how many times to ask."""

    model: Runnable[Any, Any]
    schema: OutputSchema
    attempts: int


class CompiledStep:
    """One step: its prompt (a LangChain ``ChatPromptTemplate``) and its chat model; with
    ``output_schema`` its model answers in JSON that is validated, with ``tools`` it runs the
    tool-calling loop."""

    __slots__ = (
        "fields",
        "history",
        "id",
        "label",
        "loop",
        "model",
        "origin",
        "prompt",
        "retrieval",
        "structured",
        "tag",
        "uses",
    )

    def __init__(
        self,
        step_id: str,
        prompt: ChatPromptTemplate,
        model: Runnable[Any, Any],
        origin: ModelSpec | None = None,
        retrieval: Retrieval | None = None,
        structured: StructuredOutput | None = None,
        loop: ToolLoop | None = None,
        history: History | None = None,
    ) -> None:
        self.id = step_id
        self.retrieval = retrieval
        self.prompt = prompt
        self.model = model
        self.origin = origin  # what the model was built from (None: a ready model was given)
        self.label = step_label(model, origin)  # the model this step runs on, for people
        self.fields = tuple(prompt.input_variables)
        self.uses = _field_uses(prompt)
        self.tag = f"step:{step_id}"
        self.history = history  # the conversation's budget, when the step keeps one
        self.structured = structured
        self.loop = loop

    @property
    def schema(self) -> OutputSchema | None:
        """The step's ``output_schema``, resolved (None: it answers in text)."""
        return self.structured.schema if self.structured is not None else None

    @property
    def streams_tokens(self) -> bool:
        """Plain text steps stream token by token; structured and tool steps answer whole."""
        return self.structured is None and self.loop is None

    def flow(
        self, values: dict[str, Any], config: RunnableConfig, stream: bool = False
    ) -> Flow[tuple[Any, list[dict[str, Any]]]]:
        """This step's result (text, or the validated structured value) and its tool calls;
        with ``stream``, a plain text step streams its tokens to the caller."""
        messages, config = self.messages(values), self.config(config)
        with self.provider_errors():
            if (structured := self.structured) is not None:
                value = yield from structured_flow(
                    structured.model,
                    messages,
                    structured.schema,
                    structured.attempts,
                    config,
                    self.id,
                )
                return value, []
            if self.loop is not None:
                answer, calls = yield from self.loop.flow(messages, config)
                return answer.text, [{"step": self.id, **c} for c in calls]
            if stream:
                return (yield Stream(self.model, messages, config, self.id)), []
            return (yield Call(self.model, messages, config)).text, []

    @contextmanager
    def provider_errors(self) -> Iterator[None]:
        """Re-raise a provider failure inside the block as eslabon's clear error for it."""
        try:
            yield
        except Exception as exc:
            if (mapped := self.translate(exc)) is None:
                raise
            raise mapped from exc

    def translate(self, exc: BaseException) -> EslabonError | None:
        """The eslabon error for a provider failure in this step (None: not one we map)."""
        if self.origin is not None:
            from eslabon.chat.models import withheld_key_hint

            spec = self.origin
            var = spec.kwargs.get("api_key_env") or spec.info.env_var
            hint = withheld_key_hint(spec)
            return translate_model_error(exc, spec.shown_provider, spec.name, var, hint)
        name = str(getattr(self.model, "model_name", "") or getattr(self.model, "model", ""))
        return translate_model_error(exc, getattr(self.model, "_llm_type", "model"), name)

    def config(self, config: RunnableConfig) -> RunnableConfig:
        """The chain's child config, tagged so traces show which step a model call belongs to."""
        return {
            **config,
            "tags": [*config.get("tags", ()), self.tag],
            "metadata": {**config.get("metadata", {}), "eslabon_step": self.id},
        }

    def messages(self, values: dict[str, Any]) -> list[BaseMessage]:
        """The messages this step sends, given the inputs and earlier steps' outputs (and, for a
        step with history, the conversation so far under ``history``)."""
        fields = {name: values[name] for name in self.fields}
        size = sum(len(str(fields[name])) * n for name, n in self.uses.items() if name in fields)
        if size > MAX_PROMPT_CHARS:  # refused before building it: a file could ask for gigabytes
            raise InputError(
                f"step '{self.id}': its prompt would be {size:,} characters, more than any model "
                f"takes (eslabon's limit: {MAX_PROMPT_CHARS:,})\n"
                "    fix: shorten the inputs, or use each {field} fewer times in the templates"
            )
        if self.history is not None:
            fields["history"] = self.history.fit(values.get("history") or [])
        return self.prompt.format_messages(**fields)


MAX_PROMPT_CHARS = 4_000_000  # about a million tokens: beyond every model's context window


def step_label(model: Any, origin: ModelSpec | None) -> str:
    """A step's model as shown (``run --json``): ``provider:name``, the alias first when one
    names it (``rapido (openai:gpt-4o-mini)``; the built-in ``local`` alone)."""
    if origin is None:  # a ready model (under a retry wrapper, perhaps): its class
        inner = model if isinstance(model, BaseChatModel) else getattr(model, "bound", model)
        return type(inner).__name__
    if origin.alias and origin.alias != origin.provider:
        return f"{origin.alias} ({origin.label})"
    return origin.alias or origin.label


def _field_uses(prompt: ChatPromptTemplate) -> dict[str, int]:
    """How many times each field appears in the prompt's templates (system and user)."""
    from eslabon.chainfile.templates import template_fields

    uses: dict[str, int] = {}
    for message in prompt.messages:
        template = getattr(getattr(message, "prompt", None), "template", None)
        if isinstance(template, str):
            for name in template_fields(template):
                uses[name] = uses.get(name, 0) + 1
    return uses


class _Extras:
    """What a run gathers besides step texts: typed results, documents, tool calls."""

    __slots__ = ("documents", "tool_calls", "typed")

    def __init__(self) -> None:
        self.typed: dict[str, Any] = {}
        self.documents: list[Any] = []
        self.tool_calls: list[dict[str, Any]] = []


class CompiledChain(Runnable[dict[str, Any], dict[str, Any]]):
    """A compiled chain. Input: a dict of the chain's inputs (or a string, when it has exactly
    one). Output: ``{step_id: text, ..., "output": text, "stats": {...}}`` (``stats``: tokens,
    time, calls, attempts and cost, per step and in total: :mod:`eslabon.observe.meter`).

    ``stream`` / ``astream`` yield ``{step_id: token}`` chunks as each step's tokens arrive,
    then ``{"output": text}`` once, then ``{"stats": {...}}``.
    """

    def __init__(
        self,
        spec: Chain,
        steps: list[CompiledStep],
        model_label: str,
        retrieval: Retrieval | None = None,
    ) -> None:
        self.spec = spec
        self.steps = steps
        self.retrieval = retrieval  # the chain's own retriever, run once before the steps
        self.retrieves = retrieval is not None or any(s.retrieval for s in steps)
        self.uses_tools = any(s.loop is not None for s in steps)
        self.name = spec.name or "chain"
        self.model_label = model_label
        self.output_id = spec.output_step()
        self._inputs = spec.input_names()
        self.compiled_with: dict[str, Any] = {}  # compile_chain's arguments, for variants
        # compile_chain itself, set by it: the runtime never imports the builder
        self.recompile: Callable[..., CompiledChain] | None = None
        self._defaults = {n: d for n in self._inputs if (d := spec.input_default(n)) is not None}
        self.prices: Any = None  # the project's [prices] (None: read when a run's cost is asked)
        self.project: Any = None  # its eslabon.toml ([tracing]), set by compile_chain

    # -- variants -------------------------------------------------------------------------
    def with_model_settings(self, **settings: Any) -> CompiledChain:
        """The same chain compiled again with ``settings`` set on every chat model."""
        args = dict(self.compiled_with)
        args["model_settings"] = {**args.get("model_settings", {}), **settings}
        if self.recompile is None:  # made by hand rather than by compile_chain
            from eslabon.running.compile import compile_chain

            return compile_chain(self.spec, **args)
        return self.recompile(self.spec, **args)

    def with_rate_limit(self, requests_per_second: float) -> CompiledChain:
        """Every model call (all steps, retries included) waits for LangChain's
        ``InMemoryRateLimiter``: at most ``requests_per_second`` calls a second, no bursts."""
        from langchain_core.rate_limiters import InMemoryRateLimiter

        limiter = InMemoryRateLimiter(
            requests_per_second=requests_per_second,
            check_every_n_seconds=min(0.01, 0.1 / requests_per_second),
            max_bucket_size=1,
        )
        return self.with_model_settings(rate_limiter=limiter)

    def with_history(self, session_id: str, store: Any = None) -> ChainWithHistory:
        """This chain remembering its turns in ``session_id`` (``history: true`` in the file);
        ``store``: None for the project's SQLite file, ``"memory"``, a path, or a callable
        (see :mod:`eslabon.running.history`)."""
        return with_history(self, session_id, store)

    def with_log(self, path: str | Path | None = None) -> Any:
        """This chain writing each run to the run log (``path``, else ``ESLABON_LOGS``, else
        ``.eslabon/logs.sqlite`` under the project root): inputs, each step's messages and
        output, usage, latency, cost, error. Python runs are logged only when asked."""
        from eslabon.observe.record import LoggedChain

        return LoggedChain(self, path)

    def with_cache(self, cache: Any) -> CompiledChain:
        """Model calls answered from ``cache`` (a LangChain ``BaseCache``, or a path for a
        SQLite cache): an identical call costs no second request."""
        if isinstance(cache, str | Path):
            cache = sqlite_cache(cache)
        return self.with_model_settings(cache=cache)

    def output_text(self) -> Runnable[dict[str, Any], str]:
        """This chain answering with its output as text (a structured output as JSON text):
        ``invoke`` gives the text, ``stream`` its tokens as the output step generates them, and
        it composes with string runnables (``chain.output_text() | StrOutputParser()``)."""
        from langchain_core.runnables import RunnableGenerator

        from eslabon.running.structured import as_json_text

        step = self.output_id

        def text(value: Any) -> str:
            return value if isinstance(value, str) else as_json_text(value)

        # the output step's own chunks: its tokens (or its whole value, for a structured step);
        # the stream's closing {"output": ...} repeats them whole, and a whole result has both
        def pick(chunks: Iterator[dict[str, Any]]) -> Iterator[str]:
            for chunk in chunks:
                if step in chunk:
                    yield text(chunk[step])

        async def apick(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
            async for chunk in chunks:
                if step in chunk:
                    yield text(chunk[step])

        return self | RunnableGenerator(pick, apick, name="output_text")

    # -- schema ---------------------------------------------------------------------------
    @property
    def InputType(self) -> type[dict[str, Any]]:
        return dict

    @property
    def OutputType(self) -> type[dict[str, Any]]:
        return dict

    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        fields: dict[str, Any] = {}
        for name in self._inputs:
            spec = self.spec.inputs[name]
            desc = spec if isinstance(spec, str) else spec.description
            default = self._defaults.get(name, ...)
            fields[name] = (str, Field(default, description=desc))
        return create_model(f"{self.name}_input", **fields)

    def get_output_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return result_model(
            self.name or "chain",
            [(s.id, s.schema) for s in self.steps],
            self.output_id,
            retrieves=self.retrieves,
            uses_tools=self.uses_tools,
        )

    # -- inputs ---------------------------------------------------------------------------
    def _values(self, given: Any) -> dict[str, Any]:
        if isinstance(given, str) and len(self._inputs) == 1:
            given = {self._inputs[0]: given}
        if not isinstance(given, dict):
            raise InputError(
                f"chain '{self.name}' takes a dict with its inputs "
                f"({', '.join(self._inputs) or 'none'}), got {type(given).__name__}"
            )
        nulls = [k for k, v in given.items() if v is None]
        if nulls:  # JSON null / None: not a value (never the text "None"); a default may apply
            given = {k: v for k, v in given.items() if v is not None}
        values = {**self._defaults, **given}
        missing = [n for n in self._inputs if n not in values]
        if missing and any(n in nulls for n in missing):
            raise InputError(
                f"chain '{self.name}': input {', '.join(repr(n) for n in missing if n in nulls)} "
                "is null; give it a text value"
            )
        if missing:
            lines = []
            for name in missing:
                hint = did_you_mean(name, [k for k in given if isinstance(k, str)])
                lines.append(
                    f"'{name}'" + (f" ({hint.replace('did you mean', 'got')})" if hint else "")
                )
            raise InputError(
                f"chain '{self.name}' is missing input {', '.join(lines)}; "
                f"it takes: {', '.join(self._inputs)}"
            )
        takes = [*self._inputs, *(["history"] if any(s.history for s in self.steps) else [])]
        if unknown := [str(k) for k in given if k not in takes]:  # a typo would go unnoticed
            hint = did_you_mean(unknown[0], takes)
            raise InputError(
                f"chain '{self.name}' has no input {', '.join(repr(k) for k in unknown)}"
                + (f" ({hint})" if hint else "")
                + f"; it takes: {', '.join(self._inputs) or 'no inputs'}"
            )
        return values

    def _result(self, values: dict[str, Any], extra: _Extras, stats: Any) -> dict[str, Any]:
        result = {s.id: extra.typed.get(s.id, values[s.id]) for s in self.steps}
        result["output"] = result[self.output_id]
        if self.retrieves:  # chains without a retriever keep their plain result
            result["documents"] = extra.documents
        if self.uses_tools:
            result["tool_calls"] = extra.tool_calls
        result["stats"] = stats
        return result

    def _keep(self, step: CompiledStep, value: Any, values: dict[str, Any], extra: _Extras) -> None:
        """Store a step's result: typed in the result, text (JSON for structured) for templates."""
        if step.structured is not None:
            extra.typed[step.id] = value
            values[step.id] = as_json_text(value)
        else:
            values[step.id] = value

    # -- the run ------------------------------------------------------------------------
    def _flow(
        self, given: Any, config: RunnableConfig, stream: bool, meter: Meter
    ) -> Flow[dict[str, Any]]:
        """The whole run, for every way of running (see :mod:`eslabon.running.runcore`): the result,
        and with ``stream`` the chunks ``stream`` yields — documents first, each step's tokens
        (or whole value) as it comes, then the output, then the run's ``stats``."""
        values = self._values(given)
        extra = _Extras()
        if self.retrieval:
            found = yield from self.retrieval.flow(values, config)
            extra.documents += found
            yield Emit({"documents": found})
        elif self.retrieves:
            yield Emit({"documents": []})
        for step in self.steps:
            meter.begin(step.id)
            step_values = values
            if step.retrieval:
                step_values = {**values}  # this step's own {context}
                found = yield from step.retrieval.flow(step_values, step.config(config))
                extra.documents += found
                yield Emit({"documents": found})
            tokens = stream and step.streams_tokens
            value, calls = yield from step.flow(step_values, config, tokens)
            extra.tool_calls += calls
            if calls:
                yield Emit({"tool_calls": calls})
            self._keep(step, value, values, extra)
            meter.end(step.id)
            if not tokens or not value:  # streamed tokens were given already
                yield Emit({step.id: extra.typed.get(step.id, value)})
        if self.output_id != "output":
            yield Emit({"output": extra.typed.get(self.output_id, values[self.output_id])})
        meter.finish()
        stats = meter.stats()
        yield Emit({"stats": stats})
        return self._result(values, extra, stats)

    def _traced(self, config: RunnableConfig | None) -> RunnableConfig:
        """``config`` with the tracing handler in its callbacks when tracing is configured
        (:mod:`eslabon.observe.tracing`): before the chain run starts, so its span is the root."""
        from eslabon.observe.tracing import tracing_handler

        config = ensure_config(config)
        tracer = tracing_handler(self.project)
        if tracer is None:
            return config
        callbacks = config.get("callbacks")
        if callbacks is None or isinstance(callbacks, list):
            if tracer not in (callbacks or ()):
                config["callbacks"] = [*(callbacks or ()), tracer]
        elif tracer not in callbacks.handlers:  # an outer chain's run already traces this one
            callbacks = callbacks.copy()
            callbacks.add_handler(tracer, inherit=True)
            config["callbacks"] = callbacks
        return config

    def _meter(self, callbacks: Any, run_id: Any) -> Meter:
        """The meter of run ``run_id``: the caller's (in its callbacks) if free, else a new one
        added to them. (A chain run inside this one, as a tool, gets its own: this one is
        claimed; its calls count here too, in the step that ran it.)"""
        handed = handed_meter()
        if handed is not None and handed.claim(run_id):
            callbacks.add_handler(handed)
            return handed
        meter = find_meter(callbacks)
        if meter is None or not meter.claim(run_id):
            meter = Meter(self.prices)
            meter.claim(run_id)
            callbacks.add_handler(meter)
        return meter

    # -- the four doors ---------------------------------------------------------------------
    # invoke/ainvoke are written out rather than via Runnable._call_with_config: that helper
    # inspects the function's signature on every call, a measurable share of a chain's
    # overhead. The callback/tracing protocol is the same: one chain run, model calls as its
    # children.
    def invoke(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        config = self._traced(config)
        run_manager = get_callback_manager_for_config(config).on_chain_start(
            None,
            input,
            name=config.get("run_name") or self.get_name(),
            run_id=config.pop("run_id", None),
        )
        callbacks = run_manager.get_child()
        meter = self._meter(callbacks, run_manager.run_id)
        try:
            child = patch_config(config, callbacks=callbacks)
            with set_config_context(child) as context:
                output: dict[str, Any] = context.run(run, self._flow(input, child, False, meter))
        except BaseException as exc:
            run_manager.on_chain_error(exc)
            raise
        finally:
            meter.release(run_manager.run_id)
        run_manager.on_chain_end(output)
        return output

    async def ainvoke(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        config = self._traced(config)
        run_manager = await get_async_callback_manager_for_config(config).on_chain_start(
            None,
            input,
            name=config.get("run_name") or self.get_name(),
            run_id=config.pop("run_id", None),
        )
        callbacks = run_manager.get_child()
        meter = self._meter(callbacks, run_manager.run_id)
        try:
            child = patch_config(config, callbacks=callbacks)
            with set_config_context(child) as context:
                flow = self._flow(input, child, False, meter)
                output: dict[str, Any] = await coro_with_context(arun(flow), context)
        except BaseException as exc:
            await run_manager.on_chain_error(exc)
            raise
        finally:
            meter.release(run_manager.run_id)
        await run_manager.on_chain_end(output)
        return output

    @staticmethod
    def _merge(chunks: list[Any]) -> Any:
        if chunks and all(isinstance(c, dict) for c in chunks):
            merged: dict[str, Any] = {}
            for chunk in chunks:
                merged.update(chunk)
            return merged
        return chunks[-1] if chunks else {}

    def _chunks(
        self,
        inputs: Iterator[Any],
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> Iterator[dict[str, Any]]:
        meter = self._meter(config["callbacks"], run_manager.run_id)
        try:
            yield from drive(self._flow(self._merge(list(inputs)), config, True, meter))
        finally:
            meter.release(run_manager.run_id)

    async def _achunks(
        self,
        inputs: AsyncIterator[Any],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> AsyncIterator[dict[str, Any]]:
        meter = self._meter(config["callbacks"], run_manager.run_id)
        try:
            flow = self._flow(self._merge([c async for c in inputs]), config, True, meter)
            async for chunk in adrive(flow):
                yield chunk
        finally:
            meter.release(run_manager.run_id)

    def transform(
        self, input: Iterator[dict[str, Any]], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        yield from self._transform_stream_with_config(
            input, self._chunks, self._traced(config), run_type="chain"
        )

    def stream(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        yield from self.transform(iter([input]), config, **kwargs)

    async def atransform(
        self,
        input: AsyncIterator[dict[str, Any]],
        config: RunnableConfig | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        async for chunk in self._atransform_stream_with_config(
            input, self._achunks, self._traced(config), run_type="chain"
        ):
            yield chunk

    async def astream(
        self, input: dict[str, Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        async def one() -> AsyncIterator[dict[str, Any]]:
            yield input

        async for chunk in self.atransform(one(), config, **kwargs):
            yield chunk


def sqlite_cache(path: str | Path) -> Any:
    """LangChain's SQLite LLM cache at ``path`` (langchain-community, in the rag extra), whose
    errors never fail a call (:mod:`eslabon.chat.cache`)."""
    try:
        from eslabon.chat.cache import SafeSQLiteCache
    except ImportError:
        from eslabon.errors import MissingDependencyError

        raise MissingDependencyError("--cache", "rag", "langchain-community") from None
    return SafeSQLiteCache(path)
