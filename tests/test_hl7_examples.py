"""Real HL7 example resources (npm hl7.fhir.r4.examples 4.0.1, hl7.fhir.r5.examples 5.0.0) as input.

The packages are installed in server/node_modules by `npm ci` (not committed); each test copies
the examples it needs into a tmp directory. Every command must use them or account for them,
never crash, and never store an invalid resource; fhir-msc's validator must agree with Medplum's.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from medplum import SERVER_DIR

from fhir_msc import Store, get_version, jobs, load_study
from fhir_msc.cli import main
from fhir_msc.errors import ExitCode
from fhir_msc.fhir.mapping import tables_to_fhir
from fhir_msc.fhir.unmapping import NOT_A_NUMBER
from fhir_msc.fhir.validate import validate_resource
from fhir_msc.server.client import FhirClient
from fhir_msc.tables.sdtm import RejectLog

EXAMPLES = {"R4": SERVER_DIR / "node_modules" / "hl7.fhir.r4.examples",
            "R5": SERVER_DIR / "node_modules" / "hl7.fhir.r5.examples"}
STUDY_TYPES = ("Patient", "Observation", "ResearchStudy", "ResearchSubject", "Encounter", "AdverseEvent")
SMALL_BUNDLE = 100_000  # bytes: HL7's small example Bundles, not the definition bundles of the whole spec
MINI = Path(__file__).parent / "data" / "mini-study"


def example(version: str, name: str) -> dict:
    return json.loads((EXAMPLES[version] / f"{name}.json").read_text())


def example_files(version: str) -> list[Path]:
    """Every example of the types fhir-msc reads, and HL7's small example Bundles."""
    files = [f for t in STUDY_TYPES for f in sorted(EXAMPLES[version].glob(f"{t}-*.json"))]
    return files + [f for f in sorted(EXAMPLES[version].glob("Bundle-*.json")) if f.stat().st_size < SMALL_BUNDLE]


def write_store(path: Path, resources: list[dict]) -> Path:
    """A store directory (NDJSON per type) written without fhir-msc, so nothing is normalised on the way."""
    path.mkdir(parents=True)
    for resource in resources:
        with open(path / f"{resource['resourceType']}.ndjson", "a") as out:
            out.write(json.dumps(resource) + "\n")
    return path


def broken_copies(version: str) -> list[dict]:
    """Examples made invalid in ways both validators check (each gets its own id)."""
    patient, glucose = example(version, "Patient-example"), example(version, "Observation-f001")
    pressure = example(version, "Observation-blood-pressure")
    return [
        {**patient, "id": "broken-birthdate", "birthDate": "1974-13-25"},
        {**patient, "id": "broken-unknown-element", "colour": "blue"},
        {**patient, "id": "broken-gender-type", "gender": 1},
        {**{k: v for k, v in glucose.items() if k != "status"}, "id": "broken-no-status"},
        {**glucose, "id": "broken-code-list", "code": [glucose["code"]]},
        {**pressure, "id": "broken-component-code",
         "component": [{k: v for k, v in c.items() if k != "code"} for c in pressure["component"]]},
    ]


def ours_invalid(source: Path, version: str) -> set[str]:
    """``Type/id`` of each resource `fhir-msc validate --json` reports."""
    result = CliRunner().invoke(main, ["validate", str(source), "--fhir-version", version, "--json"])
    assert result.exit_code in (0, 5), result.output
    report = json.loads(result.stdout)
    assert report["error_count"] < 50  # MAX_REPORTED: every error is listed, so the set is complete
    return {problem["resource"] for problem in report["errors"]}


# --- validate: our verdict and Medplum's ----------------------------------------------------

@pytest.mark.parametrize("version", ["R4", "R5"])
def test_validate_agrees_with_medplum_on_every_hl7_example_and_broken_copies(version, independent_validator, tmp_path):
    resources = [json.loads(f.read_text()) for f in example_files(version)] + broken_copies(version)
    store = write_store(tmp_path / "examples", resources)
    medplum = independent_validator(version).validate(store)
    assert medplum.checked == len(resources) > 100
    expected = {f"{r['resourceType']}/{r['id']}" for r in broken_copies(version)}
    assert medplum.invalid_resources == expected
    assert ours_invalid(store, version) == expected


# Found by comparing the two validators on mutated HL7 examples: resources Medplum rejects and the
# fhir.resources models alone (lax pydantic, no invariants) accept; fhir/validate.py's JSON rules and
# invariants reject them too.
OURS_TOO_LAX = [
    pytest.param("R4", lambda g: {**g, "valueQuantity": {**g["valueQuantity"], "value": "6.3"}},
                 "Observation.value[x].value", id="R4-decimal-as-json-string"),
    pytest.param("R5", lambda g: {**g, "valueQuantity": {**g["valueQuantity"], "value": "6.3"}},
                 "Observation.value[x].value", id="R5-decimal-as-json-string"),
    pytest.param("R4", lambda g: {**g, "dataAbsentReason": {"text": "not done"}}, "Observation", id="R4-invariant-obs-6"),
    pytest.param("R5", lambda g: {**g, "dataAbsentReason": {"text": "not done"}}, "Observation", id="R5-invariant-obs-6"),
    pytest.param("R4", lambda g: {**g, "interpretation": [{}]}, "Observation.interpretation[0]", id="R4-empty-object"),
    pytest.param("R5", lambda g: {**g, "id": "x" * 65}, "Observation.id", id="R5-id-longer-than-64"),
]


@pytest.mark.parametrize("version, mutate, where", OURS_TOO_LAX)
def test_validate_rejects_what_medplum_rejects(version, mutate, where, independent_validator, tmp_path):
    resource = mutate(example(version, "Observation-f001"))
    (tmp_path / "o.json").write_text(json.dumps(resource))
    assert where in [i["path"] for i in independent_validator(version).validate(tmp_path / "o.json").errors]
    assert validate_resource(resource, get_version(version)) != []


def test_a_decimal_written_as_a_string_is_named_by_validate_and_skipped_by_unmap(tmp_path):
    mini = load_study(MINI / "study.yaml")
    store = Store(tmp_path / "store")
    store.write(tables_to_fhir(mini, MINI / "tables", get_version("R4"), RejectLog(None)))
    observation = next(o for o in store.read("Observation") if "valueQuantity" in o)
    value = str(observation["valueQuantity"]["value"])
    store.write([{**observation, "valueQuantity": {**observation["valueQuantity"], "value": value}}])
    report = jobs.validate(store.path, get_version("R4"))
    assert [str(problem) for problem in report.errors] == [
        f"Observation/{observation['id']}: valueQuantity.value: a FHIR decimal is written as a "
        f"JSON number, without quotes, not as the JSON string {value!r}"]
    account = jobs.unmap(mini, store.path, tmp_path / "tables").accounts["Observation"]
    assert account.skipped == {NOT_A_NUMBER: 1} and account.examples[NOT_A_NUMBER] == [f"Observation/{observation['id']}"]
    analyzed = CliRunner().invoke(main, ["analyze", "--store", str(store.path), "--study", str(MINI / "study.yaml")])
    assert analyzed.exit_code == 0 and analyzed.exception is None, analyzed.output


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_where_medplum_is_laxer_than_fhir_msc(version, independent_validator, tmp_path):
    # Medplum quirks, recorded so that a change in either verdict is noticed: two values for one
    # choice element are only a warning, and an empty string passes; FHIR forbids both.
    # So are an empty array, obs-7 (a component with the Observation's own code next to a value) and,
    # in R4, an id over 64 characters.
    glucose = example(version, "Observation-f001")
    two_values = {**glucose, "valueString": "high"}
    empty_string = {**example(version, "Patient-example"), "language": ""}
    empty_array = {**glucose, "id": "empty-array", "interpretation": []}
    obs_7 = {**glucose, "id": "obs-7", "component": [{"code": glucose["code"], "valueQuantity": glucose["valueQuantity"]}]}
    long_id = [{**glucose, "id": "x" * 65}] if version == "R4" else []
    laxer = [two_values, empty_string, empty_array, obs_7, *long_id]
    write_store(tmp_path / "s", laxer)
    report = independent_validator(version).validate(tmp_path / "s")
    assert report.errors == []
    assert [i["message"] for i in report.issues] == ['Conflicting choice of type properties: "valueString", "valueQuantity"']
    for resource in laxer:
        assert validate_resource(resource, get_version(version)) != [], resource["id"]


# --- unmap, analyze: use the examples or account for them ------------------------------------

@pytest.mark.parametrize("version", ["R4", "R5"])
def test_unmap_and_analyze_of_hl7_examples_exit_cleanly(version, study, tmp_path):
    store = write_store(tmp_path / "examples", [json.loads(f.read_text()) for f in example_files(version)])
    runner = CliRunner()
    unmapped = runner.invoke(main, ["unmap", str(store), "--out", str(tmp_path / "tables"), "--json"])
    assert unmapped.exit_code == 0, unmapped.output
    assert json.loads(unmapped.stdout)["rows"].get("xs.csv", 0) == 0  # nothing of another study became a finding
    analyzed = runner.invoke(main, ["analyze", "--store", str(store), "--format", "json"])
    assert analyzed.exit_code == ExitCode.BAD_INPUT, analyzed.output  # no study subjects: said in one line
    assert "Traceback" not in analyzed.output and "no findings of" in analyzed.output


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_unmap_accounts_for_every_hl7_example(version, study, tmp_path):
    resources = [json.loads(f.read_text()) for f in example_files(version) if not f.name.startswith("Bundle-")]
    store = write_store(tmp_path / "examples", resources)
    result = jobs.unmap(study, store, tmp_path / "tables")
    assert {t: a.read for t, a in result.accounts.items() if a.read} == Counter(r["resourceType"] for r in resources)
    assert all(account.balanced and account.used == 0 for account in result.accounts.values())  # none is ours


def test_analyze_accounts_for_observations_it_does_not_use(tmp_path):
    store = write_store(tmp_path / "examples", [example("R4", "Observation-f001")])
    analyzed = CliRunner().invoke(main, ["analyze", "--store", str(store)])
    assert analyzed.exit_code == ExitCode.BAD_INPUT
    assert "(Observations: 1 read = 0 used + 1 no outcome code of this study)" in analyzed.output


@pytest.mark.parametrize("version", ["R4", "R5"])
@pytest.mark.parametrize("command", ["validate", "unmap", "analyze"])
def test_hl7_transaction_bundle_with_delete_and_get_entries(version, command, tmp_path):
    # Bundle-bundle-transaction: POST/PUT Patients, a Parameters POST, and DELETE / GET entries with no resource.
    bundle = EXAMPLES[version] / "Bundle-bundle-transaction.json"
    args = {"validate": ["validate", str(bundle), "--fhir-version", version],
            "unmap": ["unmap", str(bundle), "--out", str(tmp_path / "tables")],
            "analyze": ["analyze", "--store", str(bundle)]}[command]
    result = CliRunner().invoke(main, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == (ExitCode.BAD_INPUT if command == "analyze" else 0), result.output
    entries = json.loads(bundle.read_text())["entry"]
    requests_only = [f"entry[{i}] {e['request']['method']} {e['request']['url']}" for i, e in enumerate(entries) if "resource" not in e]
    assert len(requests_only) == 4  # every entry is accounted for: the requests without a resource are named
    assert f"not used: {bundle}: 4 bundle entries hold no resource (a DELETE or GET request has none): " \
           f"{', '.join(requests_only)}\n" in result.stderr
    if command == "validate":
        assert f"{len(entries) - len(requests_only)} resources checked, all valid" in result.output


# --- pull: examples on the server next to the study ------------------------------------------

def _put(base: str, resource: dict) -> None:
    answer = requests.put(f"{base}/{resource['resourceType']}/{resource['id']}", json=resource, timeout=30,
                          headers={"content-type": "application/fhir+json"})
    assert answer.status_code in (200, 201), answer.text


def test_pull_with_hl7_examples_on_the_server_stores_only_valid_study_resources(fhir_server, independent_validator, tmp_path):
    mini = load_study(MINI / "study.yaml")
    mapped = Store(tmp_path / "mapped")
    log = RejectLog(None)
    mapped.write(tables_to_fhir(mini, MINI / "tables", get_version("R4"), log))
    client = FhirClient(fhir_server.base)
    assert jobs.push(mini, mapped.path, client, tmp_path / "state").ok
    study_patient = next(mapped.read("Patient"))["id"]
    # HL7's own study, subject, patient and encounter, unrelated to ours; and its Observations
    # (quantity, comparator, components, coded value) re-pointed at one of our subjects.
    for name in ("ResearchStudy-example", "ResearchSubject-example", "Patient-example", "Encounter-example"):
        _put(fhir_server.base, example("R4", name))
    observations = ["Observation-f001", "Observation-f205", "Observation-blood-pressure", "Observation-bloodgroup"]
    for name in observations:
        observation = example("R4", name)
        _put(fhir_server.base, {**observation, "subject": {"reference": f"Patient/{study_patient}"}})
    result = CliRunner().invoke(main, ["pull", "--server", fhir_server.base, "--store", str(tmp_path / "pulled"),
                                       "--state", str(tmp_path / "state"), "--study", str(MINI / "study.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    pulled = Store(tmp_path / "pulled")
    counts = pulled.counts()
    assert counts["Observation"] == mapped.counts()["Observation"] + len(observations)  # on our subject: pulled
    assert json.loads(result.stdout)["counts"] == counts
    for resource_type in ("ResearchStudy", "ResearchSubject", "Patient", "Encounter"):  # HL7's own: left on the server
        assert counts.get(resource_type, 0) == mapped.counts().get(resource_type, 0), resource_type
    assert independent_validator("R4").validate(pulled.path).errors == []
    assert jobs.validate(pulled.path, get_version("R4")).ok
    # the foreign Observations change nothing in the analysis, and unmap says why it left them out
    assert jobs.analysis_frame(mini, pulled.path).equals(jobs.analysis_frame(mini, mapped.path))
    account = jobs.unmap(mini, pulled.path, tmp_path / "tables").accounts["Observation"]
    assert account.skipped == {"no outcome code of this study": len(observations)}
    assert sorted(account.examples["no outcome code of this study"]) == sorted(
        f"Observation/{example('R4', n)['id']}" for n in observations)
