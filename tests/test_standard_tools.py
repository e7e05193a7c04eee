"""LangChain's standard tool suites (langchain-tests) on the tools eslabon ships and on a compiled
chain as a tool: ``eslabon.tools:calculadora`` as a chain file's ``tools:`` loads it (a LangChain
``StructuredTool`` with its schema from the signature and docstring), and a ``CompiledChain``
through ``as_tool()`` (its inputs are the tool's arguments), whole and through ``output_text()``.
None reads an environment variable, so the suite's ``test_init_from_env`` has nothing to check.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool
from langchain_tests.integration_tests import ToolsIntegrationTests
from langchain_tests.unit_tests import ToolsUnitTests

from eslabon import load_chain
from eslabon.running.toolcalls import load_tools
from helpers import CHAINS

# langchain-core marks Runnable.as_tool() as beta and warns on every call; the suite runs it on
# purpose (a chain as a tool is what is under test), so only that warning is let through
pytestmark = pytest.mark.filterwarnings(
    "ignore:This API is in beta:langchain_core._api.beta_decorator.LangChainBetaWarning"
)


def calculadora() -> BaseTool:
    [tool] = load_tools(["eslabon.tools:calculadora"], [], "standard")
    return tool


def chain_tool(text_only: bool) -> BaseTool:
    chain = load_chain(CHAINS / "analizar_planificar_resolver.yaml", model="fake:echo")
    runnable: Any = chain.output_text() if text_only else chain
    return runnable.as_tool(name="resolver", description="Resuelve un problema paso a paso.")


# -- calculadora ----------------------------------------------------------------------------------
class _Calculadora:
    @property
    def tool_constructor(self) -> BaseTool:
        return calculadora()

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"expresion": "17 * (3 + 4) / 2"}


class TestCalculadoraUnit(_Calculadora, ToolsUnitTests):
    pass


class TestCalculadoraIntegration(_Calculadora, ToolsIntegrationTests):
    pass


def test_calculadora_answers_a_tool_call_with_the_number() -> None:
    call = {"name": "calculadora", "args": {"expresion": "17*23"}, "id": "1", "type": "tool_call"}
    message = calculadora().invoke(call)
    assert isinstance(message, ToolMessage) and message.content == "391"


# -- a compiled chain as a tool -------------------------------------------------------------------
class _ChainTool:
    text_only = False

    @property
    def tool_constructor(self) -> BaseTool:
        return chain_tool(self.text_only)

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"problema": "Tengo 3 manzanas y me como una."}


class TestChainToolUnit(_ChainTool, ToolsUnitTests):
    pass


class TestChainToolIntegration(_ChainTool, ToolsIntegrationTests):
    pass


class TestChainTextToolUnit(_ChainTool, ToolsUnitTests):
    text_only = True


class TestChainTextToolIntegration(_ChainTool, ToolsIntegrationTests):
    text_only = True


@pytest.mark.parametrize("text_only", [False, True])
def test_a_chain_tool_takes_the_chain_inputs(text_only: bool) -> None:
    tool = chain_tool(text_only)
    assert tool.name == "resolver"
    assert list(tool.get_input_schema().model_json_schema()["properties"]) == ["problema"]
    call = {"name": "resolver", "args": {"problema": "3 - 1"}, "id": "1", "type": "tool_call"}
    content = tool.invoke(call).content
    assert isinstance(content, str) and "3 - 1" in content
