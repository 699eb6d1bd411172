"""push and pull against mocked servers (responses): replies checked entry by entry, the server
check after a push, servers without a CapabilityStatement, invalid resources on pull."""

import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from click.testing import CliRunner

from fhir_msc import Store, get_version, jobs
from fhir_msc.cli import main
from fhir_msc.errors import ExitCode, InvalidResponse
from fhir_msc.fhir.mapping import tables_to_fhir
from fhir_msc.server.client import FhirClient, RetryPolicy
from fhir_msc.server.journal import Journal
from fhir_msc.server.sync import push, server_check, server_profile
from fhir_msc.tables.sdtm import RejectLog

BASE = "http://127.0.0.1:9998/fhir"
GOOD = Path(__file__).parents[1] / "data" / "bad" / "good"
METADATA = {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1",
            "rest": [{"interaction": [{"code": "transaction"}], "resource": [{"type": "Patient", "updateCreate": True}]}]}


def make_client() -> FhirClient:
    return FhirClient(BASE, retry=RetryPolicy(attempts=2, backoff=0.01, max_delay=0.01, max_total=5))


def patients(n: int) -> list[dict]:
    return [{"resourceType": "Patient", "id": f"p{i}", "identifier": [{"system": "s", "value": str(i)}]} for i in range(n)]


def reply(*statuses) -> dict:
    return {"resourceType": "Bundle", "type": "transaction-response",
            "entry": [{"response": {"status": s}} if s else {} for s in statuses]}


@pytest.mark.parametrize("statuses,failed", [
    (["201 Created"], {"p1", "p2", "p3", "p4"}),                        # 1 entry for 5 sent
    (["201", "200 OK", "400 Bad Request", None, "200"], {"p2", "p3"}),  # a 4xx status, an entry without response
])
@responses.activate
def test_transaction_reply_is_checked_entry_by_entry(tmp_path, server_holds, statuses, failed):
    responses.get(f"{BASE}/metadata", json=METADATA)
    responses.post(BASE + "/", json=reply(*statuses))
    server_holds(BASE, {"Patient": [f"p{i}" for i in range(5) if f"p{i}" not in failed]})
    result = push(make_client(), patients(5), Journal(tmp_path), method="id")
    assert not result.ok and {line.split(":")[0] for line in result.failed} == {f"Patient/{i}" for i in failed}
    assert result.total == 5 == result.created + result.updated + result.unchanged + len(result.failed)
    assert result.checked == 5 - len(failed)
    if len(statuses) == 1:
        assert "no entry for it (1 entries for 5 sent)" in result.failed[0]
    rerun = push(make_client(), patients(5), Journal(tmp_path), method="id")
    assert rerun.unchanged == 5 - len(failed)  # the failed ones were not journalled: they are sent again


@responses.activate
def test_push_exits_7_when_the_server_still_lacks_what_it_accepted(tmp_path, server_holds):
    responses.get(f"{BASE}/metadata", json=METADATA)
    posts = []

    def accept(request):
        posts.append(len(json.loads(request.body)["entry"]))
        return 200, {}, json.dumps(reply(*["200 OK"] * posts[-1]))

    responses.add_callback(responses.POST, BASE + "/", callback=accept)
    server_holds(BASE, {})  # ... but holds nothing
    result = CliRunner().invoke(main, ["push", str(GOOD), "--server", BASE, "--state", str(tmp_path / "s"), "--json"])
    assert result.exit_code == ExitCode.PARTIAL, result.output
    body = json.loads(result.stdout)
    assert len(body["failed"]) == 54 and "does not hold it, even when sent again" in body["failed"][0]
    assert sum(posts) == 2 * 54  # sent, found missing, sent again, still missing
    assert Journal(tmp_path / "s").pushed(BASE + "/", "Patient", body["failed"][0].split("/")[1].split(":")[0]) is None


@pytest.mark.parametrize("answer,said", [
    ({"json": {"resourceType": "Bundle", "type": "searchset", "total": 0}}, "it answered a searchset Bundle"),
    ({"status": 404, "json": {"resourceType": "OperationOutcome", "issue": []}}, "HTTP 404"),
    ({"body": "<html>hello</html>"}, "not JSON"),
])
@responses.activate
def test_metadata_that_is_not_a_capability_statement_is_said_once(answer, said):
    responses.get(f"{BASE}/metadata", **answer)
    profile = server_profile(make_client(), "R5")
    assert profile.capabilities is None and profile.version.name == "R5" and profile.bundle_type == "transaction"
    assert len(profile.notes) == 1 and said in profile.notes[0] and "--fhir-version" in profile.notes[0]
    assert profile.push_method("conditional") == "conditional"
    with pytest.raises(InvalidResponse, match="--method id"):
        profile.push_method("auto")
    assert server_profile(make_client()).version.name == "R4"


@responses.activate
def test_an_explicit_fhir_version_wins_over_the_capability_statement():
    responses.get(f"{BASE}/metadata", json=METADATA)
    profile = server_profile(make_client(), "R5")
    assert profile.version.name == "R5" and profile.notes == () and profile.push_method("auto") == "id"


@responses.activate
def test_pull_keeps_invalid_resources_out_of_the_store_and_counts_them(study, tmp_path, server_holds):
    resources = list(tables_to_fhir(study, GOOD, get_version("R4"), RejectLog(None)))
    by_type: dict[str, list] = {}
    for resource in resources:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    quantities = [o for o in by_type["Observation"] if "valueQuantity" in o]
    for bad in quantities[:2]:
        bad["valueQuantity"] = {**bad["valueQuantity"], "value": "lots"}
    quantities[2]["colour"] = "red"
    responses.get(f"{BASE}/metadata", json=METADATA)
    server_holds(BASE, by_type)
    result = jobs.pull(study, make_client(), tmp_path / "store", tmp_path / "state")
    assert not result.ok and sum(result.invalid.values()) == 3 and len(result.invalid) == 2
    assert any(n == 2 and "valueQuantity.value" in reason for reason, n in result.invalid.items())
    store = Store(tmp_path / "store")
    assert result.counts["Observation"] == store.counts()["Observation"] == len(by_type["Observation"]) - 3
    assert quantities[0]["id"] not in {o["id"] for o in store.read("Observation")}
    cli = CliRunner().invoke(main, ["pull", "--server", BASE, "--store", str(tmp_path / "store2"), "--state", str(tmp_path / "s2")])
    assert cli.exit_code == ExitCode.PARTIAL and "not stored, invalid: 3 resource(s)" in cli.output


@responses.activate
def test_server_check_asks_by_id_when_the_server_holds_much_more(server_holds):
    server_holds(BASE, {"Patient": [f"p{i}" for i in range(12000) if i != 7]})
    expected = {("Patient", f"p{i}"): f"p{i}" for i in range(150)}
    check = server_check(make_client(), expected)
    assert check.lacking == check.absent == {("Patient", "p7")} and check.notes == []
    searches = [call.request.url for call in responses.calls]
    assert "_summary=count" in searches[0] and len(searches) == 3 and all("_id=" in url for url in searches[1:])


@responses.activate
def test_conditional_verify_lists_what_the_journal_never_recorded(tmp_path, server_holds):
    responses.get(f"{BASE}/metadata", json=METADATA)
    server_holds(BASE, {})
    result = push(make_client(), patients(2), Journal(tmp_path), method="conditional", mode="verify")
    assert (result.total, result.unchanged, result.bundles) == (2, 0, 0)
    assert all("not recorded as pushed to this server" in line for line in result.failed) and len(result.failed) == 2


@responses.activate
def test_pull_removes_nothing_when_the_study_is_not_on_the_server(study, tmp_path, server_holds):
    by_type: dict[str, list] = {}
    for resource in tables_to_fhir(study, GOOD, get_version("R4"), RejectLog(None)):
        by_type.setdefault(resource["resourceType"], []).append(resource)
    responses.get(f"{BASE}/metadata", json=METADATA)
    server_holds(BASE, by_type)
    jobs.pull(study, make_client(), tmp_path / "store", tmp_path / "state")
    before = Store(tmp_path / "store").counts()
    responses.reset()
    responses.get(f"{BASE}/metadata", json=METADATA)
    server_holds(BASE, {})
    empty = jobs.pull(study, make_client(), tmp_path / "store", tmp_path / "state", full=True)
    assert empty.removed == {} and Store(tmp_path / "store").counts() == before
    assert any("is not on the server: nothing pulled, nothing removed" in note for note in empty.notes)


@responses.activate
def test_pull_removes_only_what_a_read_proves_deleted_when_listings_fall_short(study, tmp_path):
    by_type: dict[str, list] = {}
    for resource in tables_to_fhir(study, GOOD, get_version("R4"), RejectLog(None)):
        by_type.setdefault(resource["resourceType"], []).append({**resource, "meta": {"lastUpdated": "2026-01-01T00:00:00Z"}})
    observations = sorted(o["id"] for o in by_type["Observation"])
    gone, forbidden = observations[:2]  # deleted on the server: a read answers 404 for one, 403 for the other
    deleted: set[str] = set()

    def search(request):  # once something is deleted, id listings stop at 10 and _id searches list nothing
        resource_type, query = urlsplit(request.url).path.rsplit("/", 1)[-1], parse_qs(urlsplit(request.url).query)
        held = [r for r in by_type.get(resource_type, []) if r["id"] not in deleted]
        held = [r for r in held if r["id"] in query["_id"][0].split(",")] if "_id" in query else held
        shown = [] if query.get("_summary") == ["count"] or (deleted and "_id" in query and "_elements" in query) \
            else held[:10] if deleted and "_elements" in query else held
        return 200, {}, json.dumps({"resourceType": "Bundle", "type": "searchset", "total": len(held),
                                    "entry": [{"resource": r} for r in shown]})

    def read(request):
        resource_id = request.url.rsplit("/", 1)[-1]
        status = 404 if resource_id == gone else 403 if resource_id == forbidden else 200
        body = {"resourceType": "Observation", "id": resource_id} if status == 200 else {"resourceType": "OperationOutcome", "issue": []}
        return status, {}, json.dumps(body)

    responses.get(f"{BASE}/metadata", json=METADATA)
    responses.add_callback(responses.GET, re.compile(rf"{re.escape(BASE)}/Observation/[\w.-]+$"), callback=read)
    responses.add_callback(responses.GET, re.compile(rf"{re.escape(BASE)}/[A-Z]\w*(\?.*)?$"), callback=search)
    jobs.pull(study, make_client(), tmp_path / "store", tmp_path / "state")
    deleted.update({gone, forbidden})
    result = jobs.pull(study, make_client(), tmp_path / "store", tmp_path / "state")
    assert result.since and result.removed == {"Observation": 1}
    assert len(result.unconfirmed) == 1 and result.unconfirmed[0].startswith(f"Observation/{forbidden}: its read failed")
    assert "HTTP 403" in result.unconfirmed[0]
    assert sorted(o["id"] for o in Store(tmp_path / "store").read("Observation")) == observations[1:]
    assert any(note.startswith("Observation: the server listed 10 of the 32") and "by _id in 1 search(es) and 24 read(s): 1 deleted, 22 still there, 1 not confirmed"
               in note for note in result.notes)


def test_a_journal_written_before_pulled_hashes_were_kept_opens_and_is_kept(tmp_path):
    import sqlite3

    with sqlite3.connect(tmp_path / "journal.sqlite") as old:
        old.execute("create table pulled_ids (source text not null, study text not null, resource_type text not null, "
                    "id text not null, primary key (source, study, resource_type, id))")
        old.execute("insert into pulled_ids values ('s', 'x', 'Patient', 'p1')")
    journal = Journal(tmp_path)
    assert journal.pulled("s", "x") == {"Patient": {"p1": None}}  # no hash: taken as left by that pull
    journal.record_pulled("s", "x", {"Patient": {"p1": None, "p2": "h2"}})
    assert journal.pulled("s", "x") == {"Patient": {"p1": None, "p2": "h2"}}
