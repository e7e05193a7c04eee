"""Reusable conformance tests for retrievers, for your own test suite (needs pytest).

```python
from eslabon.testing import RetrieverConformance

class TestMyRetriever(RetrieverConformance):
    query = "siguiente token"
    expected_source = "llm.md"

    def make_retriever(self, k):
        return MyRetriever(k=k)
```

The checks: it is a LangChain ``BaseRetriever``; hits are ``Document``s with a ``source``; the
best hit for ``query`` is ``expected_source``; ``k`` is honored, and so is a per-call ``k``
(``invoke(query, k=1)``, as LangChain's standard retriever tests ask; set
``supports_k_per_call = False`` if yours cannot); async agrees with sync;
callbacks see a retriever run; and a chain file using it (registered under a name) puts its
passages in ``{context}`` and its documents in the result.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

__all__ = ["RetrieverConformance"]


class _Seen(BaseCallbackHandler):
    def __init__(self) -> None:
        self.starts: list[str] = []

    def on_retriever_start(self, serialized: Any, query: str, **kwargs: Any) -> None:
        self.starts.append(query)


class RetrieverConformance:
    query: ClassVar[str]
    expected_source: ClassVar[str | None] = None
    supports_k_per_call: ClassVar[bool] = True

    def make_retriever(self, k: int) -> BaseRetriever:
        raise NotImplementedError

    def test_is_a_langchain_retriever(self) -> None:
        assert isinstance(self.make_retriever(2), BaseRetriever)

    def test_hits_are_documents_with_a_source(self) -> None:
        hits = self.make_retriever(2).invoke(self.query)
        assert hits, "no documents for the query"
        assert all(isinstance(d, Document) and d.metadata.get("source") for d in hits)
        if self.expected_source is not None:
            assert hits[0].metadata["source"] == self.expected_source

    def test_k_is_honored(self) -> None:
        assert len(self.make_retriever(1).invoke(self.query)) == 1

    def test_k_per_call_is_honored(self) -> None:
        if not self.supports_k_per_call:
            import pytest

            pytest.skip("supports_k_per_call = False")
        retriever = self.make_retriever(2)
        assert len(retriever.invoke(self.query)) == 2
        assert len(retriever.invoke(self.query, k=1)) == 1

    async def test_async_agrees_with_sync(self) -> None:
        retriever = self.make_retriever(2)
        sync = [d.page_content for d in retriever.invoke(self.query)]
        assert [d.page_content for d in await retriever.ainvoke(self.query)] == sync

    def test_callbacks_see_a_retriever_run(self) -> None:
        seen = _Seen()
        self.make_retriever(1).invoke(self.query, config={"callbacks": [seen]})
        assert seen.starts == [self.query]

    def test_works_in_a_chain_file(self) -> None:
        from eslabon.chainfile.loader import load_spec_text
        from eslabon.chat.fake import FakeChatModel
        from eslabon.rag.registry import register_retriever
        from eslabon.running.compile import compile_chain

        name = f"conformance_{uuid.uuid4().hex[:8]}"
        register_retriever(name)(lambda k: self.make_retriever(k))
        spec = load_spec_text(
            f"inputs: {{q: x}}\nretriever: {{type: {name}, k: 1}}\nprompt: '{{context}}'\n"
        )
        model = FakeChatModel(responses=["ok"])
        result = compile_chain(spec, model=model).invoke({"q": self.query})
        [doc] = result["documents"]
        assert doc["source"] and doc["content"]
        assert model.calls[0][-1].text.startswith(f"[1] (source: {doc['source']})")
