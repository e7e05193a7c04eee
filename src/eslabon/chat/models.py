"""Building chat models from references: ``provider:model``, aliases, mappings; lazy imports.

Resolution order for the model a chain runs on: the explicit override (``--model`` /
``load_chain(..., model=)``) > the ``ESLABON_MODEL`` environment variable > the chain file's
``model`` > ``local``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from eslabon.chainfile.spec import (
    HF_SETTINGS,
    LOCAL_SETTINGS,
    MODEL_SETTINGS,
    PARAM_NAMES,
    provider_settings,
)
from eslabon.chat.modelspec import (
    PRESETS,
    PROVIDERS,
    ModelRefError,
    ModelSpec,
    adapter_path,
    gguf_path,
    key_destination,
    parse_model_ref,
    transformers_source,
)
from eslabon.errors import (
    ChainConfigError,
    MissingCredentialsError,
    MissingDependencyError,
    ModelError,
    Problem,
    UserError,
)
from eslabon.trust.redaction import add_secret, is_secret_setting, redact

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

__all__ = [
    "DEFAULT_MODEL",
    "KeyNotAllowedError",
    "build_from_spec",
    "build_model",
    "endpoint_refusal",
    "is_chat_model",
    "key_refusal",
    "load_env",
    "parse_or_raise",
    "resolve_model_ref",
]

DEFAULT_MODEL = "local"
ENV_MODEL = "ESLABON_MODEL"
_ENV_LOADED = False


ENV_FILE_NAMES: dict[str, Path] = {}  # variables that came from a .env file, and which one


def load_env() -> None:
    """Load ``.env`` from the working directory once (never overriding the real environment).

    It is the user's configuration, like ``eslabon.toml``: one owned by another user or
    writable by everyone is refused (see :func:`eslabon.trust.project.check_owner`)."""
    global _ENV_LOADED
    if not _ENV_LOADED:
        _ENV_LOADED = True
        path = Path.cwd() / ".env"
        if not path.is_file():
            return
        from dotenv import dotenv_values, load_dotenv

        from eslabon.trust.project import check_owner

        check_owner(path)
        values = dotenv_values(path)
        ENV_FILE_NAMES.update({k: path for k in values if k not in os.environ})
        load_dotenv(path, override=False)


def resolve_model_ref(override: Any, file_ref: Any) -> tuple[Any, bool]:
    """Apply the precedence: override > ESLABON_MODEL > chain file > local.

    Returns the reference and whether it overrides the file (then it replaces step models too).
    """
    if override is not None:
        return override, True
    env = os.environ.get(ENV_MODEL)
    if env:
        return env, True
    return (file_ref if file_ref is not None else DEFAULT_MODEL), False


def parse_or_raise(
    ref: Any, base_dir: Path | None, where: str, *, trusted: bool = False
) -> ModelSpec:
    try:
        return parse_model_ref(ref, base_dir, trusted=trusted)
    except ModelRefError as exc:
        raise ChainConfigError([Problem(exc.message, path=where, hint=exc.hint)]) from None


def build_model(
    ref: Any, params: dict[str, Any] | None = None, base_dir: Path | None = None
) -> BaseChatModel:
    """Build a LangChain chat model from a reference and generation params.

    ``ref`` may also be a ready ``BaseChatModel``; it is returned unchanged (params are the
    caller's business then).
    """
    if is_chat_model(ref):
        return ref
    # the caller's own code names this model: its settings are used as written
    return build_from_spec(parse_or_raise(ref, base_dir, "model", trusted=True), params, base_dir)


def build_from_spec(
    spec: ModelSpec, params: dict[str, Any] | None = None, base_dir: Path | None = None
) -> BaseChatModel:
    """Build the chat model a parsed :class:`ModelSpec` describes (tagged with what it was
    built from, for usage and cost: :func:`eslabon.observe.meter.tag_model`)."""
    from eslabon.observe.meter import tag_model

    return tag_model(_build_from_spec(spec, params, base_dir), spec)


def _build_from_spec(
    spec: ModelSpec, params: dict[str, Any] | None, base_dir: Path | None
) -> BaseChatModel:
    _check_settings(spec)
    if "base_urls" in spec.kwargs:
        return _build_pool(spec, params, base_dir)
    kwargs = dict(spec.kwargs)
    kwargs.pop("structured_method", None)  # read when output_schema is bound (compile.py)
    merged = {k: kwargs.pop(k) for k in list(kwargs) if k in PARAM_NAMES}
    merged.update(params or {})
    merged = _checked_params(merged)
    if spec.provider == "fake":
        from eslabon.chat.fake import EchoChatModel, FakeChatModel

        _only(spec, kwargs, ("responses",))
        responses = kwargs.pop("responses", None)
        if responses:
            return FakeChatModel(responses=[str(r) for r in responses])
        return EchoChatModel()
    if spec.provider in ("local", "llamacpp"):
        return _build_local(spec, kwargs, merged, base_dir)
    if spec.provider == "huggingface":
        return _build_transformers(spec, kwargs, merged, base_dir)
    return _build_langchain(spec, kwargs, merged)


def _build_pool(
    spec: ModelSpec, params: dict[str, Any] | None, base_dir: Path | None
) -> BaseChatModel:
    """``base_urls: [...]``: one model per server, behind an
    :class:`eslabon.chat.pool.EndpointPool`."""
    from dataclasses import replace

    from eslabon.chat.pool import EndpointPool

    kwargs = dict(spec.kwargs)
    urls = kwargs.pop("base_urls")
    cap = kwargs.pop("per_endpoint_concurrency", None)
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise UserError(f"model '{spec.label}': base_urls must be a list of server URLs")
    if "base_url" in kwargs:
        raise UserError(f"model '{spec.label}': give base_url or base_urls, not both")
    if cap is not None and (not isinstance(cap, int) or cap < 1):
        raise UserError(f"model '{spec.label}': per_endpoint_concurrency must be a number >= 1")
    endpoints = [
        build_from_spec(replace(spec, kwargs={**kwargs, "base_url": url}), params, base_dir)
        for url in urls
    ]
    return EndpointPool(endpoints=endpoints, per_endpoint_concurrency=cap)


def is_chat_model(obj: Any) -> TypeGuard[BaseChatModel]:
    if isinstance(obj, str | dict) or obj is None:
        return False
    from langchain_core.language_models import BaseChatModel

    return isinstance(obj, BaseChatModel)


def _problems(exc: Any, prefix: str = "model") -> ChainConfigError:
    """A pydantic ValidationError as eslabon's error, one problem per field."""
    return ChainConfigError(
        [
            Problem(
                f"{e['msg'][0].lower()}{e['msg'][1:]} (got {_shown(e)})",
                path=".".join([prefix, *map(str, e["loc"])]),
            )
            for e in exc.errors(include_url=False)
        ]
    )


def _shown(error: Any) -> str:
    """A wrong value as an error shows it; a key's never (whatever its type)."""
    if any(isinstance(part, str) and is_secret_setting(part) for part in error["loc"]):
        return "***"
    return repr(error.get("input"))


def _checked_params(merged: dict[str, Any]) -> dict[str, Any]:
    """Params however they were given (a model mapping, params:, --model) pass one check."""
    from pydantic import ValidationError

    from eslabon.chainfile.spec import Params

    try:
        return Params.model_validate(merged).set_values()
    except ValidationError as exc:
        raise _problems(exc) from None


def _check_settings(spec: ModelSpec) -> None:
    """The settings a chain file may give a model, checked as ``validate`` checks them; a chain
    file's mapping may hold nothing else (its loader refuses other keys; this covers specs
    built in code)."""
    from pydantic import ValidationError

    from eslabon.chainfile.spec import ModelMapping

    known = {k: v for k, v in spec.kwargs.items() if k in MODEL_SETTINGS}
    allowed = provider_settings(spec.provider)
    if wrong := [k for k in known if k not in allowed]:
        why = " (it runs in-process)" if spec.provider in ("local", "llamacpp", "fake") else ""
        raise ChainConfigError(
            [
                Problem(
                    f"'{wrong[0]}' is not a setting of the {spec.provider} provider{why}",
                    path=f"model.{wrong[0]}",
                    hint=f"settings here: {', '.join(allowed)}, plus params",
                )
            ]
        )
    try:
        ModelMapping.model_validate({"provider": spec.provider, **known})
    except ValidationError as exc:
        raise _problems(exc) from None
    if spec.trusted:
        return
    other = [k for k in spec.kwargs if k not in MODEL_SETTINGS and k not in PARAM_NAMES]
    if other:
        raise ChainConfigError(
            [
                Problem(
                    f"'{other[0]}' cannot be set by a chain file",
                    path=f"model.{other[0]}",
                    hint="settings beyond params, base_url and api_key_env go in an alias "
                    "in your own eslabon.toml",
                )
            ]
        )


def _only(spec: ModelSpec, kwargs: dict[str, Any], allowed: tuple[str, ...]) -> None:
    from eslabon.chainfile.suggest import did_you_mean

    for key in kwargs:
        if key in allowed:
            continue
        hint = did_you_mean(key, allowed)
        why = " (it runs in-process)" if key == "timeout" else ""
        raise ChainConfigError(
            [
                Problem(
                    f"'{key}' is not a setting of the {spec.provider} provider{why}",
                    path=f"model.{key}",
                    hint=(hint + " " if hint else "")
                    + f"settings here: {', '.join(allowed) or 'none'}, plus params",
                )
            ]
        )


def _build_local(
    spec: ModelSpec, kwargs: dict[str, Any], params: dict[str, Any], base_dir: Path | None
) -> BaseChatModel:
    if importlib.util.find_spec("llama_cpp") is None:
        raise MissingDependencyError(f"Model '{spec.label}'", "local", "llama-cpp-python")
    from eslabon.chat.local import ChatLlamaCppLocal, bundled_model_path

    _only(spec, kwargs, LOCAL_SETTINGS)
    if spec.provider == "local":
        path = bundled_model_path()
    else:
        try:
            path = gguf_path(spec, base_dir or Path.cwd())
        except ModelRefError as exc:
            raise ChainConfigError([Problem(exc.message, path="model", hint=exc.hint)]) from None
    return ChatLlamaCppLocal(model_path=str(path), **kwargs, **params)


def _build_transformers(
    spec: ModelSpec, kwargs: dict[str, Any], params: dict[str, Any], base_dir: Path | None
) -> BaseChatModel:
    """``huggingface:PATH_OR_ID``: a folder or .gguf file (a chain file's: in its folder or the
    project), or a Hugging Face id read from the local cache."""
    if importlib.util.find_spec("transformers") is None:
        raise MissingDependencyError(f"Model '{spec.label}'", "huggingface", "transformers")
    from eslabon.chat.huggingface import ChatTransformers

    _only(spec, kwargs, (*HF_SETTINGS, *(("download",) if spec.trusted else ())))
    try:
        source, gguf_file = transformers_source(spec, base_dir, kwargs.pop("gguf_file", None))
        adapter = adapter_path(spec, base_dir)
        kwargs["adapter"] = None if adapter is None else str(adapter)
    except ModelRefError as exc:
        raise ChainConfigError([Problem(exc.message, path="model", hint=exc.hint)]) from None
    return ChatTransformers(
        model=source, gguf_file=gguf_file, **kwargs, **provider_params(spec, params)
    )


# Each API names the same generation settings its own way. eslabon name -> constructor keyword;
# None: the API has no such setting (an error, rather than a silently ignored param).
_PARAM_NAMES: dict[str, dict[str, str | None]] = {
    "openai": {"top_k": None},
    "azure_openai": {"top_k": None},
    "anthropic": {
        "stop": "stop_sequences",
        "seed": None,
        "presence_penalty": None,
        "frequency_penalty": None,
    },
    "google_genai": {"max_tokens": "max_output_tokens"},
    "ollama": {"max_tokens": "num_predict", "presence_penalty": None, "frequency_penalty": None},
    "huggingface": {"presence_penalty": None, "frequency_penalty": None},
    "mistralai": {"top_k": None, "seed": "random_seed"},
    "cohere": {"top_p": "p", "top_k": "k"},
    "together": {"top_k": None},  # in the body: OpenAI's SDK, its client, has no such argument
}
# providers that take top_k in the body though OpenAI's API has none
_TOP_K_IN_BODY = ("together",)


def provider_params(spec: ModelSpec, params: dict[str, Any]) -> dict[str, Any]:
    """Translate eslabon params to the provider's constructor keywords."""
    names = _PARAM_NAMES.get(spec.provider, {})
    unsupported = PRESETS[spec.preset].unsupported if spec.preset else ()
    out: dict[str, Any] = {}
    compatible = spec.provider == "openai" and "base_url" in spec.kwargs
    for key, value in params.items():
        if compatible and key == "max_tokens":
            # langchain-openai renames it max_completion_tokens, which OpenAI-compatible servers
            # (llama.cpp, older vLLM, LM Studio) ignore; they all read max_tokens.
            out.setdefault("extra_body", {})["max_tokens"] = value
            continue
        target = None if key in unsupported else names.get(key, key)
        if target is None:
            if (
                key == "top_k"
                and key not in unsupported
                and (compatible or spec.provider in _TOP_K_IN_BODY)
            ):
                # OpenAI-compatible servers (vLLM, llama.cpp, ...) take top_k in the body
                out.setdefault("extra_body", {})["top_k"] = value
                continue
            raise ChainConfigError(
                [
                    Problem(
                        f"provider '{spec.shown_provider}' does not support the param '{key}'",
                        path=f"params.{key}",
                        hint="remove it, or set it only on steps that use another model",
                    )
                ]
            )
        out[target] = value
    return out


PLACEHOLDER_KEY = "not-needed"  # OpenAI-compatible servers often need none; the SDK wants one


class KeyNotAllowedError(UserError):
    """A chain file asks to send an environment variable to a host the user has not approved."""


def key_refusal(spec: ModelSpec, var: str, named: bool) -> str | None:
    """Why the key in ``var`` may not go where ``spec`` sends its requests (None: it may).

    The user's own settings (trusted specs) send keys as written. A chain file's model gets the
    provider's own key only at the provider's own host, or at an endpoint the user approved;
    any other variable only where the user paired it with that host (docs/security.md).
    """
    own = var == spec.info.env_var
    if spec.trusted or (own and _unapproved(spec) is None):
        return None  # the user's, or the provider's own key to its own (or an approved) host
    destination = key_destination(spec)
    if destination is None:
        return f"eslabon does not know where {spec.provider} sends {var}"
    from eslabon.trust.allow import current_allow

    if current_allow().key_grant(var, destination) is not None:
        return None
    flag = (
        f"--allow-key {var}@{destination}"
        if named and not own
        else f"--allow-endpoint {destination}"
    )
    table = (
        f'[allow] keys = {{{var} = ["{destination}"]}}'
        if named and not own
        else f'[allow] endpoints = ["{destination}"]'
    )
    return (
        f"the chain file sends its requests to {destination}, which you have not approved "
        f"for {var}.\n    fix: if you trust that server with this key, pass {flag} or add "
        f"{table} to your eslabon.toml"
    )


# Providers a chain file may point at any server: every credential their clients send is the one
# eslabon passes (or a placeholder in its place). The others' clients also send what they find in
# the environment themselves (ANTHROPIC_CUSTOM_HEADERS, Vertex AI's keys and tokens when
# GOOGLE_GENAI_USE_VERTEXAI is set, Azure AD tokens, ...), so a chain file's base_url for them
# must be one the user approved.
OPEN_ENDPOINTS = ("openai", "ollama")


def _unapproved(spec: ModelSpec) -> str | None:
    """A chain file's ``base_url`` the user has not approved (None: none, or approved)."""
    url = spec.kwargs.get("base_url")
    if spec.trusted or not url:
        return None
    from eslabon.trust.allow import current_allow, endpoint_matches

    own = spec.info.host is not None and endpoint_matches(spec.info.host, str(url))
    return None if own or current_allow().endpoint_grant(str(url)) else str(url)


def endpoint_refusal(spec: ModelSpec) -> str | None:
    """Why a chain file may not point this provider at its ``base_url`` (None: it may)."""
    if spec.provider in OPEN_ENDPOINTS or (url := _unapproved(spec)) is None:
        return None
    return (
        f"the chain file points {spec.provider} at {url}, which you have not approved; its "
        "client sends credentials it finds in the environment, which eslabon cannot hold back."
        f"\n    fix: if you trust that server, pass --allow-endpoint {url} or add "
        f'[allow] endpoints = ["{url}"] to your eslabon.toml'
    )


def _withhold_ollama_key(spec: ModelSpec, kwargs: dict[str, Any]) -> None:
    # the ollama client sends $OLLAMA_API_KEY (ollama.com's key) to whatever host it talks to,
    # unless an Authorization header is given: give the placeholder to an unapproved server
    if spec.provider == "ollama" and os.environ.get("OLLAMA_API_KEY") and _unapproved(spec):
        client = kwargs.setdefault("client_kwargs", {})
        client.setdefault("headers", {})["Authorization"] = f"Bearer {PLACEHOLDER_KEY}"


def _credentials(spec: ModelSpec, kwargs: dict[str, Any]) -> None:
    """Fill ``api_key`` from ``api_key_env`` or the provider's variable, if the key may go to
    where this model sends requests (:func:`key_refusal`); never log it."""
    info = spec.info
    named = kwargs.pop("api_key_env", None)
    if "api_key" in kwargs:  # written out (the user's alias; a chain file's own, validate warns)
        add_secret(str(kwargs["api_key"]))
        return
    var = named or info.env_var
    if var is None:
        if spec.preset is not None:
            # a local server needs no key; given none, OpenAI's SDK would send $OPENAI_API_KEY
            kwargs["api_key"] = PLACEHOLDER_KEY
        return
    load_env()
    refusal = key_refusal(spec, str(var), named is not None)
    if refusal is not None:
        if named is None and "base_url" in kwargs:
            # the provider's own key stays home; a server that needs no key still works
            kwargs["api_key"] = PLACEHOLDER_KEY
            return
        raise KeyNotAllowedError(f"model '{spec.label}': {refusal}")
    value = os.environ.get(str(var))
    # a preset's own URL is its service's (AI21's): without the key it cannot answer
    home = spec.preset is not None and kwargs.get("base_url") == PRESETS[spec.preset].base_url
    if value:
        add_secret(value)
        kwargs["api_key"] = value
    elif "base_url" in kwargs and named is None and not home:
        kwargs["api_key"] = PLACEHOLDER_KEY
    else:
        raise MissingCredentialsError(spec.shown_provider, str(var))


def withheld_key_hint(spec: ModelSpec) -> str | None:
    """For a refused key error (401): why eslabon sent a placeholder instead of the key."""
    var = spec.info.env_var
    if var is None or "api_key" in spec.kwargs or "api_key_env" in spec.kwargs:
        return None
    if "base_url" not in spec.kwargs or not os.environ.get(var):
        return None
    refusal = key_refusal(spec, var, named=False)
    if refusal is None:
        return None
    return f"eslabon did not send {var}: " + refusal.replace("\n    fix: ", "; ")


def _timeout(spec: ModelSpec, kwargs: dict[str, Any]) -> None:
    if "timeout" in kwargs and spec.provider == "ollama":
        kwargs.setdefault("client_kwargs", {})["timeout"] = kwargs.pop("timeout")
    # their SDKs have no connect timeout, and Gemini's retries a refused connection for ~35 s:
    # a transport that fails fast, naming the URL (eslabon.chat.transport)
    key = spec.info.client_option
    given = kwargs.get(key or "") or {}
    # Gemini's SDK picks httpx or httpx2 from what client_args hold: never mix in the user's
    if key is not None and isinstance(given, dict) and (key == "client_kwargs" or not given):
        from eslabon.chat.transport import FastFailTransport

        transport = FastFailTransport(spec.provider, f"{spec.provider}:{spec.name}")
        kwargs[key] = {"transport": transport, **given}


_STREAM_USAGE = ("openai", "azure_openai", "together")


def _build_langchain(
    spec: ModelSpec, kwargs: dict[str, Any], params: dict[str, Any]
) -> BaseChatModel:
    info = PROVIDERS[spec.provider]
    if importlib.util.find_spec(info.module) is None:
        raise MissingDependencyError(
            f"Provider '{spec.shown_provider}'", info.extra, info.module.replace("_", "-")
        )
    if (refusal := endpoint_refusal(spec)) is not None:
        raise KeyNotAllowedError(f"model '{spec.label}': {refusal}")
    _credentials(spec, kwargs)
    _withhold_ollama_key(spec, kwargs)
    _timeout(spec, kwargs)
    from langchain.chat_models import init_chat_model

    settings = provider_params(spec, params)
    if spec.provider in _STREAM_USAGE and "stream_usage" not in kwargs:
        # LangChain asks OpenAI for a streamed reply's usage only at OpenAI's own URL; servers
        # that speak its protocol (vLLM, llama.cpp, a proxy) send it too, and every run reports
        # its usage (eslabon.observe.meter)
        kwargs["stream_usage"] = True
    if "extra_body" in kwargs and "extra_body" in settings:  # the mapping's own, plus ours
        settings["extra_body"] = {**kwargs.pop("extra_body"), **settings["extra_body"]}
    from eslabon.chat.integrations import build_integration

    try:
        model: BaseChatModel = build_integration(spec, kwargs, settings) or init_chat_model(
            spec.name, model_provider=spec.provider, **kwargs, **settings
        )
    except ImportError as exc:
        raise MissingDependencyError(f"Provider '{spec.provider}'", info.extra, exc.name) from None
    except (ValueError, TypeError) as exc:
        raise ModelError(f"could not create model '{spec.label}': {redact(str(exc))}") from None
    return model
