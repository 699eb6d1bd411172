"""The synthetic cohort: faithful to the design, and its month-36 aggregates are the published ones.

These checks compute from the CSV files with pandas/scipy directly, independent of fhir_msc.
"""

import math
import subprocess
import sys

import pandas as pd
import pytest
from scipy import stats

from fhir_msc.study.definition import REPO_ROOT


def _month36(cohort, table, prefix, testcd):
    dm = pd.read_csv(cohort / "dm.csv").set_index("USUBJID")
    rows = pd.read_csv(cohort / table, dtype={f"{prefix}ORRES": str})
    rows = rows[(rows[f"{prefix}TESTCD"] == testcd) & (rows["VISITNUM"] == 9)].copy()
    rows["arm"] = rows["USUBJID"].map(dm["ARMCD"])
    return rows, f"{prefix}ORRES"


def _woolf(a, b, c, d):
    odds = a * d / (b * c)
    se = math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)
    return round(odds, 2), round(math.exp(math.log(odds) - 1.959964 * se), 2), round(math.exp(math.log(odds) + 1.959964 * se), 2)


def test_design_65_35_with_three_infusions(cohort):
    dm = pd.read_csv(cohort / "dm.csv")
    ex = pd.read_csv(cohort / "ex.csv")
    assert dm["ARMCD"].value_counts().to_dict() == {"MSC": 65, "PBO": 35}
    assert ex.groupby("USUBJID").size().eq(3).all() and len(ex) == 300
    assert set(ex[ex["EXTRT"] == "UC-MSC"]["EXDOSE"]) == {40000000}


def test_not_every_patient_attends_every_visit(cohort):
    qs = pd.read_csv(cohort / "qs.csv")
    attended = qs[qs["QSTESTCD"] == "SF36GH"].groupby("VISITNUM")["USUBJID"].nunique()
    assert (attended < 100).all() and attended.nunique() > 1


@pytest.mark.parametrize("testcd,event,published", [
    ("CTNORM", "NORMAL", {"MSC": (23, 49), "PBO": (10, 29), "or": (1.68, 0.65, 4.34)}),
    ("REINF", "Y", {"MSC": (26, 49), "PBO": (19, 28), "or": (0.54, 0.20, 1.41)}),
])
def test_month36_binary_outcomes_match_the_paper(cohort, testcd, event, published):
    rows, result = _month36(cohort, "fa.csv", "FA", testcd)
    counts = {arm: ((g[result] == event).sum(), len(g)) for arm, g in rows.groupby("arm")}
    assert counts == {"MSC": published["MSC"], "PBO": published["PBO"]}
    (a, n1), (c, n2) = counts["MSC"], counts["PBO"]
    assert _woolf(a, n1 - a, c, n2 - c) == published["or"]


def test_month36_sf36_general_health_matches_the_paper(cohort):
    rows, result = _month36(cohort, "qs.csv", "QS", "SF36GH")
    msc = rows[rows["arm"] == "MSC"][result].astype(float)
    pbo = rows[rows["arm"] == "PBO"][result].astype(float)
    assert (msc.median(), pbo.median()) == (67.0, 50.0)
    ci = stats.ttest_ind(msc, pbo).confidence_interval()
    assert (round(msc.mean() - pbo.mean(), 2), round(ci.low, 2), round(ci.high, 2)) == (12.86, 1.44, 24.28)


@pytest.mark.parametrize("table,prefix,testcd", [
    ("fa.csv", "FA", "CTTSS"), ("ft.csv", "FT", "SIXMWD"), ("re.csv", "RE", "FVC"), ("re.csv", "RE", "FEV1"),
    ("re.csv", "RE", "FEV1FVC"), ("re.csv", "RE", "DLCO"), ("qs.csv", "QS", "SF36PF"), ("qs.csv", "QS", "SF36MH"),
    ("lb.csv", "LB", "CEA"), ("lb.csv", "LB", "AFP"), ("lb.csv", "LB", "CA125"),
])
def test_month36_other_continuous_outcomes_do_not_differ(cohort, table, prefix, testcd):
    rows, result = _month36(cohort, table, prefix, testcd)
    groups = [g[result].astype(float) for _, g in rows.groupby("arm")]
    assert stats.mannwhitneyu(*groups).pvalue > 0.05
    assert stats.ttest_ind(*groups, equal_var=False).pvalue > 0.05


@pytest.mark.parametrize("testcd", ["LCANY", "LCFATIG", "LCDYSP", "NEWCOMOR"])
def test_month36_other_binary_outcomes_do_not_differ(cohort, testcd):
    rows, result = _month36(cohort, "fa.csv", "FA", testcd)
    table = [[(g[result] == "Y").sum(), (g[result] == "N").sum()] for _, g in rows.groupby("arm")]
    assert stats.fisher_exact(table).pvalue > 0.05


def test_generator_reproduces_the_committed_cohort(cohort, tmp_path):
    subprocess.run([sys.executable, str(REPO_ROOT / "fixtures" / "generate.py"), str(tmp_path)], check=True,
                   capture_output=True)
    for path in cohort.iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_cohort_says_it_is_synthetic(cohort):
    assert "synthetic: true" in (cohort / "dataset.yaml").read_text()
    assert "SYNTHETIC" in (REPO_ROOT / "fixtures" / "README.md").read_text()
