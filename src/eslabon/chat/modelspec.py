"""Model references: parsing and checking ``provider:model`` strings, aliases and mappings.

Nothing here imports LangChain or a provider SDK; :mod:`eslabon.chat.models` does that lazily when a
model is actually built.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eslabon.chainfile.suggest import did_you_mean

__all__ = [
    "PRESETS",
    "PROVIDERS",
    "ModelSpec",
    "Preset",
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
    # in-process through transformers (eslabon.chat.huggingface), not LangChain's pipeline
    "huggingface": ProviderInfo("transformers", "huggingface", via_langchain=False),
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
    # mistralai, cohere: eslabon builds them and gives their clients its transport itself
    # (eslabon.chat.integrations): neither takes one through a setting
    "mistralai": ProviderInfo(
        "langchain_mistralai", "mistralai", "MISTRAL_API_KEY", host="https://api.mistral.ai"
    ),
    "groq": ProviderInfo("langchain_groq", None, "GROQ_API_KEY", host="https://api.groq.com"),
    "deepseek": ProviderInfo(
        "langchain_deepseek", None, "DEEPSEEK_API_KEY", host="https://api.deepseek.com"
    ),
    "xai": ProviderInfo("langchain_xai", None, "XAI_API_KEY", host="https://api.x.ai"),
    "together": ProviderInfo(
        "langchain_together", "together", "TOGETHER_API_KEY", host="https://api.together.xyz"
    ),
    "fireworks": ProviderInfo(
        "langchain_fireworks", None, "FIREWORKS_API_KEY", host="https://api.fireworks.ai"
    ),
    "openrouter": ProviderInfo(
        "langchain_openrouter", None, "OPENROUTER_API_KEY", host="https://openrouter.ai"
    ),
    "cohere": ProviderInfo(
        "langchain_cohere", "cohere", "COHERE_API_KEY", host="https://api.cohere.com"
    ),
}

# Spellings people use for a provider, mapped to LangChain's name.
PROVIDER_SYNONYMS = {
    "gemini": "google_genai",
    "google": "google_genai",
    "llama_cpp": "llamacpp",
    "llama.cpp": "llamacpp",
    "claude": "anthropic",
    "mistral": "mistralai",
}


@dataclass(frozen=True)
class Preset:
    """An OpenAI-compatible service reached by name: ``ai21:jamba-mini`` is the ``openai``
    provider at ``base_url``, shown (results, stats, logs, prices) as ``ai21:jamba-mini``."""

    base_url: str  # where it answers; a mapping's own base_url replaces it
    env_var: str | None  # its own key variable (None: a local server, sent no key)
    what: str  # what it is, for `eslabon models`
    serve: str | None = None  # how to start it, for a refused connection's fix
    # the service documents no such params: refused, as for any provider
    unsupported: tuple[str, ...] = ()
    defaults: tuple[tuple[str, Any], ...] = ()  # settings it needs, unless the mapping says

    @property
    def host(self) -> str | None:
        """Where its key may go: its own origin (None: it has no key)."""
        if self.env_var is None:
            return None
        scheme, _, rest = self.base_url.partition("://")
        return f"{scheme}://{rest.split('/', 1)[0]}"

    @property
    def info(self) -> ProviderInfo:
        return ProviderInfo("langchain_openai", "openai", self.env_var, host=self.host)


# Presets rather than aliases in eslabon.toml: a chain file may name them (as the course's
# table of model families does) and no guarantee weakens. The one key a preset adds goes only
# to the host it belongs to (AI21_API_KEY to api.ai21.com, as each provider's own key to its
# own host); the local servers get the placeholder key, never OPENAI_API_KEY; a base_url
# elsewhere is the openai provider's rule (the placeholder unless you approve the server).
# URLs as each project's docs give them: AI21's Jamba chat completions; vLLM's
# `vllm serve`; LM Studio's server; TGI's Messages API as its Docker quick tour publishes it
# (-p 8080:80); OpenVINO Model Server's /v3 endpoints on the demos' --rest_port 8000.
PRESETS: dict[str, Preset] = {
    "ai21": Preset(
        "https://api.ai21.com/studio/v1",
        "AI21_API_KEY",
        "AI21 Studio (Jamba)",
        # AI21 documents neither top_k, seed nor the penalties, and JSON mode as its only
        # structured output (response_format json_object, no schema)
        unsupported=("top_k", "seed", "presence_penalty", "frequency_penalty"),
        defaults=(("structured_method", "json_mode"),),
    ),
    "vllm": Preset("http://localhost:8000/v1", None, "vLLM", "vllm serve MODEL"),
    "lmstudio": Preset(
        "http://localhost:1234/v1",
        None,
        "LM Studio",
        "lms server start",
    ),
    "tgi": Preset(
        "http://localhost:8080/v1",
        None,
        "Text Generation Inference (Messages API)",
        "docker run -p 8080:80 ghcr.io/huggingface/text-generation-inference --model-id MODEL",
    ),
    "ovms": Preset(
        "http://localhost:8000/v3", None, "OpenVINO Model Server", "ovms --rest_port 8000 ..."
    ),
}
PRESET_SYNONYMS = {"openvino": "ovms", "lm_studio": "lmstudio", "lm-studio": "lmstudio"}

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
    ("jamba", "ai21"),
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
    preset: str | None = None  # the OpenAI-compatible service it names (PRESETS), if any

    @property
    def shown_provider(self) -> str:
        """The provider as the user named it: the preset's name (``ai21``), else the provider."""
        return self.preset or self.provider

    @property
    def label(self) -> str:
        return f"{self.shown_provider}:{self.name}" if self.name else self.shown_provider

    @property
    def info(self) -> ProviderInfo:
        return PRESETS[self.preset].info if self.preset else PROVIDERS[self.provider]

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
        hint = did_you_mean(p, [*PROVIDERS, *PROVIDER_SYNONYMS, *PRESETS, *PRESET_SYNONYMS])
        known = ", ".join(sorted(PROVIDERS))
        presets = ", ".join(PRESETS)
        raise ModelRefError(
            f"unknown provider '{p}'",
            (hint + " " if hint else "")
            + f"known providers: {known}; OpenAI-compatible services: {presets}",
        )
    return p


def preset_name(raw: str) -> str | None:
    """The preset ``raw`` names (``ai21``, ``vllm``, ``openvino``, ...), if any."""
    key = raw.strip().lower()
    key = PRESET_SYNONYMS.get(key, key)
    return key if key in PRESETS else None


def _spec(
    raw: str,
    name: str,
    data: dict[str, Any],
    alias: str | None,
    base_dir: Path | None,
    trusted: bool,
) -> ModelSpec:
    """The spec for provider ``raw``: a preset is the openai provider at its base URL (and
    its defaults), which a mapping's own settings replace."""
    preset = preset_name(raw)
    if preset is None:
        return ModelSpec(_provider(raw), name, data, alias, base_dir, trusted)
    given = PRESETS[preset]
    # a pool (base_urls) replaces the preset's one URL
    url = {} if "base_urls" in data else {"base_url": given.base_url}
    kwargs = {**url, **dict(given.defaults), **data}
    return ModelSpec("openai", name, kwargs, alias, base_dir, trusted, preset)


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
        provider = str(data.pop("provider")).strip()
        name = str(data.pop("name", "") or "")
        if provider == "local" and not name:
            name = "smollm2-135m-instruct"
        spec = _spec(provider, name, data, alias, base_dir, trusted)
    elif isinstance(ref, str):
        text = ref.strip()
        if ":" not in text:
            if text.lower() in PROVIDERS or text.lower() in PROVIDER_SYNONYMS or preset_name(text):
                spec = _spec(text, "", {}, alias, base_dir, trusted)
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
            spec = _spec(provider, name.strip(), {}, alias, base_dir, trusted)
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
    elif spec.provider == "huggingface":
        gguf_file = spec.kwargs.get("gguf_file")
        source, weights = transformers_source(
            spec, base_dir, gguf_file if isinstance(gguf_file, str) else None
        )
        if (folder := adapter_path(spec, base_dir)) is not None:
            from eslabon.chat.adapter import AdapterError, check_adapter

            try:
                check_adapter(folder, source, weights)
            except AdapterError as exc:
                raise ModelRefError(exc.message, exc.hint) from None
    elif spec.provider == "fake" and spec.name not in ("", "echo"):
        raise ModelRefError(
            f"unknown fake model '{spec.name}'",
            "use 'fake:echo', or {provider: fake, responses: [...]}",
        )
    elif spec.info.via_langchain and not spec.name:
        shown = spec.shown_provider
        raise ModelRefError(f"provider '{shown}' needs a model name", f"e.g. '{shown}:MODEL-NAME'")


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


# a Hugging Face repository id ("HuggingFaceTB/SmolLM2-135M-Instruct"), not a path
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def transformers_source(
    spec: ModelSpec, base_dir: Path | None, gguf_file: str | None = None
) -> tuple[str, str | None]:
    """Where a ``huggingface:`` model's weights are: ``(folder or Hugging Face id, .gguf file or
    None)``. A name that is a Hugging Face id (``org/name``) and no existing path is read from
    the local cache; anything else is a path — a chain file's must lie in its folder or the
    project (:mod:`eslabon.trust.paths`), as a GGUF's for ``llamacpp:``. A .gguf is given as an
    absolute path: transformers looks for a relative one in the current folder first."""
    name = spec.name
    if not name:
        raise ModelRefError(
            "a huggingface model needs a folder, a .gguf file or a Hugging Face id",
            "write e.g. huggingface:HuggingFaceTB/SmolLM2-135M-Instruct or huggingface:./modelo",
        )
    if name == "local":  # the bundled model, as `model: local` runs it through llama.cpp
        return _bundled(gguf_file)
    folder = spec.base_dir or base_dir or Path.cwd()
    local = Path(os.path.expanduser(name))
    if HUB_ID.match(name) and not (local if local.is_absolute() else folder / local).exists():
        if not spec.trusted:
            _hub_id_bounded(name, gguf_file)
        return name, gguf_file
    path = gguf_path(spec, folder)
    if path.suffix.lower() == ".gguf":
        if gguf_file is not None:
            raise ModelRefError(
                f"the model is the .gguf file {name}: gguf_file names one in a folder",
                "give the folder as the name and gguf_file, or the .gguf file alone",
            )
        return str(path.parent), str(path.absolute())
    if gguf_file is None:
        return str(path), None
    weights = path / os.path.expanduser(gguf_file)
    if not spec.trusted:
        from eslabon.trust.paths import PathNotAllowedError, confine

        try:
            weights = confine(str(weights), folder, "GGUF model")
        except PathNotAllowedError as exc:
            raise ModelRefError(exc.message, exc.hint) from None
    return str(path), str(weights.absolute())


def _bundled(gguf_file: str | None) -> tuple[str, str]:
    from eslabon.chat.local import bundled_model_path

    if gguf_file is not None:
        raise ModelRefError(
            "huggingface:local is the bundled model: it takes no gguf_file",
            "drop gguf_file, or name your own folder",
        )
    bundled = bundled_model_path()
    return str(bundled.parent), str(bundled)


def adapter_path(spec: ModelSpec, base_dir: Path | None) -> Path | None:
    """A ``huggingface:`` model's LoRA ``adapter`` folder, if it has one; a chain file's lies in
    its folder or the project, as its weights do."""
    adapter = spec.kwargs.get("adapter")
    if adapter is None:
        return None
    if not isinstance(adapter, str) or not adapter.strip():
        raise ModelRefError("adapter must be a folder's path", "e.g. adapter: ./ajustado/adapter")
    folder = spec.base_dir or base_dir or Path.cwd()
    path = Path(os.path.expanduser(adapter))
    path = path if path.is_absolute() else folder / path
    if not spec.trusted:
        from eslabon.trust.paths import PathNotAllowedError, confine

        try:
            path = confine(adapter, folder, "LoRA adapter")
        except PathNotAllowedError as exc:
            raise ModelRefError(exc.message, exc.hint) from None
    return path.absolute()


def _hub_id_bounded(name: str, gguf_file: str | None) -> None:
    """A chain file's Hugging Face id: transformers reads a folder of that name in the current
    folder before the cache, and an absolute or climbing ``gguf_file`` wherever it points, so a
    chain file may have neither."""
    if Path(name).exists():
        raise ModelRefError(
            f"'{name}' is a Hugging Face id, but a folder of that name is in the current "
            "folder, which transformers would read instead",
            f"write ./{name} for a folder beside the chain file, or run from another folder",
        )
    if gguf_file is not None and (
        Path(gguf_file).is_absolute() or ".." in Path(gguf_file).parts or gguf_file[:1] == "~"
    ):
        raise ModelRefError(
            f"gguf_file '{gguf_file}' must be a file name in the model's repository",
            "give the file's name as the repository lists it",
        )


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
