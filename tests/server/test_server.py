"""Integration: the client, push, pull and sync against a real FHIR engine on 127.0.0.1."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from faultproxy import FaultProxy

from fhir_msc import Store, jobs
from fhir_msc.cli import main
from fhir_msc.errors import ExitCode, IncompleteSearch, SyncLocked
from fhir_msc.fhir.roundtrip import compare_tables
from fhir_msc.fhir.unmapping import fhir_to_tables
from fhir_msc.progress import Progress
from fhir_msc.server.client import FhirClient, RetryPolicy
from fhir_msc.server.journal import exclusive
from fhir_msc.server.sync import SUBJECT_CHUNK, subjects_per_search

BAD = Path(__file__).parents[1] / "data" / "bad"
FAST = RetryPolicy(attempts=5, backoff=0.01, max_delay=0.05, max_total=10)


def client(base: str) -> FhirClient:
    return FhirClient(base, retry=FAST)


def test_capabilities_say_r4_with_transactions(fhir_server):
    c = client(fhir_server.base)
    assert c.fhir_version().name == "R4"
    assert c.supports_transactions()


def test_push_pull_round_trip_equals_the_cohort(study, cohort, demo_store, fhir_server, tmp_path):
    c = client(fhir_server.base)
    result = jobs.push(study, demo_store.path, c, tmp_path / "state")
    assert result.ok and result.created + result.updated == sum(demo_store.counts().values())
    for resource_type, count in demo_store.counts().items():
        assert fhir_server.count(resource_type) == count, resource_type
    pulled = jobs.pull(study, c, tmp_path / "pulled", tmp_path / "state")
    assert pulled.counts["Observation"] == demo_store.counts()["Observation"]
    fhir_to_tables(study, Store(tmp_path / "pulled"), tmp_path / "tables")
    assert compare_tables(cohort, tmp_path / "tables") == []
    # the same analysis frame, and so the same results, from the server as from the store
    assert jobs.analysis_frame(study, c).equals(jobs.analysis_frame(study, demo_store.path))
    assert [c.reproduced.effect for c in jobs.verify(study, c).checks] == [c.reproduced.effect for c in jobs.verify(study, demo_store.path).checks]
    from_server = jobs.analyze(study, c, ["M36"], ["CTNORM"]).adverse_events  # counted in the pulled copy
    assert from_server is not None and from_server == jobs.analyze(study, demo_store.path, ["M36"], ["CTNORM"]).adverse_events


def test_push_twice_creates_nothing_new_and_one_change_updates_one(study, demo_store, fhir_server, tmp_path):
    c = client(fhir_server.base)
    store = Store(tmp_path / "store")
    shutil.copytree(demo_store.path, store.path)
    jobs.push(study, store.path, c, tmp_path / "state")
    again = jobs.push(study, store.path, c, tmp_path / "state")
    assert (again.created, again.updated, again.bundles) == (0, 0, 0)
    assert again.unchanged == again.checked == sum(store.counts().values())
    assert again.requests <= 1 + 2 * len(store.counts()) + 10  # metadata, a count and an id listing per type
    observation = next(store.read("Observation"))
    changed = {**observation, "valueQuantity": {**observation["valueQuantity"], "value": 1.0}} if "valueQuantity" in observation \
        else {**observation, "effectiveDateTime": "2020-01-01"}
    store.write([changed])
    third = jobs.push(study, store.path, c, tmp_path / "state")
    assert (third.created + third.updated, third.unchanged) == (1, sum(store.counts().values()) - 1)
    assert fhir_server.count("Observation") == store.counts()["Observation"]
    assert c.read("Observation", changed["id"]).get("valueQuantity", {}).get("value", 1.0) == 1.0


def test_conditional_push_creates_then_matches_on_identifier(study, fhir_server, tmp_path):
    c = client(fhir_server.base)
    result = jobs.push(study, BAD / "good", c, tmp_path / "state", method="conditional", bundle_size=8)
    assert result.method == "conditional" and result.ok and result.created == 54
    patients = {p["id"] for p in c.search("Patient")}
    # without the journal, the same data matches on business identifiers: nothing new
    again = jobs.push(study, BAD / "good", c, tmp_path / "other-state", method="conditional", bundle_size=8)
    assert again.ok and again.created == 0 and again.updated == 54
    assert {p["id"] for p in c.search("Patient")} == patients
    subject = next(c.search("ResearchSubject"))
    assert subject["individual"]["reference"].split("/")[1] in patients  # urn:uuid resolved to the server's id


def test_search_follows_next_links(study, demo_store, fhir_server, tmp_path):
    c = client(fhir_server.base)
    jobs.push(study, demo_store.path, c, tmp_path / "state")
    pages = list(c.search_pages("Patient", {"_count": "7"}))
    assert len(pages) == 15
    assert len({r["resource"]["id"] for p in pages for r in p["entry"]}) == 100


def test_a_subject_search_asks_for_what_fits_one_page(study):
    findings_per_subject = sum(len(o.visits) for o in study.outcomes)
    observation_step = subjects_per_search(study, "Observation", 1000)
    assert observation_step * findings_per_subject <= 1000 < (observation_step + 1) * findings_per_subject
    assert subjects_per_search(study, "Encounter", 1000) == SUBJECT_CHUNK  # short URLs win there
    assert subjects_per_search(study, "Observation", 50) == 1


def test_pull_is_incremental(study, fhir_server, tmp_path):
    c = client(fhir_server.base)
    jobs.push(study, BAD / "good", c, tmp_path / "state")
    first = jobs.pull(study, c, tmp_path / "pulled", tmp_path / "state")
    assert first.counts["Observation"] == 34 and first.since is None
    second = jobs.pull(study, c, tmp_path / "pulled", tmp_path / "state")
    assert second.counts == {} and second.since == first.high_water


def test_a_second_store_with_the_same_state_gets_a_full_pull(study, fhir_server, tmp_path):
    c = client(fhir_server.base)
    jobs.push(study, BAD / "good", c, tmp_path / "state")
    jobs.pull(study, c, tmp_path / "pulled", tmp_path / "state")
    other = jobs.pull(study, c, tmp_path / "other", tmp_path / "state")  # the mark is the first store's, not this one's
    assert other.since is None and other.counts["Observation"] == 34


def test_sync_store_to_server_to_store(study, fhir_server, tmp_path):
    runner = CliRunner()
    shutil.copytree(BAD / "good", tmp_path / "tables")
    assert runner.invoke(main, ["map", str(tmp_path / "tables"), "--store", str(tmp_path / "a")]).exit_code == 0
    up = runner.invoke(main, ["sync", "--from", str(tmp_path / "a"), "--to", fhir_server.base, "--state", str(tmp_path / "s"), "--json"])
    assert up.exit_code == 0, up.output
    assert json.loads(up.stdout)["pushed"]["updated"] + json.loads(up.stdout)["pushed"]["created"] == 54
    down = runner.invoke(main, ["sync", "--from", fhir_server.base, "--to", str(tmp_path / "b"), "--state", str(tmp_path / "s2")])
    assert down.exit_code == 0, down.output
    runner.invoke(main, ["unmap", str(tmp_path / "b"), "--out", str(tmp_path / "back")])
    assert compare_tables(BAD / "good", tmp_path / "back") == []


def test_sync_refuses_to_run_twice_at_once(study, fhir_server, tmp_path):
    with exclusive(tmp_path / "state"):
        with pytest.raises(SyncLocked):
            jobs.sync(study, str(BAD / "good"), fhir_server.base, tmp_path / "state", client)
    result = CliRunner().invoke(main, ["sync", "--from", str(BAD / "good"), "--to", fhir_server.base, "--state", str(tmp_path / "state")])
    assert result.exit_code == 0  # the lock is released


def test_killed_push_resumes_where_it_stopped(study, demo_store, fhir_server, tmp_path):
    c = client(fhir_server.base)
    sent = []

    class DieAfterFiveBundles(Progress):
        def advance(self, n=1):
            sent.append(n)
            if len(sent) == 5:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        jobs.push(study, demo_store.path, c, tmp_path / "state", progress=DieAfterFiveBundles())
    resumed = jobs.push(study, demo_store.path, c, tmp_path / "state")
    total = sum(demo_store.counts().values())
    assert resumed.unchanged == 250 and resumed.created + resumed.updated == total - 250
    for resource_type, count in demo_store.counts().items():
        assert fhir_server.count(resource_type) == count


def test_bearer_token_required_and_never_printed(study, tmp_path, monkeypatch):
    from conftest import LoopbackServer

    server = LoopbackServer({"FHIR_TEST_TOKEN": "s3cret-token"})
    try:
        runner = CliRunner()
        monkeypatch.delenv("FHIR_MSC_TOKEN", raising=False)
        refused = runner.invoke(main, ["push", str(BAD / "good"), "--server", server.base, "--state", str(tmp_path / "s")])
        assert refused.exit_code == ExitCode.SERVER and "HTTP 401" in refused.output
        monkeypatch.setenv("FHIR_MSC_TOKEN", "s3cret-token")
        allowed = runner.invoke(main, ["push", str(BAD / "good"), "--server", server.base, "--state", str(tmp_path / "s")])
        assert allowed.exit_code == 0, allowed.output
        assert "s3cret" not in refused.output + allowed.output
    finally:
        server.stop()


# --- faults injected between the client and the real server -------------------------------

@pytest.mark.parametrize("plan", [
    [("reset", "POST", "")],                     # connection dropped after the server applied a transaction
    [("503", "POST", "")] * 3,                   # a burst of 503s on transactions
    [("429", "POST", "", 0)],                    # rate limited, Retry-After: 0
    [("slow", "POST", "", 120)],                 # no answer before the client's timeout (applied after it)
])
def test_push_survives_faults_and_server_holds_each_resource_once(study, fhir_server, tmp_path, plan):
    proxy = FaultProxy(fhir_server.base, plan)
    try:
        # a timeout a busy machine never reaches on an ordinary request; the slow fault outlasts any timeout
        c = FhirClient(proxy.base, retry=RetryPolicy(attempts=5, backoff=0.01, max_delay=0.05, max_total=60), timeout=10.0)
        result = jobs.push(study, BAD / "good", c, tmp_path / "state", bundle_size=8)
        assert result.ok and result.retries >= 1 and proxy.faults_fired
        rerun = jobs.push(study, BAD / "good", c, tmp_path / "state")
        assert rerun.unchanged == 54
        for resource_type, count in {"Patient": 3, "Observation": 34, "MedicationAdministration": 9, "Encounter": 3}.items():
            assert fhir_server.count(resource_type) == count
    finally:
        proxy.close()


def test_garbage_answer_is_a_clear_error_and_rerun_completes(study, fhir_server, tmp_path):
    proxy = FaultProxy(fhir_server.base, [("garbage", "POST", "")])
    try:
        result = CliRunner().invoke(main, ["push", str(BAD / "good"), "--server", proxy.base, "--state", str(tmp_path / "s")])
        assert result.exit_code == ExitCode.SERVER and "not JSON" in result.output
        rerun = CliRunner().invoke(main, ["push", str(BAD / "good"), "--server", proxy.base, "--state", str(tmp_path / "s")])
        assert rerun.exit_code == 0, rerun.output
        assert fhir_server.count("Observation") == 34
    finally:
        proxy.close()


# --- the server is the truth: push checks it, pull mirrors it -------------------------------

GOOD_COUNTS = {"Patient": 3, "Observation": 34, "MedicationAdministration": 9, "Encounter": 3}


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def push_cli(*args: str):
    return CliRunner().invoke(main, ["push", str(BAD / "good"), *args])


def test_restarted_server_is_refilled_by_the_next_push(tmp_path):
    from loopback import LoopbackServer

    port = free_port()
    server = LoopbackServer(port=port)
    try:
        first = push_cli("--server", server.base, "--state", str(tmp_path / "s"))
        assert first.exit_code == 0, first.output
    finally:
        server.stop()
    server = LoopbackServer(port=port)  # the same URL, so the same journal entries: and an empty server
    try:
        assert server.count("Observation") == 0
        dry = push_cli("--server", server.base, "--state", str(tmp_path / "s"), "--dry-run", "--json")
        assert dry.exit_code == 0 and json.loads(dry.stdout)["restored"] == 54 and server.count("Observation") == 0
        second = push_cli("--server", server.base, "--state", str(tmp_path / "s"), "--json")
        assert second.exit_code == 0, second.output
        result = json.loads(second.stdout)
        assert (result["restored"], result["unchanged"], result["failed"]) == (54, 0, [])
        assert result["created"] + result["updated"] == result["total"] == result["checked"] == 54
        for resource_type, count in GOOD_COUNTS.items():
            assert server.count(resource_type) == count, resource_type
    finally:
        server.stop()


def test_verify_lists_what_the_server_lacks_and_full_resends_everything(fhir_server, tmp_path):
    state = ["--server", fhir_server.base, "--state", str(tmp_path / "s")]
    assert push_cli(*state).exit_code == 0
    observation = next(client(fhir_server.base).search("Observation"))
    requests.delete(f"{fhir_server.base}/Observation/{observation['id']}", timeout=30).raise_for_status()
    verify = push_cli(*state, "--verify")
    assert verify.exit_code == ExitCode.PARTIAL
    assert "holds 53 of the 54 resources, lacks 1" in verify.output and f"Observation/{observation['id']}: not on the server" in verify.output
    full = push_cli(*state, "--full", "--json")
    assert full.exit_code == 0, full.output
    assert json.loads(full.stdout)["unchanged"] == 0 and json.loads(full.stdout)["bundles"] >= 2
    assert push_cli(*state, "--verify").exit_code == 0 and fhir_server.count("Observation") == 34


def test_conditional_push_resends_what_refers_to_a_recreated_resource(study, fhir_server, tmp_path):
    c = client(fhir_server.base)
    jobs.push(study, BAD / "good", c, tmp_path / "state", method="conditional")
    patient = next(c.search("Patient"))  # deleted alone: what refers to it now points at nothing
    requests.delete(f"{fhir_server.base}/Patient/{patient['id']}", timeout=30).raise_for_status()
    again = jobs.push(study, BAD / "good", c, tmp_path / "state", method="conditional")
    assert again.ok and again.restored == 1 and again.total == 54 and again.updated > 1
    for resource_type, count in GOOD_COUNTS.items():
        assert fhir_server.count(resource_type) == count, resource_type
    patients = {p["id"] for p in c.search("Patient")}
    assert all(o["subject"]["reference"].split("/")[1] in patients for o in c.search("Observation"))


def test_pull_mirrors_deletions_and_leaves_what_it_never_pulled(study, fhir_server, tmp_path):
    c = client(fhir_server.base)
    jobs.push(study, BAD / "good", c, tmp_path / "state")
    store = Store(tmp_path / "pulled")
    local = {"resourceType": "Basic", "id": "kept-local", "code": {"text": "mapped here, never on the server"}}
    store.write([local])
    jobs.pull(study, c, store.path, tmp_path / "state")
    gone = [o["id"] for o in c.search("Observation", {"_count": "2"})][:2]
    requests.delete(f"{fhir_server.base}/Observation/{gone[0]}", timeout=30).raise_for_status()
    full = CliRunner().invoke(main, ["pull", "--server", fhir_server.base, "--store", str(store.path),
                                     "--state", str(tmp_path / "state"), "--full"])
    assert full.exit_code == 0, full.output
    assert "removed (deleted on the server): Observation 1" in full.output
    assert gone[0] not in {o["id"] for o in store.read("Observation")} and store.counts()["Observation"] == 33
    requests.delete(f"{fhir_server.base}/Observation/{gone[1]}", timeout=30).raise_for_status()
    incremental = jobs.pull(study, c, store.path, tmp_path / "state")
    assert incremental.since and incremental.removed == {"Observation": 1}
    assert store.counts()["Observation"] == 32 and [r["id"] for r in store.read("Basic")] == ["kept-local"]


def test_server_without_capability_statement_works_with_explicit_options(tmp_path):
    from loopback import LoopbackServer

    server = LoopbackServer({"FHIR_TEST_METADATA": "searchset"})
    try:
        refused = push_cli("--server", server.base, "--state", str(tmp_path / "s"))
        assert refused.exit_code == ExitCode.SERVER and "--method id" in refused.output
        pushed = push_cli("--server", server.base, "--state", str(tmp_path / "s"), "--method", "id", "--fhir-version", "R4")
        assert pushed.exit_code == 0, pushed.output
        assert pushed.output.count("gave no usable CapabilityStatement (it answered a searchset Bundle)") == 1
        assert server.count("Observation") == 34
        pulled = CliRunner().invoke(main, ["pull", "--server", server.base, "--store", str(tmp_path / "store"),
                                           "--state", str(tmp_path / "s")])
        assert pulled.exit_code == 0 and "going on with FHIR R4 (the default" in pulled.output
        assert Store(tmp_path / "store").counts()["Observation"] == 34
    finally:
        server.stop()


# --- servers that cap their pages without a next link: a listing that falls short proves nothing -----

CAPPED = {"FHIR_TEST_PAGE_CAP": "15"}  # the 34 Observations of BAD/good never fit one page; one subject's 12 do


def test_capped_server_two_pushes_exit_0_and_the_second_sends_nothing(tmp_path):
    from loopback import LoopbackServer

    server = LoopbackServer(CAPPED)
    try:
        state = ["--server", server.base, "--state", str(tmp_path / "s"), "--json"]
        first = push_cli(*state)
        assert first.exit_code == 0, first.output
        assert json.loads(first.stdout)["restored"] == 0 and server.count("Observation") == 34
        second = push_cli(*state)
        assert second.exit_code == 0, second.output
        body = json.loads(second.stdout)
        assert (body["bundles"], body["created"], body["updated"], body["restored"], body["failed"]) == (0, 0, 0, 0, [])
        assert body["unchanged"] == body["checked"] == 54
        assert any(note.startswith("server check, Observation: ") and "listed 15 of the 34" in note for note in body["notes"])
    finally:
        server.stop()


def test_incremental_pull_from_a_capped_server_removes_what_was_deleted_and_nothing_else(study, tmp_path):
    from loopback import LoopbackServer

    server = LoopbackServer(CAPPED)
    try:
        c = client(server.base)
        jobs.push(study, BAD / "good", c, tmp_path / "state")
        store = Store(tmp_path / "pulled")
        first = jobs.pull(study, c, store.path, tmp_path / "state")
        assert store.counts()["Observation"] == 34 and first.ok and first.missed == []
        observations = sorted(o["id"] for o in store.read("Observation"))
        requests.delete(f"{server.base}/Observation/{observations[20]}", timeout=30).raise_for_status()
        second = CliRunner().invoke(main, ["pull", "--server", server.base, "--store", str(store.path),
                                           "--state", str(tmp_path / "state"), "--json"])
        assert second.exit_code == 0, second.output
        body = json.loads(second.stdout)
        assert body["since"] and body["removed"] == {"Observation": 1} and body["unconfirmed"] == []
        assert sorted(o["id"] for o in store.read("Observation")) == observations[:20] + observations[21:]
        assert any(note.startswith("Observation: the server listed 15 of the 33") for note in body["notes"])
    finally:
        server.stop()


def test_pull_keeps_local_data_the_server_lacks_as_a_conflict_unless_the_server_is_preferred(study, fhir_server, tmp_path):
    from cohort_subset import write_subset

    runner = CliRunner()
    local = Store(tmp_path / "local")  # three subjects mapped here; the server holds two of them
    assert runner.invoke(main, ["map", str(BAD / "good"), "--store", str(local.path)]).exit_code == 0
    jobs.push(study, write_subset(BAD / "good", tmp_path / "two", 2), client(fhir_server.base), tmp_path / "pushed")
    group, before = next(local.read("Group")), local.counts()

    def pull(*options: str):
        return runner.invoke(main, ["pull", "--server", fhir_server.base, "--store", str(local.path),
                                    "--state", str(tmp_path / "s"), *options])

    kept = pull()
    assert kept.exit_code == ExitCode.CONFLICTS, kept.output
    assert f"1 conflict(s) with local data in {tmp_path / 's' / 'pull-conflicts.csv'} (the local versions kept" in kept.output
    assert f"conflict: Group/{group['id']}: member (3 here, 2 on the server)" in kept.output
    assert next(local.read("Group")) == group and local.counts() == before
    rows = list(csv.DictReader((tmp_path / "s" / "pull-conflicts.csv").open()))
    assert [(r["RESOURCE_TYPE"], r["ID"], r["KEPT"]) for r in rows] == [("Group", group["id"], "local")]
    assert rows[0]["WHAT_DIFFERS"].startswith("member (3 here, 2 on the server)") and rows[0]["SERVER_LAST_UPDATED"]
    taken = pull("--full", "--prefer", "server", "--json")
    assert taken.exit_code == 0, taken.output
    assert [(c["id"], c["kept"]) for c in json.loads(taken.stdout)["conflicts"]] == [(group["id"], "server")]
    assert len(next(local.read("Group"))["member"]) == 2 and local.counts() == before


def test_a_pull_that_cannot_get_everything_says_so_exits_7_and_keeps_its_mark(study, tmp_path):
    from loopback import LoopbackServer

    server = LoopbackServer({"FHIR_TEST_PAGE_CAP": "5"})  # fewer than one subject's 12 Observations
    try:
        jobs.push(study, BAD / "good", client(server.base), tmp_path / "state")
        pull = ["pull", "--server", server.base, "--store", str(tmp_path / "pulled"), "--state", str(tmp_path / "state")]
        first = CliRunner().invoke(main, pull)
        assert first.exit_code == ExitCode.PARTIAL, first.output
        assert "incomplete: 3 search(es) fell short of what the server says they match" in first.output
        assert "missed: Observation of Patient/" in first.output and "the server listed 5 of the 12 it matches" in first.output
        again = jobs.pull(study, client(server.base), tmp_path / "pulled", tmp_path / "state")
        assert again.since is None and len(again.missed) == 3  # the mark did not move: asked again from the start
    finally:
        server.stop()


def test_a_view_or_an_analysis_of_a_capped_server_stops_instead_of_using_part_of_the_data(study, tmp_path):
    from loopback import LoopbackServer

    server = LoopbackServer({"FHIR_TEST_PAGE_CAP": "5"})  # fewer than one subject's 12 Observations
    try:
        jobs.push(study, BAD / "good", client(server.base), tmp_path / "state")
        view = tmp_path / "values.json"
        view.write_text(json.dumps({"resourceType": "ViewDefinition", "name": "values", "resource": "Observation",
                                    "select": [{"column": [{"name": "id", "path": "getResourceKey()", "type": "id"}]}]}))
        for engine in ("duckdb", "python"):
            out = tmp_path / f"{engine}.csv"
            result = CliRunner().invoke(main, ["view", "run", str(view), "--server", server.base, "--out", str(out),
                                               "--engine", engine])
            assert result.exit_code == ExitCode.SERVER, result.output
            assert "search Observation: the server listed 5 of the 34 it matches (Bundle.total)" in result.stderr
            assert result.stderr.count("\n") == 1 and not out.exists()
        with pytest.raises(IncompleteSearch, match="did not list all of the study's data .Observation of Patient/"):
            jobs.frame_and_account(study, client(server.base))
    finally:
        server.stop()
