"""The chain file format (version 1) as pydantic models.

This module imports pydantic and nothing heavy: ``eslabon validate`` and ``eslabon schema``
use it without loading LangChain or any provider SDK. It is the bottom of the format: of eslabon
it imports only the words of its errors (:mod:`eslabon.errors`,
:mod:`eslabon.chainfile.schema_errors`); loading (:mod:`eslabon.chainfile.loader`), checking
(:mod:`eslabon.chainfile.checks`) and compiling live above it (docs/architecture.md). The lists
of keys the checks use are read from the models below.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from eslabon.chainfile.schema_errors import problems_from_validation
from eslabon.errors import ChainConfigError

__all__ = [
    "ASSERTION_KINDS",
    "SCHEMA_URL_COMMENT",
    "Assertion",
    "Chain",
    "ExampleFile",
    "ExamplePair",
    "InputSpec",
    "ModelMapping",
    "Params",
    "PydanticSchemaRef",
    "Retry",
    "Selector",
    "Step",
    "TestCase",
    "TestFile",
    "json_schema",
]

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
SCHEMA_URL_COMMENT = "# yaml-language-server: $schema=../docs/chain.schema.json"
SELECTOR_TYPES = ("all", "length", "ngram", "semantic", "mmr")


@dataclass(frozen=True)
class Marker:
    """What a field is for, in its ``Annotated`` metadata: the key lists below and eslabon's
    checks read it (pydantic ignores it, and the JSON Schema does not show it)."""

    name: str


TEMPLATE = Marker("template")  # a {name} template, checked against the names in scope
NETWORK = Marker("network")  # a model setting of providers reached over the network
LOCAL = Marker("local")  # a model setting of in-process models (local, llamacpp)
HF = Marker("huggingface")  # a model setting of transformers models (huggingface)
FAKE = Marker("fake")  # a setting of the fake provider


def marked(model: type[BaseModel], marker: Marker) -> tuple[str, ...]:
    """The fields of ``model`` that carry ``marker``, in the order they are declared."""
    return tuple(k for k, f in model.model_fields.items() if marker in f.metadata)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Params(_Strict):
    """Generation parameters, the same names for every provider."""

    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, gt=0, description="Maximum tokens to generate.")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, gt=0)
    stop: list[Annotated[str, Field(min_length=1)]] | Annotated[str, Field(min_length=1)] | None = (
        Field(None, description="Stop sequences (one or a list; never empty text).")
    )
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)

    @field_validator("stop")
    @classmethod
    def _one_stop(cls, value: list[str] | str | None) -> list[str] | None:
        return [value] if isinstance(value, str) else value

    def set_values(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


PARAM_NAMES = tuple(Params.model_fields)
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _http_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL; write e.g. http://127.0.0.1:8000/v1")
    return value


HttpUrl = Annotated[
    str,
    AfterValidator(_http_url),
    WithJsonSchema({"type": "string", "format": "uri", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"}),
]


class ModelMapping(Params):
    """``{provider, name, ...}``: params and the few settings a chain file may give a model.

    A chain file cannot set how eslabon connects beyond ``base_url`` (which never receives a
    key the user has not approved, see docs/security.md): other constructor settings (headers,
    proxies, clients, ...) belong in an alias in the user's own eslabon.toml.
    """

    unknown_key_hint: ClassVar[str] = (
        "other settings of the model's class can only be given in an alias in your eslabon.toml "
        "(a chain file cannot change how eslabon connects)"
    )

    provider: str = Field(description="Provider, e.g. openai, google_genai, local, llamacpp, fake.")
    name: str | None = Field(None, description="Model name (a GGUF path for llamacpp).")
    # Each setting is marked with the providers that take it (provider_settings below).
    base_url: Annotated[HttpUrl | None, NETWORK] = Field(
        None,
        description="An OpenAI-compatible (or Ollama, ...) server. Keys go there only if the "
        "user approves it (--allow-endpoint, [allow] endpoints).",
    )
    base_urls: Annotated[list[HttpUrl] | None, NETWORK] = Field(
        None, min_length=1, max_length=64, description="Several servers of one model (a pool)."
    )
    per_endpoint_concurrency: Annotated[int | None, NETWORK] = Field(None, ge=1, le=1024)
    api_key_env: Annotated[str | None, NETWORK] = Field(
        None,
        pattern=ENV_NAME_PATTERN,
        description="Environment variable holding the key; the user must approve sending it "
        "to this host ([allow] keys).",
    )
    api_key: Annotated[str | None, NETWORK] = Field(
        None, description="A literal key: discouraged (validate warns); use api_key_env."
    )
    timeout: Annotated[float | None, NETWORK] = Field(
        None, gt=0, le=3600, description="Seconds per request."
    )
    max_retries: Annotated[int | None, NETWORK] = Field(
        None, ge=0, le=20, description="The SDK's own retries."
    )
    structured_method: Annotated[
        Literal["json_schema", "function_calling", "json_mode"] | None, NETWORK
    ] = None
    extra_body: Annotated[dict[str, Any] | None, NETWORK] = Field(
        None, description="Extra JSON fields for OpenAI-compatible servers."
    )
    responses: Annotated[list[str] | None, FAKE] = Field(
        None, description="fake provider: the replies, in turn."
    )
    n_ctx: Annotated[int | None, LOCAL] = Field(
        None, gt=0, le=1_048_576, description="local/llamacpp context."
    )
    n_threads: Annotated[int | None, LOCAL] = Field(
        None, ge=1, le=1024, description="local/llamacpp threads."
    )
    repeat_penalty: Annotated[float | None, LOCAL, HF] = Field(
        None, gt=0, le=10, description="local/llamacpp/huggingface."
    )
    device: Annotated[str | None, HF] = Field(
        None,
        pattern=r"^(auto|cpu|mps|cuda(:[0-9]+)?)$",
        description="huggingface: cpu, cuda, cuda:1, mps; auto (default): a GPU when torch "
        "sees one.",
    )
    torch_dtype: Annotated[Literal["auto", "float32", "float16", "bfloat16"] | None, HF] = Field(
        None, description="huggingface: the weights' precision (auto: as stored)."
    )
    gguf_file: Annotated[str | None, HF] = Field(
        None, description="huggingface: a .gguf file in the model's folder."
    )
    adapter: Annotated[str | None, HF] = Field(
        None,
        description="huggingface: a LoRA adapter folder (peft's format, e.g. written by "
        "`eslabon tune`) applied to the model.",
    )


# What each provider family accepts from the settings above (checked with file and line).
LOCAL_SETTINGS = marked(ModelMapping, LOCAL)
HF_SETTINGS = marked(ModelMapping, HF)
NETWORK_SETTINGS = marked(ModelMapping, NETWORK)
FAKE_SETTINGS = marked(ModelMapping, FAKE)
MODEL_SETTINGS = tuple(
    k for k in ModelMapping.model_fields if k not in PARAM_NAMES and k not in ("provider", "name")
)


def provider_settings(provider: str) -> tuple[str, ...]:
    """The settings above that ``provider`` takes (after synonyms: llamacpp, local, fake, ...)."""
    if provider in ("local", "llamacpp", "llama_cpp", "llama.cpp"):
        return LOCAL_SETTINGS
    if provider == "fake":
        return FAKE_SETTINGS
    if provider == "huggingface":
        return HF_SETTINGS
    return NETWORK_SETTINGS


def _model_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "str"
    if isinstance(value, dict | ModelMapping):
        return "mapping"
    return None


ModelRef = Annotated[
    Annotated[str, Tag("str")] | Annotated[ModelMapping, Tag("mapping")],
    Discriminator(
        _model_kind,
        custom_error_type="model_ref",
        custom_error_message="expected 'provider:model', an alias, or a mapping {provider, name}",
    ),
    Field(description="'provider:model', an alias such as 'local', or {provider, name, ...}."),
]


class InputSpec(_Strict):
    description: str | None = None
    default: str | None = Field(None, description="Used when the input is not given.")


InputRef = Annotated[
    Annotated[str, Tag("str")] | Annotated[InputSpec, Tag("mapping")],
    Discriminator(
        lambda v: (
            "str" if isinstance(v, str) else "mapping" if isinstance(v, dict | InputSpec) else None
        ),
        custom_error_type="input_ref",
        custom_error_message="expected a description or a mapping {description, default}",
    ),
]


class ExamplePair(_Strict):
    input: str = Field(description="What the user says.")
    output: str = Field(description="What the assistant answers.")


class ExampleFile(_Strict):
    file: str = Field(description=".jsonl, .yaml/.yml or .csv with input/output; relative path.")


ExampleRef = Annotated[
    Annotated[ExamplePair, Tag("pair")] | Annotated[ExampleFile, Tag("file")],
    Discriminator(
        lambda v: (
            ("file" if "file" in v else "pair")
            if isinstance(v, dict)
            else "file"
            if isinstance(v, ExampleFile)
            else "pair"
            if isinstance(v, ExamplePair)
            else None
        ),
        custom_error_type="example_ref",
        custom_error_message="expected {input, output} or {file: path}",
    ),
]


class AllSelector(_Strict):
    """Every example, in order."""

    type: Literal["all"] = "all"


class LengthSelector(_Strict):
    """As many examples as fit in ``max_length`` words together with the prompt."""

    type: Literal["length"]
    max_length: int = Field(2048, gt=0)


class NGramSelector(_Strict):
    """Examples ordered by n-gram overlap (BLEU) with the prompt."""

    type: Literal["ngram"]
    k: int | None = Field(None, gt=0)
    threshold: float = Field(-1.0, description="Drop examples scoring at or below this.")


class SemanticSelector(_Strict):
    """The k examples most similar to the prompt (embeddings)."""

    type: Literal["semantic"]
    k: int = Field(4, gt=0)


class MMRSelector(_Strict):
    """k similar yet diverse examples (maximal marginal relevance)."""

    type: Literal["mmr"]
    k: int = Field(4, gt=0)
    fetch_k: int = Field(20, gt=0)


def _selector_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type", "all")
        return kind if isinstance(kind, str) else None
    return getattr(value, "type", None)


Selector = Annotated[
    Annotated[AllSelector, Tag("all")]
    | Annotated[LengthSelector, Tag("length")]
    | Annotated[NGramSelector, Tag("ngram")]
    | Annotated[SemanticSelector, Tag("semantic")]
    | Annotated[MMRSelector, Tag("mmr")],
    Discriminator(_selector_kind),
]


class DocumentSpec(_Strict):
    content: str
    source: str | None = Field(None, description="Where it comes from, for citations.")


DocumentRef = Annotated[
    Annotated[str, Tag("str")] | Annotated[DocumentSpec, Tag("mapping")],
    Discriminator(
        lambda v: (
            "str"
            if isinstance(v, str)
            else "mapping"
            if isinstance(v, dict | DocumentSpec)
            else None
        ),
        custom_error_type="document_ref",
        custom_error_message="expected text or a mapping {content, source}",
    ),
]


class _RetrieverBase(_Strict):
    k: int = Field(4, gt=0, description="How many documents to retrieve.")
    query: Annotated[str | None, TEMPLATE] = Field(
        None, description="Template for the search query (default: the first input)."
    )


class StaticRetriever(_RetrieverBase):
    """The documents listed here, always (the first k): a stub for tests and lessons."""

    type: Literal["static"]
    documents: list[DocumentRef]


class MemoryRetriever(_RetrieverBase):
    """An in-memory vector store over the documents listed here (the chain's embeddings)."""

    type: Literal["memory"]
    documents: list[DocumentRef]


class BM25RetrieverSpec(_RetrieverBase):
    """Keyword search (BM25) over the documents listed here."""

    type: Literal["bm25"]
    documents: list[DocumentRef]


class ChromaRetriever(_RetrieverBase):
    """A Chroma collection: embedded and persistent at ``path``, or a server at host/port."""

    type: Literal["chroma"]
    collection: str = Field(min_length=3, max_length=512)
    path: str | None = Field(
        None, description="Persistent folder (default .eslabon/chroma in the project root)."
    )
    host: str | None = Field(None, description="A `chroma run` server instead of a folder.")
    port: int = Field(8000, gt=0, lt=65536)


class LlamaIndexRetrieverSpec(_RetrieverBase):
    """A llama-index index persisted at ``path`` (relative to the project root)."""

    type: Literal["llamaindex"]
    path: str = Field(description="The folder given to index.storage_context.persist().")


class CustomRetriever(_RetrieverBase):
    """A registered retriever (``type: NAME``) or, with import opt-in, ``type: python`` plus
    ``factory: package.module:callable``. Other keys are the factory's keyword arguments."""

    model_config = ConfigDict(extra="allow")

    type: str
    factory: str | None = Field(None, description="For type: python, 'package.module:name'.")


RETRIEVER_TYPES = ("static", "memory", "bm25", "chroma", "llamaindex")


def _retriever_kind(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if not isinstance(kind, str):
        return None
    return kind if kind in RETRIEVER_TYPES else "custom"


RetrieverRef = Annotated[
    Annotated[StaticRetriever, Tag("static")]
    | Annotated[MemoryRetriever, Tag("memory")]
    | Annotated[BM25RetrieverSpec, Tag("bm25")]
    | Annotated[ChromaRetriever, Tag("chroma")]
    | Annotated[LlamaIndexRetrieverSpec, Tag("llamaindex")]
    | Annotated[CustomRetriever, Tag("custom")],
    Discriminator(_retriever_kind),
]


class Retry(_Strict):
    """Retry rate limits (429), server errors (5xx) and timeouts, honoring Retry-After."""

    attempts: int = Field(3, ge=1, le=20, description="Tries in all, the first included.")
    backoff: float = Field(
        1.0, ge=0, le=60, description="First wait in seconds; doubles each time, with jitter."
    )


class PydanticSchemaRef(_Strict):
    """``output_schema: {pydantic: package.module:ClassName}`` (needs an import allowance)."""

    pydantic: str = Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
        description="Import path of a pydantic model: 'package.module:ClassName'.",
    )


OutputSchemaRef = Annotated[
    PydanticSchemaRef | dict[str, Any],
    Field(union_mode="left_to_right"),
]
ToolPath = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")]


class HistorySpec(_Strict):
    """``history: {max_tokens: N}``: keep the conversation, trimmed to fit N tokens."""

    max_tokens: int | None = Field(
        None, gt=0, description="Trim the oldest turns so the history fits in this many tokens."
    )


# -- tests inside the chain file (run by `eslabon test`: eslabon.evaluate) --------------------
ASSERTION_KINDS = (
    "contains",
    "not_contains",
    "regex",
    "equals",
    "schema",
    "max_tokens",
    "max_latency_ms",
    "max_cost",
    "judge",
    "similar",
    "calls_tool",
    "received",
    "python",
)
# which options each kind takes (besides step, field, weight, which all take)
ASSERTION_OPTIONS: dict[str, tuple[str, ...]] = {
    "contains": ("case",),
    "not_contains": ("case",),
    "judge": ("model", "threshold"),
    "similar": ("threshold",),
    "calls_tool": ("args",),
}


# checks that look at no value, so no field inside one: the run's figures, its tool calls, a
# step's prompt
_NO_FIELD = ("max_tokens", "max_latency_ms", "max_cost", "calls_tool", "received")


class Assertion(_Strict):
    """One check of a test case: exactly one kind (``contains``, ``regex``, ``judge``, ...),
    optionally on one step's output (``step``) or a field of a structured output (``field``)."""

    contains: str | None = Field(None, description="The text includes this (any case).")
    not_contains: str | None = Field(None, description="The text does not include this.")
    regex: str | None = Field(None, description="The text matches this RE2 pattern somewhere.")
    equals: Any = Field(None, description="The output (or its field) is exactly this value.")
    json_schema: dict[str, Any] | None = Field(
        None, alias="schema", description="The output (or its field) is valid in this schema."
    )
    max_tokens: int | None = Field(None, gt=0, description="Output tokens of the run, at most.")
    max_latency_ms: float | None = Field(None, gt=0, description="The run's time, at most.")
    max_cost: float | None = Field(None, ge=0, description="The run's cost in USD, at most.")
    judge: str | None = Field(None, description="A yes/no question a model answers about it.")
    similar: str | None = Field(
        None, description="Meaning close to this text (embedding similarity >= threshold)."
    )
    calls_tool: Name | None = Field(None, description="A tool the run called.")
    received: Name | None = Field(
        None,
        description="The step's prompt includes this earlier step's answer (or this input's "
        "value): the step was given it.",
    )
    python: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
        description="A function 'package.module:name' (needs an import allowance).",
    )
    # options
    step: Name | None = Field(None, description="Check this step's output (default: the output).")
    field: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][\w]*(\.[A-Za-z_0-9][\w]*)*$",
        description="A field of a structured output, dotted: persona.edad.",
    )
    case: bool | None = Field(None, description="contains / not_contains: match case exactly.")
    threshold: float | None = Field(
        None, ge=0, le=1, description="similar: least similarity (default 0.8)."
    )
    weight: float | None = Field(None, gt=0, description="Its share of the case's score.")
    model: ModelRef | None = Field(None, description="judge: the model that judges.")
    args: dict[str, Any] | None = Field(None, description="calls_tool: arguments it was given.")

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @property
    def kind(self) -> str:
        """Which check this is (validated: exactly one)."""
        given = self.model_fields_set
        return next(k for k in ASSERTION_KINDS if ("json_schema" if k == "schema" else k) in given)

    @property
    def expected(self) -> Any:
        return getattr(self, "json_schema" if self.kind == "schema" else self.kind)

    @model_validator(mode="after")
    def _one_kind(self) -> Assertion:
        given = self.model_fields_set
        kinds = [k for k in ASSERTION_KINDS if ("json_schema" if k == "schema" else k) in given]
        if len(kinds) != 1:
            raise ValueError(
                ("one check per item, not " + " and ".join(kinds))
                if kinds
                else f"no check given; one of: {', '.join(ASSERTION_KINDS)}"
            )
        kind = kinds[0]
        if "field" in given and kind in _NO_FIELD:
            raise ValueError(f"'field' goes with checks on a value, not with {kind}")
        allowed = ASSERTION_OPTIONS.get(kind, ())
        for option in ("case", "threshold", "model", "args"):
            if option in given and option not in allowed:
                users = [k for k, v in ASSERTION_OPTIONS.items() if option in v]
                raise ValueError(f"'{option}' goes with {' or '.join(users)}, not with {kind}")
        return self


class TestCase(_Strict):
    """A test of the chain: its inputs, and what its answer must satisfy."""

    __test__: ClassVar[bool] = False  # not a pytest test class, whatever its name says

    name: str | None = Field(None, description="Shown in reports (default: its number).")
    inputs: dict[Name, str] = Field(default_factory=dict, description="The chain's inputs.")
    expect: list[Assertion] = Field(
        default_factory=list, max_length=100, description="Checks; all must pass."
    )
    repeat: int | None = Field(None, ge=1, le=100, description="Runs; reports the pass rate.")
    pass_score: float | None = Field(
        None, gt=0, le=1, description="Pass when the weighted score reaches this (default: 1)."
    )


class TestFile(_Strict):
    """Cases in a file beside the chain: .jsonl / .yaml / .csv rows of inputs and checks."""

    __test__: ClassVar[bool] = False

    file: str = Field(description=".jsonl, .yaml/.yml or .csv; relative path.")


TestRef = Annotated[
    Annotated[TestCase, Tag("case")] | Annotated[TestFile, Tag("file")],
    Discriminator(
        lambda v: (
            ("file" if "file" in v else "case")
            if isinstance(v, dict)
            else "file"
            if isinstance(v, TestFile)
            else "case"
            if isinstance(v, TestCase)
            else None
        ),
        custom_error_type="test_ref",
        custom_error_message="expected {inputs, expect} or {file: path}",
    ),
]


class _ChainWide(_Strict):
    """Keys a chain gives all its steps, and a step may give itself instead."""

    model: ModelRef | None = None
    params: Params | None = None
    retry: Retry | None = Field(None, description="Retries for this model's transient failures.")
    fallbacks: list[ModelRef] | None = Field(
        None, max_length=10, description="Models to try in order when the model fails."
    )
    retriever: RetrieverRef | None = Field(
        None, description="Documents to retrieve; prompts use them as {context}."
    )


class _Prompted(_ChainWide):
    """Keys of one call's messages and answer: at the top level, with ``prompt``, they are the
    single-step shorthand (:data:`SHORTHAND_KEYS`)."""

    system: Annotated[str | None, TEMPLATE] = Field(None, description="System message template.")
    examples: list[ExampleRef] | None = Field(None, description="Few-shot examples.")
    selector: Selector | None = Field(None, description="How examples are chosen (default: all).")
    output_schema: OutputSchemaRef | None = Field(
        None,
        description="The result is JSON validated against this schema: an inline JSON Schema "
        "(type: object) or {pydantic: 'package.module:Class'}.",
    )
    tools: list[ToolPath] | None = Field(
        None,
        max_length=64,
        description="Python functions the model may call, by import path 'package.module:name'.",
    )
    max_tool_calls: int | None = Field(
        None, ge=1, le=50, description="Tool calls allowed in one step (default 5)."
    )
    history: bool | HistorySpec | None = Field(
        None,
        description="Place the conversation so far between the examples and the prompt "
        "(true, or {max_tokens: N} to trim the oldest turns).",
    )


class Step(_Prompted):
    """One call to a model. Its output is available to later steps as ``{id}``."""

    id: Name
    description: str | None = None
    prompt: Annotated[str, TEMPLATE] = Field(description="User message template.")

    def __init__(self, **data: Any) -> None:
        _init_or_raise(type(self), super().__init__, data)


class Chain(_Prompted):
    """A chain file: a single prompt (shorthand) or a list of steps."""

    schema_version: Literal[1] = 1
    name: str | None = None
    description: str | None = None
    inputs: dict[Name, InputRef] = Field(default_factory=dict)
    prompt: Annotated[str | None, TEMPLATE] = Field(
        None, description="Single-step shorthand: user message template."
    )
    steps: list[Step] | None = Field(None, max_length=100)
    output: Name | None = Field(None, description="Step whose text is the result (default: last).")
    embeddings: str | None = Field(
        None, description="Embeddings for retrievers and selectors: 'local' or 'provider:model'."
    )
    tests: list[TestRef] | None = Field(
        None, max_length=1000, description="Test cases `eslabon test` runs (docs/chains.md)."
    )

    _source: Path | None = PrivateAttr(default=None)
    _file: str | None = PrivateAttr(default=None)  # the file as the user named it, for messages
    _warnings: list[Any] = PrivateAttr(default_factory=list)

    def __init__(self, **data: Any) -> None:
        _init_or_raise(type(self), super().__init__, data)

    # -- files --------------------------------------------------------------------------
    @property
    def source(self) -> Path | None:
        """The file this chain was loaded from, if any."""
        return self._source

    @property
    def warnings(self) -> list[Any]:
        """Problems worth saying that do not stop the chain (e.g. a key written in the file)."""
        return list(self._warnings)

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths (example files, GGUF paths) are resolved against."""
        return self._source.parent if self._source else Path.cwd()

    def to_data(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        data = {"schema_version": 1, **data}
        if self.tests:  # as written: `schema:` (an alias), and an `equals: null` kept
            data["tests"] = [
                t.model_dump(mode="json", by_alias=True, exclude_unset=True) for t in self.tests
            ]
        if self.inputs:
            data["inputs"] = {
                k: (v if isinstance(v, str) else v.model_dump(exclude_none=True))
                for k, v in self.inputs.items()
            }
        return data

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Dump as chain-file YAML (and write it to ``path`` if given)."""
        import yaml

        text = (
            SCHEMA_URL_COMMENT
            + "\n"
            + yaml.safe_dump(self.to_data(), sort_keys=False, allow_unicode=True, width=100)
        )
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    # -- structure ------------------------------------------------------------------------
    def input_names(self) -> list[str]:
        return list(self.inputs)

    def input_default(self, name: str) -> str | None:
        spec = self.inputs[name]
        return None if isinstance(spec, str) else spec.default

    def normalized_steps(self) -> list[Step]:
        """The steps to run; the single-step shorthand becomes one step with id ``output``."""
        if self.steps is not None:
            return list(self.steps)
        # the chain-wide keys stay the chain's (compile reads them there), the shorthand's move
        values: dict[str, Any] = {"id": "output", "description": None}
        values |= dict.fromkeys(CHAIN_WIDE_KEYS)
        values |= {k: getattr(self, k) for k in SHORTHAND_KEYS}
        values["prompt"] = self.prompt or ""
        return [Step.model_construct(**values)]

    def output_step(self) -> str:
        steps = self.normalized_steps()
        return self.output or steps[-1].id


# Keys derived from the models above, for the checks (and the shorthand's one step).
CHAIN_WIDE_KEYS = tuple(_ChainWide.model_fields)  # a chain's defaults for all its steps
SHORTHAND_KEYS = ("prompt", *(k for k in _Prompted.model_fields if k not in CHAIN_WIDE_KEYS))
TEMPLATE_KEYS = marked(Step, TEMPLATE)  # a step's templates, in the order they are checked


# Set while pydantic validates: nested models (and the loader) must let ValidationError through.
_VALIDATING: ContextVar[bool] = ContextVar("eslabon_validating", default=False)


def _init_or_raise(model: type[BaseModel], init: Any, data: dict[str, Any]) -> None:
    # Building a spec in code raises the same ChainConfigError as a file would. Pydantic calls a
    # custom __init__ for nested models too, so only the outermost call converts the error.
    if _VALIDATING.get():
        init(**data)
        return
    token = _VALIDATING.set(True)
    try:
        init(**data)
    except ValidationError as exc:
        raise ChainConfigError(problems_from_validation(exc, data, model)) from None
    finally:
        _VALIDATING.reset(token)


def validate_quietly(data: Any) -> Chain:
    """``Chain.model_validate`` that raises pydantic's ValidationError (for the loader)."""
    token = _VALIDATING.set(True)
    try:
        return Chain.model_validate(data)
    finally:
        _VALIDATING.reset(token)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the chain file format, for editors (yaml-language-server)."""
    schema = Chain.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://eslabon.dev/chain.schema.json"
    schema["title"] = "eslabon chain file (schema_version 1)"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
