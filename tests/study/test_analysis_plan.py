"""The analysis plan: pairs of arms, covariates and strata are checked on load, with their YAML path."""

from pathlib import Path

import pytest
import yaml

from fhir_msc import StudyDefinitionError, load_study

THREE = Path(__file__).parents[1] / "data" / "three-arm" / "study.yaml"


def _load_with(tmp_path, change):
    raw = yaml.safe_load(THREE.read_text())
    change(raw["analysis"])
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_study(path)


def test_the_default_pairs_are_each_arm_against_the_control():
    plan = load_study(THREE).analysis
    assert plan.pairs(["HIGH", "LOW", "PBO"]) == [(("HIGH",), ("PBO",)), (("LOW",), ("PBO",))]


def test_declared_comparisons_replace_the_default_and_may_pool_arms(tmp_path):
    def declare(plan):
        plan["comparisons"] = [{"treatment": ["HIGH", "LOW"], "control": "PBO"}, {"treatment": "HIGH", "control": "LOW"}]
    plan = _load_with(tmp_path, declare).analysis
    assert plan.pairs(["HIGH", "LOW", "PBO"]) == [(("HIGH", "LOW"), ("PBO",)), (("HIGH",), ("LOW",))]


@pytest.mark.parametrize(("change", "message"), [
    (lambda plan: plan.update(comparisons=[{"treatment": "MID", "control": "PBO"}]),
     r"analysis\.comparisons\[0\]\.treatment: unknown arm 'MID': use one of HIGH, LOW, PBO"),
    (lambda plan: plan.update(comparisons=[{"treatment": ["HIGH", "PBO"], "control": "PBO"}]),
     r"comparison 0 \(HIGH\+PBO vs PBO\) needs a treatment and a control without an arm in both"),
    (lambda plan: plan["published"][0].pop("treatment"),
     r"analysis\.published\[0\]: give both treatment and control, or neither"),
    (lambda plan: [plan["published"][0].pop(k) for k in ("treatment", "control")],
     r"analysis\.published\[0\]: name its treatment and control: the plan compares 2 pairs"),
    (lambda plan: plan.update(covariates=["weight"]),
     r"analysis\.covariates\[0\]: unknown covariate 'weight': use age, sex, baseline, an outcome code"),
    (lambda plan: plan["published"][2].update(covariates=["SCORE@W4"]),
     r"analysis\.published\[2\]\.covariates\[0\]: covariate 'SCORE@W4': unknown visit 'W4'"),
    (lambda plan: plan["published"][1].update(covariates=["SCORE"]),
     r"analysis\.published\[1\]\.covariates\[0\]: write 'baseline' for the outcome's own baseline value"),
    (lambda plan: plan.pop("baseline"),
     r"analysis\.covariates\[0\]: covariate 'baseline' needs analysis\.baseline"),
    (lambda plan: plan.update(stratum="SCORE"),
     r"analysis\.stratum: stratum 'SCORE' is not a coded outcome"),
    (lambda plan: plan["published"][3].update(counts={"HIGH": [21, 28], "PBO": [7, 14]}),
     r"analysis\.published\[3\]\.counts: 'HIGH' is neither arm compared: use HIGH\+LOW or PBO"),
    (lambda plan: plan.update(stratum="age"), r"analysis\.stratum: 'age' cannot be a stratum"),
    (lambda plan: plan["published"][7].update(effect="cox-hazard-ratio"),
     r"analysis\.published\[7\]\.effect: 'cox-hazard-ratio' does not apply to continuous \(quantity\) outcome FLARE"),
])
def test_a_bad_plan_names_its_yaml_path(tmp_path, change, message):
    with pytest.raises(StudyDefinitionError, match=message):
        _load_with(tmp_path, change)
