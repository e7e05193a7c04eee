"""Structured output on the bundled model: grammar-constrained vs unconstrained decoding.

The same 20 descriptions of people (chains/ejemplos/personas.txt) go through
chains/extraer_persona.yaml twice on SmolLM2-135M-Instruct, interleaved: once as eslabon runs it
(llama.cpp constrains decoding with a grammar built from output_schema) and once unconstrained —
the same messages with the schema written into the system prompt and "answer only with JSON",
which is what one does without a grammar. Each reply is checked the same way: it parses as JSON
(leniently: markdown fences are stripped) and validates against the schema. No validation
retries on either side (one attempt each).
Reported: schema-valid rate and generated tokens per second for both.
Run: ``make bench`` or ``.venv/bin/python bench/structured_local.py``.
Last line: ``valid_rate=X`` (constrained; the unconstrained rate is printed above it).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from langchain_core.messages import SystemMessage
from langchain_core.utils.json import parse_json_markdown

from eslabon import load_chain

ROOT = Path(__file__).resolve().parent.parent
QUICK = bool(os.environ.get("BENCH_QUICK"))
PEOPLE = (ROOT / "chains" / "ejemplos" / "personas.txt").read_text(encoding="utf-8").splitlines()
if QUICK:
    PEOPLE = PEOPLE[:2]


def main() -> None:
    chain = load_chain(ROOT / "chains" / "extraer_persona.yaml")
    step = chain.steps[0]
    assert step.schema is not None and step.structured is not None
    schema = step.schema.json_schema
    validator = Draft202012Validator(schema)
    instructions = SystemMessage(
        "Answer only with a JSON object that matches this JSON Schema:\n" + json.dumps(schema)
    )

    def valid(text: str) -> bool:
        # lenient on both sides: markdown fences and text around the JSON are forgiven
        try:
            data: Any = parse_json_markdown(text)
        except ValueError:
            return False
        return not list(validator.iter_errors(data))

    totals = {"constrained": [0, 0, 0.0], "unconstrained": [0, 0, 0.0]}  # valid, tokens, seconds
    for text in PEOPLE:
        messages = step.messages({"texto": text})
        start = time.perf_counter()
        out = step.structured.model.invoke(messages)
        elapsed = time.perf_counter() - start
        raw = out["raw"]
        totals["constrained"][0] += out["parsing_error"] is None and valid(raw.text)
        totals["constrained"][1] += raw.usage_metadata["output_tokens"]
        totals["constrained"][2] += elapsed

        start = time.perf_counter()
        reply = step.model.invoke([instructions, *messages])
        elapsed = time.perf_counter() - start
        totals["unconstrained"][0] += valid(reply.text.strip())
        totals["unconstrained"][1] += reply.usage_metadata["output_tokens"]
        totals["unconstrained"][2] += elapsed

    n = len(PEOPLE)
    for name, (ok, tokens, seconds) in totals.items():
        print(
            f"{name:>13}: {ok}/{n} schema-valid ({ok / n:.2f}), "
            f"{tokens / seconds:.1f} tokens/s, {seconds / n:.2f} s per reply"
        )
    print(f"unconstrained_valid_rate={totals['unconstrained'][0] / n:.2f}")
    print(f"valid_rate={totals['constrained'][0] / n:.2f}")


if __name__ == "__main__":
    main()
