"""LangChain's standard suites (langchain-tests) on the stores eslabon ships or configures:

* ``SafeSQLiteCache`` (``--cache``, ``chain.with_cache(path)``): ``SyncCacheTestSuite`` and
  ``AsyncCacheTestSuite``, each test on a new cache file;
* the Chroma vector store eslabon opens for ``retriever: {type: chroma}`` and ``eslabon index``
  (``eslabon.rag.retrieval.chroma_store``: eslabon's client settings, cosine distance), embedded and
  persistent in a temporary folder, a new collection for each test:
  ``VectorStoreIntegrationTests``, sync and async, ``get_by_ids`` included.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.caches import BaseCache
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import (
    AsyncCacheTestSuite,
    SyncCacheTestSuite,
    VectorStoreIntegrationTests,
)

from eslabon.chat.cache import SafeSQLiteCache
from eslabon.rag.retrieval import chroma_store

# LangChain's cache decodes answers with langchain-core's beta ``loads``, which warns on first use;
# eslabon.chat.cache silences that warning for its users, but pytest's filters (every warning an
# error) replace the process's own for each test, so the cache classes let that one pass
quiet_loads = pytest.mark.filterwarnings(
    "ignore:The function `loads` is in beta:langchain_core._api.beta_decorator.LangChainBetaWarning"
)


@quiet_loads
class TestSafeSQLiteCache(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, tmp_path: Path) -> Iterator[BaseCache]:
        cache = SafeSQLiteCache(tmp_path / "cache.sqlite")
        yield cache
        cache.engine.dispose()


@quiet_loads
class TestSafeSQLiteCacheAsync(AsyncCacheTestSuite):
    @pytest.fixture
    def cache(self, tmp_path: Path) -> Iterator[BaseCache]:
        cache = SafeSQLiteCache(tmp_path / "cache.sqlite")
        yield cache
        cache.engine.dispose()


class TestChromaStore(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path: Path) -> Iterator[VectorStore]:
        collection = f"standard_{uuid.uuid4().hex[:12]}"
        store = chroma_store(
            collection, self.get_embeddings(), str(tmp_path / "chroma"), None, 8000, tmp_path
        )
        yield store
        store.delete_collection()  # type: ignore[attr-defined]
