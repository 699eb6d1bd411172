"""The AE incidence counted by DuckDB from the shipped views, against the Python reader (the reference)."""

import copy
import logging

import pytest

from fhir_msc import Store
from fhir_msc.analysis import engine_frame
from fhir_msc.analysis.adverse_events import incidence
from fhir_msc.analysis.views.python_engine import run_view
from fhir_msc.analysis.views.definition import load_view
from fhir_msc.analysis.views.tables import duckdb_table, shipped_view
from fhir_msc.store.source import BundleSource


def _with_identifier(event: dict, value: str) -> dict:
    """The event with its business identifier's value replaced (R4: one Identifier, R5: a list)."""
    event = copy.deepcopy(event)
    identifier = event["identifier"] if isinstance(event["identifier"], dict) else event["identifier"][0]
    identifier["value"] = value
    return event


def _odd_events(store: Store) -> list[dict]:
    """A Patient enrolled in no arm with two events (first: the reader names them last), and AdverseEvents
    the reader skips, one reason each."""
    events = list(store.read("AdverseEvent"))
    first = events[0]
    identifier = first["identifier"] if isinstance(first["identifier"], dict) else first["identifier"][0]
    subject = identifier["value"].rpartition("/")[0]
    r5 = "status" in first
    concept = "code" if r5 else "event"
    patient = copy.deepcopy(next(iter(store.read("Patient"))))
    patient["id"] = "not-enrolled"
    patient["identifier"][0]["value"] = "NOT-ENROLLED-1"
    odd = [{**_with_identifier(first, "NOT-ENROLLED-1/007"), "subject": {"reference": "Patient/not-enrolled"}},
           {**_with_identifier(first, "NOT-ENROLLED-1/8"), "subject": {"reference": "Patient/not-enrolled"}},
           {k: v for k, v in first.items() if k != "identifier"},
           _with_identifier(first, f"{subject}/first"),
           {**first, "subject": {"reference": "Patient/nobody"}},
           _with_identifier(first, f"{subject}-OTHER/1"),
           {**first, "seriousness": {"coding": [{"system": "http://x", "code": "y"}]}},
           {**first, concept: {"text": "no coding"}, "outcome": [] if r5 else {}},
           {k: v for k, v in first.items()  # R4 keeps its onset in date and an extension, R5 its severity
            if k not in ("date", "occurrencePeriod", "occurrenceDateTime") and (r5 or k != "extension")}]
    odd += [{k: v for k, v in first.items() if k != "identifier"} for _ in range(6)]  # more than MAX_EXAMPLES
    return [patient] + [{**event, "id": f"odd-{n}"} for n, event in enumerate(odd)]


def test_odd_adverse_events_give_the_same_incidence_and_account(study, mapped, tmp_path):
    _, store = mapped
    odd = Store(tmp_path / "odd")
    odd.write(store.read_all())
    odd.write(_odd_events(store))
    expected, got = incidence(study, odd), incidence(study, odd, "duckdb")
    assert got == expected and list(got.account.examples) == list(expected.account.examples)
    assert len(expected.account.skipped) == 6 and expected.account.read == 55  # each reason met, 40 + 15 read
    assert expected.account.skipped["no onset date (AESTDTC)"] == 1
    assert expected.account.examples["subject in no compared arm"] == ["NOT-ENROLLED-1/7", "NOT-ENROLLED-1/8"]


def test_the_view_gives_the_same_rows_in_python_and_duckdb(study, mapped):
    version, store = mapped
    view = load_view(shipped_view("adverse_events", study))
    rows = duckdb_table(view, store).to_pylist()
    assert rows == run_view(view, store.read("AdverseEvent")).to_pylist()
    assert len(rows) == 40 and all(row["r5"] == (version == "R5") for row in rows)
    assert all(len(row["identifiers"]) == 1 and row["term"] and len(row["seriousness_codings"]) == 1 for row in rows)


def test_a_second_count_reads_only_the_projection_and_shares_the_frames_tables(study, mapped, tmp_path,
                                                                                monkeypatch, caplog):
    _, store = mapped
    own = Store(tmp_path / "own")
    own.write(store.read_all())
    caplog.set_level(logging.INFO, logger="fhir_msc")
    engine_frame.frame_and_account(study, own, ["M36"])  # projects patients and subjects
    caplog.clear()
    first = incidence(study, own, "duckdb")
    notes = [r.getMessage().split()[2:4] for r in caplog.records if r.getMessage().startswith("columnar projection")]
    assert notes == [["patients", "used"], ["subjects", "used"], ["adverse_events", "rebuilt"]]

    def no_json(*args, **kwargs):
        raise AssertionError("a view was compiled over the NDJSON again")
    monkeypatch.setattr(engine_frame, "compile_view", no_json)
    assert incidence(study, own, "duckdb") == first


@pytest.mark.parametrize("engine", ["duckdb", "spark"])
def test_a_source_that_is_not_a_store_is_counted_the_same(study, mapped, engine):
    _, store = mapped
    bundle = BundleSource(list(store.read_all()))
    assert incidence(study, bundle, engine) == incidence(study, store)
