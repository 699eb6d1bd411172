"""The SDTM AE domain ↔ FHIR AdverseEvent (R4 and R5): shape, round trip, rejects, accounts, examples."""

import csv
import json
import shutil

import pytest
from medplum import SERVER_DIR

from fhir_msc import Store, get_version, jobs
from fhir_msc.fhir.adverse_events import OCCURRENCE_R5_IN_R4, SEVERITY_R4_IN_R5
from fhir_msc.fhir.mapping import tables_to_fhir
from fhir_msc.fhir.unmapping import fhir_to_tables
from fhir_msc.tables.sdtm import RejectLog

R4_EXAMPLE = SERVER_DIR / "node_modules" / "hl7.fhir.r4.examples" / "AdverseEvent-example.json"


def _ae_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _event(store: Store, subject: str, seq: int) -> dict:
    value = f"{subject}/{seq}"
    for resource in store.read("AdverseEvent"):
        identifier = resource["identifier"]
        if (identifier if isinstance(identifier, dict) else identifier[0])["value"] == value:
            return resource
    raise AssertionError(value)


def test_r4_shape(study, cohort, tmp_path):
    store = Store(tmp_path / "r4")
    store.write(tables_to_fhir(study, cohort, get_version("R4"), RejectLog(None)))
    row = next(r for r in _ae_rows(cohort / "ae.csv") if r["AEENDTC"] and r["AESER"] == "Y")
    event = _event(store, row["USUBJID"], int(row["AESEQ"]))
    ae = study.adverse_events
    assert event["actuality"] == "actual" and "status" not in event  # R4 has no status
    assert isinstance(event["identifier"], dict)  # R4 AdverseEvent.identifier is 0..1
    assert event["event"] == {"coding": [ae.terms[row["AEDECOD"]].as_fhir()], "text": row["AETERM"]}
    assert event["seriousness"]["coding"][0]["code"] == "Serious"
    assert event["severity"]["coding"][0] == ae.severity[row["AESEV"]].as_fhir()
    assert event["outcome"]["coding"][0] == ae.outcome[row["AEOUT"]].as_fhir()
    assert event["date"] == row["AESTDTC"]
    assert event["extension"] == [{"url": OCCURRENCE_R5_IN_R4, "valuePeriod": {"start": row["AESTDTC"],
                                                                              "end": row["AEENDTC"]}}]
    assert event["study"][0]["reference"].startswith("ResearchStudy/")
    suspect = event["suspectEntity"][0]
    assert suspect["instance"]["identifier"]["value"] in ("UC-MSC", "PLACEBO")
    assert suspect["causality"][0]["assessment"]["coding"][0] == ae.related[row["AEREL"]].as_fhir()


def test_r5_shape(study, cohort, tmp_path):
    store = Store(tmp_path / "r5")
    store.write(tables_to_fhir(study, cohort, get_version("R5"), RejectLog(None)))
    rows = _ae_rows(cohort / "ae.csv")
    ended = next(r for r in rows if r["AEENDTC"])
    ongoing = next(r for r in rows if not r["AEENDTC"])
    event = _event(store, ended["USUBJID"], int(ended["AESEQ"]))
    assert event["status"] == "completed" and event["actuality"] == "actual"
    assert event["code"]["text"] == ended["AETERM"] and "event" not in event and "severity" not in event
    assert event["occurrencePeriod"] == {"start": ended["AESTDTC"], "end": ended["AEENDTC"]}
    assert event["extension"][0]["url"] == SEVERITY_R4_IN_R5
    assert isinstance(event["outcome"], list)
    suspect = event["suspectEntity"][0]
    assert suspect["instanceCodeableConcept"]["coding"][0]["code"] in ("UC-MSC", "PLACEBO")
    assert "entityRelatedness" in suspect["causality"]
    still = _event(store, ongoing["USUBJID"], int(ongoing["AESEQ"]))
    assert still["status"] == "in-progress" and still["occurrenceDateTime"] == ongoing["AESTDTC"]


def test_the_suspect_is_the_subjects_actual_treatment(study, cohort, mapped):
    _, store = mapped
    arms = {r["USUBJID"]: r["ACTARMCD"] for r in _ae_rows(cohort / "dm.csv")}
    for event in store.read("AdverseEvent"):
        identifier = event["identifier"]
        subject = (identifier if isinstance(identifier, dict) else identifier[0])["value"].rpartition("/")[0]
        suspect = event["suspectEntity"][0]
        code = (suspect.get("instanceCodeableConcept", {}).get("coding") or [{}])[0].get("code") or \
            suspect["instance"]["identifier"]["value"]
        assert code == {"MSC": "UC-MSC", "PBO": "PLACEBO"}[arms[subject]]


def test_unmap_gives_the_same_ae_rows(study, cohort, mapped, tmp_path):
    _, store = mapped
    result = fhir_to_tables(study, store, tmp_path)
    assert (tmp_path / "ae.csv").read_bytes() == (cohort / "ae.csv").read_bytes()
    account = result.accounts["AdverseEvent"]
    assert account.read == account.used == len(_ae_rows(cohort / "ae.csv")) == 40


BAD_ROWS = [  # (column, value, what the one line must say)
    ("AEDECOD", "Headache", "not a term of adverse_events.terms"),
    ("AESEV", "GRADE 3", "not a term of adverse_events.severity"),
    ("AESTDTC", "2021-02-30", "no such calendar date"),
    ("AEENDTC", "2019-01-01", "the event ends before it starts"),
    ("USUBJID", "NCT04288102-999", "unknown subject"),
    ("AESEQ", "one", "AESEQ must be a whole number"),
]


def test_bad_ae_rows_are_rejected_one_line_each_and_the_rest_mapped(study, cohort, tmp_path):
    source = tmp_path / "tables"
    shutil.copytree(cohort, source)
    rows = _ae_rows(source / "ae.csv")
    header = list(rows[0])
    bad = []
    for (column, value, _), row in zip(BAD_ROWS, rows):
        bad.append({**row, column: value})
    duplicate = dict(rows[-1])
    with open(source / "ae.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(bad + rows[len(bad):] + [duplicate])
    result = jobs.map_tables(study, source, store=tmp_path / "store")
    lines = [r for r in result.rejections if r.file.endswith("ae.csv")]
    assert len(lines) == len(BAD_ROWS) + 1
    for (column, value, says), rejection in zip(BAD_ROWS, lines):
        assert (rejection.column, rejection.value) == (column, value) and says in rejection.problem, rejection
    assert "duplicate adverse event" in lines[-1].problem
    account = next(a for a in result.accounts if a.file.endswith("ae.csv"))
    assert (account.read, account.mapped, account.rejected) == (len(rows) + 1, len(rows) - len(BAD_ROWS), 7)
    assert result.counts["AdverseEvent"] == len(rows) - len(BAD_ROWS)
    rejected = _ae_rows(tmp_path / "store" / "rejects" / "ae.csv")
    assert len(rejected) == 7 and all(r["REJECT_REASON"] for r in rejected)


def test_adverse_events_of_other_systems_are_skipped_with_a_reason(study, mapped, tmp_path):
    _, store = mapped
    copy = Store(tmp_path / "copy")
    copy.write(store.read_all())
    foreign = json.loads(R4_EXAMPLE.read_text())
    ours = next(iter(store.read("AdverseEvent")))
    recoded = {**ours, "id": "recoded", "seriousness": {"coding": [{"system": "http://x", "code": "y"}]}}
    copy.write([foreign, recoded])
    result = fhir_to_tables(study, copy, tmp_path / "tables")
    account = result.accounts["AdverseEvent"]
    assert account.balanced and account.read == 42 and account.used == 40
    assert account.skipped == {"no adverse-event identifier of this study (USUBJID/AESEQ)": 1,
                                "no code of this study's adverse_events terms (AESER)": 1}


def test_the_hl7_example_is_valid_for_fhir_msc_and_unmap_accounts_for_it(study, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "AdverseEvent.ndjson").write_text(json.dumps(json.loads(R4_EXAMPLE.read_text())) + "\n")
    assert jobs.validate(store, get_version("R4")).ok
    result = jobs.unmap(study, store, tmp_path / "tables")
    account = result.accounts["AdverseEvent"]
    assert (account.read, account.used) == (1, 0) and account.balanced


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_adverse_events_are_valid_for_fhir_msc_and_medplum(version, study, cohort, independent_validator, tmp_path):
    store = Store(tmp_path / "store")
    store.write(tables_to_fhir(study, cohort, get_version(version), RejectLog(None)))
    assert jobs.validate(store.path, get_version(version)).ok
    report = independent_validator(version).validate(store.path / "AdverseEvent.ndjson")
    assert report.checked == 40 and report.errors == []
