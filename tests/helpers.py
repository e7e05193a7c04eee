"""What tests share besides fixtures: paths and a way to write a chain file."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAINS = ROOT / "chains"


def write(tmp_path: Path, text: str, name: str = "chain.yaml") -> Path:
    """``text`` as the file ``name`` in ``tmp_path`` (a chain file, by default)."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


STAT_KEYS = {
    *("usage", "latency_ms", "ttft_ms", "calls", "attempts", "cached", "cost", "models", "steps")
}


def unmetered(result: dict) -> dict:  # type: ignore[type-arg]
    """A chain's result without its ``stats`` (checked present and well formed), for tests
    that compare what the steps said."""
    assert set(result["stats"]) == STAT_KEYS, result["stats"]
    return {k: v for k, v in result.items() if k != "stats"}


def unmetered_chunks(chunks: list) -> list:  # type: ignore[type-arg]
    """A chain's stream without its closing ``{"stats": ...}`` chunk (checked: last, alone)."""
    assert list(chunks[-1]) == ["stats"], chunks[-1]
    assert all("stats" not in c for c in chunks[:-1])
    return chunks[:-1]


def timeless(stats: dict) -> dict:  # type: ignore[type-arg]
    """Stats without the timings (which differ from run to run), for comparing two runs."""
    drop = ("latency_ms", "ttft_ms")
    return {
        **{k: v for k, v in stats.items() if k not in (*drop, "steps")},
        "steps": {
            s: {k: v for k, v in figures.items() if k not in drop}
            for s, figures in stats["steps"].items()
        },
    }


# a chain file with two test cases, for the `eslabon test` tests; RIGHT passes both of them
TRADUCE = """\
name: traduce
inputs: {frase: a phrase}
prompt: "{frase}"
tests:
  - name: noche
    inputs: {frase: good night}
    expect:
      - contains: NIGHT
      - max_tokens: 50
  - name: estacion
    inputs: {frase: where is the station}
    expect:
      - regex: "(?i)station"
      - not_contains: "{"
"""
# scripted answers, in turn: right for 'noche', right for 'estacion'
RIGHT = "{provider: fake, responses: ['good night to you', 'the station is there']}"


def fenced_blocks(text: str, language: str) -> list[str]:
    """A Markdown page's fenced blocks in ``language`` ("" for plain ones: quoted output)."""
    import textwrap

    found: list[str] = []
    inside: str | None = None  # the open block's language
    lines: list[str] = []
    for line in text.splitlines():
        fence = line.strip()
        if inside is None:
            if fence.startswith("```"):
                inside, lines = fence[3:], []
        elif fence == "```":
            if inside == language:
                found.append(textwrap.dedent("\n".join(lines)) + "\n")
            inside = None
        else:
            lines.append(line)
    return found


def command_problems(text: str) -> tuple[int, list[str]]:
    """The ``eslabon`` lines of a page's bash blocks, parsed as the command line parses them
    (without running them): how many, and what is wrong with any (a command or an option
    that does not exist)."""
    import shlex

    import typer

    from eslabon.interfaces.cli import app

    root = typer.main.get_command(app)
    lines = [
        line.split("  #")[0].strip()
        for block in fenced_blocks(text, "bash")
        for line in block.splitlines()
        if line.strip().startswith("eslabon ")
    ]
    problems = []
    for line in lines:
        words = shlex.split(line)[1:]
        command = root
        while words and words[0] in getattr(command, "commands", {}):
            command = command.commands[words.pop(0)]  # type: ignore[attr-defined]
        if hasattr(command, "commands") and words and not words[0].startswith("-"):
            problems.append(f"{line!r}: no command {words[0]!r}")
            continue
        try:  # typer vendors its own click: its UsageError is not click's
            command.make_context(f"eslabon {command.name}", words)
        except Exception as exc:
            problems.append(f"{line!r} does not parse: {exc}")
    return len(lines), problems
