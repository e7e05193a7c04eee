"""eslabon ui in a real browser: Debian's chromium, headless, driven by Playwright."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import CHAINS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]
EXE = str(Path(sys.executable).parent / "eslabon")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("gradio", reason="the ui extra")
    folder = tmp_path_factory.mktemp("chains")
    shutil.copy(CHAINS / "analizar_planificar_resolver.yaml", folder / "a_pasos.yaml")
    shutil.copy(CHAINS / "hola.yaml", folder / "b_hola.yaml")
    # an answer long enough to be seen growing (hola's is a handful of tokens)
    (folder / "e_cuento.yaml").write_text(
        "inputs: {tema: x}\nparams: {max_tokens: 40, temperature: 0}\n"
        "prompt: 'Escribe un cuento largo sobre {tema}.'\n",
        encoding="utf-8",
    )
    (folder / "c_roto.yaml").write_text("prompt: 'Hola {nombre'\n", encoding="utf-8")
    (folder / "d_persona.yaml").write_text(
        'model: {provider: fake, responses: [\'{"nombre": "Ana", "edad": 30}\']}\n'
        "inputs: {pregunta: x}\n"
        "retriever:\n  type: memory\n  k: 1\n  documents:\n"
        "    - {content: 'Ana tiene treinta años', source: fichas/ana.md}\n"
        "    - {content: 'Luis vive en Lima', source: fichas/luis.md}\n"
        "prompt: '{context}'\n"
        "output_schema:\n  type: object\n"
        "  properties: {nombre: {type: string}, edad: {type: integer}}\n",
        encoding="utf-8",
    )
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("ESLABON_MODEL", None)
    proc = subprocess.Popen(
        [EXE, "ui", str(folder), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"eslabon ui did not start:\n{out}") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    if proc.stdout:
        proc.stdout.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def choose(page: Any, box: str, option: str) -> None:
    """Pick ``option`` in a Gradio dropdown (typed in: custom values are allowed too)."""
    field = page.locator(f"#{box} input")
    field.click()
    field.fill(option)
    field.press("Enter")


def panel(page: Any, n: int) -> str:
    return str(page.locator(f"#step-{n} textarea").input_value())


def test_fill_the_form_run_and_see_each_step(site: str, browser: Any, tmp_path: Path) -> None:
    page = browser.new_page()
    page.goto(site)
    page.locator("#input-0 textarea").wait_for()
    assert "problema" in page.locator("#input-0").inner_text()  # the form of the first chain
    choose(page, "model", "fake:echo")
    page.locator("#input-0 textarea").fill("Tengo 3 manzanas")
    page.locator("#run").click()
    # fake:echo answers each step with its prompt; the last one ends with the plan's last words
    page.wait_for_function(
        "() => document.querySelector('#step-2 textarea')?.value"
        ".endsWith('Identifica los pasos a seguir.')",
        timeout=30000,
    )
    labels = [page.locator(f"#step-{n}").inner_text() for n in range(3)]
    assert [label.split("\n")[0] for label in labels] == ["analisis", "plan", "solucion"]
    assert panel(page, 0) == "Analiza el problema:\nTengo 3 manzanas"  # fake:echo: the prompt
    assert panel(page, 2).startswith("Resuelve paso a paso siguiendo este plan:")
    assert not page.locator("#step-3").is_visible()
    # what each step used: its model, tokens in → out, time and cost (fake:echo costs $0)
    page.wait_for_function(
        "() => document.querySelector('#usage')?.innerText.includes('total')", timeout=10000
    )
    usage = page.locator("#usage").inner_text()
    for step in ("analisis", "plan", "solucion"):
        assert step in usage
    assert "fake:echo" in usage and "→" in usage and "$0" in usage
    # ESLABON_SCREENSHOT=docs/ui.png refreshes the picture in the docs
    shot = Path(os.environ.get("ESLABON_SCREENSHOT") or tmp_path / "ui.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.close()


# every value the first step's panel shows, taken in the page at each frame it draws (a poll
# from Python, a round trip a time, misses most of them on a busy machine)
_WATCH_PANEL = """() => {
    window.__seen = [];
    const look = () => {
        const box = document.querySelector('#step-0 textarea');
        const text = box ? box.value : '';
        const seen = window.__seen;
        if (text && (!seen.length || seen[seen.length - 1] !== text)) seen.push(text);
        requestAnimationFrame(look);
    };
    look();
}"""


@pytest.mark.model
def test_tokens_stream_into_the_panel_on_the_local_model(site: str, browser: Any) -> None:
    page = browser.new_page()
    page.goto(site)
    choose(page, "chain", "e_cuento.yaml")
    page.wait_for_function(
        "() => document.querySelector('#input-0')?.innerText.includes('tema')", timeout=10000
    )
    choose(page, "model", "local")
    page.locator("#input-0 textarea").fill("un gato")
    page.evaluate(_WATCH_PANEL)
    page.locator("#run").click()
    # the run's figures come with its last update
    page.wait_for_function(
        "() => document.querySelector('#usage')?.innerText.includes('total')", timeout=60000
    )
    seen: list[str] = page.evaluate("() => window.__seen")
    # the answer grew in place, token by token, before it was whole
    assert len(seen) >= 3, seen
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(seen))
    page.close()


def test_a_broken_chain_shows_a_readable_error(site: str, browser: Any) -> None:
    page = browser.new_page()
    page.goto(site)
    choose(page, "chain", "c_roto.yaml")
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=10000)
    text = error.inner_text()
    assert "c_roto.yaml:1" in text and "prompt" in text
    assert "Traceback" not in page.content()
    page.close()


def test_the_provider_payload_for_a_step(site: str, browser: Any) -> None:
    page = browser.new_page()
    page.goto(site)
    page.locator("#input-0 textarea").fill("2+2")
    page.get_by_text("Provider payload").click()
    page.locator("#show-payload").click()
    page.wait_for_function(
        "() => document.querySelector('#payload')?.innerText.includes('messages')",
        timeout=15000,
    )
    assert "chat/completions" in page.locator("#payload").inner_text()
    page.close()


def test_the_provider_payload_shows_what_the_retriever_finds(site: str, browser: Any) -> None:
    page = browser.new_page()
    page.goto(site)
    choose(page, "chain", "d_persona.yaml")
    page.wait_for_function(
        "() => document.querySelector('#input-0')?.innerText.includes('pregunta')", timeout=10000
    )
    page.locator("#input-0 textarea").fill("¿Cuántos años tiene Ana?")
    page.get_by_text("Provider payload").click()
    page.locator("#show-payload").click()
    page.wait_for_function(
        "() => document.querySelector('#payload')?.innerText.includes('messages')",
        timeout=15000,
    )
    folded = page.locator("#payload button[aria-label='Expand']")
    for _ in range(50):  # the JSON view folds the deeper levels: unfold them all
        if not folded.count():
            break
        folded.first.click()
    shown = page.locator("#payload").inner_text()
    assert "Ana tiene treinta años" in shown and "fichas/ana.md" in shown
    assert "KeyError" not in shown
    page.close()


# -- the page's logic, without a browser --------------------------------------------------------
def test_the_payload_panel_for_the_course_rag_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eslabon.interfaces.ui import render_payload
    from eslabon.rag.indexing import index_paths, open_store

    (tmp_path / "eslabon.toml").write_text("[models]\n", encoding="utf-8")
    shutil.copytree(CHAINS / "docs", tmp_path / "docs")
    chain = shutil.copy(CHAINS / "rag_curso.yaml", tmp_path / "rag_curso.yaml")
    monkeypatch.chdir(tmp_path)
    # no index yet: a marked placeholder, not an error
    [request] = render_payload(Path(chain), {"pregunta": "¿Qué es un token?"}, "openai", None)
    text = request["body"]["messages"][-1]["content"]
    assert "<context: documents the chroma retriever 'curso' would find for" in text
    index_paths(["docs"], open_store("curso"))
    [request] = render_payload(Path(chain), {"pregunta": "¿Qué es un token?"}, "openai", None)
    text = request["body"]["messages"][-1]["content"]
    assert text.startswith("Contexto:\n[1] (source: docs/curso.md)")
    assert "Tokens, no palabras" in text  # the passage that answers it


def test_form_and_run_state_without_a_browser(tmp_path: Path) -> None:
    from eslabon.interfaces.ui import FILE_MODEL, form_for, model_choices, run_chain

    form = form_for(CHAINS / "analizar_planificar_resolver.yaml")
    assert form.inputs == [("problema", "problema — El problema a resolver", "")]
    assert form.steps == ["analisis", "plan", "solucion"] and not form.error
    states = list(run_chain(CHAINS / "extraer_persona.yaml", {"texto": "x"}, "fake:echo"))
    assert states[-1].done and "not valid JSON" in states[-1].error  # echo is not JSON
    done = list(run_chain(CHAINS / "traductor.yaml", {"frase": "hola"}, "fake:echo"))[-1]
    assert done.steps == {"output": "¿Cómo se dice 'hola' en inglés?"} and not done.error
    assert done.structured is None  # the closing stats are not a structured output
    assert (
        done.stats is not None and done.stats["usage"]["output_tokens"] == 6
    )  # the fake counts words
    assert done.stats["steps"]["output"]["model"] == "fake:echo"
    assert model_choices()[:3] == [FILE_MODEL, "local", "fake:echo"]


def test_a_missing_key_is_a_message_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from eslabon.interfaces.ui import run_chain

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    [state] = list(run_chain(CHAINS / "hola.yaml", {"nombre": "Ana"}, "openai:gpt-4o-mini"))
    assert "set the OPENAI_API_KEY environment variable" in state.error
    assert "Traceback" not in state.error


def test_the_pipeline_picture_is_drawn(site: str, browser: Any) -> None:
    page = browser.new_page()
    page.goto(site)
    page.get_by_text("Pipeline").click()
    # Gradio's Markdown draws the Mermaid block: an SVG with a node per step
    page.wait_for_function(
        "() => document.querySelectorAll('#picture svg .node').length >= 5", timeout=20000
    )
    text = str(page.locator("#picture svg").first.evaluate("e => e.textContent"))
    for label in ("problema", "analisis", "plan", "solucion", "output"):
        assert label in text
    page.close()


def test_documents_and_structured_output_are_shown(site: str, browser: Any) -> None:
    page = browser.new_page()
    page.goto(site)
    choose(page, "chain", "d_persona.yaml")
    page.wait_for_function(
        "() => document.querySelector('#input-0')?.innerText.includes('pregunta')", timeout=10000
    )
    page.locator("#input-0 textarea").fill("¿Cuántos años tiene Ana?")
    page.locator("#run").click()
    page.locator("#structured").wait_for(state="visible", timeout=20000)
    shown = page.locator("#structured").inner_text()
    assert all(word in shown for word in ("nombre", "Ana", "edad", "30"))
    documents = page.locator("#documents").inner_text()
    assert "fichas/ana.md" in documents and "score" in documents
    page.close()
