"""Template checking: plain ``{name}`` fields only.

Templates are rendered at run time by LangChain's f-string prompt templates; values are inserted
as data (``str.format`` never re-parses a value), so an input containing ``{x}`` or ``{{`` stays
literal. This module only *checks* templates at load time, without importing LangChain, so that
``eslabon validate`` stays fast. Attribute access, indexing, conversions, format specs and
Jinja syntax are rejected here, before anything runs; every problem of a template is reported,
not only the first. ``{{name}}`` naming a value the template could use is a warning: it is sent
as the literal text ``{name}`` (the Jinja and Handlebars habit).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from string import Formatter

from eslabon.chainfile.suggest import did_you_mean

__all__ = ["TemplateIssue", "check_template", "literal_names", "template_fields", "used_names"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Jinja tags, comments and spaced expressions, whole where they close, else their opening or
# closing mark alone. Negated classes, never a lazy middle between \s+: that spelling backtracks
# in cubic time ("{{" and 6,000 spaces took a minute); each alternative here stops at the first
# character that could end it, so the search stays linear.
_JINJA = re.compile(r"\{%[^%]*%\}|\{#[^#]*#\}|\{\{\s[^{}]*\s\}\}|\{%|%\}|\{#|#\}")
_DOUBLED = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}")
_FORMATTER = Formatter()
_BRACES_HINT = "write {name} to insert a value, and '{{' or '}}' for a literal brace"


@dataclass(frozen=True)
class TemplateIssue:
    message: str
    hint: str | None = None
    warning: bool = False  # the template works, but probably not as meant


def template_fields(template: str) -> list[str]:
    """Names used by a template that already passed :func:`check_template`."""
    return [f for _, f, _, _ in _FORMATTER.parse(template) if f is not None]


def used_names(template: str) -> set[str]:
    """The plain names a template inserts, read past any mistakes in it (for checks that run
    whether or not the template is valid)."""
    names: set[str] = set()
    for piece in _pieces(_JINJA.sub("", template))[0]:
        if isinstance(piece, TemplateIssue):
            continue
        try:
            names.update(f for _, f, _, _ in _FORMATTER.parse(piece) if f and _IDENT.match(f))
        except ValueError:
            continue
    return names


def literal_names(template: str) -> set[str]:
    """The names a template writes as ``{{name}}``: literal text, not inserted."""
    return set(_pieces(_JINJA.sub("", template))[1])


def _pieces(template: str) -> tuple[list[str | TemplateIssue], list[str]]:
    """The ``{...}`` fields of ``template`` (braces included) and its brace mistakes, in order,
    and the names written as ``{{name}}`` (literal text). Reads on past a mistake, as
    ``str.format`` does not, so that every problem is found."""
    fields: list[str | TemplateIssue] = []
    doubled: list[str] = []
    i, n = 0, len(template)
    while i < n:
        char = template[i]
        if char == "{":
            if template.startswith("{{", i):
                if found := _DOUBLED.match(template, i):
                    doubled.append(found.group(1))
                    i = found.end()
                else:
                    i += 2
                continue
            depth, j = 1, i + 1
            while j < n and depth:  # a format spec may nest one field: {x:{width}}
                depth += {"{": 1, "}": -1}.get(template[j], 0)
                j += 1
            if depth:
                shown = template[i : i + 20] + ("…" if n - i > 20 else "")
                message = f"malformed template: '{{' with no closing '}}' in {shown!r}"
                fields.append(TemplateIssue(message, _BRACES_HINT))
                break
            fields.append(template[i:j])
            i = j
        elif char == "}":
            if template.startswith("}}", i):
                i += 2
                continue
            start = max(0, i - 20)
            shown = ("…" if start else "") + template[start : i + 1]
            fields.append(
                TemplateIssue(f"malformed template: single '}}' in {shown!r}", _BRACES_HINT)
            )
            i += 1
        else:
            i += 1
    return fields, doubled


def check_template(
    template: str,
    available: list[str],
    later: list[str] | None = None,
) -> list[TemplateIssue]:
    """Every problem of one template. ``available``: names it may use; ``later``: ids of later
    steps. Warnings (``TemplateIssue.warning``) do not stop the chain."""
    issues: list[TemplateIssue] = []
    later = later or []
    jinja = list(dict.fromkeys(m.group(0) for m in _JINJA.finditer(template)))
    if jinja:  # one problem, one fix, however many tags
        shown = ", ".join(repr(j) for j in jinja[:3]) + (", …" if len(jinja) > 3 else "")
        issues.append(
            TemplateIssue(
                f"Jinja syntax {shown} is not allowed in templates",
                "eslabon templates use plain {name} fields; '{{' and '}}' are literal braces",
            )
        )
    rest = _JINJA.sub("", template) if jinja else template
    pieces, doubled = _pieces(rest)
    seen: set[str] = set()
    for piece in pieces:
        if isinstance(piece, TemplateIssue):  # a brace mistake, in its place
            issues.append(piece)
            continue
        try:
            [(_, field, spec, conversion)] = [
                p for p in _FORMATTER.parse(piece) if p[1] is not None
            ]
        except ValueError as exc:
            issues.append(TemplateIssue(f"malformed template: {exc} in {piece!r}", _BRACES_HINT))
            continue
        issue = _field_issue(field or "", spec, conversion, available, later, seen)
        if issue is not None:
            issues.append(issue)
    for name in dict.fromkeys(doubled):
        if name in available:
            issues.append(
                TemplateIssue(
                    f"'{{{{{name}}}}}' is sent as the literal text '{{{name}}}', not the value of "
                    f"'{name}'",
                    f"write {{{name}}} to insert it: templates use single braces; '{{{{' and "
                    "'}}' are literal braces (this is not Jinja or Handlebars)",
                    warning=True,
                )
            )
    if not issues:
        try:  # a last word from the parser LangChain uses: never accept what it refuses
            list(_FORMATTER.parse(template))
        except ValueError as exc:
            issues.append(TemplateIssue(f"malformed template: {exc}", _BRACES_HINT))
    return issues


def _field_issue(
    field: str,
    spec: str | None,
    conversion: str | None,
    available: list[str],
    later: list[str],
    seen: set[str],
) -> TemplateIssue | None:
    if field == "":
        return TemplateIssue(
            "empty field '{}' is not allowed",
            "name the value to insert, e.g. {problema}; write '{{}}' for literal braces",
        )
    shown = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
    shown += "}"
    if not _IDENT.match(field):
        return TemplateIssue(
            f"field {shown} is not a plain name: attribute access, indexing and "
            "expressions are not allowed",
            "use a plain {name} naming a declared input or an earlier step",
        )
    if conversion or spec:
        return TemplateIssue(
            f"field {shown} uses a conversion or format spec, which is not allowed",
            f"write {{{field}}}",
        )
    if field in seen or field in available:
        seen.add(field)
        return None
    seen.add(field)
    if field in later:
        return TemplateIssue(
            f"'{{{field}}}' is the output of a later step; a step can only use "
            "inputs and the steps before it",
            "move this step after '" + field + "', or use another name",
        )
    hint = did_you_mean(field, available)
    avail = ", ".join(available) if available else "(none)"
    return TemplateIssue(
        f"unknown name '{{{field}}}'",
        (hint + " " if hint else "") + f"available here: {avail}",
    )
