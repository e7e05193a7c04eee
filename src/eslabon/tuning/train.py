"""LoRA training of a ``huggingface:`` model on rendered pairs (peft + torch).

Each pair becomes the token sequence the model reads at run time — the messages through the
model's chat template, as :class:`~eslabon.chat.huggingface.ChatTransformers` applies it
(:func:`~eslabon.chat.huggingface.prompt_payload`) — followed by the answer and the template's
end-of-turn. The loss counts the answer's tokens only: the prompt is given at run time, never
written by the model; learning it would spend the adapter on repeating the system prompt and
the few-shot block, and a long prompt would drown a short answer's signal.

Why a plain loop and not transformers' ``Trainer``: ``Trainer`` refuses a model read from a
GGUF file (``validate_quantization_for_training``: GGUF counts as a quantization even though
transformers de-quantizes it to float weights on load), and the bundled model is one. The loop
is AdamW over the adapter's weights with seeded shuffling — what the ``Trainer`` would run
here, minus checkpoints; ``bench/tune.py`` measures it against a bare peft loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eslabon.errors import MissingDependencyError, UserError
from eslabon.tuning.data import Pair

__all__ = ["Settings", "Trained", "encode", "train"]


@dataclass(frozen=True)
class Settings:
    # a few rows to a few hundred, as a learner has them: small batches, a high rate (LoRA's
    # few weights take it); 6 made-up translations are learned in 3 epochs (tests/test_tune.py)
    epochs: int = 3
    rank: int = 8
    lr: float = 2e-3
    seed: int = 0
    batch_size: int = 2

    def as_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "rank": self.rank,
            "alpha": 2 * self.rank,
            "lr": self.lr,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "target_modules": "all-linear",
        }


@dataclass
class Trained:
    model: Any  # the peft model (the base with the adapter)
    loss: float  # the last epoch's mean loss
    losses: list[float]  # per step
    tokens: int  # tokens read (prompt and answer), every epoch
    seconds: float  # training alone, not loading

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


# Progress: (step done, steps in all, that step's loss)
Progress = Callable[[int, int, float], None]


def _ids(encoded: Any) -> list[int]:
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    return [int(i) for i in ids]


def encode(pairs: Sequence[Pair], tokenizer: Any, window: int | None) -> list[dict[str, list[int]]]:
    """Token ids and labels (-100 on the prompt: see the module doc) of each pair."""
    from eslabon.chat.huggingface import prompt_payload
    from eslabon.chat.inprocess import constraint

    rows = []
    for pair in pairs:
        payload = prompt_payload(pair.messages, constraint(pair.messages, pair.call))
        prompt = _ids(tokenizer.apply_chat_template(payload, add_generation_prompt=True))
        whole = _ids(
            tokenizer.apply_chat_template([*payload, {"role": "assistant", "content": pair.answer}])
        )
        if whole[: len(prompt)] != prompt or len(whole) == len(prompt):
            raise UserError(
                f"{pair.where}: this model's chat template does not write an answer after the "
                "prompt it makes\n    fix: tune an instruct (chat) model"
            )
        if window and len(whole) > window:
            raise UserError(
                f"{pair.where}: {len(whole)} tokens with its answer, more than the model's "
                f"{window}\n    fix: shorten it, or leave it out"
            )
        rows.append({"input_ids": whole, "labels": [-100] * len(prompt) + whole[len(prompt) :]})
    return rows


def train(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, list[int]]],
    settings: Settings,
    progress: Progress | None = None,
) -> Trained:
    """Train a LoRA adapter on ``model`` (changed in place: peft wraps its layers)."""
    try:
        import peft
        import torch
        import transformers
    except ImportError:
        raise MissingDependencyError("eslabon tune", "huggingface", "peft torch") from None
    torch.manual_seed(settings.seed)  # the adapter's initial weights
    config = peft.LoraConfig(
        r=settings.rank,
        lora_alpha=2 * settings.rank,
        lora_dropout=0.0,
        target_modules="all-linear",  # every linear layer but the output head
        task_type="CAUSAL_LM",
    )
    from eslabon.chat.huggingface import quiet_peft

    with quiet_peft():
        tuned = peft.get_peft_model(model, config)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    collate = transformers.DataCollatorForSeq2Seq(
        tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt"
    )
    weights = [p for p in tuned.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(weights, lr=settings.lr)
    order_seed = torch.Generator().manual_seed(settings.seed)
    batches = -(-len(rows) // settings.batch_size)
    total = batches * settings.epochs
    losses: list[float] = []
    tokens = 0
    device = next(tuned.parameters()).device
    tuned.train()
    began = time.perf_counter()
    for _ in range(settings.epochs):
        order = torch.randperm(len(rows), generator=order_seed).tolist()
        for start in range(0, len(rows), settings.batch_size):
            batch = collate([rows[i] for i in order[start : start + settings.batch_size]])
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = tuned(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
            tokens += int(batch["attention_mask"].sum())
            if progress is not None:
                progress(len(losses), total, losses[-1])
    seconds = time.perf_counter() - began
    tuned.eval()
    last = losses[-batches:]
    return Trained(tuned, sum(last) / len(last), losses, tokens, seconds)
