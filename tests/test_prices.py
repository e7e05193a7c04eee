"""What a call cost: genai-prices' list, the project's [prices], free local models, None when
unknown. Expected figures come from the providers' published prices (USD per million tokens)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from eslabon.chat.prices import Price, cost
from eslabon.errors import ChainConfigError
from eslabon.trust.project import load_project

USAGE = {"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500}


def test_known_models_cost_what_their_providers_charge() -> None:
    # gpt-4o-mini: $0.15 in, $0.60 out, $0.075 cached input, per million tokens
    assert cost("openai", "gpt-4o-mini", USAGE) == Decimal("0.00045")
    cached = {**USAGE, "input_token_details": {"cache_read": 200}}
    assert cost("openai", "gpt-4o-mini", cached) == Decimal("0.000435")
    # gemini-2.5-flash: $0.30 in, $2.50 out; claude-sonnet-4-5: $3 in, $15 out
    assert cost("google_genai", "gemini-2.5-flash", USAGE) == Decimal("0.00155")
    assert cost("anthropic", "claude-sonnet-4-5", USAGE) == Decimal("0.0105")


def test_mistral_cohere_and_together_cost_what_they_charge() -> None:
    # mistral-large: $2 in, $6 out; command-r: $0.15 in, $0.60 out; Together's
    # Llama-3.3-70B-Instruct-Turbo: $0.88 both ways
    assert cost("mistralai", "mistral-large-latest", USAGE) == Decimal("0.005")
    assert cost("mistral", "mistral-large-latest", USAGE) == Decimal("0.005")  # ls_provider
    assert cost("cohere", "command-r", USAGE) == Decimal("0.00045")
    llama = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    assert cost("together", llama, USAGE) == Decimal("0.00132")
    assert cost("together", "no-such/model", USAGE) is None  # a model it does not list


def test_every_mapped_provider_is_one_genai_prices_knows() -> None:
    from genai_prices.data import providers

    from eslabon.chat.prices import _PROVIDER_IDS

    known = {p.id for p in providers}
    assert set(_PROVIDER_IDS.values()) <= known, set(_PROVIDER_IDS.values()) - known


def test_models_on_the_users_machine_cost_nothing() -> None:
    for provider in ("local", "llamacpp", "fake", "ollama"):
        assert cost(provider, "anything", USAGE) == 0


def test_an_unknown_price_is_none_never_a_guess() -> None:
    assert cost("openai", "no-such-model", USAGE) is None
    assert cost("mistralai", "no-such-model", USAGE) is None
    assert cost("azure_openai", "gpt-4o-mini", USAGE) is None  # a deployment's name, not a model
    # an OpenAI-compatible server: the name may be OpenAI's, the price is not
    assert cost("openai", "gpt-4o-mini", USAGE, base_url="http://127.0.0.1:8000/v1") is None
    assert cost("openai", "gpt-4o-mini", None) is None  # no usage reported


def test_the_projects_prices_come_first(tmp_path: Path) -> None:
    (tmp_path / "eslabon.toml").write_text(
        "[prices]\n"
        '"openai:qwen2.5-7b" = {input = 1.0, output = 2}\n'
        '"openai:gpt-4o-mini" = {input = 0.1, output = 0.2, cached_input = 0.05}\n'
    )
    prices = load_project(tmp_path).prices
    assert prices["openai:qwen2.5-7b"] == Price(Decimal("1.0"), Decimal("2"))
    self_hosted = cost("openai", "qwen2.5-7b", USAGE, prices, base_url="http://gpu1.lan:8000/v1")
    assert self_hosted == Decimal("0.002")  # 1000 x $1 + 500 x $2, per million
    cached = {**USAGE, "input_token_details": {"cache_read": 200}}
    # 800 x 0.1 + 200 x 0.05 + 500 x 0.2 = 190 per million
    assert cost("openai", "gpt-4o-mini", cached, prices) == Decimal("0.00019")


@pytest.mark.parametrize(
    ("line", "message", "hint"),
    [
        ('"openai:x" = {inpt = 1, output = 2}', "unknown key 'inpt'", "did you mean 'input'?"),
        ('"openai:x" = {input = -1, output = 2}', "needs input as a number", "e.g."),
        ('"openai:x" = {input = "1", output = 2}', "needs input as a number", "e.g."),
        ('"openai:x" = {input = 1}', "needs output as a number", "e.g."),
        ("gpt = {input = 1, output = 2}", 'must be "provider:model"', "e.g."),
    ],
)
def test_a_wrong_price_is_a_clear_error(tmp_path: Path, line: str, message: str, hint: str) -> None:
    (tmp_path / "eslabon.toml").write_text(f"[prices]\n{line}\n")
    with pytest.raises(ChainConfigError) as caught:
        load_project(tmp_path)
    [problem] = caught.value.problems
    assert message in problem.message and hint in (problem.hint or "")
    assert problem.file == str(tmp_path / "eslabon.toml") and problem.path.startswith("prices.")
