"""Compiling a chain spec into a :class:`~eslabon.running.runtime.CompiledChain`: each step's prompt
template, its model (built from the file's model reference, with retries and fallbacks, tools
bound or structured output), its retriever and its history budget. What happens at run time is
in :mod:`eslabon.running.runtime` and :mod:`eslabon.running.runcore`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable

from eslabon.chainfile.checks import check_spec
from eslabon.chainfile.examples import load_examples
from eslabon.chainfile.loader import load_spec, problems_in
from eslabon.chainfile.spec import Chain, Retry, Step
from eslabon.chat.models import build_from_spec, is_chat_model, parse_or_raise, resolve_model_ref
from eslabon.chat.modelspec import ModelSpec, ref_label
from eslabon.chat.speedups import install as _install_speedups
from eslabon.errors import UserError
from eslabon.running.history import History
from eslabon.running.runtime import CompiledChain, CompiledStep, Retrieval, StructuredOutput
from eslabon.running.structured import (
    STRUCTURED_METHODS,
    OutputSchema,
    resolve_output_schema,
    structured_model,
)
from eslabon.trust.allow import Allow, allowing

if TYPE_CHECKING:
    from eslabon.running.toolcalls import ToolLoop

__all__ = ["ModelArg", "compile_chain", "load_chain", "step_prompt"]

# what may stand for a model: provider:model or an alias, a model mapping, a LangChain chat
# model, or None (the file's own, ESLABON_MODEL, or local)
ModelArg = str | Mapping[str, Any] | BaseChatModel | None


_install_speedups()  # LangChain asks each model call a question with a fixed answer


def step_prompt(step: Step, base_dir: Path, embeddings: str | None = None) -> ChatPromptTemplate:
    parts: list[Any] = []
    if step.system:
        parts.append(("system", step.system))
    if step.examples:
        from eslabon.running.selectors import few_shot_prompt

        examples = load_examples(step.examples, base_dir)
        selector = step.selector.model_dump() if step.selector is not None else None
        parts.append(few_shot_prompt(examples, selector, step.prompt, embeddings, base_dir))
    if step.history:
        from langchain_core.prompts import MessagesPlaceholder

        # the conversation so far: after the system prompt and examples, before the new turn
        parts.append(MessagesPlaceholder("history", optional=True))
    parts.append(("human", step.prompt))
    return ChatPromptTemplate.from_messages(parts, template_format="f-string")


def compile_chain(
    spec: Chain,
    model: ModelArg = None,
    allow_imports: list[str] | None = None,
    model_settings: dict[str, Any] | None = None,
    allow: Allow | None = None,
) -> CompiledChain:
    """Compile a checked spec. ``model`` overrides every model in it (see
    :mod:`eslabon.chat.models`); ``allow_imports`` lists packages whose code the chain file may
    import (see :mod:`eslabon.trust.imports`); ``allow`` grants more (endpoints and keys,
    folders: see :mod:`eslabon.trust.allow`); ``model_settings`` are set on every chat model
    (fallbacks too), e.g. ``{"rate_limiter": ..., "cache": ...}``."""
    from eslabon.trust.imports import chain_folder

    # problems found while building name the chain's file; allowed packages that are not
    # installed may be beside the chain file (docs/security.md)
    folder = spec.source.parent if spec.source is not None else None
    with allowing(allow), problems_in(spec), chain_folder(folder):
        compiled = _compile(spec, model, allow_imports, model_settings)
    compiled.compiled_with["allow"] = allow
    return compiled


def _compile(
    spec: Chain,
    model: ModelArg,
    allow_imports: list[str] | None,
    model_settings: dict[str, Any] | None,
) -> CompiledChain:
    check_spec(spec)
    base_dir = spec.base_dir
    chain_ref, overridden = resolve_model_ref(model, spec.model)
    chain_params = spec.params.set_values() if spec.params else {}
    built: dict[str, tuple[Runnable[Any, Any], ModelSpec | None]] = {}
    steps: list[CompiledStep] = []
    from eslabon.trust.imports import allowed_imports

    allowed = allowed_imports(allow_imports)
    settings = dict(model_settings or {})
    settings_arg = {"model_settings": settings} if settings else {}
    retrieval = _retrieval(spec, spec.retriever, None, allowed)
    for step in spec.normalized_steps():
        ref = chain_ref if overridden or step.model is None else step.model
        params = {**chain_params, **(step.params.set_values() if step.params else {})}
        retry = step.retry or spec.retry
        # an explicit model replaces every model in the file, fallbacks included
        fallbacks = [] if overridden else (step.fallbacks or spec.fallbacks or [])
        key = repr((ref, sorted(params.items()), retry, fallbacks))
        trusted = overridden  # the caller's model; the file's own are bounded (docs/security.md)
        if key not in built:  # steps with the same model and settings share one instance
            built[key] = _step_model(
                ref, params, retry, fallbacks, base_dir, None, settings, trusted
            )
        model_, origin_ = built[key]
        own = _retrieval(spec, step.retriever, step.id, allowed) if spec.steps else None
        prompt = step_prompt(step, base_dir, spec.embeddings)
        structured: StructuredOutput | None = None
        loop: ToolLoop | None = None
        if step.output_schema is not None:
            schema = resolve_output_schema(step.output_schema, step.id, allowed)
            adapted = _adapted(step.id, partial(_structured, schema=schema))
            answer = _step_model(
                ref, params, retry, fallbacks, base_dir, adapted, settings, trusted
            )[0]
            # without retry: one correction round, as pydantic-ai and instructor do by default
            structured = StructuredOutput(answer, schema, retry.attempts if retry else 2)
        elif step.tools:
            from eslabon.running.toolcalls import DEFAULT_MAX_TOOL_CALLS, ToolLoop, load_tools

            tools = load_tools(step.tools, allowed, step.id)
            adapted = _adapted(step.id, partial(_bind_tools, tools=tools))
            with_tools = _step_model(
                ref, params, retry, fallbacks, base_dir, adapted, settings, trusted
            )[0]
            limit = step.max_tool_calls or DEFAULT_MAX_TOOL_CALLS
            loop = ToolLoop(with_tools, model_, tools, limit)
        history = None
        if step.history:
            history = History(getattr(step.history, "max_tokens", None), _token_counter(model_))
        steps.append(CompiledStep(step.id, prompt, model_, origin_, own, structured, loop, history))
    compiled = CompiledChain(spec, steps, model_label=_label(chain_ref), retrieval=retrieval)
    compiled.compiled_with = {"model": model, "allow_imports": allow_imports, **settings_arg}
    from eslabon.trust.project import load_project

    compiled.project = load_project()  # [tracing] and [prices]: cost besides genai-prices
    compiled.prices = compiled.project.prices
    compiled.recompile = compile_chain
    return compiled


def _retrieval(
    spec: Chain, retriever: Any, step: str | None, allowed: list[str]
) -> Retrieval | None:
    if retriever is None:
        return None
    from eslabon.rag.retrieval import build_embeddings, build_retriever
    from eslabon.trust.project import load_project

    embeddings = build_embeddings(spec.embeddings, spec.base_dir, from_chain_file=True)
    built = build_retriever(retriever, embeddings, load_project().root, allowed, spec.base_dir)
    query = retriever.query or "{" + spec.input_names()[0] + "}"
    return Retrieval(built, query, step)


# SDKs that retry on their own. When a chain says what to do on failure (retry or fallbacks),
# theirs is turned off: one retry layer (which honors Retry-After), and fallbacks take over at
# once instead of after the SDK's hidden retries.
_SDK_RETRIES = (
    "openai",
    "azure_openai",
    "anthropic",
    "google_genai",
    "mistralai",
    "cohere",
    "together",
)


def _bind_tools(
    model: BaseChatModel, origin: ModelSpec | None, tools: list[Any]
) -> Runnable[Any, Any]:
    return model.bind_tools(tools)


def _structured(
    model: BaseChatModel, origin: ModelSpec | None, schema: OutputSchema
) -> Runnable[Any, Any]:
    # a model mapping's structured_method picks LangChain's method (json_schema,
    # function_calling, json_mode): servers that speak OpenAI differ in what they support
    method = origin.kwargs.get("structured_method") if origin else None
    if method not in (None, *STRUCTURED_METHODS):
        raise UserError(
            f"structured_method '{method}' is not one of: {', '.join(STRUCTURED_METHODS)}"
        )
    return structured_model(model, schema, method)


Adapt = Callable[[BaseChatModel, ModelSpec | None], Runnable[Any, Any]]


def _adapted(step_id: str, adapt: Adapt) -> Adapt:
    """``adapt`` (bind tools, structured output) with a clear error for models that cannot."""

    def apply(model: BaseChatModel, origin: ModelSpec | None) -> Runnable[Any, Any]:
        try:
            return adapt(model, origin)
        except NotImplementedError:
            raise UserError(
                f"step '{step_id}': the model {type(model).__name__} does not support tool "
                "calling or structured output\n    fix: use a provider that does "
                "(openai, google_genai, anthropic, ollama, local)"
            ) from None

    return apply


def _step_model(
    ref: Any,
    params: dict[str, Any],
    retry: Retry | None,
    fallbacks: list[Any],
    base_dir: Path,
    adapt: Adapt | None = None,
    settings: dict[str, Any] | None = None,
    trusted: bool = False,
) -> tuple[Runnable[Any, Any], ModelSpec | None]:
    """The step's model (each fallback too) built, given ``settings``, adapted, then wrapped in
    retry/fallbacks. ``trusted``: ``ref`` comes from the user, not the chain file (fallbacks
    always come from the file)."""

    def build(
        one: Any, where: str, trusted: bool = False
    ) -> tuple[Runnable[Any, Any], ModelSpec | None]:
        if is_chat_model(one):
            if settings:
                one = one.model_copy(update=settings)
            return (adapt(one, None) if adapt else one), None
        origin = parse_or_raise(one, base_dir, where, trusted=trusted)
        resilient = retry or fallbacks
        if resilient and origin.provider in _SDK_RETRIES and "max_retries" not in origin.kwargs:
            origin = replace(origin, kwargs={**origin.kwargs, "max_retries": 0})
        model = build_from_spec(origin, params, base_dir)
        if settings:
            model = model.model_copy(update=settings)
        return (adapt(model, origin) if adapt else model), origin

    model, origin = build(ref, "model", trusted)
    if not retry and not fallbacks:
        return model, origin
    from eslabon.chat.resilience import wrap

    backups = [build(f, f"fallbacks[{n}]")[0] for n, f in enumerate(fallbacks)]
    return wrap(model, retry.model_dump() if retry else None, backups), origin


def _label(ref: Any) -> str:
    return type(ref).__name__ if isinstance(ref, BaseChatModel) else ref_label(ref)


def load_chain(
    path: str | Path,
    model: ModelArg = None,
    allow_imports: list[str] | None = None,
    allow: Allow | None = None,
) -> CompiledChain:
    """Load a chain file and compile it into a Runnable.

    ``model`` (a ``provider:model`` string, alias, mapping or a LangChain chat model) overrides
    the models in the file; otherwise ``ESLABON_MODEL``, then the file's ``model``, then
    ``local``. ``allow_imports`` lists the packages whose code the file may import (off by
    default); ``allow`` grants endpoints, keys and folders (see :mod:`eslabon.trust.allow`).
    """
    with allowing(allow):
        return _load_chain(path, model, allow_imports, allow)


def _load_chain(
    path: str | Path, model: ModelArg, allow_imports: list[str] | None, allow: Allow | None
) -> CompiledChain:
    return compile_chain(
        load_spec(Path(path)), model=model, allow_imports=allow_imports, allow=allow
    )


def _token_counter(model: Any) -> Callable[[list[BaseMessage]], int]:
    """The model's own token count where it has one offline (llama.cpp's tokenizer), else
    LangChain's approximate count (provider SDKs' counters download tokenizers)."""
    counter = getattr(model, "count_message_tokens", None) or getattr(
        getattr(model, "bound", None),
        "count_message_tokens",
        None,  # under a retry wrapper
    )
    if callable(counter):
        return counter  # type: ignore[no-any-return]
    from langchain_core.messages.utils import count_tokens_approximately

    return count_tokens_approximately
