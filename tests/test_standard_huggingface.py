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

pytestmark = pytest.mark.model


def _weights() -> dict[str, Any]:
    # as `huggingface:PATH.gguf` resolves it (an absolute gguf_file): the model the other
    # tests load, loaded once for the session
    path = bundled_model_path()
    return {"model": str(path.parent), "gguf_file": str(path), "device": "cpu"}


class _HFChat:
    @property
    def chat_model_class(self) -> type[ChatTransformers]:
        return ChatTransformers

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {**_weights(), "temperature": 0.0, "seed": 1234}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # the suite's defaults also pass timeout and max_retries: settings of network clients,
        # which an in-process model refuses as unknown keywords
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
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # one model per object, as local

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
