"""``eslabon tune``: the command line of :mod:`eslabon.tuning` (registered by the CLI)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from eslabon.errors import UserError

__all__ = ["tune"]


def tune(
    file: Annotated[Path, typer.Argument(help="The chain file.")],
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="Folder for the adapter and chain file.")
    ] = None,
    step: Annotated[str | None, typer.Option("--step", help="The step to teach.")] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help=".jsonl, .yaml or .csv: the chain's inputs and `output`."),
    ] = None,
    from_examples: Annotated[
        bool, typer.Option("--from-examples", help="Teach the step's own few-shot examples.")
    ] = False,
    from_logs: Annotated[
        bool, typer.Option("--from-logs", help="Teach the answers of logged runs of the chain.")
    ] = False,
    query: Annotated[
        str | None, typer.Option("-q", "--query", help="With --from-logs: runs matching TEXT.")
    ] = None,
    base: Annotated[
        str | None,
        typer.Option("--base", help="local, huggingface:FOLDER_OR_ID or llamacpp:FILE.gguf."),
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs")] = 3,
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank.")] = 8,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 2e-3,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 2,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    no_examples: Annotated[
        bool,
        typer.Option("--no-examples", help="Train, and write the chain, without its examples."),
    ] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, mps.")] = "auto",
    export: Annotated[
        tuple[str, Path] | None,
        typer.Option(
            "--export",
            help="openai|gemini FILE.jsonl: write the rendered pairs in that provider's "
            "fine-tuning format instead of training.",
        ),
    ] = None,
    allow_import: Annotated[
        list[str] | None,
        typer.Option("--allow-import", help="Let the chain file import code from this package."),
    ] = None,
    allow_path: Annotated[
        list[str] | None,
        typer.Option("--allow-path", help="Let the chain file read files in this folder."),
    ] = None,
) -> None:
    """Teach one step of a chain to a local model (a LoRA adapter, offline), or export the
    prompts it sends for a cloud provider's fine-tuning.

    The training prompts are rendered exactly as the chain sends them; the loss counts the
    answer's tokens only. OUT gets the adapter, tune.json and a chain file that runs on it.
    """
    from eslabon.interfaces.cli import _grant

    _grant(paths=allow_path)
    source = _source(data, from_examples, from_logs, query)
    from eslabon.chainfile.loader import load_spec
    from eslabon.tuning import FORMATS, Settings, collect_pairs, write_export
    from eslabon.tuning import tune as run_tune

    spec = load_spec(file)
    if export is not None:
        fmt, target = export
        if fmt not in FORMATS:
            raise UserError(f"--export {fmt}: formats are {', '.join(FORMATS)}")
        for given in (data, file):  # the learner's own files are never written over
            if given is not None and target.resolve() == given.resolve():
                raise UserError(
                    f"--export {fmt} {target}: that is {given} itself\n"
                    "    fix: name a new file, e.g. openai.jsonl"
                )
        _, _, pairs = collect_pairs(spec, step, source, not no_examples, allow_import)
        write_export(pairs, fmt, target)
        typer.echo(f"wrote {len(pairs)} examples in {fmt}'s fine-tuning format to {target}")
        return
    if out is None:
        raise UserError("say where to write the adapter\n    fix: -o FOLDER (e.g. -o ajustado)")
    settings = Settings(epochs=epochs, rank=rank, lr=lr, seed=seed, batch_size=batch_size)
    with _progress() as progress:
        done = run_tune(
            spec,
            out,
            source,
            step=step,
            base=base,
            settings=settings,
            keep_examples=not no_examples,
            allow_imports=allow_import,
            device=device,
            progress=progress,
        )
    _print_done(done, file)


def _source(data: Path | None, examples: bool, logs: bool, query: str | None) -> Any:
    from eslabon.tuning import Source

    given = [
        n
        for n, on in (
            ("--data", data is not None),
            ("--from-examples", examples),
            ("--from-logs", logs),
        )
        if on
    ]
    if len(given) != 1:
        raise UserError(
            ("give one of " if not given else f"give only one of {', '.join(given)}: ")
            + "--data FILE, --from-examples, --from-logs [-q TEXT]"
            + "\n    fix: e.g. --data datos.jsonl (rows of the chain's inputs and `output`)"
        )
    if query is not None and not logs:
        raise UserError("-q/--query chooses logged runs: use it with --from-logs")
    return Source(data=data, examples=examples, logs=(query or "") if logs else None)


@contextmanager
def _progress() -> Iterator[Any]:
    """A rich bar with the loss on a terminal; a plain line every 10% otherwise."""
    from eslabon.interfaces.cli import _console

    console = _console()
    if not console.is_terminal:

        def plain(done: int, total: int, loss: float) -> None:
            if done == total or done % max(1, total // 10) == 0:
                typer.echo(f"step {done}/{total} · loss {loss:.4f}", err=True)

        yield plain
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("training", total=None, loss="…")

        def fancy(done: int, total: int, loss: float) -> None:
            bar.update(task, completed=done, total=total, loss=f"{loss:.4f}")

        yield fancy


def _print_done(done: Any, file: Path) -> None:
    m = done.manifest
    s = m["settings"]
    typer.echo(
        f"tuned step '{m['step']}' of {m['chain']} on {m['base']['model']}: {done.pairs} rows × "
        f"{s['epochs']} epochs, final loss {m['final_loss']:.4f}, {m['tokens_trained']:,} "
        f"tokens in {m['seconds']:.1f} s ({m['tokens_per_second']:.0f} tokens/s, {m['device']})"
    )
    typer.echo(f"wrote {done.out}/adapter, {done.out}/tune.json and {done.chain_file}")
    typer.echo(f"try it: eslabon run {done.chain_file}  ·  eslabon test {done.chain_file}")
