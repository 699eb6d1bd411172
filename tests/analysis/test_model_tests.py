"""The p of a fitted model is named for what it tests: wald and likelihood-ratio of the treatment coefficient of
logistic, ANCOVA, proportional-odds and Cox models, checked against statsmodels and lifelines; a test that does not
belong to an entry's effect is refused on load, never replaced by an unadjusted one."""

import math
from typing import get_args

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats

from fhir_msc import jobs
from fhir_msc.analysis.models import adjusted_mean_difference, adjusted_odds_ratio, proportional_odds
from fhir_msc.analysis.survival import cox_hazard_ratio
from fhir_msc.errors import StudyDefinitionError
from fhir_msc.fhir.mapping import tables_to_fhir
from fhir_msc.fhir.versions import get_version
from fhir_msc.store.ndjson import Store
from fhir_msc.study.definition import EFFECT_TESTS, AnyEffect, load_study
from fhir_msc.tables.sdtm import RejectLog
from test_three_arms import THREE, _wide


def _lr(full, reduced) -> float:
    """The likelihood-ratio p of two nested statsmodels fits, by hand."""
    return stats.chi2.sf(2 * (full.llf - reduced.llf), full.df_model - reduced.df_model)


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    rng = np.random.default_rng(19)
    frame = pd.DataFrame({"treated": np.r_[np.ones(60), np.zeros(60)], "age": rng.normal(55, 12, 120),
                          "female": rng.integers(0, 2, 120).astype(float)})
    frame["value"] = 10 - 2.5 * frame["treated"] + 0.2 * frame["age"] + rng.normal(0, 4, 120)
    eta = -3 + 0.9 * frame["treated"] + 0.04 * frame["age"]
    frame["event"] = (rng.random(120) < 1 / (1 + np.exp(-eta))).astype(float)
    frame["level"] = np.digitize(frame["value"] + rng.normal(0, 2, 120), [16, 20, 24])
    return frame


def test_logistic_wald_and_likelihood_ratio_are_statsmodels(data):
    got = adjusted_odds_ratio(data["event"], data["treated"], data[["age", "female"]])
    full = smf.logit("event ~ treated + age + female", data).fit(disp=0)
    reduced = smf.logit("event ~ age + female", data).fit(disp=0)
    assert got.p_value == pytest.approx(full.pvalues["treated"], rel=1e-6)
    assert got.likelihood_ratio_p == pytest.approx(_lr(full, reduced), rel=1e-6)
    alone = adjusted_odds_ratio(data["event"], data["treated"])  # without covariates: statsmodels' LR vs the null
    assert alone.likelihood_ratio_p == pytest.approx(smf.logit("event ~ treated", data).fit(disp=0).llr_pvalue, rel=1e-6)


def test_ancova_wald_is_the_t_test_and_likelihood_ratio_is_statsmodels(data):
    got = adjusted_mean_difference(data["value"], data["treated"], data[["age"]])
    full, reduced = smf.ols("value ~ treated + age", data).fit(), smf.ols("value ~ age", data).fit()
    assert got.p_value == pytest.approx(full.pvalues["treated"], rel=1e-9)
    assert got.likelihood_ratio_p == pytest.approx(full.compare_lr_test(reduced)[1], rel=1e-9)


def test_proportional_odds_wald_and_likelihood_ratio_are_statsmodels(data):
    from statsmodels.miscmodels.ordinal_model import OrderedModel

    level = pd.Series(pd.Categorical(data["level"], ordered=True))

    def fit(columns):
        return OrderedModel(level, data[columns], distr="logit").fit(method="newton", disp=False, maxiter=100)
    got = proportional_odds(data["level"].to_numpy(), data["treated"], data[["age"]])
    full, reduced = fit(["treated", "age"]), fit(["age"])
    assert got.p_value == pytest.approx(full.pvalues["treated"], rel=1e-4)
    assert got.likelihood_ratio_p == pytest.approx(stats.chi2.sf(2 * (full.llf - reduced.llf), 1), rel=1e-4)
    two = (data["level"] >= 2).astype(int)  # two levels: the proportional-odds model is the logistic one
    logistic = smf.logit("event ~ treated", data.assign(event=two)).fit(disp=0)
    assert proportional_odds(two.to_numpy(), data["treated"]).likelihood_ratio_p == pytest.approx(logistic.llr_pvalue,
                                                                                                  rel=1e-5)


def test_cox_wald_is_statsmodels_and_likelihood_ratio_is_lifelines():
    from lifelines import CoxPHFitter
    from statsmodels.duration.hazard_regression import PHReg

    rng = np.random.default_rng(7)
    times = np.round(rng.exponential(10, 40)) + 1  # whole days: ties, Efron's method
    events = rng.random(40) < 0.8
    treated = np.r_[np.ones(20), np.zeros(20)]
    times[:20] *= 1.8
    got = cox_hazard_ratio((times[:20], events[:20]), (times[20:], events[20:]))
    phreg = PHReg(times, treated[:, None], status=events.astype(int), ties="efron").fit()
    lifelines = CoxPHFitter().fit(pd.DataFrame({"t": times, "e": events, "treated": treated}), "t", "e")
    assert got.p_value == pytest.approx(phreg.pvalues[0], rel=1e-3)
    assert got.likelihood_ratio_p == pytest.approx(lifelines.log_likelihood_ratio_test().p_value, rel=1e-9)
    null = CoxPHFitter().fit(pd.DataFrame({"t": times, "e": events}), "t", "e").log_likelihood_  # no covariate
    assert got.likelihood_ratio_p == pytest.approx(stats.chi2.sf(2 * (phreg.llf - null), 1), rel=1e-4)


def test_every_effect_names_its_tests():
    assert set(EFFECT_TESTS) == {key for effects in get_args(AnyEffect) for key in get_args(effects)}
    assert all(set(EFFECT_TESTS[key]) == {"wald", "likelihood-ratio"}
               for key in ("adjusted-odds-ratio", "adjusted-mean-difference", "proportional-odds"))


def _independent_p() -> list[tuple[str, str, float]]:
    """(entry, test, p) of the three-arm study's fitted models, from its CSVs with statsmodels' formula API."""
    from statsmodels.miscmodels.ordinal_model import OrderedModel

    data = _wide()

    def pair(treatment):
        part = data[data["ARMCD"].isin([*treatment, "PBO"])].copy()
        part["treated"] = part["ARMCD"].isin(treatment).astype(float)
        return part
    score = pair(["HIGH"]).dropna(subset=["SCORE_1"])
    ancova, without = smf.ols("SCORE_2 ~ treated + SCORE_1", score).fit(), smf.ols("SCORE_2 ~ SCORE_1", score).fit()
    resp = pair(["HIGH", "LOW"]).dropna(subset=["SCORE_1"])
    logit = smf.logit("resp ~ treated + SCORE_1 + female", resp).fit(disp=0)
    logit_without = smf.logit("resp ~ SCORE_1 + female", resp).fit(disp=0)
    grade = pair(["HIGH"])
    levels = pd.Series(pd.Categorical(grade["GRADE_2"], categories=["MILD", "MODERATE", "SEVERE"], ordered=True))
    ordinal = OrderedModel(levels, grade[["treated"]].reset_index(drop=True), distr="logit").fit(
        method="bfgs", disp=False, gtol=1e-8, maxiter=1000)
    counts = levels.value_counts().to_numpy(float)
    null = float((counts * np.log(counts / counts.sum())).sum())  # thresholds alone
    return [("SCORE", "wald", ancova.pvalues["treated"]), ("SCORE", "likelihood-ratio", _lr(ancova, without)),
            ("RESP", "wald", logit.pvalues["treated"]), ("RESP", "likelihood-ratio", _lr(logit, logit_without)),
            ("GRADE", "wald", ordinal.pvalues["treated"]),
            ("GRADE", "likelihood-ratio", stats.chi2.sf(2 * (ordinal.llf - null), 1))]


ENTRIES = {"SCORE": "{outcome: SCORE, visit: W12, effect: adjusted-mean-difference, treatment: HIGH, control: PBO",
           "RESP": "{outcome: RESP, visit: W12, effect: adjusted-odds-ratio, treatment: [HIGH, LOW], control: PBO, "
                   "covariates: [SCORE, sex]",
           "GRADE": "{outcome: GRADE, visit: W12, effect: proportional-odds, treatment: HIGH, control: PBO, covariates: []"}


@pytest.fixture(scope="module")
def three_store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("three-p") / "store")
    store.write(tables_to_fhir(load_study(THREE / "study.yaml"), THREE / "tables", get_version("R4"), RejectLog(None)))
    return store


def _study_with(tmp_path, entries: list[str]):
    path = tmp_path / "study.yaml"
    path.write_text((THREE / "study.yaml").read_text() + "".join(f"    - {entry}\n" for entry in entries))
    return load_study(path)


def test_verify_checks_the_wald_and_likelihood_ratio_p_of_each_fitted_model(three_store, tmp_path):
    expected = _independent_p()
    study = _study_with(tmp_path, [f"{ENTRIES[outcome]}, p: {{test: {test}, value: {p:.7f}}}}}"
                                   for outcome, test, p in expected])
    checks = jobs.verify(study, three_store.path).checks[12:]
    assert [c.mismatches for c in checks] == [[]] * len(expected)
    assert [c.fields[0].test for c in checks] == [test for _, test, _ in expected]
    assert expected[0][2] < 1e-4 < stats.ttest_ind(*[g["SCORE_2"] for _, g in _wide()[lambda d: d["ARMCD"] != "LOW"]
                                                     .groupby("ARMCD")]).pvalue  # adjusted and unadjusted differ


def test_a_p_whose_test_is_not_named_lists_the_tests_of_the_effect_that_give_it(three_store, tmp_path):
    (_, _, wald), (_, _, ratio) = _independent_p()[:2]
    study = _study_with(tmp_path, [f"{ENTRIES['SCORE']}, p: {wald:.6f}}}", f"{ENTRIES['SCORE']}, p: {ratio:.7f}}}",
                                   f"{ENTRIES['SCORE']}, p: 0.004}}"])
    wald_only, ratio_only, unadjusted = (c.fields[0] for c in jobs.verify(study, three_store.path).checks[12:])
    assert (wald_only.matches, wald_only.test) == (True, "wald")
    assert (ratio_only.matches, ratio_only.test) == (True, "likelihood-ratio")
    assert not unadjusted.matches and unadjusted.note == (
        f"no test of adjusted-mean-difference gives it: wald {wald:.2e}; likelihood-ratio {ratio:.2e}")


@pytest.mark.parametrize(("entry", "effect", "tests"), [
    (ENTRIES["SCORE"] + ", p: {test: t-pooled, value: 0.004}}", "adjusted-mean-difference", "wald, likelihood-ratio"),
    (ENTRIES["RESP"] + ", p: {test: fisher, value: 0.09}}", "adjusted-odds-ratio", "wald, likelihood-ratio"),
    (ENTRIES["GRADE"] + ", p: {test: mann-whitney, value: 0.01}}", "proportional-odds", "wald, likelihood-ratio"),
    ("{outcome: RESP, visit: W12, effect: odds-ratio-mh, treatment: HIGH, control: PBO, p: {test: fisher, value: 0.2}}",
     "odds-ratio-mh", "cochran-mantel-haenszel"),
    ("{outcome: FLARE, visit: W12, effect: rate-ratio, treatment: HIGH, control: PBO, p: {test: t-welch, value: 0.2}}",
     "rate-ratio", "exact-poisson"),
])
def test_a_test_that_does_not_belong_to_the_effect_is_refused_naming_those_that_do(tmp_path, entry, effect, tests):
    with pytest.raises(StudyDefinitionError) as error:
        _study_with(tmp_path, [entry])
    assert [str(problem) for problem in error.value.problems] == [
        f"analysis.published[12].p.test: '{entry.split('test: ')[1].split(',')[0]}' is not a test of {effect}: "
        f"use {tests}, or leave test out"]


def test_the_stratified_and_count_tests_are_their_effects_own_p(three_store, tmp_path):
    study = _study_with(tmp_path, [])
    frame_checks = jobs.verify(study, three_store.path).checks
    mh, rate = frame_checks[4].reproduced, frame_checks[7].reproduced
    p = {"cochran-mantel-haenszel": mh.effect.p_value, "exact-poisson": rate.effect.p_value}
    entries = ["{outcome: RESP, visit: W12, effect: odds-ratio-mh, treatment: HIGH, control: PBO, "
               f"p: {{test: cochran-mantel-haenszel, value: {p['cochran-mantel-haenszel']:.4f}}}}}",
               "{outcome: FLARE, visit: W12, effect: rate-ratio, treatment: HIGH, control: PBO, "
               f"p: {{test: exact-poisson, value: {p['exact-poisson']:.4f}}}}}"]
    checks = jobs.verify(_study_with(tmp_path, entries), three_store.path).checks[12:]
    assert [c.mismatches for c in checks] == [[], []]
    data = _wide()
    part = data[data["ARMCD"].isin(["HIGH", "PBO"])]
    x1, x2 = (int(part.loc[part["ARMCD"] == arm, "FLARE_2"].sum()) for arm in ("HIGH", "PBO"))
    assert p["exact-poisson"] == pytest.approx(stats.binomtest(x1, x1 + x2, 0.5).pvalue)  # equal exposure per arm
    assert not math.isnan(p["cochran-mantel-haenszel"])
