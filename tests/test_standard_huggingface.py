"""LangChain's standard conformance suites (langchain-tests) on the transformers runtime.

``ChatTransformers`` runs the bundled SmolLM2-135M GGUF through transformers (de-quantized to
float32 on the CPU). Capability flags as for ``local``: tool calling, tool choice and structured
output are decoded under a JSON Schema (lm-format-enforcer), so they are on and must pass;
image, audio, video and PDF inputs are not.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from eslabon.chat.huggingface import ChatTransformers
from eslabon.chat.local import bundled_model_path
from test_standard_local import _LocalChat

pytestmark = pytest.mark.model


def _weights() -> dict[str, Any]:
    # as `huggingface:PATH.gguf` resolves it (an absolute gguf_file): the model the other
    # tests load, loaded once for the session
    path = bundled_model_path()
    return {"model": str(path.parent), "gguf_file": str(path), "device": "cpu"}


class _HFChat(_LocalChat):
    """local's capability flags and suite settings (both in-process, both decoding tools and
    structured output under the JSON Schema), on transformers."""

    @property
    def chat_model_class(self) -> type[ChatTransformers]:  # type: ignore[override]
        return ChatTransformers

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {**_weights(), "temperature": 0.0, "seed": 1234}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # 64 tokens, not local's 48: through transformers this model lays JSON out on indented
        # lines, and the unicode tool call's Japanese name (16 byte-level tokens) takes 52
        return {**super().standard_chat_model_params, "max_tokens": 64}


class TestChatTransformersUnit(_HFChat, ChatModelUnitTests):
    pass


class TestChatTransformersIntegration(_HFChat, ChatModelIntegrationTests):
    pass
