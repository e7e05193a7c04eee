"""Tutorial page 10 ("¿Cuánto cuesta?") stays true: its Python runs as written (on fake:echo, in a
copy of the project), the cloud models it prices are known to genai-prices, the dollar figures
it quotes are what ``cost()`` gives for the tokens it quotes, its ``[prices]`` tables are a valid
eslabon.toml, and its ``eslabon`` command lines parse. The page's token counts come from the
local model (slow, and they vary): they are not rerun here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from eslabon.chat.prices import cost
from helpers import CHAINS, ROOT, command_problems, fenced_blocks

PAGE = ROOT / "docs" / "es" / "10-cuanto-cuesta.md"
TEXT = PAGE.read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return fenced_blocks(TEXT, language)


def priced_models() -> list[tuple[str, str]]:
    """The ``modelos = [...]`` list of the page's snippet, as (provider, model)."""
    found = re.search(r"modelos = \[(.*?)\]", TEXT, re.DOTALL)
    assert found is not None, "the page no longer prices a list of models"
    names = re.findall(r'"([a-z_]+):([^"]+)"', found[1])
    assert len(names) >= 3, names
    return names


def dollars(usage: dict[str, int], provider: str, model: str) -> Decimal:
    found = cost(provider, model, usage)
    assert found is not None, f"genai-prices does not know {provider}:{model}"
    return found


# The snippets run in a child process (a fresh interpreter, as a reader runs them) that keeps the
# suite's rule: no network but loopback.
DRIVER = textwrap.dedent(
    """
    import socket, sys

    def guard(address):
        host = address[0] if isinstance(address, tuple) else address
        if not str(host).startswith(("127.", "::1", "localhost")):
            raise RuntimeError(f"the page's snippets must not use the network ({host!r})")

    connect = socket.socket.connect
    getaddrinfo = socket.getaddrinfo

    def guarded_connect(self, address):
        if self.family != socket.AF_UNIX:
            guard(address)
        return connect(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None:
            guard((host,))
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = guarded_connect
    socket.getaddrinfo = guarded_getaddrinfo
    for n, path in enumerate(sys.argv[1:], 1):
        print(f"=== block {n}", flush=True)
        with open(path, encoding="utf-8") as file:
            exec(compile(file.read(), path, "exec"), {"__name__": "__main__"})
    """
)


def test_the_python_snippets_run_as_written_on_fake_echo(tmp_path: Path) -> None:
    project = tmp_path / "curso"
    shutil.copytree(CHAINS, project / "chains")
    (project / "eslabon.toml").write_text("", encoding="utf-8")  # the project root is here
    code = blocks("python")
    assert len(code) == 3, "the page's Python snippets changed: update this test"
    paths = []
    for n, block in enumerate(code, 1):
        paths.append(tmp_path / f"block{n}.py")
        paths[-1].write_text(block, encoding="utf-8")
    (tmp_path / "driver.py").write_text(DRIVER, encoding="utf-8")
    env = {
        **os.environ,  # without keys or ESLABON_MODEL: conftest removed them
        "ESLABON_MODEL": "fake:echo",
        "ESLABON_LOGS": str(tmp_path / "logs.sqlite"),
        "PYTHONIOENCODING": "utf-8",
    }
    done = subprocess.run(
        [sys.executable, str(tmp_path / "driver.py"), *map(str, paths)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    _, per_step, clouds, own = done.stdout.split("=== block ")
    for step in ("analisis", "plan", "solucion"):
        assert re.search(rf"^{step} +\d+ → +\d+ tokens +\d+ ms$", per_step, re.MULTILINE)
    assert "3 llamadas, coste 0.0" in per_step and "['fake:echo']" in per_step
    assert clouds.count("por ejecución") == 2 * len(priced_models())
    assert own.splitlines()[1:] == ["0.00056235", "None", "0"]
    assert not (project / ".eslabon").exists()  # Python runs are not logged unless asked


def test_the_priced_models_are_known_to_genai_prices() -> None:
    usage = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    for provider, model in priced_models():
        assert dollars(usage, provider, model) > 0


def test_the_quoted_cloud_figures_are_what_cost_gives() -> None:
    models = priced_models()
    output = next(b for b in blocks("") if "por ejecución" in b)
    runs = re.split(r"^(chains/\S+): (\d+) → (\d+) tokens\n", output, flags=re.MULTILINE)[1:]
    assert len(runs) == 4 * 2, output  # two chains: file, input, output, their lines
    table: dict[str, list[str]] = {}
    for name, given, made, lines in zip(*[iter(runs)] * 4, strict=True):
        usage = {"input_tokens": int(given), "output_tokens": int(made)}
        expected = []
        for provider, model in models:
            one = dollars(usage, provider, model)
            expected.append(f"{provider}:{model} ${one:.6f} por ejecución · ${one * 1000:.2f}")
        quoted = [re.sub(r" +", " ", line.strip()) for line in lines.strip().splitlines()]
        assert [q.removesuffix(" por mil") for q in quoted] == expected
        table[f"`{Path(name).stem}` ({given} → {made} tokens)"] = [
            f"${dollars(usage, p, m) * 1000:.2f}" for p, m in models
        ]
    # the table repeats them per thousand runs, with each model's price per million tokens
    rows = {
        cells[0]: cells[1:]
        for line in TEXT.splitlines()
        if line.startswith("| ") and len(cells := line.strip("| ").split(" | ")) == 5
    }
    for name, figures in table.items():
        assert rows[name] == figures, name
    prices = []
    for provider, model in models:
        given = dollars({"input_tokens": 1_000_000, "output_tokens": 0}, provider, model)
        made = dollars({"input_tokens": 0, "output_tokens": 1_000_000}, provider, model)
        prices.append(f"${given:.2f} / ${made:.2f}")
    assert rows["precio por millón de tokens (entrada / salida)"] == prices


def test_the_prices_tables_are_valid_and_price_the_quoted_runs(tmp_path: Path) -> None:
    from eslabon.trust.project import load_project

    tables = blocks("toml")
    assert tables, "the page shows no [prices]"
    prices = {}
    for n, toml in enumerate(tables):
        folder = tmp_path / str(n)
        folder.mkdir()
        (folder / "eslabon.toml").write_text(toml, encoding="utf-8")
        assert load_project(folder).prices, toml
        prices.update(load_project(folder).prices)
    local = {k: v for k, v in prices.items() if k.startswith("local:")}
    assert local, "the page no longer prices the local model to try [prices] offline"
    (key,) = local
    provider, model = key.split(":", 1)
    quoted = re.findall(r"^\d+ steps? · ([\d,]+) → ([\d,]+) tokens · .* · \$(\S+)$", TEXT, re.M)
    priced = [q for q in quoted if q[2] != "0"]
    assert priced, "the page shows no run priced with [prices]"
    for given, made, shown in priced:
        counts = [int(n.replace(",", "")) for n in (given, made)]
        usage = {"input_tokens": counts[0], "output_tokens": counts[1]}
        figure = cost(provider, model, usage, prices)
        assert figure is not None
        assert float(shown) == pytest.approx(float(figure), rel=0.1), (given, made, shown)


def test_the_command_lines_parse() -> None:
    """Every ``eslabon`` line of the page's bash blocks names real commands and options."""
    count, problems = command_problems(TEXT)
    assert count >= 8 and not problems, problems
