"""The chain format is pure data: its modules import nothing of the layers above them, and the
lists of keys the checks and messages use are read from the pydantic models."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
from pydantic import BaseModel

from eslabon import ChainConfigError
from eslabon.chainfile.checks import RULES
from eslabon.chainfile.loader import load_spec_text
from eslabon.chainfile.spec import (
    CHAIN_WIDE_KEYS,
    FAKE_SETTINGS,
    HF_SETTINGS,
    LOCAL_SETTINGS,
    MODEL_SETTINGS,
    NETWORK_SETTINGS,
    SHORTHAND_KEYS,
    TEMPLATE_KEYS,
    Chain,
    ChromaRetriever,
    DocumentSpec,
    ExampleFile,
    ExamplePair,
    HistorySpec,
    InputSpec,
    LengthSelector,
    ModelMapping,
    Params,
    Retry,
    Step,
)
from helpers import ROOT

# The format, bottom up: what chain files are (spec), the words of its schema errors, loading,
# checking and templates, and the small modules they stand on.
FORMAT = [
    "eslabon.errors",
    "eslabon.chainfile.suggest",
    "eslabon.chainfile.schema_errors",
    "eslabon.chainfile.spec",
    "eslabon.chainfile.templates",
    "eslabon.chainfile.yamlsafe",
    "eslabon.chainfile.examples",
    "eslabon.trust.paths",
    "eslabon.chat.modelspec",
    "eslabon.chainfile.checks",
    "eslabon.chainfile.loader",
]
# Running chains: the compiler, models, retrieval, the command line, and what they bring.
ABOVE = [
    "eslabon.running.compile",
    "eslabon.running.runcore",
    "eslabon.chat.models",
    "eslabon.rag.retrieval",
    "eslabon.running.selectors",
    "eslabon.running.structured",
    "eslabon.running.toolcalls",
    "eslabon.interfaces.render",
    "eslabon.interfaces.cli",
    "langchain_core",
    "langchain",
    "openai",
    "anthropic",
    "chromadb",
    "llama_cpp",
]
# Below spec, the format's own upper modules are "above" too: spec checks nothing, loads nothing.
ALSO_ABOVE = {
    "eslabon.chainfile.schema_errors": [
        "eslabon.chainfile.spec",
        "eslabon.chainfile.loader",
        "eslabon.chainfile.checks",
    ],
    "eslabon.chainfile.spec": ["eslabon.chainfile.loader", "eslabon.chainfile.checks"],
    "eslabon.chainfile.templates": [
        "eslabon.chainfile.spec",
        "eslabon.chainfile.loader",
        "eslabon.chainfile.checks",
    ],
}


def _loaded_after_import(module: str) -> list[str]:
    code = f"import json, sys\nimport {module}\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return list(json.loads(done.stdout))


def _top(name: str) -> list[str]:
    return [name, name.split(".")[0]] if not name.startswith("eslabon.") else [name]


@pytest.mark.parametrize("module", FORMAT)
def test_a_format_module_imports_nothing_above_it(module: str) -> None:
    loaded = set(_loaded_after_import(module))
    above = [*ABOVE, *ALSO_ABOVE.get(module, [])]
    found = sorted(name for name in above if name in loaded)
    assert not found, f"importing {module} loads {found}"


def test_the_format_modules_are_all_listed() -> None:
    """What spec, loader, checks and templates import from eslabon is tested above too."""
    loaded = set()
    for module in (
        "eslabon.chainfile.spec",
        "eslabon.chainfile.loader",
        "eslabon.chainfile.checks",
        "eslabon.chainfile.templates",
    ):
        loaded |= {m for m in _loaded_after_import(module) if m.startswith("eslabon.")}
    # the package's own helpers below the format (errors' secret hiding, ...)
    packages = {"eslabon.chainfile", "eslabon.chat", "eslabon.trust"}  # their __init__s: a line
    assert loaded - set(FORMAT) - packages <= {
        "eslabon.trust.redaction",
        "eslabon.trust.allow",
        "eslabon.trust.project",
    }, sorted(loaded - set(FORMAT))


def _imported(node: ast.AST) -> list[tuple[str, list[str]]]:
    """The eslabon modules imported anywhere in ``node``, with the names taken from each."""
    found: list[tuple[str, list[str]]] = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.ImportFrom):
            found.append((sub.module or "", [a.name for a in sub.names]))
        elif isinstance(sub, ast.Import):
            found += [(a.name, []) for a in sub.names]
    return [(module, names) for module, names in found if module.split(".")[0] == "eslabon"]


SPEC = ROOT / "src" / "eslabon" / "chainfile" / "spec.py"


def test_spec_imports_no_eslabon_module_inside_functions() -> None:
    tree = ast.parse(SPEC.read_text(encoding="utf-8"))
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        imports = _imported(function)
        assert not imports, f"{function.name} imports {imports}"


def test_spec_imports_only_modules_below_it() -> None:
    tree = ast.parse(SPEC.read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, ast.ImportFrom | ast.Import)]
    modules = {module for node in top for module, _ in _imported(node)}
    assert modules <= {"eslabon.errors", "eslabon.chainfile.schema_errors"}, modules


def test_the_format_has_no_methods_that_reach_above_it() -> None:
    # loading, checking and compiling are functions of the layers above (spec_from_yaml,
    # check_spec / spec_problems, compile_chain), not methods of the data
    for name in ("from_yaml", "problems", "check", "compile"):
        assert not hasattr(Chain, name), name


# -- keys read from the models ------------------------------------------------------------------


def test_key_lists_are_the_models_fields() -> None:
    own = [k for k in Step.model_fields if k in Chain.model_fields]
    assert list(CHAIN_WIDE_KEYS) == own[: len(CHAIN_WIDE_KEYS)]
    assert set(SHORTHAND_KEYS) == set(own) - set(CHAIN_WIDE_KEYS) - {"description"}
    assert TEMPLATE_KEYS == ("system", "prompt")
    # every model setting says which providers take it (repeat_penalty: both in-process runtimes)
    families = [LOCAL_SETTINGS, NETWORK_SETTINGS, FAKE_SETTINGS, HF_SETTINGS]
    assert set().union(*families) == set(MODEL_SETTINGS)
    assert set(LOCAL_SETTINGS) & set(HF_SETTINGS) == {"repeat_penalty"}
    assert not set(NETWORK_SETTINGS) & (set(LOCAL_SETTINGS) | set(HF_SETTINGS) | set(FAKE_SETTINGS))


def test_the_shorthand_is_one_step_with_the_chains_shorthand_keys() -> None:
    chain = Chain(inputs={"x": "X"}, system="S", prompt="{x}", max_tool_calls=None)
    [step] = chain.normalized_steps()
    assert step.id == "output" and step.prompt == "{x}" and step.system == "S"
    assert set(step.model_fields_set) == set(Step.model_fields)
    assert all(getattr(step, k) is None for k in CHAIN_WIDE_KEYS)


def _hint(text: str) -> str:
    with pytest.raises(ChainConfigError) as info:
        load_spec_text(text)
    [problem] = [p for p in info.value.problems if p.message.startswith("unknown key")]
    return problem.hint or ""


UNKNOWN_KEYS: list[tuple[str, type[BaseModel]]] = [
    ("prompt: x\nzzz: 1\n", Chain),
    ("steps: [{id: a, prompt: x, zzz: 1}]\n", Step),
    ("prompt: x\nparams: {zzz: 1}\n", Params),
    ("prompt: x\nmodel: {provider: openai, zzz: 1}\n", ModelMapping),
    ("prompt: x\nfallbacks: [{provider: openai, zzz: 1}]\n", ModelMapping),
    ("prompt: x\nretry: {zzz: 1}\n", Retry),
    ("prompt: x\nhistory: {zzz: 1}\n", HistorySpec),
    ("prompt: '{a}'\ninputs: {a: {zzz: 1}}\n", InputSpec),
    ("prompt: x\nexamples: [{input: a, output: b, zzz: 1}]\n", ExamplePair),
    ("prompt: x\nexamples: [{file: a.jsonl, zzz: 1}]\n", ExampleFile),
    (
        "prompt: x\nexamples: [{input: a, output: b}]\nselector: {type: length, zzz: 1}\n",
        LengthSelector,
    ),
    ("prompt: '{context}'\nretriever: {type: chroma, collection: abc, zzz: 1}\n", ChromaRetriever),
    ("prompt: x\nretriever: {type: static, documents: [{content: a, zzz: 1}]}\n", DocumentSpec),
]


@pytest.mark.parametrize(("text", "model"), UNKNOWN_KEYS, ids=[m.__name__ for _, m in UNKNOWN_KEYS])
def test_an_unknown_key_lists_its_models_keys(text: str, model: type[BaseModel]) -> None:
    hint = _hint(text)
    assert f"valid keys here: {', '.join(model.model_fields)}" in hint


def test_a_step_built_in_code_lists_a_steps_keys() -> None:
    with pytest.raises(ChainConfigError) as info:
        Step(id="a", prompt="x", promtp="y")
    [problem] = info.value.problems
    assert problem.hint == (
        "did you mean 'prompt'? valid keys here: " + ", ".join(Step.model_fields)
    )


def test_rules_have_names_and_run_in_order() -> None:
    names = [name for name, _ in RULES]
    assert len(set(names)) == len(names) and all(rule.__doc__ for _, rule in RULES)
