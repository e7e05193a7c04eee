"""A pytest plugin: ``pytest --eslabon chains/`` collects chain files' test cases as test items.

Each (chain file, case, model) is one item, named ``chains/traduce.yaml::saludo[fake:echo]``.
The cases are read and compiled on each model when the file is collected (:func:`runner.plan`,
as ``eslabon test`` does before anything runs), so a mistake in a file is a collection error
with eslabon's own message. The first item of a file to run runs the file's selected cases on
its selected models in one batch (:func:`runner.run_tests`: concurrently, every model at the
same time) and keeps the results for the session; each item then only reads its own.

Registered through the ``pytest11`` entry point, so pytest loads it in every project where
eslabon is installed — eslabon's own test suite included. It does nothing unless ``--eslabon``
or the ``eslabon_paths`` ini option names chain files or folders, and loading it imports
nothing but pytest (LangChain loads only when an item runs). docs/testing.md, "In pytest".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from eslabon.evaluate.runner import Attempt, CaseResult, ChainPlan

__all__ = ["CaseFailedError", "ChainFile", "ChainItem"]

SUFFIXES = (".yaml", ".yml")
DEFAULT_CONCURRENCY = 8  # as `eslabon test`


@dataclass
class _Settings:
    """The options of one pytest run (kept in the config's stash: in-process runs of pytest,
    as pytester's, each have their own)."""

    paths: list[Path]
    models: list[Any] | None
    concurrency: int
    prepared: bool = False
    _explicit: set[Path] = field(default_factory=set)

    def wants(self, path: Path) -> bool:
        """``path`` is a chain file named by ``--eslabon`` or found in a folder it names."""
        if path.suffix not in SUFFIXES:
            return False
        resolved = path.resolve()
        if resolved in self._explicit:
            return True
        if not any(resolved.is_relative_to(p) for p in self.paths if p.is_dir()):
            return False
        # as `eslabon test DIR`: few-shot example files and files of cases are not chains
        from eslabon.chainfile.discover import is_cases_file, is_examples_file

        return not is_examples_file(path) and not is_cases_file(path)


_SETTINGS = pytest.StashKey[_Settings]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("eslabon", "eslabon chain tests (docs/testing.md)")
    group.addoption(
        "--eslabon",
        action="append",
        default=[],
        metavar="PATH",
        help="Collect the test cases of these chain files, or of the chain files in these "
        "folders (repeatable).",
    )
    group.addoption(
        "--eslabon-models",
        default=None,
        metavar="M1,M2",
        help="Run the chain cases on these models (comma-separated, as `eslabon test "
        "--models`). Default: each file's own model.",
    )
    group.addoption(
        "--eslabon-concurrency",
        type=int,
        default=None,
        metavar="N",
        help=f"Chain cases run at a time, per model (default {DEFAULT_CONCURRENCY}).",
    )
    parser.addini("eslabon_paths", "Chain files or folders whose tests to collect.", "paths")
    parser.addini("eslabon_models", "Models to run the chain cases on (M1,M2).", "string")


def pytest_configure(config: pytest.Config) -> None:
    named = [Path(p) for p in config.getoption("eslabon") or []]
    paths = [(config.invocation_params.dir / p) for p in named] or list(
        config.getini("eslabon_paths") or []
    )
    if not paths:
        return  # not asked for: nothing else happens in this run
    concurrency = config.getoption("eslabon_concurrency")
    concurrency = DEFAULT_CONCURRENCY if concurrency is None else concurrency
    if concurrency < 1:
        raise pytest.UsageError("--eslabon-concurrency: at least 1")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise pytest.UsageError(f"--eslabon: no such file or folder: {', '.join(missing)}")
    resolved = [p.resolve() for p in paths]
    settings = _Settings(
        resolved,
        _models(config.getoption("eslabon_models") or config.getini("eslabon_models") or None),
        concurrency,
        _explicit={p for p in resolved if p.is_file()},
    )
    config.stash[_SETTINGS] = settings
    config.addinivalue_line("markers", "eslabon: a test case of a chain file (--eslabon)")
    # the paths join what pytest collects: CI runs chain tests with its other tests
    for path in resolved:
        if not any(path.is_relative_to(base) for base in _arg_paths(config)):
            config.args.append(str(path))


def _arg_paths(config: pytest.Config) -> Iterator[Path]:
    for arg in config.args:
        text = str(arg).split("::")[0]
        path = config.invocation_params.dir / text
        if path.exists():
            yield path.resolve()


def _models(text: str | None) -> list[Any] | None:
    if not text or not text.strip():
        return None
    from eslabon.chat.modelspec import model_option, split_models
    from eslabon.errors import UserError

    try:
        option = "--eslabon-models"
        return [model_option(m, option) for m in split_models(text.strip(), option)]
    except UserError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> ChainFile | None:
    settings = parent.config.stash.get(_SETTINGS, None)
    if settings is None or not settings.wants(file_path):
        return None
    file: ChainFile = ChainFile.from_parent(parent, path=file_path)
    return file


class ChainFile(pytest.File):
    """A chain file: one item per case and model. It runs its items' cases in one batch."""

    chain_plan: ChainPlan | None = None
    _results: dict[tuple[str, str], CaseResult] | None = None
    _failure: BaseException | None = None

    def collect(self) -> Iterator[ChainItem]:
        settings = self.config.stash[_SETTINGS]
        from eslabon.errors import EslabonError
        from eslabon.trust.redaction import redact

        try:
            if not settings.prepared:
                from eslabon.chat.models import load_env

                load_env()  # the working folder's .env, as every eslabon command reads it
                settings.prepared = True
            from eslabon.chainfile.loader import load_spec
            from eslabon.evaluate.cases import shown_path
            from eslabon.evaluate.runner import plan

            # as it is shown in messages: relative to the working folder, when inside it
            spec = load_spec(Path(shown_path(self.path)))
            if not spec.tests:
                return  # a chain without tests: nothing to collect (`eslabon test` skips it)
            self.chain_plan = plan(spec, settings.models)
        except EslabonError as exc:
            raise self.CollectError(redact(f"error: {exc}")) from None
        for case in self.chain_plan.cases:
            for label, _chain in self.chain_plan.models:
                item: ChainItem = ChainItem.from_parent(
                    self, name=f"{case.name}[{label}]", case_name=case.name, label=label
                )
                item.add_marker("eslabon")
                yield item

    def result(self, item: ChainItem) -> CaseResult:
        """``item``'s case on its model; the first call runs every selected item of this file."""
        if self._failure is not None:
            raise self._failure
        if self._results is None:
            try:
                self._results = self._run()
            except BaseException as exc:
                self._failure = exc
                raise
        return self._results[(item.case_name, item.label)]

    def _run(self) -> dict[tuple[str, str], CaseResult]:
        from eslabon.evaluate.runner import run_tests

        assert self.chain_plan is not None
        mine = [i for i in self.session.items if isinstance(i, ChainItem) and i.parent is self]
        cases = {i.case_name for i in mine}
        labels = {i.label for i in mine}
        # only what was selected (-k, -m, node ids): a deselected case costs no request
        chosen = replace(
            self.chain_plan,
            cases=[c for c in self.chain_plan.cases if c.name in cases],
            models=[m for m in self.chain_plan.models if m[0] in labels],
        )
        settings = self.config.stash[_SETTINGS]
        run = run_tests([chosen], concurrency=settings.concurrency, log=None)
        return {
            (result.case.name, model.label): result
            for chain in run.chains
            for model in chain.models
            for result in model.results
        }


class CaseFailedError(Exception):
    """A chain case failed on a model; the message lists its failed checks."""


class ChainItem(pytest.Item):
    """One case of a chain file on one model."""

    def __init__(self, *, case_name: str, label: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case_name = case_name
        self.label = label

    def runtest(self) -> None:
        assert isinstance(self.parent, ChainFile)
        result = self.parent.result(self)
        if not result.passed:
            raise CaseFailedError(self._failure_text(result))

    def _failure_text(self, result: CaseResult) -> str:
        from eslabon.trust.redaction import redact

        lines = [f"{result.case.name} on {self.label} ({result.case.where})"]
        runs = len(result.attempts)
        if runs > 1:
            lines[0] += f": passed {result.passes} of {runs} runs"
        for n, attempt in enumerate(result.attempts, 1):
            if attempt.passed:
                continue
            indent = "  "
            if runs > 1:
                lines.append(f"  run {n}:")
                indent = "    "
            # a message of many lines (an error's) keeps the indentation
            lines += [
                indent + part for line in _attempt_lines(attempt) for part in line.split("\n")
            ]
        return redact("\n".join(lines))

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | Any:
        if isinstance(excinfo.value, CaseFailedError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.case_name} on {self.label}"


SHOWN = 300  # characters of an expected value or an output in a failure


def _attempt_lines(attempt: Attempt) -> list[str]:
    """Each failed check: its kind, what it expected, what came out, and why."""
    if attempt.error is not None:  # every check failed with the error as its reason: once
        error = attempt.error
        lines = [f"the run failed: {error.get('type', 'error')}: {error.get('message', '')}"]
        if attempt.verdicts:
            kinds = ", ".join(v.kind for v in attempt.verdicts)
            lines.append(f"so every check fails: {kinds}")
        return lines
    lines = []
    for verdict in attempt.verdicts:
        if verdict.passed:
            continue
        lines.append(f"✗ {verdict.kind}")
        lines.append(f"    expected: {_shown(verdict.expected)}")
        if verdict.got is not None:
            lines.append(f"    got:      {_shown(verdict.got)}")
        if verdict.reason:
            lines.append(f"    reason:   {verdict.reason}")
    if not lines:  # every check passed, but not the weighted score
        lines.append(f"score {attempt.score:.2f} is under the case's pass_score")
    return lines


def _shown(value: Any) -> str:
    from eslabon.evaluate.assertions import text_of

    text = " ".join(text_of(value).split())
    return text if len(text) <= SHOWN else text[: SHOWN - 1] + "…"
