"""The study definition is data: validated on load, with errors that name the path."""

import pytest
import yaml

from fhir_msc import StudyDefinitionError, load_study
from fhir_msc.study.definition import DEFAULT_STUDY


def test_msc_study_defines_the_trial(study):
    assert study.study.identifier.value == "NCT04288102"
    assert [(a.code, a.name) for a in study.arms] == [("MSC", "MSC"), ("PBO", "Placebo")]
    assert [v.code for v in study.visits] == ["BASELINE", "D10", "D28", "M3", "M6", "M12", "M18", "M24", "M36"]
    assert study.interventions["UCMSC"].dose.value == 4.0e7
    assert study.interventions["UCMSC"].days == [0, 3, 6]


def test_every_outcome_of_the_paper_is_defined(study):
    codes = set(study.outcome_by_code)
    assert {"CTNORM", "CTTSS", "SIXMWD", "FVC", "FEV1", "FEV1FVC", "DLCO", "SF36GH", "LCANY",
            "NEWCOMOR", "CEA", "AFP", "CA125", "REINF"} <= codes
    assert {c for c in codes if c.startswith("SF36")} == {f"SF36{d}" for d in ("PF", "RP", "BP", "GH", "VT", "SF", "RE", "MH")}


def test_missing_study_file_is_a_clear_error(tmp_path):
    with pytest.raises(StudyDefinitionError, match="study definition not found"):
        load_study(tmp_path / "nope.yaml")


def test_invalid_study_names_the_field(tmp_path):
    raw = yaml.safe_load(DEFAULT_STUDY.read_text())
    del raw["outcomes"][2]["unit"]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(raw))
    with pytest.raises(StudyDefinitionError, match=r"outcomes\[2\]\.unit: SIXMWD: a quantity needs a unit"):
        load_study(broken)


@pytest.mark.parametrize("binary", ["odds-ratio", "exact-odds-ratio", "odds-ratio-mh", "relative-risk",
                                    "risk-difference", "risk-difference-newcombe"])
def test_every_binary_effect_is_selectable(tmp_path, binary):
    raw = yaml.safe_load(DEFAULT_STUDY.read_text())
    raw["analysis"]["effects"]["binary"] = binary
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_study(path).analysis.effects.binary == binary


def test_an_unknown_effect_names_its_yaml_path(tmp_path):
    raw = yaml.safe_load(DEFAULT_STUDY.read_text())
    raw["analysis"]["effects"]["binary"] = "risk-ratio"
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(StudyDefinitionError, match=r"analysis\.effects\.binary: 'risk-ratio' is not an allowed value: did you mean 'odds-ratio'\? \(allowed: .*relative-risk"):
        load_study(path)


def test_a_published_effect_must_fit_its_outcome_type(tmp_path):
    raw = yaml.safe_load(DEFAULT_STUDY.read_text())
    raw["analysis"]["published"][0]["effect"] = "hodges-lehmann"  # CTNORM is coded (binary)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(StudyDefinitionError, match=r"analysis\.published\[0\]\.effect: 'hodges-lehmann' does not apply "
                                                   r"to binary \(coded\) outcome CTNORM"):
        load_study(path)


def test_cross_references_are_checked(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(DEFAULT_STUDY.read_text().replace("visits: [M36]}", "visits: [M48]}", 1))
    with pytest.raises(StudyDefinitionError, match="unknown visit 'M48'"):
        load_study(broken)


def _load_changed(tmp_path, change):
    raw = yaml.safe_load(DEFAULT_STUDY.read_text())
    change(raw)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_study(path)


@pytest.mark.parametrize("change, says", [
    (lambda raw: raw["study"].update(status="finished"),
     r"study\.status: .*'finished' is not a code of the value set FHIR requires for ResearchStudy\.status \(R4\) "
     r"\(active, administratively-completed, "),
    (lambda raw: raw["study"].update(subject_status="dropped-out"),
     r"study\.subject_status: .*'dropped-out' is not a code of the value set FHIR requires for ResearchSubject\.status"),
    (lambda raw: raw["terms"]["sex"].update(M="M"),
     r"terms\.sex\.M: .*'M' is not a code of the value set FHIR requires for Patient\.gender "
     r"\(male, female, other, unknown\)"),
    (lambda raw: raw["terms"]["dose_unit"].update(CELLS="cells"),  # not in UCUM's table of units; {cells} is
     r"terms\.dose_unit\.CELLS: .*'cells' is not a UCUM unit: it cannot be read from character 2 \('e'\)"),
    (lambda raw: raw["terms"]["dose_unit"].update(CELLS="10^6 cells"),
     r"terms\.dose_unit\.CELLS: .*'10\^6 cells' is not a UCUM unit: it cannot be read from character 5 \(' '\)"),
    (lambda raw: raw["outcomes"][2].update(unit="{score"),
     r"outcomes\[2\]\.unit: .*'\{score' is not a UCUM unit"),
    (lambda raw: raw["outcomes"][2].update(unit="m/"),
     r"outcomes\[2\]\.unit: .*'m/' is not a UCUM unit: it ends where a unit should follow"),
])
def test_coded_values_put_into_fhir_are_checked_with_their_yaml_path(tmp_path, change, says):
    with pytest.raises(StudyDefinitionError, match=says) as caught:
        _load_changed(tmp_path, change)
    assert caught.value.exit_code == 4


@pytest.mark.parametrize("unit", ["mg/dL", "10*9/L", "{score}", "%", "/min", "kg.m-2", "mm[Hg]", "(kg/m2)/s",
                                  "10*3/uL", "[in_i]", "%{vol}", "10^6", "1"])
def test_ucum_units_by_their_syntax_are_accepted(tmp_path, unit):
    assert _load_changed(tmp_path, lambda raw: raw["outcomes"][2].update(unit=unit)).outcomes[2].unit == unit


@pytest.mark.parametrize("unit", ["", "/", "m//s", "()", "(m", "mmol L", '"m"', "m)", "{a b}", "cells", "Kg", "mmHg"])
def test_units_that_are_not_ucum_syntax_are_refused(tmp_path, unit):
    with pytest.raises(StudyDefinitionError, match=r"outcomes\[2\]\.unit: .*is not a UCUM unit"):
        _load_changed(tmp_path, lambda raw: raw["outcomes"][2].update(unit=unit))
