"""Adverse-event incidence for every comparison of a three-arm plan (pairs, a pooled arm), through FHIR on every
engine, and the published adverse-event entries verify checks: counts from the CSV files with pandas, Fisher's p
from scipy.stats.fisher_exact, never through fhir-msc."""

import json
import math

import jsonschema
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats

from fhir_msc import jobs
from fhir_msc.analysis.adverse_events import ANY, SERIOUS, incidence
from fhir_msc.analysis.export import schema
from fhir_msc.cli import main
from fhir_msc.errors import StudyDefinitionError
from fhir_msc.fhir.mapping import tables_to_fhir
from fhir_msc.fhir.versions import get_version
from fhir_msc.store.ndjson import Store
from fhir_msc.study.definition import load_study
from fhir_msc.tables.sdtm import RejectLog
from test_three_arms import THREE

PAIRS = [(("HIGH",), ("PBO",)), (("LOW",), ("PBO",)), (("HIGH", "LOW"), ("PBO",))]
COMPARISONS = """  comparisons:
    - {treatment: HIGH, control: PBO}
    - {treatment: LOW, control: PBO}
    - {treatment: [HIGH, LOW], control: PBO}
"""


def _expected(pair) -> dict[str, tuple[tuple[int, int], tuple[int, int], float]]:
    """Per kind: subjects with ≥1 event per side, subjects per side (as treated), Fisher's p, from the CSV files."""
    dm = pd.read_csv(THREE / "tables" / "dm.csv")
    ae = pd.read_csv(THREE / "tables" / "ae.csv").merge(dm[["USUBJID", "ACTARMCD"]], on="USUBJID")
    n = tuple(int(dm["ACTARMCD"].isin(side).sum()) for side in pair)
    kinds = {ANY: ae, SERIOUS: ae[ae["AESER"] == "Y"], **{term: ae[ae["AEDECOD"] == term]
                                                          for term in ("Headache", "Nausea", "Rash")}}
    expected = {}
    for label, rows in kinds.items():
        subjects = tuple(rows[rows["ACTARMCD"].isin(side)]["USUBJID"].nunique() for side in pair)
        table = [[subjects[0], n[0] - subjects[0]], [subjects[1], n[1] - subjects[1]]]
        expected[label] = (subjects, n, stats.fisher_exact(table).pvalue)
    return expected


def _with_comparisons(tmp_path) -> str:
    """The three-arm study with every dose and the pooled doses compared with placebo."""
    text = (THREE / "study.yaml").read_text()
    path = tmp_path / "study.yaml"
    path.write_text(text.replace("  control: PBO ", COMPARISONS + "  control: PBO ", 1))
    return str(path)


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    study = load_study(THREE / "study.yaml")
    store = Store(tmp_path_factory.mktemp("three-ae") / "store")
    log = RejectLog(None)
    store.write(tables_to_fhir(study, THREE / "tables", get_version("R4"), log))
    assert log.rejections == []
    return study, store


def test_the_published_adverse_event_numbers_are_the_independent_computation():
    """Each number of the study file's adverse-event entries, recomputed from the CSVs (Wald RD and Katz RR by hand)."""
    z = stats.norm.ppf(0.975)
    entries = {e.adverse_event: e for e in load_study(THREE / "study.yaml").analysis.published if e.adverse_event}
    (a, c), (n1, n2), fisher = _expected(PAIRS[2])[ANY]
    assert entries["any"].counts == {"HIGH+LOW": (a, n1), "PBO": (c, n2)}
    assert entries["any"].p.value.value == round(fisher, 3) and entries["any"].p.test == "fisher"
    assert [entries["any"].percents[arm].value for arm in ("HIGH+LOW", "PBO")] == [round(100 * a / n1, 1),
                                                                                   round(100 * c / n2, 1)]
    (a, c), (n1, n2), fisher = _expected(PAIRS[0])["Headache"]
    p1, p2 = a / n1, c / n2
    half = z * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    headache = entries["Headache"]
    assert [headache.estimate.value, headache.lower.value, headache.upper.value] == [
        round(100 * (p1 - p2), 1), round(100 * (p1 - p2 - half), 1), round(100 * (p1 - p2 + half), 1)]
    assert headache.number_needed_to_treat.value == math.ceil(1 / (p1 - p2)) and headache.p.test is None
    assert headache.p.value.value == round(fisher, 3)
    (a, c), (n1, n2), _ = _expected(PAIRS[0])[SERIOUS]
    log_rr, se = math.log(a / n1 / (c / n2)), math.sqrt(1 / a - 1 / n1 + 1 / c - 1 / n2)
    serious = entries["serious"]
    assert [serious.estimate.value, serious.lower.value, serious.upper.value] == [
        round(math.exp(log_rr + k * z * se), 2) for k in (0, -1, 1)]
    assert serious.relative_risk_reduction.value == round(100 * (1 - math.exp(log_rr)))
    (a, c), (n1, n2), fisher = _expected(PAIRS[1])["Rash"]
    rash = entries["Rash"]
    assert (a, c) == (0, 0) and rash.estimate.value is None and rash.p.value.value == fisher == 1.0


@pytest.mark.parametrize("engine", ["python", "duckdb"])
def test_incidence_of_each_comparison_with_a_pooled_arm_equals_pandas_and_scipy(three, engine):
    study, store = three
    result = incidence(study, store, engine, PAIRS)
    assert [c.groups for c in result.comparisons] == PAIRS
    assert [c.arms for c in result.comparisons] == [("HIGH", "PBO"), ("LOW", "PBO"), ("HIGH+LOW", "PBO")]
    assert result.comparisons[2].arm_names == ("High dose + Low dose", "Placebo")
    for pair, compared in zip(PAIRS, result.comparisons):
        assert {row.label: (row.subjects, row.n, row.fisher_p) for row in compared.rows} == _expected(pair)
    assert result.account.read == result.account.used == 32 and result.account.balanced


def test_an_arm_in_no_comparison_has_its_adverse_events_accounted_for(three):
    study, store = three
    result = incidence(study, store, "duckdb", [PAIRS[1]])
    assert result == incidence(study, store, "python", [PAIRS[1]])
    dm = pd.read_csv(THREE / "tables" / "dm.csv")
    ae = pd.read_csv(THREE / "tables" / "ae.csv").merge(dm[["USUBJID", "ACTARMCD"]], on="USUBJID")
    assert result.account.skipped == {"subject in no compared arm": int((ae["ACTARMCD"] == "HIGH").sum())}
    assert result.account.read == len(ae) and result.account.balanced


@pytest.mark.parametrize("engine", ["duckdb", "python", "spark"])
def test_analyze_and_verify_a_pooled_comparison_with_adverse_events_on_every_engine(three, tmp_path, engine, request):
    if engine == "spark":
        request.getfixturevalue("spark")
    _, store = three
    study = _with_comparisons(tmp_path)
    runner = CliRunner()
    analyzed = runner.invoke(main, ["analyze", "--store", str(store.path), "--study", study, "--visit", "W12",
                                    "--outcome", "RESP", "--engine", engine, "--json"])
    assert analyzed.exit_code == 0, analyzed.output
    document = json.loads(analyzed.stdout)
    jsonschema.Draft202012Validator(schema("analyze")).validate(document)
    compared = document["adverse_events"]["comparisons"]
    assert [(c["arms"]["treatment"], c["arms"]["control"]) for c in compared] == [
        ("HIGH", "PBO"), ("LOW", "PBO"), ("HIGH+LOW", "PBO")]
    for pair, shown in zip(PAIRS, compared):
        assert {r["label"]: (tuple(r["subjects"]), tuple(r["n"]), r["fisher_p"]) for r in shown["rows"]} == _expected(pair)
    table = runner.invoke(main, ["analyze", "--store", str(store.path), "--study", study, "--visit", "W12",
                                 "--outcome", "RESP", "--engine", engine])
    assert table.exit_code == 0, table.output
    header = next(line for line in table.stdout.splitlines() if "adverse events (subjects with ≥1)" in line)
    assert header.split("  ")[0] == "adverse events (subjects with ≥1)"
    assert "High dose + Low dose" in header and "Fisher p HIGH+LOW vs PBO" in header
    assert header.index("High dose") < header.index("Low dose") < header.index("Placebo")
    verified = runner.invoke(main, ["verify", "--store", str(store.path), "--study", study, "--engine", engine])
    assert verified.exit_code == 0, verified.output
    assert "reproduced 12/12 published results" in verified.stdout


def test_control_alone_compares_each_dose_with_placebo_in_the_incidence_too(three):
    study, store = three
    result = jobs.analyze(study, store.path, ["W12"], ["RESP"])
    assert [c.arms for c in result.adverse_events.comparisons] == [("HIGH", "PBO"), ("LOW", "PBO")]


def test_published_adverse_events_without_adverse_events_in_the_source_are_not_reproduced(three, tmp_path):
    study, store = three
    bare = Store(tmp_path / "store")
    bare.write(r for r in store.read_all() if r["resourceType"] != "AdverseEvent")
    checks = jobs.verify(study, bare.path).checks
    assert [c.mismatches for c in checks if c.published.adverse_event] == [
        ["no data: the source holds no AdverseEvent"]] * 4


def test_a_removed_adverse_event_breaks_exactly_the_entries_counting_it(three, tmp_path):
    """TRI-01 (HIGH) had two headaches (the first serious, its only serious event) and a nausea: without both
    headaches 'any' still counts it (nausea); Headache and serious HIGH vs PBO do not."""
    study, store = three
    changed = Store(tmp_path / "store")
    changed.write(r for r in store.read_all() if r["resourceType"] != "AdverseEvent"
                  or _identifier(r) not in ("TRI-01/1", "TRI-01/2"))
    broken = [bool(c.mismatches) for c in jobs.verify(study, changed.path).checks]
    assert broken == [False] * 8 + [False, True, True, False]


def _identifier(event: dict) -> str:
    identifier = event["identifier"]
    return (identifier if isinstance(identifier, dict) else identifier[0])["value"]


ENTRY = "    - {adverse_event: any, treatment: HIGH, control: PBO"


@pytest.mark.parametrize(("entry", "message"), [
    (ENTRY + ", visit: W12}", "analysis.published[12].visit: does not apply to adverse events"),
    (ENTRY + ", means: {HIGH: 3.0}}", "analysis.published[12].means: does not apply to adverse events"),
    (ENTRY + ", covariates: [age]}", "analysis.published[12].covariates: does not apply to adverse events"),
    ("    - {adverse_event: Fever, treatment: HIGH, control: PBO}",
     "analysis.published[12].adverse_event: unknown kind of adverse event 'Fever': use one of any, serious, Headache, Nausea, Rash"),
    (ENTRY + ", effect: adjusted-odds-ratio, estimate: 2.0}",
     "analysis.published[12].effect: adverse events are compared by the effects of their 2×2 table, not "
     "adjusted-odds-ratio: name one of odds-ratio, exact-odds-ratio, relative-risk, risk-difference, "
     "risk-difference-newcombe"),
    (ENTRY + ", p: {test: t-pooled, value: 0.5}}", "analysis.published[12].p.test: 't-pooled' is not a test of odds-ratio"),
    ("    - {adverse_event: any, outcome: RESP, visit: W12}",
     "analysis.published[12]: give either its outcome (an outcome, derived endpoint or time_to_event code) or "
     "adverse_event"),
])
def test_an_adverse_event_entry_that_does_not_fit_is_refused_on_load(tmp_path, entry, message):
    path = tmp_path / "study.yaml"
    path.write_text((THREE / "study.yaml").read_text() + entry + "\n")
    with pytest.raises(StudyDefinitionError, match="invalid study definition") as error:
        load_study(path)
    assert message in str(error.value)
    assert all(problem.path.startswith("analysis.published[12]") for problem in error.value.problems)


def test_adverse_event_entries_need_the_adverse_events_section(tmp_path):
    text = (THREE / "study.yaml").read_text()
    start, end = text.index("adverse_events:\n"), text.index("analysis:\n")
    path = tmp_path / "study.yaml"
    path.write_text(text[:start] + text[end:])
    with pytest.raises(StudyDefinitionError) as error:
        load_study(path)
    assert ("analysis.published[8].adverse_event: the study file has no adverse_events section to count them from"
            in str(error.value))
