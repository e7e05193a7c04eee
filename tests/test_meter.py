"""Every run's stats: tokens, time, calls, attempts, cost — per step and in total, on every way
of running, counted independently by LangChain's own usage callback where it can be."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import get_usage_metadata_callback
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from eslabon import KeyRejectedError, load_chain
from eslabon.chat.fake import FakeChatModel
from eslabon.chat.prices import cost
from eslabon.interfaces.batch import run_batch
from eslabon.observe.meter import Meter
from eslabon.observe.record import cost_text, summary_line
from helpers import CHAINS, ROOT, timeless, unmetered_chunks, write
from wire_server import WireServer

CANONICAL = CHAINS / "analizar_planificar_resolver.yaml"
STEPS = ("analisis", "plan", "solucion")


def langchain_count(run: Any) -> dict[str, int]:
    """LangChain's own count of a run's tokens (``UsageMetadataCallbackHandler``), all models."""
    with get_usage_metadata_callback() as counted:
        run()
    totals = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    for usage in counted.usage_metadata.values():
        for key in totals:
            totals[key] += usage[key]  # type: ignore[literal-required]
    return totals


def tokens(usage: dict[str, Any]) -> dict[str, int]:
    return {k: usage[k] for k in ("input_tokens", "output_tokens", "total_tokens")}


def test_a_result_carries_each_steps_figures_and_their_sum() -> None:
    chain = load_chain(CANONICAL, model="fake:echo")
    holder: dict[str, Any] = {}
    counted = langchain_count(lambda: holder.update(chain.invoke({"problema": "dos más dos"})))
    stats = holder["stats"]
    assert list(stats["steps"]) == list(STEPS)
    assert tokens(stats["usage"]) == counted  # the same as LangChain's own count
    for field in ("input_tokens", "output_tokens"):
        assert stats["usage"][field] == sum(s["usage"][field] for s in stats["steps"].values())
    for step in stats["steps"].values():
        assert step["model"] == "fake:echo" and step["calls"] == step["attempts"] == 1
        assert step["cost"] == 0.0 and step["ttft_ms"] is None  # not streamed
        assert 0 <= step["latency_ms"] <= stats["latency_ms"]
    assert (stats["calls"], stats["attempts"], stats["cost"]) == (3, 3, 0.0)
    assert stats["models"] == ["fake:echo"]
    # fake:echo answers with its prompt, and counts words and punctuation as tokens
    assert (
        stats["steps"]["analisis"]["usage"]["output_tokens"] == 6
    )  # Analiza el problema : dos más dos


def test_every_way_of_running_reports_the_same_figures() -> None:
    chain = load_chain(CANONICAL, model="fake:echo")
    given = {"problema": "p"}

    async def both() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return await chain.ainvoke(given), [c async for c in chain.astream(given)]

    invoked = chain.invoke(given)["stats"]
    streamed = list(chain.stream(given))
    unmetered_chunks(streamed)  # the stats close the stream, alone
    ainvoked, astreamed = asyncio.run(both())
    batched = chain.batch([given, given])
    ways = [invoked, streamed[-1]["stats"], ainvoked["stats"], astreamed[-1]["stats"]]
    ways += [r["stats"] for r in batched]
    assert all(timeless(s) == timeless(invoked) for s in ways)
    # the time to the first token is known when tokens streamed, and only then
    assert streamed[-1]["stats"]["ttft_ms"] is not None and invoked["ttft_ms"] is None
    assert all(s["ttft_ms"] is not None for s in streamed[-1]["stats"]["steps"].values())


def test_a_tool_loop_counts_every_model_call(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "inputs: {pregunta: x}\nprompt: '{pregunta}'\ntools: [eslabon.tools:calculadora]\n",
    )
    call = AIMessage(
        "", tool_calls=[{"name": "calculadora", "args": {"expresion": "17*23"}, "id": "c1"}]
    )
    chain = load_chain(path, model=FakeChatModel(responses=[call, "391"]))
    holder: dict[str, Any] = {}
    counted = langchain_count(lambda: holder.update(chain.invoke({"pregunta": "17*23?"})))
    step = holder["stats"]["steps"]["output"]
    assert (step["calls"], step["attempts"]) == (2, 2)  # the tool call, then the answer
    assert tokens(step["usage"]) == counted


def test_structured_output_retries_count_every_call(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prompt: dame un número\n"
        "output_schema: {type: object, properties: {n: {type: integer}}, required: [n]}\n",
    )
    chain = load_chain(path, model=FakeChatModel(responses=["no sé", '{"n": 3}']))
    holder: dict[str, Any] = {}
    counted = langchain_count(lambda: holder.update(chain.invoke({})))
    assert holder["output"] == {"n": 3}
    step = holder["stats"]["steps"]["output"]
    assert (step["calls"], step["attempts"]) == (2, 2)  # the invalid answer, then the fixed one
    assert tokens(step["usage"]) == counted


@pytest.fixture
def openai(server: WireServer, monkeypatch: pytest.MonkeyPatch) -> WireServer:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-meter-test-key-123456")
    return server


def openai_chain(tmp_path: Path, server: WireServer, extra: str = "", own: bool = False) -> Any:
    """A chain on the loopback server: as OpenAI itself (``openai_api_base``, the caller's
    setting: priced by genai-prices), or as a compatible server (``base_url`` in the file)."""
    if own:
        model = f"{{provider: openai, name: gpt-4o-mini, base_url: '{server.url}/v1'}}"
        return load_chain(write(tmp_path, f"model: {model}\n{extra}prompt: hola\n"))
    itself = {"provider": "openai", "name": "gpt-4o-mini", "openai_api_base": server.url + "/v1"}
    return load_chain(write(tmp_path, f"{extra}prompt: hola\n"), model=itself)


def test_a_retry_is_an_attempt_and_the_fallback_is_the_model_that_answered(
    openai: WireServer, tmp_path: Path
) -> None:
    chain = openai_chain(tmp_path, openai, "retry: {attempts: 3, backoff: 0}\n", own=True)
    openai.fail_next("server")
    step = chain.invoke({})["stats"]["steps"]["output"]
    assert (step["attempts"], step["calls"], step["model"]) == (2, 1, "openai:gpt-4o-mini")
    assert summary_line(chain.invoke({})["stats"], 1).count("failed attempt") == 0
    fallback = "fallbacks: [{provider: fake, responses: [respaldo]}]\n"
    chain = openai_chain(tmp_path, openai, fallback, own=True)
    openai.fail_next("server")
    result = chain.invoke({})
    step = result["stats"]["steps"]["output"]
    assert result["output"] == "respaldo"
    assert (step["attempts"], step["calls"], step["model"]) == (2, 1, "fake")
    assert result["stats"]["models"] == ["fake"]
    assert "1 failed attempt" in summary_line(result["stats"], 1)


def test_what_openai_calls_cost_on_every_path(openai: WireServer, tmp_path: Path) -> None:
    chain = openai_chain(tmp_path, openai)
    invoked = chain.invoke({})["stats"]
    streamed = list(chain.stream({}))[-1]["stats"]  # usage in a stream too (stream_usage)
    assert timeless(streamed) == timeless(invoked)
    expected = cost("openai", "gpt-4o-mini", invoked["usage"])
    assert expected is not None and expected > 0
    assert invoked["cost"] == float(expected)
    # a compatible server's model is not OpenAI's: unknown, never a guess
    assert openai_chain(tmp_path, openai, own=True).invoke({})["stats"]["cost"] is None


def test_the_projects_prices_price_a_compatible_server(
    openai: WireServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "eslabon.toml").write_text(
        '[prices]\n"openai:gpt-4o-mini" = {input = 1.5, output = 6}\n', encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    stats = openai_chain(tmp_path, openai, own=True).invoke({})["stats"]
    usage = stats["usage"]
    own = (Decimal(usage["input_tokens"]) * Decimal("1.5") + usage["output_tokens"] * 6) / 10**6
    assert stats["cost"] == float(own) > 0


def test_a_model_that_reports_no_usage_is_not_counted_as_zero(tmp_path: Path) -> None:
    model = GenericFakeChatModel(messages=iter([AIMessage("hola")]))
    stats = load_chain(write(tmp_path, "prompt: x\n"), model=model).invoke({})["stats"]
    assert stats["usage"] is None and stats["cost"] is None
    # a model built by the caller: known by LangChain's own name for its provider
    assert stats["steps"]["output"]["model"] == model._get_ls_params()["ls_provider"]
    line = summary_line(stats, 1)
    assert "tokens not reported" in line and "cost unknown" in line


def test_a_meter_of_ones_own_sees_a_failed_run(openai: WireServer, tmp_path: Path) -> None:
    chain = openai_chain(tmp_path, openai)
    meter = Meter()
    openai.fail_next("auth")
    with pytest.raises(KeyRejectedError):
        chain.invoke({}, {"callbacks": [meter]})
    stats = meter.stats()
    assert (stats["attempts"], stats["calls"]) == (1, 0)
    assert stats["steps"]["output"]["model"] == "openai:gpt-4o-mini"
    assert meter.owner is None  # free for another run


def test_summary_line() -> None:
    stats = {
        "usage": {"input_tokens": 412, "output_tokens": 268, "total_tokens": 680},
        "latency_ms": 1834.0,
        "calls": 3,
        "attempts": 3,
        "cost": 0.00021,
    }
    assert summary_line(stats, 3) == "3 steps · 412 → 268 tokens · 1.8 s · $0.00021"
    assert summary_line({**stats, "latency_ms": 40.2, "cost": 0.0}, 1).endswith("40 ms · $0")
    assert cost_text(0.5) == "$0.5" and cost_text(1.23456) == "$1.2346"
    assert cost_text(0.0000153) == "$0.000015" and cost_text(None) == "cost unknown"


@pytest.mark.model
def test_the_local_model_reports_usage_when_streaming_too() -> None:
    chain = load_chain(CHAINS / "traductor.yaml", model={"provider": "local", "temperature": 0})
    invoked = chain.invoke({"frase": "buenas noches"})["stats"]
    streamed = list(chain.stream({"frase": "buenas noches"}))[-1]["stats"]
    assert invoked["usage"]["output_tokens"] > 0 and invoked["cost"] == 0.0
    assert tokens(streamed["usage"]) == tokens(invoked["usage"])
    assert streamed["ttft_ms"] is not None
    assert invoked["models"] == ["local:smollm2-135m-instruct"]  # the bundled model's name


# -- the command line --------------------------------------------------------------------------
def eslabon(*args: str, cwd: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "eslabon"
    return subprocess.run(
        [str(exe), *args], cwd=cwd, capture_output=True, text=True, input=input, timeout=120
    )


def test_run_prints_a_summary_line_after_the_output_and_json_has_the_stats(
    tmp_path: Path,
) -> None:
    args = ("run", str(CANONICAL), "-m", "fake:echo", "-i", "problema=hola", "--no-log")
    done = eslabon(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("3 steps · ") and last.endswith(" · $0") and "→" in last
    assert "tokens" not in done.stdout  # piped output stays the answer alone
    streamed = eslabon(*args, "--stream", cwd=tmp_path)
    assert streamed.stderr.strip().splitlines()[-1].startswith("3 steps · ")
    assert "stats" not in streamed.stdout
    as_json = json.loads(eslabon(*args, "--json", cwd=tmp_path).stdout)
    assert set(as_json["stats"]["steps"]) == set(STEPS)
    assert as_json["stats"]["usage"]["output_tokens"] > 0 and as_json["stats"]["cost"] == 0


def test_batch_rows_carry_their_stats_and_the_report_adds_them_up(tmp_path: Path) -> None:
    chain = load_chain(CANONICAL, model="fake:echo")
    rows = [{"id": n, "problema": f"problema {n}"} for n in range(5)]
    out = tmp_path / "out.jsonl"
    report = run_batch(chain, rows, out, concurrency=2)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert all(set(r["stats"]["steps"]) == set(STEPS) for r in records)
    assert report.stats is not None
    assert report.stats["usage"]["output_tokens"] == sum(
        r["stats"]["usage"]["output_tokens"] for r in records
    )
    assert report.stats["calls"] == 15 and report.stats["cost"] == 0.0
    assert "tokens" in report.summary() and "$0" in report.summary()


def test_the_batch_command_prints_the_totals(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"problema": "uno"}\n{"problema": "dos"}\n', encoding="utf-8")
    done = eslabon(
        "batch", str(CANONICAL), str(rows), "-o", str(tmp_path / "o.jsonl"), "-m", "fake:echo",
        "--no-log", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 done, 0 failed" in done.stdout and "tokens · $0" in done.stdout


def test_the_root_package_names_no_run_log_unless_asked() -> None:
    # a library does not write files unasked: a plain run opens no log
    code = (
        "import sys\nfrom eslabon import load_chain\n"
        f"load_chain({str(CANONICAL)!r}, model='fake:echo').invoke({{'problema': 'x'}})\n"
        "assert 'eslabon.observe.runlog' not in sys.modules, 'the run log was opened'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_meter_shared_by_concurrent_and_repeated_runs_counts_one_run() -> None:
    chain = load_chain(CANONICAL, model="fake:echo")
    given = {"problema": "p"}
    alone = chain.invoke(given)["stats"]
    shared = Meter()
    batched = chain.batch([given] * 4, config={"callbacks": [shared]})
    assert [timeless(r["stats"]) for r in batched] == [timeless(alone)] * 4
    assert shared.owner is None and shared.stats()["calls"] == 3  # one run's, not four

    async def gathered() -> list[dict[str, Any]]:
        one = Meter()
        runs = [chain.ainvoke(given, {"callbacks": [one]}) for _ in range(3)]
        return list(await asyncio.gather(*runs))

    assert [r["stats"]["calls"] for r in asyncio.run(gathered())] == [3, 3, 3]
    again = Meter()
    first = chain.invoke(given, {"callbacks": [again]})["stats"]
    second = chain.invoke(given, {"callbacks": [again]})["stats"]
    assert timeless(first) == timeless(second) == timeless(alone)  # from zero on each run


def test_a_chain_run_as_a_tool_counts_in_the_step_that_ran_it(tmp_path: Path) -> None:
    write(tmp_path, "inputs: {texto: x}\nprompt: 'resume {texto}'\n", "inner.yaml")
    write(
        tmp_path,
        "from pathlib import Path\n"
        "from eslabon import load_chain\n"
        "INNER = load_chain(Path(__file__).parent / 'inner.yaml', model='fake:echo')\n"
        "def resumir(texto: str) -> str:\n"
        '    """Resume un texto.\n\n    Args:\n        texto: el texto\n    """\n'
        "    return INNER.invoke({'texto': texto})['output']\n",
        "mis_herramientas.py",
    )
    path = write(
        tmp_path,
        "inputs: {pregunta: x}\n"
        "steps:\n  - {id: agente, prompt: '{pregunta}', tools: ['mis_herramientas:resumir']}\n",
    )
    call = AIMessage("", tool_calls=[{"name": "resumir", "args": {"texto": "hola"}, "id": "c1"}])
    outer = load_chain(
        path,
        model=FakeChatModel(responses=[call, "listo"]),
        allow_imports=["mis_herramientas"],
    )
    holder: dict[str, Any] = {}
    counted = langchain_count(lambda: holder.update(outer.invoke({"pregunta": "q"})))
    stats = holder["stats"]
    step = stats["steps"]["agente"]
    assert (step["calls"], tokens(step["usage"])) == (3, counted)  # 2 turns + the inner chain's
    assert tokens(stats["usage"]) == counted and "fake:echo" in stats["models"]


def test_a_cache_hit_costs_nothing(openai: WireServer, tmp_path: Path) -> None:
    from langchain_core.caches import InMemoryCache

    chain = openai_chain(tmp_path, openai).with_cache(InMemoryCache())
    paid = chain.invoke({})["stats"]
    cached = chain.invoke({})["stats"]
    assert len(openai.requests) == 1
    assert paid["cost"] and paid["cached"] == 0
    assert (cached["cost"], cached["cached"], cached["calls"]) == (0.0, 1, 1)
    assert "total_cost" not in cached["usage"]  # LangChain's cache mark is not a token count


# -- Gemini and Anthropic priced end to end ------------------------------------------------------
# published prices, USD per million tokens (input, output): what genai-prices must give them
PUBLISHED = {"claude-haiku-4-5": (1, 5), "gemini-2.5-flash": (Decimal("0.30"), Decimal("2.50"))}


@pytest.mark.parametrize(
    ("provider", "name", "key_var", "own_server"),
    [
        ("anthropic", "claude-haiku-4-5", "ANTHROPIC_API_KEY", "anthropic_api_url"),
        ("google_genai", "gemini-2.5-flash", "GOOGLE_API_KEY", "client_options"),
    ],
)
def test_gemini_and_anthropic_calls_cost_their_published_price(
    server: WireServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    provider: str,
    name: str,
    key_var: str,
    own_server: str,
) -> None:
    """The real client against the loopback server, reached through the client's own setting
    (the caller's, as ``openai_api_base`` for OpenAI): the model is the provider's, not an
    own endpoint, so the meter prices it — invoked and streamed."""
    monkeypatch.setenv(key_var, "test-key-meter-0123456789")
    where: Any = {"api_endpoint": server.url} if own_server == "client_options" else server.url
    ref = {"provider": provider, "name": name, own_server: where, "max_retries": 0}
    chain = load_chain(write(tmp_path, "prompt: hola\n"), model=ref)
    price_in, price_out = PUBLISHED[name]
    for stats in (chain.invoke({})["stats"], list(chain.stream({}))[-1]["stats"]):
        usage = stats["usage"]
        expected = (usage["input_tokens"] * price_in + usage["output_tokens"] * price_out) / 10**6
        assert usage["input_tokens"] > 0 and expected > 0
        assert stats["steps"]["output"]["model"] == f"{provider}:{name}"
        assert stats["cost"] == pytest.approx(float(expected), rel=1e-9)
        assert stats["steps"]["output"]["cost"] == stats["cost"]
    assert len(server.requests) == 2  # both calls went over the wire
    # the same model behind a base_url in a chain file is another server's: unknown
    own = {**ref, "base_url": server.url}
    del own[own_server]
    assert (
        load_chain(write(tmp_path, "prompt: hola\n"), model=own).invoke({})["stats"]["cost"] is None
    )


# -- cached and reasoning tokens ----------------------------------------------------------------
def test_cached_and_reasoning_tokens_reach_each_step_the_total_and_the_log(
    tmp_path: Path,
) -> None:
    """A provider that reports cache reads and reasoning tokens (as OpenAI does): each step's
    usage keeps them, the run's adds them up, the price charges cached input at its own rate,
    and the run log keeps them."""
    from eslabon.observe.meter import NAME_KEY, PROVIDER_KEY
    from eslabon.observe.runlog import RunLog

    def reply(text: str, cached: int, reasoning: int) -> AIMessage:
        return AIMessage(
            text,
            usage_metadata={
                "input_tokens": 1000,
                "output_tokens": 500,
                "total_tokens": 1500,
                "input_token_details": {"cache_read": cached},
                "output_token_details": {"reasoning": reasoning},
            },
        )

    model = GenericFakeChatModel(messages=iter([reply("uno", 200, 40), reply("dos", 600, 0)]))
    # as eslabon tags a model it builds: OpenAI's gpt-4o-mini, no base_url
    model.metadata = {PROVIDER_KEY: "openai", NAME_KEY: "gpt-4o-mini"}
    path = write(
        tmp_path,
        "steps:\n  - {id: a, prompt: primero}\n  - {id: b, prompt: 'segundo {a}'}\n",
    )
    logged = load_chain(path, model=model).with_log(tmp_path / "logs.sqlite")
    stats = logged.invoke({})["stats"]
    a, b = stats["steps"]["a"]["usage"], stats["steps"]["b"]["usage"]
    assert a["input_token_details"] == {"cache_read": 200}
    assert a["output_token_details"] == {"reasoning": 40}
    assert b["input_token_details"] == {"cache_read": 600}
    assert stats["usage"]["input_token_details"] == {"cache_read": 800}
    assert stats["usage"]["output_token_details"] == {"reasoning": 40}
    assert tokens(stats["usage"]) == {
        "input_tokens": 2000,
        "output_tokens": 1000,
        "total_tokens": 3000,
    }
    # gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output per million tokens
    step_a = (800 * Decimal("0.15") + 200 * Decimal("0.075") + 500 * Decimal("0.60")) / 10**6
    assert stats["steps"]["a"]["cost"] == pytest.approx(float(step_a), rel=1e-9)
    total = (1200 * Decimal("0.15") + 800 * Decimal("0.075") + 1000 * Decimal("0.60")) / 10**6
    assert stats["cost"] == pytest.approx(float(total), rel=1e-9)
    logged.flush()
    [run] = RunLog(tmp_path / "logs.sqlite").runs()
    kept = RunLog(tmp_path / "logs.sqlite").get(run["id"])
    assert kept is not None
    assert kept["usage"]["input_token_details"] == {"cache_read": 800}
    assert kept["steps"][0]["usage"]["output_token_details"] == {"reasoning": 40}
    assert kept["cost"] == pytest.approx(float(total), rel=1e-9)
