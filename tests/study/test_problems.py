"""A study file's mistakes: one line each, at its YAML path and line, with a did-you-mean, never pydantic's union tags."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_msc.errors import StudyDefinitionError
from fhir_msc.study.definition import load_study
from fhir_msc.study.problems import InvalidStudyDefinition, did_you_mean, path_parts, yaml_path

MINI = Path(__file__).parents[1] / "data" / "mini-study" / "study.yaml"


def problems(tmp_path: Path, *replacements: tuple[str, str]) -> list:
    text = MINI.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(InvalidStudyDefinition) as raised:
        load_study(path)
    return list(raised.value.problems)


def line_of(text: str) -> int:
    """The line of MINI holding ``text`` (1-based)."""
    return next(n for n, line in enumerate(MINI.read_text().splitlines(), 1) if text in line)


def test_a_misspelt_key_is_one_line_with_the_key_it_should_be_not_also_a_missing_one(tmp_path):
    (problem,) = problems(tmp_path, ("description: Active drug, intervention: DRUG", "description: Active drug, interventon: DRUG"))
    assert str(problem) == "arms[0].interventon: unknown key: did you mean 'intervention'?"
    assert problem.suggestion == "intervention" and problem.line == line_of("Active drug")


def test_a_misspelt_value_of_a_union_of_literals_is_one_line_not_one_per_alternative(tmp_path):
    (problem,) = problems(tmp_path, ("effect: odds-ratio,", "effect: odds-ratoi,"))
    assert problem.path == "analysis.published[0].effect" and problem.value == "odds-ratoi"
    assert problem.message.startswith("'odds-ratoi' is not an allowed value: did you mean 'odds-ratio'? (allowed: ")
    assert "literal[" not in problem.message and "Input should be" not in problem.message
    assert problem.line == line_of("effect: odds-ratio,")


def test_a_value_no_alternative_is_near_lists_the_allowed_ones(tmp_path):
    (problem,) = problems(tmp_path, ("type: coded", "type: binary"))
    assert str(problem) == ("outcomes[0].type: 'binary' is not an allowed value: use one of quantity, coded, ordinal, "
                            "integer, boolean, datetime, text")


def test_a_value_of_the_wrong_type_for_every_alternative_is_one_line(tmp_path):
    (problem,) = problems(tmp_path, ("window: [77, 91]", "window: {from: 77}"))
    assert problem.path == "visits[1].window" and "should be a valid" in problem.message and "tuple" not in problem.path


def test_a_part_written_as_something_else_than_a_mapping_says_so_in_yaml_words(tmp_path):
    (problem,) = problems(tmp_path, ("  - {code: W0, name: Week 0, visitnum: 1, day: 0, window: [-3, 0]}", "  - W0"))
    assert str(problem) == "visits[0]: 'W0' should be a mapping"


def test_a_missing_key_names_its_path_and_the_line_of_its_mapping(tmp_path):
    (problem,) = problems(tmp_path, ("  title: Made-up two-arm study for fhir-msc tests\n", ""))
    assert str(problem) == "study.title: required: add it" and problem.line == line_of("key: demo-mini") - 1


def test_cross_references_name_the_path_of_the_reference_and_the_nearest_code(tmp_path):
    found = problems(tmp_path, ("intervention: PBO}", "intervention: PB0}"), ("visits: [W12]}", "visits: [W21]}"))
    assert [str(p) for p in found] == [
        "arms[1].intervention: unknown intervention 'PB0': did you mean 'PBO'? (a key of interventions)",
        "outcomes[0].visits[0]: RESP: unknown visit 'W21': did you mean 'W12'?"]
    assert [p.line for p in found] == [line_of("Placebo tablet"), line_of("visits: [W12]}")]
    assert [p.value for p in found] == ["PB0", "W21"]
    plan = problems(tmp_path, ("control: CTL", "control: CLT"))[0]  # then: counts and medians keyed by CTL
    assert str(plan) == "analysis.control: unknown arm 'CLT': did you mean 'CTL'?" and plan.line == line_of("control: CTL")


def test_a_check_of_one_part_names_the_key_inside_it(tmp_path):
    (problem,) = problems(tmp_path, ('type: quantity, unit: "{score}",', "type: quantity,"))
    assert str(problem) == "outcomes[1].unit: SCORE: a quantity needs a unit (UCUM)"


def test_the_message_of_an_invalid_file_has_one_line_per_problem_with_its_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(MINI.read_text().replace("type: coded", "type: codd").replace("visitnum: 2,", "visitnum: two,"))
    with pytest.raises(InvalidStudyDefinition) as raised:
        load_study(path)
    assert str(raised.value).splitlines() == [
        f"{path}: invalid study definition (2 problems):",
        f"  line {line_of('visitnum: 2,')}: visits[1].visitnum: 'two' should be a valid integer or a valid number",
        f"  line {line_of('type: coded')}: outcomes[0].type: 'codd' is not an allowed value: did you mean 'coded'? "
        "(allowed: quantity, coded, ordinal, integer, boolean, datetime, text)"]


def test_yaml_syntax_errors_are_one_line_with_their_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("study: [a\nb: c\n")
    with pytest.raises(StudyDefinitionError) as raised:
        load_study(path)
    assert str(raised.value).count("\n") == 0 and str(raised.value).startswith(f"{path}:2: not valid YAML: ")


@pytest.mark.parametrize("path, parts", [("arms[1].code", ["arms", 1, "code"]), ("study", ["study"]),
                                         ("analysis.published[0].p.test", ["analysis", "published", 0, "p", "test"]),
                                         ("visits[0].window[1]", ["visits", 0, "window", 1])])
def test_yaml_paths_read_back(path, parts):
    assert path_parts(path) == parts and yaml_path(parts) == path


def test_did_you_mean_ignores_case_and_says_nothing_for_far_words():
    assert did_you_mean("Coded", ["quantity", "coded"]) == "coded"
    assert did_you_mean("weight", ["age", "sex", "baseline"]) is None
