"""The study file's visits, analysis windows, outcome types and time-to-event entries are checked on load."""

from pathlib import Path

import pytest
import yaml

from fhir_msc import StudyDefinitionError, load_study

TYPES = Path(__file__).parents[1] / "data" / "types-study" / "study.yaml"


def _load_changed(tmp_path, change) -> None:
    raw = yaml.safe_load(TYPES.read_text())
    change(raw)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    load_study(path)


def _outcome(raw, code):
    return next(o for o in raw["outcomes"] if o["code"] == code)


def test_the_types_study_loads(tmp_path):
    study = load_study(TYPES)
    assert [o.type for o in study.outcomes] == ["quantity", "integer", "ordinal", "boolean", "datetime", "text"]
    assert study.visit_by_num[2.5].code == "W6" and study.visit_key(3.1) == "UNSCHEDULED-3.1"
    assert study.outcome_by_code["WHO"].rank("VENTILATED") == 3


@pytest.mark.parametrize("change, says", [
    (lambda raw: _outcome(raw, "WHO").pop("answers"), r"an ordinal outcome needs answers \(listed lowest first"),
    (lambda raw: _outcome(raw, "FLARES").update(unit="{flares}"), "FLARES: only a quantity has a unit"),
    (lambda raw: _outcome(raw, "HOSP").update(event="YES"), r"event 'YES' is not one of its answers \(Y, N\)"),
    (lambda raw: _outcome(raw, "COMMENT").update(range=[0, 1]), "only quantity and integer outcomes have a range"),
    (lambda raw: _outcome(raw, "SCORE").update(type="count"), r"outcomes\[0\]\.type"),
    (lambda raw: raw["analysis"]["windows"].update(W9={"from_day": 1, "to_day": 2}), "unknown visit 'W9'"),
    (lambda raw: raw["analysis"]["windows"].update(W4={"from_day": 20, "to_day": 75}),
     "W4 and W12 overlap"),
    (lambda raw: raw["analysis"]["windows"].update(W4={"from_day": 30, "to_day": 20}), "from_day 30 is after to_day 20"),
    (lambda raw: raw["time_to_event"][0].update(event="SCORE"), r"time_to_event\[0\]\.event: 'SCORE' is not a datetime"),
    (lambda raw: raw["unscheduled"].update(code="W4"), "unscheduled.code 'W4' is also a scheduled visit code"),
    (lambda raw: raw["analysis"].update(published=[{"outcome": "WHO", "visit": "W12", "effect": "odds-ratio",
                                                    "estimate": 1, "lower": 0.5, "upper": 2}]),
     "'odds-ratio' does not apply to ordinal outcome WHO"),
])
def test_problems_name_their_place(tmp_path, change, says):
    with pytest.raises(StudyDefinitionError, match=says):
        _load_changed(tmp_path, change)
