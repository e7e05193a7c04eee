"""LangChain's standard embeddings suites (langchain-tests) on ``HashingEmbeddings``, the offline
``local`` embeddings (``embeddings: local``, the default). It reads no environment variable, so
the suite's ``test_init_from_env`` has nothing to check and skips."""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from eslabon.rag.embeddings import HashingEmbeddings


class _Hashing:
    @property
    def embeddings_class(self) -> type[HashingEmbeddings]:
        return HashingEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"dimensions": 256}


class TestHashingEmbeddingsUnit(_Hashing, EmbeddingsUnitTests):
    pass


class TestHashingEmbeddingsIntegration(_Hashing, EmbeddingsIntegrationTests):
    pass
