"""Conversations: a chain with ``history: true`` remembers its turns per session.

``chain.with_history("clase1")`` reads the session's turns into the chain's ``history`` input on
each call and appends the new question and answer. Sessions live in a SQLite file under the
project's ``.eslabon/`` by default, or in memory; any LangChain ``BaseChatMessageHistory`` works.

Written by hand rather than on ``RunnableWithMessageHistory`` and ``InMemoryChatMessageHistory``:
LangChain 1.x deprecates both in favour of LangGraph persistence, which eslabon does not need.
The SQLite store uses the standard library: LangChain's ``SQLChatMessageHistory`` lives in
langchain-community, which is being sunset, and pulls SQLAlchemy for one table.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    messages_from_dict,
    messages_to_dict,
)
from langchain_core.runnables import Runnable, RunnableConfig

__all__ = [
    "ChainWithHistory",
    "History",
    "MemoryChatHistory",
    "SQLiteChatHistory",
    "default_store",
    "session_history",
]


class MemoryChatHistory(BaseChatMessageHistory):
    """One session's messages in memory (tests, notebooks)."""

    def __init__(self) -> None:
        self._messages: list[BaseMessage] = []

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return list(self._messages)

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        self._messages.extend(messages)

    def clear(self) -> None:
        self._messages.clear()


_MEMORY: dict[str, MemoryChatHistory] = {}
_LOCK = threading.Lock()


class SQLiteChatHistory(BaseChatMessageHistory):
    """One session's messages in a SQLite file (one row per message, in order)."""

    def __init__(self, path: str | Path, session_id: str) -> None:
        self.path = Path(path)
        self.session_id = session_id
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                    " session TEXT NOT NULL, message TEXT NOT NULL)"
                )
                db.execute("CREATE INDEX IF NOT EXISTS by_session ON messages (session, id)")
        except (sqlite3.DatabaseError, OSError) as exc:
            raise self._unusable(exc) from None

    def _unusable(self, exc: BaseException) -> Exception:
        from eslabon.errors import UserError

        reason = getattr(exc, "strerror", None) or str(exc)
        return UserError(
            f"cannot use the conversation store {self.path}: {reason}\n"
            "    fix: move that file away (a new one is made), or pass another store"
        )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        with self._connect() as db:
            rows = db.execute(
                "SELECT message FROM messages WHERE session = ? ORDER BY id", (self.session_id,)
            ).fetchall()
        return messages_from_dict([json.loads(row[0]) for row in rows])

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        with self._connect() as db:
            db.executemany(
                "INSERT INTO messages (session, message) VALUES (?, ?)",
                [
                    (self.session_id, json.dumps(d, ensure_ascii=False))
                    for d in messages_to_dict(list(messages))
                ],
            )

    def clear(self) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM messages WHERE session = ?", (self.session_id,))


def default_store() -> Path:
    """``.eslabon/chat.sqlite`` under the project root (the folder with eslabon.toml, else cwd)."""
    from eslabon.trust.project import load_project

    return load_project().root / ".eslabon" / "chat.sqlite"


def session_history(session_id: str, store: Any = None) -> BaseChatMessageHistory:
    """A session's history. ``store``: None (the project's SQLite file), ``"memory"``, a path to
    a SQLite file, or a callable ``session_id -> BaseChatMessageHistory``."""
    if callable(store):
        history: BaseChatMessageHistory = store(session_id)
        return history
    if store == "memory":
        with _LOCK:
            return _MEMORY.setdefault(session_id, MemoryChatHistory())
    return SQLiteChatHistory(store or default_store(), session_id)


class ChainWithHistory(Runnable[dict[str, Any], dict[str, Any]]):
    """A compiled chain that reads and extends one session's conversation on every call."""

    def __init__(self, chain: Any, history: BaseChatMessageHistory, main_input: str) -> None:
        self.chain = chain
        self.history = history
        self.main_input = main_input
        self.name = chain.name

    def _with_history(self, input: Any) -> dict[str, Any]:
        values = self.chain._values(input)
        return {**values, "history": self.history.messages}

    def _remember(self, values: dict[str, Any], output: Any) -> None:
        from eslabon.running.structured import as_json_text

        answer = output if isinstance(output, str) else as_json_text(output)
        self.history.add_messages([HumanMessage(str(values[self.main_input])), AIMessage(answer)])

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        values = self._with_history(input)
        result: dict[str, Any] = self.chain.invoke(values, config)
        self._remember(values, result["output"])
        return result

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        values = self._with_history(input)
        result: dict[str, Any] = await self.chain.ainvoke(values, config)
        self._remember(values, result["output"])
        return result

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        """Chunks as the chain streams them; the turn is remembered once the answer is whole
        (an interrupted answer is not)."""
        values = self._with_history(input)
        output: Any = None
        for chunk in self.chain.stream(values, config):
            output = _answer_so_far(output, chunk)
            yield chunk
        if output is not None:
            self._remember(values, output)

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        values = self._with_history(input)
        output: Any = None
        async for chunk in self.chain.astream(values, config):
            output = _answer_so_far(output, chunk)
            yield chunk
        if output is not None:
            self._remember(values, output)


def _answer_so_far(output: Any, chunk: dict[str, Any]) -> Any:
    """The answer after one more streamed chunk: text tokens add up (a single-step chain
    streams them as "output"), a multi-step chain's final "output" or a structured value
    arrives whole."""
    if "output" not in chunk:
        return output
    piece = chunk["output"]
    return output + piece if isinstance(output, str) and isinstance(piece, str) else piece


def with_history(chain: Any, session_id: str, store: Any = None) -> ChainWithHistory:
    """``chain`` remembering its turns in ``session_id`` (see the module doc)."""
    from eslabon.errors import UserError

    if not any(step.history is not None for step in chain.steps):
        raise UserError(
            f"chain '{chain.name}' keeps no conversation\n"
            "    fix: add  history: true  to it (or to the step that should remember)"
        )
    inputs = chain.spec.input_names()
    if not inputs:
        raise UserError(f"chain '{chain.name}' has no input to take the user's turn")
    main = next((n for n in inputs if chain.spec.input_default(n) is None), inputs[0])
    return ChainWithHistory(chain, session_history(session_id, store), main)


class History:
    """A step's view of the conversation: all of it, or the newest turns that fit a budget."""

    __slots__ = ("count", "max_tokens")

    def __init__(self, max_tokens: int | None, count: Callable[[list[BaseMessage]], int]) -> None:
        self.max_tokens = max_tokens
        self.count = count

    def fit(self, history: Any) -> list[BaseMessage]:
        from langchain_core.messages import convert_to_messages, trim_messages

        messages = convert_to_messages(history)
        if self.max_tokens is None:
            return messages
        # the system prompt and examples are outside the history: trimming never drops them
        return trim_messages(
            messages,
            max_tokens=self.max_tokens,
            token_counter=self.count,
            strategy="last",
            start_on="human",
            allow_partial=False,
        )
