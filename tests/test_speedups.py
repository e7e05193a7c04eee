"""The memo eslabon puts on LangChain's per-call signature check (eslabon.chat.speedups)."""

from __future__ import annotations

import functools
import gc
import inspect
import os
import subprocess
import sys
import typing
from typing import Any, ClassVar
from weakref import WeakKeyDictionary

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import chat_models
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

import eslabon.running.compile  # noqa: F401  (installs the memo, as compiling a chain does)
from eslabon.chat import speedups
from helpers import ROOT


def test_compiling_installs_it_once() -> None:
    assert speedups.installed()
    memo = chat_models._signature_parameters
    speedups.install()
    assert chat_models._signature_parameters is memo


def test_it_answers_what_inspect_answers() -> None:
    parameters = chat_models._signature_parameters

    class A:
        def run(self, messages: list[Any], run_manager: Any = None) -> None: ...

    class B(A):
        def run(self, messages: list[Any]) -> None:  # type: ignore[override]
            ...

    def plain(x: int, *, y: int = 2) -> None: ...

    for obj in (A().run, A().run, B().run, A.run, plain, functools.partial(plain, 1), len):
        assert list(parameters(obj)) == list(inspect.signature(obj).parameters), obj
    # the same function bound and unbound: each keeps its own answer
    assert "self" in parameters(A.run) and "self" not in parameters(A().run)
    assert "run_manager" in parameters(A().run) and "run_manager" not in parameters(B().run)


def test_a_function_that_goes_away_takes_its_entry_with_it() -> None:
    parameters = chat_models._signature_parameters
    cells = parameters.__closure__  # type: ignore[attr-defined]
    tables = [c.cell_contents for c in cells if isinstance(c.cell_contents, WeakKeyDictionary)]
    assert len(tables) == 2  # bound methods' and other callables'

    def make() -> Any:
        def temporary(a: int) -> None: ...

        return temporary

    gc.collect()  # what earlier tests left behind goes first
    before = sum(len(t) for t in tables)
    function = make()
    parameters(function)
    assert sum(len(t) for t in tables) == before + 1
    del function
    gc.collect()
    assert sum(len(t) for t in tables) == before


class _WithManager(chat_models.BaseChatModel):
    seen: ClassVar[list[bool]] = []

    @property
    def _llm_type(self) -> str:
        return "with-manager"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.seen.append(run_manager is not None)
        return ChatResult(generations=[ChatGeneration(message=AIMessage("con"))])


class _WithoutManager(chat_models.BaseChatModel):
    @property
    def _llm_type(self) -> str:
        return "without-manager"

    def _generate(  # type: ignore[override]
        self, messages: list[BaseMessage], stop: list[str] | None = None
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage("sin"))])


def test_models_with_and_without_a_run_manager_are_called_as_before() -> None:
    with_manager = _WithManager()
    for _ in range(3):  # the second and third calls are answered by the memo
        assert with_manager.invoke("hola").content == "con"
        assert _WithoutManager().invoke("hola").content == "sin"
    assert with_manager.seen == [True, True, True]


class _Duck:
    def tap_output_aiter(self, run_id: Any, output: Any) -> Any:
        return output

    def tap_output_iter(self, run_id: Any, output: Any) -> Any:
        return output


class _Blocked:
    def __init__(self) -> None:
        self.tap_output_aiter = lambda run_id, output: output
        self.tap_output_iter = None  # a method blocked


class _GivenLater:
    def __init__(self) -> None:  # the members are the instance's, not its class's
        self.tap_output_aiter = lambda run_id, output: output
        self.tap_output_iter = lambda run_id, output: output


class _HalfDuck:
    def tap_output_iter(self, run_id: Any, output: Any) -> Any:
        return output


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="Python 3.12 keeps the members itself")
async def test_the_streaming_handler_check_answers_as_python_does() -> None:
    """The check LangChain makes of each handler at every model call: the protocol's members
    worked out once, the answer the same as Python 3.11's own for every kind of object.
    (Async: LangChain's streaming handlers take the running event loop when made.)"""
    from langchain_core.tracers._streaming import _StreamingCallbackHandler
    from langchain_core.tracers.event_stream import _AstreamEventsCallbackHandler
    from langchain_core.tracers.log_stream import LogStreamCallbackHandler

    from eslabon.observe.meter import Meter

    protocol: Any = _StreamingCallbackHandler
    assert type(protocol) is speedups.KeptMembersMeta
    python_s = typing._ProtocolMeta.__instancecheck__  # type: ignore[attr-defined]

    class Later(_StreamingCallbackHandler[Any]):  # a class made from the protocol afterwards
        def tap_output_aiter(self, run_id: Any, output: Any) -> Any:
            return output

        def tap_output_iter(self, run_id: Any, output: Any) -> Any:
            return output

    objects = [
        Meter(None),
        LogStreamCallbackHandler(auto_close=False),
        _AstreamEventsCallbackHandler(),
        _Duck(),
        _Blocked(),
        _GivenLater(),
        _HalfDuck(),
        Later(),
        object(),
        "text",
    ]
    answers = [isinstance(one, protocol) for one in objects]
    assert answers == [python_s(protocol, one) for one in objects]
    assert answers == [False, True, True, True, False, True, False, True, False, False]
    assert isinstance(Later(), Later) and not isinstance(_Duck(), Later)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="Python 3.12 keeps the members itself")
def test_a_class_made_from_the_protocol_still_travels() -> None:
    """The metaclass pickles by reference: a handler class made from the protocol (which gets
    it) goes by cloudpickle, as Ray ships it, into a process where eslabon installed it too."""
    import pickle

    import cloudpickle
    from langchain_core.tracers._streaming import _StreamingCallbackHandler

    assert pickle.loads(pickle.dumps(type(_StreamingCallbackHandler))) is speedups.KeptMembersMeta

    def made_here() -> type:
        class Mine(_StreamingCallbackHandler[Any]):
            def tap_output_aiter(self, run_id: Any, output: Any) -> Any:
                return output

            def tap_output_iter(self, run_id: Any, output: Any) -> Any:
                return output

        return Mine

    code = (
        "import pickle, sys\n"
        "import eslabon.running.compile\n"
        "from langchain_core.tracers._streaming import _StreamingCallbackHandler as P\n"
        "mine = pickle.loads(sys.stdin.buffer.read())\n"
        "print(type(P).__name__, isinstance(mine(), P), isinstance(object(), P))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=cloudpickle.dumps(made_here()),
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["KeptMembersMeta", "True", "False"]


def test_a_streaming_handler_still_streams_the_model() -> None:
    """astream_events (a streaming handler in the callbacks) still gets the model's tokens."""
    from eslabon.chat.fake import EchoChatModel

    async def events() -> list[str]:
        return [
            e["event"] async for e in EchoChatModel().astream_events("uno dos tres", version="v2")
        ]

    import asyncio

    seen = asyncio.run(events())
    assert seen.count("on_chat_model_stream") >= 2


def test_it_can_be_left_out() -> None:
    code = (
        "import eslabon.running.compile\n"
        "from eslabon.chat import speedups\n"
        "from langchain_core.tracers._streaming import _StreamingCallbackHandler as P\n"
        "print(speedups.installed(), type(P).__name__ == 'KeptMembersMeta')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "ESLABON_NO_SPEEDUPS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False False"
