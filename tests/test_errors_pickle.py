"""Every exception eslabon defines pickles (to a worker process and back) whole: its type, its
message and its attributes. And every EslabonError says its own exit code."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
from typing import Any

import pytest

import eslabon
from eslabon.errors import EslabonError, Problem, UserError

_PROBLEMS = [
    Problem("unknown key 'promt'", "steps[0].promt", "chain.yaml", 3, 5, "did you mean 'prompt'?"),
    Problem("input 'x' is never used", file="chain.yaml", warning=True),
]

# How to build each exception defined in eslabon: (args, kwargs). A new exception class needs
# an entry here (the test below fails until it has one), with arguments that set every
# attribute its __init__ sets.
_MESSAGE: tuple[tuple[Any, ...], dict[str, Any]] = (("something went wrong",), {})
CONSTRUCTORS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "eslabon.errors.EslabonError": _MESSAGE,
    "eslabon.errors.UserError": _MESSAGE,
    "eslabon.errors.EslabonRuntimeError": _MESSAGE,
    "eslabon.interfaces.ray_engine.WorkerDiedError": _MESSAGE,
    "eslabon.errors.InputError": _MESSAGE,
    "eslabon.errors.ModelError": _MESSAGE,
    "eslabon.errors.ChainConfigError": ((_PROBLEMS,), {}),
    "eslabon.errors.MissingDependencyError": (("the ui", "ui"), {"package": "gradio"}),
    "eslabon.errors.MissingCredentialsError": (("openai", "OPENAI_API_KEY"), {}),
    "eslabon.errors.OutputValidationError": (
        ("resumen", '{"a": 1}', "'b' is a required property", 3),
        {"fix": "simplify the schema"},
    ),
    "eslabon.errors.ProviderError": (("openai failed", "openai"), {"status": 500}),
    "eslabon.errors.KeyRejectedError": (("openai refused the key", "openai"), {"status": 401}),
    "eslabon.errors.ModelNotFoundError": (("no such model", "ollama"), {"status": 404}),
    "eslabon.errors.ContextLengthError": (("too long", "openai"), {"status": 400}),
    "eslabon.errors.RateLimitedError": (("slow down", "anthropic"), {"status": 429}),
    "eslabon.errors.ProviderUnavailableError": (("down", "google_genai"), {"status": 503}),
    "eslabon.errors.ProviderConnectionError": (
        ("could not connect", "ollama"),
        {"url": "http://127.0.0.1:11434/api/chat"},
    ),
    "eslabon.chainfile.examples.ExampleFileError": (
        ("ejemplos.jsonl: line 2: not JSON",),
        {"hint": "fix"},
    ),
    "eslabon.trust.imports.ImportNotAllowedError": _MESSAGE,
    "eslabon.chat.models.KeyNotAllowedError": _MESSAGE,
    "eslabon.chat.modelspec.ModelRefError": (("unknown provider 'opnai'",), {"hint": "openai?"}),
    "eslabon.trust.paths.PathNotAllowedError": (
        ("examples", "/etc/passwd is outside the chain's folder", "--allow-path /etc"),
        {},
    ),
    "eslabon.chainfile.patterns.PatternError": _MESSAGE,
    "eslabon.interfaces.render._Captured": _MESSAGE,
    "eslabon.rag.retrieval.EmbeddingsMismatchError": _MESSAGE,
    "eslabon.rag.retrieval.IndexNotFoundError": _MESSAGE,
    "eslabon.running.structured._Invalid": _MESSAGE,
    "eslabon.running.toolcalls.NoAnswerError": _MESSAGE,
    "eslabon.observe.record.RunNotLogged": _MESSAGE,
    "eslabon.evaluate.pytest_plugin.CaseFailedError": _MESSAGE,
    "eslabon.observe.runlog.LogUnavailable": _MESSAGE,
    "eslabon.observe.runlog.DuplicateRun": _MESSAGE,
    "eslabon.observe.runlog._NotPlain": _MESSAGE,
    "eslabon.chat.adapter.AdapterError": (("no adapter folder at x",), {"hint": "tune one"}),
    "eslabon.tuning.data._Caught": (([], {"ls_structured_output_format": None}), {}),
    "eslabon.chainfile.yamlsafe.YamlLimitError": (
        ("too deep", "flatten it"),
        {"line": 3, "col": 7},
    ),
}


# Not yet picklable (a required argument besides the message, in a class that is not an
# EslabonError). strict: the test says when one is fixed, to remove it here.
NOT_YET_PICKLABLE: dict[str, str] = {}


def _eslabon_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined at the top level of a module of eslabon."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(eslabon.__path__, "eslabon."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


EXCEPTIONS = _eslabon_exceptions()


def test_every_exception_has_constructor_arguments_here() -> None:
    missing = sorted(set(EXCEPTIONS) - set(CONSTRUCTORS))
    assert not missing, f"add these to CONSTRUCTORS in {__file__}: {missing}"
    gone = sorted(set(CONSTRUCTORS) - set(EXCEPTIONS))
    assert not gone, f"no longer defined in eslabon, remove from CONSTRUCTORS: {gone}"


def test_the_walk_finds_exceptions_outside_errors_py() -> None:
    for name in (
        "eslabon.running.toolcalls.NoAnswerError",
        "eslabon.rag.retrieval.EmbeddingsMismatchError",
        "eslabon.rag.retrieval.IndexNotFoundError",
        "eslabon.chainfile.patterns.PatternError",
        "eslabon.chainfile.yamlsafe.YamlLimitError",
    ):
        assert name in EXCEPTIONS


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(reason=NOT_YET_PICKLABLE[n], strict=True))
        if n in NOT_YET_PICKLABLE
        else n
        for n in sorted(CONSTRUCTORS)
    ],
)
def test_an_exception_survives_pickle(name: str) -> None:
    if name not in EXCEPTIONS:
        pytest.fail(f"{name} is not defined in eslabon any more")
    cls = EXCEPTIONS[name]
    args, kwargs = CONSTRUCTORS[name]
    error = cls(*args, **kwargs)

    for protocol in (pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL):
        copy = pickle.loads(pickle.dumps(error, protocol=protocol))
        assert type(copy) is cls
        assert str(copy) == str(error)
        assert copy.args == error.args
        assert vars(copy) == vars(error)


def test_attributes_survive_pickle() -> None:
    from eslabon.errors import ChainConfigError, OutputValidationError, ProviderConnectionError

    problems = pickle.loads(pickle.dumps(ChainConfigError(_PROBLEMS))).problems
    assert problems == _PROBLEMS
    assert problems[0].format() == _PROBLEMS[0].format()
    error = pickle.loads(pickle.dumps(OutputValidationError("paso", "raw", "bad", 2)))
    assert (error.step, error.raw, error.errors, error.attempts) == ("paso", "raw", "bad", 2)
    url = "http://127.0.0.1:8080/v1"
    error = pickle.loads(pickle.dumps(ProviderConnectionError("no", "openai", url)))
    assert (error.provider, error.status, error.url) == ("openai", None, url)


def test_an_attribute_set_after_raising_survives_too() -> None:
    from eslabon.errors import ProviderError

    error = ProviderError("failed", "openai", 500)
    error.add_note("while running step 'plan'")
    copy = pickle.loads(pickle.dumps(error))
    assert copy.__notes__ == ["while running step 'plan'"]
    assert (copy.provider, copy.status) == ("openai", 500)


@pytest.mark.parametrize(
    "name", sorted(n for n, c in EXCEPTIONS.items() if issubclass(c, EslabonError))
)
def test_each_error_says_its_exit_code(name: str) -> None:
    cls = EXCEPTIONS[name]
    assert issubclass(cls, EslabonError)
    # a mistake the user can fix: 2, even when a provider found it (a rejected key); else 1
    assert cls.exit_code == (2 if issubclass(cls, UserError) else 1)


def test_a_new_class_that_is_both_a_runtime_and_a_user_error_exits_2() -> None:
    from eslabon.errors import ProviderError

    class PluginKeyError(ProviderError, UserError):  # as a plugin might define one
        pass

    assert PluginKeyError.exit_code == 2  # the user's to fix, like KeyRejectedError


def test_yaml_limit_errors_keep_their_notes() -> None:
    from eslabon.chainfile.yamlsafe import YamlLimitError

    error = YamlLimitError("too deep", "flatten it", 3, 7)
    error.add_note("in chain.yaml")
    again = pickle.loads(pickle.dumps(error))
    assert again.__notes__ == ["in chain.yaml"] and (again.line, again.hint) == (3, "flatten it")
