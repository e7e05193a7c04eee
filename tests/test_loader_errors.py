"""Every kind of chain-file mistake: one clear message with file, line, key path and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from eslabon import Chain, ChainConfigError, Step, UserError, compile_chain
from eslabon.chainfile.checks import spec_problems
from eslabon.chainfile.loader import load_spec, load_spec_text
from eslabon.errors import EslabonError, Problem
from helpers import write

GOOD = """\
schema_version: 1
name: t
inputs:
  problema: El problema
steps:
  - id: analisis
    prompt: "Analiza {problema}"
  - id: plan
    prompt: "Plan para {analisis}"
"""


def problems(tmp_path: Path, text: str) -> list[Problem]:
    with pytest.raises(ChainConfigError) as info:
        load_spec(write(tmp_path, text))
    return info.value.problems


def one(tmp_path: Path, text: str) -> Problem:
    """The one error (warnings aside)."""
    found = [p for p in problems(tmp_path, text) if not p.warning]
    assert len(found) == 1, [p.format() for p in found]
    return found[0]


def test_valid_file_loads(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, GOOD))
    assert [s.id for s in spec.normalized_steps()] == ["analisis", "plan"]
    assert spec.output_step() == "plan"


def test_error_hierarchy() -> None:
    assert issubclass(ChainConfigError, UserError)
    assert issubclass(UserError, EslabonError)
    assert not issubclass(ChainConfigError, ValueError)


def test_invalid_yaml_has_line_and_column(tmp_path: Path) -> None:
    p = one(tmp_path, "schema_version: 1\nprompt: [unclosed\nname: x\n")
    assert p.message.startswith("invalid YAML")
    assert p.line == 3 and p.file and p.file.endswith("chain.yaml")
    assert p.hint


def test_unknown_key_did_you_mean_at_the_key_line(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD.replace('    prompt: "Plan', '    promtp: "Plan'))
    assert p.path == "steps[1].promtp"
    assert (p.line, p.col) == (9, 5)
    assert p.message == "unknown key 'promtp'"
    assert p.hint and p.hint.startswith("did you mean 'prompt'?")
    text = p.format()
    assert text.startswith(f"{p.file}:9:5: steps[1].promtp: unknown key 'promtp'")


def test_unknown_top_level_and_params_keys(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD + "descripcion: x\nparams: {temprature: 0.1}\n")
    by_path = {p.path: p for p in found}
    assert "did you mean 'description'?" in (by_path["descripcion"].hint or "")
    assert by_path["descripcion"].line == 10
    assert "did you mean 'temperature'?" in (by_path["params.temprature"].hint or "")
    assert by_path["params.temprature"].line == 11


def test_wrong_types(tmp_path: Path) -> None:
    found = problems(
        tmp_path, GOOD + "params: {temperature: caliente, max_tokens: -3}\noutput: [1]\n"
    )
    by_path = {p.path: p for p in found}
    assert "valid number" in by_path["params.temperature"].message
    assert "'caliente'" in by_path["params.temperature"].message
    assert "greater than 0" in by_path["params.max_tokens"].message
    assert by_path["output"].message.startswith("expected text")
    assert all(p.line in (10, 11) for p in found)


def test_duplicate_step_ids(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD.replace("id: plan", "id: analisis"))
    assert p.path == "steps[1].id" and p.line == 8
    assert "duplicate step id 'analisis'" in p.message


def test_output_naming_no_step(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD + "output: plna\n")
    assert p.path == "output" and p.line == 10
    assert p.hint and "did you mean 'plan'?" in p.hint


def test_template_using_a_later_step(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD.replace("Analiza {problema}", "Analiza {plan}"))
    assert p.path == "steps[0].prompt" and p.line == 7
    assert "later step" in p.message


def test_unknown_template_name_lists_the_declared_names(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD.replace("Plan para {analisis}", "Plan para {analisys}"))
    assert p.message == "unknown name '{analisys}'"
    assert p.hint == "did you mean 'analisis'? available here: problema, analisis"


def test_missing_examples_file(tmp_path: Path) -> None:
    text = GOOD.replace(
        "  - id: plan\n", "  - id: plan\n    examples:\n      - file: ejemplos.jsonl\n"
    )
    p = one(tmp_path, text)
    assert p.path == "steps[1].examples[0].file" and p.line == 10
    assert "examples file not found" in p.message


def test_unknown_provider_did_you_mean(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD + "model: opnai:gpt-4o-mini\n")
    assert p.path == "model" and p.line == 10
    assert p.message == "unknown provider 'opnai'"
    assert p.hint and p.hint.startswith("did you mean 'openai'?")


def test_unknown_provider_in_a_step_mapping(tmp_path: Path) -> None:
    text = GOOD.replace(
        "  - id: plan\n", "  - id: plan\n    model: {provider: antropic, name: x}\n"
    )
    p = one(tmp_path, text)
    assert p.path == "steps[1].model.provider"
    assert p.hint and "did you mean 'anthropic'?" in p.hint


def test_bare_model_name_suggests_a_provider(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD + "model: gpt-4o-mini\n")
    assert p.hint == "did you mean 'openai:gpt-4o-mini'?"


def test_unknown_selector_type_lists_valid_types(tmp_path: Path) -> None:
    text = GOOD.replace(
        "  - id: plan\n",
        "  - id: plan\n    examples: [{input: a, output: b}]\n    selector: {type: semantik}\n",
    )
    p = one(tmp_path, text)
    assert p.path == "steps[1].selector.type" and p.line == 10
    assert p.message == "unknown selector type 'semantik'"
    assert p.hint == "did you mean 'semantic'? valid types: all, length, ngram, semantic, mmr"


def test_jinja_and_attribute_access_are_rejected_at_load(tmp_path: Path) -> None:
    # every problem of the template, not only the first
    found = problems(tmp_path, GOOD.replace("Plan para {analisis}", "{{ analisis }} {x.y}"))
    assert [p.message.split(" ")[0] for p in found] == ["Jinja", "field"]
    p = one(tmp_path, GOOD.replace("Plan para {analisis}", "{analisis.__class__}"))
    assert "not a plain name" in p.message


def test_duplicate_yaml_keys(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD + "name: otro\n")
    assert p.message == "duplicate key 'name'" and p.line == 10


def test_every_problem_is_reported_at_once_in_line_order(tmp_path: Path) -> None:
    text = (
        "schema_version: 2\n"
        "model: opnai:x\n"
        "inputs: {problema: x}\n"
        "steps:\n"
        "  - id: a\n"
        "    prompt: '{nada}'\n"
        "    colour: red\n"
        "  - id: a\n"
        "    prompt: '{problema}'\n"
        "output: zz\n"
    )
    found = problems(tmp_path, text)
    assert [p.line for p in found] == sorted(p.line or 0 for p in found)
    kinds = " | ".join(p.message for p in found)
    for expected in (
        "schema_version",
        "unknown provider",
        "unknown name",
        "unknown key",
        "duplicate step id",
        "names no step",
    ):
        assert expected in kinds
    assert f"{len(found)} problems found." in str(ChainConfigError(found))


def test_structure_errors(tmp_path: Path) -> None:
    assert "needs 'prompt'" in one(tmp_path, "schema_version: 1\nname: x\n").message
    assert "empty" in one(tmp_path, "").message
    assert "mapping" in one(tmp_path, "- a\n- b\n").message
    mixed = one(tmp_path, GOOD + "prompt: hola\n")
    assert mixed.path == "prompt" and "combined with 'steps'" in mixed.message
    reserved = one(tmp_path, GOOD.replace("id: plan", "id: output"))
    assert "reserved" in reserved.message
    clash = one(tmp_path, GOOD.replace("id: plan", "id: problema").replace("{analisis}", "x"))
    assert "also an input name" in clash.message
    bad_name = one(tmp_path, GOOD.replace("id: plan", "id: 2plan"))
    assert bad_name.path == "steps[1].id" and "not a valid name" in bad_name.message


def test_missing_required_key_points_at_the_parent(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD.replace('    prompt: "Plan para {analisis}"\n', ""))
    assert p.path == "steps[1].prompt" and p.line == 8
    assert p.message == "missing required key 'prompt'"


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ChainConfigError, match="file not found"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(ChainConfigError, match="folder"):
        load_spec(tmp_path)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    p = one(tmp_path, "!!python/object/apply:os.system ['echo hacked']\n")
    assert p.message.startswith("invalid YAML")


def test_spec_built_in_code_raises_the_same_error() -> None:
    with pytest.raises(ChainConfigError) as info:
        Chain(prompt="hola", promtp="x")
    assert "did you mean 'prompt'?" in str(info.value)
    with pytest.raises(ChainConfigError, match="missing required key 'prompt'"):
        Step(id="a")
    chain = Chain(inputs={"x": "X"}, steps=[Step(id="a", prompt="{y}")])
    [problem] = spec_problems(chain)
    assert problem.path == "steps[0].prompt" and "unknown name '{y}'" in problem.message
    with pytest.raises(ChainConfigError, match="unknown name"):
        compile_chain(chain, model="fake:echo")


def test_yaml_text_can_be_loaded_directly() -> None:
    spec = load_spec_text("prompt: 'Hola {nombre}'\ninputs: {nombre: Quién}\n")
    assert spec.normalized_steps()[0].prompt == "Hola {nombre}"


# -- files that pass the schema but do not do what they say (issue 13) ----------------------------
def warnings_of(tmp_path: Path, text: str) -> list[Problem]:
    spec = load_spec(write(tmp_path, text))
    return [p for p in spec.warnings if p.warning]


def test_doubled_braces_warn_at_their_line(tmp_path: Path) -> None:
    [found] = warnings_of(tmp_path, "inputs: {texto: x}\nprompt: 'Resume {{texto}} y {texto}'\n")
    assert (found.path, found.line) == ("prompt", 2)
    assert "sent as the literal text '{texto}'" in found.message


def test_an_input_no_template_uses_is_a_warning(tmp_path: Path) -> None:
    [found] = warnings_of(tmp_path, "inputs: {texto: x, sobra: y}\nprompt: 'Resume {texto}'\n")
    assert (found.path, found.line, found.col) == ("inputs.sobra", 1, 20)
    assert found.message == "input 'sobra' is used by no template or retriever query"
    # a retriever's query uses inputs too, and one without a query searches for the first input
    queried = (
        "inputs: {q: x, tema: y}\nretriever: {type: static, documents: [a], query: '{tema}'}\n"
        "prompt: '{context} {q}'\n"
    )
    assert warnings_of(tmp_path, queried) == []
    default_query = (
        "inputs: {q: x}\nretriever: {type: static, documents: [a]}\nprompt: '{context}'\n"
    )
    assert warnings_of(tmp_path, default_query) == []
    steps = (
        "inputs: {a: x, b: y}\nsteps:\n  - {id: s1, prompt: '{a}'}\n"
        "  - {id: s2, system: '{b}', prompt: '{s1}'}\n"
    )
    assert warnings_of(tmp_path, steps) == []


def test_a_retriever_setting_is_reported_at_its_own_key(tmp_path: Path) -> None:
    text = (
        "inputs: {q: x}\nretriever: {type: chroma, collection: curso, k: 0}\nprompt: '{context}'\n"
    )
    p = one(tmp_path, text)
    assert (p.path, p.line, p.col) == ("retriever.k", 2, 49)  # not 'retriever.chroma'
    steps = (
        "inputs: {q: x}\nsteps:\n  - id: a\n"
        "    retriever: {type: bm25, documents: [x], k: -1}\n    prompt: '{context}'\n"
    )
    assert one(tmp_path, steps).path == "steps[0].retriever.k"


def test_every_bad_row_of_an_examples_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "ej.jsonl").write_text(
        '{"input": "a", "output": "b"}\n{"input": "a"}\nnot json\n'
        '{"input": 1, "output": 2, "x": 3}\n',
        encoding="utf-8",
    )
    text = "inputs: {q: x}\nexamples: [{file: ej.jsonl}]\nprompt: '{q}'\n"
    found = problems(tmp_path, text)
    assert [p.message.split(":")[0] for p in found] == [
        "ej.jsonl line 2",
        "ej.jsonl line 3",
        "ej.jsonl line 4",
    ]
    assert all(p.path == "examples[0].file" and p.line == 2 for p in found)


def test_every_mistake_of_an_output_schema_is_reported(tmp_path: Path) -> None:
    text = (
        "inputs: {q: x}\nprompt: '{q}'\noutput_schema:\n  type: object\n  properties:\n"
        "    a: {type: strin}\n    b: {minLength: -1}\n"
    )
    found = problems(tmp_path, text)
    assert [p.path for p in found] == [
        "output_schema.properties.a.type",
        "output_schema.properties.b.minLength",
    ]
    assert [p.line for p in found] == [6, 7]


@pytest.mark.parametrize(
    ("tool", "message", "hint"),
    [
        (
            "eslabon.tools:calculadoraa",
            "eslabon.tools has no tool 'calculadoraa'",
            "did you mean 'calculadora'?",
        ),
        (
            "eslabon.tool:calculadora",
            "no module 'eslabon.tool' in eslabon",
            "did you mean 'eslabon.tools'?",
        ),
    ],
)
def test_a_misspelled_eslabon_tool_is_caught(
    tmp_path: Path, tool: str, message: str, hint: str
) -> None:
    p = one(tmp_path, f"inputs: {{q: x}}\nprompt: '{{q}}'\ntools: ['{tool}']\n")
    assert (p.path, p.line, p.message) == ("tools[0]", 3, message)
    assert p.hint is not None and p.hint.startswith(hint)
    assert "eslabon.tools:calculadora" in p.hint


def test_other_packages_tools_are_not_imported_at_validate(tmp_path: Path) -> None:
    import sys

    (tmp_path / "herramientas_val.py").write_text("raise SystemExit('imported!')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        spec = load_spec(
            write(tmp_path, "inputs: {q: x}\nprompt: '{q}'\ntools: ['herramientas_val:f']\n")
        )
    finally:
        sys.path.remove(str(tmp_path))
    assert spec.warnings == [] and "herramientas_val" not in sys.modules


def test_errors_found_while_building_name_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A setting checked only when the model is built (run, render) names the chain's file, as
    validate's problems do — never ``<chain>``."""
    from eslabon import load_chain
    from eslabon.interfaces.render import render_requests

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-not-used")
    path = write(tmp_path, "model: anthropic:claude-x\nparams: {seed: 1}\nprompt: hola\n")
    with pytest.raises(ChainConfigError) as info:
        load_chain(path)
    assert str(info.value).startswith(f"{path}: params.seed: provider 'anthropic' does not")
    with pytest.raises(ChainConfigError) as info:
        render_requests(load_spec(path), "anthropic")
    assert str(info.value).startswith(f"{path}: params.seed:")
