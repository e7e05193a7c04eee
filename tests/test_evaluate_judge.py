"""The checks of `eslabon test` that call out: `judge` (a model answers a yes/no question about
the output) at the wire against the loopback OpenAI-protocol server and with scripted fakes, and
`similar` on the offline embeddings; the `[tests] judge_model` setting."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from eslabon.chainfile.spec import Assertion
from eslabon.errors import ChainConfigError, UserError
from eslabon.evaluate.assertions import Context, Verdict, acheck, check, parse_judgement
from eslabon.interfaces import cli
from eslabon.trust.project import Project, load_project
from helpers import write
from wire_server import WireServer

KEY = "sk-judge-test-secret-24680135"
QUESTION = "Is it a faithful English translation?"


def eslabon(*args: str) -> Any:
    return CliRunner().invoke(cli.app, ["test", *args, "--no-log"])


def judge_on(server: WireServer, name: str = "juez-1") -> str:
    """A chain file's judge model on the loopback server (an OpenAI-compatible one)."""
    return f"{{provider: openai, name: {name}, base_url: '{server.url}/v1'}}"


def traduce(judge_model: str | None, question: str = QUESTION) -> str:
    model = f"\n        model: {judge_model}" if judge_model else ""
    return (
        "name: traduce\n"
        "inputs: {frase: a phrase}\n"
        'prompt: "{frase}"\n'
        "tests:\n"
        "  - name: noche\n"
        "    inputs: {frase: buenas noches}\n"
        "    expect:\n"
        f"      - judge: {json.dumps(question)}{model}\n"
    )


def run_of(output: Any) -> dict[str, Any]:
    return {"output": output, "stats": {}}


def judged(data: dict[str, Any], output: Any, context: Context, **kw: Any) -> Verdict:
    return check(Assertion.model_validate(data), run_of(output), context, **kw)


@pytest.fixture
def openai(server: WireServer, monkeypatch: pytest.MonkeyPatch) -> WireServer:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return server


# -- the judge's request and its verdict, at the wire ---------------------------------------------
def test_the_judges_request_carries_the_question_inputs_and_output(
    openai: WireServer, tmp_path: Path
) -> None:
    path = write(tmp_path, traduce(judge_on(openai)))
    openai.replies.append("PASS\nIt says good night.")
    out = tmp_path / "r.json"
    # the chain runs on fake:echo (no request): the only request is the judge's
    result = eslabon(
        str(path), "-m", "fake:echo", "--allow-endpoint", openai.url, "--json", str(out)
    )
    assert result.exit_code == 0, result.output
    (request,) = openai.requests
    body = request.body
    assert body["model"] == "juez-1"
    system, user = body["messages"]
    assert system["role"] == "system" and "strict grader" in system["content"]
    assert "PASS" in system["content"] and "FAIL" in system["content"]
    assert user["role"] == "user"
    content = user["content"]
    assert QUESTION in content
    assert "- frase: buenas noches" in content  # the case's inputs
    assert "-----\nbuenas noches\n-----" in content  # the output judged (echoed)
    assert request.headers["authorization"] == f"Bearer {KEY}"  # an endpoint the user allowed
    (check_data,) = json.loads(out.read_text())["chains"][0]["models"][0]["cases"][0]["runs"][0][
        "checks"
    ]
    assert check_data["kind"] == "judge" and check_data["passed"] is True
    assert check_data["score"] == 1.0 and check_data["got"] == "buenas noches"
    assert check_data["usage"]["total_tokens"] > 0  # the judge's own tokens, beside the run's


def test_a_structured_output_is_shown_to_the_judge_as_json(openai: WireServer) -> None:
    openai.replies.append("FAIL\nno age")
    context = Context()
    verdict = judged(
        {
            "judge": "Is the age there?",
            "model": {"provider": "openai", "name": "juez", "base_url": openai.url + "/v1"},
        },
        {"nombre": "Ana", "edad": 30},
        context,
        inputs={"texto": "Ana tiene 30 años"},
    )
    assert not verdict.passed and verdict.reason == "the judge (openai:juez) said FAIL: no age"
    content = openai.requests[0].body["messages"][1]["content"]
    assert '"edad": 30' in content and "- texto: Ana tiene 30 años" in content


@pytest.mark.parametrize(
    ("reply", "passed", "reason"),
    [
        ("PASS", True, ""),
        ("pass\nfaithful", True, ""),
        ("  **Pass** — it is faithful", True, ""),
        ("FAIL\nThe tense is wrong.", False, "said FAIL: The tense is wrong."),
        ("## fail: wrong word", False, "said FAIL: wrong word"),
        ("Verdict: FAIL", False, "said FAIL"),
        ("I think the translation is quite good overall.", False, "not PASS or FAIL"),
        ("PASS or FAIL", False, "not PASS or FAIL"),
    ],
)
def test_the_judges_verdict_is_parsed_from_its_first_line(
    server: WireServer, reply: str, passed: bool, reason: str
) -> None:
    server.replies.append(reply)
    ref = {"provider": "openai", "name": "juez", "base_url": server.url + "/v1"}
    verdict = judged({"judge": QUESTION, "model": ref}, "good night", Context())
    assert verdict.passed is passed and verdict.score == (1.0 if passed else 0.0)
    assert reason in verdict.reason
    if not passed and "not PASS" in reason:  # garbled: the raw text, shortened
        assert verdict.reason == f"the judge's answer was not PASS or FAIL: {reply}"


def test_a_garbled_answer_is_shown_shortened() -> None:
    reply = "Well... " + "x" * 400
    ref = {"provider": "fake", "responses": [reply]}
    verdict = judged({"judge": QUESTION, "model": ref}, "good night", Context())
    assert not verdict.passed
    assert verdict.reason == f"the judge's answer was not PASS or FAIL: {reply[:200]}"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("PASS", True),
        ("passed.", True),
        ("> `PASS`\nok", True),
        ("- FAIL: x", False),
        ("Yes, it is", True),
        ("No.", False),
        ("SÍ\nes fiel", True),
        ("Sí, es fiel", True),
        ("APROBADO", True),
        ("suspenso\nmotivo: falta una palabra", False),
        ("NO", False),
        ("Si bien la traducción es buena...", None),  # a sentence, not a verdict
        ("Not sure", None),
        ("The answer is PASS", None),
        ("PASS/FAIL", None),
        ("", None),
    ],
)
def test_verdict_words(answer: str, expected: bool | None) -> None:
    assert parse_judgement(answer)[0] is expected


def test_the_reason_is_the_rest_of_the_line_or_the_next_line() -> None:
    assert parse_judgement("FAIL: wrong tense") == (False, "wrong tense")
    assert parse_judgement("**FAIL**\n\nReason: wrong tense") == (False, "wrong tense")
    assert parse_judgement("suspenso\nmotivo: falta") == (False, "falta")


def test_the_judge_retries_a_rate_limit_and_reports_a_failure_as_the_checks(
    server: WireServer,
) -> None:
    ref = {"provider": "openai", "name": "juez", "base_url": server.url + "/v1"}
    context = Context(retry={"attempts": 2, "backoff": 0})
    server.fail_next("rate", retry_after="0")
    server.replies.append("PASS")
    assert judged({"judge": QUESTION, "model": ref}, "hola", context).passed
    assert len(server.requests) == 2  # the 429, then the answer
    server.fail_next("not_found")  # not retryable: the check fails, saying why
    verdict = judged({"judge": QUESTION, "model": ref}, "hola", context)
    assert not verdict.passed and verdict.reason.startswith("the judge (openai:juez) failed:")
    assert len(server.requests) == 3


def test_judges_are_built_once_per_reference() -> None:
    ref = {"provider": "fake", "responses": ["PASS"]}
    context = Context()
    first = context.judge(Assertion.model_validate({"judge": "a?", "model": ref}))
    again = context.judge(Assertion.model_validate({"judge": "b?", "model": dict(ref)}))
    assert first[0] is again[0]


def test_acheck_awaits_the_judge(server: WireServer) -> None:
    import asyncio

    server.replies.append("FAIL: nope")
    ref = {"provider": "openai", "name": "juez", "base_url": server.url + "/v1"}
    assertion = Assertion.model_validate({"judge": QUESTION, "model": ref})
    verdict = asyncio.run(acheck(assertion, run_of("hola"), Context()))
    assert not verdict.passed and verdict.reason.endswith("said FAIL: nope")


# -- keys -----------------------------------------------------------------------------------------
def test_a_chain_files_judge_never_gets_the_key_of_an_unapproved_host(
    openai: WireServer, tmp_path: Path
) -> None:
    path = write(tmp_path, traduce(judge_on(openai)))
    openai.replies.append("PASS")
    result = eslabon(str(path), "-m", "fake:echo")
    assert result.exit_code == 0, result.output
    (request,) = openai.requests
    assert KEY not in request.headers["authorization"]  # a placeholder went instead
    # naming the key outright is refused before any request
    named = judge_on(openai)[:-1] + ", api_key_env: OPENAI_API_KEY}"
    refused = eslabon(str(write(tmp_path, traduce(named), "b.yaml")), "-m", "fake:echo")
    assert refused.exit_code == 2 and "--allow-endpoint" in refused.stderr
    assert len(openai.requests) == 1


def test_the_key_is_never_in_any_report_even_when_the_judge_repeats_it(
    openai: WireServer, tmp_path: Path
) -> None:
    path = write(tmp_path, traduce(judge_on(openai)))
    openai.replies.append(f"FAIL: it leaked {KEY}")
    out, junit = tmp_path / "r.json", tmp_path / "r.xml"
    result = eslabon(
        str(path), "-m", "fake:echo", "--allow-endpoint", openai.url,
        "--json", str(out), "--junit", str(junit),
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert openai.requests[0].headers["authorization"] == f"Bearer {KEY}"  # it was sent
    assert "said FAIL: it leaked ***" in result.stdout
    for text in (result.stdout, result.stderr, out.read_text(), junit.read_text()):
        assert KEY not in text
    ET.fromstring(junit.read_text())  # still valid XML


# -- end to end with scripted fakes ---------------------------------------------------------------
JUDGED = """\
name: traduce
inputs: {frase: a phrase}
prompt: "{frase}"
tests:
  - name: noche
    inputs: {frase: good night}
    expect:
      - judge: Is it a greeting?
        model: {provider: fake, responses: ["PASS\\nit greets"]}
  - name: estacion
    inputs: {frase: where is the station}
    expect:
      - contains: station
      - judge: Is it a greeting?
        model: {provider: fake, responses: ["FAIL\\nit asks the way"]}
"""


def test_a_scripted_judge_end_to_end(tmp_path: Path) -> None:
    path = write(tmp_path, JUDGED)
    out = tmp_path / "r.json"
    result = eslabon(str(path), "-m", "fake:echo", "--json", str(out))
    assert result.exit_code == 1, result.output
    assert "1/2 cases passed" in result.stdout
    assert "judge: expected Is it a greeting?" in result.stdout
    assert "the judge (fake) said FAIL: it asks the way" in result.stdout
    cases = json.loads(out.read_text())["chains"][0]["models"][0]["cases"]
    assert [c["passed"] for c in cases] == [True, False]
    checks = cases[1]["runs"][0]["checks"]
    assert [(c["kind"], c["passed"], c["score"]) for c in checks] == [
        ("contains", True, 1.0),
        ("judge", False, 0.0),
    ]


def test_the_projects_judge_model_then_the_model_under_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, traduce(None))
    # no judge named anywhere: the model under test judges (a fake that always says PASS)
    assert eslabon(str(path), "-m", "{provider: fake, responses: [PASS]}").exit_code == 0
    assert eslabon(str(path), "-m", "{provider: fake, responses: [FAIL]}").exit_code == 1
    # [tests] judge_model: it judges every run, whatever the model under test
    (tmp_path / "eslabon.toml").write_text(
        '[models]\njuez = {provider = "fake", responses = ["FAIL: strict"]}\n'
        '[tests]\njudge_model = "juez"\n',
        encoding="utf-8",
    )
    result = eslabon(str(path), "-m", "{provider: fake, responses: [PASS]}")
    assert result.exit_code == 1 and "the judge (juez) said FAIL: strict" in result.stdout
    # the check's own model before the project's
    own = write(tmp_path, traduce("{provider: fake, responses: [PASS]}"), "own.yaml")
    assert eslabon(str(own), "-m", "fake:echo").exit_code == 0


def test_a_judge_without_any_model_says_how_to_name_one() -> None:
    with pytest.raises(UserError, match=r"no model to judge with[\s\S]*judge_model"):
        judged({"judge": QUESTION}, "hola", Context(project=Project(root=Path.cwd())))


# -- [tests] judge_model --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("toml", "message", "hint"),
    [
        ('[tests]\njudge_modle = "x"\n', "unknown key 'judge_modle' in [tests]", "judge_model"),
        ("[tests]\njudge_model = 3\n", "[tests] judge_model must be a model", "openai:gpt"),
        ('[tests]\njudge_model = ""\n', "[tests] judge_model must be a model", "openai:gpt"),
        ("tests = 1\n", "[tests] must be a table", "judge_model"),
        ('[test]\njudge_model = "x"\n', "unknown table [test]", "did you mean 'tests'?"),
    ],
)
def test_bad_tests_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, message: str, hint: str
) -> None:
    (tmp_path / "eslabon.toml").write_text(toml, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ChainConfigError) as info:
        load_project()
    (problem,) = info.value.problems
    assert message in problem.message and problem.file == str(tmp_path / "eslabon.toml")
    assert problem.hint is not None and hint in problem.hint


def test_a_good_tests_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "eslabon.toml").write_text(
        '[tests]\njudge_model = {provider = "fake", responses = ["PASS"]}\n', encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    assert load_project().tests.judge_model == {"provider": "fake", "responses": ["PASS"]}


def test_an_unknown_judge_model_names_eslabon_toml_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "eslabon.toml").write_text('[tests]\njudge_model = "nada"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = eslabon(str(write(tmp_path, traduce(None))), "-m", "fake:echo")
    assert result.exit_code == 2
    assert "eslabon.toml: tests.judge_model: unknown model 'nada'" in result.stderr


# -- similar --------------------------------------------------------------------------------------
REFERENCE = "Where is the station?"


@pytest.mark.parametrize(
    ("output", "threshold", "passed"),
    [
        ("Where is the train station?", None, True),  # ~0.90 on the offline embedding
        ("The cat sleeps on the sofa.", None, False),  # ~0.22
        ("The cat sleeps on the sofa.", 0.3, False),
        ("How do I get to the station?", None, False),  # ~0.42: a paraphrase in other words
        ("How do I get to the station?", 0.4, True),
    ],
)
def test_similar_on_the_offline_embeddings(
    output: str, threshold: float | None, passed: bool
) -> None:
    data: dict[str, Any] = {"similar": REFERENCE}
    if threshold is not None:
        data["threshold"] = threshold
    verdict = check(Assertion.model_validate(data), run_of(output), Context())
    assert verdict.passed is passed and 0 <= verdict.score <= 1
    if not passed:
        assert verdict.reason.startswith("similarity 0.") and "below" in verdict.reason


def test_similar_scores_in_the_json_report(tmp_path: Path) -> None:
    chain = (
        "inputs: {frase: x}\nprompt: '{frase}'\nembeddings: local\ntests:\n"
        "  - name: cerca\n    inputs: {frase: 'Where is the train station?'}\n"
        f"    expect: [{{similar: '{REFERENCE}'}}]\n"
        "  - name: lejos\n    inputs: {frase: 'The cat sleeps on the sofa.'}\n"
        f"    expect: [{{similar: '{REFERENCE}', threshold: 0.5}}]\n"
    )
    out = tmp_path / "r.json"
    result = eslabon(str(write(tmp_path, chain)), "-m", "fake:echo", "--json", str(out))
    assert result.exit_code == 1, result.output
    cases = json.loads(out.read_text())["chains"][0]["models"][0]["cases"]
    near, far = (c["runs"][0]["checks"][0] for c in cases)
    assert near["passed"] is True and 0.85 < near["score"] < 0.95
    assert far["passed"] is False and 0.1 < far["score"] < 0.3
    assert far["reason"] == f"similarity {far['score']:.3f}, below 0.5"
    assert cases[0]["runs"][0]["score"] == near["score"]  # the case's score is the similarity


def test_each_text_is_embedded_once() -> None:
    calls: list[list[str]] = []
    context = Context()
    embedder = context.embedder()
    real = embedder.embed_documents

    def counted(texts: list[str]) -> list[list[float]]:
        calls.append(list(texts))
        return real(texts)

    embedder.embed_documents = counted
    for output in ("a b c", "a b c", "d e f"):
        check(Assertion.model_validate({"similar": REFERENCE}), run_of(output), context)
    assert calls == [["a b c", REFERENCE], ["d e f"]]


def test_the_judges_calls_are_priced_counted_and_kept_to_the_rate(
    openai: WireServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # a self-hosted judge: its price is the project's own
    (tmp_path / "eslabon.toml").write_text(
        '[prices]\n"openai:juez-1" = {input = 1.0, output = 2.0}\n', encoding="utf-8"
    )
    check = f"[{{judge: 'ok?', model: {judge_on(openai)}}}]"
    cases = "".join(f"  - {{inputs: {{frase: {w}}}, expect: {check}}}\n" for w in ("a", "b", "c"))
    path = write(tmp_path, "inputs: {frase: x}\nprompt: '{frase}'\ntests:\n" + cases)
    openai.replies.extend(["PASS", "PASS", "PASS"])
    out = tmp_path / "r.json"
    args = ("-m", "fake:echo", "--allow-endpoint", openai.url, "--json", str(out))
    result = eslabon(str(path), *args, "--rate", "4")
    assert result.exit_code == 0, result.output
    # three judge calls, at most 4 a second: spaced by about 1/4 s (LangChain's limiter)
    times = [r.at for r in openai.requests]
    assert len(times) == 3 and times[2] - times[0] >= 0.4
    model = json.loads(out.read_text())["chains"][0]["models"][0]
    judging = model["judging"]
    usage = [c["usage"] for case in model["cases"] for c in case["runs"][0]["checks"]]
    tokens = sum(u["total_tokens"] for u in usage)
    expected = sum(u["input_tokens"] * 1.0 + u["output_tokens"] * 2.0 for u in usage) / 1e6
    assert judging["calls"] == 3 and judging["tokens"] == tokens > 0
    assert judging["cost"] == pytest.approx(expected)
    assert model["cost"] == 0  # the runs' own cost (fake:echo) is apart from the judging
    assert f"fake:echo: 3 judge calls · {tokens:,} tokens · $" in result.stdout
