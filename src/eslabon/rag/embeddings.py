"""The offline default embedding: deterministic and *lexical* (hashed words and character n-grams).

It needs no download and no key, and gives the same vector for the same text on every machine,
so it is right for tests, lessons and small example sets. It measures shared words and word
pieces, not meaning: "coche" and "automóvil" are not close. Real embedding providers come with
the retrieval layer.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata

from langchain_core.embeddings import Embeddings

__all__ = ["HashingEmbeddings", "words"]

_WORD = re.compile(r"\w+", re.UNICODE)


def _fold(text: str) -> str:
    # lower-case and strip accents, so "está" and "esta" share features
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(text: str) -> list[str]:
    """Lower-cased, accent-folded words: the tokens lexical search compares."""
    return _WORD.findall(_fold(text))


class HashingEmbeddings(Embeddings):
    """Feature hashing of words (weight 1) and character 3-grams (weight 0.5), L2-normalized."""

    def __init__(self, dimensions: int = 512) -> None:
        self.dimensions = dimensions

    def _features(self, text: str) -> list[tuple[str, float]]:
        feats: list[tuple[str, float]] = []
        for word in words(text):
            feats.append(("w:" + word, 1.0))
            padded = f"<{word}>"
            feats.extend(("c:" + padded[i : i + 3], 0.5) for i in range(len(padded) - 2))
        if not feats:
            # No words ("", "!!!"): the whole text is the feature. A zero vector has no
            # direction, and cosine search with one fails ("NaN values found").
            feats.append(("t:" + _fold(text).strip(), 1.0))
        return feats

    def _embed(self, text: str) -> list[float]:
        vec = [0.0] * self.dimensions
        for feature, weight in self._features(text):
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            n = int.from_bytes(digest, "little")
            sign = 1.0 if n & 1 else -1.0
            vec[(n >> 1) % self.dimensions] += sign * weight
        norm = math.sqrt(sum(v * v for v in vec))
        return [v / norm for v in vec] if norm else vec

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._embed(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._embed(text)
