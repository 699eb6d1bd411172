"""The DuckDB frame (the default engine) against the Python reader (the reference engine): every test study,
every visit selection, and one test per behaviour of the reader that the test studies do not show.

Each check builds the frame and the account of the Observations with both engines and asserts they are the
same (rows, dtypes, reasons, counts, examples and their order); each behaviour test also asserts the reason
it is about is in the account, so it cannot pass on a store that does not show it.
"""

import copy
from pathlib import Path

import pytest
from pandas.testing import assert_frame_equal

from fhir_msc import Store, get_version, jobs, load_study
from fhir_msc.account import Account
from fhir_msc.analysis import engine_frame
from fhir_msc.analysis.frame import DUPLICATE, UNSCHEDULED, frame_and_account
from fhir_msc.analysis.windows import NO_DAY, NOT_NEAREST, OUTSIDE_WINDOWS
from fhir_msc.errors import InputError
from fhir_msc.fhir.unmapping import DERIVED
from fhir_msc.study.definition import AnalysisWindow
from fhir_msc.store.source import BundleSource

ROOT = Path(__file__).parents[2]
DATA = ROOT / "tests" / "data"
BAD = DATA / "bad"
MAIN = ROOT / "mappings" / "msc-covid19.yaml"
STUDIES = {  # name: (study file, tables)
    "types-study": (DATA / "types-study" / "study.yaml", DATA / "types-study" / "tables"),
    "three-arm": (DATA / "three-arm" / "study.yaml", DATA / "three-arm" / "tables"),
    "mini-study": (DATA / "mini-study" / "study.yaml", DATA / "mini-study" / "tables"),
    "not-done": (MAIN, DATA / "not-done"),
    "example-dose-ranging": (ROOT / "mappings" / "example-dose-ranging.yaml", ROOT / "fixtures" / "example-dose-ranging"),
    "example-zero-cell": (ROOT / "mappings" / "example-zero-cell.yaml", ROOT / "fixtures" / "example-zero-cell"),
    **{f"bad/{case.name}": (MAIN, case) for case in sorted(BAD.iterdir())},
}


def same_on_both(study, source, visits=None) -> Account:
    """The account both engines give, after asserting they give the same frame and account."""
    expected_frame, expected = frame_and_account(study, source, visits)
    frame, account = engine_frame.frame_and_account(study, source, visits)
    assert_frame_equal(frame, expected_frame)
    assert account == expected and list(account.skipped) == list(expected.skipped)
    assert list(account.examples) == list(expected.examples)  # as `--json` lists them
    return account


def mapped(study, tables: Path, store: Path, version: str = "R4") -> Store:
    jobs.map_tables(study, tables, store=store, version=get_version(version))
    return Store(store)


@pytest.mark.parametrize("name", list(STUDIES))
def test_both_engines_read_each_test_study_alike_at_every_visit_selection(name, tmp_path):
    path, tables = STUDIES[name]
    study = load_study(path)
    store = mapped(study, tables, tmp_path / "store")
    assert same_on_both(study, store).read == store.counts().get("Observation", 0)
    for visit in study.visits if not name.startswith("bad/") else study.visits[-1:]:
        same_on_both(study, store, [visit.code])


# --- behaviours of the reader on the types study (windows, unscheduled visits, outcome types) ----------------

@pytest.fixture(scope="module")
def types_study():
    return load_study(STUDIES["types-study"][0])


@pytest.fixture(scope="module")
def types_resources(types_study, tmp_path_factory) -> list[dict]:
    return list(mapped(types_study, STUDIES["types-study"][1], tmp_path_factory.mktemp("types") / "store", "R5").read_all())


def _store(resources: list[dict], path: Path) -> Store:
    store = Store(path)
    store.write(resources)
    return store


def _observation(resources, subject: str, visit: str, code: str) -> dict:
    return next(r for r in resources if r["resourceType"] == "Observation"
                and r["identifier"][0]["value"] == f"{subject}/{visit}/{code}")


def _unscheduled(resources, subject: str, visitnum: str, date: str, source: str = "TYP-02/UNSCHEDULED-3.1") -> dict:
    """A new unscheduled-visit Encounter of ``subject``, copied from the one of ``source``."""
    encounter = copy.deepcopy(next(r for r in resources if r["resourceType"] == "Encounter"
                                   and r["identifier"][0]["value"] == source))
    patient = next(r for r in resources if r["resourceType"] == "Observation"
                   and r["identifier"][0]["value"].startswith(f"{subject}/"))["subject"]
    encounter.update(id=f"unscheduled-{subject}-{visitnum}", subject=patient, actualPeriod={"start": date, "end": date})
    encounter["identifier"][0]["value"] = f"{subject}/UNSCHEDULED-{visitnum}"
    encounter["type"][0]["text"] = f"UNSCHEDULED {visitnum}"
    return encounter


def _finding_at(observation: dict, encounter: dict, date: str, suffix: str, **value) -> dict:
    """A copy of ``observation`` at ``encounter`` on ``date`` (optionally with another value[x])."""
    found = copy.deepcopy(observation)
    found.update(id=f"{observation['id']}-{suffix}", encounter={"reference": f"Encounter/{encounter['id']}"},
                 effectiveDateTime=date)
    if value:
        found = {k: v for k, v in found.items() if not k.startswith("value")} | value
    return found


@pytest.mark.parametrize("visits", [None, ["W12"], ["W0"]])
def test_the_nearest_finding_wins_ties_go_to_the_earlier_day_and_losers_are_named_as_they_lose(
        types_study, types_resources, tmp_path, visits):
    resources = copy.deepcopy(types_resources)
    score = _observation(resources, "TYP-06", "W12", "SCORE")  # day 86: 2 days from the target, 84
    days = {"3.3": "2024-04-01", "3.4": "2024-04-08", "3.5": "2024-04-04", "3.6": "2024-04-02"}  # days 82, 89, 85, 83
    encounters = [_unscheduled(resources, "TYP-06", number, date) for number, date in days.items()]
    findings = [_finding_at(score, encounter, date, number, valueQuantity={**score["valueQuantity"], "value": value})
                for encounter, (number, date), value in zip(encounters, days.items(), (31.0, 32.0, 33.0, 34.0))]
    store = _store(resources + encounters + findings, tmp_path / "s")
    account = same_on_both(types_study, store, visits)
    assert account.skipped[NOT_NEAREST] == 2 + 4
    assert account.examples[NOT_NEAREST][2:] == ["TYP-06/W12/SCORE 2024-04-05", "TYP-06/UNSCHEDULED-3.4/SCORE 2024-04-08",
                                                 "TYP-06/UNSCHEDULED-3.3/SCORE 2024-04-01"]
    frame = engine_frame.frame_and_account(types_study, store, visits)[0]
    chosen = frame[(frame.subject == "TYP-06") & (frame.outcome == "SCORE") & (frame.visit == "W12")]
    assert chosen.value.tolist() == ([] if visits == ["W0"] else [34.0])  # day 83 beats day 85 (both 1 day off)


def test_a_second_finding_at_one_unscheduled_visit_and_a_repeated_row_are_duplicates_in_the_readers_order(
        types_study, types_resources, tmp_path):
    resources = copy.deepcopy(types_resources)
    unscheduled = _observation(resources, "TYP-02", "UNSCHEDULED-3.1", "FLARES")
    nominal = _observation(resources, "TYP-01", "W0", "SCORE")
    again = [{**unscheduled, "id": "flares-again", "valueInteger": 9}, {**nominal, "id": "score-again"}]
    account = same_on_both(types_study, _store(resources + again, tmp_path / "s"))
    assert account.skipped[DUPLICATE] == 2
    assert account.examples[DUPLICATE] == ["TYP-02/UNSCHEDULED-3.1/FLARES", "TYP-01/W0/SCORE"]


def test_a_finding_without_a_day_or_outside_every_window_is_counted(types_study, types_resources, tmp_path):
    resources = copy.deepcopy(types_resources)
    partial = _observation(resources, "TYP-02", "UNSCHEDULED-3.1", "WHO")
    partial["effectiveDateTime"] = "2024-03"
    late = _observation(resources, "TYP-02", "UNSCHEDULED-3.2", "SCORE")
    late["effectiveDateTime"] = "2024-06-30"
    account = same_on_both(types_study, _store(resources, tmp_path / "s"), ["W12"])
    assert account.examples[NO_DAY] == ["TYP-02/UNSCHEDULED-3.1/WHO 2024-03"]
    assert "TYP-02/UNSCHEDULED-3.2/SCORE day 172" in account.examples[OUTSIDE_WINDOWS]


@pytest.mark.parametrize("visits", [None, ["W12"]])
def test_without_windows_unscheduled_findings_are_counted_or_not_asked_for(types_study, types_resources, tmp_path,
                                                                          visits):
    study = types_study.model_copy(update={"analysis": types_study.analysis.model_copy(update={"windows": {}})})
    account = same_on_both(study, _store(copy.deepcopy(types_resources), tmp_path / "s"), visits)
    assert (UNSCHEDULED in account.skipped) == (visits is None)


def test_a_window_of_other_days_and_target(types_study, types_resources, tmp_path):
    windows = {"W12": AnalysisWindow(from_day=60, to_day=80, target_day=75), "W4": AnalysisWindow(from_day=20, to_day=59)}
    study = types_study.model_copy(update={"analysis": types_study.analysis.model_copy(update={"windows": windows})})
    store = _store(copy.deepcopy(types_resources), tmp_path / "s")
    for visits in (None, ["W4"]):
        assert same_on_both(study, store, visits).skipped[OUTSIDE_WINDOWS] > 1


@pytest.mark.parametrize("element, value, kind", [
    ("valueString", "0", "integer"), ("valueInteger", 2.5, "integer"), ("valueBoolean", "true", "boolean"),
    ("valueDateTime", "2024-02-30", "datetime"), ("valueDateTime", "2024-02-20T10:00", "datetime"),
    ("valueString", "", "text"),
])
def test_a_value_of_another_type_is_named_as_the_reader_names_it(types_study, types_resources, tmp_path, element,
                                                                 value, kind):
    resources = copy.deepcopy(types_resources)
    code = {"integer": "FLARES", "boolean": "HOSP", "datetime": "RECOVDT", "text": "COMMENT"}[kind]
    observation = _observation(resources, "TYP-01", "W12", code)
    for key in [k for k in observation if k.startswith("value")]:
        del observation[key]
    observation[element] = value
    account = same_on_both(types_study, _store(resources, tmp_path / "s"))
    reason = next(r for r in account.skipped if r.startswith(f"value not interpretable as {kind} "))
    assert account.examples[reason] == [f"Observation/{observation['id']}"]


def test_an_ordinal_answer_the_study_does_not_define_is_named(types_study, types_resources, tmp_path):
    resources = copy.deepcopy(types_resources)
    who = _observation(resources, "TYP-01", "W12", "WHO")
    who["valueCodeableConcept"]["coding"][0]["code"] = "DECEASED"
    account = same_on_both(types_study, _store(resources, tmp_path / "s"))
    assert account.examples["unknown answer code"] == [
        f"Observation/{who['id']} (WHO: https://example.org/fhir/CodeSystem/typ-001|DECEASED)"]


def test_a_datetime_value_with_zone_and_seconds_counts_its_day(types_study, types_resources, tmp_path):
    resources = copy.deepcopy(types_resources)
    _observation(resources, "TYP-01", "W12", "RECOVDT")["valueDateTime"] = "2024-02-20T23:30:00.123-05:00"
    same_on_both(types_study, _store(resources, tmp_path / "s"))


@pytest.mark.parametrize("change", ["integer visit number", "a scheduled visit's number", "no visit text"])
def test_an_unscheduled_encounter_without_its_number_or_text_leaves_its_findings_at_an_unknown_visit(
        types_study, types_resources, tmp_path, change):
    resources = copy.deepcopy(types_resources)
    encounter = next(r for r in resources if r["resourceType"] == "Encounter"
                     and r["identifier"][0]["value"] == "TYP-02/UNSCHEDULED-3.1")
    if change == "no visit text":
        del encounter["type"][0]["text"]
    else:
        encounter["identifier"][0]["value"] = "TYP-02/UNSCHEDULED-" + ("3.0" if change == "integer visit number" else "2.5")
    for visits in (None, ["W12"]):
        assert same_on_both(types_study, BundleSource(resources), visits).skipped.get("unknown visit") == 5


def test_a_patient_id_repeated_after_one_without_a_subject_identifier_is_read(types_study, types_resources):
    resources = copy.deepcopy(types_resources)
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    stranger = {**patient, "identifier": [{"system": "https://elsewhere.example/id", "value": "x"}]}
    account = same_on_both(types_study, BundleSource([stranger, *resources]))
    assert "unknown subject" not in account.skipped


def test_a_derived_endpoints_observation_is_counted_not_read(tmp_path):
    study = load_study(STUDIES["example-dose-ranging"][0])
    resources = list(mapped(study, STUDIES["example-dose-ranging"][1], tmp_path / "mapped").read_all())
    observation = copy.deepcopy(next(r for r in resources if r["resourceType"] == "Observation"))
    observation["id"] = "derived-change"
    observation["code"]["coding"][0]["code"] = "SIXMWDCHG"
    for visits in (None, ["D28"]):
        account = same_on_both(study, BundleSource([*resources, observation]), visits)
        assert account.skipped[DERIVED] == 1 and account.examples[DERIVED] == ["Observation/derived-change"]



@pytest.mark.parametrize("line", [b'{"resourceType": "Observation", "id": "cut', b"[1, 2]"])
def test_a_line_the_store_cannot_read_is_named_alike_by_both_engines(types_study, types_resources, tmp_path, line):
    store = _store(copy.deepcopy(types_resources), tmp_path / "s")
    with open(store.current_file("Observation"), "ab") as handle:
        handle.write(line + b"\n")
    errors = []
    for frames in (frame_and_account, engine_frame.frame_and_account):
        with pytest.raises(InputError) as raised:
            frames(types_study, store)
        errors.append(str(raised.value))
    assert errors[0] == errors[1] and "Observation.ndjson, line 43: not" in errors[0]
