"""Per-outcome covariates (analysis.outcome_covariates) replace the plan's for that outcome in analyze and in its
published entries (an entry's own covariates still win); each checked against statsmodels on the CSVs."""

import math

import pytest
import statsmodels.formula.api as smf

from fhir_msc import jobs
from fhir_msc.errors import StudyDefinitionError
from fhir_msc.fhir.mapping import tables_to_fhir
from fhir_msc.fhir.versions import get_version
from fhir_msc.store.ndjson import Store
from fhir_msc.study.definition import load_study
from fhir_msc.tables.sdtm import RejectLog
from test_three_arms import THREE, _wide

PLAN = "  covariates: [baseline]\n"


def _study(tmp_path, plan: str, entries: str = ""):
    """The three-arm study reporting the adjusted OR for binary outcomes, with ``plan`` lines after its covariates."""
    text = (THREE / "study.yaml").read_text().replace(PLAN, PLAN + "  effects: {binary: adjusted-odds-ratio}\n" + plan)
    path = tmp_path / "study.yaml"
    path.write_text(text + entries)
    return load_study(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("three-covariates") / "store")
    store.write(tables_to_fhir(load_study(THREE / "study.yaml"), THREE / "tables", get_version("R4"), RejectLog(None)))
    return store


def _responders(treatment: list[str]):
    data = _wide()
    part = data[data["ARMCD"].isin([*treatment, "PBO"])].copy()
    part["treated"] = part["ARMCD"].isin(treatment).astype(float)
    return part


def test_an_outcome_without_a_baseline_of_its_own_is_adjusted_as_its_entry_says(store, tmp_path):
    plain = jobs.analyze(_study(tmp_path, ""), store.path, ["W12"], ["RESP"]).comparisons
    assert [c.effect.estimate for c in plain] == [None, None]  # no RESP at W0: nobody has the baseline covariate
    assert "not estimable" in plain[0].effect.note
    study = _study(tmp_path, "  outcome_covariates: {RESP: [SCORE, sex]}\n")
    assert study.analysis.covariates_for("RESP") == ["SCORE", "sex"] and study.analysis.covariates_for("SCORE") == ["baseline"]
    high = jobs.analyze(study, store.path, ["W12"], ["RESP"]).comparisons[0]  # reads W0 for SCORE too
    fit = smf.logit("resp ~ treated + SCORE_1 + female", _responders(["HIGH"]).dropna(subset=["SCORE_1"])).fit(disp=0)
    assert high.arms == ("HIGH", "PBO") and high.effect.estimate == pytest.approx(math.exp(fit.params["treated"]), rel=1e-6)
    assert high.excluded == {"no SCORE": ("TRI-03",)}
    unadjusted = jobs.analyze(_study(tmp_path, "  outcome_covariates: {RESP: []}\n"), store.path, ["W12"], ["RESP"])
    low = unadjusted.comparisons[1]
    assert low.arms == ("LOW", "PBO") and "covariates: none" in low.effect.method
    assert low.effect.estimate == pytest.approx(low.summary.odds_ratio.estimate, rel=1e-6)  # the logistic OR is Woolf's


def test_a_published_entry_takes_its_outcomes_covariates_unless_it_names_its_own(store, tmp_path):
    entries = ("    - {outcome: RESP, visit: W12, effect: adjusted-odds-ratio, treatment: [HIGH, LOW], control: PBO, "
               "estimate: 2.81, lower: 0.71, upper: 11.08}\n"
               "    - {outcome: RESP, visit: W12, effect: adjusted-odds-ratio, treatment: [HIGH, LOW], control: PBO, "
               "covariates: [], estimate: 3.00, lower: 0.78, upper: 11.60}\n")
    study = _study(tmp_path, "  outcome_covariates: {RESP: [SCORE, sex]}\n", entries)
    checks = jobs.verify(study, store.path).checks
    assert [c.mismatches for c in checks[-2:]] == [[], []]  # as the entry with covariates [SCORE, sex]; as Woolf's OR


@pytest.mark.parametrize(("plan", "message"), [
    ("  outcome_covariates: {XYZ: []}\n", "analysis.outcome_covariates.XYZ: unknown outcome 'XYZ'"),
    ("  outcome_covariates: {RESP: [weight]}\n",
     "analysis.outcome_covariates.RESP[0]: unknown covariate 'weight': use age, sex, baseline"),
    ("  outcome_covariates: {SCORE: [age, SCORE]}\n",
     "analysis.outcome_covariates.SCORE[1]: write 'baseline' for the outcome's own baseline value"),
])
def test_outcome_covariates_that_do_not_fit_are_refused_on_load(tmp_path, plan, message):
    with pytest.raises(StudyDefinitionError) as error:
        _study(tmp_path, plan)
    assert message in str(error.value)
