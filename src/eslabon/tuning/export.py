"""Rendered pairs in the providers' fine-tuning formats (``eslabon tune --export``), for
learners who tune in the cloud: the same prompts ``eslabon tune`` trains on locally.

- **OpenAI** (chat fine-tuning JSONL): ``{"messages": [{"role", "content"}, ...]}`` per line;
  few-shot answers carry ``"weight": 0`` (OpenAI's switch for an assistant message not to
  train on), so only the step's answer is learned, as ``eslabon tune`` does.
- **Gemini** (Vertex AI supervised tuning JSONL): ``{"systemInstruction": {"role": "system",
  "parts": [{"text"}]}, "contents": [{"role": "user"|"model", "parts": [{"text"}]}, ...]}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage

from eslabon.errors import UserError
from eslabon.tuning.data import Pair

__all__ = ["FORMATS", "gemini_example", "openai_example", "write_export"]


def openai_example(pair: Pair) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for message in pair.messages:
        role = _role(message, "assistant")
        entry: dict[str, Any] = {"role": role, "content": message.text}
        if role == "assistant":
            entry["weight"] = 0  # a few-shot answer: shown, not taught
        messages.append(entry)
    messages.append({"role": "assistant", "content": pair.answer})
    return {"messages": messages}


def gemini_example(pair: Pair) -> dict[str, Any]:
    system = [m.text for m in pair.messages if isinstance(m, SystemMessage)]
    contents = [
        {"role": _role(m, "model"), "parts": [{"text": m.text}]}
        for m in pair.messages
        if not isinstance(m, SystemMessage)
    ]
    contents.append({"role": "model", "parts": [{"text": pair.answer}]})
    example: dict[str, Any] = {}
    if system:
        example["systemInstruction"] = {"role": "system", "parts": [{"text": "\n\n".join(system)}]}
    example["contents"] = contents
    return example


def _role(message: BaseMessage, assistant: str) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, AIMessage):
        return assistant
    return "user"


FORMATS: dict[str, Callable[[Pair], dict[str, Any]]] = {
    "openai": openai_example,
    "gemini": gemini_example,
}


def write_export(pairs: Sequence[Pair], fmt: str, path: Path) -> None:
    """Write one example a line to ``path`` (a .jsonl file), in ``fmt``'s shape."""
    if fmt not in FORMATS:
        raise UserError(f"no export format '{fmt}'; formats: {', '.join(FORMATS)}")
    if path.is_dir():
        raise UserError(f"{path} is a folder\n    fix: give a file name, e.g. {path}/datos.jsonl")
    if path.suffix != ".jsonl":
        raise UserError(f"{path}: the {fmt} format is JSON Lines\n    fix: name it *.jsonl")
    lines = [json.dumps(FORMATS[fmt](pair), ensure_ascii=False) for pair in pairs]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
