"""``eslabon graph``: a chain file as a picture — Mermaid text, as the course draws pipelines.

Inputs, the retriever, each step (its model, few-shot count, selector, tools, output schema) and
the data that flows between them, read from the templates: ``{problema}`` in a step's prompt is
an edge from that input, ``{analisis}`` an edge from that step, ``{context}`` one from the
retriever. Nothing is imported or built (no model, no store): it works on any valid file.
Several chains make one flowchart with a subgraph each (:func:`mermaid_many`): Mermaid reads
one diagram per block, so one text holding several ``flowchart`` headers would not draw.
"""

from __future__ import annotations

from typing import Any

from eslabon.chainfile.spec import Chain
from eslabon.chainfile.templates import template_fields
from eslabon.chat.modelspec import ref_label

__all__ = ["mermaid", "mermaid_many"]


def _label(text: str) -> str:
    # Mermaid labels are quoted; a quote or an angle bracket inside would end or break them
    return (
        text.replace("&", "&amp;").replace('"', "#quot;").replace("<", "&lt;").replace(">", "&gt;")
    )


def _model(ref: Any) -> str:
    if ref is None:
        return "local"
    label = ref_label(ref)
    if isinstance(ref, str):
        return label
    data = ref.model_dump(exclude_none=True) if hasattr(ref, "model_dump") else dict(ref)
    if "base_urls" in data:
        label += f" ×{len(data['base_urls'])} servers"
    elif "base_url" in data:
        label += " @ " + str(data["base_url"])
    return label


def _retriever(spec: Any) -> str:
    parts = [spec.type]
    for key in ("collection", "path", "host"):
        value = getattr(spec, key, None)
        if value:
            parts.append(f"{key}: {value}")
    parts.append(f"k={spec.k}")
    return " · ".join(parts)


def _examples(step: Any, base_dir: Any) -> str | None:
    if not step.examples:
        return None
    from eslabon.chainfile.examples import load_examples

    try:
        count = len(load_examples(step.examples, base_dir))
    except Exception:  # a broken example file is validate's business, not the picture's
        count = len(step.examples)
    selector = step.selector
    if selector is not None and getattr(selector, "type", "all") != "all":
        k = getattr(selector, "k", None)
        return f"{count} few-shot examples, {selector.type} selector" + (f" k={k}" if k else "")
    return f"{count} few-shot examples"


def _schema(ref: Any) -> str:
    if hasattr(ref, "pydantic"):
        return "output: " + str(ref.pydantic).rpartition(":")[2]
    properties = list((ref.get("properties") or {}) if isinstance(ref, dict) else ())
    shown = ", ".join(properties[:4]) + (", …" if len(properties) > 4 else "")
    return f"output: JSON {{{shown}}}"


def mermaid(spec: Chain) -> str:
    """The chain as a Mermaid flowchart (top to bottom)."""
    return "\n".join(["flowchart TD", *_body(spec, "")]) + "\n"


def mermaid_many(charts: list[tuple[str, Chain]]) -> str:
    """Several chains as one Mermaid flowchart, a titled subgraph each (``(title, spec)``).
    Node ids carry the chain's number, so that two chains' ``analisis`` stay two nodes."""
    lines = ["flowchart TD"]
    for n, (title, spec) in enumerate(charts, 1):
        lines.append(f'    subgraph chain{n}["{_label(title)}"]')
        lines.append("        direction TB")
        lines += ["    " + line for line in _body(spec, f"c{n}_")]
        lines.append("    end")
    return "\n".join(lines) + "\n"


def _body(spec: Chain, p: str) -> list[str]:
    """The flowchart's node and edge lines; every node id starts with ``p``."""
    inputs = spec.input_names()
    steps = spec.normalized_steps()
    ids = [s.id for s in steps]
    lines = [f'    {p}in_{name}(["{_label(name)}"])' for name in inputs]
    if spec.retriever is not None:
        lines.append(f'    {p}retriever[("{_label(_retriever(spec.retriever))}")]')
        for field in template_fields(_query(spec.retriever, inputs)):
            if field in inputs:
                lines.append(f"    {p}in_{field} -->|query| {p}retriever")
    for n, step in enumerate(steps):
        node = f"{p}step_{step.id}"
        lines.append(_step_node(spec, step, node))
        if step.retriever is not None:
            lines += _step_retriever(step, node, inputs, ids[:n], p)
        lines += _step_edges(spec, step, node, inputs, ids[:n], p)
    lines.append(f'    {p}out((("output")))')
    lines.append(f"    {p}step_{spec.output_step()} --> {p}out")
    return lines


def _query(retriever: Any, inputs: list[str]) -> str:
    return str(retriever.query or "{" + (inputs[0] if inputs else "") + "}")


def _step_node(spec: Chain, step: Any, node: str) -> str:
    """A step's box: its title, model, examples, tools and output."""
    model = step.model if step.model is not None else spec.model
    details = [_model(model)]
    if (examples := _examples(step, spec.base_dir)) is not None:
        details.append(examples)
    if step.tools:
        details.append(f"tools: {', '.join(t.rpartition(':')[2] for t in step.tools)}")
    if step.output_schema is not None:
        details.append(_schema(step.output_schema))
    title = step.id if spec.steps else (spec.name or "prompt")
    body = "<br/>".join(_label(d) for d in details)
    return f'    {node}["<b>{_label(title)}</b><br/>{body}"]'


def _step_retriever(
    step: Any, node: str, inputs: list[str], before: list[str], p: str
) -> list[str]:
    """A step's own retriever, what its query reads, and the context it gives the step."""
    own = f"{p}retriever_{step.id}"
    lines = [f'    {own}[("{_label(_retriever(step.retriever))}")]']
    for field in template_fields(_query(step.retriever, inputs)):
        if field in inputs or field in before:
            source = f"{p}in_{field}" if field in inputs else f"{p}step_{field}"
            lines.append(f"    {source} -->|query| {own}")
    lines.append(f"    {own} -.->|context| {node}")
    return lines


def _step_edges(
    spec: Chain, step: Any, node: str, inputs: list[str], before: list[str], p: str
) -> list[str]:
    """Edges into a step from the inputs, earlier steps and the chain's retriever it uses."""
    used = dict.fromkeys(
        field
        for template in (step.system, step.prompt)
        for field in template_fields(template or "")
    )
    lines = []
    for field in used:
        if field in inputs:
            lines.append(f"    {p}in_{field} --> {node}")
        elif field in before:
            lines.append(f"    {p}step_{field} -->|{_label(field)}| {node}")
        elif field == "context" and spec.retriever is not None and step.retriever is None:
            lines.append(f"    {p}retriever -.->|context| {node}")
    return lines


def browser_path() -> str:
    """A Chromium to draw with: ``ESLABON_CHROMIUM``, else one on the PATH."""
    import os
    import shutil

    from eslabon.errors import UserError

    for candidate in (
        os.environ.get("ESLABON_CHROMIUM"),
        *(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")),
    ):
        if candidate and os.path.exists(candidate):
            return candidate
    raise UserError(
        "drawing an image needs Chromium.\n"
        "    fix: install it (Debian/Ubuntu: apt install chromium) or set ESLABON_CHROMIUM"
    )


def render_image(diagram: str, fmt: str) -> bytes:
    """The Mermaid ``diagram`` drawn as SVG or PNG, offline: Gradio's page (which bundles
    Mermaid) shown in headless Chromium. Written by hand because Mermaid's own renderer is a
    Node tool and LangChain's ``draw_mermaid_png`` calls a web service."""
    import socket

    from eslabon.errors import MissingDependencyError

    try:
        import gradio as gr
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise MissingDependencyError("eslabon graph --format svg/png", "ui", exc.name) from None
    chromium = browser_path()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with gr.Blocks() as page_app:
        gr.Markdown(f"```mermaid\n{diagram}```", elem_id="picture")
    page_app.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        ssr_mode=False,
        share=False,
    )
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page(device_scale_factor=2)
                page.goto(f"http://127.0.0.1:{port}/")
                return _capture(page, fmt)
            finally:
                browser.close()
    finally:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # Gradio announces the closing
            page_app.close()


def _capture(page: Any, fmt: str) -> bytes:
    """The drawn SVG, once Gradio has finished drawing it (it may draw twice)."""
    import time

    last, steady = "", 0
    deadline = time.monotonic() + 30
    while steady < 3:  # the same drawing three checks in a row
        if time.monotonic() > deadline:
            raise TimeoutError("the diagram was not drawn within 30 s")
        now = str(
            page.evaluate(
                "() => document.querySelector('#picture svg .node') ? "
                "document.querySelector('#picture svg').outerHTML : ''"
            )
        )
        steady = steady + 1 if now and now == last else 0
        last = now
        time.sleep(0.1)
    if fmt == "svg":
        return last.encode()
    return bytes(page.locator("#picture svg").first.screenshot())
