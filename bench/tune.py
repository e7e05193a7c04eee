"""Training speed of ``eslabon tune`` against a bare peft loop, same model, data and settings.

The bundled SmolLM2-135M-Instruct (read from its GGUF by transformers) learns 24 translations
(the tutorial's translator chain, its system prompt and two few-shot examples in every prompt)
with a rank-8 LoRA on every linear layer, AdamW, batches of 2, two epochs, seed 0, on the CPU —
both ways:

- **eslabon**: ``eslabon.tuning.tune`` as ``eslabon tune --data`` runs it (rows rendered through
  the chain, the answer-only loss, the adapter and chain file written). Its figure is the
  manifest's ``tokens_per_second``: tokens read over the training loop's time (loading and
  rendering are not training).
- **raw**: a plain peft loop written here: the same prompts through the tokenizer's chat
  template, labels masked to the answer, ``get_peft_model``, ``AdamW``, padded batches,
  ``loss.backward()``, ``step()``; timed the same way.

A short untimed training first pays torch's one-time costs; then runs alternate between the
sides (a change in the machine's load hits both alike); each side's median tokens/s is
reported. Run: ``make bench`` or ``.venv/bin/python bench/tune.py`` (``BENCH_QUICK=1``: one
run each, four rows, one epoch). Last line: ``tune_vs_raw=X`` — eslabon's tokens/s over the raw
loop's (target >= 0.95: eslabon adds nothing measurable to training).
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")  # peft's and transformers' notices, on both sides alike

QUICK = bool(os.environ.get("BENCH_QUICK"))
RUNS = 1 if QUICK else 3  # per side
EPOCHS, RANK, LR, BATCH, SEED = (1 if QUICK else 2), 8, 2e-3, 2, 0
CHAIN = Path(__file__).parent.parent / "docs" / "es" / "ajuste" / "traductor.yaml"
WORDS = {
    "gato": "Cat", "ratón": "Mouse", "caballo": "Horse", "manzana": "Apple", "pájaro": "Bird",
    "queso": "Cheese", "abeja": "Bee", "nube": "Cloud", "cuchara": "Spoon", "tortuga": "Turtle",
    "zanahoria": "Carrot", "mariposa": "Butterfly", "puerta": "Door", "ventana": "Window",
    "lápiz": "Pencil", "silla": "Chair", "mesa": "Table", "leche": "Milk", "pan": "Bread",
    "árbol": "Tree", "río": "River", "montaña": "Mountain", "estrella": "Star", "luna": "Moon",
}  # fmt: skip


if QUICK:  # a smoke run: four rows, one epoch
    WORDS = dict(list(WORDS.items())[:4])


def rows_file(folder: Path) -> Path:
    path = folder / "datos.jsonl"
    lines = [json.dumps({"frase": k, "output": v}, ensure_ascii=False) for k, v in WORDS.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def eslabon_side(folder: Path, data: Path, n: int) -> float:
    from eslabon.chainfile.loader import load_spec
    from eslabon.tuning import Settings, Source, tune

    settings = Settings(epochs=EPOCHS, rank=RANK, lr=LR, seed=SEED, batch_size=BATCH)
    done = tune(load_spec(CHAIN), folder / f"out{n}", Source(data=data), settings=settings)
    return float(done.manifest["tokens_trained"]) / float(done.manifest["seconds"])


def raw_side(base: Any, tokenizer: Any, sequences: list[tuple[list[int], list[int]]]) -> float:
    import peft
    import torch

    torch.manual_seed(SEED)
    model = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(
            r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0, target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )  # fmt: skip
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    order_seed = torch.Generator().manual_seed(SEED)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokens = 0
    model.train()
    began = time.perf_counter()
    for _ in range(EPOCHS):
        order = torch.randperm(len(sequences), generator=order_seed).tolist()
        for start in range(0, len(order), BATCH):
            batch = [sequences[i] for i in order[start : start + BATCH]]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch])
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
            mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            tokens += int(mask.sum())
    return tokens / (time.perf_counter() - began)


def ids(encoded: Any) -> list[int]:
    """Token ids: transformers 5's chat template gives a mapping, older ones a list."""
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def raw_data(tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    """The same prompts the chain sends (system, two examples, the question), by hand."""
    import yaml

    spec = yaml.safe_load(CHAIN.read_text())
    head = [{"role": "system", "content": spec["system"]}]
    for example in spec["examples"]:
        head += [
            {"role": "user", "content": example["input"]},
            {"role": "assistant", "content": example["output"]},
        ]
    out = []
    for word, answer in WORDS.items():
        messages = [*head, {"role": "user", "content": spec["prompt"].format(frase=word)}]
        prompt = ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
        whole = ids(
            tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}])
        )
        out.append((whole, [-100] * len(prompt) + whole[len(prompt) :]))
    return out


def main() -> None:
    import torch

    from eslabon.chat.huggingface import load_model
    from eslabon.chat.local import bundled_model_path

    gguf = bundled_model_path()
    print(f"{len(WORDS)} rows, {EPOCHS} epochs, batch {BATCH}, rank {RANK}, {RUNS} runs per side")
    print(f"torch threads: {torch.get_num_threads()}")
    # loaded as transformers loads it (eslabon's loader adds only quiet progress bars); loading
    # is not timed on either side
    base, tokenizer, _ = load_model(str(gguf.parent), str(gguf), "cpu", "float32", False)
    sequences = raw_data(tokenizer)
    # the first training in a process pays torch's one-time costs (kernels, the allocator's
    # growth): paid here, untimed, so that neither side's first run carries them
    raw_side(base, tokenizer, sequences[: 2 * BATCH])
    rates: dict[str, list[float]] = {"raw peft loop": [], "eslabon tune": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = rows_file(folder)
        for n in range(RUNS):
            rates["raw peft loop"].append(raw_side(base, tokenizer, sequences))
            rates["eslabon tune"].append(eslabon_side(folder, data, n))
            print(
                f"  run {n + 1}: " + ", ".join(f"{k} {v[-1]:.0f} tok/s" for k, v in rates.items())
            )
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{'side':<16} {'tokens/s (median)':>18}")
    for name, value in median.items():
        print(f"{name:<16} {value:>18.1f}")
    print(f"tune_vs_raw={median['eslabon tune'] / median['raw peft loop']:.3f}")


if __name__ == "__main__":
    main()
