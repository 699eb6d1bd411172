"""Derived endpoints computed from the Observations of a store: values, dependence on exactly their sources, YAML errors."""

import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort_subset import write_subset
from fhir_msc import Store, get_version, load_study
from fhir_msc.analysis.derived import values
from fhir_msc.analysis.frame import analysis_frame, analyze
from fhir_msc.analysis.stats import hodges_lehmann
from fhir_msc.cli import main
from fhir_msc.errors import StudyDefinitionError
from fhir_msc.fhir.mapping import tables_to_fhir
from fhir_msc.study.definition import DEFAULT_STUDY
from fhir_msc.tables.sdtm import RejectLog

DERIVED = """  derived:
    - {code: SIXMWDCHG, display: "6-minute walk distance, change from month 12", kind: change, outcome: SIXMWD, baseline: M12, visit: M36}
    - {code: SIXMWDPCT, display: "6-minute walk distance, % change from month 12", kind: percent-change, outcome: SIXMWD, baseline: M12, visit: M36}
    - {code: FEV1FVCR, display: "FEV1 / FVC", kind: ratio, outcomes: [FEV1, FVC], visit: M36}
    - {code: FVCFEV1D, display: "FVC − FEV1", kind: difference, outcomes: [FVC, FEV1], visit: M36}
    - {code: SIXMWDAUC, display: "6-minute walk distance, area month 12 to 36", kind: auc, outcome: SIXMWD, visits: [M12, M24, M36]}
"""
CODES = ["SIXMWDCHG", "SIXMWDPCT", "FEV1FVCR", "FVCFEV1D", "SIXMWDAUC"]


def derived_study(tmp_path: Path, block: str = DERIVED) -> Path:
    text = DEFAULT_STUDY.read_text()
    path = tmp_path / "study.yaml"
    path.write_text(text.replace("  published:\n", block + "  published:\n", 1))
    return path


@pytest.fixture
def store(cohort, tmp_path) -> Store:
    tables = write_subset(cohort, tmp_path / "tables", 24)
    store = Store(tmp_path / "store")
    log = RejectLog(None)
    store.write(tables_to_fhir(load_study(), tables, get_version("R4"), log))
    assert log.rejections == []
    return store


def observed(store: Store) -> dict[tuple[str, str, str], float]:
    """(subject, visit, code) → value of every quantity Observation, read from the store's resources."""
    return {tuple(o["identifier"][0]["value"].split("/")): o["valueQuantity"]["value"]
            for o in store.read("Observation") if "valueQuantity" in o}


def by_hand(values: dict, subject: str) -> dict[str, float]:
    """The five derived values of one subject, from the Observations' values."""
    v = {(visit, code): value for (s, visit, code), value in values.items() if s == subject}
    found = {}
    if ("M12", "SIXMWD") in v and ("M36", "SIXMWD") in v:
        change = v["M36", "SIXMWD"] - v["M12", "SIXMWD"]
        found |= {"SIXMWDCHG": change, "SIXMWDPCT": 100 * change / v["M12", "SIXMWD"]}
        if ("M24", "SIXMWD") in v:  # planned days 365, 730, 1095
            found["SIXMWDAUC"] = ((v["M12", "SIXMWD"] + v["M24", "SIXMWD"]) / 2 * 365
                                  + (v["M24", "SIXMWD"] + v["M36", "SIXMWD"]) / 2 * 365)
    if ("M36", "FEV1") in v and ("M36", "FVC") in v:
        found |= {"FEV1FVCR": v["M36", "FEV1"] / v["M36", "FVC"], "FVCFEV1D": v["M36", "FVC"] - v["M36", "FEV1"]}
    return found


def derived_values(study, store) -> dict[tuple[str, str], float]:
    frame = analysis_frame(study, store)
    rows = frame[frame["outcome"].isin(CODES)]
    assert (rows["visit"] == "M36").all()
    return {(s, o): v for s, o, v in zip(rows["subject"], rows["outcome"], rows["value"])}


def test_derived_values_are_computed_from_the_observations(tmp_path, store):
    study = load_study(derived_study(tmp_path))
    got = derived_values(study, store)
    values = observed(store)
    expected = {(s, code): value for s in {key[0] for key in values} for code, value in by_hand(values, s).items()}
    assert set(got) == set(expected) and len({code for _, code in got}) == 5
    assert all(got[key] == pytest.approx(expected[key], rel=1e-12) for key in expected)


def test_changing_one_observation_changes_exactly_the_derived_values_built_on_it(tmp_path, store):
    study = load_study(derived_study(tmp_path))
    before = derived_values(study, store)
    subject = next(s for s, code in before if code == "SIXMWDAUC")
    source = next(o for o in store.read("Observation") if o["identifier"][0]["value"] == f"{subject}/M36/SIXMWD")
    source["valueQuantity"]["value"] += 25
    assert store.write([source]) == {"Observation": 1}
    after = derived_values(study, store)
    changed = {key for key in before if before[key] != after.get(key)}
    assert changed == {(subject, "SIXMWDCHG"), (subject, "SIXMWDPCT"), (subject, "SIXMWDAUC")}
    assert after[subject, "SIXMWDCHG"] == pytest.approx(before[subject, "SIXMWDCHG"] + 25)
    assert after[subject, "SIXMWDAUC"] == pytest.approx(before[subject, "SIXMWDAUC"] + 25 / 2 * 365)


def test_derived_endpoints_are_analysed_like_outcomes(tmp_path, store):
    path = derived_study(tmp_path)
    result = CliRunner().invoke(main, ["analyze", "--store", str(store.path), "--study", str(path), "--visit", "M36",
                                       "--outcome", "SIXMWDCHG", "--json"])
    assert result.exit_code == 0, result.output
    (comparison,) = json.loads(result.stdout)["comparisons"]
    study = load_study(path)
    values = derived_values(study, store)
    frame = analysis_frame(study, store)
    arm = dict(zip(frame["subject"], frame["arm"]))
    treated = [v for (s, code), v in values.items() if code == "SIXMWDCHG" and arm[s] == "MSC"]
    assert comparison["type"] == "continuous" and comparison["arms"][0]["n"] == len(treated)
    assert comparison["arms"][0]["mean"] == pytest.approx(sum(treated) / len(treated))
    assert {c.outcome for c in analyze(study, frame, visits=["M36"])} >= set(CODES)


@pytest.mark.parametrize(("block", "message"), [
    ("    - {code: X, display: x, kind: change, outcome: SIXMWD, baseline: M99, visit: M36}\n",
     "analysis.derived[0].baseline: unknown visit 'M99'"),
    ("    - {code: X, display: x, kind: change, outcome: SIXMWD, visit: M36}\n",
     "analysis.derived[0].baseline: needed for kind change"),
    ("    - {code: X, display: x, kind: ratio, outcomes: [FEV1, REINF], visit: M36}\n",
     "analysis.derived[0].outcomes[1]: REINF is not a quantity outcome"),
    ("    - {code: X, display: x, kind: auc, outcome: SIXMWD, visits: [M36]}\n",
     "analysis.derived[0].visits: an area needs at least two different visits"),
    ("    - {code: X, display: x, kind: auc, outcome: SIXMWD, visits: [M36, M12]}\n",
     "analysis.derived[0].visits: list the visits in the order of their planned days (visits[].day)"),
    ("    - {code: FVC, display: x, kind: change, outcome: FVC, baseline: M12, visit: M36}\n",
     "a derived code repeats an outcome's or another derived code"),
    ("    - {code: X, display: x, kind: difference, outcomes: [FVC, SIXMWD], visit: M36}\n",
     "analysis.derived[0].outcomes: a difference needs one unit, not L and m"),
])
def test_a_derived_endpoint_that_does_not_fit_is_named_by_its_yaml_path(tmp_path, block, message):
    with pytest.raises(StudyDefinitionError, match="invalid study definition") as error:
        load_study(derived_study(tmp_path, "  derived:\n" + block))
    assert message in str(error.value)


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_derive_writes_observations_derived_from_their_sources(cohort, tmp_path, version):
    tables = write_subset(cohort, tmp_path / "tables", 16)
    store = Store(tmp_path / "store")
    store.write(tables_to_fhir(load_study(), tables, get_version(version), RejectLog(None)))
    path = derived_study(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["derive", "--store", str(store.path), "--study", str(path), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    study = load_study(path)
    expected = derived_values(study, store)
    assert document["changes"] == {"created": len(expected), "updated": 0, "unchanged": 0} and document["stale"] == []
    assert document["values"] == {code: sum(c == code for _, c in expected) for code in CODES}
    by_id = {o["id"]: o for o in store.read("Observation")}
    derived = [o for o in by_id.values() if o.get("derivedFrom")]
    assert len(derived) == len(expected)
    for observation in derived:
        subject, visit, code = observation["identifier"][0]["value"].split("/")
        assert observation["valueQuantity"]["value"] == pytest.approx(expected[subject, code], rel=1e-12)
        endpoint = next(d for d in study.analysis.derived if d.code == code)
        named = [by_id[r["reference"].removeprefix("Observation/")]["identifier"][0]["value"] for r in observation["derivedFrom"]]
        assert named == [f"{subject}/{v}/{outcome}" for outcome, v in endpoint.sources]
        assert observation["subject"] == by_id[observation["derivedFrom"][-1]["reference"][12:]]["subject"]
    assert runner.invoke(main, ["validate", str(store.path)]).exit_code == 0
    again = json.loads(runner.invoke(main, ["derive", "--store", str(store.path), "--study", str(path), "--json"]).stdout)
    assert again["changes"] == {"created": 0, "updated": 0, "unchanged": len(expected)}
    # one source changed in the store: derive updates exactly the derived Observations built on it
    subject = next(s for s, code in expected if code == "SIXMWDAUC")
    source = next(o for o in store.read("Observation") if o["identifier"][0]["value"] == f"{subject}/M24/SIXMWD")
    source["valueQuantity"]["value"] += 10
    store.write([source])
    before = {o["id"]: o for o in derived}
    third = json.loads(runner.invoke(main, ["derive", "--store", str(store.path), "--study", str(path), "--json"]).stdout)
    assert third["changes"] == {"created": 0, "updated": 1, "unchanged": len(expected) - 1}
    changed = [o["identifier"][0]["value"] for o in store.read("Observation") if o["id"] in before and o != before[o["id"]]]
    assert changed == [f"{subject}/M36/SIXMWDAUC"]
    # analysis recomputes derived values and counts the written ones as such
    analyzed = json.loads(runner.invoke(main, ["analyze", "--store", str(store.path), "--study", str(path), "--json"]).stdout)
    assert analyzed["observations"]["skipped"] == {
        "a derived endpoint's value (fhir-msc derive): recomputed from its sources, not read": len(expected)}
    unmapped = runner.invoke(main, ["unmap", str(store.path), "--out", str(tmp_path / "tables-back"), "--study", str(path),
                                    "--json"])
    assert json.loads(unmapped.stdout)["accounts"]["Observation"]["skipped"] == analyzed["observations"]["skipped"]


def test_derive_without_derived_endpoints_says_what_to_add(tmp_path):
    result = CliRunner().invoke(main, ["derive", "--store", str(tmp_path)])
    assert result.exit_code == 4 and "add them under analysis.derived" in result.output


def test_derived_units_and_direction(tmp_path):
    path = derived_study(tmp_path, DERIVED + "    - {code: CEARATIO, display: CEA / CA125, kind: ratio, outcomes: [CEA, CA125], visit: M36}\n")
    text = path.read_text().replace("better: {CTNORM: higher,", "better: {SIXMWDAUC: higher, CTNORM: higher,")
    path.write_text(text)
    study = load_study(path)
    units = {code: study.analysed_outcome_by_code[code].unit for code in [*CODES, "CEARATIO"]}
    assert units == {"SIXMWDCHG": "m", "SIXMWDPCT": "%", "FEV1FVCR": "1", "FVCFEV1D": "L", "SIXMWDAUC": "m.d",
                     "CEARATIO": "ng/mL/(U/mL)"}
    assert study.analysis.better["SIXMWDAUC"] == "higher"


def test_a_published_result_of_a_derived_endpoint_is_verified(tmp_path, store):
    values = observed(store)
    study = load_study(derived_study(tmp_path))
    frame = analysis_frame(study, store)
    arm = dict(zip(frame["subject"], frame["arm"]))
    changes = {a: [] for a in ("MSC", "PBO")}
    for subject in {key[0] for key in values}:
        if (found := by_hand(values, subject).get("SIXMWDCHG")) is not None:
            changes[arm[subject]].append(found)
    means = {a: f"{sum(v) / len(v):.1f}" for a, v in changes.items()}
    entry = (f"    - {{outcome: SIXMWDCHG, visit: M36, n: {{MSC: {len(changes['MSC'])}, PBO: {len(changes['PBO'])}}}, "
             f"means: {{MSC: {means['MSC']}, PBO: {means['PBO']}}}}}\n")
    path = derived_study(tmp_path)
    text = path.read_text()  # the MSC entries hold for the whole cohort, not this subset: only the new one
    path.write_text(text[:text.index("  published:\n")] + "  published:\n" + entry)
    result = CliRunner().invoke(main, ["verify", "--store", str(store.path), "--study", str(path), "--json"])
    assert result.exit_code == 0, result.output
    (check,) = [c for c in json.loads(result.stdout)["results"] if c["outcome"] == "SIXMWDCHG"]
    assert check["matches"] and len(check["fields"]) == 4


# --- exact decimal arithmetic -------------------------------------------------------------------------------

ARITHMETIC = """  derived:
    - {code: CHG, display: change, kind: change, outcome: SIXMWD, baseline: M12, visit: M36}
    - {code: PCT, display: "% change", kind: percent-change, outcome: SIXMWD, baseline: M12, visit: M36}
    - {code: RATIO, display: ratio, kind: ratio, outcomes: [FEV1, FVC], visit: M36}
    - {code: DIFF, display: difference, kind: difference, outcomes: [FVC, FEV1], visit: M36}
    - {code: AUC, display: area, kind: auc, outcome: SIXMWD, visits: [M12, M24, M36]}
"""


@pytest.fixture(scope="module")
def arithmetic_study(tmp_path_factory):
    return load_study(derived_study(tmp_path_factory.mktemp("arithmetic"), ARITHMETIC))


def _frame(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["subject", "outcome", "visit", "value"])


def _endpoint(study, code: str):
    return next(endpoint for endpoint in study.analysis.derived if endpoint.code == code)


two_decimals = st.decimals(min_value=-9999, max_value=9999, places=2, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(two_decimals, two_decimals, two_decimals), min_size=1, max_size=6))
def test_derived_values_are_the_decimal_results_of_the_values_as_written(arithmetic_study, inputs):
    """Each kind computed from 2-decimal inputs equals decimal.Decimal's result of the same inputs, read as a float."""
    rows = []
    for number, (a, b, c) in enumerate(inputs):
        subject = f"S{number}"
        rows += [(subject, "SIXMWD", "M12", float(a)), (subject, "SIXMWD", "M24", float(b)), (subject, "SIXMWD", "M36", float(c)),
                 (subject, "FEV1", "M36", float(a)), (subject, "FVC", "M36", float(c))]
    frame = _frame(rows)
    days = [Decimal(arithmetic_study.visit_by_code[v].day) for v in ("M12", "M24", "M36")]
    expected: dict[str, dict[str, float]] = {code: {} for code in ("CHG", "PCT", "RATIO", "DIFF", "AUC")}
    for number, (a, b, c) in enumerate(inputs):
        subject = f"S{number}"
        expected["CHG"][subject] = float(c - a)
        expected["DIFF"][subject] = float(c - a)
        expected["AUC"][subject] = float((a + b) / 2 * (days[1] - days[0]) + (b + c) / 2 * (days[2] - days[1]))
        if a != 0:
            expected["PCT"][subject] = float((c - a) * 100 / a)
        if c != 0:
            expected["RATIO"][subject] = float(a / c)
    for code, want in expected.items():
        got = values(arithmetic_study, frame, _endpoint(arithmetic_study, code))
        assert got.to_dict() == want, code  # exactly: no binary rounding of the inputs' decimals


def test_equal_changes_are_tied_and_hodges_lehmann_keeps_its_method(arithmetic_study):
    """66.21 − 36.21 and 90.89 − 60.89 are both 30.00: the derived change is the change as written, ties included."""
    pairs = [(36.21, 66.21), (60.89, 90.89), (10.5, 20.25), (40.1, 55.35), (12.0, 13.37)]
    frame = _frame([row for number, (before, after) in enumerate(pairs)
                    for row in ((f"S{number}", "SIXMWD", "M12", before), (f"S{number}", "SIXMWD", "M36", after))])
    changes = values(arithmetic_study, frame, _endpoint(arithmetic_study, "CHG"))
    written = [float(Decimal(str(after)) - Decimal(str(before))) for before, after in pairs]
    assert changes.tolist() == written and changes["S0"] == changes["S1"] == 30.0
    control = np.array([5.5, 12.25, 30.0, 7.75])
    assert hodges_lehmann(changes.to_numpy(), control) == hodges_lehmann(np.array(written), control)
