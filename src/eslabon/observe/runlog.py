"""The run log: every ``eslabon run``, ``chat`` turn and ``batch`` row, kept in a SQLite file.

Where: ``ESLABON_LOGS`` if set, else ``[logs] path`` in eslabon.toml, else
``.eslabon/logs.sqlite`` under the project root (:func:`log_path`). ``eslabon logs`` reads it.
A record is a plain dict (docs/observability.md, "The run log"): the chain and its file's hash,
the inputs, each step's rendered messages, output, usage, latency and cost. Every string passes
through :func:`~eslabon.trust.redaction.redact` before it is written (a record's text is
checked as it is written, escapes undone where a secret may be in it; one that holds a secret
is redacted string by string): a key never reaches the file.

Many processes and threads write at once: WAL, and each write — a record, or a background
writer's batch of them (:meth:`RunLog.record_many`) — is one short ``BEGIN IMMEDIATE``
transaction that waits a bounded time for the lock. Any failure — a damaged
file, a lock held too long, a read-only folder — is :class:`LogUnavailable` with a one-line
reason: the caller warns, and the run never fails because of its log. Only the standard
library's sqlite3 and json load here: this is on ``eslabon run``'s path.
"""

from __future__ import annotations

import _thread
import codecs
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from eslabon.errors import UserError
from eslabon.trust.redaction import has_userinfo, redact, secrets_in_reach

if TYPE_CHECKING:
    from eslabon.trust.project import Project

__all__ = [
    "BUSY_TIMEOUT_S",
    "SCHEMA_VERSION",
    "DuplicateRun",
    "LogUnavailable",
    "RunLog",
    "log_path",
    "logging_enabled",
    "new_id",
    "redacted",
]

ENV_VAR = "ESLABON_LOGS"
BUSY_TIMEOUT_S = 1.5  # a run waits at most this long for a log another process holds
SCHEMA_VERSION = 2  # PRAGMA user_version; each version's statements are in _MIGRATIONS

# _MIGRATIONS[n] takes a log from version n to n + 1: a later schema appends, never edits.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # seq is the rowid: the full-text index and the steps point at it
        """CREATE TABLE runs (
            seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, started TEXT NOT NULL,
            kind TEXT NOT NULL, chain TEXT, file TEXT, file_hash TEXT, model TEXT,
            inputs TEXT, output TEXT, error TEXT, session TEXT, batch_row TEXT,
            usage TEXT, input_tokens INTEGER, output_tokens INTEGER, total_tokens INTEGER,
            latency_ms REAL, ttft_ms REAL, cost REAL, extra TEXT)""",
        "CREATE INDEX runs_by_time ON runs (started)",
        "CREATE INDEX runs_by_chain ON runs (chain, started)",
        """CREATE TABLE steps (
            run INTEGER NOT NULL REFERENCES runs (seq) ON DELETE CASCADE, n INTEGER NOT NULL,
            id TEXT, model TEXT, messages TEXT, output TEXT, error TEXT,
            usage TEXT, input_tokens INTEGER, output_tokens INTEGER, total_tokens INTEGER,
            latency_ms REAL, ttft_ms REAL, calls INTEGER, attempts INTEGER, cost REAL,
            extra TEXT, PRIMARY KEY (run, n)) WITHOUT ROWID""",
        # remove_diacritics 2: "estacion" finds "estación"
        """CREATE VIRTUAL TABLE runs_text USING fts5 (
            chain, inputs, output, messages, error,
            tokenize = 'unicode61 remove_diacritics 2')""",
    ),
    # 2: runs_text is filled by searches (_index_new), not by writes; an eslabon of version 1
    # would write index rows above runs it never indexed (a search would skip those runs for
    # good), so it must refuse this log rather than share it
    ("-- runs_text: indexed by searches",),
)

# each `eslabon test`'s whole report (its --json), for --compare last; files: the chain files it
# tested (resolved paths, a JSON list). Made when the first report is kept, without a format
# version of its own: an older eslabon sharing the log ignores the table and goes on logging.
_REPORTS_TABLE = """CREATE TABLE IF NOT EXISTS test_reports (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, started TEXT NOT NULL,
    files TEXT NOT NULL, passed INTEGER NOT NULL, report TEXT NOT NULL)"""

# the record's keys that have columns; any other key is kept in `extra` (JSON) and given back
_RUN_KEYS = (
    "id",
    "started",
    "kind",
    "chain",
    "file",
    "file_hash",
    "model",
    "inputs",
    "output",
    "error",
    "session",
    "row",
    "usage",
    "latency_ms",
    "ttft_ms",
    "cost",
    "steps",
)
_STEP_KEYS = (
    "id",
    "model",
    "messages",
    "output",
    "error",
    "usage",
    "latency_ms",
    "ttft_ms",
    "calls",
    "attempts",
    "cost",
)
_RUN_KEYSET, _STEP_KEYSET = frozenset(_RUN_KEYS), frozenset(_STEP_KEYS)
_RUN_COLUMNS = (
    "id, started, kind, chain, file, file_hash, model, inputs, output, error, session, "
    "batch_row, usage, latency_ms, ttft_ms, cost, extra"
)
_STEP_COLUMNS = (
    "id, model, messages, output, error, usage, latency_ms, ttft_ms, calls, attempts, cost, extra"
)
_T = TypeVar("_T")


class LogUnavailable(Exception):
    """The run log cannot be written or read; the message is one line saying why and the fix."""


class DuplicateRun(LogUnavailable):
    """A record's id is in the log already (the record is not written again)."""


def log_path(project: Project | None = None) -> Path:
    """The run log's file: ``ESLABON_LOGS``, else ``[logs] path``, else
    ``<project root>/.eslabon/logs.sqlite``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    if project is None:
        from eslabon.trust.project import load_project

        project = load_project()
    if project.logs.path is not None:
        return project.logs.path
    return project.root / ".eslabon" / "logs.sqlite"


def logging_enabled(project: Project | None = None) -> bool:
    """``[logs] enabled`` (on unless eslabon.toml turns it off)."""
    if project is None:
        from eslabon.trust.project import load_project

        project = load_project()
    return project.logs.enabled


def new_id(when: datetime | None = None) -> str:
    """A run id: 8 hex digits of Unix seconds, then 12 random ones — ids sort by time, and a
    few characters tell runs seconds apart (``eslabon logs show`` takes a unique prefix)."""
    seconds = int((when or datetime.now(UTC)).timestamp())
    return f"{seconds:08x}{os.urandom(6).hex()}"


def _utc_text(when: datetime) -> str:
    if when.tzinfo is UTC:
        return when.isoformat(timespec="milliseconds")[:-6] + "Z"  # "+00:00" written as Z
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _when(value: Any) -> datetime:
    """A record's ``started`` (ISO 8601; no offset means UTC) as an aware datetime."""
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str) and value:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return datetime.now(UTC)  # a bad time must not cost the record
    else:
        return datetime.now(UTC)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def moment(value: datetime | str | None) -> str | None:
    """A ``since``/``until`` bound as the log writes times (UTC, ms; no offset means UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO 8601 time: {value!r}") from None
    return _utc_text(value if value.tzinfo is not None else value.replace(tzinfo=UTC))


def _as_data(value: Any, seen: list[str], fix: Callable[[str], str] | None = None) -> Any:
    """``value`` as JSON data, each string (mapping keys too) put in ``seen`` and passed
    through ``fix``. Whatever is not JSON data is kept as its text."""
    kind = type(value)  # the plain types first, by identity: this runs on every value logged
    if kind is str:
        seen.append(value)
        return fix(value) if fix else value
    if kind is dict:
        return {_as_data(str(k), seen, fix): _as_data(v, seen, fix) for k, v in value.items()}
    if value is None or kind is int or kind is float or kind is bool:
        return value
    if kind is list:
        return [_as_data(v, seen, fix) for v in value]
    return _other_data(value, seen, fix)


def _other_data(value: Any, seen: list[str], fix: Callable[[str], str] | None) -> Any:
    """:func:`_as_data` of what is not a plain str, dict, list or number."""
    if isinstance(value, str):  # a str subclass (LangChain's TextAccessor)
        seen.append(value)
        return fix(value) if fix else value
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {_as_data(str(k), seen, fix): _as_data(v, seen, fix) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_data(v, seen, fix) for v in value]
    dump = getattr(value, "model_dump", None)  # a pydantic structured output
    if callable(dump):
        try:
            return _as_data(dump(mode="json"), seen, fix)
        except Exception:
            pass  # its text is still worth keeping
    return _as_data(str(value), seen, fix)


def redacted(value: Any) -> Any:
    """``value`` as JSON data with every string redacted (what is not JSON data, as its text)."""
    return _redacted_all([value])[0]


def _redacted_all(values: list[Any]) -> list[Any]:
    """Each of ``values`` as :func:`redacted` gives it.

    One redact() over all their text rather than one per string, or per record (each call
    reads the environment): a secret inside any string is inside the text joined by newlines,
    so unchanged text means no string holds one; only a value whose own text changes is
    redacted string by string."""
    seen: list[list[str]] = []
    data = []
    for value in values:
        strings: list[str] = []
        data.append(_as_data(value, strings))
        seen.append(strings)
    text = "\n".join(["\n".join(strings) for strings in seen])
    if redact(text) == text:
        return data
    out = []
    for value, strings in zip(data, seen, strict=True):
        text = "\n".join(strings)
        out.append(value if redact(text) == text else _as_data(value, [], redact))
    return out


def _gather_text(value: Any, out: list[str]) -> None:
    """The text in cleaned data, for the full-text index (mapping values, not keys)."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _gather_text(item, out)
    elif isinstance(value, list | tuple):
        for item in value:
            _gather_text(item, out)
    elif value is not None and not isinstance(value, bool):
        out.append(str(value))


def _text(value: Any) -> str:
    out: list[str] = []
    _gather_text(value, out)
    return "\n".join(out)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _number(value: Any) -> float | None:
    """A latency or cost as a float (a Decimal cost too); anything else is unknown."""
    if type(value) is float:  # the usual case first: this runs for every figure logged
        return value
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _count(value: Any) -> int | None:
    if type(value) is int:  # the usual case first: this runs for every count logged
        return value
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _tokens(usage: Any) -> tuple[int | None, int | None, int | None]:
    if not isinstance(usage, dict):
        return None, None, None
    tokens_in, tokens_out = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    total = _count(usage.get("total_tokens"))
    if total is None and tokens_in is not None and tokens_out is not None:
        total = tokens_in + tokens_out
    return tokens_in, tokens_out, total


class _NotPlain(Exception):
    """A value that is not plain JSON data (str, number, bool, None, dict, list, tuple)."""


def _not_plain(value: Any) -> Any:
    raise _NotPlain


def _encoder(default: Callable[[Any], Any]) -> Callable[[Any], str]:
    """JSON text of a value (compact, non-ASCII as it is); what is not JSON data goes through
    ``default``. The C encoder itself where there is one: ``json.dumps`` builds one for each
    call, most of the time a small value takes."""
    from json import encoder

    c_make_encoder = getattr(encoder, "c_make_encoder", None)  # not in typeshed
    if c_make_encoder is None:  # an interpreter without json's C speedups
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=default).encode
    # no check for loops in the data: one ends in RecursionError (_prepare_all's long way)
    make = c_make_encoder(
        None, default, encoder.encode_basestring, None, ":", ",", False, False, True
    )
    return lambda value: "".join(make(value, 0))


def _plain_encoder() -> Callable[[Any], str]:
    """:func:`_encoder` of plain data only, with orjson where it is installed (langsmith,
    which langchain-core depends on, brings it): three times json's speed on a record's text,
    the same JSON (a NaN aside: null rather than NaN). Dates and dataclasses, which orjson
    would encode its own way, are not plain: they take the long way, as with json."""
    try:
        import orjson
    except ImportError:
        return _encoder(_not_plain)
    dumps = orjson.dumps
    keep = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
    return lambda value: dumps(value, default=_not_plain, option=keep).decode()


# a record's fields as JSON text: _PLAIN for a record of plain data (anything else raises, and
# the record takes the long way: _redacted_all), _ANY for cleaned data
_PLAIN = _plain_encoder()
_ANY = _encoder(str)


# between a record's fields when they are encoded at once (_Prepared): a text no data holds (a
# NUL and 16 random hex digits), so the encoded whole splits back into each field's own JSON
_MARK = "\x00" + os.urandom(8).hex()
_SPLIT = "," + _ANY(_MARK) + ","


class _Prepared:
    """A record turned into rows (JSON-encoded), before any lock is taken. ``written``: all
    the text of it that is written, as JSON, for :func:`_prepare_all`'s check for secrets.
    ``dump`` encodes the JSON fields: all at once, in one list (one call of the encoder
    rather than one per field: most of the time a small value's encoding takes)."""

    def __init__(self, record: Mapping[str, Any], dump: Callable[[Any], str] = _ANY) -> None:
        get = record.get
        when = _when(get("started"))
        inputs, output, usage = get("inputs"), get("output"), get("usage")
        # the columns in the tables' order (_INSERTS), the JSON ones (_RUN_JSON) as values yet
        run: list[Any] = [
            _text_or_none(get("id") or new_id(when)),
            _utc_text(when),
            _text_or_none(get("kind") or "run"),  # run, chat, batch, test or python
            *map(_text_or_none, (get(k) for k in ("chain", "file", "file_hash", "model"))),
            inputs,
            output,
            *map(_text_or_none, (get(k) for k in ("error", "session", "row"))),
            usage,
            *_tokens(usage),
            *map(_number, (get("latency_ms"), get("ttft_ms"), get("cost"))),
            None if record.keys() <= _RUN_KEYSET else _rest(record, _RUN_KEYSET),
        ]
        steps: list[list[Any]] = []
        for step in get("steps") or ():
            if not isinstance(step, dict):
                continue  # not a step: nothing of it can be shown
            steps.append(
                _step_row(
                    _text_or_none(step.get("id")),
                    step.get("messages"),
                    step.get("output"),
                    _text_or_none(step.get("error")),
                    step,  # a record's step holds its own figures
                )
            )
        self._finish(run, steps, dump)

    def _finish(self, run: list[Any], steps: list[list[Any]], dump: Callable[[Any], str]) -> None:
        """The rows from ``run`` and ``steps`` (each in its table's column order, the JSON
        columns as values yet). The full-text index is not written here: see _index_new."""
        self.written = _encode_columns(run, steps, dump)
        self.id: str = run[0]
        self.run = tuple(run)
        self.steps = [tuple(step) for step in steps]

    def redacted(self) -> _Prepared:
        """These rows with every string redacted, one by one: those of the JSON texts too."""
        done = object.__new__(_Prepared)
        done.run = _redacted_row(self.run, _RUN_JSON)
        done.id = done.run[0]
        done.steps = [_redacted_row(step, _STEP_JSON) for step in self.steps]
        done.written = ""
        return done


def _redacted_row(row: tuple[Any, ...], json_columns: tuple[int, ...]) -> tuple[Any, ...]:
    out = []
    for n, value in enumerate(row):
        if isinstance(value, str):
            value = _ANY(redacted(json.loads(value))) if n in json_columns else redact(value)
        out.append(value)
    return tuple(out)


def _step_row(
    step_id: str | None, said: Any, output: Any, error: str | None, figures: Mapping[str, Any]
) -> list[Any]:
    """A step's row in the ``steps`` table's column order (the JSON ones as values yet):
    ``figures`` holds its model, usage, times, calls, attempts and cost, and any key without
    a column (kept in ``extra``)."""
    usage = figures.get("usage")
    return [
        step_id,
        _text_or_none(figures.get("model")),
        said,
        output,
        error,
        usage,
        *_tokens(usage),
        _number(figures.get("latency_ms")),
        _number(figures.get("ttft_ms")),
        _count(figures.get("calls")),
        _count(figures.get("attempts")),
        _number(figures.get("cost")),
        None if figures.keys() <= _STEP_KEYSET else _rest(figures, _STEP_KEYSET),
    ]


def _rest(given: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """A record's (or a step's) keys that have no column: kept in ``extra``."""
    return {k: v for k, v in given.items() if k not in known}


def _text_or_none(value: Any) -> str | None:
    return value if type(value) is str or value is None else str(value)


# the columns of a run's row, and of a step's, that hold text, and those that hold JSON
_RUN_TEXT, _STEP_TEXT = (0, 2, 3, 4, 5, 6, 9, 10, 11), (0, 1, 4)
_RUN_JSON, _STEP_JSON = (7, 8, 12, 19), (2, 3, 5, 14)


def _encode_columns(run: list[Any], steps: list[list[Any]], dump: Callable[[Any], str]) -> str:
    """The JSON columns of ``run`` and ``steps`` encoded in place (None stays None), at once;
    returns all that is written as text, as JSON: the text columns, then the JSON ones."""
    texts = [run[n] for n in _RUN_TEXT if run[n] is not None]
    places: list[tuple[list[Any], int]] = [(run, n) for n in _RUN_JSON]
    for step in steps:
        texts += [step[n] for n in _STEP_TEXT if step[n] is not None]
        places += [(step, n) for n in _STEP_JSON]
    values: list[Any] = [texts]
    for row, n in places:
        values += (_MARK, row[n])
    written = dump(values)
    parts = written[1:-1].split(_SPLIT)[1:]
    if len(parts) != len(places):  # the mark in the data after all: one by one
        parts = [dump(row[n]) for row, n in places]
    for (row, n), encoded in zip(places, parts, strict=True):
        row[n] = None if encoded == "null" else encoded
    return written


def run_rows(
    *,
    started: float,
    kind: str,
    chain: str,
    file: str | None,
    file_hash: str | None,
    model: str,
    inputs: Any,
    output: Any,
    stats: Mapping[str, Any],
    steps: list[tuple[str, list[dict[str, str]], Any]],
) -> _Prepared | None:
    """What :func:`prepared` makes of the record of a run that answered (``stats``: its
    meter's figures; ``steps``: each step reached, as its id, the messages it sent and its
    output; ``started``: Unix time), built straight from the run: a logged chain's every run
    comes here, and building the record's dicts only to read them back is a good part of the
    work (a test compares the two). None when the values are not plain data: the record takes
    the long way then."""
    when = datetime.fromtimestamp(started, UTC)
    usage = stats["usage"]
    run: list[Any] = [
        new_id(when),
        _utc_text(when),
        kind,
        chain,
        file,
        file_hash,
        model,
        inputs,
        output,
        None,  # error
        None,  # session
        None,  # batch row
        usage,
        *_tokens(usage),
        *map(_number, (stats["latency_ms"], stats["ttft_ms"], stats["cost"])),
        None,  # extra: a record of a run has no key without a column
    ]
    rows: list[list[Any]] = []
    figures_of = stats["steps"]
    for step_id, said, step_output in steps:
        rows.append(_step_row(step_id, said, step_output, None, figures_of[step_id]))
    done = object.__new__(_Prepared)
    try:
        done._finish(run, rows, _PLAIN)
    except Exception:  # not plain data (or a loop in it)
        return None
    return done


def prepared(record: Mapping[str, Any]) -> _Prepared | None:
    """``record`` as rows, if it is plain data (None: it takes the long way when written), not
    yet checked for secrets: :meth:`RunLog.record_many` does that, for a batch at once. A
    background writer's runs call this themselves: only the database is left to its thread,
    and what waits in its queue is rows of text and numbers rather than the record's dicts
    and lists (which Python's garbage collector would go through again and again)."""
    try:
        return _Prepared(record, _PLAIN)
    except Exception:  # not plain data (or a loop in it): the long way says what is wrong
        return None


def _prepare_all(records: Sequence[Mapping[str, Any] | _Prepared]) -> list[_Prepared]:
    """Each record as rows (a record given as rows already: :func:`prepared`'s), with every
    secret redacted.

    A record of plain data is encoded as it is, and what it would write is checked for
    secrets, all the batch's text at once (each check reads the environment): first as it
    is written (:func:`_surely_clean`), then, if a secret may be in it, with the JSON
    escapes undone, so a key holding a quote or a backslash is found too. Rows that hold a
    secret are redacted string by string; a record of other than plain data takes the long
    way: every string redacted (:func:`_redacted_all`), then encoded."""
    fast = [one if isinstance(one, _Prepared) else prepared(one) for one in records]
    if not _clean([rows for rows in fast if rows is not None]):
        fast = [rows if rows is None or _clean([rows]) else rows.redacted() for rows in fast]
    slow = [n for n, rows in enumerate(fast) if rows is None]
    cleaned = _redacted_all([dict(records[n]) for n in slow])  # type: ignore[arg-type]
    for n, record in zip(slow, cleaned, strict=True):
        fast[n] = _Prepared(record)
    return [rows for rows in fast if rows is not None]


def _clean(prepared: list[_Prepared]) -> bool:
    """Whether no secret is in what ``prepared`` writes."""
    if _surely_clean([rows.written for rows in prepared]):
        return True
    if len(prepared) == 1 and "\\" in prepared[0].written:
        # one record (a command's): its strings through json, rather than the escapes undone
        # by the unicode_escape codec, whose loading (0.2 to 0.5 ms) is more than its work
        strings: list[str] = []
        _as_data(json.loads(prepared[0].written), strings)
        text = "\n".join(strings)
    else:
        text = _unescaped("\n".join([rows.written for rows in prepared]))
    return redact(text) == text


# what the log's JSON encoders escape in a string: the quote, the backslash, control characters
_ESCAPED = frozenset('"\\' + "".join(map(chr, range(0x20))))


def _surely_clean(written: list[str]) -> bool:
    """True when no secret can be in JSON texts ``written``, told from the texts as they
    are, without undoing their escapes (that took ≈ 5 µs a record of a batch): an escape
    stands for a quote, a backslash or a control character, so a secret without any of
    those that is in the strings is in the text as it is. False means perhaps: a secret is
    somewhere in the text, even inside a word or across an escape, or one holds such a
    character (the caller then looks closely)."""
    secrets = secrets_in_reach()
    if any(not _ESCAPED.isdisjoint(secret) for secret in secrets):
        return False
    # one text: a secret found across two records' would hold the newline between them
    text = "\n".join(written)
    return not any(secret in text for secret in secrets) and not has_userinfo(text)


def _unescaped(written: str) -> str:
    """JSON text with its string escapes undone (the rest of it is kept as it is): non-ASCII
    characters become Python escapes, and Python's own decoder undoes both kinds."""
    if "\\" not in written:  # no escape in it: the text as it is
        return written
    return codecs.decode(written.encode("ascii", "backslashreplace"), "unicode_escape")


# each table's columns as a record's rows give them (seq, the run's rowid, first)
_INSERTS = {
    "runs": "seq, id, started, kind, chain, file, file_hash, model, inputs, output, error,"
    " session, batch_row, usage, input_tokens, output_tokens, total_tokens, latency_ms,"
    " ttft_ms, cost, extra",
    "steps": "run, n, id, model, messages, output, error, usage, input_tokens, output_tokens,"
    " total_tokens, latency_ms, ttft_ms, calls, attempts, cost, extra",
    "runs_text": "rowid, chain, inputs, output, messages, error",
}
_MOST_ROWS = 128  # rows one INSERT writes at most


@functools.lru_cache(maxsize=64)
def _insert_sql(table: str, rows: int) -> str:
    width = _INSERTS[table].count(",") + 1
    row = "(" + ", ".join("?" * width) + ")"
    return f"INSERT INTO {table} ({_INSERTS[table]}) VALUES " + ", ".join([row] * rows)


def _insert(db: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    """``rows`` into ``table``, many rows an INSERT: SQLite writes them all in one call, and
    Python's lock is let go once for them rather than once a row — a writer thread that
    takes it back for each row waits behind the runs each time, and its writes cannot
    overlap them. Row counts are powers of two: a handful of statements, kept compiled."""
    if not rows:
        return
    width = len(rows[0])
    most = max(1, min(_MOST_ROWS, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    done = 0
    while done < len(rows):
        count = 1 << (min(most, len(rows) - done).bit_length() - 1)
        chunk = rows[done : done + count]
        db.execute(_insert_sql(table, count), [value for row in chunk for value in row])
        done += count


def _insert_all(db: sqlite3.Connection, prepared: list[_Prepared]) -> None:
    """The prepared records' rows, inside the caller's write transaction (which holds the
    log: no other writer takes the rowids given here). Above every seq the steps and the
    full-text index hold too: runs deleted by hand (docs/observability.md invites one's own
    SQL; SQLite leaves foreign keys unenforced unless asked) leave their steps and index rows
    behind, and a new run given such a seq could not be written, or would be found by the
    deleted run's words and never indexed."""
    seq = db.execute(
        "SELECT max(coalesce((SELECT max(seq) FROM runs), 0),"
        " coalesce((SELECT max(run) FROM steps), 0))"
    ).fetchone()[0]
    seq = max(seq, _last_indexed(db))
    runs, steps = [], []
    for rows in prepared:
        seq += 1
        runs.append((seq, *rows.run))
        steps.extend([(seq, n, *step) for n, step in enumerate(rows.steps)])
    _insert(db, "runs", runs)
    _insert(db, "steps", steps)


_INDEX_CHUNK = 100  # runs indexed per transaction: a writer waits for none long (≈ 50 ms for
# runs of 27 KB of text each)


def _last_indexed(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT rowid FROM runs_text ORDER BY rowid DESC LIMIT 1").fetchone()
    return int(row[0]) if row else 0


def _data_or_text(text: str | None) -> Any:
    """A JSON column's data, or the column's text as it is (a row edited by hand)."""
    try:
        return _loads(text)
    except ValueError:
        return text


def _index_new(db: sqlite3.Connection) -> None:
    """Bring the full-text index (``runs_text``) up to date: add the runs written since.

    A run is indexed by the first search after it, not as it is written: tokenizing its text
    was about a fifth of what logging a run cost (``bench/overhead.py``), paid by every run
    for the few that are ever searched. The text is read back from the columns (already
    redacted), each chunk in a write transaction of its own; a search that finds another
    doing it waits for it and goes on from where that one stopped. A search with nothing to
    index takes no lock (readers never wait for writers in WAL mode)."""
    newest = db.execute("SELECT coalesce(max(seq), 0) FROM runs").fetchone()[0]
    if _last_indexed(db) >= newest:
        return
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            last = _last_indexed(db)
            if last >= newest:
                db.execute("COMMIT")
                return
            runs = db.execute(
                "SELECT seq, chain, inputs, output, error FROM runs WHERE seq > ? AND seq <= ?"
                " ORDER BY seq LIMIT ?",
                (last, newest, _INDEX_CHUNK),
            ).fetchall()
            if not runs:
                db.execute("COMMIT")
                return
            said: dict[int, list[str]] = {}
            for run, messages in db.execute(
                "SELECT run, messages FROM steps WHERE run > ? AND run <= ? ORDER BY run, n",
                (last, runs[-1][0]),
            ):
                _gather_text(_data_or_text(messages), said.setdefault(run, []))
            texts = [
                (
                    seq,
                    chain,
                    _text(_data_or_text(inputs)),
                    _text(_data_or_text(output)),
                    "\n".join(said.get(seq, ())),
                    error,
                )
                for seq, chain, inputs, output, error in runs
            ]
            _insert(db, "runs_text", texts)
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise


def _rollback(db: sqlite3.Connection) -> None:
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # the connection is dropped next; SQLite rolls back what it did not commit


def _wal(db: sqlite3.Connection) -> None:
    """Put the log in WAL mode (readers never wait for a writer; the mode stays with the file).

    Switching a new file to WAL takes an exclusive lock, and SQLite does not wait for it the
    way it waits for a transaction's: processes that make the log at the same moment would
    fail at once. So: only when the file is not in WAL mode yet, retried until the timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        try:
            db.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.002 + (os.getpid() % 7) / 1000)  # apart from the other processes


# connections a fork copied into a child: never used nor closed there (closing one would drop
# the child's own locks on the file), only kept from the garbage collector
_LEFT_BEHIND: list[sqlite3.Connection] = []


# One connection per log a command wrote, kept after its first write and never closed: held by
# a daemon thread, it outlives the interpreter's clean-up. The last connection to a WAL
# database that closes checkpoints the WAL into the file and deletes it, and the next writer
# makes the WAL again: four disk flushes in all, per command, 2 to 20 ms on a busy disk — all
# of the log's budget for ``eslabon run``. A connection left open is what a crash leaves, and
# WAL is made for that: the next process recovers the WAL, reading all of it (≈ 0.35 ms a
# megabyte here), so the WAL must stay small: see _trim_wal. Only the commands' writers
# (RunWriter) keep one: a program that logs from Python closes its log at exit.
_KEPT: dict[tuple[int, str], sqlite3.Connection] = {}

# Past this size the WAL is checkpointed into the file and truncated (about 16 runs of a 3-step
# chain): recovering it costs the next command at most ≈ 0.35 ms, and the checkpoint's copy and
# two disk flushes come once per that many runs.
_WAL_LIMIT = 1 << 20


def _trim_wal(db: sqlite3.Connection, path: Path) -> None:
    """Checkpoint and truncate the WAL once it passes :data:`_WAL_LIMIT`.

    SQLite's own automatic checkpoint does not do it for logs written by one command after
    another: it copies the WAL into the file, but the WAL starts over only if the writer knows
    it was copied — kept in shared memory, which the next process rebuilds from the WAL itself,
    without that knowledge. So each command appended to a WAL that grew for ever (17 MB after
    200 runs), read all of it on opening (6.6 ms) and copied all of it again at every commit.
    A truncated WAL starts over. Never waits: if another process is using the log, a later
    write does it."""
    try:
        if os.stat(f"{path}-wal").st_size <= _WAL_LIMIT:
            return
    except OSError:
        return
    # never an error: what was written is written (busy, or a broken connection: the WAL stays
    # as it was, and a later write tries again)
    with suppress(sqlite3.Error):
        db.execute("PRAGMA busy_timeout = 0")
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")


def _keep_open(path: Path, db: sqlite3.Connection) -> None:
    key = (os.getpid(), str(path))
    if key in _KEPT:
        return  # another connection keeps the file open: this one may close
    if not _KEPT:
        # _thread's, not threading's: Thread.start() waits until the thread runs, tens of ms
        # on a busy machine; this one holds _KEPT from the moment it is asked for, and never
        # keeps the interpreter from exiting
        _thread.start_new_thread(_hold, (_KEPT,))
    _KEPT[key] = db


def _let_go(path: Path, db: sqlite3.Connection) -> None:
    """``db`` is closed: no longer the one kept open."""
    key = (os.getpid(), str(path))
    if _KEPT.get(key) is db:
        del _KEPT[key]


def _hold(kept: dict[tuple[int, str], sqlite3.Connection]) -> None:
    forever = _thread.allocate_lock()
    forever.acquire()
    forever.acquire()  # never returns: the connections in ``kept`` are never garbage


class RunLog:
    """The run log in the SQLite file ``path`` (created, with its folder, on the first record).

    One instance may be shared by threads; each process opens its own connection. ``kept``:
    after its first write, a connection to the file stays open until the process ends (a
    command's log: see _KEPT)."""

    def __init__(self, path: str | Path, kept: bool = False) -> None:
        self.path = Path(path)
        self.kept = kept
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"RunLog({str(self.path)!r})"

    # -- writing

    def record(self, record: Mapping[str, Any]) -> str:
        """Write one run; return its id. Raises :class:`LogUnavailable` on any failure."""
        return self.record_many([record])[0]

    def record_many(self, records: Sequence[Mapping[str, Any] | _Prepared]) -> list[str]:
        """Write runs (records, or :func:`prepared`'s rows of them) in one transaction (one
        commit for them all: what a background writer batches); return their ids. Raises
        :class:`LogUnavailable` on any failure, and then none of them is written."""
        rows: list[_Prepared] = []
        try:
            # from here on, every string is redacted
            rows = _prepare_all(records)
            with self._lock:
                db = self._connection(create=True)
                db.execute("BEGIN IMMEDIATE")
                try:
                    self._migrate(db)
                    _insert_all(db, rows)
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    raise
                _trim_wal(db, self.path)
                if self.kept:
                    _keep_open(self.path, db)
        except LogUnavailable:
            raise
        except sqlite3.IntegrityError:
            ids = ", ".join(one.id for one in rows)
            raise DuplicateRun(
                f"the run log {self.path} already holds a run with id {ids}"
                if len(rows) == 1
                else f"the run log {self.path} already holds a run with one of the ids {ids}"
            ) from None
        except Exception as exc:  # whatever it is, the run must not fail for it
            self.close()  # a damaged or replaced file: the next record opens it afresh
            raise LogUnavailable(self._why(exc)) from None
        return [one.id for one in rows]

    def record_report(self, report: Mapping[str, Any], files: list[str]) -> str:
        """Keep one ``eslabon test`` report (redacted, as every record); return its id.
        ``files``: the chain files it tested. Raises :class:`LogUnavailable` on any failure."""
        try:
            when = datetime.now(UTC)
            row = (
                new_id(when),
                _utc_text(when),
                json.dumps(sorted(files)),
                int(bool(report.get("passed"))),
                _json(redacted(dict(report))),
            )
            with self._lock:
                db = self._connection(create=True)
                db.execute("BEGIN IMMEDIATE")
                try:
                    self._migrate(db)
                    db.execute(_REPORTS_TABLE)
                    db.execute(
                        "INSERT INTO test_reports (id, started, files, passed, report)"
                        " VALUES (?, ?, ?, ?, ?)",
                        row,
                    )
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    raise
                _trim_wal(db, self.path)
        except LogUnavailable:
            raise
        except Exception as exc:  # the tests ran: keeping their report must not fail them
            self.close()
            raise LogUnavailable(self._why(exc)) from None
        return row[0]

    def last_report(self, files: list[str]) -> dict[str, Any] | None:
        """The newest kept ``eslabon test`` report that tested any of ``files``, with its
        ``id`` and ``started`` added under ``logged``; None when there is none."""
        wanted = set(files)

        def work(db: sqlite3.Connection) -> dict[str, Any] | None:
            kept = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'test_reports'"
            if db.execute(kept).fetchone() is None:
                return None  # no report was ever kept
            rows = db.execute("SELECT seq, files FROM test_reports ORDER BY seq DESC")
            for seq, tested in rows:
                if wanted & set(_loads(tested) or []):
                    found = db.execute(
                        "SELECT id, started, report FROM test_reports WHERE seq = ?", (seq,)
                    ).fetchone()
                    report = _loads(found[2])
                    if isinstance(report, dict):
                        return {**report, "logged": {"id": found[0], "started": found[1]}}
            return None

        return self._read(work, None)

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring the schema to :data:`SCHEMA_VERSION`, inside the caller's write transaction."""
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        self._check_version(version)
        for statements in _MIGRATIONS[version:]:
            for statement in statements:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise LogUnavailable(
                f"the run log {self.path} was written by a newer eslabon (log format {version}):"
                " upgrade eslabon, or set ESLABON_LOGS to another file"
            )

    def _connection(self, create: bool) -> sqlite3.Connection:
        if self._db is not None and self._pid != os.getpid():  # forked: a connection of its own
            _LEFT_BEHIND.append(self._db)
            self._db = None
        if self._db is None:
            self._pid = os.getpid()
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit mode (isolation_level=None): transactions are the explicit BEGINs
            db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            try:
                _wal(db)
                # NORMAL in WAL mode: a commit waits for no disk flush; a power cut may lose the
                # last records, never damage the file
                db.execute("PRAGMA synchronous = NORMAL")
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def close(self) -> None:
        """Close this process's connection (the next use opens another)."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None and self._pid == os.getpid():
            _let_go(self.path, db)
            with suppress(sqlite3.Error):  # a broken connection: nothing left in it to save
                db.close()

    def _why(self, exc: BaseException) -> str:
        """One line: what is wrong with the log file, and what to do about it."""
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        text = reason.lower()
        where = f"the run log {self.path}"
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            why = f"{where} is damaged ({reason}): move it away, and a new one is made"
        elif "locked" in text or "busy" in text:
            why = f"{where} is locked by another program ({reason})"
        elif isinstance(exc, PermissionError | NotADirectoryError | FileExistsError) or any(
            word in text for word in ("readonly", "read-only", "unable to open", "permission")
        ):
            why = (
                f"{where} cannot be written ({reason}): check the permissions of the file and"
                " its folder, or point ESLABON_LOGS (or [logs] path in eslabon.toml) at another"
                " file"
            )
        elif isinstance(exc, sqlite3.Error | OSError):
            why = f"{where} cannot be used ({reason})"
        else:
            why = f"{where} cannot be used ({type(exc).__name__}: {reason})"
        return redact(" ".join(why.split()))  # one line, whatever the reason held

    # -- reading

    def _read(self, work: Callable[[sqlite3.Connection], _T], empty: _T) -> _T:
        """``work`` on the log; ``empty`` when there is no log yet (reading never creates it)."""
        if not self.path.exists():
            return empty
        try:
            with self._lock:
                db = self._connection(create=False)
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    return empty  # made, but no run was ever written
                if version != SCHEMA_VERSION:
                    self._check_version(version)
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        self._migrate(db)
                        db.execute("COMMIT")
                    except BaseException:
                        _rollback(db)
                        raise
                return work(db)
        except (LogUnavailable, UserError):
            raise
        except Exception as exc:  # one clear line, whatever broke
            self.close()
            raise LogUnavailable(self._why(exc)) from None

    def runs(
        self,
        limit: int = 20,
        query: str | None = None,
        chain: str | None = None,
        since: datetime | str | None = None,
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` runs (without their steps), newest first: those whose text
        matches ``query`` (full-text: every word, accents ignored, ``word*`` a prefix), of
        ``chain``, started at or after ``since``."""
        where: list[str] = []
        args: list[Any] = []
        searched = query is not None and bool(query.strip())
        if query is not None and searched:
            where.append("seq IN (SELECT rowid FROM runs_text WHERE runs_text MATCH ?)")
            args.append(_match(query))
        if chain:
            where.append("chain = ?")
            args.append(chain)
        if since is not None:
            where.append("started >= ?")
            args.append(moment(since))
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY started DESC,"
        sql += " seq DESC LIMIT ?"

        def work(db: sqlite3.Connection) -> list[dict[str, Any]]:
            if searched:
                try:
                    _index_new(db)
                    _trim_wal(db, self.path)
                except sqlite3.Error as exc:
                    raise LogUnavailable(
                        f"{self._why(exc)} (a search first adds the runs written since the"
                        " last search to the log's full-text index)"
                    ) from None
            return [_run_dict(row) for row in db.execute(sql, (*args, limit))]

        return self._read(work, [])

    def get(self, id_or_prefix: str) -> dict[str, Any] | None:
        """One run with its steps, by its id or the id's first characters; ``None`` if no run
        has it. A prefix several runs share is a :class:`~eslabon.errors.UserError`."""
        key = id_or_prefix.strip()
        if not key:
            raise UserError("give a run's id, or its first characters (`eslabon logs` lists them)")

        def work(db: sqlite3.Connection) -> dict[str, Any] | None:
            rows = db.execute(f"SELECT seq, {_RUN_COLUMNS} FROM runs WHERE id = ?", (key,))
            found = (
                rows.fetchall()
                or db.execute(
                    f"SELECT seq, {_RUN_COLUMNS} FROM runs WHERE id > ? AND id < ? ORDER BY id"
                    " LIMIT 6",
                    (key, key + "\U0010ffff"),  # every text that starts with key sorts in between
                ).fetchall()
            )
            if not found:
                return None
            if len(found) > 1:
                ids = ", ".join(row[1] for row in found[:5]) + (", ..." if len(found) > 5 else "")
                raise UserError(
                    f"'{key}' starts the ids of several runs ({ids})\n    fix: give more of the id"
                )
            run = _run_dict(found[0][1:])
            steps = db.execute(
                f"SELECT {_STEP_COLUMNS} FROM steps WHERE run = ? ORDER BY n", (found[0][0],)
            )
            run["steps"] = [_step_dict(row) for row in steps]
            return run

        return self._read(work, None)

    def short_ids(self, ids: list[str], minimum: int = 8) -> dict[str, str]:
        """Each id's shortest prefix (at least ``minimum`` characters) no other run's id
        shares, as ``eslabon logs`` shows them."""

        def work(db: sqlite3.Connection) -> dict[str, str]:
            short = {}
            for run_id in ids:
                before = db.execute(
                    "SELECT id FROM runs WHERE id < ? ORDER BY id DESC LIMIT 1", (run_id,)
                ).fetchone()
                after = db.execute(
                    "SELECT id FROM runs WHERE id > ? ORDER BY id LIMIT 1", (run_id,)
                ).fetchone()
                shared = max(_shared(run_id, row[0]) if row else 0 for row in (before, after))
                short[run_id] = run_id[: max(minimum, shared + 1)]
            return short

        return self._read(work, {i: i[:minimum] for i in ids})

    def stats(
        self, since: datetime | str | None = None, until: datetime | str | None = None
    ) -> dict[str, Any]:
        """Totals for the runs started in ``[since, until)``: per model (from the steps: the
        model each step ran on), per chain, and in all. ``cost`` sums the known costs (``None``
        when none is known); ``unknown_cost`` counts the steps (per model) or runs whose price
        is unknown — never counted as 0."""
        where: list[str] = []
        args: list[Any] = []
        if since is not None:
            where.append("r.started >= ?")
            args.append(moment(since))
        if until is not None:
            where.append("r.started < ?")
            args.append(moment(until))
        cond = " WHERE " + " AND ".join(where) if where else ""
        sums = (
            "SUM(r.error IS NOT NULL), SUM(r.input_tokens), SUM(r.output_tokens),"
            " SUM(r.cost), SUM(r.cost IS NULL)"
        )
        per_model = (
            "SELECT COALESCE(s.model, r.model), COUNT(DISTINCT s.run), COUNT(*),"
            " SUM(COALESCE(s.calls, 1)), SUM(s.error IS NOT NULL), SUM(s.input_tokens),"
            " SUM(s.output_tokens), SUM(s.cost), SUM(s.cost IS NULL)"
            f" FROM steps s JOIN runs r ON r.seq = s.run{cond}"
            " GROUP BY 1 ORDER BY 2 DESC, 1"
        )
        per_chain = (
            f"SELECT r.chain, COUNT(*), {sums} FROM runs r{cond} GROUP BY 1 ORDER BY 2 DESC, 1"
        )
        total = f"SELECT COUNT(*), {sums} FROM runs r{cond}"
        model_keys = ("model", "runs", "steps", "calls", "errors", *_SUM_KEYS)

        def work(db: sqlite3.Connection) -> dict[str, Any]:
            return {
                "models": [_totals(model_keys, row) for row in db.execute(per_model, args)],
                "chains": [
                    _totals(("chain", "runs", "errors", *_SUM_KEYS), row)
                    for row in db.execute(per_chain, args)
                ],
                "total": _totals(
                    ("runs", "errors", *_SUM_KEYS), db.execute(total, args).fetchone()
                ),
            }

        empty = {
            "models": [],
            "chains": [],
            "total": _totals(("runs", "errors", *_SUM_KEYS), (0, 0, 0, 0, None, 0)),
        }
        return {"since": moment(since), "until": moment(until), **self._read(work, empty)}


_SUM_KEYS = ("input_tokens", "output_tokens", "cost", "unknown_cost")


def _totals(keys: tuple[str, ...], row: Any) -> dict[str, Any]:
    """A row of sums as a dict: counts and tokens are 0 when nothing was counted; ``cost``
    stays ``None`` when no price was known."""
    out = dict(zip(keys, row, strict=True))
    for key in keys:
        if key not in ("model", "chain", "cost") and out[key] is None:
            out[key] = 0
    return out


def _shared(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _match(text: str) -> str:
    """The user's search words as an FTS5 query: each a quoted term (their punctuation is text,
    not query syntax), all of them required; a trailing ``*`` makes a word a prefix."""
    terms = []
    for word in text.split():
        prefix = len(word) > 1 and word.endswith("*")
        word = word.rstrip("*") if prefix else word
        terms.append('"' + word.replace('"', '""') + '"' + ("*" if prefix else ""))
    return " ".join(terms)


def _with_extra(data: dict[str, Any], extra: str | None) -> dict[str, Any]:
    if extra:
        data.update({k: v for k, v in json.loads(extra).items() if k not in data})
    return data


def _run_dict(row: Any) -> dict[str, Any]:
    (run_id, started, kind, chain, file, file_hash, model, inputs, output, error, session) = row[
        :11
    ]
    batch_row, usage, latency, ttft, cost, extra = row[11:]
    data = {
        "id": run_id,
        "started": started,
        "kind": kind,
        "chain": chain,
        "file": file,
        "file_hash": file_hash,
        "model": model,
        "inputs": _data_or_text(inputs),
        "output": _data_or_text(output),
        "error": error,
        "session": session,
        "row": batch_row,
        "usage": _data_or_text(usage),
        "latency_ms": latency,
        "ttft_ms": ttft,
        "cost": cost,
    }
    return _with_extra(data, extra)


def _step_dict(row: Any) -> dict[str, Any]:
    step_id, model, messages, output, error, usage, latency, ttft, calls, attempts, cost, extra = (
        row
    )
    data = {
        "id": step_id,
        "model": model,
        "messages": _data_or_text(messages),
        "output": _data_or_text(output),
        "error": error,
        "usage": _data_or_text(usage),
        "latency_ms": latency,
        "ttft_ms": ttft,
        "calls": calls,
        "attempts": attempts,
        "cost": cost,
    }
    return _with_extra(data, extra)
