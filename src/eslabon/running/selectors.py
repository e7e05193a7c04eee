"""Few-shot prompts: LangChain's example selectors behind ``FewShotChatMessagePromptTemplate``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from langchain_core.example_selectors import (
    BaseExampleSelector,
    LengthBasedExampleSelector,
    MaxMarginalRelevanceExampleSelector,
    SemanticSimilarityExampleSelector,
)
from langchain_core.prompts import (
    ChatPromptTemplate,
    FewShotChatMessagePromptTemplate,
    PromptTemplate,
)
from langchain_core.vectorstores import InMemoryVectorStore

from eslabon.errors import MissingDependencyError

__all__ = ["PromptQuerySelector", "few_shot_prompt"]

EXAMPLE_PROMPT = ChatPromptTemplate.from_messages([("human", "{input}"), ("ai", "{output}")])


class PromptQuerySelector(BaseExampleSelector):
    """Selects examples by similarity to the step's rendered user prompt.

    LangChain's selectors compare examples to the prompt's variables; a step may have several
    (inputs and earlier outputs), so this adapter renders the step's prompt and hands the
    selector one ``input`` — the text the examples' ``input`` side is meant to resemble.
    """

    def __init__(self, inner: BaseExampleSelector, prompt: str, k: int | None = None) -> None:
        self.inner = inner
        self.prompt = PromptTemplate.from_template(prompt)
        self.k = k

    def add_example(self, example: dict[str, str]) -> Any:
        return self.inner.add_example(example)

    def select_examples(self, input_variables: dict[str, str]) -> list[dict[str, Any]]:
        names = self.prompt.input_variables
        query = self.prompt.format(**{n: input_variables[n] for n in names})
        chosen = self.inner.select_examples({"input": query})
        return chosen[: self.k] if self.k else chosen


def _selector(
    kind: str,
    settings: dict[str, Any],
    examples: list[dict[str, str]],
    embeddings: str | None,
    base_dir: Path | None,
) -> Any:
    if kind == "length":
        return LengthBasedExampleSelector(
            examples=examples,
            example_prompt=PromptTemplate.from_template("{input}\n{output}"),
            max_length=settings.get("max_length", 2048),
        )
    if kind == "ngram":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                from langchain_community.example_selectors import NGramOverlapExampleSelector
            import nltk  # noqa: F401
        except ImportError:
            raise MissingDependencyError(
                "The 'ngram' example selector", "selectors", "langchain-community, nltk"
            ) from None
        return NGramOverlapExampleSelector(
            examples=examples,
            example_prompt=PromptTemplate.from_template("{input}"),
            threshold=settings.get("threshold", -1.0),
        )
    if kind in ("semantic", "mmr"):
        from eslabon.rag.retrieval import build_embeddings

        common: dict[str, Any] = {
            "examples": examples,
            "embeddings": build_embeddings(embeddings, base_dir, from_chain_file=True),
            "vectorstore_cls": InMemoryVectorStore,
            "k": settings.get("k", 4),
            "input_keys": ["input"],
        }
        if kind == "semantic":
            return SemanticSimilarityExampleSelector.from_examples(**common)
        return MaxMarginalRelevanceExampleSelector.from_examples(
            **common, fetch_k=settings.get("fetch_k", 20)
        )
    raise ValueError(f"unknown selector type {kind!r}")  # the spec rejects it before this


def few_shot_prompt(
    examples: list[dict[str, str]],
    selector: dict[str, Any] | None,
    prompt: str,
    embeddings: str | None = None,
    base_dir: Path | None = None,
) -> FewShotChatMessagePromptTemplate:
    """Examples as user/assistant message pairs, chosen by the configured selector."""
    settings = dict(selector or {})
    kind = settings.pop("type", "all")
    if kind == "all":
        return FewShotChatMessagePromptTemplate(examples=examples, example_prompt=EXAMPLE_PROMPT)
    inner = _selector(kind, settings, examples, embeddings, base_dir)
    k = settings.get("k") if kind == "ngram" else None
    variables = PromptTemplate.from_template(prompt).input_variables
    return FewShotChatMessagePromptTemplate(
        example_selector=PromptQuerySelector(inner, prompt, k),
        example_prompt=EXAMPLE_PROMPT,
        input_variables=variables,
    )
