"""Model references: parsing and checking ``provider:model`` strings, aliases and mappings.

Nothing here imports LangChain or a provider SDK; :mod:`eslabon.chat.models` does that lazily when a
model is actually built.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eslabon.chainfile.suggest import did_you_mean

__all__ = [
    "PROVIDERS",
    "ModelSpec",
    "ProviderInfo",
    "check_model_ref",
    "gguf_path",
    "key_destination",
    "model_option",
    "parse_model_ref",
    "ref_label",
    "split_models",
]


@dataclass(frozen=True)
class ProviderInfo:
    """What eslabon knows about a provider before importing anything."""

    module: str  # the integration package that must be importable
    extra: str | None  # eslabon extra that installs it (None: install the package itself)
    env_var: str | None = None  # API key variable, if the provider needs one
    via_langchain: bool = True  # built by LangChain's init_chat_model
    host: str | None = None  # where its own key goes when no base_url is given
    # the client setting that takes an httpx transport, where eslabon gives its own
    # (eslabon.chat.transport: their SDKs have no connect timeout)
    client_option: str | None = None


# Providers LangChain's ``init_chat_model`` knows, plus eslabon's own (local, llamacpp, fake).
# A test checks every ``via_langchain`` name against LangChain's own table.
PROVIDERS: dict[str, ProviderInfo] = {
    "local": ProviderInfo("llama_cpp", "local", via_langchain=False),
    "llamacpp": ProviderInfo("llama_cpp", "local", via_langchain=False),
    "fake": ProviderInfo("langchain_core", None, via_langchain=False),
    "openai": ProviderInfo(
        "langchain_openai", "openai", "OPENAI_API_KEY", host="https://api.openai.com"
    ),
    "azure_openai": ProviderInfo("langchain_openai", "openai", "AZURE_OPENAI_API_KEY"),
    "google_genai": ProviderInfo(
        "langchain_google_genai",
        "gemini",
        "GOOGLE_API_KEY",
        host="https://generativelanguage.googleapis.com",
        client_option="client_args",
    ),
    "anthropic": ProviderInfo(
        "langchain_anthropic", "anthropic", "ANTHROPIC_API_KEY", host="https://api.anthropic.com"
    ),
    "ollama": ProviderInfo("langchain_ollama", "ollama", client_option="client_kwargs"),
    "mistralai": ProviderInfo(
        "langchain_mistralai", None, "MISTRAL_API_KEY", host="https://api.mistral.ai"
    ),
    "groq": ProviderInfo("langchain_groq", None, "GROQ_API_KEY", host="https://api.groq.com"),
    "deepseek": ProviderInfo(
        "langchain_deepseek", None, "DEEPSEEK_API_KEY", host="https://api.deepseek.com"
    ),
    "xai": ProviderInfo("langchain_xai", None, "XAI_API_KEY", host="https://api.x.ai"),
    "together": ProviderInfo(
        "langchain_together", None, "TOGETHER_API_KEY", host="https://api.together.xyz"
    ),
    "fireworks": ProviderInfo(
        "langchain_fireworks", None, "FIREWORKS_API_KEY", host="https://api.fireworks.ai"
    ),
    "openrouter": ProviderInfo(
        "langchain_openrouter", None, "OPENROUTER_API_KEY", host="https://openrouter.ai"
    ),
    "cohere": ProviderInfo(
        "langchain_cohere", None, "COHERE_API_KEY", host="https://api.cohere.com"
    ),
}

# Spellings people use for a provider, mapped to LangChain's name.
PROVIDER_SYNONYMS = {
    "gemini": "google_genai",
    "google": "google_genai",
    "llama_cpp": "llamacpp",
    "llama.cpp": "llamacpp",
    "claude": "anthropic",
}

# Built-in aliases; ``[models]`` in eslabon.toml adds more and may redefine these.
ALIASES: dict[str, str] = {"local": "local:smollm2-135m-instruct"}

# A bare model name: suggest the provider it belongs to.
_NAME_HINTS = (
    ("gpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("claude", "anthropic"),
    ("gemini", "google_genai"),
    ("mistral", "mistralai"),
    ("llama", "ollama"),
)


@dataclass(frozen=True)
class ModelSpec:
    """A resolved reference: provider, model name and constructor keyword arguments."""

    provider: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    alias: str | None = None  # the alias it was reached through, if any
    base_dir: Path | None = None  # where relative paths (GGUF files) resolve
    # Given by the user (command line, ESLABON_MODEL, an eslabon.toml alias, Python code), not
    # by a chain file: its settings are used as written. A chain file's are bounded instead:
    # no key to an unapproved host, no file outside its folder (docs/security.md).
    trusted: bool = False

    @property
    def label(self) -> str:
        return f"{self.provider}:{self.name}" if self.name else self.provider

    @property
    def info(self) -> ProviderInfo:
        return PROVIDERS[self.provider]

    def installed(self) -> bool:
        return importlib.util.find_spec(self.info.module) is not None


class ModelRefError(ValueError):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def _provider(raw: str) -> str:
    p = raw.strip()
    p = PROVIDER_SYNONYMS.get(p.lower(), p)
    if p not in PROVIDERS:
        hint = did_you_mean(p, [*PROVIDERS, *PROVIDER_SYNONYMS])
        known = ", ".join(sorted(PROVIDERS))
        raise ModelRefError(
            f"unknown provider '{p}'", (hint + " " if hint else "") + f"known providers: {known}"
        )
    return p


def resolve_alias(ref: Any, base_dir: Path | None = None) -> tuple[Any, Path | None, str | None]:
    """Follow aliases: ``eslabon.toml``'s ``[models]`` first, then the built-in ones.

    Returns the target reference, the folder its relative paths resolve against (the project
    root for project aliases) and the alias name used, if any.
    """
    if not isinstance(ref, str):
        return ref, base_dir, None
    from eslabon.trust.project import load_project

    project = load_project()
    alias: str | None = None
    seen: list[str] = []
    while isinstance(ref, str) and ref.strip() in project.models:
        key = ref.strip()
        if key in seen:
            chain = " -> ".join([*seen, key])
            raise ModelRefError(
                f"alias loop in {project.file}: {chain}", "make one alias name a model"
            )
        seen.append(key)
        ref, base_dir, alias = project.models[key], project.root, alias or key
        if isinstance(ref, str) and ref.strip() == key:
            break  # e.g. local = "local": the built-in one
    if isinstance(ref, str) and ref.strip() in ALIASES:
        alias = alias or ref.strip()
        ref = ALIASES[ref.strip()]
    return ref, base_dir, alias


def parse_model_ref(ref: Any, base_dir: Path | None = None, *, trusted: bool = False) -> ModelSpec:
    """Parse a model reference from a chain file (``trusted=False``) or from the user
    (the command line, ``ESLABON_MODEL``, Python code: ``trusted=True``).

    ``ref`` is ``"provider:model"``, an alias (``local``, or one from ``eslabon.toml``: trusted,
    being the user's own file), or a mapping ``{provider, name, ...}`` (a dict or
    :class:`eslabon.chainfile.spec.ModelMapping`). Raises :class:`ModelRefError`.
    """
    if hasattr(ref, "model_dump"):
        ref = ref.model_dump(exclude_none=True)
    ref, base_dir, alias = resolve_alias(ref, base_dir)
    trusted = trusted or alias is not None
    if isinstance(ref, dict):
        data = dict(ref)
        if "provider" not in data:
            raise ModelRefError(
                "a model mapping needs 'provider'", "e.g. {provider: openai, name: gpt-4o-mini}"
            )
        provider = _provider(str(data.pop("provider")))
        name = str(data.pop("name", "") or "")
        if provider == "local" and not name:
            name = "smollm2-135m-instruct"
        spec = ModelSpec(provider, name, data, alias, base_dir, trusted)
    elif isinstance(ref, str):
        text = ref.strip()
        if ":" not in text:
            if text.lower() in PROVIDERS or text.lower() in PROVIDER_SYNONYMS:
                spec = ModelSpec(_provider(text), "", {}, alias, base_dir, trusted)
            else:
                hint = next(
                    (
                        f"did you mean '{p}:{text}'?"
                        for pre, p in _NAME_HINTS
                        if text.lower().startswith(pre)
                    ),
                    None,
                )
                raise ModelRefError(
                    f"unknown model '{text}': write 'provider:model' or an alias",
                    hint or _alias_hint(),
                )
        else:
            provider, _, name = text.partition(":")
            spec = ModelSpec(_provider(provider), name.strip(), {}, alias, base_dir, trusted)
    else:
        raise ModelRefError("a model is a 'provider:model' string or a {provider, name} mapping")
    _check_provider_specifics(spec, base_dir)
    return spec


def _alias_hint() -> str:
    from eslabon.trust.project import load_project

    names = sorted({*ALIASES, *load_project().models})
    return "e.g. 'openai:gpt-4o-mini', 'google_genai:gemini-2.5-flash'; aliases: " + ", ".join(
        names
    )


def _check_provider_specifics(spec: ModelSpec, base_dir: Path | None) -> None:
    if spec.provider == "llamacpp":
        if not spec.name:
            raise ModelRefError(
                "llamacpp needs a GGUF path", "e.g. 'llamacpp:models/mistral-7b.Q4_K_M.gguf'"
            )
        path = gguf_path(spec, base_dir)
        if not path.is_file():
            raise ModelRefError(
                f"GGUF file not found: {path}", "give the path to a .gguf model file"
            )
    elif spec.provider == "fake" and spec.name not in ("", "echo"):
        raise ModelRefError(
            f"unknown fake model '{spec.name}'",
            "use 'fake:echo', or {provider: fake, responses: [...]}",
        )
    elif spec.info.via_langchain and not spec.name:
        raise ModelRefError(
            f"provider '{spec.provider}' needs a model name", f"e.g. '{spec.provider}:MODEL-NAME'"
        )


def gguf_path(spec: ModelSpec, base_dir: Path | None) -> Path:
    """Where a ``llamacpp:PATH`` model's file is; a chain file's must lie in its folder or the
    project (see :mod:`eslabon.trust.paths`)."""
    path = Path(os.path.expanduser(spec.name))
    folder = spec.base_dir or base_dir
    if not spec.trusted:
        from eslabon.trust.paths import PathNotAllowedError, confine

        try:
            return confine(spec.name, folder or Path.cwd(), "GGUF model")
        except PathNotAllowedError as exc:
            raise ModelRefError(exc.message, exc.hint) from None
    if not path.is_absolute() and folder is not None:
        path = folder / path
    return path


def key_destination(spec: ModelSpec) -> str | None:
    """The URL a model's requests (and key) go to: its ``base_url``, else the provider's own
    host (None when eslabon does not know it)."""
    url = spec.kwargs.get("base_url")
    return str(url) if url else spec.info.host


def ref_label(ref: Any) -> str:
    """How a model reference is shown: the string as written, or ``provider:name`` for a
    mapping (a ``ModelMapping`` or a dict)."""
    if isinstance(ref, str):
        return ref
    data = ref.model_dump(exclude_none=True) if hasattr(ref, "model_dump") else dict(ref)
    return f"{data.get('provider')}:{data.get('name') or ''}".rstrip(":")


def check_model_ref(ref: Any, base_dir: Path | None = None) -> tuple[str, str | None] | None:
    """Return ``(message, hint)`` when ``ref`` is invalid, else None."""
    try:
        parse_model_ref(ref, base_dir)
    except ModelRefError as exc:
        return exc.message, exc.hint
    return None


def key_is_set(spec: ModelSpec) -> bool | None:
    """Whether the provider's API key variable is set (None: it needs none). Never the value."""
    var = spec.info.env_var
    if var is None:
        return None
    return bool(os.environ.get(var) or spec.kwargs.get("api_key"))


# -- models given on a command line --------------------------------------------------------------
def model_option(text: str | None, option: str = "--model") -> Any:
    """A model given as an option: 'provider:model', an alias, or a YAML mapping
    '{provider: ..., ...}' (read with the bounded loader, as a chain file is)."""
    from eslabon.errors import UserError

    if text is None or not text.lstrip().startswith("{"):
        return text
    import yaml

    from eslabon.chainfile.yamlsafe import YamlLimitError, load_bounded

    try:
        data = load_bounded(text)
    except (yaml.YAMLError, YamlLimitError) as exc:
        raise UserError(f"{option}: not a valid mapping: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{option}: expected a mapping such as '{{provider: openai, name: ...}}'")
    return data


def split_models(text: str, option: str = "--models") -> list[str]:
    """Several models in one option: split at the commas outside braces, brackets and quotes
    (``fake:echo,{provider: fake, responses: [a, b]}`` is two)."""
    from eslabon.errors import UserError

    parts: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for c in text:
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(c)
    parts.append("".join(current).strip())
    if not all(parts):
        raise UserError(f"{option} {text!r}: an empty model between commas")
    return parts
