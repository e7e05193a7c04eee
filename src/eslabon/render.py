"""``eslabon render``: the exact request body each step would send to a provider.

Each step's messages are built as the chain would build them (earlier steps' outputs shown as
``<output of ID>``, inputs not given as ``<input NAME>``), then handed to the provider's real
LangChain chat model with a placeholder key. Its SDK sends the request to a capture server on
127.0.0.1 inside this process, which records the body and refuses the call — so what is printed
is byte for byte what the SDK would send, with no network call to the provider and no key.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from eslabon.compile import step_prompt
from eslabon.errors import EslabonError, UserError, redact
from eslabon.models import build_from_spec
from eslabon.modelspec import PROVIDER_SYNONYMS, parse_model_ref
from eslabon.spec import Chain
from eslabon.suggest import did_you_mean

__all__ = ["RENDER_PROVIDERS", "render_requests"]

# provider -> model name used when the chain's own model is another provider's
RENDER_PROVIDERS = {
    "openai": "gpt-4o-mini",
    "google_genai": "gemini-2.5-flash",
    "anthropic": "claude-sonnet-4-6",
    "ollama": "llama3.2",
}
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


def _provider(name: str) -> str:
    provider = PROVIDER_SYNONYMS.get(name, name)
    if provider not in RENDER_PROVIDERS:
        hint = did_you_mean(name, [*RENDER_PROVIDERS, *PROVIDER_SYNONYMS])
        raise UserError(
            f"render knows the providers {', '.join(RENDER_PROVIDERS)}; got '{name}'"
            + (f" ({hint})" if hint else "")
        )
    return provider


def render_requests(
    spec: Chain,
    provider: str,
    inputs: dict[str, str] | None = None,
    step_id: str | None = None,
    allow_imports: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The request each step would send to ``provider``: ``[{step, path, body}, ...]``,
    tools and output schema included (``allow_imports`` as for running the chain)."""
    provider = _provider(provider)
    spec.check()
    steps = spec.normalized_steps()
    ids = [s.id for s in steps]
    if step_id is not None and step_id not in ids:
        hint = did_you_mean(step_id, ids)
        raise UserError(
            f"no step '{step_id}' in the chain"
            + (f" ({hint})" if hint else "")
            + f"; steps: {', '.join(ids)}"
        )
    given: dict[str, Any] = {
        n: d for n in spec.input_names() if (d := spec.input_default(n)) is not None
    }
    given.update(inputs or {})
    values: dict[str, Any] = {name: f"<input {name}>" for name in spec.input_names()}
    values.update(given)
    values.update({sid: f"<output of {sid}>" for sid in ids})
    contexts = _Contexts(spec, given, allow_imports)

    name = RENDER_PROVIDERS[provider]
    compatible = False  # the chain targets an OpenAI-compatible server (base_url)
    chain_model = spec.model
    if chain_model is not None:
        own = parse_model_ref(chain_model, spec.base_dir)
        if own.provider == provider:
            name = own.name
            compatible = "base_url" in own.kwargs
    chain_params = spec.params.set_values() if spec.params else {}
    out: list[dict[str, Any]] = []
    with _Capture() as capture:
        for step in steps:
            if step_id is not None and step.id != step_id:
                continue
            prompt = step_prompt(step, spec.base_dir)
            fields = prompt.input_variables
            step_values = values
            if "context" in fields and (context := contexts.get(step)) is not None:
                step_values = {**values, "context": context}  # what its retriever fills
            messages = prompt.format_messages(**{f: step_values[f] for f in fields})
            params = {**chain_params, **(step.params.set_values() if step.params else {})}
            ref: dict[str, Any] = {"provider": provider, "name": name}
            if provider == "openai" and not compatible:
                # ChatOpenAI's own field, not base_url: a base_url would make eslabon shape
                # the body for an OpenAI-compatible server instead of OpenAI itself
                ref["openai_api_base"] = capture.url + "/v1"
            else:
                ref["base_url"] = capture.url + ("/v1" if provider == "openai" else "")
            if provider != "ollama":
                ref.update(api_key=_PLACEHOLDER_KEY, max_retries=0)
            # render's own reference to its capture server, not the file's: trusted
            spec_ref = parse_model_ref(ref, trusted=True)
            model = _bound(build_from_spec(spec_ref, params), step, allow_imports)
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
            out.append({"step": step.id, "path": path, "body": body})
    return out


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
        from eslabon.project import load_project
        from eslabon.retrieval import DEFAULT_STORE
        from eslabon.spec import RETRIEVER_TYPES

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
        from eslabon.compile import Retrieval
        from eslabon.imports import allowed_imports
        from eslabon.project import load_project
        from eslabon.retrieval import build_embeddings, build_retriever

        spec = self.spec
        embeddings = build_embeddings(
            spec.embeddings if retriever.type in _EMBEDDED else None,
            spec.base_dir,
            from_chain_file=True,
        )
        allowed = allowed_imports(self.allow_imports)
        built = build_retriever(retriever, embeddings, load_project().root, allowed, spec.base_dir)
        values = dict(self.given)
        Retrieval(built, query, step).run(values, {})  # fills values["context"] as a run does
        return str(values["context"])


def _label(retriever: Any) -> str:
    kind = retriever.type
    if kind == "chroma":
        return f"chroma retriever '{retriever.collection}'"
    if kind == "llamaindex":
        return f"llamaindex retriever at '{retriever.path}'"
    from eslabon.spec import RETRIEVER_TYPES

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


def _bound(model: Any, step: Any, allow_imports: list[str] | None) -> Any:
    """The model as the step runs it: with its tools, or asked for its output schema."""
    if step.output_schema is None and not step.tools:
        return model
    from eslabon.imports import allowed_imports

    allowed = allowed_imports(allow_imports)
    if step.output_schema is not None:
        from eslabon.structured import resolve_output_schema, structured_model

        return structured_model(model, resolve_output_schema(step.output_schema, step.id, allowed))
    from eslabon.toolcalls import load_tools

    return model.bind_tools(load_tools(step.tools, allowed, step.id))
