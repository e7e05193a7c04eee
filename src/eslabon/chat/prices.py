"""What a model call cost in US dollars, from its token usage.

Prices come from ``genai-prices`` (pydantic's maintained price list: its data ships inside the
package, so it works offline, and it covers OpenAI, Gemini, Anthropic, Mistral, Cohere, Together,
Groq, DeepSeek, xAI, Fireworks and OpenRouter models by name), with
the project's own prices first (``[prices]`` in eslabon.toml, per ``provider:model``, in USD per
million tokens) for private or self-hosted models. Chosen over tokencost (older prices) and
litellm's price map (fetched from GitHub when litellm is imported, and a heavy install).

The local model, the fakes and Ollama cost 0: they run on the user's machine. A price eslabon
does not know is ``None``, never a guess — which includes an OpenAI-compatible server reached
through ``base_url``: its model names are not OpenAI's prices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = ["FREE_PROVIDERS", "Price", "cost"]

# run on the user's own machine: no price per token
FREE_PROVIDERS = frozenset({"local", "llamacpp", "fake", "ollama", "huggingface"})
# eslabon's provider names (and LangChain's ``ls_provider``, for a model the caller built) as
# genai-prices names them; a test checks each is one of its providers. Not azure_openai: its
# model names are the user's deployment names.
_PROVIDER_IDS = {
    "openai": "openai",
    "google_genai": "google",
    "anthropic": "anthropic",
    "mistralai": "mistral",
    "mistral": "mistral",  # ChatMistralAI's ls_provider
    "cohere": "cohere",
    "together": "together",
    "groq": "groq",
    "deepseek": "deepseek",
    "xai": "x-ai",
    "fireworks": "fireworks",
    "openrouter": "openrouter",
}
_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    """USD per million tokens: ``input`` (cached input included unless ``cached_input`` is
    given) and ``output``."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None


def cost(
    provider: str,
    model: str,
    usage: Mapping[str, Any] | None,
    prices: Mapping[str, Price] | None = None,
    base_url: str | None = None,
) -> Decimal | None:
    """The cost of one call with ``usage`` (LangChain's ``usage_metadata``: ``input_tokens``,
    ``output_tokens``, ``input_token_details``); ``prices`` are the project's own, by
    ``provider:model``. None when the price is unknown or there is no usage."""
    if usage is None:
        return None
    own = (prices or {}).get(f"{provider}:{model}")
    if own is not None:
        return _priced(own, usage)
    if provider in FREE_PROVIDERS:
        return Decimal(0)
    provider_id = _PROVIDER_IDS.get(provider)
    if provider_id is None or base_url is not None:  # another server's model: its own prices
        return None
    from genai_prices import calc_price  # ~0.14 s to import: only when a price is asked

    try:
        found = calc_price(_usage(usage), model, provider_id=provider_id)
    except LookupError:
        return None
    return Decimal(found.total_price)


def _usage(usage: Mapping[str, Any]) -> Any:
    from genai_prices import Usage

    details = usage.get("input_token_details") or {}
    return Usage(
        input_tokens=int(usage.get("input_tokens") or 0),
        output_tokens=int(usage.get("output_tokens") or 0),
        cache_read_tokens=int(details.get("cache_read") or 0) or None,
        cache_write_tokens=int(details.get("cache_creation") or 0) or None,
    )


def _priced(price: Price, usage: Mapping[str, Any]) -> Decimal:
    """Tokens times the project's price (written here: three multiplications)."""
    details = usage.get("input_token_details") or {}
    cached = int(details.get("cache_read") or 0) if price.cached_input is not None else 0
    fresh = int(usage.get("input_tokens") or 0) - cached
    total = fresh * price.input + int(usage.get("output_tokens") or 0) * price.output
    if price.cached_input is not None:
        total += cached * price.cached_input
    return total / _MILLION
