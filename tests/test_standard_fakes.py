"""LangChain's standard chat-model suites (langchain-tests) on eslabon's fakes.

Capability flags follow docs/python.md and docs/chains.md:

* ``FakeChatModel`` answers what it is scripted to (text, JSON, or ``AIMessage`` with tool calls),
  binds tools and answers structured output (every ``structured_method``, json_mode included):
  tool calling, structured output and JSON mode are on. Each standard test gets the script a
  real model's answer would be (``SCRIPTS``), so the suite checks what a fake does with it: the
  message, stream and tool-call shapes, usage metadata, structured output parsed into the
  schema's type, tracing metadata. It ignores ``tool_choice`` (it answers its script), so the
  tool-choice flag is off.
* ``EchoChatModel`` (``fake:echo``) answers with the last user message: it never calls a tool and
  its structured output parses only when that message is JSON (docs/python.md), so tool calling
  and structured output are off for it.

Off everywhere, as docs/python.md says eslabon's models lack them: image, audio, video and PDF
inputs (also in tool messages). Skipped by the suites themselves: ``test_init_from_env`` (fakes
read no environment variables), ``test_serdes`` (eslabon's models are not LangChain-serializable)
and the VCR benchmark ``test_stream_time`` (no HTTP to record).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import BaseModel

from eslabon.chat.fake import EchoChatModel, FakeChatModel

JOKE = json.dumps(
    {"setup": "Why do cats sit on keyboards?", "punchline": "To keep an eye on the mouse."}
)


def _call(name: str, **args: Any) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"call_{name}"}])


# per standard test, what a model that understood the request would answer
SCRIPTS: dict[str, list[str | AIMessage]] = {
    "test_tool_calling": [_call("magic_function", input=3)],
    "test_tool_calling_async": [_call("magic_function", input=3)],
    "test_tool_choice": [_call("magic_function", input=3)],
    "test_tool_calling_with_no_arguments": [_call("magic_function_no_args")],
    "test_bind_runnables_as_tools": [_call("greeting_generator", answer_style="pirate")],
    "test_structured_few_shot_examples": [_call("my_adder_tool", a=3, b=4)],
    "test_agent_loop": [
        _call("get_weather", location="San Francisco, CA"),
        "It is sunny in San Francisco.",
    ],
    "test_unicode_tool_call_integration": [
        _call("unicode_customer", customer_name="你好啊集团", description="科技公司"),
        _call("unicode_customer", customer_name="こんにちは株式会社", description="日本の会社"),
    ],
    "test_structured_output": [JOKE],
    "test_structured_output_async": [JOKE],
    "test_structured_output_pydantic_2_v1": [JOKE],
    "test_structured_output_optional_param": [JOKE],
    "test_json_mode": [JOKE],
}
HELLO = "Hello! How can I help you today?"


def script(request: pytest.FixtureRequest) -> list[str | AIMessage]:
    """What the fake answers in the requesting standard test."""
    return SCRIPTS.get(request.node.originalname, [HELLO])


class _NoMedia:
    """Text only (docs/python.md: eslabon's models read each message's text; images, audio and
    files are not supported). Messages in any LangChain content format are read, Anthropic's
    content blocks included."""

    @property
    def supports_anthropic_inputs(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False


class _Scripted(_NoMedia):
    """Flags of a scripted fake (and of a pool over them, test_standard_pool.py)."""

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return False  # a fake answers its script whatever tool_choice says

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True  # structured_method: json_mode (docs/providers.md)

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "fake-2"


# -- EchoChatModel (fake:echo) -------------------------------------------------------------------
class _Echo(_NoMedia):
    @property
    def chat_model_class(self) -> type[EchoChatModel]:
        return EchoChatModel

    @property
    def has_tool_calling(self) -> bool:
        return False  # echo answers with the user's text, never with a tool call

    @property
    def has_structured_output(self) -> bool:
        return False  # its "structured output" is the user's text parsed as JSON

    @property
    def model_override_value(self) -> str:
        return "echo-2"


class TestEchoUnit(_Echo, ChatModelUnitTests):
    pass


class TestEchoIntegration(_Echo, ChatModelIntegrationTests):
    pass


# -- FakeChatModel --------------------------------------------------------------------------------
class _Fake(_Scripted):
    @property
    def chat_model_class(self) -> type[FakeChatModel]:
        return FakeChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"responses": [HELLO]}

    @pytest.fixture
    def model(self, request: pytest.FixtureRequest) -> BaseChatModel:
        extra = getattr(request, "param", None) or {}
        return FakeChatModel(
            **{**self.standard_chat_model_params, "responses": script(request), **extra}
        )


class TestFakeUnit(_Fake, ChatModelUnitTests):
    pass


class TestFakeIntegration(_Fake, ChatModelIntegrationTests):
    pass


# -- beyond the suites: what the fixes guarantee --------------------------------------------------
def test_usage_adds_up_in_words_and_a_scripted_answer_keeps_its_own() -> None:
    model = FakeChatModel(responses=["uno dos tres"])
    answer = model.invoke("hola mundo")
    assert answer.usage_metadata == {"input_tokens": 2, "output_tokens": 3, "total_tokens": 5}
    assert answer.response_metadata["model_name"] == "fake"
    streamed = None
    for chunk in model.stream("hola mundo", model="otro"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None and streamed.usage_metadata == answer.usage_metadata
    assert streamed.response_metadata["model_name"] == "otro"
    usage = {"input_tokens": 7, "output_tokens": 1, "total_tokens": 8}
    scripted = FakeChatModel(responses=[AIMessage("ok", usage_metadata=usage)])
    assert scripted.invoke("x").usage_metadata == usage
    chunks = list(scripted.stream("x"))
    assert sum((c.usage_metadata or {}).get("total_tokens", 0) for c in chunks) == 8


def test_tracing_names_the_fake_provider_and_model() -> None:
    assert EchoChatModel()._get_ls_params(stop=["\n"]) == {
        "ls_provider": "fake",
        "ls_model_name": "echo",
        "ls_model_type": "chat",
        "ls_stop": ["\n"],
    }
    assert FakeChatModel(model_name="guion")._get_ls_params()["ls_model_name"] == "guion"


class Persona(BaseModel):
    nombre: str
    edad: int


def test_structured_output_is_an_instance_with_raw_and_errors_as_langchain_gives_them() -> None:
    from langchain_core.exceptions import OutputParserException

    model = FakeChatModel(responses=['{"nombre": "Ana", "edad": 30}', '{"nombre": "Ana"}', "no"])
    structured = model.with_structured_output(Persona, include_raw=True)
    ok = structured.invoke("x")
    assert ok["parsed"] == Persona(nombre="Ana", edad=30) and ok["parsing_error"] is None
    assert ok["raw"].text == '{"nombre": "Ana", "edad": 30}'
    for _ in range(2):  # breaks the schema; then not JSON
        bad = structured.invoke("x")
        assert bad["parsed"] is None and isinstance(bad["parsing_error"], OutputParserException)
    with pytest.raises(OutputParserException, match="does not match Persona"):
        FakeChatModel(responses=['{"edad": 1}']).with_structured_output(Persona).invoke("x")
    # what eslabon binds: the JSON Schema as response_format (tools and schemas are recorded)
    assert model.bound[0]["response_format"]["required"] == ["nombre", "edad"]


def test_structured_output_refuses_options_it_does_not_know() -> None:
    model = FakeChatModel()
    with pytest.raises(ValueError, match="unsupported arguments"):
        model.with_structured_output(Persona, metod="json_mode")
    with pytest.raises(ValueError, match="method must be one of"):
        model.with_structured_output(Persona, method="xml")
