"""``eslabon ui``: a Gradio playground for chain files, on 127.0.0.1 (extra ``ui``).

Pick a chain, fill the form built from its ``inputs``, pick a model, run: each step streams into
its own panel, then the retrieved documents, tool calls, the structured output as JSON, and the
request body a provider would get for the step you pick (``eslabon render``). Mistakes — an
invalid file, a missing key — are shown as the same one-paragraph messages the CLI prints, never
as a stack trace.

The page has a fixed number of input and step slots, relabelled and shown per chain: Gradio
components are declared up front, and a chain with more than ``MAX_FIELDS`` inputs or
``MAX_STEPS`` steps says so instead of hiding the rest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eslabon.errors import EslabonError, UserError
from eslabon.trust.redaction import redact

__all__ = ["MAX_FIELDS", "MAX_STEPS", "build_app", "chain_files", "model_choices", "run_chain"]

MAX_FIELDS = 6
MAX_STEPS = 6
FILE_MODEL = "(the file's model)"


def chain_files(target: Path) -> list[Path]:
    """The chain files a playground offers: FILE itself, or the chain files in DIR (not the
    few-shot example files or files of test cases beside them)."""
    from eslabon.chainfile.discover import CHAIN_SUFFIXES, is_cases_file, is_examples_file

    if target.is_file():
        return [target]
    if target.is_dir():
        found = sorted(p for p in target.iterdir() if p.suffix in CHAIN_SUFFIXES)
        return [p for p in found if not is_examples_file(p) and not is_cases_file(p)]
    raise UserError(f"no such file or folder: {target}")


def message(exc: BaseException) -> str:
    """What the page shows for a failure: eslabon's own message, or one line for anything else."""
    if isinstance(exc, EslabonError):
        return redact(str(exc))
    return redact(f"{type(exc).__name__}: {exc}")


def model_choices() -> list[str]:
    """The file's model, the offline ones, project aliases, and providers whose key is set."""
    from eslabon.chat.models import load_env
    from eslabon.chat.modelspec import ModelSpec, key_is_set
    from eslabon.trust.project import load_project

    load_env()
    choices = [FILE_MODEL, "local", "fake:echo"]
    choices += sorted(load_project().models)
    defaults = {
        "openai": "gpt-4o-mini",
        "google_genai": "gemini-2.5-flash",
        "anthropic": "claude-sonnet-4-6",
        "ollama": "llama3.2",
    }
    for provider, name in defaults.items():
        spec = ModelSpec(provider, name)
        if spec.installed() and key_is_set(spec) is not False:  # set, or none needed
            choices.append(f"{provider}:{name}")
    return list(dict.fromkeys(choices))


@dataclass
class Form:
    """What the page shows for a chain before it runs."""

    inputs: list[tuple[str, str, str]] = field(default_factory=list)  # name, label, default
    steps: list[str] = field(default_factory=list)
    description: str = ""
    error: str = ""
    picture: str = ""  # the chain as a Mermaid block (eslabon graph)

    def values(self, given: tuple[str, ...]) -> dict[str, str]:
        """The chain's inputs from the page's fields, in order."""
        return {inp[0]: given[n] for n, inp in enumerate(self.inputs[:MAX_FIELDS])}


def form_for(path: Path) -> Form:
    from eslabon.chainfile.checks import check_spec
    from eslabon.chainfile.loader import load_spec

    try:
        spec = load_spec(path)
        check_spec(spec)
    except Exception as exc:
        return Form(error=message(exc))
    from eslabon.interfaces.graph import mermaid

    form = Form(description=spec.description or "", picture=f"```mermaid\n{mermaid(spec)}```")
    for name in spec.input_names():
        ref = spec.inputs[name]
        about = ref if isinstance(ref, str) else (ref.description or "")
        label = f"{name} — {about}" if about else name
        form.inputs.append((name, label, spec.input_default(name) or ""))
    form.steps = [s.id for s in spec.normalized_steps()]
    if len(form.inputs) > MAX_FIELDS or len(form.steps) > MAX_STEPS:
        form.error = (
            f"this playground shows up to {MAX_FIELDS} inputs and {MAX_STEPS} steps; "
            f"run this chain with `eslabon run {path}`"
        )
    return form


@dataclass
class RunState:
    """Everything the page shows during and after a run."""

    steps: dict[str, str] = field(default_factory=dict)
    documents: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    structured: Any = None
    stats: dict[str, Any] | None = None  # tokens, time and cost per step, once the run ends
    error: str = ""
    done: bool = False


def run_chain(
    path: Path, values: dict[str, str], model: str | None, allow_imports: list[str] | None = None
) -> Iterator[RunState]:
    """Run ``path``, yielding the page's state after every chunk (tokens stream in)."""
    from eslabon.chainfile.loader import load_spec
    from eslabon.running.compile import compile_chain
    from eslabon.running.structured import as_data

    state = RunState()
    try:
        chain = compile_chain(
            load_spec(path),
            model=None if model in (None, "", FILE_MODEL) else model,
            allow_imports=allow_imports,
        )
        for chunk in chain.stream(values):
            for key, value in chunk.items():
                if key == "stats":
                    state.stats = value
                elif key == "documents":
                    state.documents += value
                elif key == "tool_calls":
                    state.tool_calls += value
                elif key == "output" and "output" not in {s.id for s in chain.steps}:
                    continue
                elif isinstance(value, str):
                    state.steps[key] = state.steps.get(key, "") + value
                else:  # a structured step arrives whole
                    state.structured = as_data(value)
                    state.steps[key] = json.dumps(state.structured, ensure_ascii=False, indent=2)
            yield state
    except Exception as exc:
        state.error = message(exc)
    state.done = True
    yield state


def render_payload(
    path: Path,
    values: dict[str, str],
    provider: str,
    step: str | None,
    allow_imports: list[str] | None = None,
) -> Any:
    """The request bodies ``eslabon render`` prints ({context}: what the retriever finds), or
    ``{"error": message}``."""
    from eslabon.chainfile.loader import load_spec
    from eslabon.interfaces.render import render_requests

    try:
        return render_requests(load_spec(path), provider, values, step or None, allow_imports)
    except Exception as exc:
        return {"error": message(exc)}


def _documents_markdown(documents: list[dict[str, Any]]) -> str:
    if not documents:
        return ""
    lines = ["**Documents**", ""]
    for n, doc in enumerate(documents, 1):
        score = f" · score {doc['score']:.3f}" if isinstance(doc.get("score"), float) else ""
        text = " ".join(str(doc.get("content", "")).split())[:300]
        lines.append(f"{n}. `{doc.get('source')}`{score} — {text}")
    return "\n".join(lines)


def _tools_markdown(calls: list[dict[str, Any]]) -> str:
    if not calls:
        return ""
    from eslabon.running.toolcalls import call_summary

    lines = ["**Tool calls**", ""]
    for call in calls:
        signature, result = call_summary(call)
        lines.append(f"- `{signature}` → {result}")
    return "\n".join(lines)


def _stats_markdown(stats: dict[str, Any] | None) -> str:
    """Each step's model, tokens, time and cost, and the run's total, as a table."""
    if not stats:
        return ""
    from eslabon.observe.record import cost_text, usage_text

    def row(name: str, model: str, figures: dict[str, Any]) -> str:
        time = f"{figures['latency_ms'] / 1000:.2f} s"
        if figures.get("ttft_ms") is not None:
            time += f" (first token {figures['ttft_ms'] / 1000:.2f} s)"
        cells = (name, model, usage_text(figures), time, cost_text(figures.get("cost")))
        return "| " + " | ".join(cells) + " |"

    lines = ["| step | model | tokens (in → out) | time | cost |", "|---|---|---|---|---|"]
    for step, figures in stats["steps"].items():
        lines.append(row(f"`{step}`", str(figures.get("model") or ""), figures))
    lines.append(row("**total**", ", ".join(stats.get("models", [])), stats))
    return "\n".join(lines)


def _form_updates(gr: Any, form: Form) -> list[Any]:
    """The page's updates for ``form``: description, error, picture, fields, panels, steps."""
    updates: list[Any] = [
        gr.update(value=form.description),
        gr.update(value=form.error, visible=bool(form.error)),
        gr.update(value=form.picture),
    ]
    for n in range(MAX_FIELDS):
        if n < len(form.inputs):
            _, label, default = form.inputs[n]
            updates.append(gr.update(label=label, value=default, visible=True))
        else:
            updates.append(gr.update(value="", visible=False))
    for n in range(MAX_STEPS):
        if n < len(form.steps):
            updates.append(gr.update(label=form.steps[n], value="", visible=True))
        else:
            updates.append(gr.update(value="", visible=False))
    updates.append(gr.update(choices=form.steps, value=form.steps[-1] if form.steps else None))
    return updates


def _input_boxes(gr: Any, first: Form) -> list[Any]:
    """One text box per possible input, those of the first chain shown."""
    boxes = []
    for n in range(MAX_FIELDS):
        shown = n < len(first.inputs)
        label, default = (first.inputs[n][1], first.inputs[n][2]) if shown else ("", "")
        boxes.append(
            gr.Textbox(label=label, value=default, visible=shown, lines=2, elem_id=f"input-{n}")
        )
    return boxes


def _step_panels(gr: Any, first: Form) -> list[Any]:
    """One read-only panel per possible step, those of the first chain shown."""
    return [
        gr.Textbox(
            label=first.steps[n] if n < len(first.steps) else "",
            visible=n < len(first.steps),
            lines=4,
            interactive=False,
            elem_id=f"step-{n}",
        )
        for n in range(MAX_STEPS)
    ]


def build_app(target: Path, allow_imports: list[str] | None = None) -> Any:
    """The Gradio Blocks app for the chains at ``target``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        import gradio as gr
    except ImportError:
        from eslabon.errors import MissingDependencyError

        raise MissingDependencyError("eslabon ui", "ui", "gradio") from None

    files = chain_files(target)
    names = [str(p) for p in files]
    labels = [(p.name if target.is_dir() else str(p), str(p)) for p in files]
    first = form_for(files[0]) if files else Form(error=f"no chain files in {target}")

    with gr.Blocks(title="eslabon") as app:
        gr.Markdown("# eslabon\nPick a chain, fill its inputs, run it.")
        with gr.Row():
            chain_box = gr.Dropdown(
                labels, value=names[0] if names else None, label="Chain", elem_id="chain"
            )
            model_box = gr.Dropdown(
                model_choices(),
                value=FILE_MODEL,
                label="Model",
                allow_custom_value=True,
                elem_id="model",
            )
        description = gr.Markdown(first.description, elem_id="description")
        error_box = gr.Markdown(first.error, visible=bool(first.error), elem_id="error")
        with gr.Accordion("Pipeline", open=False):
            picture = gr.Markdown(first.picture, elem_id="picture")
        fields = _input_boxes(gr, first)
        run_button = gr.Button("Run", variant="primary", elem_id="run")
        panels = _step_panels(gr, first)
        documents = gr.Markdown(elem_id="documents")
        tools = gr.Markdown(elem_id="tool-calls")
        structured = gr.JSON(label="Structured output", visible=False, elem_id="structured")
        usage = gr.Markdown(elem_id="usage")
        with gr.Accordion("Provider payload (eslabon render)", open=False):
            with gr.Row():
                provider_box = gr.Dropdown(
                    ["openai", "google_genai", "anthropic", "ollama", "local"],
                    value="openai",
                    label="Provider",
                )
                step_box = gr.Dropdown(
                    first.steps,
                    value=first.steps[-1] if first.steps else None,
                    label="Step",
                )
                show_button = gr.Button("Show payload", elem_id="show-payload")
            payload = gr.JSON(label="Request body", elem_id="payload")

        form_outputs = [description, error_box, picture, *fields, *panels, step_box]

        def pick(name: str) -> list[Any]:
            return _form_updates(gr, form_for(Path(name)))

        chain_box.change(pick, inputs=chain_box, outputs=form_outputs)

        def run(name: str, model: str, *given: str) -> Iterator[list[Any]]:
            form = form_for(Path(name))
            if form.error:
                yield [gr.update(value=form.error, visible=True), *[gr.update()] * (MAX_STEPS + 4)]
                return
            for state in run_chain(Path(name), form.values(given), model, allow_imports):
                texts = [
                    gr.update(value=state.steps.get(step, "")) for step in form.steps[:MAX_STEPS]
                ]
                texts += [gr.update()] * (MAX_STEPS - len(texts))
                yield [
                    gr.update(value=state.error, visible=bool(state.error)),
                    *texts,
                    _documents_markdown(state.documents),
                    _tools_markdown(state.tool_calls),
                    gr.update(value=state.structured, visible=state.structured is not None),
                    _stats_markdown(state.stats),
                ]

        run_button.click(
            run,
            inputs=[chain_box, model_box, *fields],
            outputs=[error_box, *panels, documents, tools, structured, usage],
        )

        def show(name: str, provider: str, step: str | None, *given: str) -> Any:
            values = form_for(Path(name)).values(given)
            # the imports the page was started with: tools and pydantic schemas render as run
            return render_payload(Path(name), values, provider, step, allow_imports)

        show_button.click(
            show, inputs=[chain_box, provider_box, step_box, *fields], outputs=payload
        )
    return app


def serve(target: Path, port: int, host: str = "127.0.0.1", **kwargs: Any) -> None:
    """Build and serve the playground until interrupted."""
    import gradio as gr

    app = build_app(target, kwargs.pop("allow_imports", None))
    # system fonts: the default theme would fetch Google Fonts from the page
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])
    app.launch(
        server_name=host,
        server_port=port,
        theme=theme,
        ssr_mode=False,
        share=False,
        quiet=True,
        **kwargs,
    )
