"""The transformers runtime (``huggingface:``) on real weights: the bundled SmolLM2 GGUF, which
transformers reads and de-quantizes, so the same 135M model runs through llama.cpp and through
transformers. Greedy decoding: the same prompt gives the same answer on every run.

Loading takes seconds; the model stays loaded for the whole session (one per process, as
``local``'s)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from eslabon import ChainConfigError, load_chain
from eslabon.chat.local import bundled_model_path
from eslabon.errors import ModelError, UserError
from helpers import CHAINS, unmetered_chunks, write

GGUF = bundled_model_path()
REF: dict[str, Any] = {"provider": "huggingface", "name": str(GGUF), "device": "cpu"}


@pytest.mark.model
def test_the_same_model_answers_alike_through_llama_cpp_and_transformers() -> None:
    # a translation the course's few-shot chain gets right on the bundled model, greedy
    local = load_chain(CHAINS / "traductor.yaml")
    transformers = load_chain(CHAINS / "traductor.yaml", model=REF)
    for frase, expected in (("agua", "Water"), ("perro", "Dog")):
        a = local.invoke({"frase": frase})
        b = transformers.invoke({"frase": frase})
        assert a["output"].strip() == b["output"].strip() == expected
        # one prompt, one chat template: the same input tokens on both runtimes
        assert a["stats"]["usage"]["input_tokens"] == b["stats"]["usage"]["input_tokens"]
        assert b["stats"]["models"] == [f"huggingface:{GGUF}"] and b["stats"]["cost"] == 0.0


@pytest.mark.model
def test_streaming_gives_the_invoked_answer_piece_by_piece_with_its_usage(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "inputs: {x: a topic}\nparams: {temperature: 0, max_tokens: 24}\n"
        "prompt: Tell me about {x}.\n",
    )
    chain = load_chain(path, model=REF)
    invoked = chain.invoke({"x": "the sea"})
    chunks = list(chain.stream({"x": "the sea"}))
    pieces = [c["output"] for c in unmetered_chunks(chunks) if "output" in c]
    assert len(pieces) > 3 and "".join(pieces) == invoked["output"]
    streamed = chunks[-1]["stats"]
    assert streamed["usage"] == invoked["stats"]["usage"]
    assert invoked["stats"]["usage"]["output_tokens"] == 24  # cut at max_tokens
    assert streamed["ttft_ms"] is not None


@pytest.mark.model
async def test_async_and_stop_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "inputs: {x: a thing}\nparams: {temperature: 0, max_tokens: 40, stop: ['.']}\n"
        "prompt: Describe {x}.\n",
    )
    chain = load_chain(path, model=REF)
    result = await chain.ainvoke({"x": "the moon"})
    assert result["output"] and "." not in result["output"]
    pieces = [c async for c in chain.astream({"x": "the moon"})]
    text = "".join(c["output"] for c in unmetered_chunks(pieces) if "output" in c)
    assert text == result["output"]


@pytest.mark.model
def test_few_shot_multi_step_structured_output_and_tools(tmp_path: Path) -> None:
    # three chained calls, each given the one before's answer
    text = (CHAINS / "analizar_planificar_resolver.yaml").read_text(encoding="utf-8")
    steps = load_chain(
        write(tmp_path, text.replace("max_tokens: 256", "max_tokens: 16")), model=REF
    )
    result = steps.invoke({"problema": "Tengo 3 manzanas y me como una."})
    assert all(result[k].strip() for k in ("analisis", "plan", "solucion"))
    assert result["stats"]["calls"] == 3
    # structured output: decoded under the schema, so it parses and validates
    persona = load_chain(CHAINS / "extraer_persona.yaml", model=REF).invoke(
        {"texto": "María tiene 34 años y vive en Sevilla."}
    )["output"]
    assert set(persona) == {"nombre", "edad", "ciudad", "profesion", "idiomas"}
    assert isinstance(persona["edad"], int) and isinstance(persona["idiomas"], list)
    # tools: the same calls and answer shape as local
    calc = load_chain(CHAINS / "calculadora.yaml", model=REF).invoke(
        {"pregunta": "¿Cuánto es 12*7?"}
    )
    (call,) = calc["tool_calls"][:1]
    assert call["name"] == "calculadora" and "expresion" in call["args"]
    assert calc["output"].strip()


@pytest.mark.model
def test_text_in_any_script_passes_the_json_constraint() -> None:
    # "北" is two partial-UTF-8 tokens of this byte-level vocabulary, a character no token
    # begins with; the enforcer used to end the string (and the JSON) there, and a minLength
    # string took only ASCII until long enough (no "Ñ")
    from langchain_core.messages import HumanMessage

    from eslabon.chat.huggingface import ChatTransformers

    name = {"type": "string", "minLength": 4, "description": "As written in its own script."}
    city = {"type": "string", "description": "The city it is in."}
    tool = {
        "type": "function",
        "function": {
            "name": "customer",
            "description": "Register a customer.",
            "parameters": {
                "type": "object",
                "properties": {"name": name, "city": city},
                "required": ["name", "city"],
            },
        },
    }
    model = ChatTransformers(
        model=str(GGUF.parent), gguf_file=str(GGUF), device="cpu", temperature=0, max_tokens=64
    ).bind_tools([tool], tool_choice="any")
    for text, expected in (
        ("Register the customer '北京科技' (Beijing Tech) in Beijing.", "北京科技"),
        ("Register the customer 'Ñandú Óptica' in Málaga.", "Ñandú Óptica"),
    ):
        (call,) = model.invoke([HumanMessage(text)]).tool_calls
        assert call["name"] == "customer" and call["args"]["name"] == expected


# -- mistakes, said before any model loads ---------------------------------------------------------
def test_a_model_missing_from_the_cache_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HOME", "/nonexistent/hf-home")
    chain = load_chain(CHAINS / "hola.yaml", model="huggingface:acme/no-such-model")
    with pytest.raises(ModelError) as caught:
        chain.invoke({"nombre": "Ana"})
    message = str(caught.value)
    assert "model acme/no-such-model is not in the Hugging Face cache" in message
    assert "hf download acme/no-such-model" in message and "download = true" in message


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    path = write(tmp_path, "model: huggingface:./modelos/smol\nprompt: hola\n")
    with pytest.raises(ModelError) as caught:
        load_chain(path).invoke({})
    assert f"no model at {tmp_path / 'modelos' / 'smol'}" in str(caught.value)


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("{provider: huggingface, name: ../fuera.gguf}", "outside"),
        ("{provider: huggingface, name: x/y, device: gpu}", "device"),
        ("{provider: huggingface, name: x/y, torch_dtype: int3}", "torch_dtype"),
        ("{provider: huggingface, name: x/y, n_ctx: 10}", "'n_ctx' is not a setting"),
        ("{provider: huggingface, name: x/y, presence_penalty: 1}", "presence_penalty"),
    ],
)
def test_a_chain_files_model_is_bounded(tmp_path: Path, model: str, says: str) -> None:
    pytest.importorskip("transformers")
    path = write(tmp_path, f"model: {model}\nprompt: hola\n")
    with pytest.raises(ChainConfigError) as caught:
        load_chain(path)
    assert says in str(caught.value)


def test_only_the_user_may_allow_downloads(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    asks = write(
        tmp_path, "model: {provider: huggingface, name: x/y, download: true}\nprompt: hi\n"
    )
    with pytest.raises(ChainConfigError) as caught:
        load_chain(asks)
    assert "unknown key 'download'" in str(caught.value)
    assert "an alias in your eslabon.toml" in str(caught.value)
    # the user's own reference may (nothing is loaded until the first call)
    path = write(tmp_path, "prompt: hola\n", "plain.yaml")
    chain = load_chain(path, model={"provider": "huggingface", "name": "x/y", "download": True})
    model: Any = chain.steps[0].model
    assert model.download is True


def test_a_chain_files_weights_stay_in_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eslabon.chainfile.loader import validate_file

    project = tmp_path / "proyecto"
    (project / "modelos").mkdir(parents=True)
    (tmp_path / "a" / "b").mkdir(parents=True)  # a folder that looks like a Hugging Face id
    monkeypatch.chdir(tmp_path)  # ... in the current folder, which transformers reads first
    cases = {
        "{provider: huggingface, name: a/b}": "a folder of that name is in the current folder",
        "{provider: huggingface, name: x/y, gguf_file: /tmp/otro.gguf}": "must be a file name",
        "{provider: huggingface, name: x/y, gguf_file: ../otro.gguf}": "must be a file name",
        "{provider: huggingface, name: ../../fuera}": "outside",
        "{provider: huggingface, name: modelos, gguf_file: ../../x.gguf}": "outside",
    }
    for model, says in cases.items():
        path = write(project, f"model: {model}\nprompt: hola\n")
        problems = [p.message for p in validate_file(path)]  # said by validate, before any run
        assert any(says in m for m in problems), (model, problems)


def test_a_device_torch_cannot_use_is_said_before_loading() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    chain = load_chain(CHAINS / "hola.yaml", model={**REF, "device": "cuda"})
    with pytest.raises(UserError) as caught:
        chain.invoke({"nombre": "Ana"})
    assert "device: cuda, but this torch sees no CUDA GPU" in str(caught.value)


def test_long_digit_runs_are_capped_in_numbers_only() -> None:
    from eslabon.chat.huggingface import _in_string

    assert _in_string('{"iban": "ES9121000418')  # a text: its digits are free
    assert not _in_string('{"input": 1234')  # a number: capped at 16 digits
    assert _in_string('{"a": "dice \\"12')  # an escaped quote does not end the text
    assert not _in_string('{"a": "x", "n": 12')
