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

from eslabon.errors import (
    ChainConfigError,
    MissingCredentialsError,
    MissingDependencyError,
    ModelError,
    Problem,
    UserError,
    add_secret,
    redact,
)
from eslabon.modelspec import PROVIDERS, ModelRefError, ModelSpec, parse_model_ref
from eslabon.spec import PARAM_NAMES

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

__all__ = [
    "DEFAULT_MODEL",
    "build_from_spec",
    "build_model",
    "is_chat_model",
    "load_env",
    "parse_or_raise",
    "resolve_model_ref",
]

DEFAULT_MODEL = "local"
ENV_MODEL = "ESLABON_MODEL"
_ENV_LOADED = False


def load_env() -> None:
    """Load ``.env`` from the working directory once (never overriding the real environment)."""
    global _ENV_LOADED
    if not _ENV_LOADED:
        _ENV_LOADED = True
        from dotenv import load_dotenv

        load_dotenv(Path.cwd() / ".env", override=False)


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


def parse_or_raise(ref: Any, base_dir: Path | None, where: str) -> ModelSpec:
    try:
        return parse_model_ref(ref, base_dir)
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
    return build_from_spec(parse_or_raise(ref, base_dir, "model"), params, base_dir)


def build_from_spec(
    spec: ModelSpec, params: dict[str, Any] | None = None, base_dir: Path | None = None
) -> BaseChatModel:
    """Build the chat model a parsed :class:`ModelSpec` describes."""
    if "base_urls" in spec.kwargs:
        return _build_pool(spec, params, base_dir)
    kwargs = dict(spec.kwargs)
    kwargs.pop("structured_method", None)  # read when output_schema is bound (compile.py)
    merged = {k: kwargs.pop(k) for k in list(kwargs) if k in PARAM_NAMES}
    merged.update(params or {})
    if spec.provider == "fake":
        from eslabon.fake import EchoChatModel, FakeChatModel

        _only(spec, kwargs, ("responses",))
        responses = kwargs.pop("responses", None)
        if responses:
            return FakeChatModel(responses=[str(r) for r in responses])
        return EchoChatModel()
    if spec.provider in ("local", "llamacpp"):
        return _build_local(spec, kwargs, merged, base_dir)
    return _build_langchain(spec, kwargs, merged)


def _build_pool(
    spec: ModelSpec, params: dict[str, Any] | None, base_dir: Path | None
) -> BaseChatModel:
    """``base_urls: [...]``: one model per server, behind an :class:`eslabon.pool.EndpointPool`."""
    from dataclasses import replace

    from eslabon.pool import EndpointPool

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


# What a local/llamacpp model mapping may set besides params (anything else is a mistake that
# llama.cpp would silently ignore, so it is reported instead).
LOCAL_SETTINGS = ("n_ctx", "n_threads", "repeat_penalty")


def _only(spec: ModelSpec, kwargs: dict[str, Any], allowed: tuple[str, ...]) -> None:
    from eslabon.suggest import did_you_mean

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
    from eslabon.local import ChatLlamaCppLocal, bundled_model_path

    _only(spec, kwargs, LOCAL_SETTINGS)
    if spec.provider == "local":
        path = bundled_model_path()
    else:
        path = Path(os.path.expanduser(spec.name))
        if not path.is_absolute():
            path = (spec.base_dir or base_dir or Path.cwd()) / path
    return ChatLlamaCppLocal(model_path=str(path), **kwargs, **params)


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
}


def provider_params(spec: ModelSpec, params: dict[str, Any]) -> dict[str, Any]:
    """Translate eslabon params to the provider's constructor keywords."""
    names = _PARAM_NAMES.get(spec.provider, {})
    out: dict[str, Any] = {}
    compatible = spec.provider == "openai" and "base_url" in spec.kwargs
    for key, value in params.items():
        if compatible and key == "max_tokens":
            # langchain-openai renames it max_completion_tokens, which OpenAI-compatible servers
            # (llama.cpp, older vLLM, LM Studio) ignore; they all read max_tokens.
            out.setdefault("extra_body", {})["max_tokens"] = value
            continue
        target = names.get(key, key)
        if target is None:
            if key == "top_k" and "base_url" in spec.kwargs:
                # OpenAI-compatible servers (vLLM, llama.cpp, ...) take top_k in the body
                out.setdefault("extra_body", {})["top_k"] = value
                continue
            raise ChainConfigError(
                [
                    Problem(
                        f"provider '{spec.provider}' does not support the param '{key}'",
                        path=f"params.{key}",
                        hint="remove it, or set it only on steps that use another model",
                    )
                ]
            )
        out[target] = value
    return out


def _credentials(spec: ModelSpec, kwargs: dict[str, Any]) -> None:
    """Fill ``api_key`` from ``api_key_env`` or the provider's variable; never log it."""
    info = PROVIDERS[spec.provider]
    var = kwargs.pop("api_key_env", None) or info.env_var
    if var is None or "api_key" in kwargs:
        return
    load_env()
    value = os.environ.get(str(var))
    if value:
        add_secret(value)
        kwargs["api_key"] = value
    elif "base_url" in kwargs and "api_key_env" not in spec.kwargs:
        # OpenAI-compatible servers often need no key, but the SDK refuses to start without one.
        kwargs["api_key"] = "not-needed"
    else:
        raise MissingCredentialsError(spec.provider, str(var))


def _timeout(spec: ModelSpec, kwargs: dict[str, Any]) -> None:
    if "timeout" in kwargs and spec.provider == "ollama":
        kwargs.setdefault("client_kwargs", {})["timeout"] = kwargs.pop("timeout")


def _build_langchain(
    spec: ModelSpec, kwargs: dict[str, Any], params: dict[str, Any]
) -> BaseChatModel:
    info = PROVIDERS[spec.provider]
    if importlib.util.find_spec(info.module) is None:
        raise MissingDependencyError(
            f"Provider '{spec.provider}'", info.extra, info.module.replace("_", "-")
        )
    _credentials(spec, kwargs)
    _timeout(spec, kwargs)
    from langchain.chat_models import init_chat_model

    settings = provider_params(spec, params)
    if "extra_body" in kwargs and "extra_body" in settings:  # the mapping's own, plus ours
        settings["extra_body"] = {**kwargs.pop("extra_body"), **settings["extra_body"]}
    try:
        model: BaseChatModel = init_chat_model(
            spec.name, model_provider=spec.provider, **kwargs, **settings
        )
    except ImportError as exc:
        raise MissingDependencyError(f"Provider '{spec.provider}'", info.extra, exc.name) from None
    except (ValueError, TypeError) as exc:
        raise ModelError(f"could not create model '{spec.label}': {redact(str(exc))}") from None
    return model
