"""eslabon graph: the chain as a Mermaid flowchart, read from the templates."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from eslabon import spec_from_yaml
from eslabon.interfaces.graph import mermaid
from helpers import CHAINS, ROOT, write

EXE = str(Path(sys.executable).parent / "eslabon")


def edges(text: str) -> set[tuple[str, str, str]]:
    """(from, label, to) for every edge line."""
    found = set()
    for line in text.splitlines():
        if m := re.match(r"\s+(\w+) -\.?->(?:\|([^|]*)\|)? (\w+)$", line.replace("-.->", "-->")):
            found.add((m[1], m[2] or "", m[3]))
    return found


def test_the_canonical_chain_draws_its_data_flow() -> None:
    text = mermaid(spec_from_yaml(CHAINS / "analizar_planificar_resolver.yaml"))
    assert text.startswith("flowchart TD\n")
    assert edges(text) == {
        ("in_problema", "", "step_analisis"),
        ("in_problema", "", "step_plan"),
        ("step_analisis", "analisis", "step_plan"),
        ("step_plan", "plan", "step_solucion"),
        ("step_solucion", "", "out"),
    }
    assert 'step_analisis["<b>analisis</b><br/>local"]' in text


def test_retrievers_examples_tools_and_schemas_are_shown(tmp_path: Path) -> None:
    rag = mermaid(spec_from_yaml(CHAINS / "rag_curso.yaml"))
    assert 'retriever[("chroma · collection: curso · k=4")]' in rag
    assert ("in_pregunta", "query", "retriever") in edges(rag)
    assert ("retriever", "context", "step_output") in edges(rag)
    assert "6 few-shot examples, semantic selector k=3" in mermaid(
        spec_from_yaml(CHAINS / "traductor.yaml")
    )
    assert "tools: calculadora" in mermaid(spec_from_yaml(CHAINS / "calculadora.yaml"))
    persona = mermaid(spec_from_yaml(CHAINS / "extraer_persona.yaml"))
    assert "output: JSON {nombre, edad, ciudad, profesion, …}" in persona

    path = write(
        tmp_path,
        "inputs: {tema: x}\nsteps:\n"
        "  - id: ideas\n    model: openai:gpt-4o-mini\n    prompt: 'Ideas sobre \"{tema}\"'\n"
        "  - id: fuentes\n    prompt: '{context}'\n"
        "    retriever: {type: static, query: '{ideas}', documents: [a]}\n"
        "    output_schema: {pydantic: 'esquemas:Fuentes'}\n",
    )
    text = mermaid(spec_from_yaml(path))
    assert 'step_ideas["<b>ideas</b><br/>openai:gpt-4o-mini"]' in text
    assert {
        ("step_ideas", "query", "retriever_fuentes"),
        ("retriever_fuentes", "context", "step_fuentes"),
        ("step_fuentes", "", "out"),
    } <= edges(text)
    assert "output: Fuentes" in text  # named, never imported


def test_labels_cannot_break_the_diagram(tmp_path: Path) -> None:
    path = write(tmp_path, 'name: a "b" <c>\ninputs: {x: y}\nprompt: "{x}"\n')
    text = mermaid(spec_from_yaml(path))
    assert "<b>a #quot;b#quot; &lt;c&gt;</b>" in text


def test_cli_graph_and_the_committed_pictures() -> None:
    done = subprocess.run(
        [EXE, "graph", "chains/hola.yaml"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0 and done.stdout == mermaid(spec_from_yaml(CHAINS / "hola.yaml"))
    files = sorted(str(p.relative_to(ROOT)) for p in CHAINS.glob("*.yaml"))
    markdown = subprocess.run(
        [EXE, "graph", *files, "--format", "markdown"], capture_output=True, text=True, cwd=ROOT
    )
    committed = (ROOT / "docs" / "graphs.md").read_text(encoding="utf-8")
    assert committed.endswith(markdown.stdout), "run `make docs` to update docs/graphs.md"
    assert committed.count("```mermaid") == len(files)


def test_cli_graph_mistakes() -> None:
    bad = subprocess.run(
        [EXE, "graph", "chains/hola.yaml", "--format", "gif"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "use mermaid, markdown, svg or png" in bad.stderr
    missing = subprocess.run([EXE, "graph", "nope.yaml"], capture_output=True, text=True)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_svg_and_png_are_drawn_offline(tmp_path: Path) -> None:
    import shutil

    import pytest

    pytest.importorskip("gradio", reason="the ui extra")
    pytest.importorskip("playwright", reason="the ui extra")
    if not shutil.which("chromium"):
        pytest.skip("needs Chromium")
    svg, png = tmp_path / "g.svg", tmp_path / "g.png"
    for out in (svg, png):
        done = subprocess.run(
            [EXE, "graph", "chains/analizar_planificar_resolver.yaml", "-f", out.suffix[1:],
             "-o", str(out)],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    drawing = svg.read_text(encoding="utf-8")
    assert drawing.startswith("<svg") and 'class="flowchart"' in drawing
    for label in ("problema", "analisis", "plan", "solucion", "output"):
        assert label in drawing
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    several = subprocess.run(
        [EXE, "graph", "chains/hola.yaml", "chains/rag_curso.yaml", "-f", "png", "-o", "x.png"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert several.returncode == 2 and "draws one chain file" in several.stderr


def test_several_files_make_one_flowchart_a_subgraph_each() -> None:
    """Two chains' texts one after the other were two `flowchart` headers in one block, which
    Mermaid cannot draw; now one flowchart, a subgraph per chain, its node ids its own."""
    done = subprocess.run(
        [EXE, "graph", "chains/hola.yaml", "chains/analizar_planificar_resolver.yaml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.count("flowchart") == 1 and text.startswith("flowchart TD\n")
    assert '    subgraph chain1["hola"]' in text and '    subgraph chain2["analizar_' in text
    assert text.count("\n    end\n") == 2
    assert ("c1_in_nombre", "", "c1_step_output") in edges(text)
    assert ("c2_step_analisis", "analisis", "c2_step_plan") in edges(text)
    assert {"c1_out", "c2_out"} <= {t for _, _, t in edges(text)}  # one output node each


def test_the_combined_flowchart_draws(tmp_path: Path) -> None:
    import shutil

    import pytest

    pytest.importorskip("gradio", reason="the ui extra")
    pytest.importorskip("playwright", reason="the ui extra")
    if not shutil.which("chromium"):
        pytest.skip("needs Chromium")
    code = (
        "import sys\n"
        "from eslabon import spec_from_yaml\n"
        "from eslabon.interfaces.graph import mermaid_many, render_image\n"
        "specs = [spec_from_yaml(f'chains/{n}') for n in ('hola.yaml', 'rag_curso.yaml')]\n"
        "text = mermaid_many([(s.name or '', s) for s in specs])\n"
        "sys.stdout.write(render_image(text, 'svg').decode())\n"
    )  # in a process of its own, as the CLI draws: Gradio leaves an event loop behind
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    drawing = done.stdout
    assert drawing.startswith("<svg") and "Syntax error" not in drawing
    for label in ("hola", "rag_curso", "nombre", "pregunta"):
        assert label in drawing
