"""The same model through both in-process runtimes, raw and through eslabon, in one run.

SmolLM2-135M-Instruct (the GGUF bundled with eslabon) answers the same prompts, greedy, for the
same number of new tokens, four ways: raw llama-cpp-python (``Llama.create_chat_completion``,
streamed), eslabon ``local`` (a one-step chain, streamed), raw transformers (``generate`` with a
``TextIteratorStreamer`` on the model read from the GGUF) and eslabon ``huggingface:`` (the same
chain on ``ChatTransformers``, streamed). Each side loads its model once, before timing. Runs
alternate between the sides, so a change in the machine's load hits them alike, and each run
has its own prompt. Reported per side: median tokens/s (new tokens over the time from the call to
the last piece). Tokens are counted by each runtime: the usage eslabon reports, the length of
what ``generate`` returned, llama.cpp's streamed pieces (one per token).

Run: ``make bench`` or ``.venv/bin/python bench/local_runtimes.py`` (``BENCH_QUICK=1``: fewer,
shorter runs). Last line: ``hf_vs_raw=X`` — eslabon ``huggingface:`` tokens/s over raw
transformers' (target >= 0.95: eslabon adds nothing measurable); ``local_vs_raw`` is printed
above it for the llama.cpp pair.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from eslabon import load_chain
from eslabon.chat.local import bundled_model_path

QUICK = bool(os.environ.get("BENCH_QUICK"))
RUNS = 2 if QUICK else 5  # per side
TOKENS = 24 if QUICK else 128
PROMPT = "Story {n}: write a long story about a robot who learns to paint, with many details."
CHAIN = (
    "inputs: {pregunta: x}\n"
    f"params: {{temperature: 0.0, max_tokens: {TOKENS}}}\n"
    'prompt: "{pregunta}"\n'
)

Side = Callable[[str], int]  # runs one prompt; the new tokens it made


def raw_llama() -> Side:
    from llama_cpp import Llama

    from eslabon.chat.local import default_threads

    threads = default_threads()  # eslabon's default, so only eslabon's own layer differs
    llm = Llama(
        model_path=str(bundled_model_path()),
        n_ctx=4096,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )

    def run(prompt: str) -> int:
        pieces = llm.create_chat_completion(
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            max_tokens=TOKENS,
            temperature=0.0,
            repeat_penalty=1.1,
        )
        return sum(1 for p in pieces if p["choices"][0].get("delta", {}).get("content"))

    return run


def raw_transformers() -> Side:
    import transformers

    path = bundled_model_path()
    transformers.utils.logging.set_verbosity_error()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    model.eval()

    def run(prompt: str) -> int:
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        streamer = transformers.TextIteratorStreamer(
            tokenizer, skip_prompt=True, skip_special_tokens=True
        )
        out: dict[str, Any] = {}

        def work() -> None:
            out["ids"] = model.generate(
                **encoded,
                max_new_tokens=TOKENS,
                do_sample=False,
                repetition_penalty=1.1,
                pad_token_id=tokenizer.eos_token_id,
                streamer=streamer,
            )

        thread = threading.Thread(target=work)
        thread.start()
        for _ in streamer:
            pass
        thread.join()
        new = out["ids"][0][encoded["input_ids"].shape[1] :].tolist()
        return len([t for t in new if t != tokenizer.eos_token_id])

    return run


def eslabon(model: Any) -> Side:
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp())
    (folder / "chain.yaml").write_text(CHAIN, encoding="utf-8")
    chain = load_chain(folder / "chain.yaml", model=model)

    def run(prompt: str) -> int:
        stats: dict[str, Any] = {}
        for chunk in chain.stream({"pregunta": prompt}):
            stats = chunk.get("stats", stats)
        return int(stats["usage"]["output_tokens"])

    return run


def main() -> None:
    path = bundled_model_path()
    print(f"model: {path.name}; {TOKENS} new tokens, greedy, {RUNS} runs per side")
    sides: dict[str, Side] = {}
    for name, make in (
        ("raw llama-cpp-python", raw_llama),
        ("eslabon local", lambda: eslabon("local")),
        ("raw transformers", raw_transformers),
        (
            "eslabon huggingface:",
            lambda: eslabon({"provider": "huggingface", "name": str(path), "device": "cpu"}),
        ),
    ):
        began = time.perf_counter()
        sides[name] = make()
        sides[name]("warm up")  # the first call pays one-time costs on every side
        print(f"  {name}: ready in {time.perf_counter() - began:.1f} s")
    rates: dict[str, list[float]] = {name: [] for name in sides}
    n = 0
    for _ in range(RUNS):
        for name, run in sides.items():
            n += 1
            began = time.perf_counter()
            tokens = run(PROMPT.format(n=n))
            rates[name].append(tokens / (time.perf_counter() - began))
    print(f"{'side':<22} {'tokens/s (median)':>18}")
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in median.items():
        print(f"{name:<22} {value:>18.1f}")
    print(f"local_vs_raw={median['eslabon local'] / median['raw llama-cpp-python']:.3f}")
    print(f"hf_vs_raw={median['eslabon huggingface:'] / median['raw transformers']:.3f}")


if __name__ == "__main__":
    main()
