"""Running test cases on models: each (case, repetition) is a row of the batch runner.

Why the batch runner (:func:`eslabon.interfaces.batch.arun_batch`) rather than a scheduler of
its own: it already runs rows concurrently, under a rate limit, with the chain's retries and
fallbacks, a cache (``with_cache``), the run log, and a meter per row; a test run is a batch
whose rows are cases, followed by checks. Each model's rows go to a JSONL file in a temporary
folder, read back when its batch ends (the records carry outputs, steps as data, tool calls,
stats and errors), and each record is then checked (:mod:`eslabon.evaluate.assertions`).

Everything that can be a mistake in the files (cases, model references, imports, ``python``
checks) is found by :func:`plan` before anything runs, so a mistake costs no request.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eslabon.evaluate.assertions import CALLING, Context, Verdict, acheck, check, failed_run
from eslabon.evaluate.cases import Case, expand_cases, shown_path

__all__ = [
    "Attempt",
    "CaseResult",
    "ChainPlan",
    "ChainRun",
    "ModelRun",
    "TestRun",
    "arun_tests",
    "plan",
    "run_tests",
]


@dataclass
class Attempt:
    """One run of a case on a model: what came out, and what each check said."""

    output: Any
    error: dict[str, Any] | None
    stats: dict[str, Any]
    verdicts: list[Verdict]
    score: float
    passed: bool
    steps: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None


@dataclass
class CaseResult:
    """A case on one model: its runs (``repeat`` of them)."""

    case: Case
    attempts: list[Attempt]

    @property
    def passes(self) -> int:
        return sum(a.passed for a in self.attempts)

    @property
    def pass_rate(self) -> float:
        return self.passes / len(self.attempts) if self.attempts else 0.0

    @property
    def passed(self) -> bool:
        """Every run passed (a repeated case reports its pass rate beside this)."""
        return bool(self.attempts) and self.passes == len(self.attempts)

    @property
    def score(self) -> float:
        return statistics.fmean(a.score for a in self.attempts) if self.attempts else 0.0


@dataclass
class ModelRun:
    """Every case of a chain on one model, and the figures of all its runs."""

    label: str
    results: list[CaseResult]
    elapsed_s: float = 0.0

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    def attempts(self) -> list[Attempt]:
        return [a for r in self.results for a in r.attempts]

    def tokens(self) -> int | None:
        """Tokens (input and output) of every run; None when no run reported usage."""
        usages = [a.stats.get("usage") for a in self.attempts()]
        known = [u for u in usages if u]
        return sum(u.get("total_tokens", 0) for u in known) if known else None

    def cost(self) -> float | None:
        """USD of every run; None when any run's price is unknown (never a guess)."""
        costs = [a.stats.get("cost") for a in self.attempts()]
        if not costs or any(c is None for c in costs):
            return None
        return float(sum(c for c in costs if c is not None))

    def median_latency_ms(self) -> float | None:
        times = [a.stats.get("latency_ms") for a in self.attempts()]
        known = [t for t in times if isinstance(t, int | float)]
        return statistics.median(known) if known else None

    def judging(self) -> dict[str, Any] | None:
        """What the judges' calls on these runs used: ``calls``, ``tokens``, ``cost`` (USD;
        None when a price is unknown). None when no judge answered."""
        judged = [v for a in self.attempts() for v in a.verdicts if v.usage is not None]
        if not judged:
            return None
        costs = [v.cost for v in judged]
        return {
            "calls": len(judged),
            "tokens": sum((v.usage or {}).get("total_tokens", 0) for v in judged),
            "cost": None if any(c is None for c in costs) else float(sum(c or 0 for c in costs)),
        }


@dataclass
class ChainPlan:
    """A chain file ready to test: its cases (filtered) and one compiled chain per model."""

    file: str
    name: str
    cases: list[Case]
    models: list[tuple[str, Any]]  # (label, compiled chain)
    context: Context
    path: str | None = None  # the chain file, resolved (``file`` is as shown)

    @property
    def rows(self) -> int:
        return sum(c.repeat for c in self.cases) * len(self.models)


@dataclass
class ChainRun:
    file: str
    name: str
    models: list[ModelRun]
    path: str | None = None


@dataclass
class TestRun:
    """A whole ``eslabon test``: every chain's results, and the files that had no tests."""

    chains: list[ChainRun] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # chain files without tests
    elapsed_s: float = 0.0
    unlogged: str | None = None

    @property
    def passed(self) -> bool:
        return all(r.passed for c in self.chains for m in c.models for r in m.results)

    def counts(self) -> tuple[int, int]:
        """(cases passed, cases run), each case counted once per model."""
        results = [r for c in self.chains for m in c.models for r in m.results]
        return sum(r.passed for r in results), len(results)


# -- planning -------------------------------------------------------------------------------------
def model_label(ref: Any) -> str:
    from eslabon.chat.modelspec import ref_label

    return ref_label(ref)


def plan(
    spec: Any,
    models: Sequence[Any] | None,
    *,
    allow_imports: list[str] | None = None,
    match: str | None = None,
    repeat: int | None = None,
    cache: Any = None,
) -> ChainPlan:
    """``spec``'s cases (those whose name contains ``match``, any case) compiled on each of
    ``models`` (None: the file's own model). ``repeat`` replaces every case's own."""
    from dataclasses import replace

    from eslabon.running.compile import compile_chain

    if "id" in spec.input_names():
        from eslabon.errors import UserError

        # each case runs as a batch row, and a row's "id" names it: it would replace the input
        raise UserError(
            f"{spec.source or 'the chain'}: eslabon test cannot run a chain with an input named "
            "'id' yet (the batch rows it runs on use 'id' as their name)\n"
            "    fix: rename the input (e.g. 'ident')"
        )
    cases = expand_cases(spec)
    if match:
        cases = [c for c in cases if match.casefold() in c.name.casefold()]
    if repeat is not None:
        cases = [replace(c, repeat=repeat) for c in cases]
    folder = spec.source.parent if spec.source is not None else None
    context = Context(
        allow_imports=allow_imports,
        folder=folder,
        embeddings=spec.embeddings,
        retry=spec.retry.model_dump() if spec.retry is not None else None,
        output_step=spec.output_step(),
        defaults={n: d for n in spec.input_names() if (d := spec.input_default(n)) is not None},
    )
    for case in cases:  # a python check that cannot be imported is a mistake: before any run
        for assertion in case.expect:
            if assertion.kind == "python":
                context.function(str(assertion.expected))
    compiled: list[tuple[str, Any]] = []
    labels: set[str] = set()
    for ref in models or [None]:
        chain = compile_chain(spec, model=ref, allow_imports=allow_imports)
        if cache is not None:
            chain = chain.with_cache(cache)
        label = chain.model_label if ref is None else model_label(ref)
        base, n = label, 2
        while label in labels:  # two mappings of one provider: fake, fake #2
            label, n = f"{base} #{n}", n + 1
        labels.add(label)
        compiled.append((label, chain))
        context.add_model_under_test(label, chain)
    _prepare_calling_checks(spec, cases, context, [label for label, _ in compiled])
    file = shown_path(spec.source) if spec.source is not None else "<chain>"
    path = str(spec.source.resolve()) if spec.source is not None else None
    return ChainPlan(file, spec.name or Path(file).stem, cases, compiled, context, path)


def _prepare_calling_checks(
    spec: Any, cases: list[Case], context: Context, labels: list[str]
) -> None:
    """Every judge model and the embeddings ``similar`` checks need, built before any run (a
    bad reference, a key the file may not send, a missing embeddings model cost no request)."""
    from eslabon.chainfile.loader import problems_in

    kinds = {a.kind for case in cases for a in case.expect}
    if "similar" in kinds:
        with problems_in(spec):
            context.embedder()
    if "judge" not in kinds:
        return
    import re
    from dataclasses import replace

    from eslabon.errors import ChainConfigError

    with problems_in(spec):
        for case in cases:
            # 'chain.yaml tests[0]', 'casos.jsonl line 3': the file, and where in it
            found = re.match(r"^(.*) ((?:tests\[\d+\]|line \d+|row \d+).*)$", case.where)
            file, at = (found[1], found[2]) if found else (None, case.where)
            for n, assertion in enumerate(case.expect):
                if assertion.kind != "judge":
                    continue
                for label in labels:
                    try:
                        context.judge(assertion, label, where=f"{at}.expect[{n}]")
                    except ChainConfigError as exc:
                        named = [p if p.file else replace(p, file=file) for p in exc.problems]
                        raise ChainConfigError(named) from None


# -- running --------------------------------------------------------------------------------------
OnRow = Callable[[dict[str, Any], Any], None]


async def arun_tests(
    plans: Sequence[ChainPlan],
    *,
    concurrency: int = 8,
    rate: float | None = None,
    on_row: OnRow | None = None,
    log: Any = None,
) -> TestRun:
    """Run every plan's cases on its models: a chain's models at the same time (each with
    ``concurrency`` rows at a time and ``rate`` requests a second), chains one after another.
    ``on_row(record, report)`` after each run, ``report`` counting every chain and model."""
    from eslabon.interfaces.batch import BatchReport

    overall = BatchReport(total=sum(p.rows for p in plans))
    began = time.perf_counter()
    result = TestRun()

    def counted(record: dict[str, Any], report: BatchReport) -> None:
        if record.get("error") is None:
            overall.done += 1
        else:
            overall.failed += 1
        overall.elapsed_s = time.perf_counter() - began
        if report.unlogged is not None:
            result.unlogged = report.unlogged
        if on_row is not None:
            on_row(record, overall)

    with tempfile.TemporaryDirectory(prefix="eslabon-test-") as folder:
        for n, chain_plan in enumerate(plans):
            chain_plan.context.rate = rate  # a judge's calls keep to it too
            runs = [
                _run_model(
                    chain_plan,
                    label,
                    chain,
                    Path(folder) / f"{n}-{m}.jsonl",
                    counted,
                    log,
                    concurrency=concurrency,
                    rate=rate,
                )
                for m, (label, chain) in enumerate(chain_plan.models)
            ]
            models = await asyncio.gather(*runs)
            run = ChainRun(chain_plan.file, chain_plan.name, list(models), chain_plan.path)
            result.chains.append(run)
    result.elapsed_s = time.perf_counter() - began
    return result


def run_tests(plans: Sequence[ChainPlan], **options: Any) -> TestRun:
    """:func:`arun_tests` from synchronous code (on the batch runner's event loop)."""
    from eslabon.interfaces.batch import run_sync

    result: TestRun = run_sync(arun_tests(plans, **options))
    return result


async def _run_model(
    chain_plan: ChainPlan,
    label: str,
    chain: Any,
    out: Path,
    on_row: OnRow,
    log: Any,
    *,
    concurrency: int,
    rate: float | None,
) -> ModelRun:
    from eslabon.interfaces.batch import arun_batch

    rows = [
        {**case.inputs, "id": f"{case.index}.{k}"}
        for case in chain_plan.cases
        for k in range(case.repeat)
    ]
    began = time.perf_counter()
    await arun_batch(
        chain,
        rows,
        out,
        concurrency=concurrency,
        rate=rate,
        on_row=on_row,
        log=log,
        log_kind="test",
        prompts=any(a.kind == "received" for case in chain_plan.cases for a in case.expect),
    )
    records = {str(r["id"]): r for r in _records(out)}
    context = chain_plan.context
    if not any(a.kind in CALLING for case in chain_plan.cases for a in case.expect):
        results = [
            CaseResult(
                case,
                [
                    _attempt(case, records.get(f"{case.index}.{k}"), context, label)
                    for k in range(case.repeat)
                ],
            )
            for case in chain_plan.cases
        ]
        return ModelRun(label, results, time.perf_counter() - began)
    # judge and similar checks call a model: awaited, at most `concurrency` at a time
    limit = asyncio.Semaphore(concurrency)

    async def checked(case: Case, k: int) -> Attempt:
        async with limit:
            return await _aattempt(case, records.get(f"{case.index}.{k}"), context, label)

    async def case_result(case: Case) -> CaseResult:
        attempts = await asyncio.gather(*(checked(case, k) for k in range(case.repeat)))
        return CaseResult(case, list(attempts))

    checked_cases = await asyncio.gather(*(case_result(c) for c in chain_plan.cases))
    return ModelRun(label, list(checked_cases), time.perf_counter() - began)


def _records(out: Path) -> list[dict[str, Any]]:
    import json

    if not out.is_file():
        return []
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line]


def _run_of(record: dict[str, Any]) -> dict[str, Any]:
    """The run a check reads: each step's value, the output, the stats, tool calls, documents."""
    return {
        **(record.get("steps") or {}),
        "output": record.get("output"),
        "stats": record.get("stats") or {},
        **{k: record[k] for k in ("tool_calls", "documents") if k in record},
    }


_NOT_RUN = {"error": {"type": "NotRun", "message": "the run did not finish"}, "stats": {}}


def _attempt(
    case: Case, record: dict[str, Any] | None, context: Context, label: str | None = None
) -> Attempt:
    """A finished row's record, checked: each check's verdict, the weighted score. A
    ``judge`` or ``similar`` check calls its model synchronously (:func:`_aattempt` awaits)."""
    record = record or _NOT_RUN  # None cannot happen unless the batch was cut short
    error = record.get("error")
    if error is not None:
        verdicts = [failed_run(a, error) for a in case.expect]
    else:
        run, prompts = _run_of(record), record.get("prompts")
        inputs = {**context.defaults, **case.inputs}  # what the run was given
        verdicts = [
            check(a, run, context, inputs=inputs, under_test=label, prompts=prompts)
            for a in case.expect
        ]
    return _scored(case, record, verdicts)


async def _aattempt(
    case: Case, record: dict[str, Any] | None, context: Context, label: str | None = None
) -> Attempt:
    """:func:`_attempt`, awaiting the checks that call a model."""
    record = record or _NOT_RUN
    error = record.get("error")
    if error is not None:
        verdicts = [failed_run(a, error) for a in case.expect]
    else:
        run, prompts = _run_of(record), record.get("prompts")
        inputs = {**context.defaults, **case.inputs}  # what the run was given
        verdicts = [
            await acheck(a, run, context, inputs=inputs, under_test=label, prompts=prompts)
            for a in case.expect
        ]
    return _scored(case, record, verdicts)


def _scored(case: Case, record: dict[str, Any], verdicts: list[Verdict]) -> Attempt:
    error = record.get("error")
    stats = record.get("stats") or {}
    weights = [a.weight or 1.0 for a in case.expect]
    score = (
        sum(w * v.score for w, v in zip(weights, verdicts, strict=True)) / sum(weights)
        if verdicts
        else (0.0 if error else 1.0)
    )
    passed = error is None and (
        all(v.passed for v in verdicts)
        or (case.pass_score is not None and score >= case.pass_score)
    )
    return Attempt(
        output=record.get("output"),
        error=error,
        stats=stats,
        verdicts=verdicts,
        score=score,
        passed=passed,
        steps=record.get("steps"),
        tool_calls=record.get("tool_calls"),
    )
