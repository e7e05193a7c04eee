"""Checks beyond the pydantic schema: templates, step ids, outputs, example files, models.

They run on the raw mapping, defensively, so that they still report what they can when the
schema check has found other problems: ``eslabon validate`` shows every problem at once. Each
check of the whole chain is a small named rule in :data:`RULES`, run in order over the mapping
read once (:class:`ChainData`); the keys they look at are read from the models in
:mod:`eslabon.chainfile.spec`. This module sits above the format (``spec``) and below compiling.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from eslabon.chainfile.examples import MAX_EXAMPLES_BYTES, ExampleFileError, load_example_file
from eslabon.chainfile.schema_errors import Locate, PathT, format_path
from eslabon.chainfile.spec import (
    MODEL_SETTINGS,
    NAME_PATTERN,
    RETRIEVER_TYPES,
    SHORTHAND_KEYS,
    TEMPLATE_KEYS,
    Chain,
    provider_settings,
)
from eslabon.chainfile.suggest import did_you_mean
from eslabon.chainfile.templates import check_template, literal_names, used_names
from eslabon.chat.modelspec import PROVIDER_SYNONYMS, check_model_ref
from eslabon.errors import ChainConfigError, Problem
from eslabon.trust.paths import PathNotAllowedError, confine

__all__ = [
    "RESERVED_IDS",
    "RULES",
    "check_chain_data",
    "check_spec",
    "external_refs",
    "format_path",
    "spec_problems",
]

RESERVED_IDS = {"output", "stats"}  # the result dict's own keys
RETRIEVAL_NAMES = ("context", "documents")  # {context} in prompts, "documents" in results
_NAME = re.compile(NAME_PATTERN)


class _Collector:
    def __init__(self, file: str, locate: Locate | None, base_dir: Path) -> None:
        self.file = file
        self.locate = locate
        self.base_dir = base_dir
        self.example_bytes = 0  # example files' sizes, each time one is named, in all steps
        self.problems: list[Problem] = []
        self.whole = True  # False: the schema check found problems this check cannot see

    def add(
        self,
        path: PathT,
        message: str,
        hint: str | None = None,
        at_key: bool = False,
        warning: bool = False,
    ) -> None:
        pos = self.locate(path, at_key) if self.locate else None
        self.problems.append(
            Problem(
                message=message,
                path=format_path(path),
                file=self.file,
                line=pos[0] if pos else None,
                col=pos[1] if pos else None,
                hint=hint,
                warning=warning,
            )
        )

    def warn(
        self, path: PathT, message: str, hint: str | None = None, at_key: bool = False
    ) -> None:
        self.add(path, message, hint, at_key, warning=True)


@dataclass(frozen=True)
class ChainData:
    """A raw chain mapping, read defensively once for every rule: what the rules share."""

    data: dict[str, Any]
    base_dir: Path
    input_names: list[str]
    steps: list[Any] | None  # None: the single-step shorthand (or steps that are not a list)
    ids: list[str]  # each step's id, "" where it has none
    shape: Literal["single", "steps", "broken"]  # no steps; a list of them; empty or no list
    chain_retrieves: bool  # the chain has a retriever: {context} in every prompt
    retrieves: bool  # the chain or a step has a retriever

    @classmethod
    def read(cls, data: dict[str, Any], base_dir: Path) -> ChainData:
        inputs = data.get("inputs") or {}
        steps = data.get("steps")
        listed = steps if isinstance(steps, list) else None
        chain_retrieves = isinstance(data.get("retriever"), dict)
        return cls(
            data=data,
            base_dir=base_dir,
            input_names=[k for k in inputs if isinstance(k, str)]
            if isinstance(inputs, dict)
            else [],
            steps=listed,
            ids=[_step_id(s) for s in listed or []],
            shape="single" if steps is None else "steps" if listed else "broken",
            chain_retrieves=chain_retrieves,
            retrieves=chain_retrieves or any(_has(s, "retriever", dict) for s in listed or []),
        )

    @property
    def context(self) -> list[str]:
        """``{context}``, where the chain's retriever makes it available to every prompt."""
        return ["context"] if self.chain_retrieves else []

    def dict_steps(self) -> list[tuple[int, dict[str, Any]]]:
        return [(i, s) for i, s in enumerate(self.steps or []) if isinstance(s, dict)]


def _step_id(step: Any) -> str:
    return str(step["id"]) if _has(step, "id", str) else ""


def _has(item: Any, key: str, kind: type) -> bool:
    return isinstance(item, dict) and isinstance(item.get(key), kind)


Rule = Callable[[ChainData, _Collector], None]


# -- the rules, in the order they report ------------------------------------------------------


def _rule_chain_model(chain: ChainData, out: _Collector) -> None:
    """The chain's model and fallbacks: known providers, settings their provider takes."""
    _check_model(out, chain.data, ("model",), chain.base_dir)
    _check_params_in_mapping(out, chain.data, ("model",))
    _check_fallbacks(out, chain.data, (), chain.base_dir)


def _rule_embeddings(chain: ChainData, out: _Collector) -> None:
    """``embeddings``: 'local' or 'provider:model', and a local model's file exists."""
    _check_embeddings(out, chain.data, chain.base_dir)


def _rule_chain_retriever(chain: ChainData, out: _Collector) -> None:
    """The chain's retriever: its type, folder and query template."""
    if chain.chain_retrieves:
        _check_retriever(out, chain.data["retriever"], ("retriever",), chain.input_names)


def _rule_reserved_inputs(chain: ChainData, out: _Collector) -> None:
    """Input names the chain's results or features take: context, documents, history."""
    for name in chain.input_names if chain.retrieves else []:
        if name in RETRIEVAL_NAMES:
            out.add(
                ("inputs", name),
                f"'{name}' is reserved in a chain with a retriever",
                "rename the input",
                at_key=True,
            )
    steps = chain.steps or []
    remembers = chain.data.get("history") or any(
        isinstance(s, dict) and s.get("history") for s in steps
    )
    if remembers and "history" in chain.input_names:
        out.add(
            ("inputs", "history"),
            "'history' is reserved in a chain that keeps a conversation",
            "rename the input",
            at_key=True,
        )


def _rule_prompt_or_steps(chain: ChainData, out: _Collector) -> None:
    """A prompt (the shorthand) or steps, not both, and steps not empty."""
    data = chain.data
    if chain.shape == "single":
        if data.get("prompt") is None:
            out.add(
                (),
                "a chain needs 'prompt' (single step) or 'steps'",
                'add  prompt: "...{input}..."  or a list of steps',
            )
        return
    for key in [k for k in SHORTHAND_KEYS if data.get(k) is not None]:
        out.add(
            (key,),
            f"'{key}' at top level is the single-step shorthand and cannot be "
            "combined with 'steps'",
            f"move '{key}' into a step",
            at_key=True,
        )
    if data.get("steps") == []:
        out.add(("steps",), "'steps' is empty", "add at least one step with an id and a prompt")


def _rule_single_step(chain: ChainData, out: _Collector) -> None:
    """The shorthand's templates, examples, selector, output schema and tools."""
    if chain.shape == "single" and chain.data.get("prompt") is not None:
        names = chain.input_names + chain.context
        _check_prompted(out, chain.data, (), names, [], chain.base_dir)


def _rule_step_ids(chain: ChainData, out: _Collector) -> None:
    """Step ids: unique, not reserved, not an input's name."""
    seen: dict[str, int] = {}
    for i, sid in enumerate(chain.ids):
        if not sid or not _NAME.match(sid):
            continue  # the schema check reports a missing or malformed id
        if sid in seen:
            out.add(
                ("steps", i, "id"),
                f"duplicate step id '{sid}' (also steps[{seen[sid]}])",
                "give every step a unique id",
            )
        else:
            seen[sid] = i
        if sid in RESERVED_IDS or (chain.retrieves and sid in RETRIEVAL_NAMES):
            out.add(
                ("steps", i, "id"),
                f"'{sid}' is reserved for the chain's result",
                "choose another id",
            )
        if sid in chain.input_names:
            out.add(
                ("steps", i, "id"),
                f"step id '{sid}' is also an input name",
                "inputs and step ids share one namespace; rename one of them",
            )


def _rule_steps(chain: ChainData, out: _Collector) -> None:
    """Each step: its model, retriever, and templates that use only what comes before them."""
    for i, step in chain.dict_steps():
        earlier = [s for s in chain.ids[:i] if s]
        later = [s for s in chain.ids[i + 1 :] if s]
        _check_model(out, step, ("steps", i, "model"), chain.base_dir)
        _check_params_in_mapping(out, step, ("steps", i, "model"))
        _check_fallbacks(out, step, ("steps", i), chain.base_dir)
        own: list[str] = []
        if isinstance(step.get("retriever"), dict):
            where = ("steps", i, "retriever")
            _check_retriever(out, step["retriever"], where, chain.input_names + earlier)
            own = ["context"]
        names = chain.input_names + earlier + (chain.context or own)
        _check_prompted(out, step, ("steps", i), names, later, chain.base_dir)


def _rule_inputs_used(chain: ChainData, out: _Collector) -> None:
    """Every declared input is used (a warning, said of files without errors only)."""
    if chain.shape != "broken":
        _check_inputs_used(out, chain.data, chain.input_names)


def _rule_output(chain: ChainData, out: _Collector) -> None:
    """``output`` names a step, and only a chain with steps has one to name."""
    output = chain.data.get("output")
    if not isinstance(output, str):
        return
    if chain.shape == "single" and output != "output":
        out.add(
            ("output",),
            f"'output: {output}' needs 'steps'; a single-step chain has one output",
            "remove 'output'",
        )
    valid_ids = list(dict.fromkeys(s for s in chain.ids if s))
    if chain.shape == "steps" and _NAME.match(output) and output not in valid_ids:
        hint = did_you_mean(output, valid_ids)
        out.add(
            ("output",),
            f"'output' names no step: '{output}'",
            (hint + " " if hint else "") + f"step ids: {', '.join(valid_ids)}",
        )


def _rule_tests(chain: ChainData, out: _Collector) -> None:
    """``tests``: each case's inputs are the chain's (the required ones given), each check's
    ``step`` is a step, its ``regex`` runs on RE2, and a file of cases exists in the folder."""
    tests = chain.data.get("tests")
    if not isinstance(tests, list):
        return
    ids = ["output"] if chain.shape == "single" else [s for s in chain.ids if s]
    required = [n for n in chain.input_names if not _has_default(chain.data, n)]
    for i, case in enumerate(tests):
        if not isinstance(case, dict):
            continue  # the schema check says what is wrong
        if "file" in case:
            _check_test_file(out, case["file"], ("tests", i, "file"), chain.base_dir)
            continue
        given = case.get("inputs")
        inputs: dict[Any, Any] = given if isinstance(given, dict) else {}
        for name in inputs:
            if isinstance(name, str) and name not in chain.input_names:
                hint = did_you_mean(name, chain.input_names)
                out.add(
                    ("tests", i, "inputs", name),
                    f"the chain has no input '{name}'",
                    (hint + " " if hint else "")
                    + f"its inputs: {', '.join(chain.input_names) or 'none'}",
                    at_key=True,
                )
        if missing := [n for n in required if n not in inputs]:
            out.add(
                ("tests", i, "inputs"),
                f"this case does not give the input {', '.join(repr(n) for n in missing)}",
                "give it in the case's inputs (or a default in the chain's inputs)",
            )
        for j, check in enumerate(case.get("expect") or []):
            if isinstance(check, dict):
                # a chain that retrieves has its passages to check too (step: documents)
                targets = [*ids, *(["documents"] if chain.retrieves else [])]
                _check_assertion(out, check, ("tests", i, "expect", j), targets)
                _check_received(out, check, ("tests", i, "expect", j), ids, chain)


def _has_default(data: dict[str, Any], name: str) -> bool:
    spec = (data.get("inputs") or {}).get(name)
    return isinstance(spec, dict) and spec.get("default") is not None


def _check_received(
    out: _Collector, check: dict[str, Any], path: PathT, ids: list[str], chain: ChainData
) -> None:
    """``received`` names an input, or a step that runs before the checked one (default: the
    output step)."""
    name, step = check.get("received"), check.get("step")
    if not isinstance(name, str) or not _NAME.match(name) or not ids:
        return  # the schema check says what is wrong
    if step == "documents" and chain.retrieves:
        out.add(
            (*path, "step"),
            "received looks at a step's prompt: 'documents' are the retrieved passages",
            "name the step whose prompt should include it (or leave step out: the output step)",
        )
        return
    if step is not None and step not in ids:
        return  # said once, as the step's own problem
    inputs = [*chain.input_names, *(["context"] if chain.retrieves else [])]
    output = chain.data.get("output")
    checked = step if step in ids else output if output in ids else ids[-1]
    earlier = ids[: ids.index(checked)] if checked in ids else []
    if name in inputs or name in earlier:
        return
    if name == checked:
        problem = f"step '{name}' cannot receive its own answer"
    elif name in ids:
        problem = f"step '{name}' runs after step '{checked}': it cannot have received it"
    else:
        problem = f"no step or input '{name}'"
    known = [*earlier, *inputs]
    hint = did_you_mean(name, known)
    out.add(
        (*path, "received"),
        problem,
        (hint + " " if hint else "")
        + (f"it can receive: {', '.join(known)}" if known else "it can receive nothing"),
    )


def _check_assertion(out: _Collector, check: dict[str, Any], path: PathT, ids: list[str]) -> None:
    step = check.get("step")
    if isinstance(step, str) and _NAME.match(step) and step not in ids:
        hint = did_you_mean(step, ids)
        out.add(
            (*path, "step"),
            f"no step '{step}'",
            (hint + " " if hint else "") + f"step ids: {', '.join(ids)}",
        )
    regex = check.get("regex")
    if isinstance(regex, str):
        from eslabon.chainfile.patterns import pattern_problem

        if (message := pattern_problem(regex, "regex")) is not None:
            out.add((*path, "regex"), message)
    # a schema check's $ref never reads a file or calls a host (as output_schema's)
    for where, message in external_refs(check.get("schema"), (*path, "schema")):
        out.add(where, message)


def _check_test_file(out: _Collector, name: Any, path: PathT, base_dir: Path) -> None:
    if not isinstance(name, str):
        return
    from eslabon.trust.paths import PathNotAllowedError, confine

    try:
        found = confine(name, base_dir, "tests file")
    except PathNotAllowedError as exc:
        out.add(path, str(exc))
        return
    if found.suffix.lower() not in (".jsonl", ".yaml", ".yml", ".csv"):
        out.add(path, f"unsupported tests file type '{found.suffix}'", "use .jsonl, .yaml or .csv")
    elif not found.is_file():
        out.add(path, f"tests file not found: {name}", "paths are relative to the chain file")


RULES: tuple[tuple[str, Rule], ...] = (
    ("chain model", _rule_chain_model),
    ("embeddings", _rule_embeddings),
    ("chain retriever", _rule_chain_retriever),
    ("reserved inputs", _rule_reserved_inputs),
    ("prompt or steps", _rule_prompt_or_steps),
    ("single step", _rule_single_step),
    ("step ids", _rule_step_ids),
    ("steps", _rule_steps),
    ("inputs used", _rule_inputs_used),
    ("output", _rule_output),
    ("tests", _rule_tests),
)
"""Every semantic check, by name, in the order their problems are listed."""


def check_chain_data(
    data: dict[str, Any],
    base_dir: Path,
    file: str = "<chain>",
    locate: Locate | None = None,
    schema_ok: bool = True,
) -> list[Problem]:
    """Semantic problems of a raw chain mapping (see module doc). ``schema_ok``: the schema
    check passed (else warnings that other errors would explain are left out)."""
    out = _Collector(file, locate, base_dir)
    out.whole = schema_ok
    chain = ChainData.read(data, base_dir)
    for _name, rule in RULES:
        rule(chain, out)
    return out.problems


def spec_problems(spec: Chain) -> list[Problem]:
    """Every semantic problem of a chain built in code or loaded (templates, ids, files,
    providers); empty when valid."""
    file = spec._file or str(spec.source or "<chain>")
    return check_chain_data(spec.to_data(), spec.base_dir, file=file)


def check_spec(spec: Chain) -> None:
    """Raise ``ChainConfigError`` with every problem :func:`spec_problems` finds, if any
    (warnings alone do not raise). ``compile_chain`` calls it."""
    problems = spec_problems(spec)
    if any(not p.warning for p in problems):
        raise ChainConfigError(problems)


def _check_retriever(
    out: _Collector, retriever: dict[str, Any], path: PathT, available: list[str]
) -> None:
    kind = retriever.get("type")
    if isinstance(kind, str) and kind not in RETRIEVER_TYPES:
        if kind == "python":
            factory = retriever.get("factory")
            if not isinstance(factory, str) or ":" not in factory:
                out.add(
                    (*path, "factory"),
                    "type: python needs factory: 'package.module:name'",
                    "importing it also needs --allow-import PACKAGE (or allow_imports=...)",
                )
        else:
            from eslabon.rag.registry import retriever_names

            names = retriever_names()
            if kind not in names:
                choices = [*RETRIEVER_TYPES, "python", *names]
                hint = did_you_mean(kind, choices)
                out.add(
                    (*path, "type"),
                    f"unknown retriever type '{kind}'",
                    (hint + " " if hint else "") + "valid types: " + ", ".join(choices),
                )
    _check_index_path(out, retriever, path)
    query = retriever.get("query")
    if isinstance(query, str):
        for issue in check_template(query, available):
            out.add((*path, "query"), issue.message, issue.hint, warning=issue.warning)
    elif query is None and not available:
        out.add(
            path,
            "a retriever needs a search query, and the chain declares no input",
            'add an input, or a query such as  query: "..."',
        )


def _check_index_path(out: _Collector, retriever: dict[str, Any], path: PathT) -> None:
    """An index folder (chroma, llamaindex) is resolved against the project root and must lie
    in the chain's folder, the project or an allowed folder."""
    folder = retriever.get("path")
    if not isinstance(folder, str) or retriever.get("type") not in ("chroma", "llamaindex"):
        return
    if retriever.get("type") == "chroma" and retriever.get("host"):
        return  # a server: the path is not used
    from eslabon.trust.project import load_project

    try:
        confine(folder, out.base_dir, "index path", load_project().root)
    except PathNotAllowedError as exc:
        out.add((*path, "path"), exc.message, exc.hint)


LOCAL_EMBEDDINGS = {
    "llamacpp": "a GGUF embedding model file",
    "huggingface": "a sentence-transformers model folder",
}


def _check_embeddings(out: _Collector, data: dict[str, Any], base_dir: Path) -> None:
    ref = data.get("embeddings")
    if not isinstance(ref, str):
        return
    if ref != "local" and ":" not in ref:
        out.add(
            ("embeddings",),
            f"unknown embeddings '{ref}'",
            "use 'local' (offline, lexical) or 'provider:model', e.g. "
            "'openai:text-embedding-3-small'",
        )
        return
    kind, _, name = ref.partition(":")
    if kind in LOCAL_EMBEDDINGS:
        try:
            confine(name, base_dir, "embeddings model")
        except PathNotAllowedError as exc:
            out.add(("embeddings",), exc.message, exc.hint)
            return
    if kind in LOCAL_EMBEDDINGS and not (base_dir / Path(name).expanduser()).exists():
        out.add(
            ("embeddings",),
            f"no model at '{name}' (relative to the chain file)",
            f"{kind}:PATH names {LOCAL_EMBEDDINGS[kind]} on this machine",
        )


def _check_fallbacks(out: _Collector, data: dict[str, Any], path: PathT, base_dir: Path) -> None:
    fallbacks = data.get("fallbacks")
    if isinstance(fallbacks, list):
        for n, ref in enumerate(fallbacks):
            _check_ref(out, ref, (*path, "fallbacks", n), base_dir)


def _check_model(out: _Collector, data: dict[str, Any], path: PathT, base_dir: Path) -> None:
    _check_ref(out, data.get("model"), path, base_dir)


def _check_ref(out: _Collector, ref: Any, path: PathT, base_dir: Path) -> None:
    if ref is None or not isinstance(ref, str | dict):
        return
    if isinstance(ref, dict) and not isinstance(ref.get("provider"), str):
        return  # the schema check reports it
    problem = check_model_ref(ref, base_dir)
    if problem:
        where = (*path, "provider") if isinstance(ref, dict) else path
        out.add(where, problem[0], problem[1])


def _check_params_in_mapping(out: _Collector, data: dict[str, Any], path: PathT) -> None:
    """Settings of a model mapping that its provider does not take, and literal keys."""
    refs: list[tuple[Any, PathT]] = [(data.get("model"), path)]
    fallbacks = data.get("fallbacks")
    if isinstance(fallbacks, list):
        refs += [(ref, (*path[:-1], "fallbacks", n)) for n, ref in enumerate(fallbacks)]
    for ref, where in refs:
        if isinstance(ref, dict):
            _check_model_settings(out, ref, where)


def _check_model_settings(out: _Collector, ref: dict[str, Any], path: PathT) -> None:
    provider = ref.get("provider")
    if not isinstance(provider, str):
        return
    family = PROVIDER_SYNONYMS.get(provider.lower(), provider)
    allowed = provider_settings(family)
    for key in ref:
        if key in MODEL_SETTINGS and key not in allowed:
            why = " (it runs in-process)" if family in ("local", "llamacpp", "fake") else ""
            out.add(
                (*path, key),
                f"'{key}' is not a setting of the {family} provider{why}",
                f"settings here: {', '.join(allowed)}, plus params",
                at_key=True,
            )
    if isinstance(ref.get("api_key"), str):
        out.warn(
            (*path, "api_key"),
            "a key written in a chain file is shared with everyone who gets the file",
            "remove it; set an environment variable and name it with api_key_env",
            at_key=True,
        )
    _check_approvals(out, ref, path)


def _check_approvals(out: _Collector, ref: dict[str, Any], path: PathT) -> None:
    """Say now what ``run`` would refuse for want of the user's approval (a warning: the
    approval may come with the run, e.g. --allow-endpoint)."""
    from dataclasses import replace

    from eslabon.chat.models import endpoint_refusal, key_refusal
    from eslabon.chat.modelspec import ModelRefError, parse_model_ref

    try:
        spec = parse_model_ref(ref, out.base_dir)
    except ModelRefError:
        return  # reported by the model check
    urls = spec.kwargs.get("base_urls") or [spec.kwargs.get("base_url")]
    var = spec.kwargs.get("api_key_env")
    for url in urls if isinstance(urls, list) else []:
        one = replace(spec, kwargs={**spec.kwargs, "base_url": url} if url else spec.kwargs)
        refusal = endpoint_refusal(one) or (
            key_refusal(one, str(var), named=True) if isinstance(var, str) else None
        )
        if refusal is not None:
            message, _, fix = refusal.partition("\n    fix: ")
            out.warn(path, f"run will stop here: {message}", fix or None)
            return


def _check_prompted(
    out: _Collector,
    data: dict[str, Any],
    path: PathT,
    available: list[str],
    later: list[str],
    base_dir: Path,
) -> None:
    for key in TEMPLATE_KEYS:
        template = data.get(key)
        if not isinstance(template, str):
            continue
        for issue in check_template(template, available, later):
            out.add((*path, key), issue.message, issue.hint, warning=issue.warning)

    examples = data.get("examples")
    for j, ex in enumerate(examples) if isinstance(examples, list) else ():
        if isinstance(ex, dict) and isinstance(ex.get("file"), str):
            _check_example_file(out, ex["file"], (*path, "examples", j, "file"), base_dir)
    selector = data.get("selector")
    if isinstance(selector, dict) and selector.get("type", "all") != "all" and not examples:
        out.add(
            (*path, "selector"),
            "a selector without examples selects nothing",
            "add 'examples', or remove 'selector'",
        )
    _check_output_schema(out, data, path)
    _check_tools(out, data, path)


def _check_example_file(out: _Collector, file: str, where: PathT, base_dir: Path) -> None:
    """An examples file: in reach, readable, with good rows, and not too much in all."""
    row_problems: list[ExampleFileError] = []
    try:
        found = confine(file, base_dir, "examples file")
        rows = load_example_file(found, row_problems)
    except (ExampleFileError, PathNotAllowedError) as exc:
        out.add(where, exc.message, exc.hint)
        return
    for problem in row_problems[:MAX_PROBLEMS_PER_FILE]:
        out.add(where, problem.message, problem.hint)
    if len(row_problems) > MAX_PROBLEMS_PER_FILE:
        more = len(row_problems) - MAX_PROBLEMS_PER_FILE
        out.add(where, f"… and {more} more problems in {file}")
    before = out.example_bytes
    out.example_bytes += found.stat().st_size
    if out.example_bytes > MAX_EXAMPLES_BYTES >= before:  # said once
        out.add(
            where,
            f"the chain's example files add up to more than {MAX_EXAMPLES_BYTES:,} "
            "bytes (a file counts each time it is named)",
            "keep a few good examples; a selector picks among them",
        )
    if not rows:
        out.add(where, f"examples file is empty: {file}")


MAX_PROBLEMS_PER_FILE = 20  # an examples file of 10,000 bad rows: the first ones say enough
_TOOL_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _check_tools(out: _Collector, data: dict[str, Any], path: PathT) -> None:
    """eslabon's own tools are checked by name; other packages' only by the shape of the path
    (the schema check): validate never imports code a chain file names."""
    tools = data.get("tools")
    if not isinstance(tools, list):
        return
    for n, tool in enumerate(tools):
        if isinstance(tool, str) and _TOOL_PATH.match(tool):
            problem = eslabon_tool_problem(tool)
            if problem is not None:
                out.add((*path, "tools", n), *problem)


def eslabon_tool_problem(tool: str) -> tuple[str, str] | None:
    """``(message, hint)`` when ``tool`` names a module or tool eslabon does not have. Imports
    ``eslabon.tools`` only (standard library only); other modules are listed, not imported."""
    import pkgutil

    import eslabon

    module, _, attribute = tool.partition(":")
    if module.split(".")[0] != "eslabon":
        return None
    import eslabon.tools

    shipped = list(eslabon.tools.__all__)
    examples = ", ".join(f"eslabon.tools:{t}" for t in shipped)
    modules = [f"eslabon.{m.name}" for m in pkgutil.iter_modules(eslabon.__path__)]
    if module not in modules:
        hint = did_you_mean(module, modules)
        return (
            f"no module '{module}' in eslabon",
            (hint + " " if hint else "") + f"eslabon's own tools: {examples}",
        )
    name = attribute.split(".")[0]
    if module == "eslabon.tools" and name not in shipped:
        hint = did_you_mean(name, shipped)
        return (
            f"eslabon.tools has no tool '{name}'",
            (hint + " " if hint else "") + f"eslabon's own tools: {examples}",
        )
    return None


def _check_inputs_used(out: _Collector, data: dict[str, Any], input_names: list[str]) -> None:
    """A declared input that no template and no retriever query uses: ``run`` still asks for it
    (unless it has a default), and its value goes nowhere. Said of files without errors only:
    a misspelled ``promtp`` would leave its input unused too, and its error says it already."""
    if not input_names or not out.whole or any(not p.warning for p in out.problems):
        return
    used, literal = _names_in_use(data, input_names[0])
    for name in input_names:
        if name not in used and name not in literal:
            out.warn(
                ("inputs", name),
                f"input '{name}' is used by no template or retriever query",
                f"insert it with {{{name}}} in a prompt or system, or remove it (run asks for "
                "every input that has no default)",
                at_key=True,
            )


def _names_in_use(data: dict[str, Any], first_input: str) -> tuple[set[str], set[str]]:
    """The names the chain's templates and retriever queries insert, and those its templates
    write as ``{{name}}`` (literal text: warned about in their template)."""
    used: set[str] = set()
    literal: set[str] = set()
    queries = [data.get("retriever")]
    steps = data.get("steps")
    prompted = [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else [data]
    for step in prompted:
        for key in TEMPLATE_KEYS:
            if isinstance(step.get(key), str):
                used.update(used_names(step[key]))
                literal.update(literal_names(step[key]))
        queries.append(step.get("retriever"))
    for retriever in queries:
        if isinstance(retriever, dict):
            query = retriever.get("query")
            if isinstance(query, str):
                used.update(used_names(query))
            elif query is None:
                used.add(first_input)  # a retriever searches for the first input by default
    return used, literal


_REF_KEYS = ("$ref", "$dynamicRef", "$recursiveRef")


def external_refs(schema: Any, path: PathT = ()) -> list[tuple[PathT, str]]:
    """Every reference in a JSON Schema that points outside it (a file, a URL): following one
    would read a file or call a host at run time. Looked for everywhere, data keywords too:
    llama.cpp's grammar converter follows any ``$ref`` it meets, and fetches URLs."""
    found: list[tuple[PathT, str]] = []
    stack: list[tuple[Any, PathT]] = [(schema, path)]
    while stack:  # iterative: schemas built in code have no depth bound
        node, where = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                # a string: a reference (a mapping is a property that happens to be named "$ref")
                if key in _REF_KEYS and isinstance(value, str) and not value.startswith("#"):
                    found.append(((*where, key), f"{key} {value!r} points outside the schema"))
                else:
                    stack.append((value, (*where, key)))
        elif isinstance(node, list):
            stack.extend((item, (*where, n)) for n, item in enumerate(node))
    return sorted(found, key=lambda f: format_path(f[0]))


MAX_SCHEMA_SIZE = 10_000  # subschemas once local $refs are followed


def schema_size(schema: Any) -> int:
    """How many values ``schema`` stands for once its local ``$ref``s are followed (each
    reference measured once; a recursive one counts 1: its cost is bounded by the data).
    Validation time grows with it: 30 levels of ``allOf: [{$ref}, {$ref}]`` are 2**30."""
    try:
        return _SchemaSize(schema).size(schema)
    except RecursionError:
        return MAX_SCHEMA_SIZE + 1


class _SchemaSize:
    """:func:`schema_size`'s walk: each local reference measured once, then remembered."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema
        self.memo: dict[str, int] = {}
        self.visiting: set[str] = set()

    def target(self, ref: str) -> Any:
        node = self.schema
        for part in ref[2:].split("/") if ref.startswith("#/") else []:
            part = unquote(part).replace("~1", "/").replace("~0", "~")
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    def via(self, ref: str) -> int:
        if ref in self.visiting:
            return 1
        if ref not in self.memo:
            self.visiting.add(ref)
            try:
                self.memo[ref] = self.size(self.target(ref))
            except (KeyError, IndexError, ValueError, TypeError):
                self.memo[ref] = 1  # a dangling reference: the schema check reports it
            finally:
                self.visiting.discard(ref)
        return self.memo[ref]

    def size(self, node: Any) -> int:
        total = 1
        items = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node)
            if isinstance(node, list)
            else ()
        )
        for key, value in items:
            is_ref = key in _REF_KEYS and isinstance(value, str) and value.startswith("#")
            total += self.via(value) if is_ref else self.size(value)
            if total > MAX_SCHEMA_SIZE:
                break
        return total


def _meta_formats() -> Any:
    """The 2020-12 format checks for checking a schema itself, without ``regex``: its patterns
    are checked with RE2, as eslabon runs them
    (:func:`eslabon.chainfile.patterns.pattern_problems`); jsonschema's check compiles them with
    Python's ``re``, which refuses RE2's ``\\p{L}``."""
    import copy

    from jsonschema import Draft202012Validator

    checker = copy.copy(Draft202012Validator.FORMAT_CHECKER)
    checker.checkers = {k: v for k, v in checker.checkers.items() if k != "regex"}
    return checker


def _check_output_schema(out: _Collector, data: dict[str, Any], path: PathT) -> None:
    schema = data.get("output_schema")
    if data.get("tools") and schema is not None:
        out.add(
            (*path, "output_schema"),
            "a step has either 'tools' or 'output_schema', not both",
            "split it in two steps: one calls the tools, the next structures the answer",
            at_key=True,
        )
    if data.get("max_tool_calls") is not None and not data.get("tools"):
        out.add((*path, "max_tool_calls"), "'max_tool_calls' without 'tools'", "add 'tools'")
    if not isinstance(schema, dict) or "pydantic" in schema:
        return  # a {pydantic: ...} reference is checked when it is imported
    if schema.get("type") != "object":
        out.add(
            (*path, "output_schema"),
            "output_schema must describe an object (type: object)",
            "wrap the value in an object, e.g. {type: object, properties: {value: ...}}",
            at_key=True,
        )
        return
    for where, message in external_refs(schema):
        out.add(
            (*path, "output_schema", *where),
            message,
            "a $ref may only point inside the schema, e.g. '#/$defs/Name': copy what it "
            "refers to under $defs",
        )
    if schema_size(schema) > MAX_SCHEMA_SIZE:
        out.add(
            (*path, "output_schema"),
            f"output_schema stands for more than {MAX_SCHEMA_SIZE:,} subschemas once its $refs "
            "are followed: checking an answer against it would take too long",
            "reference each definition fewer times, or simplify the schema",
            at_key=True,
        )
    from eslabon.chainfile.patterns import pattern_problems

    for where, message in pattern_problems(schema):
        at_key = where[-2:-1] == ("patternProperties",)  # the pattern is the key itself
        out.add((*path, "output_schema", *where), message, at_key=at_key)
    from jsonschema import Draft202012Validator

    # every mistake, not only the first (check_schema raises the best match alone)
    meta = Draft202012Validator(Draft202012Validator.META_SCHEMA, format_checker=_meta_formats())
    errors = sorted(meta.iter_errors(schema), key=lambda e: [str(p) for p in e.absolute_path])
    for exc in errors[:MAX_PROBLEMS_PER_FILE]:
        where = tuple(p if isinstance(p, int) else str(p) for p in exc.absolute_path)
        out.add(
            (*path, "output_schema", *where),
            f"not a valid JSON Schema: {exc.message}",
            "see https://json-schema.org/understanding-json-schema/",
        )
