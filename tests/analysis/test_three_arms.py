"""A made-up three-arm study mapped through FHIR: every pair compared, adjusted and stratified effects verified.

The study's published numbers (tests/data/three-arm/study.yaml) are recomputed here from its CSV
tables with pandas, statsmodels' formula API and scipy, never through fhir-msc.
"""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import statsmodels.formula.api as smf
from click.testing import CliRunner
from scipy import stats

from fhir_msc import jobs
from fhir_msc.analysis.frame import analysis_frame, analyze, arms_not_compared, compare
from fhir_msc.cli import main
from fhir_msc.fhir.mapping import tables_to_fhir
from fhir_msc.fhir.versions import get_version
from fhir_msc.store.ndjson import Store
from fhir_msc.study.definition import load_study
from fhir_msc.tables.sdtm import RejectLog

THREE = Path(__file__).parents[1] / "data" / "three-arm"


def _wide() -> pd.DataFrame:
    """One row per subject from the CSVs: arm, age, sex and each finding as a column CODE_VISITNUM."""
    dm = pd.read_csv(THREE / "tables" / "dm.csv")
    xs = pd.read_csv(THREE / "tables" / "xs.csv", dtype={"XSORRES": str})
    wide = xs.pivot(index="USUBJID", columns=["XSTESTCD", "VISITNUM"], values="XSORRES")
    wide.columns = [f"{code}_{visit}" for code, visit in wide.columns]
    data = dm.set_index("USUBJID")[["ARMCD", "AGE", "SEX"]].join(wide)
    for column in ("SCORE_1", "SCORE_2", "FLARE_2"):
        data[column] = data[column].astype(float)
    data["female"] = (data["SEX"] == "F").astype(float)
    data["resp"] = (data["RESP_2"] == "Y").astype(float)
    data["sev"] = (data["SEV_1"] == "Y").astype(float)
    return data


def _ci(fit, alpha=0.05):
    low, high = fit.conf_int(alpha=alpha).loc["treated"]
    return float(fit.params["treated"]), float(low), float(high)


def independent_results() -> list[dict]:
    """Each published result of the three-arm study, computed from the CSVs without fhir-msc."""
    data = _wide()

    def pair(treatment, control="PBO"):
        part = data[data["ARMCD"].isin(treatment + [control])].copy()
        part["treated"] = part["ARMCD"].isin(treatment).astype(float)
        return part
    results = []
    for arms, formula, extra in ((["HIGH"], "SCORE_2 ~ treated + SCORE_1", {}),
                                 (["LOW"], "SCORE_2 ~ treated + SCORE_1 + AGE + female",
                                  {"covariates": ["baseline", "age", "sex"]})):
        fit = smf.ols(formula, pair(arms).dropna(subset=["SCORE_1"])).fit()
        results.append({"outcome": "SCORE", "effect": "adjusted-mean-difference", "treatment": arms, **extra,
                        "values": _ci(fit)})
    fit = smf.logit("resp ~ treated + SCORE_1 + female", pair(["HIGH", "LOW"]).dropna(subset=["SCORE_1"])).fit(disp=0)
    results.append({"outcome": "RESP", "effect": "adjusted-odds-ratio", "treatment": ["HIGH", "LOW"],
                    "covariates": ["SCORE", "sex"], "values": tuple(math.exp(v) for v in _ci(fit))})
    part = pair(["HIGH", "LOW"])
    (a, b), (c, d) = [[int(((part["treated"] == t) & (part["resp"] == r)).sum()) for r in (1, 0)] for t in (1, 0)]
    se = math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)  # Woolf, by hand
    results.append({"outcome": "RESP", "effect": "odds-ratio", "treatment": ["HIGH", "LOW"],
                    "values": tuple(a * d / (b * c) * math.exp(k * 1.959964 * se) for k in (0, -1, 1))})
    from statsmodels.stats.contingency_tables import StratifiedTable
    for arms, by, extra in ((["HIGH"], "sev", {}), (["LOW"], "female", {"stratum": "sex"})):
        part = pair(arms)
        tables = [pd.crosstab(-g["treated"], -g["resp"]).reindex(index=[-1.0, 0.0], columns=[-1.0, 0.0], fill_value=0)
                  .to_numpy() for _, g in part.groupby(by)]
        mh = StratifiedTable(tables)
        results.append({"outcome": "RESP", "effect": "odds-ratio-mh", "treatment": arms, **extra,
                        "values": (mh.oddsratio_pooled, *mh.oddsratio_pooled_confint())})
    from statsmodels.miscmodels.ordinal_model import OrderedModel
    part = pair(["HIGH"])
    grade = pd.Categorical(part["GRADE_2"], categories=["MILD", "MODERATE", "SEVERE"], ordered=True)
    fit = OrderedModel(pd.Series(grade), part[["treated"]].reset_index(drop=True), distr="logit").fit(
        method="bfgs", disp=False, gtol=1e-8, maxiter=1000)
    results.append({"outcome": "GRADE", "effect": "proportional-odds", "treatment": ["HIGH"], "covariates": [],
                    "values": tuple(math.exp(v) for v in _ci(fit))})
    part = pair(["HIGH"])
    x1, x2 = int(part.loc[part["treated"] == 1, "FLARE_2"].sum()), int(part.loc[part["treated"] == 0, "FLARE_2"].sum())
    n1, n2 = int((part["treated"] == 1).sum()), int((part["treated"] == 0).sum())
    low_p = stats.beta.ppf(0.025, x1, x2 + 1)  # Clopper-Pearson for the treatment's share of the events
    high_p = stats.beta.ppf(0.975, x1 + 1, x2)
    results.append({"outcome": "FLARE", "effect": "rate-ratio", "treatment": ["HIGH"],
                    "values": ((x1 / n1) / (x2 / n2), low_p / (1 - low_p) * n2 / n1, high_p / (1 - high_p) * n2 / n1)})
    return results


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    study = load_study(THREE / "study.yaml")
    store = Store(tmp_path_factory.mktemp("three") / "store")
    log = RejectLog(None)
    store.write(tables_to_fhir(study, THREE / "tables", get_version("R4"), log))
    assert log.rejections == []
    return study, store


def test_the_published_numbers_are_the_independent_computation():
    study = load_study(THREE / "study.yaml")
    published = [result for result in study.analysis.published if result.outcome is not None]  # AE: their own test
    expected = independent_results()
    assert len(published) == len(expected)
    for target, independent in zip(published, expected):
        assert (target.outcome, target.effect) == (independent["outcome"], independent["effect"])
        for name, value in zip(("estimate", "lower", "upper"), independent["values"]):
            stated = getattr(target, name)
            assert stated.value == round(value, stated.decimals), (target, name)


def test_verify_reproduces_every_published_result_through_fhir(three):
    study, store = three
    checks = jobs.verify(study, store.path).checks
    assert [check.mismatches for check in checks] == [[]] * len(checks)
    assert checks[2].reproduced.arms == ("HIGH+LOW", "PBO")


def test_a_changed_baseline_observation_breaks_the_adjusted_results(three, tmp_path):
    study, store = three
    resources = list(store.read_all())
    for resource in resources:  # TRI-01 (HIGH) baseline score: only results adjusted on SCORE at W0 depend on it
        if resource["resourceType"] == "Observation" and resource["identifier"][0]["value"] == "TRI-01/W0/SCORE":
            resource["valueQuantity"]["value"] = 12.9
    changed = Store(tmp_path / "store")
    changed.write(resources)
    broken = [bool(check.mismatches) for check in jobs.verify(study, changed.path).checks]
    assert broken == [True, False, True, False, False, False, False, False] + [False] * 4  # the adverse events too


def test_analyze_compares_each_arm_with_the_control_by_default(three):
    study, store = three
    frame = analysis_frame(study, store)
    comparisons = analyze(study, frame, visits=["W12"], outcomes=["SCORE"])
    assert [c.arms for c in comparisons] == [("HIGH", "PBO"), ("LOW", "PBO")]
    assert [c.n for c in comparisons] == [(14, 14), (14, 14)]
    assert arms_not_compared(study, frame) == []


def test_an_arm_in_no_comparison_is_named(three, tmp_path):
    study, store = three
    only_high = study.model_copy(update={"analysis": study.analysis.model_copy(update={"treatment": "HIGH"})})
    result = jobs.analyze(only_high, store.path, ["W12"], ["SCORE"])
    assert [c.arms for c in result.comparisons] == [("HIGH", "PBO")]
    assert result.arms_not_compared == ("LOW",)
    text = (THREE / "study.yaml").read_text().replace("  control: PBO ", "  treatment: HIGH\n  control: PBO ")
    text = text[:text.index("  published:")]  # its published results name LOW
    (tmp_path / "study.yaml").write_text(text)
    shown = CliRunner().invoke(main, ["analyze", "--store", str(store.path), "--study", str(tmp_path / "study.yaml"),
                                      "--visit", "W12", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["arms_not_compared"] == ["LOW"]
    assert "note: arm(s) with data in no comparison of the analysis plan: LOW" in shown.stderr


def test_analyze_json_and_the_table_carry_every_pair_and_the_left_out_subjects(three):
    study, store = three
    result = CliRunner().invoke(main, ["analyze", "--store", str(store.path), "--study", str(THREE / "study.yaml"),
                                       "--visit", "W12", "--outcome", "SCORE", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [[arm["code"] for arm in c["arms"]] for c in document["comparisons"]] == [["HIGH", "PBO"], ["LOW", "PBO"]]
    frame = analysis_frame(study, store)
    adjusted = compare(study, frame, study.outcome_by_code["SCORE"], "W12", "adjusted-mean-difference",
                       pair=(("HIGH",), ("PBO",)))
    assert adjusted.excluded == {"no baseline": ("TRI-03",)}
    assert "1 subject(s) left out (no baseline: TRI-03)" in adjusted.effect.note


def test_pooled_arms_are_one_treatment(three):
    study, store = three
    frame = analysis_frame(study, store)
    pooled = compare(study, frame, study.outcome_by_code["RESP"], "W12", pair=(("HIGH", "LOW"), ("PBO",)))
    data = _wide()
    assert pooled.summary.events[0] == int(data.loc[data["ARMCD"] != "PBO", "resp"].sum())
    assert pooled.n == (28, 14)


def test_the_table_and_forest_plot_name_each_pair(three, tmp_path):
    from fhir_msc.analysis.report import comparison_table, forest_plot

    study, store = three
    comparisons = analyze(study, analysis_frame(study, store), visits=["W12"], outcomes=["SCORE"])
    table = comparison_table(comparisons)
    assert list(table["comparison"]) == ["HIGH vs PBO", "LOW vs PBO"]
    assert list(table["n treatment"]) == [14, 14]
    plot = forest_plot(comparisons, tmp_path / "forest.png", study=study)
    assert [row.label for row in plot.panels[0].rows] == ["Symptom score · W12 · High dose vs Placebo",
                                                          "Symptom score · W12 · Low dose vs Placebo"]  # arm names
    assert "treatment" in plot.panels[0].title


def test_verify_command_reads_the_baseline_visit_and_follows_its_schema(three):
    import jsonschema
    from referencing import Registry, Resource

    from fhir_msc.analysis.export import schema

    _, store = three
    result = CliRunner().invoke(main, ["verify", "--store", str(store.path), "--study", str(THREE / "study.yaml"),
                                       "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["counts"] == {"published": 12, "reproduced": 12, "not_reproduced": 0}
    assert document["results"][0]["reproduced"]["excluded"] == {"no baseline": ["TRI-03"]}
    registry = Registry().with_resources([(schema("analyze")["$id"], Resource.from_contents(schema("analyze")))])
    jsonschema.Draft202012Validator(schema("verify"), registry=registry).validate(document)
    analyzed = CliRunner().invoke(main, ["analyze", "--store", str(store.path), "--study", str(THREE / "study.yaml"),
                                         "--visit", "W12", "--json"])
    jsonschema.Draft202012Validator(schema("analyze")).validate(json.loads(analyzed.stdout))


def test_an_ordered_coded_outcome_is_compared_on_its_answer_order(three):
    study, store = three
    frame = analysis_frame(study, store)
    got = compare(study, frame, study.outcome_by_code["GRADE"], "W12", "mann-whitney", pair=(("LOW",), ("PBO",)))
    data = _wide()
    place = {"MILD": 0, "MODERATE": 1, "SEVERE": 2}
    low, pbo = ([place[g] for g in data.loc[data["ARMCD"] == arm, "GRADE_2"]] for arm in ("LOW", "PBO"))
    by_hand = sum((a > b) + 0.5 * (a == b) for a in low for b in pbo) / (len(low) * len(pbo))
    assert got.effect.estimate == pytest.approx(by_hand) and got.key == "mann-whitney"


def test_a_rate_ratio_of_values_that_are_not_counts_is_refused(three):
    from fhir_msc.errors import StudyDefinitionError

    study, store = three
    with pytest.raises(StudyDefinitionError, match="'rate-ratio' needs counts .* outcome SCORE"):
        compare(study, analysis_frame(study, store), study.outcome_by_code["SCORE"], "W12", "rate-ratio")
