"""Keeping secrets out of what eslabon shows: error messages, logs, settings.

:func:`add_secret` remembers a key eslabon handed to a client; :func:`redact` replaces known
keys (and the values of secret-looking environment variables) with ``***`` in any text;
:func:`hide_secrets` shows a settings mapping with its secret-looking entries hidden.
"""

from __future__ import annotations

import os
import re

__all__ = [
    "add_secret",
    "has_userinfo",
    "hide_secrets",
    "is_secret_setting",
    "redact",
    "secrets_in_reach",
]

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL)", re.IGNORECASE)
_SECRETS: set[str] = set()


def add_secret(value: str) -> None:
    """Remember a key eslabon handed to a client (from the environment, a mapping, an alias)
    for :func:`redact`, whatever its length."""
    if value and value.strip():
        _SECRETS.add(value)


_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")  # user:password@ in a URL
_SHORT = 8  # below this, a key is replaced only where it stands alone, not inside other words


def secrets_in_reach() -> set[str]:
    """What :func:`redact` replaces, as it stands now: the keys eslabon used, and the values
    of secret-looking environment variables."""
    # secret-looking variables eslabon never used: only long values (a short one such as
    # PASSWORD_MIN_LENGTH=8 would blank every "8"); keys eslabon used are in _SECRETS
    values = {v for k, v in os.environ.items() if len(v) >= _SHORT and _SECRET_NAME.search(k)}
    return values | _SECRETS


def has_userinfo(text: str) -> bool:
    """Whether ``text`` holds what :func:`redact` hides as ``user:password@`` in a URL."""
    return "@" in text and _USERINFO.search(text) is not None


def redact(text: str) -> str:
    """Replace known keys and the values of secret-looking environment variables with ***."""
    for value in sorted(secrets_in_reach(), key=len, reverse=True):
        if value not in text:
            continue
        if len(value) >= _SHORT:
            text = text.replace(value, "***")
        else:
            text = re.sub(rf"(?<![\w-]){re.escape(value)}(?![\w-])", "***", text)
    return _USERINFO.sub("***@", text) if "@" in text else text


def is_secret_setting(name: str) -> bool:
    """Whether a setting's name says it holds a secret (``api_key``, ``token``, headers...)."""
    return bool(_SECRET_NAME.search(name)) or name.lower() in (
        "headers",
        "default_headers",
        "authorization",
        "auth",
    )


def hide_secrets(settings: dict[str, object]) -> dict[str, object]:
    """``settings`` as they may be shown: secret-looking settings (at any depth: headers,
    ``extra_body.token``) as ***, and ``user:password@`` in URLs as ***@."""

    def shown(key: str, value: object) -> object:
        if is_secret_setting(key) and value:
            return "***"
        if isinstance(value, dict):
            return {str(k): shown(str(k), v) for k, v in value.items()}
        if isinstance(value, list):
            return [shown(key, v) for v in value]
        if isinstance(value, str):
            return _USERINFO.sub("***@", value)
        return value

    return {k: shown(k, v) for k, v in settings.items()}
