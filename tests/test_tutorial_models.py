"""The Spanish tutorial's table of the course's model families (docs/es/01-hola-mundo.md): each
reference parses, names a provider or service eslabon knows, and its key variable and extra are
the ones eslabon asks for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from eslabon.chat.modelspec import PRESETS, PROVIDERS, ModelSpec, parse_model_ref
from helpers import ROOT

PAGE = ROOT / "docs" / "es" / "01-hola-mundo.md"
SECTION = "### Los modelos del curso, uno por uno"
# what the course names (its tables of cloud model families and local platforms), by the
# provider or service eslabon runs it with
COURSE = {
    "openai",
    "anthropic",
    "google_genai",
    "mistralai",
    "cohere",
    "together",
    "ai21",
    "local",
    "llamacpp",
    "ollama",
    "lmstudio",
    "huggingface",
    "vllm",
    "ovms",
    "tgi",
}


def _rows() -> list[dict[str, str]]:
    """The section's table rows, as {header: cell}."""
    text = PAGE.read_text(encoding="utf-8")
    assert SECTION in text, f"{PAGE.name} lost its section {SECTION!r}"
    section = text[text.index(SECTION) :]
    rows: list[dict[str, str]] = []
    header: list[str] = []
    for line in section.splitlines():
        if not line.startswith("|"):
            header = []
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not header:
            header = cells
        elif not set(line) <= set("|-: "):
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


ROWS = _rows()


def _code(cell: str) -> str | None:
    """The `code` in a cell, or None for a dash."""
    found = re.fullmatch(r"`([^`]+)`", cell)
    if found is None:
        assert cell == "—", f"expected `code` or —, got {cell!r}"
        return None
    return found[1]


def _spec(ref: str, tmp_path: Path) -> ModelSpec:
    if ref.startswith("llamacpp:"):  # a GGUF reference parses when its file is there
        (tmp_path / ref.removeprefix("llamacpp:")).write_bytes(b"GGUF")
    return parse_model_ref(ref, tmp_path)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["Referencia en eslabon"])
def test_each_reference_runs_on_a_provider_eslabon_knows(
    row: dict[str, str], tmp_path: Path
) -> None:
    ref = _code(row["Referencia en eslabon"])
    assert ref is not None
    spec = _spec(ref, tmp_path)  # raises ModelRefError if it does not parse
    assert spec.provider in PROVIDERS
    assert spec.preset is None or spec.preset in PRESETS
    assert spec.label == ref or ref == "local"  # results show it as it is written
    # the key variable and the extra are the ones eslabon names when they are missing
    assert _code(row["Clave"]) == spec.info.env_var, ref
    assert _code(row["Extra"]) == spec.info.extra, ref


def test_the_table_covers_every_family_the_course_names(tmp_path: Path) -> None:
    shown = {_spec(_code(r["Referencia en eslabon"]) or "", tmp_path).shown_provider for r in ROWS}
    assert shown == COURSE


def test_every_service_url_the_page_gives_is_eslabons() -> None:
    text = PAGE.read_text(encoding="utf-8")
    given = dict(re.findall(r"`(\w+)` →\s+`(https?://[^`]+)`", text))
    assert given == {name: preset.base_url for name, preset in PRESETS.items()}
