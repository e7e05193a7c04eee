"""What the user allows chain files to do beyond the defaults: import code, send keys, read files.

A chain file is untrusted input. By itself it cannot import code, send a secret to a host the
user has not approved, or read a file outside its folder and the project. The user grants more
in three places, merged here (each grant remembers where it came from, so ``eslabon validate``
can say which file allowed what):

* the command line: ``--allow-import``, ``--allow-endpoint``, ``--allow-key``, ``--allow-path``
  (or ``compile_chain(..., allow=Allow(...))`` from Python);
* the environment: ``ESLABON_ALLOW_ENDPOINTS``, ``ESLABON_ALLOW_KEYS``, ``ESLABON_ALLOW_PATHS``;
* the project's ``eslabon.toml``: ``[allow] imports / endpoints / keys / paths``.

Standard library only: ``eslabon validate`` uses it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from eslabon.errors import UserError

__all__ = [
    "ENV_ENDPOINTS",
    "ENV_KEYS",
    "ENV_PATHS",
    "Allow",
    "Grant",
    "allowing",
    "current_allow",
    "endpoint_matches",
    "grant_for_process",
    "origin_of",
    "parse_key_grant",
]

ENV_ENDPOINTS = "ESLABON_ALLOW_ENDPOINTS"  # comma-separated URLs or host[:port]
ENV_KEYS = "ESLABON_ALLOW_KEYS"  # comma-separated VAR@URL
ENV_PATHS = "ESLABON_ALLOW_PATHS"  # folders, separated by os.pathsep


@dataclass(frozen=True)
class Grant:
    """One allowance and who gave it (``--allow-endpoint``, ``$ESLABON_ALLOW_KEYS``, a file)."""

    value: str
    source: str


@dataclass(frozen=True)
class Allow:
    """Allowances; ``keys`` pairs an environment variable with a host it may be sent to."""

    imports: tuple[Grant, ...] = ()
    endpoints: tuple[Grant, ...] = ()
    keys: tuple[tuple[str, Grant], ...] = ()
    paths: tuple[Grant, ...] = ()

    @classmethod
    def of(
        cls,
        *,
        imports: list[str] | tuple[str, ...] | None = None,
        endpoints: list[str] | tuple[str, ...] | None = None,
        keys: list[str] | tuple[str, ...] | dict[str, list[str]] | None = None,
        paths: Sequence[str | Path] | None = None,
        source: str = "the caller",
    ) -> Allow:
        """Build from plain values: ``keys`` as ``["VAR@URL", ...]`` or ``{VAR: [URL, ...]}``."""
        pairs: list[tuple[str, Grant]] = []
        if isinstance(keys, dict):
            pairs = [(var, Grant(url, source)) for var, urls in keys.items() for url in urls]
        else:
            pairs = [_pair(text, source) for text in keys or ()]
        for url in [*(endpoints or ()), *(url.value for _, url in pairs)]:
            origin_of(url, where=source)  # a malformed URL is refused here, not at run time
        return cls(
            imports=tuple(Grant(i, source) for i in imports or ()),
            endpoints=tuple(Grant(e, source) for e in endpoints or ()),
            keys=tuple(pairs),
            paths=tuple(Grant(str(p), source) for p in paths or ()),
        )

    def __or__(self, other: Allow) -> Allow:
        return Allow(
            self.imports + other.imports,
            self.endpoints + other.endpoints,
            self.keys + other.keys,
            self.paths + other.paths,
        )

    # -- questions ---------------------------------------------------------------------
    def import_names(self) -> list[str]:
        return [g.value for g in self.imports]

    def endpoint_grant(self, url: str) -> Grant | None:
        """The grant that lets a provider's own key go to ``url``, if any."""
        return next((g for g in self.endpoints if endpoint_matches(g.value, url)), None)

    def key_grant(self, var: str, url: str) -> Grant | None:
        """The grant that lets the environment variable ``var`` go to ``url``."""
        return next((g for v, g in self.keys if v == var and endpoint_matches(g.value, url)), None)

    def path_roots(self) -> list[Path]:
        return [Path(g.value).expanduser().resolve() for g in self.paths]

    def describe(self) -> list[str]:
        """One line per grant, naming its source (for ``eslabon validate``)."""
        lines = [f"allow import {g.value!r} (from {g.source})" for g in self.imports]
        lines += [f"allow endpoint {g.value!r} (from {g.source})" for g in self.endpoints]
        lines += [f"allow key {v} -> {g.value!r} (from {g.source})" for v, g in self.keys]
        lines += [f"allow path {g.value!r} (from {g.source})" for g in self.paths]
        return lines


def _pair(text: str, source: str) -> tuple[str, Grant]:
    var, sep, url = text.partition("@")
    if not sep or not var.strip() or not url.strip():
        raise UserError(
            f"{source}: bad key allowance {text!r}: write VARIABLE@URL, "
            "e.g. VLLM_KEY@http://gpu1.lan:8000"
        )
    return var.strip(), Grant(url.strip(), source)


def parse_key_grant(text: str, source: str) -> tuple[str, Grant]:
    """``VAR@URL`` as given on the command line or in ``ESLABON_ALLOW_KEYS``."""
    return _pair(text, source)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str, where: str = "") -> tuple[str | None, str, int | None]:
    """``(scheme, host, port)`` of a URL, or of ``host[:port]`` (scheme None: any)."""
    text = url.strip()
    try:
        parts = urlsplit(text if "://" in text else "//" + text)
        port = parts.port
        host = (parts.hostname or "").lower()
    except ValueError:  # "Invalid IPv6 URL", a port that is not a number
        port, host = None, ""
    if not host:
        raise UserError(
            f"{where + ': ' if where else ''}{url!r} is not a URL or host; "
            "write e.g. http://gpu1.lan:8000"
        )
    scheme = parts.scheme.lower() or None
    if port is None and scheme in _DEFAULT_PORTS:
        port = _DEFAULT_PORTS[scheme]
    return scheme, host, port


def endpoint_matches(granted: str, url: str) -> bool:
    """Whether ``url`` is at the origin ``granted`` names (scheme and port only if given)."""
    try:
        g_scheme, g_host, g_port = origin_of(granted)
        scheme, host, port = origin_of(url)
    except UserError:
        return False
    return (
        g_host == host
        and (g_scheme is None or g_scheme == scheme)
        and (g_port is None or g_port == port)
    )


def _source(name: str) -> str:
    from eslabon.chat.models import ENV_FILE_NAMES  # set when a .env file supplied it

    file = ENV_FILE_NAMES.get(name)
    return f"${name}" + (f" in {file}" if file else "")


def _from_env() -> Allow:
    endpoints = [e.strip() for e in os.environ.get(ENV_ENDPOINTS, "").split(",") if e.strip()]
    keys = [k.strip() for k in os.environ.get(ENV_KEYS, "").split(",") if k.strip()]
    paths = [p for p in os.environ.get(ENV_PATHS, "").split(os.pathsep) if p.strip()]
    if not (endpoints or keys or paths):
        return Allow()
    return Allow(
        endpoints=tuple(Grant(e, _source(ENV_ENDPOINTS)) for e in endpoints),
        keys=tuple(_pair(k, _source(ENV_KEYS)) for k in keys),
        paths=tuple(Grant(p, _source(ENV_PATHS)) for p in paths),
    )


_EXPLICIT: ContextVar[Allow | None] = ContextVar("eslabon_allow", default=None)
_PROCESS = Allow()  # the command line's grants: one command is one process


def grant_for_process(allow: Allow) -> None:
    """Grants for the whole process (the CLI's flags; threads such as the ui's see them)."""
    global _PROCESS
    _PROCESS = _PROCESS | allow


@contextmanager
def allowing(allow: Allow | None) -> Iterator[Allow]:
    """Add the caller's allowances (command line, Python) for the duration of the block."""
    token = _EXPLICIT.set((_EXPLICIT.get() or Allow()) | allow if allow else _EXPLICIT.get())
    try:
        yield current_allow()
    finally:
        _EXPLICIT.reset(token)


def current_allow() -> Allow:
    """Everything allowed now: the caller's grants, the environment's, the project file's."""
    from eslabon.trust.project import load_project

    explicit = _EXPLICIT.get() or Allow()
    return explicit | _PROCESS | _from_env() | load_project().allow
