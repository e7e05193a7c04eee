"""Regular expressions from chain files, run on RE2: linear time, whatever the pattern.

A JSON Schema ``pattern`` (and each ``patternProperties`` key) is a regular expression written by
whoever wrote the chain file. jsonschema runs it with Python's ``re``, which backtracks:
``^(a+)+$`` against 48 ``a`` and a ``!`` runs past 20 s, and each extra ``a`` doubles that. RE2
answers in time linear in the text for any pattern; what it gives up is lookaround and
backreferences, which :func:`pattern_problems` reports with a way to rewrite them.

Why RE2 rather than the ``regex`` package with a timeout: a timeout turns "does this match?" into
"did it finish in time on this machine, under this load?" — the same answer could pass on a
laptop and fail on a busy 2-core CI runner, and each hostile match still burns a core until the
timeout (on every retry). RE2's answer depends only on the pattern and the text.

JSON Schema patterns are ECMA-262 regexes. RE2 already agrees with ECMA where Python's ``re``
does not (``\\d`` and ``\\w`` are ASCII, ``$`` is the end of the text, ``a{,3}`` is literal);
:func:`to_re2` translates the few ECMA spellings RE2 lacks (``\\uXXXX``, ``\\cX``, ECMA's ``\\s``
and ``.``).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator, Mapping
from typing import Any

import re2  # type: ignore[import-untyped]

from eslabon.errors import UserError

__all__ = [
    "PatternError",
    "compile_pattern",
    "pattern_problem",
    "pattern_problems",
    "schema_patterns",
    "search",
    "to_re2",
    "validator_for",
    "walk_schemas",
    "without_patterns",
]

Path = tuple[str | int, ...]

# ECMA-262's WhiteSpace and LineTerminator, which its \s matches (RE2's \s is [\t\n\f\r ] only)
_ECMA_SPACE = (
    r"\t\n\x{0B}\f\r \x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}"
    r"\x{3000}\x{FEFF}"
)
_ECMA_DOT = r"[^\n\r\x{2028}\x{2029}]"  # ECMA's . stops at every line terminator, RE2's at \n
# an anchored match of a fixed, tiny pattern: linear, safe on any input
_UNICODE_ESCAPE = re.compile(r"\{([0-9A-Fa-f]{1,6})\}|([0-9A-Fa-f]{4})")


class PatternError(UserError):
    """A pattern from a chain file that RE2 cannot run; the message says how to rewrite it."""


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # RE2 would print every rejected pattern on stderr
    return options


def to_re2(pattern: str) -> str:
    """``pattern`` (ECMA-262, as JSON Schema writes it) in RE2's syntax."""
    out: list[str] = []
    in_class = False
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            text, i = _escape(pattern, i, in_class)
        elif in_class:
            in_class = c != "]"
            text, i = c, i + 1
        elif c == "[":
            in_class = True
            # a leading ] is a literal in RE2 and Python; copy it so it does not close
            skip = (
                2 if pattern.startswith("]", i + 1) else 3 if pattern.startswith("^]", i + 1) else 1
            )
            text, i = pattern[i : i + skip], i + skip
        else:
            text, i = (_ECMA_DOT if c == "." else c), i + 1
        out.append(text)
    return "".join(out)


def _escape(pattern: str, i: int, in_class: bool) -> tuple[str, int]:
    """The escape at ``pattern[i]`` (a backslash) in RE2's syntax, and where the next begins."""
    nxt, n = pattern[i + 1], len(pattern)
    if nxt == "u" and (m := _UNICODE_ESCAPE.match(pattern, i + 2)):
        return "\\x{" + (m.group(1) or m.group(2)) + "}", m.end()
    if nxt == "c" and i + 2 < n and pattern[i + 2].isascii() and pattern[i + 2].isalpha():
        return f"\\x{{{ord(pattern[i + 2]) % 32:02X}}}", i + 3
    if nxt == "s" and in_class:
        if pattern.startswith("-", i + 2):  # [\s-x]: a literal -, no range
            return _ECMA_SPACE + "\\-", i + 3
        return _ECMA_SPACE, i + 2
    if nxt == "s":
        return f"[{_ECMA_SPACE}]", i + 2
    if nxt == "S" and not in_class:  # inside a class RE2's own \S has to do
        return f"[^{_ECMA_SPACE}]", i + 2
    return pattern[i : i + 2], i + 2


# as many as re2's own cache keeps: each compiled regex may grow to RE2's 8 MiB budget
@functools.lru_cache(maxsize=128)
def _compiled(pattern: str) -> Any:
    return re2.compile(to_re2(pattern), _options())


def compile_pattern(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (cached); :class:`PatternError` when RE2 cannot run it."""
    try:
        return _compiled(pattern)
    except re2.error as exc:
        raise PatternError(_explain(pattern, _re2_message(exc), "pattern")) from None


def search(pattern: str, text: str) -> bool:
    """Whether ``pattern`` matches anywhere in ``text`` (JSON Schema's rule: not anchored)."""
    return compile_pattern(pattern).search(text) is not None


def _re2_message(exc: Exception) -> str:
    raw = exc.args[0] if exc.args else ""
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def pattern_problem(pattern: str, what: str = "pattern") -> str | None:
    """Why RE2 cannot run ``pattern`` and how to rewrite it (None: it can)."""
    try:
        _compiled(pattern)
    except re2.error as exc:
        return _explain(pattern, _re2_message(exc), what)
    return None


_NO_LOOKAROUND = (
    "rewrite it without: match the text itself, or split the rule into several patterns under "
    "allOf, with 'not: {pattern: ...}' for what must not appear"
)
_NO_BACKREFERENCE = (
    "repeat the group's pattern instead (it then accepts any text of that shape, not only a "
    "repeat of the same text)"
)
_FEATURES: tuple[tuple[str, str, str], ...] = (
    # (what RE2's message or the pattern shows, the feature, how to rewrite it)
    ("(?<=", "a lookbehind '(?<=...)'", _NO_LOOKAROUND),
    ("(?<!", "a negative lookbehind '(?<!...)'", _NO_LOOKAROUND),
    ("(?=", "a lookahead '(?=...)'", _NO_LOOKAROUND),
    ("(?!", "a negative lookahead '(?!...)'", _NO_LOOKAROUND),
    (
        "(?>",
        "an atomic group '(?>...)'",
        "write a plain group '(?:...)': RE2 never backtracks, so it is not needed",
    ),
    ("(?P=", "a backreference '(?P=name)'", _NO_BACKREFERENCE),
    ("\\k", "a backreference '\\k<name>'", _NO_BACKREFERENCE),
    ("\\Z", "'\\Z'", "write '$' for the end of the text"),
    (
        "invalid repetition size",
        "a repetition count over 1000 (nested counts multiply)",
        "use smaller counts; bound lengths with maxLength / maxItems instead",
    ),
    (
        "pattern too large",
        "more than RE2's memory budget for one pattern",
        "simplify it; bound lengths with maxLength / maxItems instead of long counts",
    ),
)
_BACKREF = re.compile(r"invalid escape sequence: \\[1-9]")
_POSSESSIVE = re.compile(r"bad repetition operator: (?:[*+?]|\{[0-9,]*\})\+")


def _explain(pattern: str, error: str, what: str) -> str:
    feature, fix = "", ""
    if _BACKREF.search(error):
        feature, fix = "a backreference '\\1'", _NO_BACKREFERENCE
    elif _POSSESSIVE.search(error):
        feature = "a possessive quantifier ('*+', '++', '?+')"
        fix = "drop the second '+': RE2 never backtracks, so it is not needed"
    else:
        for mark, name, how in _FEATURES:
            # RE2 names "(?P" for "(?P=name)": the pattern tells which construct it was
            if mark in error or (mark == "(?P=" and "(?P" in error and mark in pattern):
                feature, fix = name, how
                break
    head = f"{what} '{pattern}'"  # as written in the file, not repr's doubled backslashes
    why = "chain file patterns run on RE2, in linear time"
    if feature:
        return f"{head} uses {feature}, which RE2 does not support ({why}); {fix}"
    return (
        f"{head} is not a regular expression RE2 can run ({error}; {why}); see "
        "https://github.com/google/re2/wiki/Syntax"
    )


# Where a JSON Schema holds subschemas (2020-12, and the older drafts' spellings). Patterns are
# looked for only there: `const`, `enum`, `default` and `examples` hold data, not schemas.
_ONE = (
    "additionalProperties",
    "unevaluatedProperties",
    "items",
    "additionalItems",
    "unevaluatedItems",
    "contains",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
    "contentSchema",
)
_MANY = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_NAMED = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def _subschemas(schema: Mapping[str, Any]) -> Iterator[tuple[Path, Any]]:
    for key in _ONE:
        if isinstance(schema.get(key), Mapping):
            yield (key,), schema[key]
    for key in _MANY:
        if isinstance(schema.get(key), list):
            for n, sub in enumerate(schema[key]):
                yield (key, n), sub
    for key in (*_NAMED, "dependencies"):  # dependencies: a schema, or a list of names
        if isinstance(schema.get(key), Mapping):
            for name, sub in schema[key].items():
                yield (key, name), sub


def walk_schemas(schema: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every schema object in ``schema`` (itself first) with its key path."""
    if not isinstance(schema, Mapping):
        return
    yield path, schema
    for where, sub in _subschemas(schema):
        yield from walk_schemas(sub, (*path, *where))


def schema_patterns(schema: Any) -> Iterator[tuple[Path, str, str]]:
    """Every regex in ``schema``: ``(key path, pattern, "pattern" | "patternProperties key")``;
    a ``patternProperties`` key's path ends with the key itself."""
    for path, sub in walk_schemas(schema):
        if isinstance(sub.get("pattern"), str):
            yield (*path, "pattern"), sub["pattern"], "pattern"
        if isinstance(sub.get("patternProperties"), Mapping):
            for key in sub["patternProperties"]:
                if isinstance(key, str):
                    yield (*path, "patternProperties", key), key, "patternProperties key"


def pattern_problems(schema: Any) -> list[tuple[Path, str]]:
    """``(key path inside schema, message)`` for every ``pattern`` value and
    ``patternProperties`` key that RE2 cannot run (lookaround, backreferences, ...)."""
    problems = []
    for path, pattern, what in schema_patterns(schema):
        if (message := pattern_problem(pattern, what)) is not None:
            problems.append((path, message))
    return problems


def without_patterns(schema: Any) -> Any:
    """A copy of ``schema`` without its ``pattern`` keywords (``schema`` is left as it is)."""
    copied = copy.deepcopy(schema)
    for _, sub in list(walk_schemas(copied)):
        if isinstance(sub.get("pattern"), str):
            del sub["pattern"]
    return copied


# -- jsonschema on RE2 ---------------------------------------------------------------------------
# jsonschema calls Python's re from four keywords: pattern, patternProperties, and, through its
# _utils helpers, additionalProperties and unevaluatedProperties (which must skip the keys
# patternProperties matched). Each is redone here with RE2, otherwise as jsonschema does it.


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _matches_a_pattern(schema: Any, key: str) -> bool:
    return any(search(p, key) for p in schema.get("patternProperties", {}))


def _additional_properties(validator: Any, extra: Any, instance: Any, schema: Any) -> Any:
    from jsonschema._utils import extras_msg
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    extras = {k for k in instance if k not in properties and not _matches_a_pattern(schema, k)}
    if validator.is_type(extra, "object"):
        for key in extras:
            yield from validator.descend(instance[key], extra, path=key)
    elif not extra and extras:
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(each) for each in sorted(extras))
            patterns = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {patterns}")
        else:
            error = "Additional properties are not allowed (%s %s unexpected)"
            yield ValidationError(error % extras_msg(sorted(extras, key=str)))


def _canonical(value: Any) -> Any:
    """A hashable form under JSON Schema's equality (1 == 1.0, true != 1, objects unordered)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, float) and value.is_integer():
        return ("number", int(value))
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, list):
        return ("array", tuple(_canonical(v) for v in value))
    if isinstance(value, dict):
        return ("object", frozenset((k, _canonical(v)) for k, v in value.items()))
    return ("other", repr(value))


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[Any]:
    # jsonschema compares unhashable items pairwise: 20,000 objects took minutes; a set of
    # canonical forms is linear
    from jsonschema.exceptions import ValidationError

    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for item in instance:
        key = _canonical(item)
        if key in seen:
            yield ValidationError(f"{instance!r} has non-unique elements")
            return
        seen.add(key)


def _valid(errors: Iterator[Any]) -> bool:
    return next(errors, None) is None


def _evaluated_keys(validator: Any, instance: Any, schema: Any) -> list[str]:
    """jsonschema's ``find_evaluated_property_keys_by_schema``, with RE2 for patternProperties."""
    if validator.is_type(schema, "boolean"):
        return []
    return [
        *_referenced_keys(validator, instance, schema),
        *_own_keys(validator, instance, schema),
        *_applied_keys(validator, instance, schema),
        *_conditional_keys(validator, instance, schema),
    ]


def _referenced_keys(validator: Any, instance: Any, schema: Any) -> list[str]:
    keys: list[str] = []
    for ref_keyword in ("$ref", "$dynamicRef"):
        if (ref := schema.get(ref_keyword)) is not None:
            resolved = validator._resolver.lookup(ref)
            keys += _evaluated_keys(
                validator.evolve(schema=resolved.contents, _resolver=resolved.resolver),
                instance,
                resolved.contents,
            )
    return keys


def _own_keys(validator: Any, instance: Any, schema: Any) -> list[str]:
    keys: list[str] = []
    properties = schema.get("properties")
    if validator.is_type(properties, "object"):
        keys += properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        if (subschema := schema.get(keyword)) is not None:
            keys += (k for k, v in instance.items() if _valid(validator.descend(v, subschema)))
    if "patternProperties" in schema:
        keys += (k for k in instance if _matches_a_pattern(schema, k))
    return keys


def _applied_keys(validator: Any, instance: Any, schema: Any) -> list[str]:
    keys: list[str] = []
    for name, subschema in schema.get("dependentSchemas", {}).items():
        if name in instance:
            keys += _evaluated_keys(validator, instance, subschema)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, []):
            if _valid(validator.descend(instance, subschema)):
                keys += _evaluated_keys(validator, instance, subschema)
    return keys


def _conditional_keys(validator: Any, instance: Any, schema: Any) -> list[str]:
    if "if" not in schema:
        return []
    if validator.evolve(schema=schema["if"]).is_valid(instance):
        keys = _evaluated_keys(validator, instance, schema["if"])
        return (
            keys + _evaluated_keys(validator, instance, schema["then"])
            if "then" in schema
            else keys
        )
    if "else" in schema:
        return _evaluated_keys(validator, instance, schema["else"])
    return []


def _unevaluated_properties(validator: Any, uneval: Any, instance: Any, schema: Any) -> Any:
    from jsonschema._utils import extras_msg
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "object"):
        return
    evaluated = _evaluated_keys(validator, instance, schema)
    bad = []
    for key in instance:
        if key not in evaluated:
            for _ in validator.descend(instance[key], uneval, path=key, schema_path=key):
                bad.append(key)
    if bad:
        if uneval is False:
            error = "Unevaluated properties are not allowed (%s %s unexpected)"
            yield ValidationError(error % extras_msg(sorted(bad, key=str)))
        else:
            error = (
                "Unevaluated properties are not valid under "
                "the given schema (%s %s unevaluated and invalid)"
            )
            yield ValidationError(error % extras_msg(bad))


@functools.cache
def _validator_class() -> Any:
    import attrs
    from jsonschema import Draft202012Validator, validators

    cls = validators.extend(  # type: ignore[no-untyped-call]
        Draft202012Validator,
        {
            "pattern": _pattern,
            "patternProperties": _pattern_properties,
            "additionalProperties": _additional_properties,
            "unevaluatedProperties": _unevaluated_properties,
            "uniqueItems": _unique_items,
        },
    )
    fields = [(f.name, f.alias) for f in attrs.fields(cls) if f.init]

    def evolve(self: Any, **changes: Any) -> Any:
        # jsonschema's evolve picks the class from a subschema's "$schema" (a draft-07 one, or
        # the stock 2020-12 one), whose keywords use Python's re: stay on this class instead
        changes.setdefault("schema", self.schema)
        for name, alias in fields:
            changes.setdefault(alias, getattr(self, name))
        return cls(**changes)

    cls.evolve = evolve
    return cls


def validator_for(schema: Any) -> Any:
    """A Draft 2020-12 jsonschema validator for ``schema`` whose regexes run on RE2, and whose
    ``$ref``s resolve inside ``schema`` only: with no registry, jsonschema would fetch a URL or
    read a ``file://`` a schema in a chain file names (an empty registry resolves nothing)."""
    from referencing import Registry

    return _validator_class()(schema, registry=Registry())
