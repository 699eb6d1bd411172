"""The client under injected faults (responses mocks): retries, auth, errors, paging safety, URL and TLS safety."""

import email.utils
import http.server
import ipaddress
import json
import re
import ssl
import threading
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fhir_msc.cli import main
from fhir_msc.errors import (
    AuthorizationError,
    CertificateError,
    ExitCode,
    ForeignLinkRefused,
    IncompleteSearch,
    InputError,
    InsecureHttpRefused,
    InvalidResponse,
    MultipleMatches,
    OperationOutcomeError,
    TemporaryServerError,
)
from fhir_msc.server.client import (
    BearerAuth,
    ClientCredentialsAuth,
    FhirClient,
    RetryPolicy,
    _retry_after,
    auth_from_env,
    connect,
)
from fhir_msc.server.journal import Journal
from fhir_msc.server.sync import push
from fhir_msc.study.definition import DEFAULT_STUDY

BASE = "http://127.0.0.1:9999/fhir"
OUTCOME = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid",
                                                          "diagnostics": "Observation.status is required", "expression": ["Observation.status"]}]}
METADATA = {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1",
            "rest": [{"interaction": [{"code": "transaction"}], "resource": [{"type": "Patient", "updateCreate": True}]}]}


def make_client(**kwargs) -> tuple[FhirClient, list[float]]:
    waits: list[float] = []
    policy = kwargs.pop("retry", RetryPolicy(attempts=4, backoff=0.5, max_delay=5, max_total=60))
    return FhirClient(BASE, retry=policy, sleep=waits.append, **kwargs), waits


@responses.activate
def test_429_retry_after_is_honoured():
    responses.get(f"{BASE}/Patient/1", status=429, headers={"Retry-After": "3"})
    responses.get(f"{BASE}/Patient/1", json={"resourceType": "Patient", "id": "1"})
    client, waits = make_client()
    assert client.read("Patient", "1")["id"] == "1"
    assert waits == [3.0]


@responses.activate
def test_retry_after_is_capped():
    responses.get(f"{BASE}/Patient/1", status=503, headers={"Retry-After": "3600"})
    responses.get(f"{BASE}/Patient/1", json={"resourceType": "Patient", "id": "1"})
    client, waits = make_client()
    client.read("Patient", "1")
    assert waits == [5.0]


@responses.activate
def test_503_burst_backs_off_exponentially_then_gives_up():
    for _ in range(4):
        responses.get(f"{BASE}/Patient/1", status=503, json=OUTCOME)
    client, waits = make_client()
    with pytest.raises(TemporaryServerError, match="HTTP 503 after 4 attempt"):
        client.read("Patient", "1")
    # each wait doubles (before a jitter of x0.5..x1): 0.5, 1, 2 seconds, so the bands do not overlap
    assert len(waits) == 3 and 0.25 <= waits[0] <= 0.5 <= waits[1] <= 1.0 <= waits[2] <= 2.0
    assert len(responses.calls) == 4


@responses.activate
def test_timeouts_are_retried():
    responses.get(f"{BASE}/Patient/1", body=requests.ConnectTimeout("slow"))
    responses.get(f"{BASE}/Patient/1", body=requests.ConnectionError("reset by peer"))
    responses.get(f"{BASE}/Patient/1", json={"resourceType": "Patient", "id": "1"})
    client, waits = make_client()
    assert client.read("Patient", "1")["id"] == "1"
    assert len(waits) == 2


@responses.activate
def test_total_time_bounds_the_retries():
    for _ in range(3):
        responses.get(f"{BASE}/Patient/1", status=503)
    client, waits = make_client(retry=RetryPolicy(attempts=10, backoff=0.5, max_delay=30, max_total=0.1))
    with pytest.raises(TemporaryServerError):
        client.read("Patient", "1")
    assert waits == []


@pytest.mark.parametrize("status", [401, 403])
@responses.activate
def test_401_403_are_not_retried(status):
    responses.get(f"{BASE}/Patient/1", status=status, json=OUTCOME)
    client, waits = make_client(auth=BearerAuth(BASE, "tok"))
    with pytest.raises(AuthorizationError, match=f"HTTP {status}"):
        client.read("Patient", "1")
    assert len(responses.calls) == 1 and waits == []


@responses.activate
def test_client_credentials_token_is_cached_and_refreshed_once_on_401():
    token_url = "http://127.0.0.1:9999/oauth/token"
    responses.post(token_url, json={"access_token": "first", "expires_in": 3600})
    responses.post(token_url, json={"access_token": "second", "expires_in": 3600})
    responses.get(f"{BASE}/Patient/1", json={"resourceType": "Patient", "id": "1"})
    responses.get(f"{BASE}/Patient/2", status=401)
    responses.get(f"{BASE}/Patient/2", json={"resourceType": "Patient", "id": "2"})
    client, _ = make_client(auth=ClientCredentialsAuth(BASE, token_url, "app", "secret"))
    client.read("Patient", "1")
    client.read("Patient", "2")
    api = [c for c in responses.calls if "/Patient/" in c.request.url]
    assert [c.request.headers["Authorization"] for c in api] == ["Bearer first", "Bearer first", "Bearer second"]
    assert sum("/oauth/token" in c.request.url for c in responses.calls) == 2


@responses.activate
def test_operation_outcome_is_kept_on_the_exception():
    responses.post(BASE + "/", status=422, json=OUTCOME)
    client, _ = make_client()
    with pytest.raises(OperationOutcomeError) as info:
        client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})
    assert "Observation.status is required (Observation.status)" in str(info.value)
    assert info.value.outcome == OUTCOME and info.value.status == 422


@responses.activate
def test_412_is_multiple_matches():
    responses.put(f"{BASE}/Patient", status=412, json=OUTCOME)
    client, _ = make_client()
    with pytest.raises(MultipleMatches, match="more than one resource matches"):
        client.request("PUT", "Patient", params={"identifier": "s|1"}, json={"resourceType": "Patient"})


@responses.activate
def test_malformed_json_is_an_invalid_response():
    responses.get(f"{BASE}/Patient/1", body="<html>oops</html>", status=200)
    client, _ = make_client()
    with pytest.raises(InvalidResponse, match="not JSON"):
        client.read("Patient", "1")


@responses.activate
def test_next_link_to_another_host_is_refused():
    responses.get(f"{BASE}/Patient", json={"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient", "id": "1"}}],
                                          "link": [{"relation": "next", "url": "http://127.0.0.2:9999/fhir/Patient?page=2"}]})
    client, _ = make_client(auth=BearerAuth(BASE, "tok"))
    found = []
    with pytest.raises(ForeignLinkRefused, match="another origin"):
        for resource in client.search("Patient"):
            found.append(resource["id"])
    assert found == ["1"] and len(responses.calls) == 1


@responses.activate
def test_urls_anywhere_on_the_servers_origin_are_used_with_credentials_and_other_origins_only_anonymously():
    responses.get("http://127.0.0.1:9999/bulkstatus/1", json={})
    responses.get("https://files.example.org/signed/1.ndjson?sig=x", body="{}")
    client, _ = make_client(auth=BearerAuth(BASE, "tok"))
    client.response("GET", "http://127.0.0.1:9999/bulkstatus/1").close()  # outside the base path, on its origin
    assert responses.calls[0].request.headers["Authorization"] == "Bearer tok"
    with pytest.raises(ForeignLinkRefused, match="another origin"):
        client.response("GET", "https://files.example.org/signed/1.ndjson?sig=x")
    client.response("GET", "https://files.example.org/signed/1.ndjson?sig=x", anonymous=True).close()
    assert len(responses.calls) == 2 and "Authorization" not in responses.calls[1].request.headers
    with pytest.raises(ForeignLinkRefused, match="no credentials in it"):
        client.response("GET", "https://bob:pw@files.example.org/1.ndjson", anonymous=True)


@responses.activate
def test_anonymous_requests_over_plain_http_go_to_loopback_only_unless_insecure_http_is_given():
    responses.get("http://files.example.org/1.ndjson", body="{}")
    responses.get("http://127.0.0.2:8000/1.ndjson", body="{}")
    client, _ = make_client()
    with pytest.raises(InsecureHttpRefused, match="plain http"):
        client.response("GET", "http://files.example.org/1.ndjson", anonymous=True)
    client.response("GET", "http://127.0.0.2:8000/1.ndjson", anonymous=True).close()
    insecure, _ = make_client(insecure_http=True)
    insecure.response("GET", "http://files.example.org/1.ndjson", anonymous=True).close()
    assert [c.request.url for c in responses.calls] == ["http://127.0.0.2:8000/1.ndjson", "http://files.example.org/1.ndjson"]


@responses.activate
def test_search_sends_an_explicit_sort():
    responses.get(f"{BASE}/Patient", json={"resourceType": "Bundle", "entry": []})
    client, _ = make_client()
    list(client.search("Patient", {"gender": "male"}))
    assert "_sort=_id" in responses.calls[0].request.url


@responses.activate
def test_redirect_to_another_origin_is_not_followed():
    responses.get(f"{BASE}/Patient/1", status=302, headers={"Location": "http://127.0.0.3/steal"})
    client, _ = make_client(auth=BearerAuth(BASE, "tok"))
    with pytest.raises(ForeignLinkRefused):
        client.read("Patient", "1")
    assert len(responses.calls) == 1


def test_credentials_only_go_to_their_origin():
    auth = BearerAuth(BASE, "tok")
    same = requests.Request("GET", f"{BASE}/Patient").prepare()
    other = requests.Request("GET", "http://127.0.0.2:9999/fhir/Patient").prepare()
    assert auth(same).headers["Authorization"] == "Bearer tok"
    assert "Authorization" not in auth(other).headers
    assert "tok" not in repr(auth)


def test_credentials_come_from_the_environment():
    assert isinstance(auth_from_env(BASE, {"FHIR_MSC_TOKEN": "t"}), BearerAuth)
    assert auth_from_env(BASE, {}) is None
    with pytest.raises(InputError, match="FHIR_MSC_TOKEN_URL"):
        auth_from_env(BASE, {"FHIR_MSC_CLIENT_ID": "x"})


def _resources(n: int) -> list[dict]:
    return [{"resourceType": "Patient", "id": f"p{i}", "identifier": [{"system": "s", "value": str(i)}]} for i in range(n)]


@responses.activate
def test_rejected_transaction_is_split_until_the_bad_resource_is_isolated(tmp_path, server_holds):
    responses.get(f"{BASE}/metadata", json=METADATA)
    server_holds(BASE, {"Patient": [f"sp{i}" for i in range(8) if i != 5]})

    def answer(request):
        bundle = json.loads(request.body)
        if any(e["resource"]["identifier"][0]["value"] == "5" for e in bundle["entry"]):
            return 400, {}, json.dumps(OUTCOME)
        return 200, {}, json.dumps({"resourceType": "Bundle", "entry": [
            {"response": {"status": "201 Created", "location": f"Patient/s{e['resource']['id']}/_history/1"}} for e in bundle["entry"]]})

    responses.add_callback(responses.POST, BASE + "/", callback=answer)
    client, _ = make_client()
    result = push(client, _resources(8), Journal(tmp_path), bundle_size=8)
    assert result.created == 7 and len(result.failed) == 1
    assert "Patient/p5" in result.failed[0] and "Observation.status is required" in result.failed[0]


@responses.activate
def test_412_on_a_conditional_update_fails_only_that_resource(tmp_path):
    responses.get(f"{BASE}/metadata", json={**METADATA, "rest": [{"interaction": [{"code": "transaction"}], "resource": []}]})
    responses.post(BASE + "/", status=412, json=OUTCOME)
    client, _ = make_client()
    result = push(client, _resources(1), Journal(tmp_path), method="auto")
    assert result.method == "conditional"
    assert len(result.failed) == 1 and "HTTP 412" in result.failed[0]


@pytest.mark.parametrize("declared,expected", [("4.0.1", "R4"), ("5.0.0", "R5")])
@responses.activate
def test_fhir_version_comes_from_the_capability_statement(declared, expected):
    responses.get(f"{BASE}/metadata", json={**METADATA, "fhirVersion": declared})
    client, _ = make_client()
    assert client.fhir_version().name == expected


@responses.activate
def test_servers_without_transactions_get_batches_one_type_at_a_time(tmp_path, server_holds):
    server_holds(BASE, {"Patient": ["p0", "p1", "p2"], "Group": ["g"]})
    responses.get(f"{BASE}/metadata", json={**METADATA, "rest": [{"interaction": [{"code": "batch"}],
                                                                   "resource": [{"type": "Patient", "updateCreate": True}]}]})
    sent = []

    def answer(request):
        bundle = json.loads(request.body)
        sent.append((bundle["type"], {e["resource"]["resourceType"] for e in bundle["entry"]}))
        return 200, {}, json.dumps({"resourceType": "Bundle", "entry": [{"response": {"status": "201"}} for _ in bundle["entry"]]})

    responses.add_callback(responses.POST, BASE + "/", callback=answer)
    client, _ = make_client()
    groups = [{"resourceType": "Group", "id": "g", "identifier": [{"system": "s", "value": "g"}]}]
    result = push(client, _resources(3) + groups, Journal(tmp_path), bundle_size=50)
    assert result.created == 4
    assert sent == [("batch", {"Patient"}), ("batch", {"Group"})]


@responses.activate
def test_unsorted_search_is_checked_against_the_total():
    page = lambda ids, nxt=None: {"resourceType": "Bundle", "total": 3, "entry": [{"resource": {"resourceType": "Patient", "id": i}} for i in ids],
                                  "link": [{"relation": "next", "url": nxt}] if nxt else []}
    # unsorted pages shifted: "b" seen twice, "c" never -> repeated with _sort
    responses.get(f"{BASE}/Patient", json=page(["a", "b"], f"{BASE}/Patient?page=2"))
    responses.get(f"{BASE}/Patient?page=2", json=page(["b"]))
    responses.get(f"{BASE}/Patient", json=page(["a", "b", "c"]))
    client, _ = make_client()
    listing = client.listing("Patient")
    assert sorted(r["id"] for r in listing.resources) == ["a", "b", "c"] and listing.complete
    assert "_sort" not in responses.calls[0].request.url and "_sort=_id" in responses.calls[2].request.url


@pytest.mark.parametrize(("total", "complete"), [(3, False), (2, True), (None, True)])
@responses.activate
def test_a_search_whose_pages_end_short_of_their_total_raises_after_its_last_resource(total, complete):
    entries = [{"resource": {"resourceType": "Patient", "id": i}} for i in ("a", "b")]
    include = [{"resource": {"resourceType": "Organization", "id": "o"}, "search": {"mode": "include"}}]
    responses.get(f"{BASE}/Patient", json={"resourceType": "Bundle", "entry": entries + include,
                                          **({"total": total} if total is not None else {})})
    client, _ = make_client()
    found = []

    def read_all():
        for resource in client.search("Patient", {"gender": "male"}):
            found.append(resource["id"])

    if complete:
        read_all()
    else:
        with pytest.raises(IncompleteSearch, match=r"search Patient\?gender=male: the server listed 2 of the 3 it matches"):
            read_all()
    assert found == ["a", "b", "o"]  # every resource read is given before the shortfall is raised; includes are not counted


@pytest.mark.parametrize("honours_id", [True, False])
@responses.activate
def test_a_listing_that_falls_short_of_its_total_says_so_and_presence_proves_each_id(honours_id):
    # pages of at most 2 and no next link, whatever was asked (a server that does not page); Patient/d is gone
    held = ["a", "b", "c", "e"]

    def search(request):
        query = parse_qs(urlsplit(request.url).query)
        wanted = [i for i in held if i in query["_id"][0].split(",")] if "_id" in query and honours_id else held
        entries = [{"resource": {"resourceType": "Patient", "id": i}} for i in wanted[:2]]
        return 200, {}, json.dumps({"resourceType": "Bundle", "type": "searchset", "total": len(wanted), "entry": entries})

    responses.add_callback(responses.GET, re.compile(rf"{re.escape(BASE)}/Patient\?"), callback=search)
    responses.get(f"{BASE}/Patient/c", json={"resourceType": "Patient", "id": "c"})
    responses.get(f"{BASE}/Patient/d", status=404, json={"resourceType": "OperationOutcome", "issue": []})
    responses.get(f"{BASE}/Patient/e", status=403, json={"resourceType": "OperationOutcome", "issue": []})
    client, _ = make_client()
    listing = client.id_listing("Patient")
    assert not listing.complete and listing.ids("Patient") == {"a", "b"} and listing.page == 2
    assert listing.shortfall == "the server listed 2 of the 4 it matches (Bundle.total)"
    presence = client.presence("Patient", ["a", "b", "c", "d", "e"])
    if honours_id:  # the search of 5 falls short: asked again 2 at a time, each answer complete
        assert (presence.held, presence.absent, presence.unknown) == ({"a", "b", "c", "e"}, {"d"}, {})
        assert (presence.searches, presence.reads) == (3, 0)
    else:  # only reads can tell: 200 held, 404 absent, 403 neither
        assert (presence.held, presence.absent, set(presence.unknown)) == ({"a", "b", "c"}, {"d"}, {"e"})
        assert "HTTP 403" in presence.unknown["e"] and presence.reads == 3


# --- security: URLs, plain http, token endpoint settings, redirects, Retry-After, TLS -----------------

def cli(*argv: str, env: dict[str, str] | None = None):
    return CliRunner(env=env).invoke(main, list(argv))


@pytest.mark.parametrize("url,why", [
    ("http://", "no host"),
    ("http://127.0.0.1:99999/fhir", "port must be 1-65535"),
    ("http://[::1", "invalid ipv6"),
    ("ftp://127.0.0.1/fhir", "https://"),
])
def test_malformed_server_urls_are_one_line_usage_errors(url, why, tmp_path):
    result = cli("pull", "--server", url, "--store", str(tmp_path / "s"), "--state", str(tmp_path / "state"))
    assert result.exit_code == ExitCode.USAGE
    assert why in result.stderr.lower() and result.stderr.count("\n") == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("argv", [["pull", "--store", "s"], ["pull", "--store", "s", "--json"],
                                  ["sync", "--from", "s", "--to"]])
def test_user_and_password_in_a_url_are_refused_and_never_echoed(argv, tmp_path):
    url = "http://alice:s3cr%2Ft@127.0.0.1:1/fhir"
    argv = [*argv, url] if argv[-1] == "--to" else [*argv, "--server", url]
    result = cli(*argv, "--state", str(tmp_path / "state"))
    assert result.exit_code == ExitCode.USAGE and "user name or password" in result.stderr
    assert "s3cr" not in result.output and "alice" not in result.output and "***@127.0.0.1:1/fhir" in result.stderr


@responses.activate
def test_a_next_link_with_credentials_in_it_is_refused_without_echoing_them():
    responses.get(f"{BASE}/Patient", json={"resourceType": "Bundle", "entry": [], "link": [
        {"relation": "next", "url": "http://bob:hunter2@127.0.0.1:9999/fhir/Patient?page=2"}]})
    client, _ = make_client()
    with pytest.raises(ForeignLinkRefused) as info:
        list(client.search("Patient"))
    assert "hunter2" not in str(info.value) and "bob" not in str(info.value)


def test_credentials_over_plain_http_go_to_loopback_only():
    for url in ("http://127.0.0.1:8080/fhir", "http://127.0.0.2/fhir", "http://[::1]:8080/fhir", "http://localhost/fhir",
                "https://fhir.example.org/fhir"):
        FhirClient(url, auth=BearerAuth(url, "tok"))
    FhirClient("http://fhir.example.org/fhir")  # no credentials, nothing to protect
    with pytest.raises(InsecureHttpRefused, match="--insecure-http"):
        FhirClient("http://fhir.example.org/fhir", auth=BearerAuth("http://fhir.example.org/fhir", "tok"))
    token_auth = ClientCredentialsAuth("https://fhir.example.org/fhir", "http://auth.example.org/token", "app", "secret")
    with pytest.raises(InsecureHttpRefused, match="token endpoint"):
        FhirClient("https://fhir.example.org/fhir", auth=token_auth)


def test_cli_refuses_credentials_over_plain_http_with_exit_2(tmp_path):
    result = cli("pull", "--server", "http://fhir.example.org/fhir", "--store", str(tmp_path / "s"),
                 "--state", str(tmp_path / "state"), env={"FHIR_MSC_TOKEN": "tok"})
    assert result.exit_code == ExitCode.USAGE and result.stderr.count("\n") == 1
    assert "plain http" in result.stderr and "--insecure-http" in result.stderr and "tok" not in result.stderr.split(":")[-1]


@responses.activate
def test_insecure_http_lets_the_credentials_go(tmp_path):
    responses.get(re.compile(r"http://fhir\.example\.org/.*"), status=401, json=OUTCOME)
    result = cli("pull", "--server", "http://fhir.example.org/fhir", "--insecure-http", "--store", str(tmp_path / "s"),
                 "--state", str(tmp_path / "state"), env={"FHIR_MSC_TOKEN": "tok"})
    assert result.exit_code == ExitCode.SERVER and "HTTP 401" in result.stderr
    assert responses.calls[0].request.headers["Authorization"] == "Bearer tok"


@responses.activate
def test_token_endpoint_uses_the_servers_session_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    token_url = "https://auth.example.org/token"
    responses.post(token_url, json={"access_token": "t", "expires_in": 300})
    responses.get("https://fhir.example.org/fhir/Patient/1", json={"resourceType": "Patient", "id": "1"})
    for name, value in {"FHIR_MSC_CLIENT_ID": "app", "FHIR_MSC_CLIENT_SECRET": "secret", "FHIR_MSC_TOKEN_URL": token_url}.items():
        monkeypatch.setenv(name, value)
    client = connect("https://fhir.example.org/fhir", ca_bundle=str(ca), timeout=7.0, retry=RetryPolicy(attempts=1))
    client.read("Patient", "1")
    token_call = responses.calls[0].request
    assert token_call.url == token_url
    assert token_call.req_kwargs["verify"] == str(ca) and token_call.req_kwargs["timeout"] == 7.0
    assert not token_call.req_kwargs.get("proxies")  # HTTPS_PROXY from the environment is not used


@responses.activate
def test_a_redirect_loop_is_bounded():
    responses.get(f"{BASE}/Patient/1", status=302, headers={"Location": f"{BASE}/Patient/1"})
    client, _ = make_client()
    with pytest.raises(InvalidResponse, match="more than 5 redirects"):
        client.read("Patient", "1")
    assert len(responses.calls) == 6


@responses.activate
def test_a_malformed_retry_after_counts_as_absent():
    responses.get(f"{BASE}/Patient/1", status=503, headers={"Retry-After": "soon"})
    responses.get(f"{BASE}/Patient/1", json={"resourceType": "Patient", "id": "1"})
    client, waits = make_client()
    assert client.read("Patient", "1")["id"] == "1"
    assert len(waits) == 1 and 0.25 <= waits[0] <= 0.5  # the backoff, not a crash


def test_an_http_date_retry_after_counts_from_now():
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
    response = requests.Response()
    response.headers["Retry-After"] = email.utils.format_datetime(now + timedelta(seconds=4), usegmt=True)
    assert _retry_after(response, now=now.timestamp()) == 4.0
    assert _retry_after(response, now=(now + timedelta(seconds=10)).timestamp()) == 0.0  # already past


@responses.activate
def test_an_http_date_retry_after_is_honoured_up_to_the_cap():
    when = email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(hours=1), usegmt=True)
    responses.get(f"{BASE}/Patient/1", status=429, headers={"Retry-After": when})
    responses.get(f"{BASE}/Patient/1", json={"resourceType": "Patient", "id": "1"})
    client, waits = make_client()
    client.read("Patient", "1")
    assert waits == [5.0]  # an hour ahead, capped (the backoff alone would be at most 0.5)


@pytest.fixture
def tls_server(tmp_path):
    """An https server on 127.0.0.1 with a fresh self-signed certificate; yields (base URL, certificate file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fhir-msc test")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(METADATA).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/fhir", cert_file
    server.shutdown()
    server.server_close()


def test_tls_handshake_failure_is_reported_not_retried(tls_server, tmp_path):
    base, cert = tls_server
    waits: list[float] = []
    client = FhirClient(base, retry=RetryPolicy(attempts=4, backoff=0.01), sleep=waits.append)
    with pytest.raises(CertificateError, match="self-signed certificate.*--ca-bundle"):
        client.capabilities()
    assert client.stats.requests == 1 and waits == []
    assert FhirClient(base, verify=str(cert)).capabilities()["resourceType"] == "CapabilityStatement"
    result = cli("pull", "--server", base, "--store", str(tmp_path / "s"), "--state", str(tmp_path / "state"),
                 "--study", str(DEFAULT_STUDY))
    assert result.exit_code == ExitCode.SERVER and result.stderr.count("\n") == 1
    assert "TLS handshake" in result.stderr and "--ca-bundle" in result.stderr and "overloaded" not in result.stderr
