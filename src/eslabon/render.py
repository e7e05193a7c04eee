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
from typing import Any

from eslabon.compile import step_prompt
from eslabon.errors import UserError
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
    values: dict[str, Any] = {name: f"<input {name}>" for name in spec.input_names()}
    values.update({n: d for n in spec.input_names() if (d := spec.input_default(n)) is not None})
    values.update(inputs or {})
    values.update({sid: f"<output of {sid}>" for sid in ids})

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
            messages = prompt.format_messages(**{f: values[f] for f in prompt.input_variables})
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
            model = _bound(build_from_spec(parse_model_ref(ref), params), step, allow_imports)
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
