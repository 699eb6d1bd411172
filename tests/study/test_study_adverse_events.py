"""The study file's adverse_events section: checked on load, codes of required bindings from the specification."""

import json

import pytest
import yaml
from medplum import SERVER_DIR

from fhir_msc import StudyDefinitionError, load_study
from fhir_msc.study.definition import DEFAULT_STUDY
from fhir_msc.study.fhir_codes import REQUIRED_CODINGS

R4_EXAMPLES = SERVER_DIR / "node_modules" / "hl7.fhir.r4.examples"


def _load_changed(tmp_path, change):
    raw = yaml.safe_load(DEFAULT_STUDY.read_text())
    change(raw["adverse_events"])
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_study(path)


@pytest.mark.parametrize("element, codesystem", [("AdverseEvent.severity (R4)", "adverse-event-severity"),
                                                 ("AdverseEvent.outcome (R4)", "adverse-event-outcome")])
def test_required_codes_are_those_of_the_specification(element, codesystem):
    spec = json.loads((R4_EXAMPLES / f"CodeSystem-{codesystem}.json").read_text())
    assert REQUIRED_CODINGS[element] == (spec["url"], tuple(c["code"] for c in spec["concept"]))


@pytest.mark.parametrize("change, says", [
    (lambda ae: ae["severity"]["MILD"].update(code="grade-1"),
     r"adverse_events\.severity\.MILD: .*\|grade-1 is not in the value set FHIR requires for AdverseEvent\.severity"),
    (lambda ae: ae["outcome"]["FATAL"].update(system="http://snomed.info/sct"),
     r"outcome\.FATAL: http://snomed\.info/sct\|fatal is not in the value set FHIR requires for AdverseEvent\.outcome"),
    (lambda ae: ae["columns"].pop("seq"), r"adverse_events\.columns: missing seq"),
    (lambda ae: ae.update(serious_event="YES"), r"adverse_events\.serious_event: 'YES' is not one of serious: N, Y"),
])
def test_bad_adverse_event_definitions_name_their_yaml_path(tmp_path, change, says):
    with pytest.raises(StudyDefinitionError, match=says):
        _load_changed(tmp_path, change)


def test_dictionary_version_goes_into_the_coding(tmp_path):
    def meddra(ae):
        ae["terms"]["Hypertension"] = {"system": "https://www.meddra.org", "version": "26.0",
                                       "code": "00000000", "display": "Hypertension"}
    study = _load_changed(tmp_path, meddra)
    assert study.adverse_events.terms["Hypertension"].as_fhir()["version"] == "26.0"
