"""FHIR → DataFrame → comparisons → verify, on the MSC cohort and on a second, made-up study."""

import json
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from click.testing import CliRunner

from fhir_msc import Store, get_version, load_study
from fhir_msc.analysis import engine_frame
from fhir_msc.analysis.frame import (
    CENSORED,
    DUPLICATE,
    NOT_RANDOMIZED,
    _holds,
    analysis_frame,
    analyze,
    compare,
    frame_and_account,
    verify,
)
from fhir_msc.analysis.stats import EXACT_NOT_ASKED, odds_ratio_exact
from fhir_msc.cli import main
from fhir_msc.errors import ExitCode, InputError
from fhir_msc.fhir.bundle import open_resources, write_bundle
from fhir_msc.fhir.mapping import tables_to_fhir
from fhir_msc.fhir.unmapping import encounter_prefilter
from fhir_msc.store.source import BundleSource
from fhir_msc.tables.sdtm import RejectLog

MINI = Path(__file__).parents[1] / "data" / "mini-study"
ENGINES = {"python": frame_and_account, "duckdb": engine_frame.frame_and_account}


@pytest.fixture(params=list(ENGINES))
def frames(request):
    """``frame_and_account`` of one engine, checked against the Python reader's: each test runs on both."""
    def run(study, source, visits=None):
        frame, account = ENGINES[request.param](study, source, visits)
        expected_frame, expected_account = frame_and_account(study, source, visits)
        assert frame.equals(expected_frame) and list(frame.dtypes) == list(expected_frame.dtypes)
        assert account == expected_account
        return frame, account
    return run


def test_both_engines_give_the_same_frame_and_account(study, mapped):
    _, store = mapped
    for visits in (None, ["M36"]):
        python_frame, python_account = frame_and_account(study, store, visits)
        duckdb_frame, duckdb_account = engine_frame.frame_and_account(study, store, visits)
        assert duckdb_frame.equals(python_frame) and list(duckdb_frame.dtypes) == list(python_frame.dtypes)
        assert duckdb_account == python_account


def test_frame_has_one_row_per_subject_visit_outcome(study, mapped):
    _, store = mapped
    frame = analysis_frame(study, store)
    assert not frame.duplicated(["subject", "visit", "outcome"]).any()
    assert set(frame["arm"]) == {"MSC", "PBO"}
    assert frame[frame["outcome"] == "SF36GH"]["unit"].eq("{score}").all()


def test_store_and_bundle_give_the_same_frame(study, mapped, tmp_path):
    _, store = mapped
    write_bundle(store.read_all(), tmp_path / "b.json")
    a = analysis_frame(study, store)
    b = analysis_frame(study, open_resources(tmp_path / "b.json"))
    assert a.equals(b)


def test_a_visit_filtered_frame_equals_the_full_frame_filtered(study, mapped):
    _, store = mapped
    full = analysis_frame(study, store)
    only = analysis_frame(study, store, visits=["M36", "M12"])
    expected = full[full["visit"].isin(["M36", "M12"])].reset_index(drop=True)
    assert len(only) > 1000 and only.equals(expected)


def test_the_encounter_prefilter_skips_only_plain_references_to_other_encounters():
    passes = encounter_prefilter(["wanted"])

    def line(encounter: dict | None, **more) -> bytes:
        return orjson.dumps({"resourceType": "Observation", "id": "o", **({"encounter": encounter} if encounter else {}), **more})
    assert passes(line({"reference": "Encounter/wanted"}))
    assert not passes(line({"reference": "Encounter/other"}))
    assert passes(line({"reference": "http://elsewhere.example/fhir/Encounter/other"}))  # left to the parser
    assert passes(line(None))
    assert passes(line({"reference": "Encounter/other"}, contained=[{"encounter": {"reference": "Encounter/wanted"}}]))
    assert passes(line({"reference": "Encounter/other"}).replace(b"Encounter/other", b"Encounter\\/other"))


def test_an_unknown_visit_is_a_clear_error(study, mapped):
    _, store = mapped
    with pytest.raises(InputError, match="unknown visit M99: use one of"):
        analysis_frame(study, store, visits=["M99"])


def test_published_month36_results_are_reproduced(study, mapped):
    _, store = mapped
    checks = verify(study, analysis_frame(study, store))
    assert [c.published.outcome for c in checks] == ["CTNORM", "SF36GH", "REINF"]
    assert all(c.matches for c in checks), [c.mismatches for c in checks]


def test_a_changed_observation_breaks_verification(study, mapped, tmp_path):
    _, store = mapped
    frame = analysis_frame(study, store)
    index = frame[(frame["outcome"] == "CTNORM") & (frame["visit"] == "M36") & (frame["answer"] == "NORMAL")].index[0]
    frame.loc[index, "answer"] = "ABNORMAL"
    check = verify(study, frame)[0]
    assert not check.matches and "PBO events: expected 10, got 9 (0 decimals)" in check.mismatches


def test_other_month36_outcomes_are_not_significant(study, mapped):
    _, store = mapped
    published = {r.outcome for r in study.analysis.published} | {"SF36GH"}
    rows = analyze(study, analysis_frame(study, store), visits=["M36"])
    assert {r.outcome for r in rows} >= {"CTTSS", "SIXMWD", "FVC", "CEA"}
    assert all(r.effect.p_value > 0.05 for r in rows if r.outcome not in published)


def test_compare_computes_the_exact_odds_ratio_only_as_the_effect_or_when_asked(study, mapped):
    _, store = mapped
    frame, ctnorm = analysis_frame(study, store, ["M36"]), study.outcome_by_code["CTNORM"]
    planned = compare(study, frame, ctnorm, "M36")
    assert planned.summary.exact_odds_ratio.note == EXACT_NOT_ASKED and planned.key == "odds-ratio"
    (a, c), (n1, n2) = planned.summary.events, planned.n
    exact = odds_ratio_exact(a, n1 - a, c, n2 - c)
    as_effect = compare(study, frame, ctnorm, "M36", "exact-odds-ratio")
    asked = compare(study, frame, ctnorm, "M36", exact_odds_ratio=True)
    assert as_effect.effect == as_effect.summary.exact_odds_ratio == asked.summary.exact_odds_ratio == exact
    assert asked.effect == planned.effect and asked.key == "odds-ratio"
    binary = [c for c in analyze(study, frame, ["M36"], exact_odds_ratio=True) if c.kind == "binary"]
    assert len(binary) > 1 and all(c.summary.exact_odds_ratio == odds_ratio_exact(
        c.summary.events[0], c.n[0] - c.summary.events[0], c.summary.events[1], c.n[1] - c.summary.events[1])
        for c in binary)


def test_a_cells_rows_are_found_on_the_category_codes_as_isin_finds_them():
    column = pd.Series(pd.Categorical(["MSC", None, "PBO", "LOW", "MSC", None], categories=["MSC", "PBO", "LOW"]))
    for values in (("MSC",), ("PBO", "LOW"), ("NONE",), ("MSC", "NONE"), ()):
        assert _holds(column, values).tolist() == column.isin(values).tolist()
        assert _holds(column, values, np.array([1, 3, 4])).tolist() == column.isin(values).to_numpy()[[1, 3, 4]].tolist()


def test_a_second_study_needs_only_its_yaml(tmp_path):
    mini = load_study(MINI / "study.yaml")
    store = Store(tmp_path)
    log = RejectLog(None)
    store.write(tables_to_fhir(mini, MINI / "tables", get_version("R4"), log))
    assert log.rejections == []
    checks = verify(mini, analysis_frame(mini, store))
    assert len(checks) == 2 and all(c.matches for c in checks), [c.mismatches for c in checks]


@pytest.mark.parametrize("fmt", ["table", "csv", "markdown", "html"])  # json: tests/test_json.py
def test_analyze_command_formats(cohort, tmp_path, fmt):
    runner = CliRunner()
    assert runner.invoke(main, ["map", str(cohort), "--store", str(tmp_path / "s")]).exit_code == 0
    result = runner.invoke(main, ["analyze", "--store", str(tmp_path / "s"), "--visit", "M36", "--outcome", "REINF",
                                  "--format", fmt, "--plot", str(tmp_path / "f.png")])
    assert result.exit_code == 0, result.output
    assert "REINF" in result.output and "0.54" in result.output
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_verify_exits_6_on_mismatch(tmp_path):
    runner = CliRunner()
    study_yaml = (MINI / "study.yaml").read_text().replace("upper: 61.84", "upper: 70.00")
    (tmp_path / "study.yaml").write_text(study_yaml)
    runner.invoke(main, ["map", str(MINI / "tables"), "--store", str(tmp_path / "s"), "--study", str(tmp_path / "study.yaml")])
    result = runner.invoke(main, ["verify", "--store", str(tmp_path / "s"), "--study", str(tmp_path / "study.yaml")])
    assert result.exit_code == ExitCode.MISMATCH
    assert "MISMATCH: upper: expected 70.00, got 61.84 (2 decimals)" in result.output and "reproduced 1/2" in result.output


# --- the account of Observations read ----------------------------------------------------

def _cohort_with(store, *changes):
    """The cohort's resources with some Observations changed or added (as a bundle source)."""
    resources = list(store.read_all())
    for change in changes:
        resources = change(resources)
    return BundleSource(resources)


def _first(resources, outcome, kind):
    return next(r for r in resources if r["resourceType"] == "Observation" and kind in r
                and r["identifier"][0]["value"].endswith(f"/M36/{outcome}"))


def test_the_observation_account_balances_on_the_cohort(study, mapped, frames):
    _, store = mapped
    for visits in (None, ["M36"]):
        frame, account = frames(study, store, visits)
        assert account.read == store.counts()["Observation"] and account.used == len(frame) and account.balanced
    assert account.skipped == {"at a visit not asked for": store.counts()["Observation"] - len(frame)}


def test_an_unknown_answer_code_is_reported_not_silently_dropped(study, demo_store, tmp_path, frames):
    def odd_answer(resources):
        reinf = _first(resources, "REINF", "valueCodeableConcept")
        reinf["valueCodeableConcept"] = {"coding": [{"system": "http://snomed.info/sct", "code": "261665006"}]}
        return resources
    frame, account = frames(study, _cohort_with(demo_store, odd_answer))
    assert account.skipped == {"unknown answer code": 1} and account.balanced and account.used == len(frame)
    write_bundle(_cohort_with(demo_store, odd_answer).read_all(), tmp_path / "b.json")
    result = CliRunner().invoke(main, ["analyze", "--store", str(tmp_path / "b.json"), "--visit", "M36", "--outcome", "REINF"])
    assert result.exit_code == 0
    assert "Observations: 9554 read = 1693 in the frame + 7860 at a visit not asked for + 1 unknown answer code" in result.stderr
    assert "dropped: 1 × unknown answer code: Observation/" in result.stderr and "(REINF: http://snomed.info/sct|261665006)" in result.stderr
    assert "unknown answer code" not in result.stdout


def test_a_duplicate_under_another_id_is_counted_once(study, demo_store, frames):
    before = analyze(study, analysis_frame(study, demo_store), visits=["M36"], outcomes=["SF36GH"])[0]

    def pushed_twice(resources):
        gh = _first(resources, "SF36GH", "valueQuantity")
        return [*resources, {**gh, "id": "server-assigned-id", "valueQuantity": {**gh["valueQuantity"], "value": 1.0}}]
    frame, account = frames(study, _cohort_with(demo_store, pushed_twice))
    first = frames(study, demo_store)[0]
    assert frame["value"].equals(first["value"])  # the first read is kept
    assert account.read == demo_store.counts()["Observation"] + 1 and account.used == len(frame) and account.balanced
    assert list(account.skipped.values()) == [1] and account.skipped.get(DUPLICATE) == 1
    after = analyze(study, frame, visits=["M36"], outcomes=["SF36GH"])[0]
    assert after.n == before.n and after.effect == before.effect
    assert not frame.duplicated(["subject", "visit", "outcome"]).any()


def test_every_reason_to_drop_an_observation_is_counted(study, demo_store, frames):
    def spoil(resources):
        observations = [r for r in resources if r["resourceType"] == "Observation"]
        quantity = _first(resources, "SF36GH", "valueQuantity")
        quantity["valueQuantity"] = {**quantity["valueQuantity"], "comparator": "<", "value": 10}
        other = _first(resources, "CEA", "valueQuantity")
        other["code"] = {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]}
        observations[0]["subject"] = {"reference": "Patient/nobody"}
        observations[1]["encounter"] = {"reference": "Encounter/nowhere"}
        unrandomized = [r for r in resources if r["resourceType"] != "ResearchSubject"
                        or r["subject" if "subject" in r else "individual"]["reference"] != observations[-1]["subject"]["reference"]]
        return unrandomized
    frame, account = frames(study, _cohort_with(demo_store, spoil))
    assert account.balanced and account.used == len(frame) and account.read == demo_store.counts()["Observation"]
    assert {reason: n for reason, n in account.skipped.items() if reason != NOT_RANDOMIZED} == {
        CENSORED: 1, "no outcome code of this study": 1, "unknown subject": 1, "unknown visit": 1}
    assert account.skipped[NOT_RANDOMIZED] > 50  # every finding of the subject whose ResearchSubject is gone


def test_verify_json_carries_the_observations_account(tmp_path):
    runner = CliRunner()
    runner.invoke(main, ["map", str(MINI / "tables"), "--store", str(tmp_path / "s"), "--study", str(MINI / "study.yaml")])
    result = runner.invoke(main, ["verify", "--store", str(tmp_path / "s"), "--study", str(MINI / "study.yaml"), "--json"])
    data = json.loads(result.stdout)
    assert len(data["results"]) == 2 and data["observations"]["read"] == Store(tmp_path / "s").counts()["Observation"]
    assert data["observations"]["used"] + sum(data["observations"]["skipped"].values()) == data["observations"]["read"]


def test_an_unknown_encounter_at_chosen_visits_is_counted_as_each_source_reads_it(study, demo_store, tmp_path, frames):
    def nowhere(resources):
        next(r for r in resources if r["resourceType"] == "Observation")["encounter"] = {"reference": "Encounter/nowhere"}
        return resources
    bundle = _cohort_with(demo_store, nowhere)
    assert frames(study, bundle, ["M36"])[1].skipped.get("unknown visit") == 1  # a bundle has no lines to skip unread
    store = Store(tmp_path / "s")
    store.write(bundle.read_all())
    assert "unknown visit" not in frames(study, store, ["M36"])[1].skipped  # a store's line is skipped unparsed
