from __future__ import annotations

import pytest

from eslabon.chainfile.templates import check_template, template_fields


def messages(template: str, available: list[str], later: list[str] | None = None) -> list[str]:
    return [i.message for i in check_template(template, available, later)]


def test_plain_fields_and_literal_braces_are_fine() -> None:
    assert messages("Hola {nombre}, {{literal}} y {{ }}", ["nombre"]) == []
    assert template_fields("A {x} {{y}} {x} {z}") == ["x", "x", "z"]


def test_unknown_name_suggests_the_closest() -> None:
    [issue] = check_template("{problme}", ["problema", "plan"])
    assert issue.message == "unknown name '{problme}'"
    assert issue.hint is not None and "did you mean 'problema'?" in issue.hint
    assert "problema, plan" in issue.hint


def test_later_step_is_reported_as_such() -> None:
    assert messages("{plan}", ["problema"], ["plan"]) == [
        "'{plan}' is the output of a later step; a step can only use inputs and the steps before it"
    ]


@pytest.mark.parametrize(
    "template",
    ["{x.__class__}", "{x[0]}", "{x.y}", "{0}", "{x + 1}"],
)
def test_attribute_index_and_expressions_are_rejected(template: str) -> None:
    [message] = messages(template, ["x"])
    assert "not a plain name" in message


@pytest.mark.parametrize("template", ["{x!r}", "{x:>10}"])
def test_conversions_and_format_specs_are_rejected(template: str) -> None:
    [message] = messages(template, ["x"])
    assert "conversion or format spec" in message


@pytest.mark.parametrize("template", ["{{ x }}", "{% if x %}y{% endif %}", "{# c #}"])
def test_jinja_is_rejected(template: str) -> None:
    [message] = messages(template, ["x"])
    assert message.startswith("Jinja syntax")


@pytest.mark.parametrize("template", ["{x", "x}", "{}"])
def test_malformed_and_empty_fields(template: str) -> None:
    [message] = messages(template, ["x"])
    assert "malformed" in message or "empty field" in message


def test_doubled_braces_around_a_usable_name_warn() -> None:
    """``{{texto}}`` (Jinja, Handlebars) is sent as the literal text ``{texto}``: a warning."""
    [issue] = check_template("Resume: {{texto}}", ["texto"])
    assert issue.warning
    assert (
        issue.message
        == "'{{texto}}' is sent as the literal text '{texto}', not the value of 'texto'"
    )
    assert issue.hint is not None and issue.hint.startswith("write {texto} to insert it")
    # braces meant as braces stay silent: not a name the template could use, or a real field
    assert check_template("{{literal}} {{}} {{{texto}}} {{ }}", ["texto"]) == []


def test_every_problem_of_a_template_is_reported() -> None:
    found = messages("{% if x %}{{ x }}{% endif %} {y.z} {nada} } {x!r} {", ["x"])
    assert [m.split(" ")[0] for m in found] == [
        "Jinja",  # one problem, one fix, for the three tags
        "field",  # {y.z}
        "unknown",  # {nada}
        "malformed",  # the single '}'
        "field",  # {x!r}: found past the stray brace
        "malformed",  # the '{' never closed
    ]
    assert "'{% if x %}', '{{ x }}', '{% endif %}'" in found[0]


def test_checking_stays_linear_on_hostile_templates() -> None:
    import time

    for template in ("{" * 200_000, "}" * 200_001, "{a" * 100_000, "{{ " + " " * 200_000,
                     "{%" * 100_000, "{{a" * 100_000):  # fmt: skip
        start = time.perf_counter()
        check_template(template, ["a"])
        assert time.perf_counter() - start < 2, template[:10]
