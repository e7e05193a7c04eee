"""The bundled local model's speed: raw llama-cpp-python vs eslabon's ``local``, idle and loaded.

Both sides run SmolLM2-135M-Instruct (the GGUF bundled with eslabon) on the same prompts,
streamed, with the same sampling (greedy; eslabon's defaults otherwise), for the same number of
tokens (the prompt asks for more). The raw side is ``llama_cpp.Llama.create_chat_completion
(stream=True)`` with llama-cpp-python's default threads; the eslabon side is a one-step chain on
``model: local`` streamed with ``chain.stream``, with eslabon's default threads
(``eslabon.chat.local.default_threads``). Runs alternate (raw, eslabon, eslabon, raw, ...), so a
change in the machine's load hits both alike, and each run has its own prompt. Measured twice:
on the machine as it is ("idle"), and with a CPU hog — a Python busy loop in another process —
beside it ("loaded"); in the loaded round, eslabon on every logical core (its old default) runs
too, for reference.

Reported per side: median tokens/s from the call to the last token, the time to the first
token, and tokens/s after it. eslabon gives prompts the same threads as replies (llama.cpp's
own default; llama-cpp-python's is every core), so on an idle machine its first token comes
later (here 107 ms against 58 for a 30-token prompt) and on a loaded one sooner (111 against
231). Run: ``make bench`` or ``.venv/bin/python bench/local_speed.py``.
Last line: ``local_vs_raw=X`` (eslabon's tokens/s over raw's, the lower of the idle and loaded
rounds; target >= 0.95).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from eslabon import load_chain
from eslabon.chat.local import ChatLlamaCppLocal, bundled_model_path, default_threads

QUICK = bool(os.environ.get("BENCH_QUICK"))
RUNS = 2 if QUICK else 6  # per side and round
# a reply of 256 tokens (eslabon's default max_tokens is 512); at 128 the first-token gap below
# weighs about twice as much
TOKENS = 24 if QUICK else 256
PROMPT = "Story {n}: write a long story about a robot who learns to paint, with many details."
N_CTX = 4096  # eslabon's default for local
# eslabon's sampling defaults, given to the raw side too (temperature 0: greedy)
SAMPLING = {"temperature": 0.0, "top_p": 0.95, "top_k": 40, "repeat_penalty": 1.1}


def timed(stream: Callable[[str], Iterator[str]], prompt: str) -> tuple[float, float, int]:
    """(seconds to the first token, seconds to the last, tokens): both sides stream one piece
    per token."""
    start = time.perf_counter()
    first, tokens = None, 0
    for piece in stream(prompt):
        if piece:
            first = first or time.perf_counter()
            tokens += 1
    end = time.perf_counter()
    assert first is not None, "no token arrived"
    return first - start, end - start, tokens


def hog() -> subprocess.Popen[bytes]:
    """Another process keeping one CPU busy, as other work on a shared machine does."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


Figures = dict[str, tuple[float, float, float]]


def measure(
    sides: dict[str, Callable[[str], Iterator[str]]], round_: str, runs: int = RUNS
) -> Figures:
    """Per side, the medians of: tokens/s from the call to the last token, tokens/s from the
    first token to the last, and the time to the first token (ms). Runs interleaved; each run
    its own prompt, the same for every side (a repeated prompt would let raw llama-cpp-python
    skip evaluating it, which no chain does twice in a row)."""
    names = list(sides)
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    for run in range(runs):
        prompt = PROMPT.format(n=f"{round_} {run}")
        order = names if run % 2 == 0 else names[::-1]
        for name in order:
            ttft, total, tokens = timed(sides[name], prompt)
            # the prompt asks for more than TOKENS: a shorter reply would flatter that side
            assert tokens >= TOKENS * 0.9, f"{name} wrote {tokens} tokens"
            decode = (tokens - 1) / (total - ttft)
            results[name].append((tokens / total, decode, ttft * 1000))
    return {
        name: (
            statistics.median(r[0] for r in results[name]),
            statistics.median(r[1] for r in results[name]),
            statistics.median(r[2] for r in results[name]),
        )
        for name in names
    }


def main() -> None:
    from llama_cpp import Llama

    path = str(bundled_model_path())
    raw = Llama(model_path=path, n_ctx=N_CTX, verbose=False)  # its own default threads

    def raw_stream(prompt: str) -> Iterator[str]:
        messages: list[Any] = [{"role": "user", "content": prompt}]
        for chunk in raw.create_chat_completion(
            messages=messages, stream=True, max_tokens=TOKENS, **SAMPLING
        ):
            yield chunk["choices"][0]["delta"].get("content") or ""

    with tempfile.TemporaryDirectory() as folder:
        chain_file = Path(folder) / "speed.yaml"
        chain_file.write_text(
            f"model: local\nparams: {{temperature: 0, max_tokens: {TOKENS}}}\n"
            "inputs: {pedido: x}\nprompt: '{pedido}'\n",
            encoding="utf-8",
        )
        chain = load_chain(chain_file)
    all_cores = os.cpu_count() or 1
    every_core = ChatLlamaCppLocal(
        model_path=path, n_threads=all_cores, temperature=0.0, max_tokens=TOKENS
    )

    def eslabon_stream(prompt: str) -> Iterator[str]:
        for chunk in chain.stream({"pedido": prompt}):
            yield chunk.get("output", "")

    def every_core_stream(prompt: str) -> Iterator[str]:
        for chunk in every_core.stream(prompt):
            yield chunk.text

    prompt_tokens = len(raw.tokenize(PROMPT.format(n="idle 0").encode("utf-8"), add_bos=False))
    print(
        f"{Path(path).name}: {TOKENS} tokens, greedy, streamed; prompt of {prompt_tokens} "
        f"tokens; {RUNS} runs per side and round, interleaved"
    )
    print(
        f"threads: raw {raw.n_threads} (llama-cpp-python's default), eslabon "
        f"{default_threads()} (eslabon's default), reference {all_cores} (every logical core)"
    )
    sides = {"raw": raw_stream, "eslabon": eslabon_stream}
    for side in sides.values():  # load both models and warm the caches outside the timing
        timed(side, PROMPT.format(n="warm-up"))
    ratios = {}
    for label in ("idle", "loaded"):
        busy = hog() if label == "loaded" else None
        try:
            if busy is not None:
                time.sleep(0.5)  # let the hog take its core
            figures = measure(sides, label)
            if busy is not None:  # the old default, for reference (slow: fewer runs)
                figures.update(measure({"every core": every_core_stream}, label, runs=2))
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        ratios[label] = figures["eslabon"][0] / figures["raw"][0]
        print(f"{label}:")
        for name, (rate, decode, ttft) in figures.items():
            print(
                f"  {name:>10}: {rate:6.1f} tok/s  (first token after {ttft:4.0f} ms, "
                f"then {decode:6.1f} tok/s)"
            )
        decoding = figures["eslabon"][1] / figures["raw"][1]
        print(f"  eslabon/raw: {ratios[label]:.3f} (after the first token: {decoding:.3f})")
    print(f"local_vs_raw={min(ratios.values()):.3f}")


if __name__ == "__main__":
    main()
