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
    with pytest.raises(StudyDefinitionError, match=r"outcomes\.2.*SIXMWD: a quantity needs a unit"):
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
    with pytest.raises(StudyDefinitionError, match=r"analysis\.effects\.binary: Input should be .*'relative-risk'"):
        load_study(path)


def test_a_published_effect_must_fit_its_outcome_type(tmp_path):
    raw = yaml.safe_load(DEFAULT_STUDY.read_text())
    raw["analysis"]["published"][0]["effect"] = "hodges-lehmann"  # CTNORM is coded (binary)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(StudyDefinitionError, match=r"analysis\.published\.0\.effect: 'hodges-lehmann' does not apply "
                                                   r"to binary \(coded\) outcome CTNORM"):
        load_study(path)


def test_cross_references_are_checked(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(DEFAULT_STUDY.read_text().replace("visits: [M36]}", "visits: [M48]}", 1))
    with pytest.raises(StudyDefinitionError, match="unknown visit 'M48'"):
        load_study(broken)
