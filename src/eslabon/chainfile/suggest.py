"""'Did you mean' suggestions, shared by every error message."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["did_you_mean"]


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """Return ``"did you mean 'x'?"`` for the closest choice, or None."""
    options = list(choices)
    match = difflib.get_close_matches(word, options, n=1, cutoff=cutoff)
    if not match:
        lowered = {o.lower(): o for o in options}
        match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=cutoff)
        match = [lowered[m] for m in match]
    return f"did you mean '{match[0]}'?" if match else None
