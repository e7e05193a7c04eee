"""Embeddings settings: provider embeddings at the wire, and GGUF embeddings via llama.cpp."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import write
from eslabon import FakeChatModel, MissingCredentialsError, load_chain
from eslabon.retrieval import build_embeddings
from wire_server import WireServer

DOCS = (
    "retriever:\n  type: memory\n  k: 1\n  documents:\n"
    "    - {content: 'zzz zumbido zorro', source: z.md}\n"
    "    - {content: 'aaa abeja ama', source: a.md}\n"
)


@pytest.fixture
def server() -> Iterator[WireServer]:
    with WireServer() as wire:
        yield wire


def test_openai_embeddings_at_the_wire(
    server: WireServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-embeddings-test")
    monkeypatch.setenv("OPENAI_API_BASE", server.url + "/v1")
    path = write(
        tmp_path,
        f"embeddings: openai:text-embedding-3-small\ninputs: {{q: x}}\n{DOCS}"
        "prompt: '{context}'\n",
    )
    result = load_chain(path, model=FakeChatModel(responses=["ok"])).invoke({"q": "zorro zz"})
    assert result["documents"][0]["source"] == "z.md"
    assert {r.path for r in server.requests} == {"/v1/embeddings"}
    assert server.requests[0].body["model"] == "text-embedding-3-small"


def test_ollama_embeddings_at_the_wire(server: WireServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    emb = build_embeddings("ollama:nomic-embed-text")
    a, z = emb.embed_documents(["aaa", "zzz"])
    assert a != z and abs(sum(v * v for v in a) - 1) < 1e-6
    assert server.requests[-1].path == "/api/embed"


def test_missing_key_for_embeddings_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingCredentialsError, match="OPENAI_API_KEY"):
        build_embeddings("openai:text-embedding-3-small")


@pytest.mark.model
def test_gguf_embeddings_through_llama_cpp(tmp_path: Path) -> None:
    from eslabon.local import bundled_model_path

    emb = build_embeddings(f"llamacpp:{bundled_model_path()}")
    a, b, c = emb.embed_documents(["el perro ladra", "el perro grande ladra", "la bolsa sube"])
    assert len(a) == 576 and emb.embed_query("el perro ladra") == a

    def cos(x: list[float], y: list[float]) -> float:
        return sum(i * j for i, j in zip(x, y, strict=True))

    assert cos(a, b) > cos(a, c)
    path = write(
        tmp_path,
        f"embeddings: 'llamacpp:{bundled_model_path()}'\ninputs: {{q: x}}\n"
        f"{DOCS}prompt: '{{context}}'\n",
    )
    assert load_chain(path, model="fake:echo").invoke({"q": "zorro"})["documents"]
