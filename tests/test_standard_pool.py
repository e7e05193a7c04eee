"""LangChain's standard chat-model suites (langchain-tests) on ``EndpointPool``, and the pool's
tools, structured output and tracing over two loopback OpenAI-compatible servers.

The suites run the pool over scripted fakes (flags and scripts as in test_standard_fakes.py):
routing, streaming, async, kwargs passing, usage and tracing metadata, and tools and structured
output built by the endpoints' own integration and routed through the pool. Over the wire the
same machinery must send what a single ``ChatOpenAI`` sends (docs/providers.md: an
OpenAI-compatible server gets tools and structured output as OpenAI's API takes them).
Skips: as for the fakes (test_standard_fakes.py): tool choice (the fakes answer their script),
media inputs, ``test_init_from_env`` (nothing read from the environment), ``test_serdes`` (not
LangChain-serializable) and the VCR benchmark.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.tools import tool
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import BaseModel

from eslabon import load_chain
from eslabon.chat.fake import FakeChatModel
from eslabon.chat.models import build_model
from eslabon.chat.pool import EndpointPool
from helpers import write
from test_standard_fakes import HELLO, _Scripted, script
from wire_server import ToolCall, WireServer


class _Pool(_Scripted):
    @property
    def chat_model_class(self) -> type[EndpointPool]:
        return EndpointPool

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"endpoints": [FakeChatModel(responses=[HELLO]), FakeChatModel(responses=[HELLO])]}

    @pytest.fixture
    def model(self, request: pytest.FixtureRequest) -> BaseChatModel:
        extra = getattr(request, "param", None) or {}
        # one scripted fake at both endpoints: its script is answered in order whichever
        # endpoint a call goes to (routing itself is tested in test_batch.py)
        fake = FakeChatModel(responses=script(request), **extra)
        return EndpointPool(
            **{**self.standard_chat_model_params, "endpoints": [fake, fake], **extra}
        )


class TestPoolUnit(_Pool, ChatModelUnitTests):
    pass


class TestPoolIntegration(_Pool, ChatModelIntegrationTests):
    pass


# -- over the wire ------------------------------------------------------------------------------
class Persona(BaseModel):
    nombre: str
    edad: int


@tool
def calculadora(expresion: str) -> str:
    """Calcula una expresión aritmética."""
    return expresion


@pytest.fixture
def servers() -> Iterator[tuple[WireServer, WireServer]]:
    with WireServer() as a, WireServer() as b:
        yield a, b


def pool_of(servers: tuple[WireServer, WireServer], **extra: Any) -> Any:
    a, b = servers
    spec = {"provider": "openai", "name": "qwen2.5", "base_urls": [a.url + "/v1", b.url + "/v1"]}
    return build_model({**spec, **extra})


def bodies(servers: tuple[WireServer, WireServer]) -> list[dict[str, Any]]:
    return [r.body for r in [*servers[0].requests, *servers[1].requests]]


def test_pool_tools_go_out_as_openai_takes_them(servers: tuple[WireServer, WireServer]) -> None:
    for server in servers:
        server.replies.append(ToolCall("calculadora", {"expresion": "17*23"}))
    pool = pool_of(servers)
    message = pool.bind_tools([calculadora], tool_choice="any").invoke("¿17 por 23?")
    assert message.tool_calls[0]["args"] == {"expresion": "17*23"}
    [body] = bodies(servers)
    # LangChain's "any" is OpenAI's "required" (sent as is, OpenAI refuses the request)
    assert body["tool_choice"] == "required"
    assert body["tools"][0]["function"]["name"] == "calculadora"


def test_pool_structured_output_is_the_servers_json_schema(
    servers: tuple[WireServer, WireServer],
) -> None:
    for server in servers:
        server.replies.append(json.dumps({"nombre": "Ana", "edad": 30}))
    pool = pool_of(servers)
    assert pool.with_structured_output(Persona).invoke("Ana, 30 años") == Persona(
        nombre="Ana", edad=30
    )
    [body] = bodies(servers)
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "Persona"
    assert "tools" not in body


def test_a_pools_structured_method_is_honored(
    servers: tuple[WireServer, WireServer], tmp_path: Path
) -> None:
    """``structured_method: function_calling`` (llama-cpp-python's server) on a pool sends a
    forced call to a tool shaped like the schema, as it does on a single server."""
    for server in servers:
        # the schema's tool is named after the step (a single-step chain's is "output")
        server.replies.append(ToolCall("output", {"nombre": "Ana", "edad": 30}))
    schema = "{type: object, properties: {nombre: {type: string}, edad: {type: integer}}}"
    path = write(tmp_path, f"inputs: {{texto: x}}\nprompt: '{{texto}}'\noutput_schema: {schema}\n")
    model = {
        "provider": "openai",
        "name": "qwen2.5",
        "base_urls": [s.url + "/v1" for s in servers],
        "structured_method": "function_calling",
    }
    result = load_chain(path, model=model).invoke({"texto": "Ana, 30 años"})
    assert result["output"] == {"nombre": "Ana", "edad": 30}
    [body] = bodies(servers)
    assert body["tool_choice"]["function"]["name"] == body["tools"][0]["function"]["name"]
    assert body["tools"][0]["function"]["name"] == "output"
    assert "response_format" not in body


def test_pool_traces_as_its_servers(servers: tuple[WireServer, WireServer]) -> None:
    params = pool_of(servers)._get_ls_params(stop=["\n"])
    assert (params["ls_provider"], params["ls_model_name"]) == ("openai", "qwen2.5")
    assert params["ls_stop"] == ["\n"]
