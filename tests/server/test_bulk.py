"""Bulk Data $export: the loopback server's export and fhir-msc's bulk client and pull --bulk, over HTTP on 127.0.0.1."""

import gzip
import json
import tempfile
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from fhir_msc import Store, jobs, load_study
from fhir_msc.cli import main
from fhir_msc.errors import ExitCode, ResourceNotFound, TemporaryServerError
from fhir_msc.progress import Progress
from fhir_msc.server import bulk
from fhir_msc.server.auth import BearerAuth
from fhir_msc.server.client import FhirClient, RetryPolicy
from loopback import LoopbackServer

BAD = Path(__file__).parents[1] / "data" / "bad"
FAST = RetryPolicy(attempts=5, backoff=0.01, max_delay=0.05, max_total=10)
OUTSIDER = {"resourceType": "Patient", "id": "outsider", "name": [{"family": "Not-In-The-Study"}]}
OUTSIDER_OBSERVATION = {"resourceType": "Observation", "id": "outsider-fvc", "status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": "19868-9"}]},
                        "subject": {"reference": "Patient/outsider"}, "valueQuantity": {"value": 3.1, "unit": "L"}}


def client(base: str, waits: list | None = None, token: str | None = None) -> FhirClient:
    return FhirClient(base, retry=FAST, sleep=(waits.append if waits is not None else lambda s: None),
                      auth=BearerAuth(base, token) if token else None)


def loaded(env: dict | None = None) -> LoopbackServer:
    """A server holding the small study (3 subjects) and one patient outside it, with an Observation."""
    server = LoopbackServer(env)
    c = client(server.base, token=(env or {}).get("FHIR_TEST_TOKEN"))
    with tempfile.TemporaryDirectory() as state:
        jobs.push(load_study(), BAD / "good", c, Path(state))
    for resource in (OUTSIDER, OUTSIDER_OBSERVATION):
        c.request("PUT", f"{resource['resourceType']}/{resource['id']}", json=resource)
    return server


@pytest.fixture(scope="module")
def shared():
    """One loaded server for the tests that only read (small files, so exports have several)."""
    server = loaded({"FHIR_TEST_BULK_FILE_LINES": "10"})
    yield server
    server.stop()


def without_meta(store: Store) -> dict:
    return {t: sorted(json.dumps({k: v for k, v in r.items() if k != "meta"}, sort_keys=True) for r in store.read(t))
            for t in store.resource_types()}


# --- the test server and the protocol -----------------------------------------------------------

def test_capability_statement_declares_the_three_export_levels(shared):
    assert bulk.export_levels(client(shared.base)) == {"system", "Patient", "Group"}


def test_system_patient_and_group_exports_hold_what_each_level_covers(shared, tmp_path):
    c = client(shared.base)
    group = next(c.search("Group"))
    counts = {}
    for level in ("system", "Patient", f"Group/{group['id']}"):
        done = bulk.export(c, level, tmp_path, types=("Patient", "Observation"))
        counts[level.split("/")[0]] = {t: sum(1 for _ in done.resources(t)) for t in ("Patient", "Observation")}
        assert done.manifest.transaction_time and done.errors == [] and not done.manifest.requires_access_token
        bulk.finish(c, done)
        assert not done.directory.exists()
        with pytest.raises(ResourceNotFound, match="HTTP 404"):  # the job is deleted on the server
            c.request("GET", done.status_url)
    assert counts["system"] == counts["Patient"] == {"Patient": 4, "Observation": 35}
    assert counts["Group"] == {"Patient": 3, "Observation": 34}  # the members only: not the outsider


def test_kick_off_needs_respond_async_and_rejects_unknown_formats(shared):
    plain = requests.get(f"{shared.base}/$export", timeout=10)
    assert plain.status_code == 400 and "respond-async" in plain.text
    csv = requests.get(f"{shared.base}/$export", params={"_outputFormat": "text/csv"}, headers={"Prefer": "respond-async"}, timeout=10)
    assert csv.status_code == 400
    study_type = requests.get(f"{shared.base}/Patient/$export", params={"_type": "ResearchStudy"},
                              headers={"Prefer": "respond-async"}, timeout=10)
    assert study_type.status_code == 400  # not in the patient compartment


def test_files_are_gzip_encoded_when_asked_and_match_the_manifest(shared, tmp_path):
    c = client(shared.base)
    status_url = bulk.kick_off(c, "system", {"_type": ["Observation"]})
    manifest = bulk.wait_for_manifest(c, status_url, bulk.BulkPolicy())
    first = manifest.output[0]
    raw = requests.get(first.url, headers={"Accept-Encoding": "gzip"}, stream=True, timeout=10)
    assert raw.headers["Content-Encoding"] == "gzip"
    lines = gzip.decompress(raw.raw.read()).decode().splitlines()
    assert len(lines) == first.count == 10 and all(json.loads(line)["resourceType"] == "Observation" for line in lines)
    bulk.delete_job(c, status_url)


def test_type_filter_exports_only_matching_resources(shared, tmp_path):
    c = client(shared.base)
    fvc = bulk.type_filter("Observation", {"code": "http://loinc.org|19868-9"})
    done = bulk.export(c, "Patient", tmp_path, types=("Observation",), type_filters=[fvc])
    codes = {coding["code"] for r in done.resources("Observation") for coding in r["code"]["coding"] if "loinc" in coding["system"]}
    assert codes == {"19868-9"} and sum(1 for _ in done.resources("Observation")) == 4  # 3 subjects + the outsider
    bulk.finish(c, done)


def test_error_file_is_read_and_reported(shared, tmp_path):
    c = client(shared.base)
    done = bulk.export(c, "system", tmp_path, types=("Observation",),
                       type_filters=[bulk.type_filter("Observation", {"no-such-parameter": "x"})])
    assert len(done.errors) == 1 and "unknown search parameter no-such-parameter" in done.errors[0]
    assert done.manifest.output == ()
    bulk.finish(c, done)


def test_polling_honours_retry_after_up_to_the_cap_and_x_progress_is_shown(tmp_path, caplog):
    server = loaded({"FHIR_TEST_BULK_POLLS": "2", "FHIR_TEST_BULK_RETRY_AFTER": "7"})
    try:
        waits: list[float] = []
        c = client(server.base, waits)
        caplog.set_level("INFO", logger="fhir_msc.server.bulk")
        status_url = bulk.kick_off(c, "system", {"_type": ["Patient"]})
        bulk.wait_for_manifest(c, status_url, bulk.BulkPolicy(max_poll_wait=5))
        assert waits == [5, 5]  # Retry-After 7 capped at 5, twice
        assert "resource types exported" in caplog.text
        with pytest.raises(TemporaryServerError, match="not ready"):  # bounded in total time
            bulk.wait_for_manifest(c, bulk.kick_off(c, "system", {}), bulk.BulkPolicy(max_poll_wait=5, max_total=4))
    finally:
        server.stop()


def test_verify_refuses_a_short_file_or_another_type(tmp_path):
    path = tmp_path / "f.ndjson"
    path.write_text('{"resourceType": "Patient", "id": "a"}\n\n{"resourceType": "Patient", "id": "b"}\n')
    assert bulk.verify(path, bulk.ExportFile(type="Patient", url="u", count=2)) == 2
    with pytest.raises(bulk.BadFile, match="manifest says 3"):
        bulk.verify(path, bulk.ExportFile(type="Patient", url="u", count=3))
    with pytest.raises(bulk.BadFile, match="line 1 is not a Observation"):
        bulk.verify(path, bulk.ExportFile(type="Observation", url="u"))
    path.write_text('{"resourceType": "Patient", "id": "a"}\n{"resourceType": "Pat')
    with pytest.raises(bulk.BadFile, match="line 2 is not JSON"):
        bulk.verify(path, bulk.ExportFile(type="Patient", url="u"))


# --- pull --bulk ------------------------------------------------------------------------------

def test_pull_bulk_store_equals_paged_pull_store(study, shared, tmp_path):
    c = client(shared.base)
    by_bulk = jobs.pull(study, c, tmp_path / "bulk", tmp_path / "s1", bulk=True)
    paged = jobs.pull(study, c, tmp_path / "paged", tmp_path / "s2")
    assert by_bulk.method == "bulk" and by_bulk.level.startswith("Group/") and by_bulk.ok
    assert by_bulk.counts == paged.counts and by_bulk.counts["Patient"] == 3  # the outsider is filtered out
    assert without_meta(Store(tmp_path / "bulk")) == without_meta(Store(tmp_path / "paged"))
    assert not list((tmp_path / "s1" / "bulk").iterdir())  # files removed once stored


def test_pull_bulk_is_incremental_from_the_transaction_time(study, tmp_path):
    server = loaded()
    try:
        c = client(server.base)
        first = jobs.pull(study, c, tmp_path / "store", tmp_path / "state", bulk=True)
        observation = next(o for o in c.search("Observation") if o["id"] != "outsider-fvc")
        observation["status"] = "amended"
        c.request("PUT", f"Observation/{observation['id']}", json=observation)
        second = jobs.pull(study, c, tmp_path / "store", tmp_path / "state", bulk=True)
        assert second.since == first.high_water and second.counts == {"Observation": 1}
        stored = {o["id"]: o for o in Store(tmp_path / "store").read("Observation")}
        assert stored[observation["id"]]["status"] == "amended" and len(stored) == 34
    finally:
        server.stop()


def test_killed_pull_bulk_resumes_with_the_files_already_verified(study, tmp_path):
    server = loaded({"FHIR_TEST_BULK_FILE_LINES": "5"})
    try:
        c = client(server.base)

        class KilledAfterOneFile(Progress):
            downloading = False

            def start(self, label, total=None, unit="resources"):
                self.downloading = unit == "files"

            def advance(self, n=1):
                if self.downloading:
                    raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            jobs.pull(study, c, tmp_path / "store", tmp_path / "state", bulk=True, progress=KilledAfterOneFile())
        kept = list((tmp_path / "state" / "bulk").rglob("*"))
        assert kept and all(p.stat().st_mode & 0o077 == 0 for p in kept)  # journal and files owner-only
        resumed = jobs.pull(study, c, tmp_path / "store", tmp_path / "state", bulk=True)
        assert resumed.resumed and resumed.resumed_files >= 1 and resumed.files >= 1
        assert resumed.resumed_files + resumed.files == 12  # files of ≤5 resources: Patient 1, ResearchSubject 1,
        # Encounter 1, MedicationAdministration 2, Observation 7
        assert not list((tmp_path / "state" / "bulk").glob("*/*.part"))  # the cut-off download was not kept
        jobs.pull(study, c, tmp_path / "paged", tmp_path / "paged-state")
        assert without_meta(Store(tmp_path / "store")) == without_meta(Store(tmp_path / "paged"))
    finally:
        server.stop()


@pytest.mark.parametrize("fault", ["poll-429", "cut-file"])
def test_pull_bulk_survives_429_on_polling_and_a_file_cut_mid_download(study, tmp_path, fault):
    server = loaded({"FHIR_TEST_BULK_FAULTS": fault})
    try:
        c = client(server.base)
        result = jobs.pull(study, c, tmp_path / "store", tmp_path / "state", bulk=True)
        assert result.ok and c.stats.retries >= 1
        assert Store(tmp_path / "store").counts()["Observation"] == 34
    finally:
        server.stop()


def test_a_failed_job_is_one_line_exit_8_and_is_not_resumed(study, tmp_path):
    server = loaded({"FHIR_TEST_BULK_FAULTS": "job-error"})
    try:
        args = ["pull", "--bulk", "--server", server.base, "--store", str(tmp_path / "store"), "--state", str(tmp_path / "s")]
        failed = CliRunner().invoke(main, args)
        assert failed.exit_code == ExitCode.SERVER and "export job failed on the server" in failed.output
        assert "Traceback" not in failed.output
        assert not list((tmp_path / "s" / "bulk").glob("*/job.json"))
    finally:
        server.stop()


def test_export_errors_are_printed_exit_7_and_the_mark_does_not_move(study, tmp_path):
    server = loaded({"FHIR_TEST_BULK_FAULTS": "error-file"})
    try:
        args = ["pull", "--bulk", "--server", server.base, "--store", str(tmp_path / "store"), "--state", str(tmp_path / "s")]
        first = CliRunner().invoke(main, args)
        assert first.exit_code == ExitCode.PARTIAL and "export error: error transient: some resources could not be exported" in first.output
        assert Store(tmp_path / "store").counts()["Observation"] == 34  # what came through is stored
        again = jobs.pull(study, client(server.base), tmp_path / "store", tmp_path / "s", bulk=True)
        assert again.since is None and again.counts["Observation"] == 34  # the same export again, not "changes since"
    finally:
        server.stop()


def test_pull_bulk_with_a_token_and_fallback_to_paged_without_export(study, tmp_path, monkeypatch):
    server = LoopbackServer({"FHIR_TEST_TOKEN": "bulk-token"})
    try:
        monkeypatch.setenv("FHIR_MSC_TOKEN", "bulk-token")
        runner = CliRunner()
        runner.invoke(main, ["push", str(BAD / "good"), "--server", server.base, "--state", str(tmp_path / "s0")])
        pulled = runner.invoke(main, ["pull", "--bulk", "--server", server.base, "--store", str(tmp_path / "a"),
                                      "--state", str(tmp_path / "s1"), "--json"])
        assert pulled.exit_code == 0, pulled.output
        assert json.loads(pulled.stdout)["method"] == "bulk" and json.loads(pulled.stdout)["counts"]["Observation"] == 34
        status = requests.get(f"{server.base}/$export", headers={"Prefer": "respond-async"}, timeout=10)
        assert status.status_code == 401  # no token, no export
    finally:
        server.stop()
    plain = loaded({"FHIR_TEST_BULK": "off"})
    try:
        result = CliRunner().invoke(main, ["pull", "--bulk", "--server", plain.base, "--store", str(tmp_path / "b"),
                                           "--state", str(tmp_path / "s2")])
        assert result.exit_code == 0 and "declares no $export: pulled by paged search" in result.output
        assert Store(tmp_path / "b").counts()["Observation"] == 34
    finally:
        plain.stop()


def test_a_token_expired_mid_download_is_renewed_once_and_the_pull_completes(study, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    from fhir_msc.server.auth import SmartBackendAuth, load_signing_key

    key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1"}]}))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (tmp_path / "k.pem").chmod(0o600)
    server = LoopbackServer({"FHIR_TEST_SMART_CLIENT_ID": "bulk-client", "FHIR_TEST_SMART_JWKS": str(tmp_path / "jwks.json"),
                             "FHIR_TEST_BULK_FAULTS": "expire-token"})
    try:
        tokens = []

        class CountedAuth(SmartBackendAuth):
            def _fetch(self):
                tokens.append(1)
                return super()._fetch()

        auth = CountedAuth(server.base, "bulk-client", load_signing_key(str(tmp_path / "k.pem"), kid="k1"))
        c = FhirClient(server.base, auth=auth, retry=FAST, sleep=lambda s: None)
        jobs.push(study, BAD / "good", c, tmp_path / "push-state")
        before = len(tokens)
        result = jobs.pull(study, c, tmp_path / "store", tmp_path / "state", bulk=True)
        assert result.method == "bulk" and result.ok and Store(tmp_path / "store").counts()["Observation"] == 34
        assert len(tokens) == before + 1  # the 401 on the first file brought one new token, and the download went on
    finally:
        server.stop()


def test_an_observation_deleted_between_two_bulk_pulls_is_removed_by_the_second(study, tmp_path):
    server = loaded()
    try:
        c = client(server.base)
        args = ["pull", "--bulk", "--server", server.base, "--store", str(tmp_path / "store"), "--state", str(tmp_path / "s")]
        assert CliRunner().invoke(main, args).exit_code == 0
        gone = next(o for o in c.search("Observation") if o["id"] != "outsider-fvc")
        c.request("DELETE", f"Observation/{gone['id']}")
        c.request("DELETE", "Observation/outsider-fvc")  # not the study's: never stored, so nothing to remove
        second = CliRunner().invoke(main, args)
        assert second.exit_code == 0, second.output
        assert "removed (deleted on the server): Observation 1" in second.output
        stored = {o["id"] for o in Store(tmp_path / "store").read("Observation")}
        assert gone["id"] not in stored and len(stored) == 33
        again = jobs.pull(study, c, tmp_path / "store", tmp_path / "s", bulk=True)
        assert again.removed == {} and again.counts == {}  # deleted before this export's _since: not listed again
    finally:
        server.stop()


# --- Bulk Data as other servers do it (FHIR_TEST_BULK_QUIRKS) ------------------------------------

class RecordingClient(FhirClient):
    """A client that records (method, url, whether it went anonymously) of every request."""

    def __init__(self, base: str, **kwargs):
        super().__init__(base, retry=FAST, sleep=kwargs.pop("sleep", lambda s: None), **kwargs)
        self.sent: list[tuple[str, str, bool]] = []

    def response(self, method, path_or_url, **kwargs):
        self.sent.append((method, path_or_url, kwargs.get("anonymous", False)))
        return super().response(method, path_or_url, **kwargs)


def pull_args(base: str, tmp_path: Path, *more: str) -> list[str]:
    return ["pull", "--bulk", "--server", base, "--store", str(tmp_path / "store"), "--state", str(tmp_path / "s"), *more]


@pytest.mark.parametrize("quirk", ["ig-capabilities", "instantiates-only"])
def test_export_levels_are_read_as_the_ig_capability_statement_declares_them(quirk):
    server = LoopbackServer({"FHIR_TEST_BULK_QUIRKS": quirk})
    try:
        statement = client(server.base).capabilities()
        declared = [o for r in statement["rest"][0]["resource"] for o in r.get("operation", [])]
        assert bool(declared) == (quirk == "ig-capabilities") and all(o["name"] == "export" for o in declared)
        assert bulk.export_levels(client(server.base)) == {"system", "Patient", "Group"}
    finally:
        server.stop()


def test_status_and_files_outside_the_base_path_on_the_servers_origin_are_used(study, tmp_path):
    server = loaded({"FHIR_TEST_BULK_QUIRKS": "other-path", "FHIR_TEST_TOKEN": "tok"})
    try:
        c = RecordingClient(server.base, auth=BearerAuth(server.base, "tok"))
        result = jobs.pull(study, c, tmp_path / "store", tmp_path / "s", bulk=True)
        assert result.ok and Store(tmp_path / "store").counts()["Observation"] == 34
        origin = server.base.removesuffix("/fhir")
        outside = [(m, u) for m, u, _ in c.sent if u.startswith(origin) and not u.startswith(server.base)]
        assert {m for m, _ in outside} == {"GET", "DELETE"} and any("/bulkfiles/" in u for _, u in outside)
        assert any(u.startswith(f"{origin}/bulkstatus/") for _, u in outside)
    finally:
        server.stop()


def test_files_on_another_origin_that_need_no_token_are_fetched_without_credentials(study, tmp_path):
    server = loaded({"FHIR_TEST_BULK_QUIRKS": "files-elsewhere", "FHIR_TEST_TOKEN": "tok"})
    try:  # the file host answers 400 to any request that carries an Authorization header
        c = RecordingClient(server.base, auth=BearerAuth(server.base, "tok"))
        result = jobs.pull(study, c, tmp_path / "store", tmp_path / "s", bulk=True)
        assert result.ok and Store(tmp_path / "store").counts()["Observation"] == 34
        elsewhere = [(u, anonymous) for m, u, anonymous in c.sent if u.startswith("http") and not u.startswith(server.base)]
        assert elsewhere and all(anonymous for _, anonymous in elsewhere)
        assert c.anonymous_session.auth is None and "Authorization" not in c.anonymous_session.headers
    finally:
        server.stop()


def test_files_on_another_origin_that_need_the_token_are_refused_in_one_line_and_the_job_deleted(study, tmp_path, monkeypatch):
    server = loaded({"FHIR_TEST_BULK_QUIRKS": "files-elsewhere-token", "FHIR_TEST_TOKEN": "tok"})
    try:
        monkeypatch.setenv("FHIR_MSC_TOKEN", "tok")
        recorded: list[str] = []
        real_delete = bulk.delete_job
        monkeypatch.setattr(bulk, "delete_job", lambda c, url: (recorded.append(url), real_delete(c, url))[1])
        result = CliRunner().invoke(main, pull_args(server.base, tmp_path))
        assert result.exit_code == ExitCode.SERVER and "Traceback" not in result.output
        assert "requiresAccessToken: true" in result.output and "own origin only" in result.output
        assert len(recorded) == 1 and requests.get(recorded[0], headers={"Authorization": "Bearer tok"}, timeout=10).status_code == 404
        assert not list((tmp_path / "s" / "bulk").glob("*/*.ndjson"))
    finally:
        server.stop()


def test_transient_status_answers_are_retried_with_a_growing_wait(study, tmp_path):
    server = loaded({"FHIR_TEST_BULK_QUIRKS": "transient-poll", "FHIR_TEST_BULK_RETRY_AFTER": "x"})
    try:
        waits: list[float] = []
        c = client(server.base, waits)
        done = bulk.export(c, "system", tmp_path, types=("Patient",), policy=bulk.BulkPolicy(first_poll_wait=0.5))
        assert sum(1 for _ in done.resources("Patient")) == 4
        assert waits[:2] == [0.5, 1.0]  # two `transient` 500s, waited out with the backoff (no usable Retry-After)
        with pytest.raises(TemporaryServerError, match="transient` 2 times in a row"):
            bulk.export(c, "system", tmp_path, types=("Observation",), policy=bulk.BulkPolicy(transient_attempts=2))
    finally:
        server.stop()


def test_error_files_are_not_count_checked_and_their_texts_are_shown(study, tmp_path):
    server = loaded({"FHIR_TEST_BULK_QUIRKS": "failed-file", "FHIR_TEST_BULK_FILE_LINES": "2"})
    try:  # the first of the two Patient files (2 resources) is listed as an error file with count 2
        result = CliRunner().invoke(main, pull_args(server.base, tmp_path))
        assert result.exit_code == ExitCode.PARTIAL, result.output
        assert "export error: error processing: Failed to export 0.Patient.ndjson" in result.output
        assert "could not be fetched intact" not in result.output and Store(tmp_path / "store").counts()["Patient"] == 1
    finally:
        server.stop()


def test_an_id_listed_in_several_files_is_read_once_newest_copy_first_or_last(study, tmp_path):
    server = loaded({"FHIR_TEST_BULK_QUIRKS": "duplicates", "FHIR_TEST_BULK_FILE_LINES": "10"})
    try:
        c = client(server.base)
        done = bulk.export(c, "system", tmp_path / "x", types=("Patient", "Observation"))
        listed = sum(item.count for item in done.manifest.output if item.type == "Observation")
        observations = list(done.resources("Observation"))
        assert listed == 37 and len(observations) == len({o["id"] for o in observations}) == 35
        assert done.duplicates == {"Patient": 2, "Observation": 2}
        assert not any(o["meta"].get("tag") for o in observations)  # the older copies (tagged) lost, first or last listed
        assert "2 Observation listed more than once" in " ".join(done.notes())
        bulk.finish(c, done)
        result = CliRunner().invoke(main, pull_args(server.base, tmp_path))
        assert result.exit_code == 0, result.output
        assert "note: 2 Observation listed more than once in the export files" in result.output
        assert Store(tmp_path / "store").counts()["Observation"] == 34
    finally:
        server.stop()


@pytest.mark.parametrize("quirk", ["ignore-type-filter", "type-filter-outcome", "type-filter-empty"])
def test_a_type_filter_the_server_did_not_apply_is_applied_here(tmp_path, quirk):
    server = loaded({"FHIR_TEST_BULK_QUIRKS": quirk})
    try:
        c = RecordingClient(server.base)
        fvc = bulk.type_filter("Observation", {"code": "http://loinc.org|19868-9"})
        done = bulk.export(c, "Patient", tmp_path, types=("Patient", "Observation"), type_filters=[fvc])
        fvcs = list(done.resources("Observation"))
        assert len(fvcs) == 4 and all(o["code"]["coding"][0]["code"] == "19868-9" for o in fvcs)
        assert list(done.unfiltered) == ["Observation"] and done.filtered_out["Observation"] == 31
        assert sum(1 for _ in done.resources("Observation", as_exported=True)) == 35
        assert "did not apply the _typeFilter of Observation" in done.notes()[0] and "(31 left out)" in done.notes()[0]
        kick_offs = [u for m, u, _ in c.sent if u.endswith("$export")]
        assert len(kick_offs) == (1 if quirk == "ignore-type-filter" else 2)  # too little exported: exported again, whole
        bulk.finish(c, done)
        assert not list((tmp_path / "bulk").iterdir())  # the first job's files too
    finally:
        server.stop()


def test_a_type_filter_applied_as_asked_is_not_second_guessed(shared, tmp_path):
    c = RecordingClient(shared.base)
    fvc = bulk.type_filter("Observation", {"code": "http://loinc.org|19868-9"})
    done = bulk.export(c, "Patient", tmp_path, types=("Patient", "Observation"), type_filters=[fvc])
    assert done.unfiltered == {} and done.notes() == [] and sum(1 for _ in done.resources("Observation")) == 4
    assert len([u for m, u, _ in c.sent if u.endswith("$export")]) == 1
    bulk.finish(c, done)


def test_type_filter_matches_code_tokens_and_says_when_it_cannot_judge():
    fvc = {"resourceType": "Observation", "code": {"coding": [{"system": "http://loinc.org", "code": "19868-9"}]}}
    judge = lambda query: bulk.TypeFilter.parse(f"Observation?{query}").matches(fvc)  # noqa: E731
    assert judge("code=http%3A%2F%2Floinc.org%7C19868-9") and judge("code=19868-9") and judge("code=http://loinc.org|")
    assert judge("code=x,http://loinc.org|19868-9") and not judge("code=|19868-9") and not judge("code=http://loinc.org|1")
    assert judge("status=final") is None and not bulk.TypeFilter.parse("Observation?status=final").judged_here
    assert str(bulk.type_filter("Observation", {"code": "a|b,c"})) == "Observation?code=a%7Cb%2Cc"


def test_an_empty_manifest_for_a_full_pull_is_an_error_not_nothing_found(study, tmp_path):
    server = loaded({"FHIR_TEST_BULK_QUIRKS": "empty-manifest"})
    try:
        result = CliRunner().invoke(main, pull_args(server.base, tmp_path))
        assert result.exit_code == ExitCode.SERVER and "Traceback" not in result.output
        assert "holds no Patient file although _type asked for Patient: the study's Group lists 3 members: nothing was stored" in result.output
        assert not (tmp_path / "store").exists() or Store(tmp_path / "store").counts() == {}
        done = bulk.export(client(server.base), "system", tmp_path / "x", types=("Patient", "Observation"))
        assert done.missing == ("Patient", "Observation")
        assert done.notes() == [f"the server exported no {t} file although _type asked for {t}" for t in ("Patient", "Observation")]
    finally:
        server.stop()


def test_a_job_that_failed_on_the_server_is_deleted_there(study, tmp_path):
    server = loaded({"FHIR_TEST_BULK_FAULTS": "job-error"})
    try:
        c = RecordingClient(server.base)
        with pytest.raises(bulk.ExportFailed, match="failed on the server"):
            bulk.export(c, "system", tmp_path, types=("Patient",))
        status_url = next(u for m, u, _ in c.sent if "$export-status" in u)
        assert ("DELETE", status_url, False) in c.sent
        assert requests.get(status_url, timeout=10).status_code == 404
    finally:
        server.stop()


# --- conflicts: the paged pull's rule ------------------------------------------------------------

@pytest.mark.parametrize("bulk_env", [{}, {"FHIR_TEST_BULK": "off"}], ids=["export", "paged-fallback"])
def test_pull_bulk_keeps_local_data_the_server_lacks_as_a_conflict_unless_the_server_is_preferred(study, tmp_path, bulk_env):
    from cohort_subset import write_subset

    server = LoopbackServer(bulk_env)
    try:
        local = Store(tmp_path / "store")  # three subjects mapped here; the server holds two of them
        assert CliRunner().invoke(main, ["map", str(BAD / "good"), "--store", str(local.path)]).exit_code == 0
        jobs.push(study, write_subset(BAD / "good", tmp_path / "two", 2), client(server.base), tmp_path / "pushed")
        group, before = next(local.read("Group")), local.counts()
        kept = CliRunner().invoke(main, pull_args(server.base, tmp_path))
        assert kept.exit_code == ExitCode.CONFLICTS, kept.output
        assert f"1 conflict(s) with local data in {tmp_path / 's' / 'pull-conflicts.csv'} (the local versions kept" in kept.output
        assert f"conflict: Group/{group['id']}: member (3 here, 2 on the server)" in kept.output
        assert next(local.read("Group")) == group and local.counts() == before
        taken = CliRunner().invoke(main, pull_args(server.base, tmp_path, "--full", "--prefer", "server", "--json"))
        assert taken.exit_code == 0, taken.output
        assert [(c["id"], c["kept"]) for c in json.loads(taken.stdout)["conflicts"]] == [(group["id"], "server")]
        assert len(next(local.read("Group"))["member"]) == 2 and local.counts() == before
    finally:
        server.stop()


def test_pulls_after_a_bulk_pull_take_the_servers_changes_without_calling_them_conflicts(study, tmp_path):
    server = loaded()
    try:
        c = client(server.base)
        store = Store(tmp_path / "store")
        assert CliRunner().invoke(main, pull_args(server.base, tmp_path)).exit_code == 0
        changed = next(o for o in store.read("Observation"))
        for value, bulk_pull in ((111.0, False), (112.0, True)):  # a paged pull after the bulk pull, then a bulk pull
            c.request("PUT", f"Observation/{changed['id']}", json={**changed, "valueQuantity": {
                **changed["valueQuantity"], "value": value}})
            args = pull_args(server.base, tmp_path, "--json")
            result = CliRunner().invoke(main, args if bulk_pull else [a for a in args if a != "--bulk"])
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout)["conflicts"] == [] and json.loads(result.stdout)["counts"]["Observation"] == 1
            assert next(o for o in store.read("Observation") if o["id"] == changed["id"])["valueQuantity"]["value"] == value
    finally:
        server.stop()


def test_pull_bulk_from_a_server_without_the_study_says_so_and_starts_no_export(tmp_path):
    server = LoopbackServer()
    try:
        c = RecordingClient(server.base)
        result = CliRunner().invoke(main, pull_args(server.base, tmp_path))
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"pulled from {server.base}/ into {tmp_path / 'store'}: nothing new; ")
        assert "note: study https://clinicaltrials.gov|NCT04288102 is not on the server: no export was started" in result.stderr
        assert "None" not in result.output
        jobs.pull(load_study(), c, tmp_path / "store", tmp_path / "s", bulk=True)
        assert not any("$export" in url for _, url, _ in c.sent)
    finally:
        server.stop()


def test_an_export_job_the_server_does_not_delete_is_one_warning_line(study, tmp_path):
    server = loaded({"FHIR_TEST_BULK_FAULTS": "delete-refused"})
    try:
        result = CliRunner().invoke(main, pull_args(server.base, tmp_path))
        assert result.exit_code == 0, result.output
        assert Store(tmp_path / "store").counts()["Observation"] == 34
        warned = [line for line in result.stderr.splitlines() if "did not delete the export job" in line]
        assert len(warned) == 1 and warned[0].startswith("note: the server did not delete the export job (DELETE ")
        assert "HTTP 405: export jobs cannot be deleted here (test fault)" in warned[0]
        assert warned[0].endswith("it may keep the exported files until they expire there")
    finally:
        server.stop()
