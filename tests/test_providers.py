"""Every provider, at the wire: one chain file, the same behaviour, each API's own shapes.

``ProviderConformance`` is the shared behaviour suite. A provider subclass says how to point the
model at the loopback server and how to read its request body back into plain
``(role, text)`` turns and params; everything else is inherited.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from langchain_core.tools import tool

from eslabon import (
    ChainConfigError,
    ContextLengthError,
    KeyRejectedError,
    MissingCredentialsError,
    ModelNotFoundError,
    build_model,
    load_chain,
)
from eslabon.errors import ProviderUnavailableError, RateLimitedError
from helpers import CHAINS, timeless, unmetered_chunks, write
from wire_server import MISTRAL_PREFIX, Recorded, ToolCall, WireServer, mistral_tool_call_id

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


class TestMistral(ProviderConformance):
    provider, wire, env_var = "mistralai", "mistral", "MISTRAL_API_KEY"
    wire_names: ClassVar[dict[str, tuple[str, ...] | None]] = {
        "temperature": ("temperature",),
        "max_tokens": ("max_tokens",),
        "top_p": ("top_p",),
        "top_k": None,  # the API has no top_k
        "stop": ("stop",),
        "seed": ("random_seed",),
        "presence_penalty": ("presence_penalty",),
        "frequency_penalty": ("frequency_penalty",),
    }

    def model_ref(self, server: WireServer) -> dict[str, Any]:
        return {
            "provider": "mistralai",
            "name": "mistral-small-latest",
            "base_url": server.url + MISTRAL_PREFIX + "/v1",  # its own default ends in /v1
            "max_retries": 0,
        }

    def turns(self, body: dict[str, Any]) -> list[Turn]:
        return [(m["role"], m["content"]) for m in body["messages"]]

    def declared_tools(self, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            t["function"]["name"]: t["function"]["parameters"]["properties"] for t in body["tools"]
        }

    def tool_result(self, body: dict[str, Any]) -> Any:
        call, reply = body["messages"][-2:]
        # the call goes back with the id Mistral gave it (nine letters and digits, or the API
        # refuses the request), and the result names the tool
        [sent] = call["tool_calls"]
        assert sent["id"] == mistral_tool_call_id("call_1") and call["content"] == ""
        assert (reply["role"], reply["tool_call_id"], reply["name"]) == (
            "tool",
            sent["id"],
            "calculadora",
        )
        return reply["content"]

    def sent_schema(self, body: dict[str, Any]) -> dict[str, Any]:
        # langchain-mistralai's default: a call to a tool shaped like the schema, forced with
        # tool_choice "any" (it does not name the tool)
        assert body["tool_choice"] == "any"
        [tool] = body["tools"]
        assert tool["function"]["name"] == "output"
        return tool["function"]["parameters"]  # type: ignore[no-any-return]

    def structured_reply(self, data: dict[str, Any]) -> str | ToolCall:
        return ToolCall("output", data)

    def params(self, body: dict[str, Any]) -> dict[str, Any]:
        return {k: body[k] for k in ("temperature", "max_tokens", "top_p", "stop")}

    def test_wire_shape(self, server: WireServer) -> None:
        load_chain(CHAINS / "nutricionista.yaml", model=self.ref(server)).invoke({})
        [request] = self.sent(server)
        assert request.path == "/v1/chat/completions"
        assert request.headers["authorization"] == f"Bearer {SECRET}"
        assert request.body == {
            "model": "mistral-small-latest",
            "messages": [
                {
                    "role": "system",
                    "content": "Eres un nutricionista que da consejos para una dieta saludable "
                    "sin mencionar carne roja.",
                },
                {"role": "user", "content": "¿Qué puedo desayunar antes de entrenar?"},
            ],
            "temperature": 0.3,
            "max_tokens": 200,
            "top_p": 1,  # langchain-mistralai always sends it
            "stream": False,
        }

    def test_a_streamed_tool_call_arrives_whole(self, server: WireServer) -> None:
        model = build_model(self.ref(server)).bind_tools([calculadora])
        server.replies.append(ToolCall("calculadora", {"expresion": "2+2"}))
        message = _joined(model.stream("¿2+2?"))
        assert message.tool_calls == [
            {
                "name": "calculadora",
                "args": {"expresion": "2+2"},
                "id": mistral_tool_call_id("call_1"),
                "type": "tool_call",
            }
        ]
        assert message.usage_metadata is not None
        assert message.usage_metadata["input_tokens"] == 10
        [request] = self.sent(server)
        assert request.stream and request.body["tools"][0]["function"]["name"] == "calculadora"

    def test_retry_after_is_read_from_the_response(self, server: WireServer) -> None:
        _assert_retry_after(self, server)

    def test_a_chains_retry_replaces_the_sdks_own(self, server: WireServer, tmp_path: Path) -> None:
        _assert_one_retry_layer(self, server, tmp_path)

    def test_a_missing_package_names_the_extra(
        self, server: WireServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _assert_extra_named(self, server, monkeypatch)

    def test_a_refused_connection_fails_at_once(self, server: WireServer, closed: str) -> None:
        ref = {**self.ref(server), "base_url": closed + "/v1"}
        _assert_fails_fast(ref, closed + "/v1/chat/completions")

    def test_a_connection_that_never_completes_times_out(
        self, server: WireServer, silent: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _assert_connect_bounded({**self.ref(server), "base_url": silent + "/v1"}, monkeypatch)

    def test_a_chain_files_server_gets_no_key_unapproved(
        self, server: WireServer, tmp_path: Path
    ) -> None:
        _assert_unapproved_refused(self, server, tmp_path)


class TestCohere(ProviderConformance):
    provider, wire, env_var = "cohere", "cohere", "COHERE_API_KEY"
    wire_names: ClassVar[dict[str, tuple[str, ...] | None]] = {
        "temperature": ("temperature",),
        "max_tokens": ("max_tokens",),
        "top_p": ("p",),
        "top_k": ("k",),
        "stop": ("stop_sequences",),
        "seed": ("seed",),
        "presence_penalty": ("presence_penalty",),
        "frequency_penalty": ("frequency_penalty",),
    }

    def model_ref(self, server: WireServer) -> dict[str, Any]:
        return {
            "provider": "cohere",
            "name": "command-r-plus-08-2024",
            "base_url": server.url,
            "max_retries": 0,
        }

    def turns(self, body: dict[str, Any]) -> list[Turn]:
        return [(m["role"], m["content"]) for m in body["messages"]]

    def declared_tools(self, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            t["function"]["name"]: t["function"]["parameters"]["properties"] for t in body["tools"]
        }

    def tool_result(self, body: dict[str, Any]) -> Any:
        call, reply = body["messages"][-2:]
        # the call goes back with its tool plan; the result as a document
        [sent] = call["tool_calls"]
        assert (call["role"], sent["id"], sent["function"]["name"]) == (
            "assistant",
            "call_1",
            "calculadora",
        )
        assert call["tool_plan"] == "I will use the calculadora tool."
        assert (reply["role"], reply["tool_call_id"]) == ("tool", "call_1")
        [document] = reply["content"]
        assert document["type"] == "document"
        return document["document"]["data"]["output"]

    def sent_schema(self, body: dict[str, Any]) -> dict[str, Any]:
        # Cohere's structured output: JSON mode constrained by the schema
        assert body["response_format"]["type"] == "json_object"
        return body["response_format"]["schema"]  # type: ignore[no-any-return]

    def params(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "temperature": body["temperature"],
            "max_tokens": body["max_tokens"],
            "top_p": body["p"],
            "stop": body["stop_sequences"],
        }

    def test_wire_shape(self, server: WireServer) -> None:
        load_chain(CHAINS / "traductor.yaml", model=self.ref(server)).invoke({"frase": "gato"})
        [request] = self.sent(server)
        assert request.path == "/v2/chat"
        assert request.headers["authorization"] == f"Bearer {SECRET}"
        body = request.body
        assert body["model"] == "command-r-plus-08-2024" and body["stream"] is False
        assert body["max_tokens"] == 32  # langchain-cohere alone would drop it
        # v2: one messages list, system first, few-shot answers as assistant turns
        assert [m["role"] for m in body["messages"]] == ["system"] + ["user", "assistant"] * 3 + [
            "user"
        ]

    def test_a_streamed_tool_call_is_assembled(self, server: WireServer) -> None:
        model = build_model(self.ref(server)).bind_tools([calculadora])
        server.replies.append(ToolCall("calculadora", {"expresion": "17*23"}))
        message = _joined(model.stream("¿17 por 23?"))
        # tool-plan-delta, tool-call-start (the name), tool-call-delta (the arguments in two
        # pieces), tool-call-end, message-end (the usage)
        assert message.tool_calls == [
            {
                "name": "calculadora",
                "args": {"expresion": "17*23"},
                "id": "call_1",
                "type": "tool_call",
            }
        ]
        assert message.usage_metadata is not None
        assert message.usage_metadata["input_tokens"] == 10
        [request] = self.sent(server)
        assert request.stream and request.body["tools"][0]["type"] == "function"

    def test_usage_counts_the_tokens_used_streamed_or_not(self, server: WireServer) -> None:
        # the server bills 8 input tokens of the 10 used (Cohere's billed_units vs tokens);
        # langchain-cohere alone reports billed units when streaming, tokens when not
        model = build_model(self.ref(server))
        server.replies.extend(["uno dos", "uno dos"])
        streamed = _joined(model.stream("hola")).usage_metadata
        invoked = model.invoke("hola").usage_metadata
        assert streamed == invoked
        assert invoked == {"input_tokens": 10, "output_tokens": 2, "total_tokens": 12}

    def test_retry_after_is_read_from_the_response(self, server: WireServer) -> None:
        _assert_retry_after(self, server)

    def test_a_chains_retry_replaces_the_sdks_own(self, server: WireServer, tmp_path: Path) -> None:
        _assert_one_retry_layer(self, server, tmp_path)

    def test_a_missing_package_names_the_extra(
        self, server: WireServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _assert_extra_named(self, server, monkeypatch)

    def test_the_sdks_own_retries_follow_max_retries(self, server: WireServer) -> None:
        # Cohere's SDK retries 429 and 5xx twice unless told otherwise (max_retries)
        chain = load_chain(CHAINS / "hola.yaml", model={**self.ref(server), "max_retries": 1})
        server.fail_next("server")
        server.replies.append("hola")
        assert chain.invoke({})["output"] == "hola"
        assert len(server.requests) == 2

    def test_a_refused_connection_fails_at_once(self, server: WireServer, closed: str) -> None:
        _assert_fails_fast({**self.ref(server), "base_url": closed}, closed + "/v2/chat")

    def test_a_connection_that_never_completes_times_out(
        self, server: WireServer, silent: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Cohere's SDK gives each request its whole timeout, which httpx applies to connecting
        _assert_connect_bounded({**self.ref(server), "base_url": silent}, monkeypatch)

    def test_a_chain_files_server_gets_no_key_unapproved(
        self, server: WireServer, tmp_path: Path
    ) -> None:
        _assert_unapproved_refused(self, server, tmp_path)


# -- shared by the Mistral, Cohere, Together and AI21 tests -------------------------------------
@pytest.fixture
def closed() -> str:
    """The URL of a loopback port nothing listens on: connecting is refused at once."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@tool
def calculadora(expresion: str) -> str:
    """Calcula una expresión aritmética."""
    return expresion


@pytest.fixture
def silent() -> Iterator[str]:
    """The URL of a loopback port whose connections never complete (its accept queue is full,
    so the system drops further connection attempts)."""
    import contextlib
    import socket
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.05)
    with socket.socket() as probe:
        probe.settimeout(0.2)
        try:
            probe.connect(("127.0.0.1", port))
        except (TimeoutError, BlockingIOError):
            pass
        else:
            pytest.skip("this system completes connections past a full accept queue")
    yield f"http://127.0.0.1:{port}"
    for sock in (*fillers, listener):
        sock.close()


def _joined(chunks: Any) -> Any:
    """A streamed reply's chunks added up into one message."""
    message = None
    for chunk in chunks:
        message = chunk if message is None else message + chunk
    assert message is not None
    return message


def _assert_retry_after(suite: ProviderConformance, server: WireServer) -> None:
    """A 429's Retry-After reaches the error and the chain's retry layer."""
    from eslabon.chat.resilience import retry_after_seconds

    chain = load_chain(CHAINS / "hola.yaml", model=suite.ref(server))
    server.fail_next("rate", retry_after="3")
    with pytest.raises(RateLimitedError, match="wait 3 s") as info:
        chain.invoke({})
    assert retry_after_seconds(info.value.__cause__) == 3.0  # the provider's own exception
    assert SECRET not in str(info.value)


def _assert_one_retry_layer(suite: ProviderConformance, server: WireServer, tmp_path: Path) -> None:
    """With ``retry:`` in the chain, the SDK's own retries are off: two attempts are two
    requests (Cohere's SDK alone would retry a 429 twice more)."""
    ref = {k: v for k, v in suite.model_ref(server).items() if k != "max_retries"}
    path = write(tmp_path, "retry: {attempts: 2, backoff: 0.01}\nprompt: hola\n")
    chain = load_chain(path, model=ref)
    server.fail_next("rate", retry_after="0")
    server.fail_next("rate", retry_after="0")
    with pytest.raises(RateLimitedError):
        chain.invoke({})
    assert len(server.requests) == 2


def _assert_extra_named(
    suite: ProviderConformance, server: WireServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without its integration package, the error names eslabon's extra that installs it."""
    import importlib.util

    from eslabon.errors import MissingDependencyError

    package = f"langchain_{suite.provider}"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a)
    )
    with pytest.raises(MissingDependencyError, match=rf"pip install 'eslabon\[{suite.provider}\]'"):
        load_chain(CHAINS / "hola.yaml", model=suite.ref(server))
    assert server.requests == []


def _assert_connect_bounded(ref: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection that never completes gives up after eslabon's connect timeout (shortened
    here to 0.3 s), not after the model's whole timeout (30 s here; the SDKs' own: 120-300 s)."""
    import threading
    import time

    import eslabon.chat.transport
    from eslabon.errors import ProviderConnectionError

    monkeypatch.setattr(eslabon.chat.transport, "CONNECT_TIMEOUT", 0.3)
    chain = load_chain(CHAINS / "hola.yaml", model={**ref, "timeout": 30})
    raised: list[BaseException] = []

    def call() -> None:
        try:
            chain.invoke({})
        except BaseException as exc:
            raised.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=call, daemon=True)  # unbounded, it would wait 30 s
    worker.start()
    worker.join(10)
    assert not worker.is_alive() and time.monotonic() - started < 4
    [error] = raised
    assert isinstance(error, ProviderConnectionError), repr(error)
    assert "no connection within 0.3 s" in str(error)


def _assert_fails_fast(ref: dict[str, Any], url: str) -> None:
    """A server that refuses the connection: eslabon's connection error at once, naming the URL
    (the integrations' own clients would wait and retry for many seconds)."""
    import time

    from eslabon.errors import ProviderConnectionError

    chain = load_chain(CHAINS / "hola.yaml", model={**ref, "max_retries": 2})
    started = time.monotonic()
    with pytest.raises(ProviderConnectionError, match="Connection refused") as info:
        chain.invoke({})
    assert time.monotonic() - started < 3
    assert info.value.url == url
    assert SECRET not in str(info.value)


def _assert_unapproved_refused(
    suite: ProviderConformance, server: WireServer, tmp_path: Path
) -> None:
    """A chain file pointing the provider at a server the user has not approved is refused
    before any request: its client would carry the key there."""
    from eslabon.chat.models import KeyNotAllowedError

    ref = json.dumps({**suite.model_ref(server)})
    path = write(tmp_path, f"model: {ref}\nprompt: hola\n")
    with pytest.raises(KeyNotAllowedError, match="--allow-endpoint") as info:
        load_chain(path).invoke({})
    assert SECRET not in str(info.value)
    assert server.requests == []


# -- Together, and OpenAI-compatible services by name (modelspec.PRESETS) ------------------------
# Together runs through langchain-together (its ChatTogether is langchain-openai's chat model on
# OpenAI's SDK); AI21 and the local servers the course names (vLLM, LM Studio, TGI, OpenVINO
# Model Server) are the openai provider at their documented base URL. All speak OpenAI's chat
# completions, so the loopback server's OpenAI protocol is theirs.
OTHER_SECRET = "sk-openai-OTHER-SECRET-987654321"  # OPENAI_API_KEY: never sent to these
SERVICES = {  # as each project documents its server (modelspec.PRESETS says the same)
    "ai21": "https://api.ai21.com/studio/v1",
    "vllm": "http://localhost:8000/v1",
    "lmstudio": "http://localhost:1234/v1",
    "tgi": "http://localhost:8080/v1",
    "ovms": "http://localhost:8000/v3",
}
LOCAL_SERVICES = [name for name in SERVICES if name != "ai21"]
OPENAI_COMPATIBLE_WIRE: dict[str, tuple[str, ...] | None] = {
    "temperature": ("temperature",),
    "max_tokens": ("max_tokens",),  # what these servers read, not max_completion_tokens
    "top_p": ("top_p",),
    "top_k": ("top_k",),
    "stop": ("stop",),
    "seed": ("seed",),
    "presence_penalty": ("presence_penalty",),
    "frequency_penalty": ("frequency_penalty",),
}


class _OpenAIShapes(ProviderConformance):
    """The conversation, tools and params in OpenAI's chat completions shapes."""

    wire = "openai"

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
        return {k: body[k] for k in ("temperature", "max_tokens", "top_p", "stop")}


NUTRICIONISTA_BODY = {
    "stream": False,
    "messages": [
        {
            "role": "system",
            "content": "Eres un nutricionista que da consejos para una dieta saludable "
            "sin mencionar carne roja.",
        },
        {"role": "user", "content": "¿Qué puedo desayunar antes de entrenar?"},
    ],
    "temperature": 0.3,
    "max_tokens": 200,
}


class TestTogether(_OpenAIShapes):
    provider, env_var = "together", "TOGETHER_API_KEY"
    wire_names = OPENAI_COMPATIBLE_WIRE  # top_k too: Together's API takes it

    def sent_schema(self, body: dict[str, Any]) -> dict[str, Any]:
        # langchain-together's default: a call forced to a tool shaped like the schema
        assert body["tool_choice"] == {"type": "function", "function": {"name": "output"}}
        [tool] = body["tools"]
        return tool["function"]["parameters"]  # type: ignore[no-any-return]

    def structured_reply(self, data: dict[str, Any]) -> str | ToolCall:
        return ToolCall("output", data)

    def model_ref(self, server: WireServer) -> dict[str, Any]:
        return {
            "provider": "together",
            "name": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "base_url": server.url + "/v1",  # ChatTogether's base URL (its default ends in /v1)
            "max_retries": 0,
        }

    def test_wire_shape(self, server: WireServer, monkeypatch: pytest.MonkeyPatch) -> None:
        from langchain_together import ChatTogether

        monkeypatch.setenv("OPENAI_API_KEY", OTHER_SECRET)
        assert isinstance(build_model(self.ref(server)), ChatTogether)  # the integration's
        load_chain(CHAINS / "nutricionista.yaml", model=self.ref(server)).invoke({})
        [request] = self.sent(server)
        assert request.path == "/v1/chat/completions"
        assert request.headers["authorization"] == f"Bearer {SECRET}"
        assert request.body == {
            "model": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            **NUTRICIONISTA_BODY,
        }

    def test_retry_after_is_read_from_the_response(self, server: WireServer) -> None:
        _assert_retry_after(self, server)

    def test_a_chains_retry_replaces_the_sdks_own(self, server: WireServer, tmp_path: Path) -> None:
        _assert_one_retry_layer(self, server, tmp_path)

    def test_a_missing_package_names_the_extra(
        self, server: WireServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _assert_extra_named(self, server, monkeypatch)

    def test_a_refused_connection_fails_at_once(self, server: WireServer, closed: str) -> None:
        _assert_fails_fast(
            {**self.ref(server), "base_url": closed + "/v1"}, closed + "/v1/chat/completions"
        )

    # no test of a connection that never completes: OpenAI's SDK, Together's client, bounds
    # connecting at 5 s by itself (as for the openai provider)

    def test_a_chain_files_server_gets_no_key_unapproved(
        self, server: WireServer, tmp_path: Path
    ) -> None:
        _assert_unapproved_refused(self, server, tmp_path)


class TestAI21(_OpenAIShapes):
    provider, env_var = "ai21", "AI21_API_KEY"
    # AI21's Jamba API documents none of these: eslabon refuses them, as for any provider
    wire_names: ClassVar[dict[str, tuple[str, ...] | None]] = {
        **OPENAI_COMPATIBLE_WIRE,
        "top_k": None,
        "seed": None,
        "presence_penalty": None,
        "frequency_penalty": None,
    }

    def model_ref(self, server: WireServer) -> dict[str, Any]:
        # the mapping's base_url replaces the preset's https://api.ai21.com/studio/v1
        return {
            "provider": "ai21",
            "name": "jamba-mini",
            "base_url": server.url + "/studio/v1",
            "max_retries": 0,
        }

    def test_structured_output_in_the_providers_format(self, server: WireServer) -> None:
        # replaces the shared test: AI21 documents JSON mode as its structured output
        # (response_format json_object, no schema sent), so the preset asks for that; the
        # schema is checked by eslabon, and an invalid answer goes back with what is wrong
        chain = load_chain(CHAINS / "extraer_persona.yaml", model=self.ref(server))
        person = {"nombre": "Ana", "edad": 30, "ciudad": "Lima", "profesion": "x", "idiomas": []}
        server.replies.extend([json.dumps({**person, "edad": "treinta"}), json.dumps(person)])
        assert chain.invoke({"texto": "Ana, 30, Lima"})["output"] == person
        first, second = self.sent(server)
        assert first.body["response_format"] == {"type": "json_object"}
        assert "edad: 'treinta' is not of type 'integer'" in self.turns(second.body)[-1][1]

    def test_wire_shape(self, server: WireServer, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OPENAI_API_KEY", OTHER_SECRET)
        result = load_chain(CHAINS / "nutricionista.yaml", model=self.ref(server)).invoke({})
        assert result["stats"]["models"] == ["ai21:jamba-mini"]  # the name written, not openai
        [request] = self.sent(server)
        assert request.path == "/studio/v1/chat/completions"  # AI21's own path
        assert request.headers["authorization"] == f"Bearer {SECRET}"
        assert request.body == {"model": "jamba-mini", **NUTRICIONISTA_BODY}

    def test_a_chain_file_sends_the_key_only_to_ai21(
        self, server: WireServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        import dataclasses

        from eslabon.chat.models import KeyNotAllowedError
        from eslabon.chat.modelspec import PRESETS

        monkeypatch.setenv("OPENAI_API_KEY", OTHER_SECRET)
        elsewhere = f"{{provider: ai21, name: jamba-mini, base_url: '{server.url}/studio/v1'}}"
        load_chain(write(tmp_path, f"model: {elsewhere}\nprompt: hola\n")).invoke({})
        # AI21's own host, as far as this test is concerned: the loopback server
        home = dataclasses.replace(PRESETS["ai21"], base_url=server.url + "/studio/v1")
        monkeypatch.setitem(PRESETS, "ai21", home)
        load_chain(write(tmp_path, "model: ai21:jamba-mini\nprompt: hola\n")).invoke({})
        away, at_home = (r.headers["authorization"] for r in self.sent(server))
        assert away == "Bearer not-needed"  # a server you did not approve gets no key
        assert at_home == f"Bearer {SECRET}"  # AI21's key at AI21, with no allowance
        # another variable goes nowhere it is not paired with, AI21 included
        other = "{provider: ai21, name: jamba-mini, api_key_env: OPENAI_API_KEY}"
        with pytest.raises(KeyNotAllowedError, match="--allow-key OPENAI_API_KEY@") as info:
            load_chain(write(tmp_path, f"model: {other}\nprompt: hola\n")).invoke({})
        assert OTHER_SECRET not in str(info.value)
        assert len(server.requests) == 2

    def test_a_refused_placeholder_says_the_key_was_withheld(
        self, server: WireServer, tmp_path: Path
    ) -> None:
        ref = f"{{provider: ai21, name: jamba-mini, base_url: '{server.url}/studio/v1'}}"
        chain = load_chain(write(tmp_path, f"model: {ref}\nprompt: hola\n"))
        server.fail_next("auth")
        with pytest.raises(KeyRejectedError) as info:
            chain.invoke({})
        message = str(info.value)
        assert "eslabon did not send AI21_API_KEY" in message and "--allow-endpoint" in message
        assert SECRET not in message

    def test_retry_after_is_read_from_the_response(self, server: WireServer) -> None:
        _assert_retry_after(self, server)

    def test_a_chains_retry_replaces_the_sdks_own(self, server: WireServer, tmp_path: Path) -> None:
        _assert_one_retry_layer(self, server, tmp_path)


class TestVLLM(_OpenAIShapes):
    """The local servers' conformance, on vLLM (LM Studio, TGI, OpenVINO Model Server differ
    only in their URL: the parametrized tests below run each)."""

    provider, env_var = "vllm", None
    wire_names = OPENAI_COMPATIBLE_WIRE

    def model_ref(self, server: WireServer) -> dict[str, Any]:
        return {
            "provider": "vllm",
            "name": "Qwen/Qwen2.5-1.5B-Instruct",
            "base_url": server.url + "/v1",
            "max_retries": 0,
        }

    def test_wire_shape(self, server: WireServer, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OPENAI_API_KEY", OTHER_SECRET)  # the user's, never a local server's
        load_chain(CHAINS / "nutricionista.yaml", model=self.ref(server)).invoke({})
        [request] = self.sent(server)
        assert request.headers["authorization"] == "Bearer not-needed"
        assert request.body == {"model": "Qwen/Qwen2.5-1.5B-Instruct", **NUTRICIONISTA_BODY}


@pytest.mark.parametrize("name", SERVICES)
def test_a_service_is_the_openai_provider_at_its_documented_url(name: str) -> None:
    from eslabon.chat.modelspec import parse_model_ref

    spec = parse_model_ref(f"{name}:modelo")
    assert (spec.provider, spec.name, spec.label) == ("openai", "modelo", f"{name}:modelo")
    assert spec.kwargs["base_url"] == SERVICES[name]
    assert spec.info.env_var == ("AI21_API_KEY" if name == "ai21" else None)
    mapped = parse_model_ref({"provider": name, "name": "m", "base_url": "http://gpu1:9/v1"})
    assert mapped.kwargs["base_url"] == "http://gpu1:9/v1"  # the mapping's own wins
    pool = parse_model_ref({"provider": name, "name": "m", "base_urls": ["http://a/v1"]})
    assert "base_url" not in pool.kwargs  # a pool replaces the one URL


def test_openvino_names_the_model_server() -> None:
    from eslabon.chat.modelspec import parse_model_ref

    assert parse_model_ref("openvino:qwen").label == "ovms:qwen"


@pytest.mark.parametrize("name", LOCAL_SERVICES)
def test_a_local_service_runs_a_chain_file_and_gets_no_key(
    name: str, server: WireServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``vllm:MODEL`` in a chain file, with no allowance, reaches the service's own URL
    (rewritten to the loopback server, its path kept), streams, and gets no key."""
    import dataclasses
    from urllib.parse import urlsplit

    from eslabon.chat.modelspec import PRESETS

    path = urlsplit(SERVICES[name]).path  # /v1, or OpenVINO Model Server's /v3
    monkeypatch.setitem(
        PRESETS, name, dataclasses.replace(PRESETS[name], base_url=server.url + path)
    )
    monkeypatch.setenv("OPENAI_API_KEY", OTHER_SECRET)
    chain = load_chain(write(tmp_path, f"model: {name}:qwen2.5\nprompt: hola\n"))
    server.replies.append("uno dos")
    chunks = list(chain.stream({}))
    assert [c["output"] for c in unmetered_chunks(chunks)] == ["uno ", "dos"]
    stats = chunks[-1]["stats"]
    assert stats["models"] == [f"{name}:qwen2.5"] and stats["usage"]["output_tokens"] == 2
    assert stats["cost"] is None  # its price is unknown unless [prices] says
    [request] = server.requests
    assert request.path == f"{path}/chat/completions" and request.stream
    assert request.headers["authorization"] == "Bearer not-needed"
    assert request.body["model"] == "qwen2.5"


@pytest.mark.parametrize("name", SERVICES)
def test_prices_of_a_service_come_from_the_project(
    name: str, server: WireServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AI21_API_KEY", SECRET)
    ref = {"provider": name, "name": "m", "base_url": server.url + "/v1", "max_retries": 0}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eslabon.toml").write_text(
        f'[prices]\n"{name}:m" = {{input = 1.0, output = 2.0}}\n', encoding="utf-8"
    )
    server.replies.append("uno dos")
    stats = load_chain(CHAINS / "hola.yaml", model=ref).invoke({"nombre": "x"})["stats"]
    assert stats["cost"] == pytest.approx((10 * 1.0 + 2 * 2.0) / 1e6)  # by the name shown


@pytest.mark.parametrize("name", LOCAL_SERVICES)
def test_a_local_service_that_is_not_running_says_how_to_start_it(
    name: str, closed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eslabon.chat.modelspec import PRESETS
    from eslabon.errors import ProviderConnectionError

    ref = {"provider": name, "name": "m", "base_url": closed + "/v1", "max_retries": 0}
    with pytest.raises(ProviderConnectionError) as info:
        load_chain(CHAINS / "hola.yaml", model=ref).invoke({"nombre": "x"})
    message = str(info.value)
    assert f"could not connect to {name}:m" in message
    assert f"start it with `{PRESETS[name].serve}`" in message


@pytest.mark.parametrize("name", LOCAL_SERVICES)
def test_a_chain_file_may_not_send_another_key_to_a_local_service(
    name: str, server: WireServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from eslabon.chat.models import KeyNotAllowedError

    monkeypatch.setenv("MI_LLAVE", OTHER_SECRET)
    ref = f"{{provider: {name}, name: m, base_url: '{server.url}/v1', api_key_env: MI_LLAVE}}"
    with pytest.raises(KeyNotAllowedError, match="--allow-key MI_LLAVE@") as info:
        load_chain(write(tmp_path, f"model: {ref}\nprompt: hola\n")).invoke({})
    assert OTHER_SECRET not in str(info.value) and server.requests == []


def test_mistakes_about_services_say_what_to_write() -> None:
    from eslabon.chat.modelspec import check_model_ref

    assert check_model_ref("jamba-mini") == (
        "unknown model 'jamba-mini': write 'provider:model' or an alias",
        "did you mean 'ai21:jamba-mini'?",
    )
    message, hint = check_model_ref("ai2:jamba-mini") or ("", "")
    assert message == "unknown provider 'ai2'" and hint.startswith("did you mean 'ai21'?")
    assert hint.endswith("OpenAI-compatible services: ai21, vllm, lmstudio, tgi, ovms")
    assert check_model_ref("vllm") == (
        "provider 'vllm' needs a model name",
        "e.g. 'vllm:MODEL-NAME'",
    )
