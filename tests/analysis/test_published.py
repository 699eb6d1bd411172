"""verify checks every published field given, at the decimals it is written with, and names each one that differs."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from fhir_msc import Store, get_version, load_study
from fhir_msc.account import Account
from fhir_msc.analysis.export import analyze_json
from fhir_msc.analysis.frame import analysis_frame, analyze, verify
from fhir_msc.analysis.published import p_value
from fhir_msc.cli import main
from fhir_msc.errors import ExitCode, StudyDefinitionError
from fhir_msc.fhir.mapping import tables_to_fhir
from fhir_msc.tables.sdtm import RejectLog
from test_json import valid

MINI = Path(__file__).parents[1] / "data" / "mini-study"
TRT, CTL = np.arange(10, 25, 2), np.arange(15, 26, 2)  # the mini study's W12 scores (see its study.yaml)


def _entries() -> str:
    """Published fields of the mini study, each computed here independently (scipy, numpy, by hand)."""
    fisher = stats.fisher_exact([[6, 2], [2, 4]]).pvalue
    welch = stats.ttest_ind(TRT, CTL, equal_var=False).pvalue
    return f"""
    - outcome: RESP
      visit: W12
      p: {{test: fisher, value: {fisher:.3f}}}
      n: {{TRT: 8, CTL: 6}}
      percents: {{TRT: 75.00, CTL: 33.33}}
      proportions: {{TRT: 0.750, CTL: 0.333}}
    - outcome: SCORE
      visit: W12
      effect: mean-difference-welch
      p: {{test: t-welch, value: {welch:.4f}}}
      means: {{TRT: 17.0, CTL: 20.0}}
      sds: {{TRT: {np.std(TRT, ddof=1):.2f}, CTL: {np.std(CTL, ddof=1):.2f}}}
      iqrs: {{TRT: [13.5, 20.5], CTL: [17.5, 22.5]}}
"""


def _study(tmp_path, entries: str, replace: tuple[str, str] = ("", "")) -> Path:
    text = (MINI / "study.yaml").read_text() + entries
    path = tmp_path / "study.yaml"
    path.write_text(text.replace(*replace))
    return path


@pytest.fixture(scope="module")
def mini_store(tmp_path_factory) -> Store:
    store = Store(tmp_path_factory.mktemp("mini"))
    store.write(tables_to_fhir(load_study(MINI / "study.yaml"), MINI / "tables", get_version("R4"), RejectLog(None)))
    return store


def test_every_field_given_is_checked_and_matches(tmp_path, mini_store):
    study = load_study(_study(tmp_path, _entries()))
    checks = verify(study, analysis_frame(study, mini_store))
    assert all(c.matches for c in checks), [c.mismatches for c in checks]
    fields = {(c.published.outcome, f.field, f.arm) for c in checks for f in c.fields}
    assert {("RESP", "p", None), ("RESP", "percent", "TRT"), ("RESP", "proportion", "CTL"), ("RESP", "n", "CTL"),
            ("SCORE", "p", None), ("SCORE", "mean", "TRT"), ("SCORE", "sd", "CTL"), ("SCORE", "q1", "TRT"),
            ("SCORE", "q3", "CTL")} <= fields
    by_field = {(c.published.outcome, f.field, f.arm): f for c in checks for f in c.fields}
    assert by_field["SCORE", "mean", "TRT"].decimals == 1 and by_field["RESP", "percent", "CTL"].expected == "33.33"


@pytest.mark.parametrize(("old", "new", "mismatch"), [
    ("CTL: 33.33", "CTL: 33.30", "CTL percent: expected 33.30, got 33.33 (2 decimals)"),
    ("CTL: 0.333", "CTL: 0.33", None),  # fewer decimals written: compared at two, and 0.33 matches
    ("means: {TRT: 17.0", "means: {TRT: 17.5", "TRT mean: expected 17.5, got 17.0 (1 decimals)"),
    ("TRT: [13.5, 20.5]", "TRT: [13.5, 20.0]", "TRT q3: expected 20.0, got 20.5 (1 decimals)"),
    ("n: {TRT: 8", "n: {TRT: 9", "TRT n: expected 9, got 8 (0 decimals)"),
])
def test_the_field_that_differs_is_named_with_expected_and_got(tmp_path, mini_store, old, new, mismatch):
    study = load_study(_study(tmp_path, _entries(), (old, new)))
    mismatches = [m for c in verify(study, analysis_frame(study, mini_store)) for m in c.mismatches]
    assert mismatches == ([mismatch] if mismatch else [])


def test_a_p_below_a_bound(tmp_path, mini_store):
    entries = """
    - {outcome: RESP, visit: W12, p: {test: pearson-chi2, value: "<0.5"}}
    - {outcome: RESP, visit: W12, p: {test: likelihood-ratio, value: "<0.01"}}
"""
    study = load_study(_study(tmp_path, entries))
    checks = verify(study, analysis_frame(study, mini_store))[2:]
    assert [c.matches for c in checks] == [True, False]
    g = stats.chi2_contingency([[6, 2], [2, 4]], correction=False, lambda_="log-likelihood").pvalue
    assert checks[1].fields[0].got == f"{g:.4f}" and checks[1].fields[0].expected == "<0.01"


def test_verify_table_and_json_name_the_mismatched_field(tmp_path, mini_store):
    study = _study(tmp_path, _entries(), ("CTL: 33.33", "CTL: 33.30"))
    runner = CliRunner()
    result = runner.invoke(main, ["verify", "--store", str(mini_store.path), "--study", str(study)])
    assert result.exit_code == ExitCode.MISMATCH
    assert "MISMATCH: CTL percent: expected 33.30, got 33.33 (2 decimals)" in result.output
    assert " 6/7 " in result.output  # fields: p, n, percent and proportion of both arms; one wrong
    result = runner.invoke(main, ["verify", "--store", str(mini_store.path), "--study", str(study), "--json"])
    document = valid(json.loads(result.stdout), "verify")
    assert document["results"][2]["published"]["p"] == {"test": "fisher", "value": float(document["results"][2]["fields"][0]
                                                                                       ["expected"]), "decimals": 3, "comparator": ""}
    wrong = [(f["field"], f["arm"], f["expected"], f["got"], f["decimals"]) for c in document["results"]
             for f in c["fields"] if not f["matches"]]
    assert wrong == [("percent", "CTL", "33.30", "33.33", 2)]


TESTS = {"binary": ["fisher", "pearson-chi2", "pearson-chi2-yates", "likelihood-ratio", "wald"],
         "continuous": ["t-pooled", "t-welch", "mann-whitney", "wilcoxon"]}
JSON_KEY = {"fisher": "fisher_exact", "pearson-chi2": "chi_square", "pearson-chi2-yates": "chi_square_yates",
            "likelihood-ratio": "likelihood_ratio", "wald": "wald_odds_ratio", "t-pooled": "t_pooled",
            "t-welch": "t_welch", "mann-whitney": "mann_whitney", "wilcoxon": "wilcoxon"}


def test_every_p_verify_checks_is_in_analyze_json(mini_store):
    study = load_study(MINI / "study.yaml")
    comparisons = analyze(study, analysis_frame(study, mini_store))
    document = analyze_json(study, comparisons, Account(read=0, used=0))
    for comparison, shown in zip(comparisons, document["comparisons"]):
        for test in TESTS[comparison.kind]:
            value, _ = p_value(comparison, test)
            assert value is not None and shown["p_values"][JSON_KEY[test]] == pytest.approx(value, rel=1e-15), test


@pytest.mark.parametrize(("entry", "message"), [
    ("{outcome: RESP, visit: W12, p: {test: t-welch, value: 0.5}}",
     "analysis.published[2].p.test: 't-welch' is not a test of odds-ratio (the plan's effect for this outcome): "
     "use wald, fisher, pearson-chi2, pearson-chi2-yates, likelihood-ratio, or leave test out"),
    ("{outcome: SCORE, visit: W12, p: {test: log-rank, value: 0.04}}",
     "analysis.published[2].p.test: 'log-rank' is not a test of mean-difference"),
    ("{outcome: SCORE, visit: W12, percents: {TRT: 50.0}}",
     "analysis.published[2].percents: does not apply to continuous (quantity) outcome SCORE"),
    ("{outcome: SCORE, visit: W12, means: {XYZ: 5.0}}",
     "analysis.published[2].means: 'XYZ' is neither arm compared: use CTL or TRT"),
    ("{outcome: SCORE, visit: W12, means: {TRT: fifteen}}", "analysis.published[2].means.TRT"),
    ("{outcome: SCORE, visit: W12, estimate: 1.0, lower: 0.5}",
     "analysis.published[2]: give both lower and upper of the CI, or neither"),
])
def test_a_published_field_that_does_not_fit_is_named_by_its_yaml_path(tmp_path, entry, message):
    with pytest.raises(StudyDefinitionError, match="invalid study definition") as error:
        load_study(_study(tmp_path, f"    - {entry}\n"))
    assert message in str(error.value)


def test_published_numbers_keep_the_decimals_they_are_written_with(tmp_path):
    study = load_study(_study(tmp_path, '    - {outcome: SCORE, visit: W12, means: {TRT: 17.50, CTL: 20}, '
                                        'p: {test: t-pooled, value: "<0.001"}}\n'))
    entry = study.analysis.published[-1]
    assert (entry.means["TRT"].decimals, entry.means["CTL"].decimals) == (2, 0)
    assert (entry.p.value.comparator, entry.p.value.value, entry.p.value.decimals) == ("<", 0.001, 3)


def _verify_after(store_dir: Path, resource: dict) -> dict[str, set[tuple[str, str | None]]]:
    """The fields of each published MSC result that no longer match once ``resource`` is written to the store."""
    Store(store_dir).write([resource])
    result = CliRunner().invoke(main, ["verify", "--store", str(store_dir), "--json"])
    return {c["outcome"]: {(f["field"], f["arm"]) for f in c["fields"] if not f["matches"]}
            for c in json.loads(result.stdout)["results"]}


def _msc_observation(store: Store, subject_arm: str, code: str, keep) -> dict:
    """An M36 Observation of ``code`` of a subject of ``subject_arm`` for which ``keep(observation)`` holds."""
    frame = analysis_frame(load_study(), store, ["M36"])
    in_arm = set(frame[frame["arm"] == subject_arm]["subject"])
    return next(o for o in store.read("Observation")
                if o["identifier"][0]["value"].endswith(f"/M36/{code}")
                and o["identifier"][0]["value"].split("/")[0] in in_arm and keep(o))


def test_one_changed_observation_breaks_exactly_the_published_fields_that_depend_on_it(demo_store, tmp_path):
    """Through FHIR: one Observation of the MSC store changed, verify names exactly the fields it feeds."""
    store_dir = tmp_path / "store"
    shutil.copytree(demo_store.path, store_dir)
    store = Store(store_dir)
    normal = _msc_observation(store, "MSC", "CTNORM", lambda o: o["valueCodeableConcept"]["text"] == "NORMAL")
    abnormal = next(o for o in store.read("Observation") if o["identifier"][0]["value"].endswith("/CTNORM")
                    and o.get("valueCodeableConcept", {}).get("text") == "ABNORMAL")
    normal["valueCodeableConcept"] = abnormal["valueCodeableConcept"]
    assert _verify_after(store_dir, normal) == {
        "CTNORM": {("estimate", None), ("lower", None), ("upper", None), ("events", "MSC"), ("percent", "MSC")},
        "SF36GH": set(), "REINF": set()}
    top = _msc_observation(store, "PBO", "SF36GH", lambda o: 50 < o["valueQuantity"]["value"] < 90)
    top["valueQuantity"]["value"] = 100  # above the placebo median (50.0) before and after: the median stays
    assert _verify_after(store_dir, top)["SF36GH"] == {("estimate", None), ("lower", None), ("upper", None)}



def _readme_yaml(section: str) -> str:
    """The YAML block of a README subsection, without its first line (``analysis:``)."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    part = text[text.index(f"### {section}\n"):]
    block = part[part.index("```yaml\n") + 8:]
    block = block[:block.index("```\n")]
    assert block.startswith("analysis:\n")
    return block.removeprefix("analysis:\n")


def test_readme_study_snippets_load_and_verify_on_the_cohort(demo_store, tmp_path):
    """The README's YAML, as written (its decimals included), in place of the MSC study's published entries."""
    text = Path(load_study().file).read_text()
    snippets = _readme_yaml("Derived endpoints") + _readme_yaml("Published results verify field by field")
    (tmp_path / "study.yaml").write_text(text[:text.index("  published:\n")] + snippets)
    study = load_study(tmp_path / "study.yaml")
    assert [d.code for d in study.analysis.derived] == ["SIXMWDCHG", "SIXMWDPCT", "FEV1FVCR", "FVCFEV1D", "SIXMWDAUC"]
    checks = verify(study, analysis_frame(study, demo_store, ["M36"]))
    assert all(c.matches for c in checks), [c.mismatches for c in checks]
    assert [len(c.fields) for c in checks] == [10, 13, 6]
    assert checks[2].fields[3].test == "wald, fisher, pearson-chi2, likelihood-ratio"  # p 0.2, test not named


def _one(tmp_path, mini_store, entry: str):
    """The checks of one more published entry of the mini study."""
    study = load_study(_study(tmp_path, f"    - {entry}\n"))
    return verify(study, analysis_frame(study, mini_store))[2]


RD = 6 / 8 - 2 / 6  # the mini study's responders: TRT 6/8, CTL 2/6


def test_a_risk_difference_in_percentage_points_is_checked_as_printed(tmp_path, mini_store):
    z = stats.norm.ppf(0.975)
    half = z * np.sqrt(0.75 * 0.25 / 8 + (1 / 3) * (2 / 3) / 6)
    entry = (f"{{outcome: RESP, visit: W12, effect: risk-difference, unit: percentage-points, estimate: {100 * RD:.1f}, "
             f"lower: {100 * (RD - half):.1f}, upper: {100 * (RD + half):.1f}}}")
    check = _one(tmp_path, mini_store, entry)
    assert check.matches and [f.got for f in check.fields] == [f"{100 * v:.1f}" for v in (RD, RD - half, RD + half)]


@pytest.mark.parametrize(("entry", "message"), [
    ("{outcome: RESP, visit: W12, effect: risk-difference, estimate: 41.7, lower: -6.3, upper: 89.6}",
     "analysis.published[2].estimate: 41.7 is outside [-1, 1], the range of a risk difference as a fraction: "
     "if the paper writes percentage points, add unit: percentage-points"),
    ("{outcome: RESP, visit: W12, effect: odds-ratio, unit: percentage-points, estimate: 6.0}",
     "analysis.published[2].unit: percentage-points is for the estimate and CI of a risk difference, not of odds-ratio"),
    ("{outcome: RESP, visit: W12, estimate: null}",
     "analysis.published[2].estimate: null is not a value a paper writes: write 'not estimable' if the paper does, "
     "or leave the field out"),
    ("{outcome: RESP, visit: W12, p: null}",
     "analysis.published[2].p: null is not a value a paper writes: leave the field out"),
    ("{outcome: RESP, visit: W12, percents: {TRT: not estimable}}",
     "analysis.published[2].percents.TRT: 'not estimable' is written only for an estimate, a CI bound or a number "
     "needed to treat"),
    ("{outcome: SCORE, visit: W12, number_needed_to_treat: 3}",
     "analysis.published[2].number_needed_to_treat: does not apply to continuous (quantity) outcome SCORE"),
    ("{outcome: RESP, visit: W12, effect: odds-ratio, treatment: 5, control: CTL}",
     "analysis.published[2].treatment: 5 is not an arm code or a list of arm codes (pooled)"),
])
def test_a_published_value_that_does_not_fit_is_one_line_naming_its_path(tmp_path, entry, message):
    with pytest.raises(StudyDefinitionError) as error:
        load_study(_study(tmp_path, f"    - {entry}\n"))
    assert [str(problem) for problem in error.value.problems] == [message]


def test_relative_risk_reduction_and_number_needed_to_treat(tmp_path, mini_store):
    rrr = 100 * (1 - 0.75 / (2 / 6))  # 1 − RR in percent: −125 (TRT has more responders)
    check = _one(tmp_path, mini_store, f"{{outcome: RESP, visit: W12, relative_risk_reduction: {rrr:.0f}, "
                                       f"number_needed_to_treat: 3}}")
    assert check.matches and [f.got for f in check.fields] == ["-125", "3"]  # 1 / 0.4167 = 2.4, rounded up
    assert 1 / RD == pytest.approx(2.4)
    written = _one(tmp_path, mini_store, "{outcome: RESP, visit: W12, number_needed_to_treat: 2.4}")
    assert written.matches  # with decimals: rounded half up
    rounded_down = _one(tmp_path, mini_store, "{outcome: RESP, visit: W12, number_needed_to_treat: 2}")
    assert rounded_down.mismatches == ["number_needed_to_treat: expected 2, got 3 (0 decimals)"]


def test_a_p_whose_test_is_not_named_names_the_tests_that_give_it(tmp_path, mini_store):
    fisher = stats.fisher_exact([[6, 2], [2, 4]]).pvalue
    check = _one(tmp_path, mini_store, f"{{outcome: RESP, visit: W12, p: {fisher:.3f}}}")
    assert check.matches and check.fields[0].test == "fisher"
    assert check.published.p.test is None and check.fields[0].note.startswith("tests of odds-ratio: wald ")
    table = [[6, 2], [2, 4]]
    p = {"wald": 2 * stats.norm.sf(np.log(6 * 4 / (2 * 2)) / np.sqrt(1 / 6 + 1 / 2 + 1 / 2 + 1 / 4)), "fisher": fisher,
         "pearson-chi2": stats.chi2_contingency(table, correction=False).pvalue,
         "pearson-chi2-yates": stats.chi2_contingency(table, correction=True).pvalue,
         "likelihood-ratio": stats.chi2_contingency(table, correction=False, lambda_="log-likelihood").pvalue}
    bound = _one(tmp_path, mini_store, '{outcome: RESP, visit: W12, p: "<0.15"}')
    below = [test for test, value in p.items() if value < 0.15]
    assert 0 < len(below) < len(p) and bound.fields[0].test == ", ".join(below)
    none = _one(tmp_path, mini_store, "{outcome: RESP, visit: W12, p: 0.9}")
    assert not none.matches and none.mismatches[0].startswith("p: expected 0.9, no test of odds-ratio gives it: wald 0.")
    result = CliRunner().invoke(main, ["verify", "--store", str(mini_store.path), "--study",
                                       str(_study(tmp_path, f"    - {{outcome: RESP, visit: W12, p: {fisher:.3f}}}\n"))])
    assert result.exit_code == 0 and "match (p: fisher)" in result.output
