"""Chat models run in-process by Hugging Face ``transformers`` (the ``huggingface:`` provider).

Why not langchain-huggingface's ``ChatHuggingFace`` over ``HuggingFacePipeline`` (1.2.3,
checked): it has no async path for a pipeline (its ``_agenerate`` raises
``NotImplementedError``, and ``eslabon test`` and ``batch`` run on ``ainvoke``), reports no
usage, fixes generation settings when the pipeline is built (a call's ``temperature`` or
``max_tokens`` does not reach it), and has no tool calls or structured output a small model can
follow. This adapter has the shape of :mod:`eslabon.chat.local`: the model's own chat template
(``apply_chat_template``), every param per call, usage on every path, streaming token by token,
tool calls and structured output decoded under a JSON Schema.

Weights: a folder (``config.json`` and weights), a ``.gguf`` file (transformers de-quantizes it,
with the ``gguf`` package), or a Hugging Face id already in the local cache. Nothing is
downloaded unless ``download`` is on (the user's own eslabon.toml or code — a chain file cannot
turn it on) and ``HF_HUB_OFFLINE`` is not set.

Constrained decoding: lm-format-enforcer (``TokenEnforcer`` + ``JsonSchemaParser``) filters the
tokens each step may take. Chosen over outlines (1.x): pure Python with two small dependencies,
a per-token filter that plugs into ``generate`` as ``prefix_allowed_tokens_fn``, where outlines
brings its own Rust core and model wrappers. Its ``integrations.transformers`` module does not
import on transformers 5 (it imports names transformers removed), so the token table it needs
is built here (:func:`_token_table`, the same few lines).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import secrets
import threading
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, model_validator

from eslabon.chat.inprocess import (
    Constraint,
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

__all__ = ["ChatTransformers", "free_models", "load_model", "prompt_payload", "quiet_peft"]
DTYPES = ("auto", "float32", "float16", "bfloat16")
_MAX_SEED = 2**32 - 1


@dataclass
class _Loaded:
    """A model and its tokenizer, loaded once per (source, file, device, dtype); calls take
    ``lock`` (one generation at a time: they would share the CPU anyway)."""

    model: Any
    tokenizer: Any
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    table: Any = None  # lm-format-enforcer's token table, built at the first constrained call
    digits: frozenset[int] = frozenset()  # tokens whose text begins with a digit


_LOADED: dict[tuple[str, str | None, str, str, str | None], _Loaded] = {}
_LOAD_LOCK = threading.Lock()


def free_models() -> None:
    """Forget every loaded model (their memory is freed when nothing else holds them)."""
    with _LOAD_LOCK:
        _LOADED.clear()


def _device(wanted: str, torch: Any) -> str:
    """The device to load on; one torch cannot use is said before the (long) load."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"device: {wanted}, but this torch sees no CUDA GPU\n    fix: device: auto (a GPU "
            "when there is one) or cpu"
        )
    if wanted == "mps" and not has_mps:
        raise UserError("device: mps, but this torch has no MPS backend\n    fix: device: auto")
    if wanted != "auto":
        return wanted
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if has_mps else "cpu"


def _offline(download: bool) -> bool:
    """Whether to read the local files only: unless downloads are allowed, and even then when
    the user set ``HF_HUB_OFFLINE``."""
    return not download or os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0")


def _load(
    source: str,
    gguf_file: str | None,
    device: str,
    dtype: str,
    download: bool,
    adapter: str | None = None,
) -> _Loaded:
    """The model, loaded once per (source, file, device, dtype, adapter)."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            "Running models with transformers", "huggingface", "transformers torch"
        ) from None
    where = _device(device, torch)  # said before the (long) load; "auto" and "cpu" are one
    # an adapter tuned again into the same folder is another model: its weights' time says so
    key = (source, gguf_file, where, dtype, adapter and f"{adapter}@{_written(adapter)}")
    if (loaded := _LOADED.get(key)) is not None:  # no wait behind another model's load
        return loaded
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        plain = _LOADED.get((source, gguf_file, where, dtype, None))
        if adapter is not None and plain is not None:
            # the base is loaded already: a copy is far quicker than reading it again (a GGUF
            # is de-quantized on every load), and the adapter is merged into the copy
            model, tokenizer = copy.deepcopy(plain.model), plain.tokenizer
        else:
            model, tokenizer, _ = load_model(source, gguf_file, where, dtype, download)
        if adapter is not None:
            model = _with_adapter(model, adapter)
        model.eval()
        _LOADED[key] = _Loaded(model, tokenizer, where)
        return _LOADED[key]


def _written(adapter: str) -> int:
    """When the adapter's weights were last written (0: not found; its load will say so)."""
    from eslabon.chat.adapter import WEIGHTS

    for name in WEIGHTS:
        try:
            return (Path(adapter) / name).stat().st_mtime_ns
        except OSError:
            continue
    return 0


def load_model(
    source: str, gguf_file: str | None, device: str, dtype: str, download: bool
) -> tuple[Any, Any, str]:
    """A fresh ``(model, tokenizer, device)`` on that device (``eslabon tune`` trains one)."""
    try:
        import torch
        import transformers as _transformers
    except ImportError:
        raise MissingDependencyError(
            "Running models with transformers", "huggingface", "transformers torch"
        ) from None
    transformers: Any = _transformers  # partly untyped: used through its documented calls
    if gguf_file and importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError("Reading a GGUF file with transformers", "huggingface", "gguf")
    where = _device(device, torch)
    # model loading prints progress bars and notices on stderr: eslabon's output is its own
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if gguf_file:
        _quiet_gguf_progress()
    options: dict[str, Any] = {"local_files_only": _offline(download)}
    if gguf_file:
        options["gguf_file"] = gguf_file
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **options)
        model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **options)
    except OSError as exc:
        raise _not_found(source, gguf_file, options["local_files_only"], exc) from None
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"could not load {source}: {exc}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            f"{source} has no chat template: eslabon sends chat messages\n"
            "    fix: use the model's instruct (chat) version"
        )
    model.to(where)
    return model, tokenizer, where


@contextmanager
def quiet_peft() -> Iterator[None]:
    """peft and transformers warn, on stderr, about things eslabon has settled: a GGUF folder
    has no config.json for peft to compare the vocabulary with (eslabon checks the base by its
    hash: :mod:`eslabon.chat.adapter`), and transformers 5 renamed a helper peft still calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated")
        warnings.filterwarnings("ignore", message="Could not find a config file in")
        yield


def _with_adapter(model: Any, adapter: str) -> Any:
    """``model`` with a LoRA adapter merged into its weights: as fast as the model alone."""
    try:
        import peft
    except ImportError:
        raise MissingDependencyError("LoRA adapters", "huggingface", "peft") from None
    try:
        with quiet_peft():
            tuned = peft.PeftModel.from_pretrained(model, adapter)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:  # missing files, wrong shapes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"could not apply the adapter {adapter}: {first}\n    fix: an adapter trained on "
            "this model (eslabon tune writes one with its manifest)"
        ) from None
    return tuned.merge_and_unload()


def _quiet_gguf_progress() -> None:
    """transformers de-quantizes a GGUF under a plain tqdm bar that its own switch
    (``disable_progress_bar``) does not reach: that module's bar, turned off."""
    import functools
    import importlib

    module: Any = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    bar = getattr(module, "tqdm", None)
    if bar is not None and not isinstance(bar, functools.partial):
        module.tqdm = functools.partial(bar, disable=True)


def _not_found(source: str, gguf_file: str | None, offline: bool, exc: OSError) -> ModelError:
    what = f"{source}/{gguf_file}" if gguf_file else source
    from eslabon.chat.modelspec import HUB_ID

    if HUB_ID.match(source) and not Path(source).exists():
        how = (
            f"download it once (`hf download {source}`), or allow eslabon to: download = true "
            "in the model's alias in eslabon.toml"
            if offline
            else "check the name, your network and HF_TOKEN for gated models"
        )
        return ModelError(
            f"model {source} is not in the Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')})"
            + (" and eslabon does not download models unless allowed" if offline else "")
            + f"\n    fix: {how}"
        )
    return ModelError(
        f"no model at {what}: {exc}\n    fix: give a folder with config.json and the weights, "
        "or a .gguf file"
    )


def _token_table(tokenizer: Any) -> tuple[Any, frozenset[int]]:
    """lm-format-enforcer's table of the vocabulary — each token's text alone and after another
    token (so word-start tokens are known), as its transformers integration builds it — and the
    tokens that begin with a digit (see :data:`_MAX_DIGITS`)."""
    from lmformatenforcer import TokenEnforcerTokenizerData

    zero = tokenizer.encode("0")[-1]
    special = set(tokenizer.all_special_ids)
    regular, digits = [], set()
    for token in range(len(tokenizer)):
        if token in special:
            continue
        alone = tokenizer.decode([token])
        after = tokenizer.decode([zero, token])[1:]
        regular.append((token, after, len(after) > len(alone)))
        if alone[:1].isdigit():
            digits.add(token)

    alphabet: set[str] = set()

    def decode(tokens: list[int]) -> str:
        # the text the JSON parser reads. A character outside its alphabet (the characters
        # tokens begin with) ends the string, and the object, there: "你" is two partial-UTF-8
        # tokens of a byte-level vocabulary, each "\ufffd" in the table. So such a character
        # reaches it as one "\ufffd" (lengths still count); the reply is decoded apart
        text = str(tokenizer.decode(tokens)).rstrip("\ufffd")
        return "".join(c if c in alphabet else "\ufffd" for c in text)

    table = TokenEnforcerTokenizerData(
        regular, decode, tokenizer.eos_token_id, False, len(tokenizer)
    )
    alphabet.update(table.tokenizer_alphabet)
    return table, frozenset(digits)


# lm-format-enforcer lets a number run on for ever, and a small model writes 30-digit integers
# until max_tokens cuts the JSON short: at most this many digits in a row (as llama.cpp's JSON
# grammar, which stops integers at 16)
_MAX_DIGITS = 16
_SAMPLING = threading.Lock()  # torch's random generator is the process's: one sampler at a time


def _in_string(text: str) -> bool:
    """Whether JSON ``text`` ends inside a string (an odd count of unescaped quotes)."""
    inside, escaped = False, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = inside
        elif char == '"':
            inside = not inside
    return inside


_DIGIT_RUN = re.compile(rf"\d{{{_MAX_DIGITS}}}$")


class ChatTransformers(BindsTools, JsonModeOutput, BaseChatModel):
    """A chat model run in-process by transformers (``model: huggingface:PATH_OR_ID``).

    Tool choice (``bind_tools``) and structured output (``with_structured_output``) are decoded
    under the JSON Schema, as on ``local``: replies always parse. Unknown keywords are refused
    (``api_key=``, ``timeout=``: nothing here connects to anything)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    can_stream: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = True  # through JSON-Schema-constrained tool selection

    model: str  # a folder, or a Hugging Face id in the local cache
    gguf_file: str | None = None  # a .gguf file in that folder
    adapter: str | None = None  # a LoRA adapter folder (peft's format), merged at load
    device: str = "auto"  # cpu, cuda, cuda:1, mps; auto: a GPU when torch sees one
    torch_dtype: str = "auto"
    download: bool = False  # fetch a Hugging Face id missing from the cache
    temperature: float = 0.2
    max_tokens: int | None = 512  # transformers' max_new_tokens
    top_p: float = 0.95
    top_k: int = 40
    # transformers' repetition_penalty, which weighs the whole sequence, prompt included:
    # above 1 it keeps the model from copying from its prompt (a name to extract, a number for
    # a tool), so off by default, as transformers has it (llama.cpp weighs the last 64 tokens)
    repeat_penalty: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None
    streaming: bool = False  # LangChain's switch: invoke() streams too (callbacks see tokens)

    @model_validator(mode="before")
    @classmethod
    def _known_keywords(cls, data: Any) -> Any:
        why = "it runs the model in-process (no server, no key, no timeout, no retries)"
        refuse_unknown(data, cls.model_fields, "ChatTransformers", why)
        if isinstance(data, dict) and data.get("torch_dtype", "auto") not in DTYPES:
            raise ValueError(f"torch_dtype must be one of {', '.join(DTYPES)}")
        return data

    @property
    def _llm_type(self) -> str:
        return "transformers"

    @property
    def name_shown(self) -> str:
        return self.gguf_file or self.model

    @property
    def _identifying_params(self) -> dict[str, Any]:
        # no per-call seed here: LangChain's cache keys on these
        return {
            "model": self.model,
            "gguf_file": self.gguf_file,
            "adapter": self.adapter,
            **self._params(),
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """What LangSmith and tracing callbacks record about a call."""
        return ls_params(self, "huggingface", self.name_shown, stop, kwargs)

    def _params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repeat_penalty": self.repeat_penalty,
            "stop": stop or self.stop or [],
            "seed": self.seed,
        }
        params.update({k: v for k, v in kwargs.items() if k in params and v is not None})
        return params

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Tools chosen under a JSON Schema (``tool_choice``: "auto", "any"/"required", a
        tool's name, "none"), as on ``local``."""
        if kwargs.get("tool_choice") == "none":
            return cast("Runnable[LanguageModelInput, AIMessage]", self.bind())
        return super().bind_tools(tools, **kwargs)

    def _loaded(self) -> _Loaded:
        return _load(
            self.model, self.gguf_file, self.device, self.torch_dtype, self.download, self.adapter
        )

    def count_message_tokens(self, messages: list[BaseMessage]) -> int:
        """Tokens these messages take in this model's chat template (for history trimming)."""
        loaded = self._loaded()
        payload = [chat_payload(m) for m in messages]
        ids = loaded.tokenizer.apply_chat_template(payload, tokenize=True)
        return len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    # -- one generation -----------------------------------------------------------------------
    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> _Request:
        if (model := kwargs.get("model")) is not None and model not in (
            self.model,
            self.name_shown,
        ):
            raise UserError(
                f"ChatTransformers runs {self.name_shown}: a call's model={model!r} cannot "
                "switch it\n    fix: make another model (model: huggingface:PATH_OR_ID)"
            )
        loaded = self._loaded()
        found = constraint(messages, kwargs)
        payload = prompt_payload(messages, found)
        params = self._params(stop, **kwargs)
        return _Request(self, loaded, payload, params, found.schema, found.tool_json)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = self._request(messages, stop, kwargs)
        with request.loaded.lock:
            text, usage, finish = request.run()
        content, calls = (
            tool_reply(text, request.max_tokens, f"the model {self.name_shown}")
            if request.tool_json
            else (text, [])
        )
        message = AIMessage(
            content=content,
            tool_calls=calls,
            usage_metadata=usage,
            response_metadata={"finish_reason": finish, "model_name": self.name_shown},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        if request.schema is not None:
            # a constrained reply means something only whole (a tool call, one JSON value)
            whole = self._generate(messages, stop, run_manager, **kwargs).generations[0].message
            assert isinstance(whole, AIMessage)
            yield whole_chunk(whole)
            return
        with request.loaded.lock:
            pieces = request.stream()
            try:
                for piece in pieces:
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                    if run_manager:
                        run_manager.on_llm_new_token(piece, chunk=chunk)
                    yield chunk
            finally:
                pieces.close()  # the consumer stopped early: end the generation too
        # the last chunk carries the whole call's usage, as OpenAI's does
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=request.usage,
                response_metadata={"finish_reason": request.finish, "model_name": self.name_shown},
            )
        )


def prompt_payload(messages: list[BaseMessage], found: Constraint) -> list[dict[str, str]]:
    """The chat-template messages a call sends (``eslabon tune`` trains on the same)."""
    return with_system([chat_payload(m) for m in messages], found.system)


class _Request:
    """One call's generation: its prompt, settings and constraint; run whole (:meth:`run`) or
    streamed (:meth:`stream`, then :attr:`usage` and :attr:`finish`). Call with the loaded
    model's lock held."""

    def __init__(
        self,
        owner: ChatTransformers,
        loaded: _Loaded,
        payload: list[dict[str, str]],
        params: dict[str, Any],
        schema: dict[str, Any] | None,
        tool_json: bool,
    ) -> None:
        self.owner, self.loaded, self.schema, self.tool_json = owner, loaded, schema, tool_json
        self.max_tokens: int | None = params["max_tokens"]
        self.stops: list[str] = [s for s in params["stop"] if s]
        self.params = params
        self.payload = payload
        self.usage: UsageMetadata | None = None
        self.finish: str | None = None

    def _inputs(self) -> Any:
        tokenizer = self.loaded.tokenizer
        encoded = tokenizer.apply_chat_template(
            self.payload, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        prompt = int(encoded["input_ids"].shape[1])
        window = getattr(self.loaded.model.config, "max_position_embeddings", None)
        if window and prompt + (self.max_tokens or 0) > window:
            raise ContextLengthError(
                f"the prompt ({prompt} tokens) and max_tokens={self.max_tokens} do not fit the "
                f"context window of {self.owner.name_shown} ({window} tokens)\n"
                "    fix: shorten the inputs or lower max_tokens",
                "huggingface",
            )
        return encoded.to(self.loaded.device)

    def _settings(self, prompt: int, cancelled: threading.Event | None = None) -> dict[str, Any]:
        import transformers

        tokenizer = self.loaded.tokenizer
        temperature = float(self.params["temperature"] or 0)
        settings: dict[str, Any] = {
            "max_new_tokens": self.max_tokens or 512,
            "repetition_penalty": self.params["repeat_penalty"],
            "pad_token_id": (
                tokenizer.pad_token_id
                if tokenizer.pad_token_id is not None
                else tokenizer.eos_token_id
            ),
            "do_sample": temperature > 0,
        }
        if temperature > 0:  # greedy otherwise: sampling settings would only warn
            settings.update(
                temperature=temperature, top_p=self.params["top_p"], top_k=self.params["top_k"]
            )
        criteria = transformers.StoppingCriteriaList()
        if self.stops:
            criteria.append(transformers.StopStringCriteria(tokenizer, self.stops))
        if self.schema is not None:
            settings["prefix_allowed_tokens_fn"] = self._enforcer(prompt)
            criteria.append(_JsonDone(tokenizer, prompt))  # not its trailing whitespace
        if cancelled is not None:
            criteria.append(_Cancelled(cancelled))
        settings["stopping_criteria"] = criteria
        return settings

    def _generate(self, settings: dict[str, Any], **extra: Any) -> Any:
        """``generate``: a sampling call under the process's sampling lock with its own seed —
        the given one or fresh entropy, as on local — since torch's generator is one for the
        whole process (two models sampling at once would reseed each other)."""
        if not settings.get("do_sample"):
            return self.loaded.model.generate(**settings, **extra)
        import torch

        seed = self.params["seed"]
        with _SAMPLING:
            torch.manual_seed(seed if seed is not None else secrets.randbelow(_MAX_SEED))
            return self.loaded.model.generate(**settings, **extra)

    def _enforcer(self, prompt: int) -> Callable[[int, Any], list[int]]:
        try:
            from lmformatenforcer import JsonSchemaParser, TokenEnforcer
        except ImportError:
            raise MissingDependencyError(
                "Tool calls and structured output with transformers",
                "huggingface",
                "lm-format-enforcer",
            ) from None
        from lmformatenforcer import CharacterLevelParserConfig

        loaded = self.loaded
        if loaded.table is None:
            loaded.table, loaded.digits = _token_table(loaded.tokenizer)
        # strings bounded so the JSON closes within max_tokens (as local's grammar). The
        # vocabulary's alphabet from the start: the parser keeps the one it is built with for a
        # string short of its minLength (by default ASCII without spaces: no "Ñ", no "\ufffd"
        # piece). TokenEnforcer then sets a config of its own (this alphabet, the default 12
        # whitespaces in a row: 4 left the small model's objects worse)
        schema = bounded_schema(self.schema, string_cap(self.schema, self.max_tokens))
        config = CharacterLevelParserConfig(alphabet=loaded.table.tokenizer_alphabet)
        enforcer = TokenEnforcer(loaded.table, JsonSchemaParser(schema, config=config))
        tokenizer, digits = loaded.tokenizer, loaded.digits

        def allowed(batch: int, sent: Any) -> list[int]:
            tokens = sent.tolist()
            found = list(enforcer.get_allowed_tokens(tokens).allowed_tokens)
            if _DIGIT_RUN.search(tokenizer.decode(tokens[-_MAX_DIGITS:])):
                reply = tokenizer.decode(tokens[prompt:])
                if not _in_string(reply):  # a number, not digits inside a text
                    found = [t for t in found if t not in digits] or found
            return found

        return allowed

    def _finish(self, prompt: int, generated: Any) -> None:
        """The usage and finish reason of a generation's new tokens (the end-of-text token
        not counted, as llama.cpp does not count it)."""
        tokenizer = self.loaded.tokenizer
        ends = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
        tokens = [int(t) for t in generated]
        ended = bool(tokens) and tokens[-1] in ends
        while tokens and tokens[-1] in ends:
            tokens.pop()
        output = len(tokens)
        self.usage = UsageMetadata(
            input_tokens=prompt, output_tokens=output, total_tokens=prompt + output
        )
        if self.finish is None:
            self.finish = "stop" if ended or output < (self.max_tokens or 512) else "length"

    def run(self) -> tuple[str, UsageMetadata, str | None]:
        encoded = self._inputs()
        prompt = int(encoded["input_ids"].shape[1])
        out = self._generate({**encoded, **self._settings(prompt)})
        generated = out[0][prompt:]
        text = self.loaded.tokenizer.decode(generated, skip_special_tokens=True)
        if (cut := first_stop(text, self.stops)) is not None:
            text, self.finish = text[:cut], "stop"
        self._finish(prompt, generated)
        assert self.usage is not None
        return (text.strip() if self.schema is not None else text), self.usage, self.finish

    def stream(self) -> Generator[str, None, None]:
        """The reply's text as it is generated (stop strings held back until known, cut at
        the first); :attr:`usage` and :attr:`finish` are set once it ends."""
        import transformers

        encoded = self._inputs()
        prompt = int(encoded["input_ids"].shape[1])
        tokenizer = self.loaded.tokenizer
        streamer: Any = transformers.TextIteratorStreamer(
            tokenizer, skip_prompt=True, skip_special_tokens=True
        )
        cancelled = threading.Event()
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                settings = {**encoded, **self._settings(prompt, cancelled)}
                result["out"] = self._generate(settings, streamer=streamer)
            except BaseException as exc:  # raised in the caller's thread, below
                result["error"] = exc
                streamer.end()

        thread = threading.Thread(target=work, name="eslabon-transformers", daemon=True)
        thread.start()
        ended = False
        try:
            yield from self._until_stop(streamer, cancelled)
            ended = self.finish is None  # no stop string: the streamer said it is over
        finally:
            cancelled.set()
            if not ended:  # left early: wait for generate's last pieces, and its end
                for _ in streamer:
                    pass
            thread.join()
        if "error" in result:
            raise result["error"]
        self._finish(prompt, result["out"][0][prompt:])

    def _until_stop(self, pieces: Iterator[str], cancelled: threading.Event) -> Iterator[str]:
        """``pieces`` up to the first stop string; text that may begin one is held back until
        the next piece says whether it does."""
        held = ""
        for piece in pieces:
            held += piece
            if (cut := first_stop(held, self.stops)) is not None:
                held, self.finish = held[:cut], "stop"
                cancelled.set()
            ready = held if self.finish else held[: len(held) - partial_stop(held, self.stops)]
            held = held[len(ready) :]
            if ready:
                yield ready
            if self.finish:
                return
        if held:
            yield held


class _JsonDone:
    """Stops a constrained generation once its JSON object or array is whole: the schema's
    parser lets whitespace follow, and a small model fills max_tokens with newlines."""

    def __init__(self, tokenizer: Any, prompt: int) -> None:
        self.tokenizer, self.prompt = tokenizer, prompt

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        text = self.tokenizer.decode(input_ids[0][self.prompt :], skip_special_tokens=True)
        text = text.strip()
        done = bool(text) and text[-1] in "}]"
        if done:
            try:
                json.loads(text, strict=False)
            except ValueError:
                done = False
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class _Cancelled:
    """Stops a streamed generation whose reader has gone (or hit a stop string)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        flag = self.event.is_set()
        return torch.full((input_ids.shape[0],), flag, dtype=torch.bool, device=input_ids.device)
