"""SMART Backend Services: client assertions (unit, with responses) and the loopback token endpoint (integration).

Test keys are generated here, in temporary files; no private key is committed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import parse_qsl

import jwt
import pytest
import requests
import responses
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from loopback import LoopbackServer

from fhir_msc.cli import main
from fhir_msc.errors import (
    AuthorizationError,
    CertificateError,
    ExitCode,
    InputError,
    InsecureHttpRefused,
)
from fhir_msc.server import auth as auth_module
from fhir_msc.server.auth import (
    JWT_BEARER,
    ClientCredentialsAuth,
    SmartBackendAuth,
    auth_from_env,
    client_assertion,
    load_signing_key,
    scope_syntax,
)
from fhir_msc.server.client import FhirClient, RetryPolicy
from fhir_msc.study.definition import DEFAULT_STUDY

BAD = Path(__file__).parents[1] / "data" / "bad"
BASE = "https://fhir.hospital.test/fhir"
TOKEN_URL = "https://auth.hospital.test/token"
CLIENT = "fhir-msc-test"
FAST = RetryPolicy(attempts=2, backoff=0.01, max_delay=0.05, max_total=5)


def _ec_key():
    return ec.generate_private_key(ec.SECP384R1())


def _rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(path: Path, key) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _jwk(key, kid: str) -> dict:
    algorithm = ECAlgorithm if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) else RSAAlgorithm
    return {**algorithm.to_jwk(key, as_dict=True), "kid": kid}


def _jwks_file(path: Path, *jwks: dict) -> Path:
    path.write_text(json.dumps({"keys": list(jwks)}))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def es_key():
    return _ec_key()


@pytest.fixture(scope="module")
def rs_key():
    return _rsa_key()


# --- the client assertion -------------------------------------------------------------------

def test_es384_assertion_carries_the_smart_claims(es_key, tmp_path):
    key = load_signing_key(str(_pem(tmp_path / "k.pem", es_key)), kid="es-1")
    assertion = client_assertion(key, CLIENT, TOKEN_URL, jku="https://app.test/jwks.json")
    header = jwt.get_unverified_header(assertion)
    claims = jwt.decode(assertion, es_key.public_key(), algorithms=["ES384"], audience=TOKEN_URL)
    assert header == {"alg": "ES384", "typ": "JWT", "kid": "es-1", "jku": "https://app.test/jwks.json"}
    assert claims["iss"] == claims["sub"] == CLIENT and claims["aud"] == TOKEN_URL
    assert 0 < claims["exp"] - time.time() <= 300
    assert client_assertion(key, CLIENT, TOKEN_URL) != assertion  # a fresh jti each time
    assert jwt.decode(client_assertion(key, CLIENT, TOKEN_URL), es_key.public_key(), algorithms=["ES384"],
                      audience=TOKEN_URL)["jti"] != claims["jti"]


def test_rs384_key_and_kid_from_a_jwks_file(rs_key, tmp_path):
    path = _jwks_file(tmp_path / "k.json", _jwk(rs_key, "rs-1"))
    key = load_signing_key(str(path))
    assert (key.algorithm, key.kid) == ("RS384", "rs-1")
    assertion = client_assertion(key, CLIENT, TOKEN_URL)
    assert jwt.decode(assertion, rs_key.public_key(), algorithms=["RS384"], audience=TOKEN_URL)["sub"] == CLIENT
    assert repr(key) == "SigningKey(algorithm='RS384', kid='rs-1')"  # never the key itself


@pytest.mark.parametrize("problem,match", [
    ("p256", "P-384"),
    ("group-readable", "chmod 600"),
    ("pem-without-kid", "FHIR_MSC_SMART_KID"),
    ("public-jwks", "private JWK"),
    ("two-private-keys", "FHIR_MSC_SMART_KID to pick one"),
    ("not-a-key", "not a readable PEM"),
])
def test_unusable_keys_are_one_line_input_errors(problem, match, es_key, tmp_path):
    kid = "k"
    if problem == "p256":
        path = _pem(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    elif problem == "group-readable":
        path = _pem(tmp_path / "k.pem", es_key)
        path.chmod(0o640)
    elif problem == "pem-without-kid":
        path, kid = _pem(tmp_path / "k.pem", es_key), None
    elif problem == "public-jwks":
        path = _jwks_file(tmp_path / "k.json", _jwk(es_key.public_key(), "k"))
    elif problem == "two-private-keys":
        path, kid = _jwks_file(tmp_path / "k.json", _jwk(es_key, "a"), _jwk(_ec_key(), "b")), None
    else:
        path = tmp_path / "k.pem"
        path.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
        path.chmod(0o600)
    with pytest.raises(InputError, match=match) as info:
        load_signing_key(str(path), kid=kid)
    assert "\n" not in str(info.value)


def test_smart_settings_choose_smart_auth_and_one_method_only(es_key, tmp_path):
    path = str(_pem(tmp_path / "k.pem", es_key))
    auth = auth_from_env(BASE, {"FHIR_MSC_SMART_CLIENT_ID": CLIENT, "FHIR_MSC_SMART_KEY": path, "FHIR_MSC_SMART_KID": "k",
                                "FHIR_MSC_SMART_SCOPE": "system/*.read"})
    assert isinstance(auth, SmartBackendAuth) and auth.scope == "system/*.read" and auth.token_url is None
    with pytest.raises(InputError, match="FHIR_MSC_SMART_KEY is not"):
        auth_from_env(BASE, {"FHIR_MSC_SMART_CLIENT_ID": CLIENT})
    with pytest.raises(InputError, match="more than one method"):
        auth_from_env(BASE, {"FHIR_MSC_TOKEN": "t", "FHIR_MSC_SMART_CLIENT_ID": CLIENT, "FHIR_MSC_SMART_KEY": path})


# --- the token exchange, mocked ----------------------------------------------------------------

def _smart_client(key_path: Path, **kwargs) -> FhirClient:
    key = load_signing_key(str(key_path), kid="es-1")
    return FhirClient(BASE, auth=SmartBackendAuth(BASE, CLIENT, key, **kwargs), retry=FAST)


def _configuration(**extra) -> dict:
    return {"token_endpoint": TOKEN_URL, "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"], **extra}


@responses.activate
def test_token_endpoint_is_discovered_and_the_token_cached_until_shortly_before_expiry(es_key, tmp_path, monkeypatch):
    responses.get(f"{BASE}/.well-known/smart-configuration", json=_configuration())
    responses.post(TOKEN_URL, json={"access_token": "first", "token_type": "bearer", "expires_in": 300})
    responses.post(TOKEN_URL, json={"access_token": "second", "token_type": "bearer", "expires_in": 300})
    responses.get(f"{BASE}/Patient/1", json={"resourceType": "Patient", "id": "1"})
    clock = [1000.0]
    monkeypatch.setattr(auth_module.time, "monotonic", lambda: clock[0])
    client = _smart_client(_pem(tmp_path / "k.pem", es_key))
    client.read("Patient", "1")
    clock[0] += 260  # 300 s token, refreshed 30 s early: still valid at 260 s
    client.read("Patient", "1")
    clock[0] += 11  # 271 s: past 270
    client.read("Patient", "1")
    api = [c.request for c in responses.calls if "/Patient/" in c.request.url]
    assert [r.headers["Authorization"] for r in api] == ["Bearer first", "Bearer first", "Bearer second"]
    form = dict(parse_qsl(responses.calls[1].request.body))
    assert form["grant_type"] == "client_credentials" and form["client_assertion_type"] == JWT_BEARER
    assert form["scope"] == "system/*.read"  # reading only, and the configuration lists no v2 scopes
    assert jwt.decode(form["client_assertion"], es_key.public_key(), algorithms=["ES384"], audience=TOKEN_URL)["iss"] == CLIENT
    assert "Authorization" not in responses.calls[0].request.headers  # discovery carries no credentials


@responses.activate
def test_a_401_gets_one_new_token(es_key, tmp_path):
    responses.get(f"{BASE}/.well-known/smart-configuration", status=404)  # none: the token URL is configured, scopes v1
    responses.post(TOKEN_URL, json={"access_token": "first", "expires_in": 300})
    responses.post(TOKEN_URL, json={"access_token": "second", "expires_in": 300})
    responses.get(f"{BASE}/Patient/1", status=401)
    responses.get(f"{BASE}/Patient/1", json={"resourceType": "Patient", "id": "1"})
    client = _smart_client(_pem(tmp_path / "k.pem", es_key), token_url=TOKEN_URL)
    assert client.read("Patient", "1")["id"] == "1"
    assert [c.request.headers.get("Authorization") for c in responses.calls if "/Patient/" in c.request.url] == \
        ["Bearer first", "Bearer second"]


@responses.activate
def test_asking_for_write_after_a_read_token_gets_a_new_token_with_the_write_scope(es_key, tmp_path):
    responses.get(f"{BASE}/.well-known/smart-configuration", json=_configuration(capabilities=["permission-v2"]))
    responses.post(TOKEN_URL, json={"access_token": "read", "expires_in": 300})
    responses.post(TOKEN_URL, json={"access_token": "write", "expires_in": 300})
    responses.get(f"{BASE}/Patient/1", json={"resourceType": "Patient", "id": "1"})
    client = _smart_client(_pem(tmp_path / "k.pem", es_key))
    client.read("Patient", "1")
    client.need_access("write")
    client.need_access("read")  # never narrows again: the job still writes
    client.read("Patient", "1")
    asked = [dict(parse_qsl(c.request.body))["scope"] for c in responses.calls if c.request.url == TOKEN_URL]
    assert asked == ["system/*.rs", "system/*.cruds"]
    assert [c.request.headers["Authorization"] for c in responses.calls if "/Patient/" in c.request.url] == \
        ["Bearer read", "Bearer write"]


@pytest.mark.parametrize("configuration,match", [
    (_configuration(token_endpoint_auth_methods_supported=["client_secret_basic"]), "does not accept private_key_jwt"),
    (_configuration(token_endpoint_auth_signing_alg_values_supported=["RS384"]), "the key signs ES384"),
])
@responses.activate
def test_discovery_says_when_the_server_cannot_take_this_key(configuration, match, es_key, tmp_path):
    responses.get(f"{BASE}/.well-known/smart-configuration", json=configuration)
    client = _smart_client(_pem(tmp_path / "k.pem", es_key))
    with pytest.raises(AuthorizationError, match=match):
        client.read("Patient", "1")
    assert len(responses.calls) == 1


@responses.activate
def test_a_discovered_plain_http_token_endpoint_off_loopback_is_refused(es_key, tmp_path):
    responses.get(f"{BASE}/.well-known/smart-configuration", json=_configuration(token_endpoint="http://auth.hospital.test/token"))
    client = _smart_client(_pem(tmp_path / "k.pem", es_key))
    with pytest.raises(InsecureHttpRefused, match="--insecure-http"):
        client.read("Patient", "1")
    assert len(responses.calls) == 1  # the assertion was never sent


@responses.activate
def test_tls_failure_at_the_token_endpoint_is_a_certificate_error(es_key, tmp_path):
    responses.get(f"{BASE}/.well-known/smart-configuration", status=404)
    responses.post(TOKEN_URL, body=requests.exceptions.SSLError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                                                                "unable to get local issuer certificate (_ssl.c:1006)"))
    client = _smart_client(_pem(tmp_path / "k.pem", es_key), token_url=TOKEN_URL)
    with pytest.raises(CertificateError, match="unable to get local issuer certificate.*--ca-bundle"):
        client.read("Patient", "1")


# --- against the loopback token endpoint --------------------------------------------------------

JKU = "https://app.test/.well-known/jwks.json"


@pytest.fixture(scope="module")
def smart_server(es_key, rs_key, tmp_path_factory):
    """A loopback server with the ES384 and RS384 public keys registered for CLIENT."""
    jwks = _jwks_file(tmp_path_factory.mktemp("smart") / "registered.json",
                      _jwk(es_key.public_key(), "es-1"), _jwk(rs_key.public_key(), "rs-1"))
    server = LoopbackServer(env={"FHIR_TEST_SMART_CLIENT_ID": CLIENT, "FHIR_TEST_SMART_JWKS": str(jwks),
                                 "FHIR_TEST_SMART_JKU": JKU})
    yield server
    server.stop()


def _token_url(server: LoopbackServer) -> str:
    return requests.get(f"{server.base}/.well-known/smart-configuration", timeout=10).json()["token_endpoint"]


def test_es384_pem_key_gets_a_token_and_the_fhir_request_succeeds(smart_server, es_key, tmp_path):
    key = load_signing_key(str(_pem(tmp_path / "k.pem", es_key)), kid="es-1")
    client = FhirClient(smart_server.base, auth=SmartBackendAuth(smart_server.base, CLIENT, key), retry=FAST)
    client.need_access("write")
    client.request("PUT", "Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    assert [p["id"] for p in client.search("Patient", {"_id": "p1"})] == ["p1"]
    with pytest.raises(AuthorizationError, match="HTTP 401"):  # the server does require the token
        FhirClient(smart_server.base, retry=FAST).read("Patient", "p1")


def test_rs384_jwks_key_with_jku_gets_a_token(smart_server, rs_key, tmp_path):
    key = load_signing_key(str(_jwks_file(tmp_path / "k.json", _jwk(rs_key, "rs-1"))))
    auth = SmartBackendAuth(smart_server.base, CLIENT, key, scope="system/*.read", jku=JKU)
    client = FhirClient(smart_server.base, auth=auth, retry=FAST)
    assert list(client.search("Patient", {"_id": "none"})) == []
    with pytest.raises(AuthorizationError, match="HTTP 403"):  # a read-only token cannot write
        client.request("PUT", "Patient/p2", json={"resourceType": "Patient", "id": "p2"})


def test_wrong_key_is_refused_with_exit_8_and_one_line(smart_server, tmp_path):
    wrong = _pem(tmp_path / "wrong.pem", _ec_key())  # not the registered es-1 key
    env = {"FHIR_MSC_SMART_CLIENT_ID": CLIENT, "FHIR_MSC_SMART_KEY": str(wrong), "FHIR_MSC_SMART_KID": "es-1"}
    result = CliRunner(env=env).invoke(main, ["pull", "--server", smart_server.base, "--store", str(tmp_path / "s"),
                                              "--state", str(tmp_path / "state"), "--study", str(DEFAULT_STUDY)])
    assert result.exit_code == ExitCode.SERVER, result.output
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert "invalid_client" in result.stderr and "signature does not verify" in result.stderr
    assert "FHIR_MSC_SMART_KID" in result.stderr  # says what to check


def _post_assertion(token_url: str, assertion: str) -> requests.Response:
    return requests.post(token_url, timeout=10, data={"grant_type": "client_credentials", "scope": "system/*.read",
                                                      "client_assertion_type": JWT_BEARER, "client_assertion": assertion})


def test_replayed_jti_is_refused(smart_server, es_key, tmp_path):
    key = load_signing_key(str(_pem(tmp_path / "k.pem", es_key)), kid="es-1")
    token_url = _token_url(smart_server)
    assertion = client_assertion(key, CLIENT, token_url)
    assert _post_assertion(token_url, assertion).status_code == 200
    replay = _post_assertion(token_url, assertion)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client" and "jti" in replay.json()["error_description"]


def test_expired_and_too_long_assertions_are_refused(smart_server, es_key, tmp_path):
    key = load_signing_key(str(_pem(tmp_path / "k.pem", es_key)), kid="es-1")
    token_url = _token_url(smart_server)
    expired = _post_assertion(token_url, client_assertion(key, CLIENT, token_url, now=time.time() - 600))
    assert expired.status_code == 401 and "expired" in expired.json()["error_description"]
    too_long = jwt.encode({"iss": CLIENT, "sub": CLIENT, "aud": token_url, "exp": int(time.time()) + 3600, "jti": "long"},
                          es_key, algorithm="ES384", headers={"kid": "es-1", "typ": "JWT"})
    assert "five minutes" in _post_assertion(token_url, too_long).json()["error_description"]
    unregistered_jku = client_assertion(key, CLIENT, token_url, jku="https://evil.test/jwks.json")
    assert "jku" in _post_assertion(token_url, unregistered_jku).json()["error_description"]


# --- scopes by least privilege -------------------------------------------------------------------

@pytest.mark.parametrize("configuration,syntax", [
    ({}, "v1"),
    ({"scopes_supported": ["system/*.rs", "system/Observation.cruds", "openid"]}, "v2"),
    ({"capabilities": ["client-confidential-asymmetric", "permission-v2"]}, "v2"),
    ({"scopes_supported": ["system/*.read", "system/*.rs"]}, "v1"),  # both listed: v1, as without a listing
    ({"capabilities": ["permission-v1"], "scopes_supported": ["system/*.write"]}, "v1"),
])
def test_the_scope_syntax_is_the_one_the_smart_configuration_lists(configuration, syntax):
    assert scope_syntax(configuration) == syntax


@responses.activate
def test_oauth2_invalid_scope_names_the_scope_and_fhir_msc_scope():
    responses.post(TOKEN_URL, status=400, json={"error": "invalid_scope", "error_description": "unknown scope fhir.write"})
    auth = ClientCredentialsAuth(BASE, TOKEN_URL, CLIENT, "secret", "fhir.read fhir.write")
    with pytest.raises(AuthorizationError) as info:
        FhirClient(BASE, auth=auth, retry=FAST).read("Patient", "1")
    message = str(info.value)
    assert "refused the scope 'fhir.read fhir.write'" in message and "FHIR_MSC_SCOPE" in message
    assert "FHIR_MSC_CLIENT_SECRET" not in message  # the secret is not in question


def _smart_env(key_path: Path, **settings: str) -> dict[str, str]:
    return {"FHIR_MSC_SMART_CLIENT_ID": CLIENT, "FHIR_MSC_SMART_KEY": str(key_path), "FHIR_MSC_SMART_KID": "es-1", **settings}


@pytest.fixture(scope="module")
def scoped_server(es_key, tmp_path_factory):
    """Loopback servers whose smart-configuration and grants are set by ``env`` (one per setting, stopped at the end)."""
    jwks = _jwks_file(tmp_path_factory.mktemp("scoped") / "registered.json", _jwk(es_key.public_key(), "es-1"))
    servers: dict[tuple, LoopbackServer] = {}

    def start(**env: str) -> LoopbackServer:
        key = tuple(sorted(env.items()))
        if key not in servers:
            servers[key] = LoopbackServer(env={"FHIR_TEST_SMART_CLIENT_ID": CLIENT, "FHIR_TEST_SMART_JWKS": str(jwks), **env})
        return servers[key]

    yield start
    for server in servers.values():
        server.stop()


def _run(env: dict[str, str], *args: str):
    return CliRunner(env=env).invoke(main, list(args))


def test_a_pull_from_a_read_only_smart_client_asks_for_read_and_succeeds(scoped_server, es_key, tmp_path):
    server = scoped_server(FHIR_TEST_SMART_SCOPES="system/*.read")
    env = _smart_env(_pem(tmp_path / "k.pem", es_key))
    result = _run(env, "pull", "--server", server.base, "--store", str(tmp_path / "s"), "--state", str(tmp_path / "state"))
    assert result.exit_code == 0, result.output


def test_a_push_asks_for_write_and_a_refused_scope_is_named_as_such(scoped_server, es_key, tmp_path):
    server = scoped_server(FHIR_TEST_SMART_SCOPES="system/*.read")
    env = _smart_env(_pem(tmp_path / "k.pem", es_key))
    result = _run(env, "push", str(BAD / "good"), "--server", server.base, "--state", str(tmp_path / "state"),
                  "--study", str(DEFAULT_STUDY))
    assert result.exit_code == ExitCode.SERVER, result.output
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert "refused the scope 'system/*.read system/*.write'" in result.stderr and "invalid_scope" in result.stderr
    assert "FHIR_MSC_SMART_SCOPE" in result.stderr and "FHIR_MSC_SMART_KID" not in result.stderr  # the key is not blamed
    verify = _run(env, "push", str(BAD / "good"), "--verify", "--server", server.base, "--state", str(tmp_path / "state"))
    assert verify.exit_code == ExitCode.PARTIAL, verify.output  # --verify only reads: it got a token, and found nothing
    assert "missing" in verify.output or "lacks" in verify.output


def test_fhir_msc_smart_scope_overrides_the_default(scoped_server, es_key, tmp_path):
    server = scoped_server(FHIR_TEST_SMART_SCOPES="system/*.read")
    env = _smart_env(_pem(tmp_path / "k.pem", es_key), FHIR_MSC_SMART_SCOPE="system/*.rs")
    result = _run(env, "pull", "--server", server.base, "--store", str(tmp_path / "s"), "--state", str(tmp_path / "state"))
    assert result.exit_code == ExitCode.SERVER and "refused the scope 'system/*.rs'" in result.stderr


def test_v2_scopes_are_asked_when_the_server_lists_only_v2(scoped_server, es_key, tmp_path, caplog):
    server = scoped_server(FHIR_TEST_SMART_PERMISSIONS="v2")
    key_path = _pem(tmp_path / "k.pem", es_key)
    auth = SmartBackendAuth(server.base, CLIENT, load_signing_key(str(key_path), kid="es-1"))
    assert auth.requested_scope() == "system/*.rs"
    auth.need_access("write")
    assert auth.requested_scope() == "system/*.cruds"
    env = _smart_env(key_path)
    pushed = _run(env, "push", str(BAD / "good"), "--server", server.base, "--state", str(tmp_path / "push-state"))
    assert pushed.exit_code == 0, pushed.output
    pulled = _run(env, "pull", "--bulk", "--server", server.base, "--store", str(tmp_path / "s"), "--state",
                  str(tmp_path / "state"))
    assert pulled.exit_code == 0, pulled.output
    assert "by bulk export" in pulled.stdout and "Observation 34" in pulled.stdout
    assert "could not delete the export job" not in caplog.text  # ending the export is part of reading
