"""Template checking: plain ``{name}`` fields only.

Templates are rendered at run time by LangChain's f-string prompt templates; values are inserted
as data (``str.format`` never re-parses a value), so an input containing ``{x}`` or ``{{`` stays
literal. This module only *checks* templates at load time, without importing LangChain, so that
``eslabon validate`` stays fast. Attribute access, indexing, conversions, format specs and
Jinja syntax are rejected here, before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from string import Formatter

from eslabon.suggest import did_you_mean

__all__ = ["TemplateIssue", "check_template", "template_fields"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# One whitespace at each end, not \s+ around a lazy middle: that spelling backtracks in cubic
# time ("{{" and 6,000 spaces took a minute); [^{}] cannot cross a brace, so this is linear.
_JINJA = re.compile(r"\{%|%\}|\{#|#\}|\{\{\s[^{}]*\s\}\}")
_FORMATTER = Formatter()


@dataclass(frozen=True)
class TemplateIssue:
    message: str
    hint: str | None = None


def template_fields(template: str) -> list[str]:
    """Names used by a template that already passed :func:`check_template`."""
    return [f for _, f, _, _ in _FORMATTER.parse(template) if f is not None]


def check_template(
    template: str,
    available: list[str],
    later: list[str] | None = None,
) -> list[TemplateIssue]:
    """Check one template. ``available``: names it may use; ``later``: ids of later steps."""
    issues: list[TemplateIssue] = []
    later = later or []
    jinja = _JINJA.search(template)
    if jinja:
        issues.append(
            TemplateIssue(
                f"Jinja syntax {jinja.group(0)!r} is not allowed in templates",
                "eslabon templates use plain {name} fields; '{{' and '}}' are literal braces",
            )
        )
        return issues
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        return [
            TemplateIssue(
                f"malformed template: {exc}",
                "write {name} to insert a value, and '{{' or '}}' for a literal brace",
            )
        ]
    seen: set[str] = set()
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field == "":
            issues.append(
                TemplateIssue(
                    "empty field '{}' is not allowed",
                    "name the value to insert, e.g. {problema}; write '{{}}' for literal braces",
                )
            )
            continue
        shown = (
            "{"
            + field
            + (f"!{conversion}" if conversion else "")
            + (f":{spec}" if spec else "")
            + "}"
        )
        if not _IDENT.match(field):
            issues.append(
                TemplateIssue(
                    f"field {shown} is not a plain name: attribute access, indexing and "
                    "expressions are not allowed",
                    "use a plain {name} naming a declared input or an earlier step",
                )
            )
            continue
        if conversion or spec:
            issues.append(
                TemplateIssue(
                    f"field {shown} uses a conversion or format spec, which is not allowed",
                    f"write {{{field}}}",
                )
            )
            continue
        if field in seen:
            continue
        seen.add(field)
        if field in available:
            continue
        if field in later:
            issues.append(
                TemplateIssue(
                    f"'{{{field}}}' is the output of a later step; a step can only use "
                    "inputs and the steps before it",
                    "move this step after '" + field + "', or use another name",
                )
            )
            continue
        hint = did_you_mean(field, available)
        avail = ", ".join(available) if available else "(none)"
        issues.append(
            TemplateIssue(
                f"unknown name '{{{field}}}'",
                (hint + " " if hint else "") + f"available here: {avail}",
            )
        )
    return issues
