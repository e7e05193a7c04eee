"""Every provider, at the wire: one chain file, the same behaviour, each API's own shapes.

``ProviderConformance`` is the shared behaviour suite. A provider subclass says how to point the
model at the loopback server and how to read its request body back into plain
``(role, text)`` turns and params; everything else is inherited.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from eslabon import (
    ChainConfigError,
    ContextLengthError,
    KeyRejectedError,
    MissingCredentialsError,
    ModelNotFoundError,
    load_chain,
)
from eslabon.errors import ProviderUnavailableError, RateLimitedError
from helpers import CHAINS, timeless, unmetered_chunks, write
from wire_server import Recorded, ToolCall, WireServer

SECRET = "sk-wire-test-SECRET-0123456789"
Turn = tuple[str, str]


class ProviderConformance:
    provider: ClassVar[str]
    wire: ClassVar[str]  # the protocol name the server records
    env_var: ClassVar[str | None]
    invoke_streams: ClassVar[bool] = False  # LangChain's ChatOllama streams even on invoke
    # every eslabon param -> where it lands in the request body (None: the API has no such
    # setting, and eslabon refuses it); the table in docs/providers.md says the same
    wire_names: ClassVar[dict[str, tuple[str, ...] | None]]

    # -- what a provider subclass supplies ------------------------------------------------
    def model_ref(self, server: WireServer) -> dict[str, Any]:
        raise NotImplementedError

    def turns(self, body: dict[str, Any]) -> list[Turn]:
        """The request's conversation as (system|user|assistant, text)."""
        raise NotImplementedError

    def params(self, body: dict[str, Any]) -> dict[str, Any]:
        """temperature, max_tokens, top_p and stop as sent."""
        raise NotImplementedError

    def declared_tools(self, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Tool name -> its parameters' JSON Schema properties, as declared in the request."""
        raise NotImplementedError

    def tool_result(self, body: dict[str, Any]) -> Any:
        """The tool's result as the follow-up request carries it back."""
        raise NotImplementedError

    def sent_schema(self, body: dict[str, Any]) -> dict[str, Any]:
        """The output schema as the request asks for it."""
        raise NotImplementedError

    def structured_reply(self, data: dict[str, Any]) -> str | ToolCall:
        return json.dumps(data)  # JSON text, the native structured-output mode

    # -- shared -------------------------------------------------------------------------------
    @pytest.fixture(autouse=True)
    def _setup(self, server: WireServer, monkeypatch: pytest.MonkeyPatch) -> None:
        server.requests.clear()
        server.replies.clear()
        server.failures.clear()
        if self.env_var:
            monkeypatch.setenv(self.env_var, SECRET)

    def ref(self, server: WireServer, **extra: Any) -> dict[str, Any]:
        return {**self.model_ref(server), **extra}

    def sent(self, server: WireServer) -> list[Recorded]:
        assert all(r.provider == self.wire for r in server.requests)
        return list(server.requests)

    def test_system_and_few_shot_turns(self, server: WireServer) -> None:
        chain = load_chain(CHAINS / "traductor.yaml", model=self.ref(server))
        server.replies.append("Good evening")
        assert chain.invoke({"frase": "buenas tardes"})["output"] == "Good evening"
        [request] = self.sent(server)
        assert self.turns(request.body) == [
            ("system", "Eres un traductor de español a inglés. Responde solo con la traducción."),
            ("user", "¿Cómo se dice 'buenas noches' en inglés?"),
            ("assistant", "Good night"),
            ("user", "¿Cómo se dice 'buenos días' en inglés?"),
            ("assistant", "Good morning"),
            ("user", "¿Cómo se dice 'hola' en inglés?"),
            ("assistant", "Hello"),
            ("user", "¿Cómo se dice 'buenas tardes' en inglés?"),
        ]
        assert request.stream is self.invoke_streams

    def test_multi_step_chain_feeds_each_output_forward(self, server: WireServer) -> None:
        chain = load_chain(CHAINS / "analizar_planificar_resolver.yaml", model=self.ref(server))
        server.replies.extend(["ANÁLISIS", "PLAN", "SOLUCIÓN"])
        result = chain.invoke({"problema": "2+2"})
        assert (result["analisis"], result["plan"], result["output"]) == (
            "ANÁLISIS",
            "PLAN",
            "SOLUCIÓN",
        )
        first, second, third = (self.turns(r.body) for r in self.sent(server))
        assert first == [
            ("system", "Eres un analista cuidadoso."),
            ("user", "Analiza el problema:\n2+2"),
        ]
        assert second == [
            ("user", "Problema:\n2+2\n\nAnálisis:\nANÁLISIS\n\nIdentifica los pasos a seguir.")
        ]
        assert third == [("user", "Resuelve paso a paso siguiendo este plan:\nPLAN")]

    def assert_same_stats(self, streamed: dict[str, Any], invoked: dict[str, Any]) -> None:
        """A streamed run's stats and the same run's, invoked: the same usage, calls, cost and
        models. The server counts 10 input tokens a request and one output token a word."""
        assert timeless(streamed) == timeless(invoked)
        usage = streamed["usage"]
        assert usage is not None, "the provider's usage was lost when streamed"
        assert usage["input_tokens"] == 10 * streamed["calls"]
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        # timings aside, the one difference: only a streamed reply has a first token's time
        assert streamed["ttft_ms"] is not None
        assert (invoked["ttft_ms"] is not None) is self.invoke_streams

    def test_streaming_token_by_token(self, server: WireServer) -> None:
        chain = load_chain(CHAINS / "analizar_planificar_resolver.yaml", model=self.ref(server))
        replies = ["uno dos tres", "cuatro", "cinco seis"]
        server.replies.extend(replies)
        chunks = list(chain.stream({"problema": "x"}))
        text = unmetered_chunks(chunks)
        assert [c["analisis"] for c in text if "analisis" in c] == ["uno ", "dos ", "tres"]
        assert text[-1] == {"output": "cinco seis"}
        assert all(r.stream for r in self.sent(server))
        server.replies.extend(replies)
        invoked = chain.invoke({"problema": "x"})["stats"]
        self.assert_same_stats(chunks[-1]["stats"], invoked)
        assert invoked["usage"]["output_tokens"] == 6 and invoked["calls"] == 3

    async def test_async_streaming(self, server: WireServer) -> None:
        chain = load_chain(CHAINS / "hola.yaml", model=self.ref(server))
        server.replies.append("hola Ana")
        chunks = [c async for c in chain.astream({"nombre": "Ana"})]
        assert [c["output"] for c in unmetered_chunks(chunks)] == ["hola ", "Ana"]
        server.replies.append("hola Ana")
        invoked = (await chain.ainvoke({"nombre": "Ana"}))["stats"]
        self.assert_same_stats(chunks[-1]["stats"], invoked)
        assert invoked["usage"]["output_tokens"] == 2 and invoked["calls"] == 1

    def test_tool_calling_loop_in_the_providers_format(self, server: WireServer) -> None:
        chain = load_chain(CHAINS / "calculadora.yaml", model=self.ref(server))
        server.replies.extend([ToolCall("calculadora", {"expresion": "17*23"}), "Son 391."])
        result = chain.invoke({"pregunta": "¿17 por 23?"})
        assert result["output"] == "Son 391."
        assert [(c["name"], c["output"], c["error"]) for c in result["tool_calls"]] == [
            ("calculadora", "391", False)
        ]
        first, second = self.sent(server)
        declared = self.declared_tools(first.body)
        assert list(declared) == ["calculadora"] and "expresion" in declared["calculadora"]
        assert str(self.tool_result(second.body)) == "391"

    def test_structured_output_in_the_providers_format(self, server: WireServer) -> None:
        chain = load_chain(CHAINS / "extraer_persona.yaml", model=self.ref(server))
        person = {"nombre": "Ana", "edad": 30, "ciudad": "Lima", "profesion": "x", "idiomas": []}
        wrong = {**person, "edad": "treinta"}
        server.replies.extend([self.structured_reply(wrong), self.structured_reply(person)])
        assert chain.invoke({"texto": "Ana, 30, Lima"})["output"] == person
        first, second = self.sent(server)
        schema = self.sent_schema(first.body)
        assert schema["required"] == ["nombre", "edad", "ciudad", "profesion", "idiomas"]
        # the invalid first answer went back with what was wrong with it
        assert "edad: 'treinta' is not of type 'integer'" in self.turns(second.body)[-1][1]

    def test_params_reach_the_wire(self, server: WireServer, tmp_path: Path) -> None:
        path = write(
            tmp_path,
            "params: {temperature: 0.3, max_tokens: 42, top_p: 0.9, stop: [FIN]}\nprompt: hola\n",
        )
        load_chain(path, model=self.ref(server)).invoke({})
        [request] = self.sent(server)
        assert self.params(request.body) == {
            "temperature": 0.3,
            "max_tokens": 42,
            "top_p": 0.9,
            "stop": ["FIN"],
        }

    def test_every_param_lands_where_the_docs_say(self, server: WireServer, tmp_path: Path) -> None:
        values = {
            "temperature": 0.3,
            "max_tokens": 42,
            "top_p": 0.9,
            "top_k": 5,
            "stop": ["FIN"],
            "seed": 7,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
        }
        supported = {k: v for k, v in values.items() if self.wire_names[k] is not None}
        path = write(tmp_path, f"params: {json.dumps(supported)}\nprompt: hola\n")
        load_chain(path, model=self.ref(server)).invoke({})
        [request] = self.sent(server)
        for key, value in supported.items():
            node: Any = request.body
            for part in self.wire_names[key] or ():
                node = node[part]
            assert node == value, key
        for key in values.keys() - supported.keys():
            refused = write(tmp_path, f"params: {{{key}: {json.dumps(values[key])}}}\nprompt: x\n")
            with pytest.raises(ChainConfigError, match=f"does not support the param '{key}'"):
                load_chain(refused, model=self.ref(server))

    def test_missing_key_names_the_variable(
        self, server: WireServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        if not self.env_var:
            pytest.skip(f"{self.provider} needs no key")
        monkeypatch.delenv(self.env_var)
        monkeypatch.chdir(tmp_path)  # no .env here
        ref = {k: v for k, v in self.ref(server).items() if k != "base_url"}
        with pytest.raises(MissingCredentialsError, match=self.env_var):
            load_chain(CHAINS / "hola.yaml", model=ref)
        assert server.requests == []

    @pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
    @pytest.mark.parametrize(
        ("kind", "error"),
        [
            ("auth", KeyRejectedError),
            ("forbidden", KeyRejectedError),
            ("not_found", ModelNotFoundError),
            ("context", ContextLengthError),
            ("rate", RateLimitedError),
            ("server", ProviderUnavailableError),
        ],
    )
    def test_errors_are_clear_and_never_show_the_key(
        self, server: WireServer, kind: str, error: type[Exception], stream: bool
    ) -> None:
        chain = load_chain(CHAINS / "hola.yaml", model=self.ref(server))
        server.fail_next(kind)
        with pytest.raises(error) as info:
            if stream:
                list(chain.stream({}))
            else:
                chain.invoke({})
        message = str(info.value)
        assert SECRET not in message
        assert self.provider in message
        if kind in ("auth", "forbidden") and self.env_var:
            assert "refused the API key" in message and self.env_var in message
        if kind == "not_found":
            assert self.model_ref(server)["name"] in message
        assert len(server.requests) == 1  # max_retries: 0, so one request


class TestOpenAI(ProviderConformance):
    provider, wire, env_var = "openai", "openai", "OPENAI_API_KEY"
    wire_names: ClassVar[dict[str, tuple[str, ...] | None]] = {
        "temperature": ("temperature",),
        "max_tokens": ("max_completion_tokens",),
        "top_p": ("top_p",),
        "top_k": None,
        "stop": ("stop",),
        "seed": ("seed",),
        "presence_penalty": ("presence_penalty",),
        "frequency_penalty": ("frequency_penalty",),
    }

    def model_ref(self, server: WireServer) -> dict[str, Any]:
        # openai_api_base (ChatOpenAI's own field) rather than base_url: eslabon treats a
        # base_url as an OpenAI-compatible server and adapts the body; this is OpenAI itself
        return {
            "provider": "openai",
            "name": "gpt-4o-mini",
            "openai_api_base": server.url + "/v1",
            "max_retries": 0,
        }

    def turns(self, body: dict[str, Any]) -> list[Turn]:
        return [(m["role"], m["content"]) for m in body["messages"]]

    def declared_tools(self, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            t["function"]["name"]: t["function"]["parameters"]["properties"] for t in body["tools"]
        }

    def tool_result(self, body: dict[str, Any]) -> Any:
        reply = body["messages"][-1]
        assert (reply["role"], reply["tool_call_id"]) == ("tool", "call_1")
        return reply["content"]

    def sent_schema(self, body: dict[str, Any]) -> dict[str, Any]:
        assert body["response_format"]["type"] == "json_schema"
        return body["response_format"]["json_schema"]["schema"]  # type: ignore[no-any-return]

    def params(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "temperature": body["temperature"],
            "max_tokens": body["max_completion_tokens"],
            "top_p": body["top_p"],
            "stop": body["stop"],
        }

    def test_wire_shape(self, server: WireServer) -> None:
        load_chain(CHAINS / "nutricionista.yaml", model=self.ref(server)).invoke({})
        [request] = self.sent(server)
        assert request.path == "/v1/chat/completions"
        assert request.headers["authorization"] == f"Bearer {SECRET}"
        assert request.body["messages"][0]["role"] == "system"

    def test_openai_compatible_server_body(
        self, server: WireServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("VLLM_KEY", "vllm-key-value")
        path = write(tmp_path, "params: {top_k: 7, max_tokens: 9}\nprompt: hola\n")
        ref = {
            "provider": "openai",
            "name": "qwen2.5-7b-instruct",
            "base_url": server.url + "/v1",
            "api_key_env": "VLLM_KEY",
            "extra_body": {"repetition_penalty": 1.1},
        }
        load_chain(path, model=ref).invoke({})
        [request] = self.sent(server)
        assert request.headers["authorization"] == "Bearer vllm-key-value"
        # what such servers read: max_tokens (not max_completion_tokens), and top_k
        assert request.body["max_tokens"] == 9 and "max_completion_tokens" not in request.body
        assert request.body["top_k"] == 7
        assert request.body["repetition_penalty"] == 1.1  # the mapping's own extra_body too

    def test_top_k_is_refused_for_openai_itself(self, server: WireServer, tmp_path: Path) -> None:
        path = write(tmp_path, "params: {top_k: 7}\nprompt: hola\n")
        with pytest.raises(ChainConfigError, match="does not support the param 'top_k'"):
            load_chain(path, model=self.ref(server))


class TestAnthropic(ProviderConformance):
    provider, wire, env_var = "anthropic", "anthropic", "ANTHROPIC_API_KEY"
    wire_names: ClassVar[dict[str, tuple[str, ...] | None]] = {
        "temperature": ("temperature",),
        "max_tokens": ("max_tokens",),
        "top_p": ("top_p",),
        "top_k": ("top_k",),
        "stop": ("stop_sequences",),
        "seed": None,
        "presence_penalty": None,
        "frequency_penalty": None,
    }

    def model_ref(self, server: WireServer) -> dict[str, Any]:
        return {
            "provider": "anthropic",
            "name": "claude-wire-test",
            "base_url": server.url,
            "max_retries": 0,
        }

    def turns(self, body: dict[str, Any]) -> list[Turn]:
        system = body.get("system")
        head = [("system", system)] if system else []
        return head + [(m["role"], m["content"]) for m in body["messages"]]

    def declared_tools(self, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {t["name"]: t["input_schema"]["properties"] for t in body["tools"]}

    def tool_result(self, body: dict[str, Any]) -> Any:
        reply = body["messages"][-1]
        [block] = reply["content"]
        assert (reply["role"], block["type"], block["tool_use_id"]) == (
            "user",
            "tool_result",
            "call_1",
        )
        return block["content"]

    def sent_schema(self, body: dict[str, Any]) -> dict[str, Any]:
        # langchain-anthropic asks for structured output as a forced call to a tool named
        # after the schema
        assert body["tool_choice"] == {"type": "tool", "name": "output"}
        [tool] = body["tools"]
        return tool["input_schema"]  # type: ignore[no-any-return]

    def structured_reply(self, data: dict[str, Any]) -> str | ToolCall:
        return ToolCall("output", data)

    def params(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "temperature": body["temperature"],
            "max_tokens": body["max_tokens"],
            "top_p": body["top_p"],
            "stop": body["stop_sequences"],
        }

    def test_wire_shape(self, server: WireServer) -> None:
        load_chain(CHAINS / "nutricionista.yaml", model=self.ref(server)).invoke({})
        [request] = self.sent(server)
        assert request.path == "/v1/messages"
        # anthropic 2.x SDKs send the key as a bearer token; older ones as x-api-key
        sent_key = request.headers.get("x-api-key") or request.headers["authorization"]
        assert sent_key.removeprefix("Bearer ") == SECRET
        # system is a top-level field, not a message
        assert request.body["system"].startswith("Eres un nutricionista")
        assert [m["role"] for m in request.body["messages"]] == ["user"]


class TestGemini(ProviderConformance):
    provider, wire, env_var = "google_genai", "gemini", "GOOGLE_API_KEY"
    wire_names: ClassVar[dict[str, tuple[str, ...] | None]] = {
        k: ("generationConfig", v)
        for k, v in {
            "temperature": "temperature",
            "max_tokens": "maxOutputTokens",
            "top_p": "topP",
            "top_k": "topK",
            "stop": "stopSequences",
            "seed": "seed",
            "presence_penalty": "presencePenalty",
            "frequency_penalty": "frequencyPenalty",
        }.items()
    }

    def model_ref(self, server: WireServer) -> dict[str, Any]:
        return {
            "provider": "google_genai",
            "name": "gemini-2.5-flash",
            "base_url": server.url,
            "max_retries": 0,
        }

    def turns(self, body: dict[str, Any]) -> list[Turn]:
        def text(parts: list[dict[str, Any]]) -> str:
            return "".join(p["text"] for p in parts)

        system = body.get("systemInstruction")
        head = [("system", text(system["parts"]))] if system else []
        roles = {"user": "user", "model": "assistant"}
        return head + [(roles[c["role"]], text(c["parts"])) for c in body["contents"]]

    def declared_tools(self, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
        [tools] = body["tools"]
        return {f["name"]: f["parameters"]["properties"] for f in tools["functionDeclarations"]}

    def tool_result(self, body: dict[str, Any]) -> Any:
        reply = body["contents"][-1]
        [part] = reply["parts"]
        assert part["functionResponse"]["name"] == "calculadora"
        return part["functionResponse"]["response"]["output"]

    def sent_schema(self, body: dict[str, Any]) -> dict[str, Any]:
        config = body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        return config["responseJsonSchema"]  # type: ignore[no-any-return]

    def params(self, body: dict[str, Any]) -> dict[str, Any]:
        config = body["generationConfig"]
        return {
            "temperature": config["temperature"],
            "max_tokens": config["maxOutputTokens"],
            "top_p": config["topP"],
            "stop": config["stopSequences"],
        }

    def test_wire_shape(self, server: WireServer) -> None:
        load_chain(CHAINS / "traductor.yaml", model=self.ref(server)).invoke({"frase": "gato"})
        [request] = self.sent(server)
        assert request.path.endswith("/models/gemini-2.5-flash:generateContent")
        assert request.headers["x-goog-api-key"] == SECRET
        # the course's lesson: system_instruction apart, and "model" instead of "assistant"
        assert "systemInstruction" in request.body
        assert {c["role"] for c in request.body["contents"]} == {"user", "model"}


class TestOllama(ProviderConformance):
    provider, wire, env_var = "ollama", "ollama", None
    wire_names: ClassVar[dict[str, tuple[str, ...] | None]] = {
        "temperature": ("options", "temperature"),
        "max_tokens": ("options", "num_predict"),
        "top_p": ("options", "top_p"),
        "top_k": ("options", "top_k"),
        "stop": ("options", "stop"),
        "seed": ("options", "seed"),
        "presence_penalty": None,
        "frequency_penalty": None,
    }
    invoke_streams = True

    def model_ref(self, server: WireServer) -> dict[str, Any]:
        return {"provider": "ollama", "name": "llama3.2", "base_url": server.url}

    def turns(self, body: dict[str, Any]) -> list[Turn]:
        return [(m["role"], m["content"]) for m in body["messages"]]

    def declared_tools(self, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            t["function"]["name"]: t["function"]["parameters"]["properties"] for t in body["tools"]
        }

    def tool_result(self, body: dict[str, Any]) -> Any:
        reply = body["messages"][-1]
        assert reply["role"] == "tool"
        return reply["content"]

    def sent_schema(self, body: dict[str, Any]) -> dict[str, Any]:
        return body["format"]  # type: ignore[no-any-return]

    def params(self, body: dict[str, Any]) -> dict[str, Any]:
        options = body["options"]
        return {
            "temperature": options["temperature"],
            "max_tokens": options["num_predict"],
            "top_p": options["top_p"],
            "stop": options["stop"],
        }

    def test_wire_shape(self, server: WireServer) -> None:
        load_chain(CHAINS / "nutricionista.yaml", model=self.ref(server)).invoke({})
        [request] = self.sent(server)
        assert request.path == "/api/chat"
        assert request.body["messages"][0]["role"] == "system"
