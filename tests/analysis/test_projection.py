"""The DuckDB frame's shipped views, kept in the store's columnar projection and rebuilt when stale."""

import logging
import stat
from pathlib import Path

import pytest

from fhir_msc import Store, get_version, load_study
from fhir_msc.analysis import engine_frame
from fhir_msc.analysis.frame import frame_and_account
from fhir_msc.fhir.mapping import tables_to_fhir
from fhir_msc.store.columnar import DIRECTORY
from fhir_msc.tables.sdtm import RejectLog

MINI = Path(__file__).parents[1] / "data" / "mini-study"


@pytest.fixture
def mini(tmp_path):
    study = load_study(MINI / "study.yaml")
    store = Store(tmp_path / "store")
    store.write(tables_to_fhir(study, MINI / "tables", get_version("R4"), RejectLog(None)))
    return study, store


def _notes(caplog) -> dict[str, str]:
    """view name -> "rebuilt" or "used", from the --verbose log lines of the last run."""
    found = {}
    for record in caplog.records:
        if record.getMessage().startswith("columnar projection: "):
            name, state = record.getMessage().split()[2:4]
            found[name] = state
    caplog.clear()
    return found


def _same_as_python(study, store, visits=None):
    frame, account = engine_frame.frame_and_account(study, store, visits)
    expected_frame, expected_account = frame_and_account(study, store, visits)
    assert frame.equals(expected_frame) and account == expected_account


def test_a_second_analysis_reads_only_the_projection(mini, monkeypatch, caplog):
    study, store = mini
    caplog.set_level(logging.INFO, logger="fhir_msc")
    _same_as_python(study, store)
    assert set(_notes(caplog).values()) == {"rebuilt"}

    def no_json(*args, **kwargs):
        raise AssertionError("a view was compiled over the NDJSON again")
    monkeypatch.setattr(engine_frame, "compile_view", no_json)
    _same_as_python(study, store, ["M3"] if "M3" in study.visit_by_code else None)
    assert set(_notes(caplog).values()) == {"used"}


def test_a_store_write_rebuilds_only_the_views_of_the_types_it_touched(mini, caplog):
    study, store = mini
    caplog.set_level(logging.INFO, logger="fhir_msc")
    _same_as_python(study, store)
    _notes(caplog)
    patient = next(iter(store.read("Patient")))
    store.write([{**patient, "gender": "female" if patient.get("gender") == "male" else "male"}])
    _same_as_python(study, store)
    assert _notes(caplog) == {"patients": "rebuilt", "subjects": "used", "visits": "used", "observations": "used"}


def test_the_projection_is_owner_only_and_a_changed_study_gets_its_own_tables(mini, caplog):
    study, store = mini
    caplog.set_level(logging.INFO, logger="fhir_msc")
    engine_frame.frame_and_account(study, store)
    for path in (store.path / DIRECTORY).iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    _notes(caplog)
    other = study.model_copy(update={"study": study.study.model_copy(update={"codesystem": study.study.codesystem + "-other"})})
    engine_frame.frame_and_account(other, store)
    assert _notes(caplog)["observations"] == "rebuilt"  # the view's key holds the study's code system


@pytest.mark.parametrize("run", ["first", "second"])
def test_each_test_finds_the_shared_store_without_a_projection(study, demo_store, caplog, run):
    caplog.set_level(logging.INFO, logger="fhir_msc")
    engine_frame.frame_and_account(study, demo_store)
    assert set(_notes(caplog).values()) == {"rebuilt"}  # the second too: the first's projection went with it
