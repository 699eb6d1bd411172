"""Baseline is not efficacy: comparisons at the baseline visit are baseline balance, no model adjusts an outcome for
itself, and the plan's multiplicity adjustment (Holm, Bonferroni, Benjamini-Hochberg) is applied per family and
checked by verify. The three-arm study's values come from its CSV tables (scipy, statsmodels), the adjusted p from
statsmodels' multipletests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.contingency_tables import StratifiedTable
from statsmodels.stats.multitest import multipletests
from test_json import valid
from test_three_arms import THREE, _wide, three  # noqa: F401 (three: the study mapped into a store, a fixture)

from fhir_msc.analysis.frame import analysis_frame, analyze, compare, verify
from fhir_msc.analysis.multiplicity import adjusted_p_values
from fhir_msc.analysis.published import at
from fhir_msc.analysis.report import comparison_table
from fhir_msc.cli import main
from fhir_msc.errors import StudyDefinitionError
from fhir_msc.study.definition import load_study

STATSMODELS = {"holm": "holm", "bonferroni": "bonferroni", "benjamini-hochberg": "fdr_bh"}


def variant(tmp_path: Path, plan: str = "", published: tuple[str, ...] = ()) -> Path:
    """The three-arm study file with ``plan`` lines added to its analysis section and ``published`` entries appended."""
    text = (THREE / "study.yaml").read_text()
    assert "  stratum: SEV\n" in text and text.endswith("made up}\n")
    text = text.replace("  stratum: SEV\n", f"  stratum: SEV\n{plan}") + "".join(f"    - {entry}\n" for entry in published)
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


# --- no model adjusts an outcome for itself ------------------------------------------------------------------------

def test_an_ancova_at_the_baseline_visit_does_not_adjust_the_outcome_for_itself(three, tmp_path):
    """covariates: [baseline] at the baseline visit would be the outcome itself (estimate 0, CI of width 0, a
    meaningless p): it is not used, the note says so, and the ANCOVA is the t-test of the baseline values."""
    _, store = three
    study = load_study(variant(tmp_path, "  effects: {continuous: adjusted-mean-difference}\n"))
    frame = analysis_frame(study, store)
    at_baseline = compare(study, frame, study.outcome_by_code["SCORE"], "W0", pair=(("HIGH",), ("PBO",)))
    data = _wide().dropna(subset=["SCORE_1"])
    high, pbo = (data.loc[data["ARMCD"] == arm, "SCORE_1"].to_numpy() for arm in ("HIGH", "PBO"))
    t = stats.ttest_ind(high, pbo)
    e = at_baseline.effect
    assert e.estimate == pytest.approx(high.mean() - pbo.mean()) and e.p_value == pytest.approx(t.pvalue)
    assert (e.lower, e.upper) == pytest.approx(tuple(t.confidence_interval()))
    assert "covariates: none" in e.method
    assert "covariate baseline not used: at W0 it is SCORE itself" in e.note
    later = compare(study, frame, study.outcome_by_code["SCORE"], "W12", pair=(("HIGH",), ("PBO",)))
    assert "covariates: baseline" in later.effect.method and "not used" not in later.effect.note


def test_a_stratum_that_is_the_outcome_itself_is_not_used(three, tmp_path):
    """SEV stratified by SEV at W0 would put every event in one stratum: one stratum is used, and the note says why."""
    _, store = three
    study = load_study(variant(tmp_path, "  effects: {binary: odds-ratio-mh}\n"))
    got = compare(study, analysis_frame(study, store), study.outcome_by_code["SEV"], "W0", pair=(("LOW",), ("PBO",)))
    data = _wide()
    table = [[int(((data["ARMCD"] == arm) & (data["sev"] == event)).sum()) for event in (1, 0)] for arm in ("LOW", "PBO")]
    crude = StratifiedTable([np.asarray(table, dtype=float)])
    assert got.effect.estimate == pytest.approx(crude.oddsratio_pooled)
    assert (got.effect.lower, got.effect.upper) == pytest.approx(crude.oddsratio_pooled_confint())
    assert "stratum SEV not used: at W0 it is SEV itself" in got.effect.note


# --- baseline balance ----------------------------------------------------------------------------------------------

def test_comparisons_at_the_baseline_visit_are_baseline_balance(three):
    study, store = three
    comparisons = analyze(study, analysis_frame(study, store))
    assert {(c.visit, c.baseline_balance) for c in comparisons} == {("W0", True), ("W12", False)}
    table = comparison_table(comparisons)
    assert list(table.columns[:3]) == ["outcome", "visit", "purpose"]
    assert set(table.loc[table["visit"] == "W0", "purpose"]) == {"baseline balance"}
    assert set(table.loc[table["visit"] == "W12", "purpose"]) == {"treatment effect"}


def test_analyze_at_the_baseline_visit_gives_the_balance_table_and_says_so(three):
    _, store = three
    argv = ["analyze", "--store", str(store.path), "--study", str(THREE / "study.yaml"), "--visit", "W0"]
    shown = CliRunner().invoke(main, [*argv, "--format", "csv"])
    assert shown.exit_code == 0, shown.output
    rows = shown.stdout.strip().splitlines()
    assert rows[0].startswith("outcome,visit,purpose,") and len(rows) == 5  # SCORE and SEV, two pairs each
    assert all(",W0,baseline balance," in row for row in rows[1:])
    assert ("note: 4 between-arm comparison(s): 0 treatment effect(s) and 4 baseline balance at W0 (tests of chance "
            "imbalance between the randomized arms, not treatment effects; in no multiplicity family). p is not "
            "adjusted for multiple comparisons") in shown.stderr
    document = valid(json.loads(CliRunner().invoke(main, [*argv, "--json"]).stdout), "analyze")
    assert [(c["baseline_balance"], c["p_adjusted"]) for c in document["comparisons"]] == [(True, None)] * 4


# --- multiplicity --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", STATSMODELS)
def test_p_is_adjusted_within_each_visit_as_statsmodels_multipletests_does(three, tmp_path, method):
    _, store = three
    study = load_study(variant(tmp_path, f"  multiplicity: {{method: {method}}}\n"))
    comparisons = analyze(study, analysis_frame(study, store))
    effects = [c for c in comparisons if c.visit == "W12"]
    assert len(effects) == 8 and all(c.effect.p_value is not None for c in effects)
    expected = multipletests([c.effect.p_value for c in effects], method=STATSMODELS[method])[1]
    assert [c.adjusted.p for c in effects] == pytest.approx(list(expected), rel=1e-12)
    assert {(c.adjusted.method, c.adjusted.family, c.adjusted.size) for c in effects} == {(method, "W12", 8)}
    assert [c.adjusted for c in comparisons if c.visit == "W0"] == [None] * 4  # baseline balance: in no family
    table = comparison_table(comparisons)
    row = table[(table["outcome"] == "RESP") & (table["comparison"] == "LOW vs PBO")].iloc[0]
    assert list(table.columns[table.columns.get_loc("p"):][:3]) == ["p", "p adjusted", "family"]
    low = next(c for c in effects if c.outcome == "RESP" and c.arms == ("LOW", "PBO"))
    assert row["p adjusted"] == f"{low.adjusted.p:.3f}" and row["family"].endswith(", 8 in W12")
    assert set(table.loc[table["visit"] == "W0", "p adjusted"]) == {"—"}


def test_a_named_family_is_adjusted_alone_and_an_outcome_asked_for_keeps_its_family(three, tmp_path):
    _, store = three
    study = load_study(variant(tmp_path, "  multiplicity: {method: holm, families: {primary: [SCORE, RESP]}}\n"))
    frame = analysis_frame(study, store)
    comparisons = analyze(study, frame, ["W12"])
    primary = [c for c in comparisons if c.outcome in ("SCORE", "RESP")]
    expected = multipletests([c.effect.p_value for c in primary], method="holm")[1]
    assert [c.adjusted.p for c in primary] == pytest.approx(list(expected), rel=1e-12)
    assert {c.adjusted.family for c in primary} == {"primary · W12"}
    assert [c.adjusted for c in comparisons if c.outcome not in ("SCORE", "RESP")] == [None] * 4  # GRADE, FLARE
    alone = analyze(study, frame, ["W12"], ["SCORE"])
    assert [c.adjusted for c in alone] == [c.adjusted for c in primary if c.outcome == "SCORE"]


@given(st.lists(st.one_of(st.sampled_from([0.0, 0.01, 0.04, 0.05, 0.5, 1.0]), st.floats(0, 1)), min_size=1, max_size=30),
       st.sampled_from(list(STATSMODELS)))
def test_adjusted_p_values_are_those_of_statsmodels(p_values, method):
    assert adjusted_p_values(p_values, method) == pytest.approx(
        list(multipletests(p_values, method=STATSMODELS[method])[1]), rel=1e-12, abs=1e-15)


# --- verify: a published adjusted p --------------------------------------------------------------------------------

def test_verify_checks_a_published_adjusted_p_in_its_family(three, tmp_path):
    """The plan's comparisons at W12 form the family; a published entry's own effect (an ANCOVA here) takes the place
    of the plan's comparison of its outcome and arms. A pair the plan does not compare is in no family."""
    _, store = three
    plan = "  multiplicity: {method: holm}\n"
    study = load_study(variant(tmp_path, plan))
    frame = analysis_frame(study, store)
    plain = analyze(study, frame, ["W12"])
    ancova = compare(study, frame, study.outcome_by_code["SCORE"], "W12", "adjusted-mean-difference",
                     pair=(("HIGH",), ("PBO",)))
    raw = [ancova.effect.p_value if (c.outcome, c.arms) == ("SCORE", ("HIGH", "PBO")) else c.effect.p_value
           for c in plain]
    holm = dict(zip([(c.outcome, c.arms) for c in plain], multipletests(raw, method="holm")[1]))
    resp, score = holm[("RESP", ("LOW", "PBO"))], holm[("SCORE", ("HIGH", "PBO"))]
    assert score != pytest.approx(next(c.adjusted.p for c in plain if (c.outcome, c.arms) == ("SCORE", ("HIGH", "PBO"))))
    entries = (f"{{outcome: RESP, visit: W12, treatment: LOW, control: PBO, p_adjusted: {at(resp, 3)}}}",
               f"{{outcome: SCORE, visit: W12, effect: adjusted-mean-difference, treatment: HIGH, control: PBO, "
               f"p_adjusted: {at(score, 4)}}}",
               "{outcome: RESP, visit: W12, treatment: LOW, control: PBO, p_adjusted: 0.999}",
               "{outcome: RESP, visit: W12, treatment: [HIGH, LOW], control: PBO, p_adjusted: 0.5}")
    study = load_study(variant(tmp_path, plan, entries))
    checks = verify(study, frame)[-4:]
    assert [check.mismatches for check in checks[:2]] == [[], []]
    assert checks[2].mismatches == [f"p_adjusted (holm): expected 0.999, got {at(resp, 3)} (3 decimals)"]
    assert checks[3].mismatches == ["p_adjusted: expected 0.5, not computable: the comparison is in no multiplicity "
                                    "family (its arms are no pair of the analysis plan, or its effect has no p)"]
    shown = CliRunner().invoke(main, ["verify", "--store", str(store.path), "--study", str(tmp_path / "study.yaml"),
                                      "--json"])
    document = valid(json.loads(shown.stdout), "verify")
    first = document["results"][-4]
    assert first["published"]["p_adjusted"] == {"value": float(at(resp, 3)), "decimals": 3, "comparator": ""}
    assert first["reproduced"]["p_adjusted"] == {"p": pytest.approx(resp), "method": "holm", "family": "W12", "size": 8}


@pytest.mark.parametrize("plan, entry, message", [
    ("", "{outcome: RESP, visit: W12, treatment: LOW, control: PBO, p_adjusted: 0.5}",
     "analysis.published[12].p_adjusted: name the adjustment in analysis.multiplicity (method: holm, bonferroni or "
     "benjamini-hochberg)"),
    ("  multiplicity: {method: holm}\n", "{outcome: SCORE, visit: W0, treatment: LOW, control: PBO, p_adjusted: 0.5}",
     "analysis.published[12].p_adjusted: W0 is the baseline visit: its comparisons are baseline balance, in no "
     "multiplicity family"),
    ("  multiplicity: {method: holm, families: {primary: [SCORE]}}\n",
     "{outcome: RESP, visit: W12, treatment: LOW, control: PBO, p_adjusted: 0.5}",
     "analysis.published[12].p_adjusted: RESP is in no family of analysis.multiplicity.families (primary)"),
    ("  multiplicity: {method: holm, families: {primary: [SCORE, WEIGHT]}}\n", "",
     "analysis.multiplicity.families.primary[1]: unknown outcome 'WEIGHT'"),
    ("  multiplicity: {method: holm, families: {primary: [SCORE], key: [RESP, SCORE]}}\n", "",
     "analysis.multiplicity.families.key[1]: SCORE is already in family primary: an outcome is in one family"),
    ("  multiplicity: {method: sidak}\n", "", "analysis.multiplicity.method: 'sidak' is not an allowed value: "
     "use one of holm, bonferroni, benjamini-hochberg"),
])
def test_the_plan_refuses_what_it_cannot_adjust(tmp_path, plan, entry, message):
    with pytest.raises(StudyDefinitionError, match="invalid study definition") as raised:
        load_study(variant(tmp_path, plan, (entry,) if entry else ()))
    assert message in str(raised.value)
