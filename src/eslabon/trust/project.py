"""The project file ``eslabon.toml``: found from the working directory up to the project root.

The search stops at the project root: the nearest folder holding ``.git`` or an
``eslabon.toml``. An ``eslabon.toml`` above a git checkout (in a shared or downloaded folder)
is never read: it could grant chain files what the user never meant to allow.

```toml
[models]
rapido = "openai:gpt-4o-mini"
local = "llamacpp:models/mistral-7b.Q4_K_M.gguf"      # relative to this file
propio = {provider = "openai", name = "qwen2.5-7b", base_url = "http://127.0.0.1:8000/v1"}

[prices]                      # USD per million tokens, for models genai-prices does not know
"openai:qwen2.5-7b" = {input = 0.10, output = 0.30}     # cached_input = ... optional

[allow]                       # what chain files may do beyond the defaults (docs/security.md)
imports = ["mypkg"]
endpoints = ["http://gpu1.lan:8000"]
keys = {VLLM_KEY = ["http://gpu1.lan:8000"]}
paths = ["/data/models"]

[tracing]                     # OpenTelemetry export (docs/observability.md)
endpoint = "http://localhost:4318"   # the collector's OTLP/HTTP address
capture_content = false       # true: prompts and replies in spans

[logs]                        # the run log (docs/observability.md)
enabled = true                # false: eslabon run, chat and batch keep no log
path = ".eslabon/logs.sqlite" # relative to this file

[tests]                       # eslabon test (docs/testing.md)
judge_model = "rapido"        # the model of judge checks that name none: an alias, provider:model
```

Only the standard library's ``tomllib`` is used, so ``eslabon validate`` stays fast.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from eslabon.chat.prices import Price
from eslabon.errors import ChainConfigError, Problem, UserError
from eslabon.trust.allow import Allow, Grant

__all__ = [
    "PROJECT_FILE",
    "LogSettings",
    "Project",
    "TestSettings",
    "TracingConfig",
    "check_owner",
    "find_project",
    "find_root",
    "load_project",
]

PROJECT_FILE = "eslabon.toml"
_KNOWN_TABLES = ("models", "prices", "allow", "tracing", "logs", "tests")
_PRICE_KEYS = ("input", "output", "cached_input")
_ALLOW_KEYS = ("imports", "endpoints", "keys", "paths")
_TRACING_KEYS = ("endpoint", "capture_content", "service_name")
_LOGS_KEYS = ("enabled", "path")
_TESTS_KEYS = ("judge_model",)


@dataclass(frozen=True)
class TracingConfig:
    """``[tracing]``: where to send OpenTelemetry spans and what they may hold. Headers are
    not taken here (they often hold keys): ``OTEL_EXPORTER_OTLP_HEADERS`` in the environment."""

    endpoint: str | None = None  # the collector's OTLP/HTTP base URL (/v1/traces is added)
    capture_content: bool = False  # prompts, replies, tool arguments in spans
    service_name: str | None = None  # the resource's service.name (default: eslabon)


@dataclass(frozen=True)
class LogSettings:
    """``[logs]``: whether ``eslabon run``, ``chat`` and ``batch`` keep the run log, and where
    (``None``: ``.eslabon/logs.sqlite`` under the project root)."""

    enabled: bool = True
    path: Path | None = None


@dataclass(frozen=True)
class TestSettings:
    """``[tests]``: settings of ``eslabon test``. ``judge_model`` is the model of ``judge``
    checks that name none (a reference as written: ``provider:model``, an alias or a mapping;
    None: the model under test judges)."""

    __test__ = False  # not a pytest test class, whatever its name says

    judge_model: str | dict[str, Any] | None = None


@dataclass(frozen=True)
class Project:
    """What ``eslabon.toml`` says. ``root`` is the project root (the folder of eslabon.toml or
    of ``.git``; the working directory without either); ``marked`` says one was found."""

    root: Path
    file: Path | None = None
    models: dict[str, Any] = field(default_factory=dict)
    allow: Allow = field(default_factory=Allow)
    prices: dict[str, Price] = field(default_factory=dict)  # [prices], by provider:model
    marked: bool = False
    tracing: TracingConfig | None = None  # [tracing] (docs/observability.md)
    logs: LogSettings = field(default_factory=LogSettings)  # [logs]
    tests: TestSettings = field(default_factory=TestSettings)  # [tests]

    @property
    def allow_imports(self) -> tuple[str, ...]:
        """``[allow] imports``: packages chain files may import."""
        return tuple(self.allow.import_names())


def find_root(start: Path | None = None) -> tuple[Path | None, Path | None]:
    """``(root, project file)``: the nearest folder from ``start`` (default: the working
    directory) upwards that holds an ``eslabon.toml`` or ``.git``; the search stops there, and
    never goes above the user's home folder when it starts inside it."""
    here = (start or Path.cwd()).resolve()
    home = Path.home().resolve()
    for folder in (here, *here.parents):
        candidate = folder / PROJECT_FILE
        if candidate.is_file():
            return folder, candidate
        if (folder / ".git").exists():
            return folder, None
        if folder == home:
            break
    return None, None


def check_owner(path: Path) -> None:
    """Refuse a configuration file another user could have written: one owned by someone else
    (root excepted) or writable by everyone (as git refuses a repository of "dubious
    ownership"). It could grant chain files imports, keys and folders."""
    st = path.stat()
    why = None
    if st.st_uid not in (os.getuid(), 0):
        why = f"it belongs to another user (uid {st.st_uid})"
    elif st.st_mode & stat.S_IWOTH:
        why = "every user may write it"
    if why is not None:
        raise _problem(
            path,
            f"eslabon does not read this file: {why}, and it could grant chain files what you "
            "never meant to allow",
            hint="if it is yours, fix its owner or permissions (chmod o-w); otherwise work in a "
            "folder with its own .git or eslabon.toml",
        )


def find_project(start: Path | None = None) -> Path | None:
    """The project's ``eslabon.toml``, if the project root holds one (see :func:`find_root`)."""
    return find_root(start)[1]


_CACHE: dict[tuple[Path, float], Project] = {}


def load_project(start: Path | None = None) -> Project:
    """Read the nearest project file (cached while it is unchanged)."""
    root, path = find_root(start)
    if path is None:
        return Project(root=root or (start or Path.cwd()).resolve(), marked=root is not None)
    check_owner(path)
    key = (path, path.stat().st_mtime)
    if key not in _CACHE:
        _CACHE[key] = _parse(path)
    return _CACHE[key]


def _problem(path: Path, message: str, key: str = "", hint: str | None = None) -> ChainConfigError:
    return ChainConfigError([Problem(message, path=key, file=str(path), hint=hint)])


def _known(
    path: Path, name: str, known: tuple[str, ...], message: str, key: str, what: str
) -> None:
    if name not in known:
        from eslabon.chainfile.suggest import did_you_mean

        hint = did_you_mean(name, known)
        hint = (hint + " " if hint else "") + f"known {what}: " + ", ".join(known)
        raise _problem(path, message, key, hint)


def _parse(path: Path) -> Project:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise _problem(path, f"invalid TOML: {exc}") from None
    for table in data:
        _known(path, table, _KNOWN_TABLES, f"unknown table [{table}]", table, "tables")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise _problem(path, '[models] must be a table of alias = "provider:model"', "models")
    for alias, target in models.items():
        if not isinstance(target, str | dict):
            raise _problem(
                path,
                f"alias '{alias}' must be a \"provider:model\" string or an inline table",
                f"models.{alias}",
            )
    allow = _parse_allow(path, data.get("allow", {}))
    prices = _parse_prices(path, data.get("prices", {}))
    tracing = _parse_tracing(path, data["tracing"]) if "tracing" in data else None
    logs = _parse_logs(path, data.get("logs", {}))
    tests = _parse_tests(path, data.get("tests", {}))
    return Project(
        root=path.parent,
        file=path,
        models=dict(models),
        allow=allow,
        prices=prices,
        marked=True,
        tracing=tracing,
        logs=logs,
        tests=tests,
    )


def _parse_prices(path: Path, table: Any) -> dict[str, Price]:
    """``[prices]``: ``"provider:model" = {input = X, output = Y}`` in USD per million tokens."""
    example = 'e.g. "openai:qwen2.5-7b" = {input = 0.10, output = 0.30}'
    if not isinstance(table, dict):
        raise _problem(path, "[prices] must be a table", "prices", example)
    prices = {}
    for model, price in table.items():
        key = f"prices.{model}"
        if ":" not in model or not isinstance(price, dict):
            raise _problem(
                path, f"[prices] '{model}' must be \"provider:model\" = {{...}}", key, example
            )
        for name in price:
            _known(
                path, name, _PRICE_KEYS, f"unknown key '{name}' in [prices] '{model}'", key, "keys"
            )
        values = {}
        for name in _PRICE_KEYS:
            value = price.get(name)
            if value is None and name == "cached_input":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise _problem(
                    path,
                    f"[prices] '{model}' needs {name} as a number of USD per million tokens, >= 0",
                    f"{key}.{name}",
                    example,
                )
            values[name] = Decimal(str(value))
        prices[model] = Price(**values)
    return prices


def _parse_tracing(path: Path, table: Any) -> TracingConfig:
    """``[tracing]``: ``endpoint`` (an http(s) URL), ``capture_content``, ``service_name``."""
    example = 'e.g. endpoint = "http://localhost:4318"'
    if not isinstance(table, dict):
        raise _problem(path, "[tracing] must be a table", "tracing", example)
    for name in table:
        if name == "headers":  # a common guess, and where keys would end up in a shared file
            raise _problem(
                path,
                "[tracing] does not take headers: they often hold keys, and eslabon.toml is shared",
                "tracing.headers",
                "set OTEL_EXPORTER_OTLP_HEADERS in the environment, e.g. "
                "OTEL_EXPORTER_OTLP_HEADERS='x-api-key=...'",
            )
        _known(path, name, _TRACING_KEYS, f"unknown key '{name}' in [tracing]", "tracing", "keys")
    endpoint = table.get("endpoint")
    if endpoint is not None and (
        not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://"))
    ):
        raise _problem(
            path,
            "[tracing] endpoint must be the collector's OTLP/HTTP address, an http(s) URL",
            "tracing.endpoint",
            example,
        )
    capture = table.get("capture_content", False)
    if not isinstance(capture, bool):
        raise _problem(
            path,
            "[tracing] capture_content must be true or false",
            "tracing.capture_content",
            "e.g. capture_content = true (prompts and replies in spans)",
        )
    service = table.get("service_name")
    if service is not None and (not isinstance(service, str) or not service.strip()):
        raise _problem(
            path,
            "[tracing] service_name must be a non-empty text",
            "tracing.service_name",
            'e.g. service_name = "mi-app"',
        )
    return TracingConfig(endpoint=endpoint, capture_content=capture, service_name=service)


def _parse_logs(path: Path, table: Any) -> LogSettings:
    """``[logs]``: ``enabled`` (true or false), ``path`` (relative to the project file)."""
    if not isinstance(table, dict):
        raise _problem(path, "[logs] must be a table", "logs", "e.g. [logs] enabled = false")
    for name in table:
        _known(path, name, _LOGS_KEYS, f"unknown key '{name}' in [logs]", f"logs.{name}", "keys")
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise _problem(
            path, "[logs] enabled must be true or false", "logs.enabled", "e.g. enabled = false"
        )
    where = table.get("path")
    if where is not None and (not isinstance(where, str) or not where.strip()):
        raise _problem(
            path,
            "[logs] path must be the log file's path, as text",
            "logs.path",
            'e.g. path = ".eslabon/logs.sqlite"',
        )
    # relative to the project file, as paths in [models] and [allow] are
    resolved = None if where is None else (path.parent / Path(where).expanduser()).resolve()
    return LogSettings(enabled=enabled, path=resolved)


def _parse_tests(path: Path, table: Any) -> TestSettings:
    """``[tests]``: ``judge_model`` (a "provider:model", an alias, or an inline table). The
    reference is resolved when a judge check needs it (an alias may be defined in [models])."""
    example = 'e.g. judge_model = "openai:gpt-4o-mini"'
    if not isinstance(table, dict):
        raise _problem(path, "[tests] must be a table", "tests", example)
    for name in table:
        _known(path, name, _TESTS_KEYS, f"unknown key '{name}' in [tests]", f"tests.{name}", "keys")
    judge = table.get("judge_model")
    if judge is not None and not (
        (isinstance(judge, str) and judge.strip()) or isinstance(judge, dict)
    ):
        raise _problem(
            path,
            '[tests] judge_model must be a model: "provider:model", an alias, or an inline table',
            "tests.judge_model",
            example + ', or judge_model = {provider = "ollama", name = "qwen2.5"}',
        )
    return TestSettings(judge_model=judge)


def _strings(path: Path, value: Any, key: str, example: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
        raise _problem(path, f"[allow] {key} must be a list of text", f"allow.{key}", example)
    return list(value)


def _parse_allow(path: Path, allow: Any) -> Allow:
    if not isinstance(allow, dict):
        raise _problem(path, "[allow] must be a table", "allow")
    for key in allow:
        _known(path, key, _ALLOW_KEYS, f"unknown key '{key}' in [allow]", f"allow.{key}", "keys")
    source = str(path)
    imports = _strings(path, allow.get("imports", []), "imports", 'e.g. imports = ["mypkg"]')
    endpoints = _strings(
        path, allow.get("endpoints", []), "endpoints", 'e.g. endpoints = ["http://gpu1.lan:8000"]'
    )
    keys = allow.get("keys", {})
    example = 'e.g. keys = {VLLM_KEY = ["http://gpu1.lan:8000"]}'
    if not isinstance(keys, dict):
        raise _problem(
            path, "[allow] keys must be a table VARIABLE = [URL, ...]", "allow.keys", example
        )
    pairs = {var: _strings(path, urls, f"keys.{var}", example) for var, urls in keys.items()}
    folders = _strings(path, allow.get("paths", []), "paths", 'e.g. paths = ["/data/models"]')
    # relative folders are relative to the project file, as model paths in [models] are
    resolved = [str((path.parent / Path(f).expanduser()).resolve()) for f in folders]
    try:
        built = Allow.of(imports=imports, endpoints=endpoints, keys=pairs, source=source)
    except UserError as exc:  # a malformed URL: say which file
        raise _problem(path, str(exc), "allow") from None
    return Allow(
        built.imports, built.endpoints, built.keys, tuple(Grant(f, source) for f in resolved)
    )
