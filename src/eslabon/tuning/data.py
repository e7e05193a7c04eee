"""What ``eslabon tune`` teaches: rows (a data file, the chain's few-shot examples, logged runs)
rendered into the messages the chain sends for one step, each with the answer to learn.

Rendering runs the chain itself, compiled with a stand-in model (:class:`_Teacher`): the step's
system prompt, few-shot block (its selector picks as it would), template, retrieved context
and call settings are the chain's own, because the chain's own code made them. Earlier steps
answer with the row's columns named after them; the tuned step's call is caught and the run
stops there. Why not format the prompt template here: a second renderer would drift from the
one that runs (a selector, a retriever, a structured step's instructions).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from eslabon.chainfile.spec import Chain, Step
from eslabon.chainfile.suggest import did_you_mean
from eslabon.chat.fake import FakeChatModel
from eslabon.errors import ChainConfigError, Problem, UserError

__all__ = ["Pair", "Row", "examples_pairs", "file_rows", "log_rows", "render_pairs", "tuned_step"]

ANSWER = "output"  # the column holding the answer to teach (as in `eslabon batch` results)
MAX_ROWS = 100_000
MAX_DATA_BYTES = 200_000_000  # read whole; rows to teach a small model fit well below


@dataclass(frozen=True)
class Row:
    """One thing to teach: the chain's inputs and earlier steps' answers, and the answer."""

    where: str  # 'datos.jsonl line 3', 'run 01JC...': said in every message about it
    values: dict[str, Any]
    output: str


@dataclass(frozen=True)
class Pair:
    """A row rendered: the messages the step sends, the call's settings, the answer."""

    where: str
    messages: list[BaseMessage]
    answer: str
    call: dict[str, Any] = field(default_factory=dict)  # e.g. a structured step's schema


def tuned_step(spec: Chain, step_id: str | None) -> Step:
    """The step to tune: ``step_id``, or the chain's only step."""
    steps = spec.normalized_steps()
    ids = [s.id for s in steps]
    if step_id is None:
        if len(steps) > 1:
            raise UserError(
                f"the chain has {len(steps)} steps: say which one to tune\n"
                f"    fix: --step {ids[-1]} (steps: {', '.join(ids)})"
            )
        step = steps[0]
    elif step_id not in ids:
        hint = did_you_mean(step_id, ids)
        raise UserError(
            f"no step '{step_id}' in the chain"
            + (f" ({hint})" if hint else "")
            + f"; steps: {', '.join(ids)}"
        )
    else:
        step = steps[ids.index(step_id)]
    if step.tools:
        raise UserError(
            f"step '{step.id}' calls tools: eslabon tune teaches a step's answer, not a tool "
            "loop\n    fix: tune a step without tools"
        )
    return step


def _answer_text(value: Any) -> str | None:
    """A row's answer as the model should write it: text as is, data as compact JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float | list | dict):
        return json.dumps(value, ensure_ascii=False)
    return None


def _earlier(spec: Chain, step: Step) -> list[str]:
    ids = [s.id for s in spec.normalized_steps()]
    return ids[: ids.index(step.id)]


def check_row(
    spec: Chain, step: Step, raw: Any, where: str, file: str | None, line: int | None
) -> tuple[Row | None, list[Problem]]:
    """``raw`` as a row to teach, or the problems that stop it (each naming the row)."""
    if not isinstance(raw, Mapping):
        got = f"expected a mapping, got {type(raw).__name__}"
        return None, [Problem(got, where, file, line, hint=_ROW_HINT)]
    earlier = _earlier(spec, step)
    messages = [*_unknown_columns(spec, raw, earlier), *_missing(spec, step, raw, earlier)]
    output = _answer_text(raw.get(ANSWER))
    if output is None or not output.strip():
        messages.append("no `output`: the answer to teach")
    if messages or output is None:
        return None, [Problem(m, where, file, line, hint=_ROW_HINT) for m in messages]
    values: dict[str, Any] = {}
    for name in spec.input_names():
        value = raw.get(name)
        if value is None or value == "":
            value = spec.input_default(name)
        values[name] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    for sid in earlier:
        values[sid] = _answer_text(raw.get(sid))
    return Row(where, values, output), []


_ROW_HINT = "each row: the chain's inputs and `output`, the answer to teach"


def _unknown_columns(spec: Chain, raw: Mapping[Any, Any], earlier: list[str]) -> list[str]:
    inputs = spec.input_names()
    known = [*inputs, *earlier, ANSWER, "id"]
    takes = f"the chain takes: {', '.join(inputs) or 'no inputs'}"
    if earlier:
        takes += f"; earlier steps' answers: {', '.join(earlier)}"
    out = []
    for name in raw:
        if str(name) not in known:
            found = did_you_mean(str(name), known)
            out.append(
                f"'{name}' is not an input of the chain"
                + (f" ({found})" if found else "")
                + f" — {takes}"
            )
    return out


def _missing(spec: Chain, step: Step, raw: Mapping[Any, Any], earlier: list[str]) -> list[str]:
    out = [
        f"no value for input '{name}' (and no default)"
        for name in spec.input_names()
        if raw.get(name) in (None, "") and spec.input_default(name) is None
    ]
    out += [
        f"no answer of step '{sid}', which runs before '{step.id}': give it as a column {sid}"
        for sid in earlier
        if _answer_text(raw.get(sid)) is None
    ]
    return out


def file_rows(spec: Chain, step: Step, path: Path) -> list[Row]:
    """The rows of a .jsonl / .yaml / .csv file (the same shape as ``eslabon batch`` inputs,
    plus ``output``); every bad row is reported at once, each with its line."""
    from eslabon.evaluate.cases import BadRow, shown_path
    from eslabon.evaluate.cases import file_rows as read

    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".yaml", ".yml", ".csv"):
        raise UserError(f"{path}: data must be .jsonl, .yaml or .csv (got '{path.suffix}')")
    shown = shown_path(path)
    rows: list[Row] = []
    problems: list[Problem] = []
    raw_rows = read(path, "rows to teach", MAX_DATA_BYTES)
    if not raw_rows:
        raise ChainConfigError(
            [Problem("no rows in the file", "", shown, None, hint="one row per answer to teach")]
        )
    if len(raw_rows) > MAX_ROWS:
        raise UserError(f"{shown}: {len(raw_rows):,} rows; eslabon tune takes up to {MAX_ROWS:,}")
    for number, raw in raw_rows:
        what = "row" if suffix in (".yaml", ".yml") else "line"
        line = None if suffix in (".yaml", ".yml") else number
        if isinstance(raw, BadRow):
            problems.append(Problem(raw.message, "" if line else f"{what} {number}", shown, line))
            continue
        if suffix == ".csv" and isinstance(raw, dict):
            raw = {k: (None if v == "" else v) for k, v in raw.items()}
        # with a line number, file:line says where; a YAML row is named by its number
        where = "" if line is not None else f"{what} {number}"
        row, found = check_row(spec, step, raw, where, shown, line)
        problems += found
        if row is not None:
            rows.append(Row(f"{shown} {what} {number}", row.values, row.output))
    if problems:
        raise ChainConfigError(problems)
    return rows


def log_rows(spec: Chain, step: Step, query: str | None, limit: int = MAX_ROWS) -> list[Row]:
    """Rows from the run log: this chain's runs (matching ``query``, full-text) that finished,
    with this step's answer as the one to teach — e.g. a bigger model's answers, to teach a
    small one."""
    from eslabon.observe.runlog import RunLog, log_path, logging_enabled

    path = log_path()
    if not logging_enabled() or not path.is_file():
        raise UserError(
            f"no run log at {path}\n    fix: run the chain first (eslabon run, batch, chat "
            "log every run), or give --data FILE"
        )
    log = RunLog(path)
    try:
        found = log.runs(limit=limit, query=query, chain=spec.name)
        runs = [log.get(run["id"]) for run in found if _teaches(run, spec)]
    finally:
        log.close()
    rows: list[Row] = []
    for run in runs:
        if run is None:
            continue
        answers = {s["id"]: s.get("output") for s in run.get("steps", []) if not s.get("error")}
        raw = {**(run.get("inputs") or {}), **answers}
        raw = {k: v for k, v in raw.items() if k in (*spec.input_names(), *_earlier(spec, step))}
        raw[ANSWER] = answers.get(step.id)
        row, _ = check_row(spec, step, raw, f"run {run['id']}", None, None)
        if row is not None:  # runs of an older version of the chain may not fit: skipped
            rows.append(row)
    if not rows:
        what = f" matching '{query}'" if query else ""
        raise UserError(
            f"no finished run of chain '{spec.name}'{what} with an answer of step '{step.id}' in "
            f"the run log ({path})\n    fix: eslabon logs -q ... shows what is there"
        )
    return list(reversed(rows))  # oldest first: the order they were run


def _teaches(run: Mapping[str, Any], spec: Chain) -> bool:
    """A logged run whose answers are worth teaching: it finished, it was not a test (an
    `eslabon test` run logs whatever the model said, wrong answers included), and it ran this
    chain file (another file may share the chain's name)."""
    if run.get("error") or run.get("kind") == "test":
        return False
    logged, here = run.get("file"), spec.source
    return logged is None or here is None or Path(str(logged)).resolve() == here.resolve()


def examples_pairs(spec: Chain, step: Step) -> list[Pair]:
    """The step's own few-shot examples as pairs: each example's ``input`` is the user message
    it stands for, after the step's system prompt (the tuned chain then drops its examples:
    with them in the prompt the answer would be in front of the model)."""
    from eslabon.chainfile.examples import load_examples

    if not step.examples:
        raise UserError(
            f"step '{step.id}' has no few-shot examples\n    fix: give --data FILE (rows of "
            "inputs and output)"
        )
    if step.output_schema is not None:
        raise UserError(
            f"step '{step.id}' answers with structured output: its examples are not calls "
            "\n    fix: give --data FILE (rows of inputs and output)"
        )
    head: list[BaseMessage] = [SystemMessage(step.system)] if step.system else []
    pairs = []
    for n, example in enumerate(load_examples(step.examples, spec.base_dir), 1):
        messages = [*head, HumanMessage(example["input"])]
        pairs.append(Pair(f"example {n}", messages, example["output"]))
    return pairs


class _Caught(BaseException):
    """The tuned step's call, caught: not an Exception, so no retry or fallback takes it."""

    def __init__(self, messages: list[BaseMessage], call: dict[str, Any]) -> None:
        super().__init__(messages, call)  # its arguments, so it pickles as every error here
        self.messages, self.call = messages, call


class _Teacher(FakeChatModel):
    """Stands in for every model of the chain: earlier steps answer from the row, the tuned
    step's call is caught (:class:`_Caught`)."""

    target: str = ""
    answers: dict[str, str] = Field(default_factory=dict)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        step = (run_manager.metadata if run_manager is not None else {}).get("eslabon_step")
        if step == self.target:
            raise _Caught(list(messages), dict(kwargs))
        answer = AIMessage(self.answers.get(str(step), ""))
        return ChatResult(generations=[ChatGeneration(message=answer)])


def render_pairs(
    spec: Chain, step: Step, rows: Iterable[Row], allow_imports: list[str] | None = None
) -> list[Pair]:
    """Each row as the messages the chain sends the step (see the module doc)."""
    from eslabon.errors import EslabonError
    from eslabon.running.compile import compile_chain

    teacher = _Teacher(target=step.id)
    chain = compile_chain(spec, model=teacher, allow_imports=allow_imports)
    structured = {s.id: s.structured for s in chain.steps if s.structured is not None}
    inputs = spec.input_names()
    pairs = []
    for row in rows:
        if step.id in structured:
            _check_structured(row.output, structured[step.id].schema, row.where, "`output`")
        teacher.answers = {k: v for k, v in row.values.items() if k not in inputs}
        try:
            chain.invoke({k: v for k, v in row.values.items() if k in inputs})
        except _Caught as caught:
            pairs.append(Pair(row.where, caught.messages, row.output, caught.call))
            continue
        except EslabonError as exc:  # e.g. an earlier structured step's column is not its JSON
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"{row.where}: the chain refused this row: {first}") from None
        raise UserError(f"{row.where}: the chain never reached step '{step.id}'")
    return pairs


def _check_structured(text: str, schema: Any, where: str, what: str) -> None:
    """A structured step's answer to teach must be what the step accepts: JSON in its schema."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserError(
            f"{where}: {what} is not JSON ({exc})\n    fix: the step answers in its "
            "output_schema: give the answer as JSON"
        ) from None
    try:
        schema.validate(data)
    except Exception as exc:  # the schema's own error (a private class), each problem's path
        raise UserError(f"{where}: {what} does not match the step's output_schema: {exc}") from None
