"""``eslabon tune`` on the bundled model: a LoRA adapter taught six translations the base model
gets wrong, trained on CPU in seconds; the tuned chain answers them greedy, in this process and
in a new one; the data's mistakes; the cloud export formats; ``ft:`` names at the wire."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("peft", reason="needs the huggingface extra (peft)")
pytest.importorskip("gguf", reason="needs the huggingface extra (gguf)")

from tests.wire_server import WireServer

from eslabon.chainfile.loader import load_spec
from eslabon.running.compile import load_chain
from eslabon.tuning import Settings, Source, collect_pairs
from eslabon.tuning.export import gemini_example, openai_example

CHAINS = Path(__file__).parent.parent / "chains"
# the Spanish tutorial's page 12 (ajuste fino): its chain, data and the figures it quotes
TUTORIAL = Path(__file__).parent.parent / "docs" / "es" / "ajuste"
PAGE = TUTORIAL.parent / "12-ajuste-fino.md"
ESLABON = str(Path(sys.executable).parent / "eslabon")
# what the base model says for these, with the chain's two examples: Dog, Rats, 'Cabalo in
# Spanish.', 'Manaça in Portuguese.', 'Pirámiels in inglés.', Soup
TAUGHT = {
    "gato": "Cat",
    "ratón": "Mouse",
    "caballo": "Horse",
    "manzana": "Apple",
    "pájaro": "Bird",
    "queso": "Cheese",
}


def project(root: Path) -> Path:
    """A project with the tutorial's translator chain and its rows to teach."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "eslabon.toml").write_text("")
    for name in ("traductor.yaml", "datos.jsonl"):
        shutil.copy(TUTORIAL / name, root)
    return root


def eslabon(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ESLABON_LOGS": str(cwd / "logs.sqlite")}
    return subprocess.run(
        [ESLABON, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The command as the tutorial runs it: the translator taught the six words (seed 0), its
    examples left out of the prompt."""
    root = project(tmp_path_factory.mktemp("tune"))
    done = eslabon(*TUNE, cwd=root)
    assert done.returncode == 0, done.stderr
    assert "tuned step 'output' of traductor on huggingface:local: 6 rows × 3 epochs" in done.stdout
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr
    assert "step 9/9 · loss" in done.stderr  # the progress, as a plain line when piped
    return root


TUNE = ("tune", "traductor.yaml", "--data", "datos.jsonl", "-o", "ajustado", "--no-examples")


def test_before_and_after_as_the_tutorial_page_shows_them(tuned: Path) -> None:
    """The base model (llama.cpp, the same weights) gets none; the tuned one, loaded from OUT in
    a new process, answers the six taught words and not the untaught one; the page quotes
    these runs (greedy: the same figures on the same CPU)."""
    before = eslabon("test", "traductor.yaml", "-m", "local", "--no-log", cwd=tuned)
    after = eslabon("test", "ajustado/traductor.yaml", "--no-log", cwd=tuned)
    assert before.returncode == after.returncode == 1, before.stderr + after.stderr
    first, last = _summary(before.stdout, "local"), _summary(after.stdout, "huggingface:local")
    assert first.split()[1] == "0/7" and last.split()[1] == "6/7"
    assert "✗ abeja · huggingface:local" in after.stdout and "Warning" not in after.stderr
    page = PAGE.read_text()
    assert " ".join(TUNE) in page.replace("eslabon tune", "tune")
    for line in (first, last):  # model, passed and tokens as printed (not the latency)
        shown = " ".join(line.split()[:3])
        assert any(" ".join(p.split()[:3]) == shown for p in page.splitlines()), shown


def _summary(output: str, model: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(model + " "))


def test_out_holds_the_adapter_its_manifest_and_a_chain_that_runs_on_it(tuned: Path) -> None:
    out = tuned / "ajustado"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in (out / "adapter").iterdir()
    }
    manifest = json.loads((out / "tune.json").read_text())
    assert manifest["chain"] == "traductor" and manifest["step"] == "output"
    assert manifest["base"]["model"] == "huggingface:local"
    assert len(manifest["base"]["sha256"]) == 64
    assert manifest["data"]["rows"] == 6 and manifest["data"]["examples_in_prompt"] is False
    assert manifest["settings"] == Settings().as_dict()
    assert 0 < manifest["final_loss"] < 1
    written = load_spec(out / "traductor.yaml")
    assert written.model is not None and written.model.model_dump(exclude_none=True) == {
        "provider": "huggingface",
        "name": "local",
        "adapter": "adapter",
    }
    assert written.name == "traductor_tuned" and not written.examples
    assert [t.name for t in written.tests or []] == [*TAUGHT, "abeja"]
    assert eslabon("validate", str(out / "traductor.yaml"), cwd=tuned).returncode == 0


def test_the_command_line_defaults_are_the_librarys() -> None:
    import inspect

    from eslabon.interfaces.tunecmd import tune as command

    defaults = {name: p.default for name, p in inspect.signature(command).parameters.items()}
    for name, value in Settings().as_dict().items():
        if name in defaults:
            assert defaults[name] == value, name


def test_training_is_seeded_and_learns_the_answer_alone(tuned: Path) -> None:
    """Same seed, same losses and weights; the prompt's tokens carry no loss."""
    from eslabon.chat.huggingface import _load
    from eslabon.tuning.train import encode, train
    from eslabon.tuning.tune import resolve_base

    spec = load_spec(tuned / "traductor.yaml")
    _, step, pairs = collect_pairs(spec, None, Source(data=tuned / "datos.jsonl"))
    base = resolve_base(spec, step, None)
    # the base this file's first test ran, loaded once per process: copies, not new reads
    loaded = _load(base.source, base.gguf_file, "auto", "auto", False)
    model, tokenizer = copy.deepcopy(loaded.model), loaded.tokenizer
    rows = encode(pairs[:2], tokenizer, None)
    answer = [t for t in rows[0]["labels"] if t != -100]
    assert tokenizer.decode(answer).strip() == "Cat<|im_end|>"
    assert rows[0]["labels"][: -len(answer)] == [-100] * (len(rows[0]["labels"]) - len(answer))
    settings = Settings(epochs=1, batch_size=1, seed=3)
    first = train(copy.deepcopy(model), tokenizer, rows, settings)
    second = train(model, tokenizer, rows, settings)
    assert first.losses == second.losses and len(first.losses) == 2
    a, b = first.model.state_dict(), second.model.state_dict()
    lora = [k for k in a if "lora_" in k]
    assert lora and all(bool((a[k] == b[k]).all()) for k in lora)


# -- the data: rendered as the chain sends it; its mistakes said with their row ------------------


def test_pairs_are_the_messages_the_chain_sends(tmp_path: Path) -> None:
    root = project(tmp_path)
    spec = load_spec(root / "traductor.yaml")
    _, _, pairs = collect_pairs(spec, None, Source(data=root / "datos.jsonl"))
    first = pairs[0]
    assert first.where.endswith("datos.jsonl line 1") and first.answer == "Cat"
    kinds = [m.type for m in first.messages]
    # system, the two examples (user, assistant), the question
    assert kinds == ["system", "human", "ai", "human", "ai", "human"]
    assert first.messages[-1].text == "¿Cómo se dice 'gato' en inglés?"
    _, _, bare = collect_pairs(spec, None, Source(data=root / "datos.jsonl"), keep_examples=False)
    assert [m.type for m in bare[0].messages] == ["system", "human"]


def test_a_later_step_gets_the_earlier_answers_from_the_row(tmp_path: Path) -> None:
    shutil.copy(CHAINS / "analizar_planificar_resolver.yaml", tmp_path / "apr.yaml")
    data = tmp_path / "d.yaml"
    data.write_text(
        "- {problema: 'Tengo 3 manzanas', analisis: 'ANALISIS-UNO', output: 'PLAN-UNO'}\n"
    )
    spec = load_spec(tmp_path / "apr.yaml")
    ids = [s.id for s in spec.normalized_steps()]
    _, step, pairs = collect_pairs(spec, ids[1], Source(data=data))
    assert step.id == ids[1] and pairs[0].answer == "PLAN-UNO"
    assert "ANALISIS-UNO" in pairs[0].messages[-1].text


def test_the_chains_examples_and_logged_runs_are_data_too(tmp_path: Path) -> None:
    root = project(tmp_path)
    spec = load_spec(root / "traductor.yaml")
    _, _, pairs = collect_pairs(spec, None, Source(examples=True))
    assert len(pairs) == 2
    assert [m.type for m in pairs[0].messages] == ["system", "human"]
    assert (pairs[0].messages[1].text, pairs[0].answer) == (
        "¿Cómo se dice 'hola' en inglés?",
        "Hello",
    )
    for word in ("murciélago", "ornitorrinco"):
        done = eslabon("run", "traductor.yaml", "-m", "fake:echo", "-i", f"frase={word}", cwd=root)
        assert done.returncode == 0, done.stderr
    os.environ["ESLABON_LOGS"], saved = str(root / "logs.sqlite"), os.environ.get("ESLABON_LOGS")
    try:
        _, _, logged = collect_pairs(spec, None, Source(logs=""))
        _, _, chosen = collect_pairs(spec, None, Source(logs="ornitorrinco"))
    finally:
        os.environ.pop("ESLABON_LOGS") if saved is None else os.environ.update(ESLABON_LOGS=saved)
    # fake:echo answered with the question it got: that is the answer logged, and taught
    assert [p.answer for p in logged] == [
        "¿Cómo se dice 'murciélago' en inglés?",
        "¿Cómo se dice 'ornitorrinco' en inglés?",
    ]
    assert [p.messages[-1].text for p in chosen] == ["¿Cómo se dice 'ornitorrinco' en inglés?"]


@pytest.mark.parametrize(
    ("rows", "said"),
    [
        ('{"frase": "gato"}\n', ["datos.jsonl:1", "no `output`"]),
        (
            '{"frase": "gato", "output": "Cat"}\n{"frace": "x", "output": "y"}\n',
            [
                "datos.jsonl:2",
                "'frace' is not an input",
                "did you mean 'frase'",
                "no value for input 'frase'",
            ],
        ),
        ("", ["no rows in the file"]),
        ('{"frase": "gato", "output": "Cat"}\nnot json\n', ["datos.jsonl:2", "invalid JSON"]),
    ],
)
def test_a_bad_dataset_is_one_clear_message_with_its_row(
    tmp_path: Path, rows: str, said: list[str]
) -> None:
    root = project(tmp_path)
    (root / "datos.jsonl").write_text(rows)
    done = eslabon("tune", "traductor.yaml", "--data", "datos.jsonl", "-o", "out", cwd=root)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    for text in said:
        assert text in done.stderr, done.stderr
    assert not (root / "out").exists()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--data", "d.csv", "--from-examples"], "give only one of --data, --from-examples"),
        ([], "give one of --data FILE, --from-examples"),
        (
            ["--from-examples", "--base", "openai:gpt-4o", "-o", "o"],
            "eslabon tune trains a model in this process",
        ),
        (["--from-examples", "--step", "salida", "-o", "o"], "no step 'salida'"),
        (["--from-examples", "--export", "cohere", "x.jsonl"], "formats are openai, gemini"),
        (["--from-examples"], "-o FOLDER"),
    ],
)
def test_command_mistakes_exit_2(tmp_path: Path, args: list[str], said: str) -> None:
    root = project(tmp_path)
    done = eslabon("tune", "traductor.yaml", *args, cwd=root)
    assert done.returncode == 2 and said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_csv_row_is_named_by_its_line(tmp_path: Path) -> None:
    root = project(tmp_path)
    (root / "d.csv").write_text("frase,output\ngato,Cat\nperro,\n")
    done = eslabon("tune", "traductor.yaml", "--data", "d.csv", "-o", "out", cwd=root)
    assert done.returncode == 2 and "d.csv:3" in done.stderr and "no `output`" in done.stderr


# -- adapters in chain files ----------------------------------------------------------------------


def test_validate_checks_the_adapter_exists_and_fits_the_base(tmp_path: Path) -> None:
    (tmp_path / "eslabon.toml").write_text("")
    chain = "model: {provider: huggingface, name: local, adapter: ajustado/adapter}\nprompt: hola\n"
    (tmp_path / "c.yaml").write_text(chain)
    done = eslabon("validate", "c.yaml", cwd=tmp_path)
    assert done.returncode == 2 and "no adapter folder at" in done.stdout
    adapter = tmp_path / "ajustado" / "adapter"
    adapter.mkdir(parents=True)
    done = eslabon("validate", "c.yaml", cwd=tmp_path)
    assert done.returncode == 2 and "not a LoRA adapter" in done.stdout
    (adapter / "adapter_config.json").write_text('{"peft_type": "PROMPT_TUNING"}')
    done = eslabon("validate", "c.yaml", cwd=tmp_path)
    assert done.returncode == 2 and "not a LoRA adapter" in done.stdout
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    done = eslabon("validate", "c.yaml", cwd=tmp_path)
    assert done.returncode == 2 and "no adapter weights" in done.stdout
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    assert eslabon("validate", "c.yaml", cwd=tmp_path).returncode == 0
    peft_record = {"peft_type": "LORA", "base_model_name_or_path": "HuggingFaceTB/otro"}
    (adapter / "adapter_config.json").write_text(json.dumps(peft_record))
    hub = "model: {provider: huggingface, name: acme/modelo, adapter: ajustado/adapter}\n"
    (tmp_path / "h.yaml").write_text(hub + "prompt: hola\n")
    done = eslabon("validate", "h.yaml", cwd=tmp_path)
    assert (
        done.returncode == 2 and "trained on HuggingFaceTB/otro, not on acme/modelo" in done.stdout
    )
    manifest = {"adapter": "adapter", "base": {"name": "otro.gguf", "sha256": "0" * 64}}
    (tmp_path / "ajustado" / "tune.json").write_text(json.dumps(manifest))
    done = eslabon("validate", "c.yaml", cwd=tmp_path)
    assert done.returncode == 2 and "was trained on otro.gguf, not on this model" in done.stdout
    outside = "model: {provider: huggingface, name: local, adapter: ../../fuera}\nprompt: hola\n"
    (tmp_path / "c.yaml").write_text(outside)
    done = eslabon("validate", "c.yaml", cwd=tmp_path)
    assert done.returncode == 2 and "outside" in done.stdout


# -- the cloud's formats --------------------------------------------------------------------------


def test_export_writes_the_providers_fine_tuning_formats(tmp_path: Path) -> None:
    root = project(tmp_path)
    for fmt in ("openai", "gemini"):
        done = eslabon(
            "tune",
            "traductor.yaml",
            "--data",
            "datos.jsonl",
            "--export",
            fmt,
            f"{fmt}.jsonl",
            cwd=root,
        )
        assert done.returncode == 0, done.stderr
        assert f"wrote 6 examples in {fmt}'s fine-tuning format" in done.stdout
    openai = [json.loads(line) for line in (root / "openai.jsonl").read_text().splitlines()]
    gemini = [json.loads(line) for line in (root / "gemini.jsonl").read_text().splitlines()]
    assert len(openai) == len(gemini) == 6
    for example in openai:
        _openai_shape(example)
    for example in gemini:
        _gemini_shape(example)
    assert openai[0]["messages"][-1] == {"role": "assistant", "content": "Cat"}
    assert gemini[0]["contents"][-1] == {"role": "model", "parts": [{"text": "Cat"}]}
    assert openai[0]["messages"][-2]["content"] == gemini[0]["contents"][-2]["parts"][0]["text"]


def _openai_shape(example: dict[str, Any]) -> None:
    """OpenAI's chat fine-tuning line: only ``messages``; each a role and text content;
    ``weight`` (0 or 1) only on assistant messages; it ends with the assistant's answer."""
    assert set(example) == {"messages"}
    messages = example["messages"]
    for m in messages:
        assert m["role"] in ("system", "user", "assistant") and isinstance(m["content"], str)
        assert set(m) <= {"role", "content", "weight"}
        if "weight" in m:
            assert m["role"] == "assistant" and m["weight"] in (0, 1)
    assert messages[-1]["role"] == "assistant" and "weight" not in messages[-1]
    assert all(m["role"] != "system" for m in messages[1:])


def _gemini_shape(example: dict[str, Any]) -> None:
    """Vertex AI's Gemini tuning line: ``systemInstruction`` (optional) and ``contents`` whose
    roles are user or model, each with ``parts`` of ``text``; the last is the model's."""
    assert set(example) <= {"systemInstruction", "contents"}
    if "systemInstruction" in example:
        assert [set(p) for p in example["systemInstruction"]["parts"]] == [{"text"}]
    for content in example["contents"]:
        assert set(content) == {"role", "parts"} and content["role"] in ("user", "model")
        assert all(set(p) == {"text"} and isinstance(p["text"], str) for p in content["parts"])
    assert example["contents"][-1]["role"] == "model"


def test_few_shot_answers_are_shown_not_taught_in_the_openai_format(tmp_path: Path) -> None:
    root = project(tmp_path)
    _, _, pairs = collect_pairs(
        load_spec(root / "traductor.yaml"), None, Source(data=root / "datos.jsonl")
    )
    messages = openai_example(pairs[0])["messages"]
    assert [m.get("weight") for m in messages if m["role"] == "assistant"] == [0, 0, None]
    roles = [c["role"] for c in gemini_example(pairs[0])["contents"]]
    assert roles == ["user", "model"] * 3


def test_a_fine_tuned_openai_model_name_reaches_the_wire_unchanged(
    server: WireServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eslabon.chat.modelspec import parse_model_ref

    name = "ft:gpt-4o-mini-2024-07-18:mi-org::A1b2C3d4"
    assert parse_model_ref(f"openai:{name}", trusted=True).name == name
    monkeypatch.setenv("OPENAI_API_KEY", "sk-tune-test-key-123456")
    root = project(tmp_path)
    model = {"provider": "openai", "name": name, "openai_api_base": server.url + "/v1"}
    load_chain(root / "traductor.yaml", model=model).invoke({"frase": "gato"})
    assert server.requests[-1].body["model"] == name


def test_the_pairs_are_what_a_run_sends_its_model(tmp_path: Path) -> None:
    """The same messages a real run gives its model: one step, and a later step of three."""
    from eslabon.chat.fake import FakeChatModel

    root = project(tmp_path)
    spec = load_spec(root / "traductor.yaml")
    _, _, pairs = collect_pairs(spec, None, Source(data=root / "datos.jsonl"))
    model = FakeChatModel(responses=["x"])
    load_chain(root / "traductor.yaml", model=model).invoke({"frase": "gato"})
    assert pairs[0].messages == model.calls[0]
    shutil.copy(CHAINS / "analizar_planificar_resolver.yaml", tmp_path / "apr.yaml")
    apr = load_spec(tmp_path / "apr.yaml")
    ids = [s.id for s in apr.normalized_steps()]
    row = {"problema": "Tengo 3 manzanas", ids[0]: "ANALISIS", ids[1]: "PLAN", "output": "4"}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    _, _, pairs = collect_pairs(apr, ids[2], Source(data=tmp_path / "d.jsonl"))
    model = FakeChatModel(responses=["ANALISIS", "PLAN", "4"])
    load_chain(tmp_path / "apr.yaml", model=model).invoke({"problema": "Tengo 3 manzanas"})
    assert pairs[0].messages == model.calls[2]


def test_a_structured_steps_answers_are_checked_against_its_schema(tmp_path: Path) -> None:
    shutil.copy(CHAINS / "extraer_persona.yaml", tmp_path / "p.yaml")
    spec = load_spec(tmp_path / "p.yaml")
    name = spec.input_names()[0]
    good = {"nombre": "Ana", "edad": 30}
    schema = spec.output_schema or spec.normalized_steps()[0].output_schema
    assert schema is not None
    (tmp_path / "d.jsonl").write_text(
        json.dumps({name: "Ana tiene 30 años", "output": "no es json"}) + "\n"
    )
    done = eslabon("tune", "p.yaml", "--data", "d.jsonl", "-o", "out", cwd=tmp_path)
    assert done.returncode == 2 and "d.jsonl line 1: `output` is not JSON" in done.stderr
    (tmp_path / "d.jsonl").write_text(json.dumps({name: "x", "output": {"edad": "mucha"}}) + "\n")
    done = eslabon("tune", "p.yaml", "--data", "d.jsonl", "-o", "out", cwd=tmp_path)
    assert done.returncode == 2 and "does not match the step's output_schema" in done.stderr
    del good


def test_the_written_chain_keeps_the_steps_settings_and_finds_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OUT in a subfolder: the step's params kept, other model paths rebased; the name of the
    file written never leaves OUT."""
    from eslabon.chainfile.loader import load_spec_text
    from eslabon.tuning.tune import chain_file, resolve_base

    root = project(tmp_path)
    monkeypatch.chdir(root)  # the project a learner works in
    text = (root / "traductor.yaml").read_text()
    text = text.replace(
        "params: {temperature: 0.0, max_tokens: 16}",
        "model: {provider: local, temperature: 0.0, max_tokens: 8, seed: 7}\n"
        "fallbacks: ['llamacpp:modelos/otro.gguf']",
    )
    (root / "traductor.yaml").write_text(text)
    (root / "modelos").mkdir()
    (root / "modelos" / "otro.gguf").write_bytes(b"")  # a file the chain names; never loaded
    spec = load_spec(root / "traductor.yaml")
    _, step, _ = collect_pairs(spec, None, Source(data=root / "datos.jsonl"))
    out = root / "runs" / "v1"
    path, written = chain_file(spec, spec, step, resolve_base(spec, step, None), out)
    data = yaml.safe_load(written)  # it loads once its adapter is there (checked before)
    assert path == out / "traductor.yaml"
    assert data["model"] == {
        "provider": "huggingface",
        "name": "local",
        "temperature": 0.0,
        "max_tokens": 8,
        "seed": 7,
        "adapter": "adapter",
    }
    assert data["fallbacks"] == ["llamacpp:../../modelos/otro.gguf"]
    hostile = load_spec_text("name: ../../../fuera\nprompt: hola\n", base_dir=root)
    step = hostile.normalized_steps()[0]
    path, _ = chain_file(hostile, hostile, step, resolve_base(hostile, step, None), out)
    assert path.parent == out


def test_test_runs_are_not_taught_and_export_never_overwrites_the_data(tmp_path: Path) -> None:
    root = project(tmp_path)
    done = eslabon("test", "traductor.yaml", "-m", "fake:echo", cwd=root)
    assert done.returncode == 1  # every case failed, and was logged as a test run
    done = eslabon("tune", "traductor.yaml", "--from-logs", "-o", "out", cwd=root)
    assert done.returncode == 2 and "no finished run of chain 'traductor'" in done.stderr
    done = eslabon(
        "tune",
        "traductor.yaml",
        "--data",
        "datos.jsonl",
        "--export",
        "openai",
        "datos.jsonl",
        cwd=root,
    )
    assert done.returncode == 2 and "that is datos.jsonl itself" in done.stderr
    assert (root / "datos.jsonl").read_text() == (TUTORIAL / "datos.jsonl").read_text()
