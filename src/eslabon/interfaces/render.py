"""``eslabon render``: the exact request body each step would send to a provider.

Each step's messages are built as the chain would build them (earlier steps' outputs shown as
``<output of ID>``, inputs not given as ``<input NAME>``), then handed to the provider's real
LangChain chat model with a placeholder key. Its SDK sends the request to a capture server on
127.0.0.1 inside this process, which records the body and refuses the call — so what is printed
is byte for byte what the SDK would send, with no network call to the provider and no key.

Which model each step is rendered for: its own (the file's, or ``ESLABON_MODEL``), as ``run``
would use it; with a provider (``-p anthropic``), the step's own model where it is that
provider's and the provider's usual model elsewhere; with a model (``-p openai:gpt-4o``, an
alias), that model for every step. The local models (``local``, ``llamacpp:PATH``) are run up
to the moment llama.cpp would start on the prompt: what is shown is the prompt text with the
GGUF's own chat template applied, the sampling settings and the grammar, exactly as llama.cpp
receives them.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from eslabon.chainfile.checks import check_spec
from eslabon.chainfile.spec import Chain
from eslabon.chainfile.suggest import did_you_mean
from eslabon.chat.models import build_from_spec, parse_or_raise, resolve_model_ref
from eslabon.chat.modelspec import (
    PRESETS,
    PROVIDER_SYNONYMS,
    ModelRefError,
    ModelSpec,
    parse_model_ref,
    preset_name,
)
from eslabon.errors import EslabonError, UserError
from eslabon.running.compile import step_prompt
from eslabon.running.runtime import step_label
from eslabon.trust.redaction import redact

__all__ = ["RENDER_PROVIDERS", "render_requests"]

# provider -> model name used when the chain's own model is another provider's
RENDER_PROVIDERS = {
    "openai": "gpt-4o-mini",
    "google_genai": "gemini-2.5-flash",
    "anthropic": "claude-sonnet-4-6",
    "ollama": "llama3.2",
    "mistralai": "mistral-small-latest",
    "cohere": "command-r-plus-08-2024",
    "together": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
}
# OpenAI-compatible services by name (modelspec.PRESETS) and their usual model; the local
# servers (vllm, lmstudio, tgi, ovms) have none: -p vllm:MODEL names the one it serves
RENDER_PRESETS = {"ai21": "jamba-mini"}
# the path under the server's root where each client expects its API (base_url's own path)
_API_ROOT = {"openai": "/v1", "mistralai": "/v1", "together": "/v1"}
_PLACEHOLDER_KEY = "render-needs-no-key"


class _Capture:
    """A loopback HTTP server that records request bodies and answers every call with 418."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                capture.requests.append((self.path.split("?")[0], json.loads(raw or b"null")))
                body = b'{"error": {"message": "eslabon render captured this request"}}'
                self.send_response(418)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> _Capture:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


_CONNECTION = (
    "base_url",
    "base_urls",
    "per_endpoint_concurrency",
    "api_key",
    "api_key_env",
    "timeout",
    "max_retries",
    "structured_method",
)
_LOCAL = ("local", "llamacpp")  # run in-process: rendered as the prompt llama.cpp receives
_KNOWN = (
    *RENDER_PROVIDERS,
    *RENDER_PRESETS,
    *(f"{p}:MODEL" for p in PRESETS if p not in RENDER_PRESETS),
    "local",
    "llamacpp:PATH",
)


def _target(text: str | None) -> tuple[str | None, ModelSpec | None]:
    """``-p``: ``(provider, None)`` for a provider's name, ``(None, model)`` for a model (an
    alias, ``provider:model``), ``(None, None)`` for each step's own model."""
    if text is None:
        return None, None
    name = text.strip()
    provider = PROVIDER_SYNONYMS.get(name.lower(), name.lower())
    if provider in RENDER_PROVIDERS:
        return provider, None
    if (preset := preset_name(name)) is not None:
        if preset not in RENDER_PRESETS:
            raise UserError(
                f"render -p {preset} needs the model its server runs: -p {preset}:MODEL"
            )
        return preset, None
    if provider == "llamacpp":
        raise UserError("render -p llamacpp needs the model: -p llamacpp:PATH.gguf")
    try:
        model = parse_model_ref(name, Path.cwd(), trusted=True)  # the user's own words
    except ModelRefError as exc:
        hint = did_you_mean(name, [*RENDER_PROVIDERS, *PROVIDER_SYNONYMS, *PRESETS, "local"])
        if ":" in name or hint is None:
            hint = exc.hint
        raise UserError(
            f"render: '{name}' is not a provider or model it knows ({exc.message}); "
            f"give one of {', '.join(_KNOWN)}, or provider:model"
            + (f"\n    hint: {hint}" if hint else "")
        ) from None
    _renderable(model)
    return None, model


def _renderable(model: ModelSpec, step: str | None = None) -> None:
    if model.provider not in (*RENDER_PROVIDERS, *_LOCAL):
        what = f"step '{step}' runs on {model.label}" if step else f"-p {model.label}"
        raise UserError(
            f"{what}: render shows the requests of {', '.join(_KNOWN)} only"
            + "\n    fix: give one of them with -p, e.g. -p openai or -p openai:gpt-4o"
        )


def _step_target(
    own: ModelSpec, provider: str | None, model: ModelSpec | None, step: str
) -> ModelSpec:
    """The model a step is rendered for (see the module doc)."""
    if model is not None:
        return model
    if provider is None:
        _renderable(own, step)
        return own
    if own.shown_provider == provider:
        return own  # the file's own model name, server and settings
    if provider in RENDER_PRESETS:
        return parse_model_ref(f"{provider}:{RENDER_PRESETS[provider]}", trusted=True)
    return ModelSpec(provider, RENDER_PROVIDERS[provider], trusted=True)


def render_requests(
    spec: Chain,
    provider: str | None = None,
    inputs: dict[str, str] | None = None,
    step_id: str | None = None,
    allow_imports: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The request each step would send: ``[{step, model, path, body}, ...]``, tools and
    output schema included (``allow_imports`` as for running the chain). ``provider``: a
    provider's name, a model, or None for each step's own model (see the module doc)."""
    from eslabon.chainfile.loader import problems_in
    from eslabon.trust.imports import chain_folder

    folder = spec.source.parent if spec.source is not None else None
    with problems_in(spec), chain_folder(folder):
        return _render(spec, provider, inputs, step_id, allow_imports)


def _check_names(
    spec: Chain, step_id: str | None, ids: list[str], inputs: dict[str, str] | None
) -> None:
    """Refuse a ``--step`` or ``-i`` name the chain does not have, with a suggestion."""
    if step_id is not None and step_id not in ids:
        hint = did_you_mean(step_id, ids)
        raise UserError(
            f"no step '{step_id}' in the chain"
            + (f" ({hint})" if hint else "")
            + f"; steps: {', '.join(ids)}"
        )
    unknown = [n for n in inputs or {} if n not in spec.input_names()]
    if unknown:
        hint = did_you_mean(unknown[0], spec.input_names())
        raise UserError(
            f"the chain has no input {', '.join(repr(n) for n in unknown)}"
            + (f" ({hint})" if hint else "")
            + f"; it takes: {', '.join(spec.input_names()) or 'no inputs'}"
        )


def _render(
    spec: Chain,
    provider: str | None,
    inputs: dict[str, str] | None,
    step_id: str | None,
    allow_imports: list[str] | None,
) -> list[dict[str, Any]]:
    target, target_model = _target(provider)
    check_spec(spec)
    steps = spec.normalized_steps()
    ids = [s.id for s in steps]
    _check_names(spec, step_id, ids, inputs)
    given: dict[str, Any] = {
        n: d for n in spec.input_names() if (d := spec.input_default(n)) is not None
    }
    given.update(inputs or {})
    values: dict[str, Any] = {name: f"<input {name}>" for name in spec.input_names()}
    values.update(given)
    values.update({sid: f"<output of {sid}>" for sid in ids})
    contexts = _Contexts(spec, given, allow_imports)

    chain_ref, overridden = resolve_model_ref(None, spec.model)  # as run: ESLABON_MODEL too
    chain_params = spec.params.set_values() if spec.params else {}
    out: list[dict[str, Any]] = []
    with _Capture() as capture:
        for step in steps:
            if step_id is not None and step.id != step_id:
                continue
            ref_ = chain_ref if overridden or step.model is None else step.model
            own = parse_or_raise(ref_, spec.base_dir, "model", trusted=overridden)
            model_spec = _step_target(own, target, target_model, step.id)
            prompt = step_prompt(step, spec.base_dir)
            fields = prompt.input_variables
            step_values = values
            if "context" in fields and (context := contexts.get(step)) is not None:
                step_values = {**values, "context": context}  # what its retriever fills
            messages = prompt.format_messages(**{f: step_values[f] for f in fields})
            params = {**chain_params, **(step.params.set_values() if step.params else {})}
            label = step_label(None, model_spec)
            method = model_spec.kwargs.get("structured_method")
            if model_spec.provider in _LOCAL:
                model = build_from_spec(model_spec, params, spec.base_dir)
                bound = _bound(model, step, allow_imports, method)
                body = _llama_request(bound, messages, step.id)
                out.append({"step": step.id, "model": label, "path": "llama.cpp", "body": body})
                continue
            provider = model_spec.provider
            name = model_spec.name
            # the file's model targets an OpenAI-compatible server: bodies are shaped for it
            compatible = bool({"base_url", "base_urls"} & set(model_spec.kwargs))
            # the model's own settings that shape the body (extra_body, params in the
            # mapping, ...); where it connects and with which key is render's own business
            ref: dict[str, Any] = {
                k: v for k, v in model_spec.kwargs.items() if k not in _CONNECTION
            }
            # a preset's name (ai21, vllm): its params, key and defaults are the preset's
            ref.update(provider=model_spec.shown_provider, name=name)
            if provider == "openai" and not compatible:
                # ChatOpenAI's own field, not base_url: a base_url would make eslabon shape
                # the body for an OpenAI-compatible server instead of OpenAI itself
                ref["openai_api_base"] = capture.url + "/v1"
            else:
                ref["base_url"] = capture.url + _api_root(model_spec)
            if provider != "ollama":
                ref.update(api_key=_PLACEHOLDER_KEY, max_retries=0)
            # render's own reference to its capture server, not the file's: trusted
            spec_ref = parse_model_ref(ref, trusted=True)
            model = _bound(build_from_spec(spec_ref, params), step, allow_imports, method)
            before = len(capture.requests)
            failure: Exception | None = None
            try:
                model.invoke(messages)
            except Exception as exc:  # expected: the capture server refuses every call
                failure = exc
            if len(capture.requests) == before:  # the client refused before sending anything
                raise UserError(
                    f"the {provider} client sent no request for step '{step.id}': {failure}"
                )
            path, body = capture.requests[-1]
            out.append({"step": step.id, "model": label, "path": path, "body": body})
    return out


def _api_root(spec: ModelSpec) -> str:
    """The path of the API under the capture server: a preset's own (AI21's /studio/v1,
    OpenVINO Model Server's /v3), else where the provider's client expects it."""
    if spec.preset is None:
        return _API_ROOT.get(spec.provider, "")
    from urllib.parse import urlsplit

    return urlsplit(str(spec.kwargs.get("base_url") or PRESETS[spec.preset].base_url)).path.rstrip(
        "/"
    )


class _Captured(Exception):
    """Raised where llama.cpp would start generating: the request is recorded."""


_LLAMA_CAPTURE = threading.Lock()
# what llama.cpp's completion is given besides the prompt, in the order shown
_SAMPLING = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "stop",
    "seed",
)


def _llama_request(model: Any, messages: list[Any], step: str) -> dict[str, Any]:
    """What llama.cpp receives for ``messages``: the chat call runs as in a real run (the GGUF's
    chat template, tools prompt, grammar) and is stopped inside ``Llama.create_completion``,
    where its prompt tokens, sampling settings and grammar are read. The interception applies
    to this thread only; other threads' calls pass through."""
    from llama_cpp import Llama

    original = Llama.create_completion
    me = threading.get_ident()
    seen: list[tuple[Any, dict[str, Any]]] = []

    def capture(self: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != me:
            return original(self, *args, **kwargs)
        seen.append((self, {**dict(zip(("prompt",), args, strict=False)), **kwargs}))
        raise _Captured

    failure: Exception | None = None
    with _LLAMA_CAPTURE:
        Llama.create_completion = capture  # type: ignore[method-assign]
        try:
            model.invoke(messages)
        except Exception as exc:  # expected: _Captured, perhaps wrapped by a parser
            failure = exc
        finally:
            Llama.create_completion = original  # type: ignore[method-assign]
    if not seen:
        raise UserError(f"the local model received nothing for step '{step}': {failure}")
    llm, call = seen[-1]
    prompt = call.get("prompt")
    if isinstance(prompt, list):  # token ids: shown as text, special tokens included
        prompt = llm.detokenize(prompt, special=True).decode("utf-8", errors="replace")
    body: dict[str, Any] = {"model": Path(llm.model_path).name, "prompt": prompt}
    body.update({k: call[k] for k in _SAMPLING if call.get(k) is not None})
    grammar = call.get("grammar")
    if grammar is not None:
        body["grammar"] = str(getattr(grammar, "_grammar", grammar))
    return body


# retrievers whose search needs the chain's embeddings (static and bm25 need none)
_EMBEDDED = ("memory", "chroma", "llamaindex")
_OFFLINE_EMBEDDINGS = ("local", "llamacpp", "huggingface")


class _Contexts:
    """The ``{context}`` each step would get: the documents its retriever finds for the search
    query, run here as the chain would run it, when that needs no network, no code of the
    file's and no step output; otherwise a marked placeholder that says why not."""

    def __init__(self, spec: Chain, given: dict[str, Any], allow_imports: list[str] | None):
        self.spec = spec
        self.given = given
        self.allow_imports = allow_imports
        self.found: dict[str | None, str] = {}

    def get(self, step: Any) -> str | None:
        """``step``'s ``{context}`` (None: no retriever fills it; then it is an input)."""
        # a step's own retriever (multi-step chains only, as compile_chain has it) wins
        own = step.retriever if self.spec.steps and step.retriever is not None else None
        retriever = own if own is not None else self.spec.retriever
        if retriever is None:
            return None
        key = step.id if own is not None else None
        if key not in self.found:
            self.found[key] = self._context(retriever, key)
        return self.found[key]

    def _context(self, retriever: Any, step: str | None) -> str:
        from langchain_core.prompts import PromptTemplate

        names = self.spec.input_names()
        query = retriever.query or ("{" + names[0] + "}" if names else "")
        template = PromptTemplate.from_template(query)
        fields = template.input_variables
        shown = template.format(
            **{
                f: self.given.get(f, f"<input {f}>" if f in names else f"<output of {f}>")
                for f in fields
            }
        )
        missing = [f for f in fields if f not in self.given]
        reason: str | None
        if missing:
            name = missing[0]
            reason = (
                f"input '{name}' not given (-i {name}=...)"
                if name in names
                else f"the query needs the output of step '{name}', which render does not run"
            )
        else:
            try:
                if (reason := self._unavailable(retriever)) is None:
                    return self._search(retriever, query, step)
            except Exception as exc:  # whatever the index says, render still shows the request
                detail = (
                    str(exc) if isinstance(exc, EslabonError) else f"{type(exc).__name__}: {exc}"
                )
                reason = "the search failed: " + redact(detail).splitlines()[0]
        return f'<context: documents the {_label(retriever)} would find for "{shown}"; {reason}>'

    def _unavailable(self, retriever: Any) -> str | None:
        """Why render cannot run ``retriever`` here (None: it can)."""
        from eslabon.chainfile.spec import RETRIEVER_TYPES
        from eslabon.rag.retrieval import DEFAULT_STORE
        from eslabon.trust.project import load_project

        kind = retriever.type
        if kind not in RETRIEVER_TYPES:
            return "render runs only the built-in retrievers, not code a retriever factory runs"
        embeddings = self.spec.embeddings or "local"
        if kind in _EMBEDDED and embeddings.partition(":")[0] not in _OFFLINE_EMBEDDINGS:
            return f"its embeddings '{embeddings}' are a provider's, and render calls no provider"
        root = load_project().root
        if kind == "chroma":
            if retriever.host:
                return f"render does not query Chroma servers ({retriever.host}:{retriever.port})"
            folder = root / (retriever.path or DEFAULT_STORE)
            if not (folder / "chroma.sqlite3").is_file():
                return f"index not found at {folder}"
            if not _has_collection(folder, retriever.collection):
                return f"no collection '{retriever.collection}' in the index at {folder}"
        if kind == "llamaindex" and not (root / retriever.path).is_dir():
            return f"index not found at {root / retriever.path}"
        return None

    def _search(self, retriever: Any, query: str, step: str | None) -> str:
        from eslabon.rag.retrieval import build_embeddings, build_retriever
        from eslabon.running.runcore import run
        from eslabon.running.runtime import Retrieval
        from eslabon.trust.imports import allowed_imports
        from eslabon.trust.project import load_project

        spec = self.spec
        embeddings = build_embeddings(
            spec.embeddings if retriever.type in _EMBEDDED else None,
            spec.base_dir,
            from_chain_file=True,
        )
        allowed = allowed_imports(self.allow_imports)
        built = build_retriever(retriever, embeddings, load_project().root, allowed, spec.base_dir)
        values = dict(self.given)
        run(Retrieval(built, query, step).flow(values, {}))  # fills values["context"] as a run does
        return str(values["context"])


def _label(retriever: Any) -> str:
    kind = retriever.type
    if kind == "chroma":
        return f"chroma retriever '{retriever.collection}'"
    if kind == "llamaindex":
        return f"llamaindex retriever at '{retriever.path}'"
    from eslabon.chainfile.spec import RETRIEVER_TYPES

    return f"{kind} retriever" if kind in RETRIEVER_TYPES else f"'{kind}' retriever"


def _has_collection(folder: Path, name: str) -> bool:
    """Whether the Chroma store at ``folder`` holds ``name`` (building the retriever would
    create an empty one in the user's store instead)."""
    import chromadb
    from chromadb.config import Settings

    # the settings chroma_store uses: Chroma refuses a second client on a path with others
    client = chromadb.PersistentClient(
        path=str(folder), settings=Settings(anonymized_telemetry=False)
    )
    try:
        client.get_collection(name)
    except Exception:  # chromadb's NotFoundError (a ValueError in older releases)
        return False
    return True


def _bound(
    model: Any, step: Any, allow_imports: list[str] | None, method: str | None = None
) -> Any:
    """The model as the step runs it: with its tools, or asked for its output schema (in the
    model mapping's ``structured_method``, as compile does)."""
    if step.output_schema is None and not step.tools:
        return model
    from eslabon.trust.imports import allowed_imports

    allowed = allowed_imports(allow_imports)
    if step.output_schema is not None:
        from eslabon.running.structured import resolve_output_schema, structured_model

        schema = resolve_output_schema(step.output_schema, step.id, allowed)
        return structured_model(model, schema, method)
    from eslabon.running.toolcalls import load_tools

    return model.bind_tools(load_tools(step.tools, allowed, step.id))
