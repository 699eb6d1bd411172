"""Adverse-event incidence by arm, from the FHIR AdverseEvents, against pandas and scipy on the tables."""

import json

import jsonschema
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats

from fhir_msc import Store
from fhir_msc.analysis.adverse_events import ANY, SERIOUS, incidence
from fhir_msc.analysis.export import schema
from fhir_msc.cli import main


def _expected(cohort, study) -> dict[str, tuple[tuple[int, int], tuple[int, int], float]]:
    """Per kind: subjects with ≥1 event (MSC, PBO), subjects per actual arm, Fisher p, from the CSV files."""
    dm = pd.read_csv(cohort / "dm.csv")
    ae = pd.read_csv(cohort / "ae.csv").merge(dm[["USUBJID", "ACTARMCD"]], on="USUBJID")
    n = tuple(int((dm["ACTARMCD"] == arm).sum()) for arm in ("MSC", "PBO"))
    kinds = {ANY: ae, SERIOUS: ae[ae["AESER"] == "Y"],
             **{term: ae[ae["AEDECOD"] == term] for term in study.adverse_events.terms}}
    expected = {}
    for label, rows in kinds.items():
        subjects = tuple(rows[rows["ACTARMCD"] == arm]["USUBJID"].nunique() for arm in ("MSC", "PBO"))
        table = [[subjects[0], n[0] - subjects[0]], [subjects[1], n[1] - subjects[1]]]
        expected[label] = (subjects, n, stats.fisher_exact(table).pvalue)
    return expected


ENGINES = ("python", "duckdb")


@pytest.mark.parametrize("engine", ENGINES)
def test_incidence_equals_the_tables_counted_by_pandas(study, cohort, mapped, engine):
    _, store = mapped
    result = incidence(study, store, engine)
    got = {row.label: (row.subjects, row.n, row.fisher_p) for row in result.comparisons[0].rows}
    assert got == _expected(cohort, study)
    assert list(got)[:2] == [ANY, SERIOUS] and result.comparisons[0].arm_names == ("MSC", "Placebo")
    assert result.account.read == result.account.used == 40 and result.account.balanced


def test_no_significant_difference_in_new_onset_complications(study, mapped):
    # The paper: no significant differences in new-onset complications; the synthetic cohort agrees.
    _, store = mapped
    assert all(row.fisher_p > 0.1 for row in incidence(study, store).comparisons[0].rows)


@pytest.mark.parametrize("engine", ENGINES)
def test_adverse_events_not_counted_are_accounted_for(study, mapped, tmp_path, engine):
    _, store = mapped
    copy = Store(tmp_path / "copy")
    copy.write(store.read_all())
    event = next(iter(store.read("AdverseEvent")))
    copy.write([{**event, "id": "no-identifier", "identifier": {"system": "http://elsewhere", "value": "1"}}])
    account = incidence(study, copy, engine).account
    assert (account.read, account.used) == (41, 40) and account.balanced
    assert account.skipped == {"no adverse-event identifier of this study (USUBJID/AESEQ)": 1}


@pytest.mark.parametrize("engine", ENGINES)
def test_analyze_prints_and_json_has_incidence(study, cohort, demo_store, engine):
    runner = CliRunner()
    text = runner.invoke(main, ["analyze", "--store", str(demo_store.path), "--visit", "M36", "--outcome", "CTNORM",
                                "--engine", engine])
    assert text.exit_code == 0, text.output
    assert "adverse events (subjects with ≥1)" in text.stdout
    expected = _expected(cohort, study)
    any_msc, any_pbo = expected[ANY][0]
    assert f"{any_msc}/65 ({100 * any_msc / 65:.1f}%)" in text.stdout and f"{any_pbo}/35" in text.stdout
    document = json.loads(runner.invoke(main, ["analyze", "--store", str(demo_store.path), "--visit", "M36",
                                               "--json", "--engine", engine]).stdout)
    jsonschema.Draft202012Validator(schema("analyze")).validate(document)
    rows = {row["label"]: row for row in document["adverse_events"]["comparisons"][0]["rows"]}
    assert rows["Hypertension"]["subjects"] == list(expected["Hypertension"][0])
    assert rows[SERIOUS]["fisher_p"] == expected[SERIOUS][2]
    assert document["adverse_events"]["account"]["read"] == 40
    csv_out = runner.invoke(main, ["analyze", "--store", str(demo_store.path), "--visit", "M36", "--format", "csv"])
    assert "adverse events" not in csv_out.stdout  # csv stays one table


@pytest.mark.parametrize("engine", ENGINES)
def test_a_study_without_adverse_events_has_no_incidence(study, mapped, engine):
    _, store = mapped
    assert incidence(study.model_copy(update={"adverse_events": None}), store, engine) is None


@pytest.mark.parametrize("engine", ENGINES)
def test_a_source_without_adverse_events_reports_none_rather_than_zero(study, mapped, tmp_path, engine):
    _, store = mapped
    copy = Store(tmp_path / "copy")
    copy.write(r for r in store.read_all() if r["resourceType"] != "AdverseEvent")
    assert incidence(study, copy, engine) is None
