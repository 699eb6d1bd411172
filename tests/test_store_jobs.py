"""Jobs that write a store: one at a time (exit 9), killed ones cleaned up after, repair, evil servers, owner-only files."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import responses
from click.testing import CliRunner
from storesafety import lock_held_elsewhere, not_owner_only

from fhir_msc import Store
from fhir_msc.cli import main
from fhir_msc.errors import ExitCode, InputError
from fhir_msc.study.definition import DEFAULT_STUDY, REPO_ROOT

BAD = Path(__file__).parent / "data" / "bad"
BASE = "http://127.0.0.1:9999/fhir"  # never reached: responses answers, or the job stops before asking
FHIR_MSC = Path(sys.executable).with_name("fhir-msc")


def invoke(*argv: str):
    return CliRunner().invoke(main, [str(a) for a in argv])


def mock_study_server(study, observations: list[dict]) -> None:
    """A server holding one study with one subject and ``observations`` (for a pull)."""
    identifier = {"system": study.study.identifier.system, "value": study.study.identifier.value}

    def searchset(*resources: dict) -> dict:
        return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
                "entry": [{"resource": r} for r in resources]}

    answers = {
        "ResearchStudy": searchset({"resourceType": "ResearchStudy", "id": "s1", "status": "active", "identifier": [identifier]}),
        "ResearchSubject": searchset({"resourceType": "ResearchSubject", "id": "rs1", "status": "on-study",
                                      "study": {"reference": "ResearchStudy/s1"}, "individual": {"reference": "Patient/p1"}},
                                     {"resourceType": "Patient", "id": "p1"}),
        "Observation": searchset(*observations),
    }
    responses.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": []})
    for resource_type in ("ResearchStudy", "Group", "ResearchSubject", "Patient", "Encounter", "MedicationAdministration",
                          "Observation", "AdverseEvent"):
        responses.get(re.compile(rf"{re.escape(BASE)}/{resource_type}(\?.*)?$"), json=answers.get(resource_type, searchset()))


OBSERVATION = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
               "subject": {"reference": "Patient/p1"}}


# --- one writer at a time ---------------------------------------------------------------------

@responses.activate  # no answers registered: a job that reached the network would fail otherwise
def test_every_job_writing_a_locked_store_exits_9_with_one_line(tmp_path):
    store = tmp_path / "store"
    assert invoke("map", BAD / "good", "--store", store).exit_code == 0
    before = Store(store).counts()
    jobs_writing_it = {
        "map": ["map", BAD / "good", "--store", store],
        "pull": ["pull", "--server", BASE, "--store", store, "--state", tmp_path / "state"],
        "sync": ["sync", "--from", BASE, "--to", store, "--state", tmp_path / "state"],
        "hospital-pull": ["hospital-pull", "--server", BASE, "--store", store, "--out", tmp_path / "found",
                          "--enrollment", REPO_ROOT / "fixtures" / "hospital" / "enrollment.csv"],
        "repair": ["repair", store],
    }
    with lock_held_elsewhere(store) as pid:
        for name, argv in jobs_writing_it.items():
            result = invoke(*argv)
            assert result.exit_code == ExitCode.LOCKED, (name, result.output)
            assert result.stderr.splitlines() == [f"fhir-msc: error: another job is writing {store} (pid {pid}); wait for it "
                                                  "to finish and run this again (a job that was killed releases the lock "
                                                  "with its process)"], name
    assert len(responses.calls) == 0 and Store(store).counts() == before
    assert invoke("repair", store).exit_code == 0  # the lock went with its process


# fhir-msc, killed (SIGKILL) just before it renames its first spooled file into the store: the point is known,
# not raced against a poll of the store
_KILLED_AT_ITS_FIRST_COMMIT = """
import os, signal
from pathlib import Path
real_replace = os.replace
def replace(source, target):
    if Path(source).parent.name.startswith(".spool-"):
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(source, target)
os.replace = replace
from fhir_msc.cli import main
main(prog_name="fhir-msc")
"""


def test_a_killed_map_leaves_debris_that_the_next_map_reports_and_removes(study, cohort, tmp_path):
    store = tmp_path / "store"
    tables = tmp_path / "tables"
    shutil.copytree(cohort, tables)
    with open(tables / "qs.csv", "a") as qs:  # a rejected row, so the map also spools rejects
        qs.write("NCT04288102,NCT04288102-001,QS,SF36GH,General health,sixty,,9,M36,2023-03-01\n")
    job = subprocess.run([sys.executable, "-c", _KILLED_AT_ITS_FIRST_COMMIT, "map", tables, "--store", store],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert job.returncode == -signal.SIGKILL
    debris = sorted(p.name for p in store.glob(".spool-*")) + sorted(p.name for p in store.glob(".rejects-*"))
    assert len(debris) == 2
    result = invoke("map", BAD / "good", "--store", store)
    assert result.exit_code == 0, result.output
    assert sorted(re.findall(r"note: removed .*/(\.\w+-\w+): left by a killed job", result.stderr)) == sorted(debris)
    assert not list(store.glob(".spool-*")) and not list(store.glob(".rejects-*"))


def test_a_map_to_a_bundle_removes_a_killed_maps_rejects_spool_beside_it(tmp_path):
    (tmp_path / ".rejects-killed").mkdir()
    (tmp_path / ".rejects-killed" / "qs.csv").write_text("half a row")
    result = invoke("map", BAD / "good", "--bundle", tmp_path / "bundle.json", "--study", DEFAULT_STUDY)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [f"note: removed {tmp_path / '.rejects-killed'}: left by a killed job"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.json"]


# --- repair -------------------------------------------------------------------------------------

def test_repair_command_drops_a_torn_line_reports_it_and_exits_0(tmp_path):
    store = tmp_path / "store"
    assert invoke("map", BAD / "good", "--store", store).exit_code == 0
    observations = store / "Observation.ndjson"
    count = Store(store).counts()["Observation"]
    with open(observations, "ab") as handle:
        handle.write(b'{"resourceType":"Observation","id":"torn","sta')
    broken = invoke("validate", store)
    assert broken.exit_code == ExitCode.BAD_INPUT and "fhir-msc repair" in broken.stderr
    dry = invoke("repair", store, "--dry-run")
    assert dry.exit_code == ExitCode.BAD_INPUT
    assert dry.stdout.splitlines()[0] == (f"would drop: {observations}, line {count + 1}: torn last line (a write was cut off): "
                                          "not complete JSON (begins '{\"resourceType\":\"Observation\",\"id\":\"torn')")
    fixed = invoke("repair", store, "--json")
    assert fixed.exit_code == 0, fixed.output
    report = json.loads(fixed.stdout)
    assert report["sound"] and [(d["file"], d["line"]) for d in report["dropped"]] == [(str(observations), count + 1)]
    assert invoke("validate", store).exit_code == 0 and Store(store).counts()["Observation"] == count
    assert invoke("repair", store).stdout.strip() == f"{store}: 0 line(s) dropped, 0 other repair(s); sound"


def test_repair_of_a_missing_store_is_one_line(tmp_path):
    result = invoke("repair", tmp_path / "nope")
    assert result.exit_code == ExitCode.BAD_INPUT and result.stderr.splitlines() == [
        f"fhir-msc: error: {tmp_path / 'nope'}: no such store directory"]


# --- a server naming files ------------------------------------------------------------------------

@responses.activate
def test_a_pull_from_a_server_returning_a_path_as_resource_type_writes_nothing_outside_the_store(study, tmp_path):
    mock_study_server(study, [OBSERVATION, {**OBSERVATION, "resourceType": "../../evil", "id": "o2"}])
    work = tmp_path / "work"
    result = invoke("pull", "--server", BASE, "--store", work / "store", "--state", work / "state")
    assert result.exit_code == ExitCode.PARTIAL  # pull keeps it out as invalid (the store would refuse it too)
    assert "1 × ../../evil: not a resource type pull asked for" in result.stderr
    assert not list(tmp_path.rglob("*evil*"))
    assert Store(work / "store").counts().get("Observation") == 1  # the valid one is stored


def test_the_store_refuses_a_path_as_resource_type(tmp_path):
    with pytest.raises(InputError, match="refused to store a resource with resourceType '../../evil'"):
        Store(tmp_path / "store").write([OBSERVATION, {**OBSERVATION, "resourceType": "../../evil", "id": "o2"}])
    assert not list(tmp_path.rglob("*evil*"))
    assert Store(tmp_path / "store").counts().get("Observation") is None  # the write holding it stored nothing


# --- owner-only -------------------------------------------------------------------------------------

@responses.activate
def test_what_map_pull_and_unmap_write_is_owner_only_under_umask_022(study, tmp_path, umask_022):
    shutil.copytree(BAD / "non-numeric", tmp_path / "tables")
    work = tmp_path / "work"
    assert invoke("map", tmp_path / "tables", "--store", work / "store").exit_code == ExitCode.REJECTED
    assert list((work / "store" / "rejects").glob("*.csv"))
    (work / "out").mkdir(mode=0o700)  # map does not create the directory of --bundle
    assert invoke("map", tmp_path / "tables", "--bundle", work / "out" / "bundle.json").exit_code == ExitCode.REJECTED
    assert invoke("unmap", work / "store", "--out", work / "tables").exit_code == 0
    mock_study_server(study, [OBSERVATION])
    assert invoke("pull", "--server", BASE, "--store", work / "pulled", "--state", work / "state").exit_code == 0
    assert (work / "state" / "journal.sqlite").exists() and (work / "pulled" / "Observation.ndjson").exists()
    assert (work / "out" / "bundle.json.rejects").is_dir()
    assert not_owner_only(work) == []


# --- permissions ---------------------------------------------------------------------------------

# root passes every permission check; without these capabilities it meets them as a user does
_AS_A_USER = (["setpriv", "--inh-caps=-dac_override,-dac_read_search,-fowner",
               "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"] if os.geteuid() == 0 else [])


def run_as_a_user(*argv: object) -> subprocess.CompletedProcess:
    return subprocess.run([*_AS_A_USER, FHIR_MSC, *map(str, argv)], capture_output=True, text=True)


@pytest.fixture
def read_only(tmp_path):
    """A directory holding a mapped store, both read-only (made writable again afterwards, for pytest to remove)."""
    directory = tmp_path / "read-only"
    assert invoke("map", BAD / "good", "--store", directory / "store", "--study", DEFAULT_STUDY).exit_code == 0
    for path in (directory / "store", directory):
        path.chmod(0o555)
    yield directory
    for path in (directory, directory / "store"):
        path.chmod(0o700)


@pytest.mark.parametrize(("argv", "unwritable"), [
    (["map", BAD / "good", "--store", "{dir}/store"], "{dir}/store"),  # a read-only store
    (["map", BAD / "good", "--store", "{dir}/new", "--study", DEFAULT_STUDY], "{dir}"),  # a new store in it
    (["unmap", "{dir}/store", "--out", "{dir}/tables"], "{dir}"),
    (["export", "--store", "{dir}/store", "--out", "{dir}/views"], "{dir}"),
])
def test_a_directory_that_cannot_be_written_is_one_line_and_exit_11(read_only, argv, unwritable):
    before = sorted(p.relative_to(read_only) for p in read_only.rglob("*"))
    result = run_as_a_user(*(str(a).format(dir=read_only) for a in argv))
    assert result.returncode == ExitCode.NO_ACCESS, result.stderr
    assert result.stderr == (f"fhir-msc: error: {unwritable.format(dir=read_only)}: cannot write there (permission "
                             "denied): give a directory you may write to, or make it writable for you\n")
    assert sorted(p.relative_to(read_only) for p in read_only.rglob("*")) == before


def test_an_input_that_cannot_be_read_is_one_line_and_exit_11(tmp_path):
    tables = tmp_path / "tables"
    shutil.copytree(BAD / "good", tables)
    (tables / "dm.csv").chmod(0)
    result = run_as_a_user("map", tables, "--store", tmp_path / "store", "--study", DEFAULT_STUDY)
    assert result.returncode == ExitCode.NO_ACCESS, result.stderr
    assert result.stderr == (f"fhir-msc: error: {tables / 'dm.csv'}: permission denied: give a path you may read "
                             "(or write, for an output), or change its permissions\n")


def test_a_read_only_store_is_still_read_by_every_command_that_reads(tmp_path):
    mini = Path(__file__).parent / "data" / "mini-study"
    store = tmp_path / "store"
    assert invoke("map", mini / "tables", "--store", store, "--study", mini / "study.yaml").exit_code == 0
    store.chmod(0o555)
    try:
        before = sorted(p.relative_to(store) for p in store.rglob("*"))
        for argv, printed in ((["validate", store], "all valid"), (["analyze", "--store", store], "RESP"),
                              (["verify", "--store", store], "reproduced 2/2"),
                              (["unmap", store, "--out", tmp_path / "tables"], "xs.csv 28 rows"),
                              (["export", "--store", store, "--out", tmp_path / "views"], "subjects: 14 rows"),
                              (["sql", "SELECT count(*) AS n FROM subjects", "--store", store], "14")):
            result = run_as_a_user(*argv)
            assert result.returncode == 0 and printed in result.stdout, (argv, result.stderr)
        assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    finally:
        store.chmod(0o700)
