"""LoRA adapters on ``huggingface:`` models: where one is, and whether it fits its base model.

``eslabon tune -o OUT`` writes the adapter in peft's own format (``OUT/adapter``) and a manifest
beside it (``OUT/tune.json``) naming the base model and its hash. A chain file names a tuned
model as ``{provider: huggingface, name: BASE, adapter: PATH}``; ``validate`` checks that the
adapter is there and, with a manifest, that it was trained on that base (an adapter on another
model fails at load with a shape error, or worse, loads and answers nonsense). Light on
purpose: ``validate`` reads two small files and hashes the base; nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "ADAPTER_CONFIG",
    "MANIFEST",
    "WEIGHTS",
    "AdapterError",
    "base_identity",
    "check_adapter",
]

ADAPTER_CONFIG = "adapter_config.json"  # peft's: every adapter folder has one
MANIFEST = "tune.json"  # eslabon tune's, in the folder above the adapter


class AdapterError(Exception):
    """A message and a fix, turned into the caller's own error kind."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def base_identity(source: str, gguf_file: str | None) -> dict[str, Any]:
    """What identifies a base model: its name as given and a hash of its weights — the .gguf
    file's bytes, or a folder's config and the names and sizes of its weight files (hashing
    gigabytes of safetensors on every ``validate`` would be slow). A Hugging Face id has no
    local hash to compare: the id is its identity."""
    if gguf_file:
        return {"name": Path(gguf_file).name, "sha256": _file_hash(Path(gguf_file))}
    folder = Path(source)
    if not folder.is_dir():
        return {"name": source, "sha256": None}
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}\n".encode())
    return {"name": folder.name, "sha256": digest.hexdigest()}


_HASHES: dict[tuple[str, int, int], str] = {}


def _file_hash(path: Path) -> str:
    """The file's SHA-256, once per (path, size, modification time): loading a chain parses its
    model references several times, and a base may be gigabytes."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        with path.open("rb") as handle:
            _HASHES[key] = hashlib.file_digest(handle, "sha256").hexdigest()
    return _HASHES[key]


def check_adapter(folder: Path, source: str, gguf_file: str | None) -> None:
    """Raise :class:`AdapterError` unless ``folder`` holds a peft adapter that fits the base."""
    shown = str(folder)
    if not folder.is_dir():
        raise AdapterError(
            f"no adapter folder at {shown}",
            "give the folder eslabon tune wrote (OUT/adapter), or tune one: eslabon tune ...",
        )
    config = _config(folder)
    if config is None or not any((folder / w).is_file() for w in WEIGHTS):
        what = f"no {ADAPTER_CONFIG}" if config is None else "no adapter weights"
        raise AdapterError(
            f"{shown} is not a LoRA adapter ({what} in it, in peft's format)",
            "give the folder eslabon tune wrote (OUT/adapter)",
        )
    manifest = _manifest(folder)
    if manifest is None:  # an adapter from elsewhere: peft's own record of its base, if any
        trained_on = config.get("base_model_name_or_path")
        if _comparable(trained_on) and _comparable(source) and trained_on != source:
            raise AdapterError(
                f"the adapter {shown} was trained on {trained_on}, not on {source}",
                f"name {trained_on} as the model, or an adapter trained on {source}",
            )
        return
    found = manifest.get("base")
    trained: dict[str, Any] = found if isinstance(found, dict) else {}
    here = base_identity(source, gguf_file)
    if trained.get("sha256") != here["sha256"] or (
        here["sha256"] is None and trained.get("name") != here["name"]
    ):
        raise AdapterError(
            f"the adapter {shown} was trained on {trained.get('name') or 'another model'}, "
            f"not on this model ({here['name']})",
            f"name the model it was trained on (see {MANIFEST}), or tune again on this one "
            "(eslabon tune --base ...)",
        )


WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _config(folder: Path) -> dict[str, Any] | None:
    """peft's adapter_config.json when it describes a LoRA adapter, else None."""
    try:
        data = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or str(data.get("peft_type", "")).upper() != "LORA":
        return None
    return data


def _comparable(name: Any) -> bool:
    """A Hugging Face id: the same on every machine (a path is not: a folder moves)."""
    from eslabon.chat.modelspec import HUB_ID

    return isinstance(name, str) and HUB_ID.match(name) is not None and not Path(name).exists()


def _manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest eslabon tune wrote for this adapter, if any (one beside another adapter
    folder is not this one's)."""
    path = folder.parent / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or os.path.normpath(str(data.get("adapter"))) != folder.name:
        return None
    return data
