"""LangChain's standard conformance suites (langchain-tests) on the transformers runtime.

``ChatTransformers`` runs the bundled SmolLM2-135M GGUF through transformers (de-quantized to
float32 on the CPU). Capability flags as for ``local``: tool calling, tool choice and structured
output are decoded under a JSON Schema (lm-format-enforcer), so they are on and must pass;
image, audio, video and PDF inputs are not.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
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


class TestChatTransformersUnit(_HFChat, ChatModelUnitTests):
    pass


class TestChatTransformersIntegration(_HFChat, ChatModelIntegrationTests):
    @pytest.mark.xfail(
        strict=True,
        reason="a tool argument in Chinese script: lm-format-enforcer 0.11 lets this byte-level "
        "tokenizer's partial-character tokens run on until max_tokens (ASCII and accented Latin "
        "text decode fine: tests/test_huggingface.py); local's llama.cpp grammar passes it",
    )
    def test_unicode_tool_call_integration(
        self,
        model: BaseChatModel,
        *,
        tool_choice: str | None = None,
        force_tool_call: bool = True,
    ) -> None:
        super().test_unicode_tool_call_integration(
            model, tool_choice=tool_choice, force_tool_call=force_tool_call
        )
