"""What tests share besides fixtures: paths and a way to write a chain file."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAINS = ROOT / "chains"


def write(tmp_path: Path, text: str, name: str = "chain.yaml") -> Path:
    """``text`` as the file ``name`` in ``tmp_path`` (a chain file, by default)."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path
