"""Few-shot selectors (LangChain's) choose examples by the step's rendered prompt."""

from __future__ import annotations

from pathlib import Path

from langchain_core.messages import HumanMessage

from eslabon import FakeChatModel, load_chain
from eslabon.rag.embeddings import HashingEmbeddings
from helpers import CHAINS, write

EXAMPLES = """\
examples:
  - {input: el perro grande ladra, output: the big dog barks}
  - {input: el perro grande ladra fuerte, output: the big dog barks loudly}
  - {input: la casa roja, output: the red house}
  - {input: un gato negro duerme, output: a black cat sleeps}
"""


def chosen(tmp_path: Path, selector: str, frase: str) -> list[str]:
    path = write(
        tmp_path, f"inputs: {{frase: x}}\n{EXAMPLES}selector: {selector}\nprompt: '{{frase}}'\n"
    )
    model = FakeChatModel(responses=["ok"])
    load_chain(path, model=model).invoke({"frase": frase})
    [messages] = model.calls
    assert messages[-1] == HumanMessage(frase)
    return [m.text for m in messages[:-1] if isinstance(m, HumanMessage)]


def test_all_is_the_default(tmp_path: Path) -> None:
    assert len(chosen(tmp_path, "{type: all}", "hola")) == 4


def test_length_fits_examples_into_max_length(tmp_path: Path) -> None:
    # "hola" is 1 word; each example formats to 8-10 words; 20 leaves room for two
    assert chosen(tmp_path, "{type: length, max_length: 20}", "hola") == [
        "el perro grande ladra",
        "el perro grande ladra fuerte",
    ]


def test_ngram_orders_by_overlap_and_keeps_k(tmp_path: Path) -> None:
    assert chosen(tmp_path, "{type: ngram, k: 1}", "un gato negro duerme mucho") == [
        "un gato negro duerme"
    ]


def test_semantic_picks_the_closest(tmp_path: Path) -> None:
    assert chosen(tmp_path, "{type: semantic, k: 1}", "la casa es roja") == ["la casa roja"]


def test_mmr_prefers_diverse_examples(tmp_path: Path) -> None:
    query = "mi perro grande ladra"
    assert chosen(tmp_path, "{type: semantic, k: 2}", query) == [
        "el perro grande ladra",
        "el perro grande ladra fuerte",
    ]
    picked = chosen(tmp_path, "{type: mmr, k: 2, fetch_k: 4}", query)
    assert picked[0] == "el perro grande ladra"
    assert "el perro grande ladra fuerte" not in picked  # near-duplicate skipped


def test_traductor_chain_selects_from_inline_and_file_examples() -> None:
    model = FakeChatModel(responses=["Good night"])
    load_chain(CHAINS / "traductor.yaml", model=model).invoke({"frase": "buenas noches"})
    [messages] = model.calls
    shown = [m.text for m in messages[1:-1] if isinstance(m, HumanMessage)]
    assert len(shown) == 3
    assert shown[0] == "¿Cómo se dice 'buenas noches' en inglés?"  # from the .jsonl file


def test_hashing_embeddings_are_deterministic_and_lexical() -> None:
    emb = HashingEmbeddings()
    a, b, c = emb.embed_documents(["La casa roja", "la CASA roja!", "un gato negro"])
    assert a == b  # case, punctuation and accents fold away
    assert a == emb.embed_query("la casa roja")
    dot_ab = sum(x * y for x, y in zip(a, b, strict=True))
    dot_ac = sum(x * y for x, y in zip(a, c, strict=True))
    assert abs(dot_ab - 1.0) < 1e-9 and dot_ac < 0.3
    # no words: still a direction (a zero vector made cosine search fail with NaN)
    empty = emb.embed_query("")
    assert abs(sum(v * v for v in empty) - 1) < 1e-9 and empty == emb.embed_query("  ")
