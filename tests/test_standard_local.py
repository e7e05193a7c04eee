"""LangChain's standard conformance suites (langchain-tests) on the bundled local model.

``ChatLlamaCppLocal`` and ``LlamaCppEmbeddings`` run the real SmolLM2-135M GGUF in-process.
Capability flags follow docs/providers.md and docs/chains.md: tool calling, tool choice and
structured output are supported on ``local`` (through llama.cpp grammars), so they are on and
must pass; image, audio, video and PDF inputs are not.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import (
    ChatModelIntegrationTests,
    EmbeddingsIntegrationTests,
)
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests

from eslabon.chat.local import ChatLlamaCppLocal, LlamaCppEmbeddings, bundled_model_path

pytestmark = pytest.mark.model

# greedy and seeded: the same answers on every run (max_tokens, kept short for speed, is in
# standard_chat_model_params: the suites pass their own max_tokens next to chat_model_params)
_PARAMS: dict[str, Any] = {"temperature": 0.0, "seed": 1234}


class _LocalChat:
    @property
    def chat_model_class(self) -> type[ChatLlamaCppLocal]:
        return ChatLlamaCppLocal

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model_path": str(bundled_model_path()), **_PARAMS}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # the suite's defaults also pass timeout, max_retries (and api_key in the unit suite):
        # settings of network clients, which an in-process model refuses as unknown keywords
        return {"temperature": 0.0, "max_tokens": 48, "stop": []}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        # method="json_mode" is decoded under the schema's grammar too: JSON, and the schema's
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        # one GGUF file per model object (docs/python.md): a call's model= does not switch it
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False


class TestChatLlamaCppLocalUnit(_LocalChat, ChatModelUnitTests):
    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        # ESLABON_THREADS is the local model's one environment setting
        return {"ESLABON_THREADS": "1"}, {"model_path": str(bundled_model_path())}, {"n_threads": 1}


class TestChatLlamaCppLocalIntegration(_LocalChat, ChatModelIntegrationTests):
    pass


class _LocalEmbeddings:
    @property
    def embeddings_class(self) -> type[LlamaCppEmbeddings]:
        return LlamaCppEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_path": str(bundled_model_path())}


class TestLlamaCppEmbeddingsUnit(_LocalEmbeddings, EmbeddingsUnitTests):
    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return {"ESLABON_THREADS": "1"}, {"model_path": str(bundled_model_path())}, {"n_threads": 1}


class TestLlamaCppEmbeddingsIntegration(_LocalEmbeddings, EmbeddingsIntegrationTests):
    pass
