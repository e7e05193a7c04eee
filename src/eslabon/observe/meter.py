"""What a run used: tokens, time, attempts and cost, per step and in total.

A :class:`Meter` is a LangChain callback handler. A compiled chain gives every run one (its
result's ``stats``); it sees each chat-model call of the run — every retry, every fallback,
every turn of a tool loop and every structured-output retry is a model call of its own — and
the chain tells it where each step begins and ends. Why a callback handler rather than reading
replies in the run core: retries and fallbacks happen inside LangChain's wrappers, out of the
core's sight, and callbacks are where LangChain reports each call (the provider's usage, the
model that answered, each streamed token).

Which model answered: eslabon tags each model it builds with its ``provider:name``
(:func:`tag_model`); a model the caller built is known by LangChain's own ``ls_provider`` /
``ls_model_name``. Prices: :func:`eslabon.chat.prices.cost`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from decimal import Decimal
from time import perf_counter, time
from typing import TYPE_CHECKING, Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages.ai import UsageMetadata, add_usage

from eslabon.chat.prices import cost as price_of

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import BaseMessage
    from langchain_core.outputs import LLMResult

    from eslabon.chat.modelspec import ModelSpec
    from eslabon.chat.prices import Price

__all__ = ["Meter", "add_stats", "find_meter", "metered", "tag_model"]

# the metadata keys eslabon puts on the models it builds
MODEL_KEY = "eslabon_model"
PROVIDER_KEY = "eslabon_provider"
NAME_KEY = "eslabon_model_name"
ENDPOINT_KEY = "eslabon_own_endpoint"  # a base_url: the provider's public prices do not apply


def tag_model(model: BaseChatModel, spec: ModelSpec) -> BaseChatModel:
    """``model`` carrying what it was built from, for the meter and tracing (LangChain passes a
    model's ``metadata`` to every callback of its calls). Never a URL or a key: tracing
    systems receive metadata."""
    own = "base_url" in spec.kwargs or "base_urls" in spec.kwargs
    model.metadata = {
        **(model.metadata or {}),
        MODEL_KEY: spec.label,
        # a preset's name (ai21, vllm): its [prices] entry is ai21:MODEL, as it is shown
        PROVIDER_KEY: spec.shown_provider,
        NAME_KEY: spec.name,
        **({ENDPOINT_KEY: True} if own else {}),
    }
    return model


class _Call:
    """One model call: where it belongs, which model, when, what it used."""

    __slots__ = (
        "_cost",
        "cached",
        "ended",
        "failed",
        "first",
        "label",
        "messages",
        "name",
        "own_endpoint",
        "provider",
        "reply",
        "started",
        "step",
        "usage",
    )

    def __init__(self, step: str | None, metadata: Mapping[str, Any]) -> None:
        self.step = step
        self.provider = str(metadata.get(PROVIDER_KEY) or metadata.get("ls_provider") or "")
        self.name = str(metadata.get(NAME_KEY) or metadata.get("ls_model_name") or "")
        label = metadata.get(MODEL_KEY)
        if label is None:
            label = f"{self.provider}:{self.name}" if self.name else self.provider or None
        self.label: str | None = label
        self.own_endpoint = bool(metadata.get(ENDPOINT_KEY))
        self.started = perf_counter()
        self.first: float | None = None
        self.ended: float | None = None
        self.usage: UsageMetadata | None = None
        self.failed = False
        self.cached = False  # answered from LangChain's cache: no request, no cost
        self.messages: list[BaseMessage] | None = None
        self.reply: str | None = None
        self._cost: tuple[Decimal | None] | None = None

    def cost(self, prices: Mapping[str, Price] | None) -> Decimal | None:
        """What the call cost (worked out once: a step's figures and the run's both ask)."""
        if self._cost is None:
            own = "own" if self.own_endpoint else None
            found = (
                Decimal(0)
                if self.cached
                else None
                if self.usage is None
                else price_of(self.provider, self.name, self.usage, prices, own)
            )
            self._cost = (found,)
        return self._cost[0]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _sum_usage(calls: list[_Call]) -> dict[str, Any] | None:
    """The calls' usage added up; None when a call that answered reported none: a partial
    count is not the run's usage."""
    total: Any = None
    for call in calls:
        if call.failed:
            continue
        if call.usage is None:
            return None
        total = call.usage if total is None else _added(total, call.usage)
    if total is None:
        return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    return _ordered(total)


def _added(left: Mapping[str, Any], right: Mapping[str, Any]) -> dict[str, Any]:
    """LangChain's ``add_usage`` for the usual usage, counts and mappings of counts, written
    for speed (every run adds its calls' usage, per step and in all); LangChain's own for
    anything else."""
    out = dict(left)
    for key, value in right.items():
        have = out.get(key)
        if type(value) is int and (have is None or type(have) is int):
            out[key] = (have or 0) + value
        elif isinstance(value, dict) and (have is None or isinstance(have, dict)):
            out[key] = _added(have or {}, value)
        else:
            return dict(add_usage(left, right))  # type: ignore[arg-type]
    return out


def _ordered(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Usage with its counts first, as people read it (``add_usage`` shuffles them)."""
    first = ("input_tokens", "output_tokens", "total_tokens")
    return {**{k: usage[k] for k in first if k in usage}, **usage}


def _sum_cost(calls: list[_Call], prices: Mapping[str, Price] | None) -> float | None:
    """What the calls cost in USD; None when any call's price is unknown (never a guess)."""
    total = Decimal(0)
    for call in calls:
        if call.failed:
            continue
        one = call.cost(prices)
        if one is None:
            return None
        total += one
    return float(total)


class Meter(BaseCallbackHandler):
    """Counts a run's model calls. Pass one in ``config={"callbacks": [meter]}`` to read a run's
    figures even when it fails (``meter.stats()``); a compiled chain otherwise makes its own
    and puts ``stats()`` in its result under ``"stats"``. ``capture_messages`` keeps each
    step's first prompt (for the run log).

    A meter measures one chain run at a time: the run that claims it (:meth:`claim`: the
    first to start while it is free; it starts again from zero then). It counts the calls that
    descend from that run — a chain used as a tool inside a step counts in that step — and
    none of another run's that shares its callbacks (``batch`` with one config)."""

    run_inline = True  # in the calling thread: the figures are complete when a call returns
    _claims = threading.Lock()

    def __init__(
        self, prices: Mapping[str, Price] | None = None, capture_messages: bool = False
    ) -> None:
        self.prices = prices
        self.capture_messages = capture_messages
        self.owner: UUID | None = None  # the chain run this meter measures
        self._reset()

    def _reset(self) -> None:
        self.started = perf_counter()
        self.wall = time()  # when the run began, for the log
        self.ended: float | None = None
        self._calls: dict[UUID, _Call] = {}
        self._steps: dict[str, list[float]] = {}  # step id -> [began, ended?]
        self._step: str | None = None  # the step in progress
        self._parents: dict[UUID, UUID | None] = {}  # run id -> its parent's, to trace lineage

    def claim(self, run_id: UUID) -> bool:
        """Measure the chain run ``run_id`` from now on, if no other run is being measured."""
        with self._claims:
            if self.owner is not None:
                return False
            self.owner = run_id
        self._reset()
        return True

    def release(self, run_id: UUID) -> None:
        if self.owner == run_id:
            self.owner = None

    def _ours(self, parent: UUID | None) -> bool:
        """Whether a call whose parent run is ``parent`` belongs to the run being measured."""
        if self.owner is None:  # not claimed: used on a plain LangChain runnable
            return True
        for _ in range(256):  # a bound: lineage is never this deep
            if parent is None:
                return False
            if parent == self.owner:
                return True
            parent = self._parents.get(parent)
        return False

    def _started(
        self, *args: Any, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        self._parents[run_id] = parent_run_id

    # LangChain's callback protocol: model calls, and the runs between them and the chain's
    # (retry and fallback wrappers, tools, retrievers) to know whose calls they are
    on_chain_start = _started
    on_tool_start = _started
    on_retriever_start = _started

    @property
    def ignore_retry(self) -> bool:
        return True

    @property
    def ignore_custom_event(self) -> bool:
        return True

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self._ours(parent_run_id):
            return
        self._parents[run_id] = parent_run_id
        # steps run one after another: a call belongs to the step in progress (a chain run as
        # a tool inside it included); without a chain, LangChain's step tag says
        step = self._step if self.owner is not None else (metadata or {}).get("eslabon_step")
        call = _Call(step, metadata or {})
        if self.capture_messages and messages:
            call.messages = messages[0]
        self._calls[run_id] = call

    def on_llm_new_token(self, token: Any, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._calls.get(run_id)
        if call is not None and call.first is None and token:
            call.first = perf_counter()

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._calls.get(run_id)
        if call is None:
            return
        call.ended = perf_counter()
        usage = _usage_of(response)
        if usage is not None and "total_cost" in usage:  # LangChain's mark of a cache hit
            call.cached = usage["total_cost"] == 0  # type: ignore[typeddict-item]
            usage = {k: v for k, v in usage.items() if k != "total_cost"}  # type: ignore[assignment]
        call.usage = usage
        if self.capture_messages and response.generations and response.generations[0]:
            call.reply = response.generations[0][0].text

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._calls.get(run_id)
        if call is not None:
            call.ended = perf_counter()
            call.failed = True

    # -- told by the chain ------------------------------------------------------------------
    def begin(self, step: str) -> None:
        self._steps[step] = [perf_counter()]
        self._step = step

    def end(self, step: str) -> None:
        if (times := self._steps.get(step)) is not None:
            times.append(perf_counter())
        self._step = None

    def finish(self) -> None:
        self.ended = perf_counter()

    # -- figures ------------------------------------------------------------------------------
    def _figures(self, calls: list[_Call], began: float, ended: float | None) -> dict[str, Any]:
        # one pass over the calls: every run works its figures out, per step and in all
        answered = cached = 0
        first: float | None = None
        last = calls[-1] if calls else None  # the model that answered; else the last that tried
        for call in calls:
            if call.first is not None and (first is None or call.first < first):
                first = call.first
            if not call.failed:
                answered += 1
                cached += call.cached
                last = call
        return {
            "model": last.label if last is not None else None,
            "usage": _sum_usage(calls),
            "latency_ms": _ms((ended or perf_counter()) - began),
            "ttft_ms": _ms(first - began) if first is not None else None,
            "calls": answered,
            "attempts": len(calls),
            "cached": cached,
            "cost": _sum_cost(calls, self._prices()),
        }

    def _prices(self) -> Mapping[str, Price]:
        if self.prices is None:
            from eslabon.trust.project import load_project

            self.prices = load_project().prices
        return self.prices

    def stats(self) -> dict[str, Any]:
        """The run's figures: ``usage`` (LangChain's usage shape, summed), ``latency_ms``,
        ``ttft_ms`` (first streamed token; None unless streamed), ``calls`` (model replies),
        ``attempts`` (model requests, failed ones included), ``cost`` (USD; None when a price
        is unknown), ``models`` that answered, and the same per step under ``steps``."""
        calls = list(self._calls.values())
        by_step: dict[str, list[_Call]] = {step: [] for step in self._steps}
        for call in calls:
            if call.step in by_step:
                by_step[call.step].append(call)
        steps = {
            step: self._figures(by_step[step], times[0], times[1] if len(times) > 1 else None)
            for step, times in self._steps.items()
        }
        total = self._figures(calls, self.started, self.ended)
        total.pop("model")
        answered = (c.label for c in calls if not c.failed and c.label)
        return {**total, "models": list(dict.fromkeys(answered)), "steps": steps}

    def messages(self, step: str) -> list[BaseMessage] | None:
        """The first prompt ``step`` sent (with ``capture_messages``)."""
        for call in self._calls.values():
            if call.step == step and call.messages is not None:
                return call.messages
        return None

    def first_messages(self) -> dict[str, list[BaseMessage]]:
        """Each step's first prompt (with ``capture_messages``), in one pass over the calls."""
        found: dict[str, list[BaseMessage]] = {}
        for call in self._calls.values():
            if call.step is not None and call.messages is not None and call.step not in found:
                found[call.step] = call.messages
        return found

    def reply(self, step: str) -> str | None:
        """The text of ``step``'s last model reply (with ``capture_messages``)."""
        replies = [c.reply for c in self._calls.values() if c.step == step and c.reply is not None]
        return replies[-1] if replies else None


def _usage_of(response: LLMResult) -> UsageMetadata | None:
    """A call's usage: the reply's ``usage_metadata``, else the older ``llm_output`` counts."""
    for generations in response.generations:
        for generation in generations:
            usage = getattr(getattr(generation, "message", None), "usage_metadata", None)
            if usage is not None:
                return usage  # type: ignore[no-any-return]
    output = response.llm_output or {}
    counts = output.get("token_usage") or output.get("usage")
    if isinstance(counts, Mapping) and "prompt_tokens" in counts:
        inputs = int(counts.get("prompt_tokens") or 0)
        outputs = int(counts.get("completion_tokens") or 0)
        return UsageMetadata(
            input_tokens=inputs, output_tokens=outputs, total_tokens=inputs + outputs
        )
    return None


# The meter the next chain run started in this context is to use (see :func:`metered`)
_HANDED: ContextVar[Meter | None] = ContextVar("eslabon_meter", default=None)


@contextmanager
def metered(meter: Meter) -> Iterator[None]:
    """The chain run started inside this block measures with ``meter`` (claimed by the first
    run: one run inside it, as a tool, gets its own). Rather than ``meter`` in the run's
    ``config["callbacks"]``: a handler given there is a handler of the chain run itself, and
    LangChain's dispatch to it and to every child run's copy of it cost ≈ 70 µs a 3-step run
    on the 2-core development machine, against ≈ 3 µs for the chain's own meter, added to its
    children's callbacks."""
    token = _HANDED.set(meter)
    try:
        yield
    finally:
        _HANDED.reset(token)


def handed_meter() -> Meter | None:
    """The meter :func:`metered` hands to the chain run starting now, if free."""
    return _HANDED.get()


def find_meter(callbacks: Any) -> Meter | None:
    """A free Meter the caller passed in ``config["callbacks"]`` (a list or a manager)."""
    if callbacks is None:
        return None
    handlers = callbacks if isinstance(callbacks, list) else getattr(callbacks, "handlers", ())
    for handler in handlers:
        if isinstance(handler, Meter) and handler.owner is None:
            return handler
    return None


def add_stats(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict[str, Any]:
    """Two runs' totals added (batch totals, chat sessions): usage, latency, calls, attempts,
    and cost (None if either is unknown)."""
    usages = (first.get("usage"), second.get("usage"))
    usage = None if None in usages else _ordered(_added(*usages))  # type: ignore[arg-type]
    costs = (first.get("cost"), second.get("cost"))
    return {
        "usage": usage,
        "latency_ms": round(first.get("latency_ms", 0) + second.get("latency_ms", 0), 1),
        "calls": first.get("calls", 0) + second.get("calls", 0),
        "attempts": first.get("attempts", 0) + second.get("attempts", 0),
        "cached": first.get("cached", 0) + second.get("cached", 0),
        "cost": None if None in costs else round(costs[0] + costs[1], 12),  # type: ignore[operator]
    }
