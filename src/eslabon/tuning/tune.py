"""``eslabon tune``: teach one step of a chain to a local model, and write what runs it.

OUT holds the adapter (``OUT/adapter``, peft's format), the manifest (``OUT/tune.json``: base
model and its hash, chain, step, data hash, settings, final loss) and a chain file whose step
runs on the tuned model (``{provider: huggingface, name: BASE, adapter: adapter}``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eslabon.chainfile.spec import Chain, Step
from eslabon.errors import UserError
from eslabon.tuning.data import (
    Pair,
    Row,
    examples_pairs,
    file_rows,
    log_rows,
    render_pairs,
    tuned_step,
)
from eslabon.tuning.train import Progress, Settings

__all__ = ["Base", "Source", "Tuned", "collect_pairs", "resolve_base", "tune"]

ADAPTER_FOLDER = "adapter"
IN_PROCESS = ("local", "llamacpp", "huggingface")


@dataclass(frozen=True)
class Source:
    """Where the rows come from: one of a file, the chain's examples, the run log."""

    data: Path | None = None
    examples: bool = False
    logs: str | None = None  # a full-text query; "" for every run of the chain

    def label(self) -> str:
        if self.data is not None:
            return f"file {self.data.name}"
        if self.examples:
            return "the chain's examples"
        return "the run log" + (f" ({self.logs})" if self.logs else "")


@dataclass(frozen=True)
class Base:
    """The model to tune: where transformers reads it, and how the tuned chain names it."""

    source: str
    gguf_file: str | None
    ref: dict[str, Any]  # the model mapping's provider, name and gguf_file, before adapter
    label: str


@dataclass
class Tuned:
    out: Path
    chain_file: Path
    manifest: dict[str, Any]
    pairs: int


def without_examples(spec: Chain, step: Step) -> Chain:
    """``spec`` with the step's few-shot examples (and selector) dropped."""
    if spec.steps is None:
        return spec.model_copy(update={"examples": None, "selector": None})
    steps = [
        s.model_copy(update={"examples": None, "selector": None}) if s.id == step.id else s
        for s in spec.steps
    ]
    return spec.model_copy(update={"steps": steps})


def collect_pairs(
    spec: Chain,
    step_id: str | None,
    source: Source,
    keep_examples: bool = True,
    allow_imports: list[str] | None = None,
) -> tuple[Chain, Step, list[Pair]]:
    """The pairs to teach, rendered as the chain (without the step's examples unless kept; never
    with them when they are the data) sends them; and that chain and step."""
    from eslabon.chainfile.checks import check_spec

    check_spec(spec)
    step = tuned_step(spec, step_id)
    if source.examples:
        pairs = examples_pairs(spec, step)
        keep_examples = False
    if not keep_examples:
        spec = without_examples(spec, step)
        step = tuned_step(spec, step.id)
    if not source.examples:
        rows: list[Row]
        if source.data is not None:
            if not source.data.is_file():
                raise UserError(f"no such file: {source.data}")
            rows = file_rows(spec, step, source.data)
        else:
            rows = log_rows(spec, step, source.logs or None)
        pairs = render_pairs(spec, step, rows, allow_imports)
    return spec, step, pairs


def resolve_base(spec: Chain, step: Step, base: str | None) -> Base:
    """``--base`` (the user's: any path), else the step's own in-process model, else the
    bundled one; as transformers reads it."""
    from eslabon.chat.modelspec import ModelRefError, parse_model_ref

    ref: Any = base if base is not None else (step.model or spec.model or "local")
    trusted = base is not None
    # the user's --base is a path from where they are; the chain's own, from the chain's folder
    folder = Path.cwd() if trusted else spec.base_dir
    try:
        model = parse_model_ref(ref, folder, trusted=trusted)
    except ModelRefError as exc:
        raise UserError(f"{exc.message}\n    fix: {exc.hint}") from None
    if model.provider not in IN_PROCESS:
        if trusted:
            raise UserError(
                f"--base {base}: eslabon tune trains a model in this process\n    fix: --base "
                "local (the bundled model), huggingface:FOLDER_OR_ID or llamacpp:FILE.gguf"
            )
        model = parse_model_ref("local", trusted=True)  # the chain runs on a provider's model
    return _as_transformers(model, folder)


def _as_transformers(model: Any, folder: Path) -> Base:
    from eslabon.chat.local import bundled_model_path
    from eslabon.chat.modelspec import HUB_ID, ModelRefError, ModelSpec, transformers_source

    gguf_file = model.kwargs.get("gguf_file")
    name = "local" if model.provider == "local" else model.name
    as_hf = ModelSpec("huggingface", name, {}, None, model.base_dir, model.trusted)
    try:
        source, weights = transformers_source(
            as_hf, folder, gguf_file if isinstance(gguf_file, str) else None
        )
    except ModelRefError as exc:
        raise UserError(f"{exc.message}\n    fix: {exc.hint}") from None
    hub = HUB_ID.match(source) is not None and not Path(source).exists()
    if not hub and not Path(weights or source).exists():
        raise UserError(
            f"no model at {weights or source}\n    fix: a folder with config.json and the "
            "weights, a .gguf file, or local (the bundled model)"
        )
    if weights is not None and Path(weights).resolve() == bundled_model_path().resolve():
        name = "local"  # the bundled model, however it was named
    if name == "local":
        return Base(
            source, weights, {"provider": "huggingface", "name": "local"}, "huggingface:local"
        )
    # a path the tuned chain file names relative to itself (set when OUT is known)
    where = name if hub else str(Path(weights or source).absolute())
    return Base(source, weights, {"provider": "huggingface", "name": where}, f"huggingface:{name}")


def _data_hash(pairs: list[Pair]) -> str:
    digest = hashlib.sha256()
    for pair in pairs:
        shown = [{"type": m.type, "text": m.text} for m in pair.messages]
        call = json.dumps(pair.call, sort_keys=True, default=str)
        digest.update(json.dumps([shown, call, pair.answer], ensure_ascii=False).encode())
    return digest.hexdigest()


def tune(
    spec: Chain,
    out: str | Path,
    source: Source,
    *,
    step: str | None = None,
    base: str | None = None,
    settings: Settings | None = None,
    keep_examples: bool = True,
    allow_imports: list[str] | None = None,
    device: str = "auto",
    progress: Progress | None = None,
) -> Tuned:
    """Train a LoRA adapter for one step of ``spec`` and write OUT (see the module doc).
    Everything that can be refused is refused before the model loads: the data, the base, OUT,
    the chain file to write."""
    from eslabon.chat.adapter import MANIFEST, base_identity
    from eslabon.chat.huggingface import load_model, quiet_peft
    from eslabon.tuning.train import encode, train

    settings = settings or Settings()
    _check_settings(settings)
    folder = Path(out)
    _check_out(folder)
    tuned_spec, tuned, pairs = collect_pairs(spec, step, source, keep_examples, allow_imports)
    chosen = resolve_base(spec, tuned, base)
    chain_path, chain_text = chain_file(spec, tuned_spec, tuned, chosen, folder)
    model, tokenizer, where = load_model(chosen.source, chosen.gguf_file, device, "float32", False)
    window = getattr(model.config, "max_position_embeddings", None)
    rows = encode(pairs, tokenizer, window)
    trained = train(model, tokenizer, rows, settings, progress)
    _clear(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with quiet_peft():
        trained.model.save_pretrained(str(folder / ADAPTER_FOLDER))
    chain_path.write_text(chain_text, encoding="utf-8")
    manifest = {
        "eslabon_tune": 1,
        "chain": spec.name,
        "chain_file": spec.source.name if spec.source else None,
        "written": chain_path.name,
        "step": tuned.id,
        "base": {"model": chosen.label, **base_identity(chosen.source, chosen.gguf_file)},
        "adapter": ADAPTER_FOLDER,
        "data": {
            "source": source.label(),
            "rows": len(pairs),
            "sha256": _data_hash(pairs),
            "examples_in_prompt": bool(tuned.examples),
        },
        "settings": settings.as_dict(),
        "device": where,
        "final_loss": round(trained.loss, 6),
        "tokens_trained": trained.tokens,
        "seconds": round(trained.seconds, 3),
        "tokens_per_second": round(trained.tokens_per_second, 1),
    }
    # last: a folder with a manifest is a finished one (validate reads it)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return Tuned(folder, chain_path, manifest, len(pairs))


def _clear(folder: Path) -> None:
    """An earlier tune's files in OUT (what its manifest says it wrote), before the new ones."""
    import shutil

    from eslabon.chat.adapter import MANIFEST

    try:
        old = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    (folder / MANIFEST).unlink()
    shutil.rmtree(folder / ADAPTER_FOLDER, ignore_errors=True)
    written = old.get("written") if isinstance(old, dict) else None
    if isinstance(written, str) and Path(written).name == written and written.endswith(".yaml"):
        (folder / written).unlink(missing_ok=True)


def _check_settings(settings: Settings) -> None:
    for name in ("epochs", "rank", "batch_size"):
        if getattr(settings, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < settings.lr < 1:
        raise UserError(f"--lr {settings.lr}: a learning rate between 0 and 1 (e.g. 1e-3)")


def _check_out(folder: Path) -> None:
    """OUT is a new or empty folder, or one eslabon tune wrote (its files are replaced)."""
    from eslabon.chat.adapter import MANIFEST

    if folder.exists() and not folder.is_dir():
        raise UserError(f"-o {folder}: a file is in the way\n    fix: name a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MANIFEST).is_file():
        raise UserError(
            f"-o {folder}: the folder has files eslabon tune did not write\n"
            "    fix: name a new or empty folder"
        )


_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def chain_file(
    original: Chain, spec: Chain, step: Step, base: Base, folder: Path
) -> tuple[Path, str]:
    """The chain file to write in ``folder`` and its text, checked: the tuned step on the tuned
    model (the original mapping's params and transformers settings kept), its few-shot examples
    and test cases written in (files beside the original chain are not beside this one), other
    paths it names rebased from the original's folder. Retrievers' paths are the project's."""
    import yaml

    from eslabon.chainfile.loader import load_spec_text
    from eslabon.errors import ChainConfigError

    written = spec.to_data()
    # what a reader looks for first: what the chain is and which model runs it
    first = ("schema_version", "name", "description")
    data: dict[str, Any] = {k: written.pop(k) for k in first if k in written}
    name = spec.name or "chain"
    data["name"] = name if name.endswith("_tuned") else f"{name}_tuned"
    if spec.steps is None:
        data["model"] = None
    data.update(written)
    rebase = _Rebase(spec.base_dir, folder)
    for where in (data, *data.get("steps", [])):
        rebase.models(where)
    place = data if spec.steps is None else data["steps"][[s.id for s in spec.steps].index(step.id)]
    place["model"] = _tuned_mapping(step.model or spec.model, base, folder)
    owners = [(data, spec.examples)]
    steps = zip(data.get("steps", []), spec.steps or [], strict=True)
    owners += [(d, s.examples) for d, s in steps]
    for where, examples in owners:
        if examples:
            from eslabon.chainfile.examples import load_examples

            where["examples"] = load_examples(examples, spec.base_dir)
    if spec.tests:
        data["tests"] = _inline_tests(spec)

    def dump(data: dict[str, Any]) -> str:
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)

    text = (
        f"# Written by eslabon tune: step '{step.id}' runs on {base.label} with the adapter in "
        f"{ADAPTER_FOLDER}/ (see tune.json).\n" + dump(data)
    )
    # checked before training, when the adapter is not there yet: the same file without it
    place["model"] = {k: v for k, v in place["model"].items() if k != "adapter"}
    unadapted = dump(data)
    stem = original.source.stem if original.source else (spec.name or "chain")
    path = folder / (_SAFE_NAME.sub("_", stem).strip("._") or "chain")
    path = path.with_name(path.name + ".yaml")
    if original.source is not None and path.resolve() == original.source.resolve():
        raise UserError(
            f"-o {folder}: the chain written there would replace {original.source}\n"
            "    fix: name another folder"
        )
    try:
        load_spec_text(unadapted, base_dir=folder, file=str(path))
    except ChainConfigError as exc:  # a bug here, not the user's: said before any training
        raise UserError(f"the chain file for {folder} would not load: {exc}") from None
    return path, text


def _tuned_mapping(own: Any, base: Base, folder: Path) -> dict[str, Any]:
    """The tuned model's mapping: the base and the adapter, with the params and transformers
    settings of the step's own mapping (its sampling, its max_tokens)."""
    from eslabon.chainfile.spec import HF_SETTINGS, PARAM_NAMES

    mapping = dict(base.ref)
    if mapping["name"] != "local" and Path(mapping["name"]).is_absolute():
        mapping["name"] = _relative(Path(mapping["name"]), folder)
    if own is not None and hasattr(own, "model_dump"):
        kept = (*PARAM_NAMES, *(k for k in HF_SETTINGS if k not in ("gguf_file", "adapter")))
        given = own.model_dump(exclude_none=True)
        mapping.update({k: v for k, v in given.items() if k in kept})
    mapping["adapter"] = ADAPTER_FOLDER
    return mapping


class _Rebase:
    """Model paths (``llamacpp:`` and ``huggingface:`` files, fallbacks) written relative to
    the original chain's folder, made relative to OUT."""

    def __init__(self, origin: Path, folder: Path) -> None:
        self.origin, self.folder = origin, folder

    def models(self, where: dict[str, Any]) -> None:
        for key in ("model",):
            if key in where:
                where[key] = self.ref(where[key])
        if isinstance(where.get("fallbacks"), list):
            where["fallbacks"] = [self.ref(r) for r in where["fallbacks"]]

    def ref(self, ref: Any) -> Any:
        if isinstance(ref, str):
            provider, _, name = ref.partition(":")
            return f"{provider}:{self.path(provider, name)}" if name else ref
        if isinstance(ref, dict) and isinstance(ref.get("name"), str):
            return {**ref, "name": self.path(str(ref.get("provider")), ref["name"])}
        return ref

    def path(self, provider: str, name: str) -> str:
        from eslabon.chat.modelspec import HUB_ID

        if provider not in ("llamacpp", "huggingface") or name == "local":
            return name
        given = Path(os.path.expanduser(name))
        if given.is_absolute() or (HUB_ID.match(name) and not (self.origin / given).exists()):
            return name
        return _relative(self.origin / given, self.folder)


def _relative(path: Path, folder: Path) -> str:
    try:
        return os.path.relpath(path.absolute(), folder.absolute())
    except ValueError:  # another drive (Windows)
        return str(path.absolute())


def _inline_tests(spec: Chain) -> list[dict[str, Any]]:
    from eslabon.evaluate.cases import expand_cases

    out = []
    for case in expand_cases(spec):
        entry: dict[str, Any] = {"name": case.name, "inputs": case.inputs}
        entry["expect"] = [
            a.model_dump(mode="json", by_alias=True, exclude_unset=True) for a in case.expect
        ]
        if case.repeat != 1:
            entry["repeat"] = case.repeat
        if case.pass_score is not None:
            entry["pass_score"] = case.pass_score
        out.append(entry)
    return out
