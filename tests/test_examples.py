"""The example studies shipped beside the MSC one (mappings/example-*.yaml, fixtures/example-*/): their published
numbers come from an independent script, and `verify` reproduces every field through FHIR; one changed Observation
breaks exactly the results built on it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fhir_msc import Store, get_version, jobs, load_study
from fhir_msc.analysis.report import forest_panels
from fhir_msc.cli import main
from fhir_msc.study.definition import DEFAULT_STUDY
from test_json import valid

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {"example-dose-ranging": 7, "example-zero-cell": 3}  # name -> published results


def definition(name: str) -> Path:
    return REPO / "mappings" / f"{name}.yaml"


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """Each example's tables mapped into its own store by the real map job (read-only: copy before changing)."""
    found = {}
    for name in EXAMPLES:
        store = tmp_path_factory.mktemp(name) / "store"
        mapped = jobs.map_tables(load_study(definition(name)), REPO / "fixtures" / name, store=store,
                                 version=get_version("R4"))
        assert mapped.rejections == [] and mapped.synthetic
        found[name] = store
    return found


def verify_json(study: Path, store: Path) -> dict:
    result = CliRunner().invoke(main, ["verify", "--study", str(study), "--store", str(store), "--json"])
    assert result.exit_code in (0, 6), result.output
    return valid(json.loads(result.stdout), "verify")


@pytest.mark.parametrize("name", EXAMPLES)
def test_published_numbers_are_what_the_independent_script_prints(name):
    """fixtures/NAME/published.py (pandas, scipy, statsmodels, lifelines; no fhir-msc) prints the YAML entries."""
    done = subprocess.run([sys.executable, str(REPO / "fixtures" / name / "published.py")], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "fhir_msc" not in (REPO / "fixtures" / name / "published.py").read_text()
    lines = done.stdout.splitlines()
    text = definition(name).read_text()
    assert len(lines) == EXAMPLES[name] == len(load_study(definition(name)).analysis.published)
    assert [line for line in lines if f"    {line}\n" not in text] == []


@pytest.mark.parametrize("name", [*EXAMPLES, "msc-covid19"])
def test_verify_reproduces_every_published_field_of_each_study(name, stores, demo_store):
    study = definition(name) if name in EXAMPLES else DEFAULT_STUDY
    document = verify_json(study, stores[name] if name in EXAMPLES else demo_store.path)
    fields = [f for result in document["results"] for f in result["fields"]]
    assert document["result"] == "reproduced" and document["counts"]["published"] == EXAMPLES.get(name, 3)
    assert len(fields) >= 2 * document["counts"]["published"] and all(f["matches"] for f in fields)


def _broken(study: Path, store: Path) -> dict[int, set[tuple[str, str | None]]]:
    """Published results (by their place in the study file) with the fields that no longer match."""
    results = verify_json(study, store)["results"]
    return {i: {(f["field"], f["arm"]) for f in r["fields"] if not f["matches"]} for i, r in enumerate(results)
            if not r["matches"]}


def _observation(store: Path, ending: str, keep=lambda o: True) -> dict:
    return next(o for o in Store(store).read("Observation") if o["identifier"][0]["value"].endswith(ending) and keep(o))


def _changed_copy(stores: dict[str, Path], name: str, tmp_path: Path) -> Path:
    shutil.copytree(stores[name], tmp_path / "store")
    return tmp_path / "store"


def test_a_later_recovery_breaks_only_the_time_to_event_results_of_its_arm(stores, tmp_path):
    """EXDR-001-001 (HIGH) recovered on day 14; moved to day 27, only HIGH vs PBO time-to-recovery results change."""
    store = _changed_copy(stores, "example-dose-ranging", tmp_path)
    recovery = _observation(store, "EXDR-001-001/D28/RECOVDT")
    assert recovery["valueDateTime"] == "2025-05-03"
    recovery["valueDateTime"] = "2025-05-16"
    Store(store).write([recovery])
    broken = _broken(definition("example-dose-ranging"), store)
    assert set(broken) == {4}  # the Cox entry on TTRECOV, HIGH vs PBO; LOW vs PBO (6) and all others hold
    assert {("estimate", None), ("p", None)} <= broken[4] and ("events", "HIGH") not in broken[4]


def test_a_changed_baseline_breaks_only_the_derived_endpoint_of_its_arm(stores, tmp_path):
    """A LOW subject's day-0 walk distance feeds the change from day 0 of LOW vs PBO, and nothing else."""
    store = _changed_copy(stores, "example-dose-ranging", tmp_path)
    study = load_study(definition("example-dose-ranging"))
    frame = jobs.analysis_frame(study, store)
    subject = sorted(set(frame[(frame["arm"] == "LOW") & (frame["outcome"] == "SIXMWDCHG")]["subject"]))[0]
    baseline = _observation(store, f"{subject}/D0/SIXMWD")
    baseline["valueQuantity"]["value"] -= 150  # a much larger gain: above every other change
    Store(store).write([baseline])
    broken = _broken(definition("example-dose-ranging"), store)
    assert set(broken) == {1} and ("estimate", None) in broken[1]


def test_one_death_recorded_as_survival_breaks_only_the_mortality_results(stores, tmp_path):
    store = _changed_copy(stores, "example-zero-cell", tmp_path)
    death = _observation(store, "/D28/DEATH", lambda o: o["valueCodeableConcept"]["coding"][0]["code"] == "Y")
    alive = _observation(store, "/D28/DEATH", lambda o: o["valueCodeableConcept"]["coding"][0]["code"] == "N")
    death["valueCodeableConcept"] = alive["valueCodeableConcept"]
    Store(store).write([death])
    broken = _broken(definition("example-zero-cell"), store)
    assert broken == {0: {("events", "PBO"), ("p", None)}, 1: {("upper", None)}}  # BLEED (2) holds


def test_analyze_reports_the_zero_cell_as_exact_and_no_events_as_not_estimable(stores):
    result = CliRunner().invoke(main, ["analyze", "--study", str(definition("example-zero-cell")), "--store",
                                       str(stores["example-zero-cell"]), "--json"])
    assert result.exit_code == 0, result.output
    death, bleed = valid(json.loads(result.stdout), "analyze")["comparisons"]
    assert death["effect"]["effect"] == "exact-odds-ratio" and death["effect"]["estimate"] == 0.0
    assert death["effect"]["lower"] == 0.0 and 0 < death["effect"]["upper"] < 1 and "zero cell" in death["effect"]["note"]
    assert "0.5 added" in death["estimates"]["odds-ratio"]["note"] or "Haldane" in death["estimates"]["odds-ratio"]["note"]
    assert bleed["effect"]["estimate"] is None and bleed["effect"]["note"].startswith("not estimable")
    assert all(bleed["estimates"][key]["estimate"] is None for key in ("odds-ratio", "exact-odds-ratio", "relative-risk"))


def test_a_published_not_estimable_is_checked_and_says_why(stores, tmp_path):
    """Bleeding, no event in either arm: the paper's "not estimable" matches, with the reason; one bleed on placebo
    makes the exact OR estimable (0, its CI from 0) and each published "not estimable" a mismatch."""
    document = verify_json(definition("example-zero-cell"), stores["example-zero-cell"])
    bleed = {f["field"]: f for f in document["results"][2]["fields"]}
    assert [bleed[name]["expected"] for name in ("estimate", "lower", "upper")] == ["not estimable"] * 3
    assert all(bleed[name]["matches"] and bleed[name]["got"] == "not estimable" for name in ("estimate", "lower", "upper"))
    assert bleed["estimate"]["note"] == "not estimable: no events in either arm"
    assert document["results"][2]["published"]["estimate"] == "not estimable"
    shown = CliRunner().invoke(main, ["verify", "--study", str(definition("example-zero-cell")), "--store",
                                      str(stores["example-zero-cell"])])
    assert "not estimable: no events in either arm" in shown.stdout
    store = _changed_copy(stores, "example-zero-cell", tmp_path)
    death = _observation(store, "/D28/DEATH", lambda o: o["valueCodeableConcept"]["coding"][0]["code"] == "Y")
    bled = _observation(store, "/D28/BLEED", lambda o: o["subject"] == death["subject"])  # on placebo: all deaths are
    bled["valueCodeableConcept"] = death["valueCodeableConcept"]  # the event answer, Y
    Store(store).write([bled])
    results = verify_json(definition("example-zero-cell"), store)["results"]
    assert [f["field"] for f in results[2]["fields"] if not f["matches"]] == ["estimate", "lower", "upper", "events"]
    assert "estimate: expected not estimable, got 0" in results[2]["mismatches"]


def test_analyze_compares_time_to_event_and_names_what_it_does_not_compare(stores):
    result = CliRunner().invoke(main, ["analyze", "--study", str(definition("example-dose-ranging")), "--store",
                                       str(stores["example-dose-ranging"]), "--json"])
    assert result.exit_code == 0, result.output
    document = valid(json.loads(result.stdout), "analyze")
    events = [c for c in document["comparisons"] if c["type"] == "time-to-event"]
    assert [(c["outcome"], c["visit"], c["arms"][0]["code"]) for c in events] == [("TTRECOV", "", "HIGH"), ("TTRECOV", "", "LOW")]
    assert set(events[0]["estimates"]) == {"cox-hazard-ratio", "log-rank", "km-median"}
    assert events[0]["arms"][0]["median"] == 7 and events[0]["p_values"]["log_rank"] == events[0]["estimates"]["log-rank"]["p"]
    assert document["not_compared"] == [{"outcome": "RECOVDT", "type": "datetime",
                                         "reason": "an event date: compared as time_to_event TTRECOV"}]
    assert "note: outcome(s) not compared: RECOVDT (an event date: compared as time_to_event TTRECOV)" in result.stderr


def test_analyze_names_ordinal_datetime_and_text_outcomes_it_does_not_compare(tmp_path):
    """types-study: an ordinal scale without analysis.effects.ordinal, an event date (compared only as the
    time_to_event entry TTRECOV), free text: each named with why, on stderr and in --json."""
    study = REPO / "tests" / "data" / "types-study" / "study.yaml"
    jobs.map_tables(load_study(study), REPO / "tests" / "data" / "types-study" / "tables", store=tmp_path / "store",
                    version=get_version("R4"))
    result = CliRunner().invoke(main, ["analyze", "--study", str(study), "--store", str(tmp_path / "store"), "--json"])
    assert result.exit_code == 0, result.output
    named = {entry["outcome"]: entry["reason"] for entry in valid(json.loads(result.stdout), "analyze")["not_compared"]}
    assert named == {"WHO": "ordinal: set analysis.effects.ordinal (proportional-odds or mann-whitney) to compare it "
                            "(a published entry may name either)",
                     "RECOVDT": "an event date: compared as time_to_event TTRECOV",
                     "COMMENT": "free text: mapped and round-tripped, not analysed"}
    assert "WHO (ordinal: set analysis.effects.ordinal" in result.stderr


def _readme_time_to_event_yaml() -> str:
    text = (REPO / "README.md").read_text()
    part = text[text.index("### Time to event\n"):]
    block = part[part.index("```yaml\n") + 8:]
    return block[:block.index("```\n")].removeprefix("analysis:\n")


def test_readme_time_to_event_snippet_verifies_on_the_example(stores, tmp_path):
    text = definition("example-dose-ranging").read_text()
    plan = text[:text.index("  effects:")] + text[text.index("  derived:"):text.index("  published:")]
    (tmp_path / "study.yaml").write_text(plan + _readme_time_to_event_yaml())
    document = verify_json(tmp_path / "study.yaml", stores["example-dose-ranging"])
    assert document["result"] == "reproduced" and [len(r["fields"]) for r in document["results"]] == [10, 1, 4]


@pytest.mark.parametrize(("entry", "message"), [
    ("{outcome: TTRECOV, visit: D28, estimate: 2.0}",
     "analysis.published[0].visit: time-to-event TTRECOV is over the whole follow-up: give no visit"),
    ("{outcome: TTRECOV, p: {test: fisher, value: 0.5}}",
     "analysis.published[0].p.test: 'fisher' is not a test of cox-hazard-ratio (the plan's effect for this outcome): "
     "use wald, likelihood-ratio, log-rank, or leave test out"),
    ("{outcome: TTRECOV, means: {HIGH: 3.0}}",
     "analysis.published[0].means: does not apply to time-to-event TTRECOV (n, counts, medians do)"),
    ("{outcome: TTRECOV, effect: hodges-lehmann}",
     "analysis.published[0].effect: 'hodges-lehmann' does not apply to time-to-event outcome TTRECOV: use "
     "cox-hazard-ratio, log-rank, km-median"),
    ("{outcome: WHOCPS, estimate: 2.0}", "analysis.published[0].visit: give the visit of WHOCPS"),
    ("{outcome: TTRECOV, covariates: [age]}",
     "analysis.published[0]: covariates and stratum do not apply to time-to-event TTRECOV (unadjusted)"),
])
def test_a_time_to_event_entry_that_does_not_fit_is_refused_on_load(tmp_path, entry, message):
    text = definition("example-dose-ranging").read_text()
    pair = "treatment: HIGH, control: PBO, " if "TTRECOV" in entry or "WHOCPS" in entry else ""
    (tmp_path / "study.yaml").write_text(text[:text.index("  published:")]
                                         + f"  published:\n    - {entry[:1]}{pair}{entry[1:]}\n")
    result = CliRunner().invoke(main, ["verify", "--study", str(tmp_path / "study.yaml"), "--store", str(tmp_path)])
    assert result.exit_code == 4 and message in result.output, result.output


def test_time_to_event_rows_in_the_table_the_forest_plot_and_the_report(stores, tmp_path):
    study = load_study(definition("example-dose-ranging"))
    result = CliRunner().invoke(main, ["analyze", "--study", str(definition("example-dose-ranging")), "--store",
                                       str(stores["example-dose-ranging"]), "--outcome", "TTRECOV"])
    assert result.exit_code == 0, result.output
    assert "17 events/18; KM median 7 d" in result.stdout and "log-rank 0.062" in result.stdout
    comparisons = jobs.analyze(study, stores["example-dose-ranging"], outcomes=["TTRECOV"]).comparisons
    at_d0 = jobs.analyze(study, stores["example-dose-ranging"], visits=["D0"]).comparisons  # --visit: still there
    assert [(c.outcome, c.visit) for c in at_d0][-2:] == [("TTRECOV", ""), ("TTRECOV", "")]
    (panel,) = forest_panels(comparisons, study)[1]
    assert panel.log and panel.title == "Hazard ratio, treatment vs control · the event is good"
    assert [row.label for row in panel.rows] == ["Time to recovery · follow-up · Drug Z 200 mg vs Placebo",
                                                 "Time to recovery · follow-up · Drug Z 50 mg vs Placebo"]
    example = jobs.example_demo(study, REPO / "fixtures" / "example-dose-ranging", tmp_path / "demo")
    assert "<h3 id='time-to-event'>Time to event" in example.report["html"].read_text()


def test_dose_ranging_day_0_is_baseline_balance_and_its_primary_endpoint_is_adjusted_by_holm(stores):
    from statsmodels.stats.multitest import multipletests

    result = CliRunner().invoke(main, ["analyze", "--study", str(definition("example-dose-ranging")), "--store",
                                       str(stores["example-dose-ranging"]), "--json"])
    assert result.exit_code == 0, result.output
    comparisons = valid(json.loads(result.stdout), "analyze")["comparisons"]
    assert {(c["outcome"], c["visit"]) for c in comparisons if c["baseline_balance"]} == {("SIXMWD", "D0")}
    primary = [c for c in comparisons if c["p_adjusted"]]
    assert [(c["outcome"], c["arms"][0]["code"]) for c in primary] == [("SIXMWDCHG", "HIGH"), ("SIXMWDCHG", "LOW")]
    expected = multipletests([c["effect"]["p"] for c in primary], method="holm")[1]
    assert [c["p_adjusted"]["p"] for c in primary] == pytest.approx(list(expected), rel=1e-12)
    assert {(c["p_adjusted"]["family"], c["p_adjusted"]["size"]) for c in primary} == {("primary · D28", 2)}


def test_time_to_event_entries_are_one_family_over_the_follow_up(stores, tmp_path):
    """A family of time_to_event entries is adjusted over the whole follow-up, and verify checks its adjusted p."""
    from statsmodels.stats.multitest import multipletests

    from fhir_msc.analysis.published import at

    text = definition("example-dose-ranging").read_text()
    assert text.count("families: {primary: [SIXMWDCHG]}") == 1
    text = text.replace("families: {primary: [SIXMWDCHG]}", "families: {primary: [SIXMWDCHG], recovery: [TTRECOV]}")
    (tmp_path / "study.yaml").write_text(text)
    store = str(stores["example-dose-ranging"])
    analyzed = CliRunner().invoke(main, ["analyze", "--study", str(tmp_path / "study.yaml"), "--store", store,
                                         "--outcome", "TTRECOV", "--json"])
    recovery = valid(json.loads(analyzed.stdout), "analyze")["comparisons"]
    expected = multipletests([c["effect"]["p"] for c in recovery], method="holm")[1]
    assert [c["p_adjusted"] for c in recovery] == [
        {"p": pytest.approx(p, rel=1e-12), "method": "holm", "family": "recovery · follow-up", "size": 2}
        for p in expected]
    cox = "p: {test: log-rank, value: 0.062}, counts"
    assert text.count(cox) == 1
    (tmp_path / "study.yaml").write_text(text.replace(cox, cox.replace(", counts", f", p_adjusted: {at(expected[0], 3)}, counts")))
    results = verify_json(tmp_path / "study.yaml", stores["example-dose-ranging"])["results"]
    checked = [f for r in results for f in r["fields"] if f["field"] == "p_adjusted"]
    assert [(f["test"], f["got"], f["matches"]) for f in checked] == [
        ("holm", "0.002", True), ("holm", "0.168", True), ("holm", at(expected[0], 3), True)]
