"""The ``--cache`` SQLite file: LangChain's ``SQLiteCache``, made unable to fail a call.

Built on ``langchain_community.cache.SQLiteCache`` rather than from scratch so the file keeps
LangChain's own table and serialization (plain LangChain reads and writes the same cache) and
LangChain's cache plumbing (sync and async lookups) stays as is; only the error policy is ours:

* a write that loses a race (two identical calls finishing together, in one process or two, both
  insert the same key: ``UNIQUE constraint failed``) is ignored — the winner stored the answer;
* any other failed write (locked, read-only, full) is ignored, with one warning;
* a failed lookup (locked, corrupted since it was opened, a stored answer LangChain cannot
  decode) is a miss: the call goes to the model;
* a file that cannot be opened at all (not a database, a folder that cannot hold it) is a
  ``UserError`` naming it, raised when the cache is opened, before any row runs.

Secrets: the model's description (the cache key's second half) is passed through ``redact``
first, so a key eslabon knows of (the environment's, or one given to a model) is never written
to the file even if it reached a model's parameters (LangChain itself writes keys as references).
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

from langchain_community.cache import SQLiteCache
from langchain_core.load import Serializable, loads
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from eslabon.errors import UserError
from eslabon.trust.redaction import redact

__all__ = ["SafeSQLiteCache"]

_log = logging.getLogger(__name__)
# what a cached chat answer is made of
_ANSWER: list[type[Serializable]] = [ChatGeneration, Generation, AIMessage]
# langchain-core marks loads() as beta and warns on its first call: noise on the terminal. The
# function under the marker, rather than a global warnings filter, which anything (pytest
# between tests, a user's own code) may reset, turning the warning into a failed cache read
_loads: Any = getattr(loads, "__wrapped__", loads)


class SafeSQLiteCache(SQLiteCache):
    """A SQLite LLM cache at ``path`` whose errors never reach the call it serves."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._warned = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._create()
            with self.engine.connect() as connection:  # reads a page: a non-database fails here
                connection.execute(text("SELECT 1 FROM full_llm_cache LIMIT 1"))
        except FileExistsError:  # a file where its folder should be
            reason = os.strerror(errno.ENOTDIR)
            raise UserError(f"cannot use the cache {self.path}: {reason}") from None
        except (OSError, SQLAlchemyError) as exc:
            if getattr(self, "engine", None) is not None:
                self.engine.dispose()
            raise UserError(f"cannot use the cache {self.path}: {_reason(exc)}") from None

    def _create(self) -> None:
        # SQLAlchemy creates the table after checking it is missing: two processes opening a new
        # cache together can both find it missing, and the second CREATE fails. It exists then.
        for attempt in range(3):
            try:
                super().__init__(database_path=str(self.path))
                return
            except OperationalError as exc:
                if "already exists" not in str(exc) or attempt == 2:
                    raise
                self.engine.dispose()

    def lookup(self, prompt: str, llm_string: str) -> Any:
        # LangChain's own lookup decodes with its default allowlist (and warns that it will
        # change), and answers with the stored JSON itself when it cannot decode it. A cache
        # file is data like any other: decode only what a chat model's answer holds.
        schema = self.cache_schema
        query: Any = (
            select(schema.response)
            .where(schema.prompt == prompt)
            .where(schema.llm == redact(llm_string))
            .order_by(schema.idx)
        )
        try:
            with Session(self.engine) as session:
                rows = session.execute(query).fetchall()
            return [_loads(row[0], allowed_objects=_ANSWER) for row in rows] or None
        except Exception as exc:  # locked, corrupted, an entry that is not an answer: a miss
            self._warn("read", exc)
            return None

    def update(self, prompt: str, llm_string: str, return_val: Any) -> None:
        try:
            super().update(prompt, redact(llm_string), return_val)
        except IntegrityError:
            pass  # lost a race to an identical call, which stored its answer
        except Exception as exc:
            self._warn("write", exc)

    def _warn(self, what: str, exc: Exception) -> None:
        if not self._warned:  # once: a locked or read-only cache would repeat it every row
            self._warned = True
            _log.warning(
                "cache %s: could not %s it (%s); calls go on without it",
                self.path,
                what,
                _reason(exc),
            )


def _reason(exc: BaseException) -> str:
    # SQLAlchemy's message carries the SQL and a link; the driver's own is the reason
    orig = getattr(exc, "orig", None)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(orig if orig is not None else exc)
