"""Credentials for FHIR servers, and the URL and transport rules that keep them safe.

- Kinds: bearer token, HTTP basic, OAuth2 client credentials (client secret), and SMART
  Backend Services (a ``private_key_jwt`` client assertion signed RS384 or ES384 for the
  client-credentials grant). Each is chosen by the settings of :func:`auth_from_env`, which
  come from the environment or a mode-600 config file (:func:`load_config`), never from argv.
- Credentials are attached only to requests for the server's own origin, and never go over
  plain http to a host other than loopback (127.0.0.0/8, ::1, localhost) unless the user
  says ``--insecure-http``.
- Token endpoints are called through the server's own ``requests.Session`` (same CA
  bundle and timeout, no proxies or netrc from the environment), without following
  redirects. Tokens are cached until shortly before they expire and fetched again once
  after a 401.
- Least privilege: SMART asks for read scopes unless the job says it writes
  (:meth:`OriginAuth.need_access`), in the scope syntax (SMART v1 or v2) the server lists.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import ssl
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import requests

from ..errors import (
    AuthorizationError,
    BadServerUrl,
    CertificateError,
    InputError,
    InsecureHttpRefused,
    InvalidResponse,
)

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
Access = Literal["read", "write"]
SMART_SCOPES: dict[str, dict[Access, str]] = {  # the least a job needs, by SMART scope syntax
    "v1": {"read": "system/*.read", "write": "system/*.read system/*.write"},
    "v2": {"read": "system/*.rs", "write": "system/*.cruds"},
}
ASSERTION_LIFETIME = 240  # seconds; SMART allows at most 300, this leaves a minute for clock skew


# --- URLs and transport -------------------------------------------------------------------

def origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def redact(url: str) -> str:
    """``url`` with any user name and password replaced by ``***`` (for messages)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^?#]*@", r"\1***@", url)


def check_url(url: str, what: str = "server URL") -> str:
    """``url`` if it is a usable http(s) URL; else a one-line :class:`BadServerUrl` (exit 2) saying why.

    A user name or password in the URL is refused (credentials never go on the command
    line) and never echoed.
    """
    if "@" in url:
        shown = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)?.*@", lambda m: (m.group(1) or "") + "***@", url)
        raise BadServerUrl(f"{what} {shown} has a user name or password in it: credentials never go on the command line; "
                           "set them in the environment or the --config file (see README, credentials)")
    problem = None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        problem = str(exc).lower().replace("port out of range 0-65535", "the port must be 1-65535")
    else:
        if parts.scheme.lower() not in ("http", "https"):
            problem = "it must start with https:// (or http://)"
        elif not parts.hostname:
            problem = "it has no host"
        elif port == 0:
            problem = "the port must be 1-65535"
        elif re.search(r"[\s\x00-\x1f\x7f]", url):
            problem = "it contains spaces or control characters"
        elif parts.fragment:
            problem = "it has a #fragment"
    if problem:
        raise BadServerUrl(f"{what} {url!r} is not usable: {problem}; give it as https://host[:port]/path")
    return url


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_private_transport(url: str, what: str, insecure_http: bool) -> None:
    """Refuse to send credentials to ``url`` over plain http unless it is loopback or ``insecure_http``."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "http" and not is_loopback(parts.hostname or "") and not insecure_http:
        raise InsecureHttpRefused(f"refusing to send credentials over plain http to the {what} {redact(url)}: "
                                  "use https://, or pass --insecure-http if this network is trusted")


def _ssl_reason(exc: BaseException) -> str:
    """The innermost ssl error's reason ('self-signed certificate', 'wrong version number', …)."""
    stack, seen = [exc], set()
    while stack:
        error = stack.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ssl.SSLCertVerificationError):
            return error.verify_message or str(error.reason)
        if isinstance(error, ssl.SSLError):
            return str(error.reason or error).lower().replace("_", " ")
        linked = [getattr(error, "reason", None), error.__cause__, error.__context__, *error.args]
        stack.extend(e for e in linked if isinstance(e, BaseException))
    text = " ".join(str(exc).split())
    found = re.search(r"\] ([^(']+)", text)
    return found.group(1).strip() if found else text[:160]


def certificate_error(method: str, url: str, exc: BaseException) -> CertificateError:
    """A one-line error for a failed TLS handshake, saying what to do."""
    reason = _ssl_reason(exc)
    host = urlsplit(url).netloc.rsplit("@", 1)[-1]
    if "certificate" in reason.lower() or "hostname" in reason.lower():
        advice = ("the server's certificate is not trusted here: if your organisation's CA signed it, pass that CA's "
                  "certificates with --ca-bundle PEM (verification is never turned off)")
    else:
        advice = "check that the URL's scheme and port are right (https:// to a TLS port)"
    return CertificateError(f"{method} {redact(url)}: TLS handshake with {host} failed ({reason}): {advice}")


# --- credentials ----------------------------------------------------------------------------

class OriginAuth(requests.auth.AuthBase):
    """Adds credentials only to requests for one origin."""

    def __init__(self, base_url: str):
        self.origin = origin(base_url)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if origin(request.url or "") == self.origin:
            request.headers["Authorization"] = self.header()
        return request

    def header(self) -> str:
        raise NotImplementedError

    def bind(self, session: requests.Session, timeout: float, insecure_http: bool) -> None:
        """Use the server's session and timeout for any request of its own (token endpoints)."""

    def need_access(self, access: Access) -> None:
        """Say what the job does on the server (reads by default); credentials without scopes ignore it."""

    def refresh(self, refused: str | None = None) -> bool:
        """Get fresh credentials after a 401 to a request sent with the Authorization ``refused``;
        False if there is nothing to refresh."""
        return False

    def __repr__(self) -> str:  # never show the secret
        return f"{type(self).__name__}(origin={self.origin[1]!r})"


class BearerAuth(OriginAuth):
    def __init__(self, base_url: str, token: str):
        super().__init__(base_url)
        self._token = token

    def header(self) -> str:
        return f"Bearer {self._token}"


class BasicAuth(OriginAuth):
    def __init__(self, base_url: str, username: str, password: str):
        super().__init__(base_url)
        self._basic = requests.auth._basic_auth_str(username, password)

    def header(self) -> str:
        return self._basic


class _TokenAuth(OriginAuth):
    """An access token from a token endpoint, cached until shortly before it expires."""

    def __init__(self, base_url: str, token_url: str | None):
        super().__init__(base_url)
        self.token_url = check_url(token_url, "token URL") if token_url else None
        self._session: requests.Session | None = None
        self._timeout, self._insecure_http = 30.0, False
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()  # parallel downloads share one token, fetched once

    def bind(self, session: requests.Session, timeout: float, insecure_http: bool) -> None:
        self._session, self._timeout, self._insecure_http = session, timeout, insecure_http
        if self.token_url:
            require_private_transport(self.token_url, "token endpoint", insecure_http)

    def header(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires:
                token, lifetime = self._fetch()
                self._token = token
                self._expires = time.monotonic() + lifetime - min(30.0, lifetime / 10)  # a bit early
            return f"Bearer {self._token}"

    def refresh(self, refused: str | None = None) -> bool:
        with self._lock:
            if refused is None or refused == f"Bearer {self._token}":  # not one another request has renewed already
                self._token = None
        return True

    def _fetch(self) -> tuple[str, float]:
        raise NotImplementedError

    @property
    def session(self) -> requests.Session:
        if self._session is None:  # used on its own, not through a FhirClient: the same safe settings
            self._session = requests.Session()
            self._session.trust_env = False
            self._session.headers["User-Agent"] = "fhir-msc"
        return self._session

    def _call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, url, headers={"Accept": "application/json"}, timeout=self._timeout,
                                            allow_redirects=False, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise certificate_error(method, url, exc) from None
        except requests.RequestException as exc:
            raise AuthorizationError(f"{method} {redact(url)}: unreachable ({type(exc).__name__}); "
                                     "check the URL and that the server is up") from None
        if response.is_redirect:
            raise AuthorizationError(f"{method} {redact(url)} answered with a redirect to "
                                     f"{redact(response.headers.get('Location', '?'))}: configure the final URL",
                                     status=response.status_code, response=response)
        return response

    def _post_token(self, url: str, data: dict[str, str], what: str, auth: tuple[str, str] | None = None) -> tuple[str, float]:
        """POST a token request; the access token and its lifetime in seconds, or a one-line error."""
        response = self._call("POST", url, data=data, auth=auth)
        body = _json_object(response)
        if response.status_code != 200:
            said = ": ".join(str(body[k]) for k in ("error", "error_description") if body.get(k)) or response.reason or ""
            said = " ".join(said.split())[:300]
            hint = self._hint()
            if body.get("error") == "invalid_scope":  # not the client id, key or secret
                what = f"the scope {data['scope']!r}" if data.get("scope") else "a request without a scope"
                hint = self._scope_hint()
            raise AuthorizationError(f"token endpoint {redact(url)} refused {what} (HTTP {response.status_code}"
                                     + (f": {said}" if said else "") + f"): {hint}",
                                     status=response.status_code, response=response)
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise InvalidResponse(f"token endpoint {redact(url)} sent no access_token", response=response)
        if str(body.get("token_type", "bearer")).lower() != "bearer":
            raise InvalidResponse(f"token endpoint {redact(url)} sent a {body['token_type']!r} token: fhir-msc uses bearer tokens")
        try:
            lifetime = float(body.get("expires_in", 300))
        except (TypeError, ValueError):
            lifetime = 300.0
        return token, max(lifetime, 1.0)

    def _hint(self) -> str:
        return "check the client id and credentials"

    def _scope_hint(self) -> str:
        return "ask for scopes the server grants this client"


def _json_object(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class ClientCredentialsAuth(_TokenAuth):
    """OAuth2 client credentials grant with a client secret (HTTP basic at the token endpoint)."""

    def __init__(self, base_url: str, token_url: str, client_id: str, client_secret: str, scope: str = ""):
        super().__init__(base_url, token_url)
        self._client_id, self._secret, self.scope = client_id, client_secret, scope

    def _fetch(self) -> tuple[str, float]:
        data = {"grant_type": "client_credentials", **({"scope": self.scope} if self.scope else {})}
        return self._post_token(self.token_url, data, "the client credentials", auth=(self._client_id, self._secret))

    def _hint(self) -> str:
        return "check FHIR_MSC_CLIENT_ID and FHIR_MSC_CLIENT_SECRET"

    def _scope_hint(self) -> str:
        return "set FHIR_MSC_SCOPE to scopes the server grants this client"


# --- SMART Backend Services ------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class SigningKey:
    """A private key that signs client assertions, its JWS algorithm and its key id."""

    private_key: Any  # a cryptography RSA or EC private key
    algorithm: str  # RS384 or ES384
    kid: str

    def __repr__(self) -> str:  # never show the key
        return f"SigningKey(algorithm={self.algorithm!r}, kid={self.kid!r})"


def _algorithm(private_key: Any, source: str) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(private_key, rsa.RSAPrivateKey):
        if private_key.key_size < 2048:
            raise InputError(f"{source}: RSA key of {private_key.key_size} bits: RS384 needs at least 2048")
        return "RS384"
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        if private_key.curve.name != "secp384r1":
            raise InputError(f"{source}: EC key on curve {private_key.curve.name}: ES384 needs a P-384 (secp384r1) key "
                             "(openssl ecparam -name secp384r1 -genkey -noout)")
        return "ES384"
    raise InputError(f"{source}: not an RSA or EC private key: SMART client assertions are signed RS384 or ES384")


def load_signing_key(path: str, kid: str | None = None, password: str | None = None) -> SigningKey:
    """The private key in a PEM file or a JWK Set (JSON) file, with its algorithm and key id.

    The file must be readable by its owner only. A PEM key needs ``kid`` (the key id
    registered with the server); a JWK Set gives it, and ``kid`` picks the key when the set
    holds more than one private key.
    """
    source = f"SMART key file {path}"
    try:
        if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InputError(f"{source} is readable by others: chmod 600 {path}")
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{source}: cannot read it ({exc.strerror})") from None
    if data.lstrip().startswith(b"{"):
        private_key, kid = _key_from_jwks(data, kid, source)
    else:
        from cryptography.hazmat.primitives import serialization

        try:
            private_key = serialization.load_pem_private_key(data, password.encode() if password else None)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{source}: not a readable PEM private key ({exc}); "
                             "set FHIR_MSC_SMART_KEY_PASSWORD if it is encrypted") from None
        if not kid:
            raise InputError(f"{source} is a PEM key: set FHIR_MSC_SMART_KID to the key id registered with the server")
    return SigningKey(private_key, _algorithm(private_key, source), kid)


def _key_from_jwks(data: bytes, kid: str | None, source: str) -> tuple[Any, str]:
    import jwt

    try:
        document = json.loads(data)
        jwks = document.get("keys", [document]) if isinstance(document, dict) else []
    except ValueError as exc:
        raise InputError(f"{source}: not valid JSON ({exc})") from None
    private = [k for k in jwks if isinstance(k, dict) and "d" in k and (not kid or k.get("kid") == kid)]
    if len(private) != 1:
        found = f"{len(private)} private keys" + (f" with kid {kid!r}" if kid else "")
        todo = "set FHIR_MSC_SMART_KID to pick one" if len(private) > 1 else "the file must hold the private JWK (with \"d\")"
        raise InputError(f"{source}: {found}: {todo}")
    jwk = private[0]
    if not (kid or jwk.get("kid")):
        raise InputError(f"{source}: the key has no \"kid\": set FHIR_MSC_SMART_KID to the key id registered with the server")
    try:
        key = jwt.PyJWK(jwk).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, KeyError) as exc:
        raise InputError(f"{source}: not a usable private JWK ({exc})") from None
    if jwk.get("alg") and jwk["alg"] != _algorithm(key, source):
        raise InputError(f"{source}: the JWK says alg {jwk['alg']}: SMART client assertions are RS384 or ES384")
    return key, kid or jwk["kid"]


def client_assertion(key: SigningKey, client_id: str, token_url: str, *, jku: str | None = None,
                     now: float | None = None) -> str:
    """A one-time authentication JWT for ``token_url``: iss = sub = client id, aud = token URL, exp ≤ 5 min, jti."""
    import jwt

    issued = int(time.time() if now is None else now)
    claims = {"iss": client_id, "sub": client_id, "aud": token_url, "exp": issued + ASSERTION_LIFETIME,
              "jti": secrets.token_urlsafe(24)}
    headers = {"typ": "JWT", "kid": key.kid, **({"jku": jku} if jku else {})}
    return jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers=headers)


def scope_syntax(configuration: dict) -> str:
    """``v2`` when a smart-configuration lists SMART v2 permissions only (capability ``permission-v2``,
    scopes such as ``system/*.rs``), else ``v1`` (also when it lists both, or neither)."""
    listed = {c.removeprefix("permission-") for c in _strings(configuration.get("capabilities"))
              if c in ("permission-v1", "permission-v2")}
    for scope in _strings(configuration.get("scopes_supported")):
        permissions = re.fullmatch(r"[a-z]+/[^.\s]+\.([a-z*]+)(\?\S*)?", scope)
        if permissions and permissions.group(1) in ("read", "write", "*"):
            listed.add("v1")
        elif permissions and set(permissions.group(1)) <= set("cruds"):
            listed.add("v2")
    return "v2" if listed == {"v2"} else "v1"


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


class SmartBackendAuth(_TokenAuth):
    """SMART Backend Services: client credentials with a ``private_key_jwt`` client assertion.

    The token endpoint is ``token_url`` or, when it is not given, the ``token_endpoint`` of
    the server's ``.well-known/smart-configuration`` (checked to accept ``private_key_jwt``
    and the key's algorithm). The scope is ``scope`` or, when it is not given, the least the
    job needs (:data:`SMART_SCOPES`: read unless :meth:`need_access` says write) in the
    syntax the smart-configuration lists (:func:`scope_syntax`).
    """

    def __init__(self, base_url: str, client_id: str, key: SigningKey, *, scope: str | None = None,
                 token_url: str | None = None, jku: str | None = None):
        super().__init__(base_url, token_url)
        self.base_url = base_url.rstrip("/") + "/"
        self.client_id, self.key, self.scope = client_id, key, scope
        self.jku = check_url(jku, "JWK Set URL (jku)") if jku else None
        self.configuration_url = urljoin(self.base_url, ".well-known/smart-configuration")
        self.access: Access = "read"
        self._discovery: requests.Response | None = None  # the configuration_url's answer

    def need_access(self, access: Access) -> None:
        with self._lock:
            if access == "write" and self.access == "read":
                self.access, self._token = "write", None  # a read token would not do: ask again

    def requested_scope(self) -> str:
        """``scope`` if given, else the least the job needs, in the syntax the server lists."""
        return self.scope or SMART_SCOPES[scope_syntax(self._configuration())][self.access]

    def _fetch(self) -> tuple[str, float]:
        token_url = self.token_url or self._discover()
        data = {"grant_type": "client_credentials", "scope": self.requested_scope(), "client_assertion_type": JWT_BEARER,
                "client_assertion": client_assertion(self.key, self.client_id, token_url, jku=self.jku)}
        return self._post_token(token_url, data, f"the client assertion ({self.key.algorithm}, kid {self.key.kid!r})")

    def _configuration(self) -> dict:
        """The server's smart-configuration, read once; ``{}`` when it has none."""
        if self._discovery is None:
            self._discovery = self._call("GET", self.configuration_url)
        return _json_object(self._discovery) if self._discovery.status_code == 200 else {}

    def _discover(self) -> str:
        config, url, response = self._configuration(), self.configuration_url, self._discovery
        todo = "set FHIR_MSC_SMART_TOKEN_URL to the server's token endpoint"
        if not isinstance(config.get("token_endpoint"), str):
            raise InvalidResponse(f"{redact(url)}: no SMART configuration with a token_endpoint "
                                  f"(HTTP {response.status_code}): {todo}", status=response.status_code, response=response)
        methods = config.get("token_endpoint_auth_methods_supported")
        if isinstance(methods, list) and "private_key_jwt" not in methods:
            raise AuthorizationError(f"{redact(url)}: the server does not accept private_key_jwt client assertions "
                                     f"(it offers {', '.join(map(str, methods)) or 'none'})")
        algorithms = config.get("token_endpoint_auth_signing_alg_values_supported")
        if isinstance(algorithms, list) and self.key.algorithm not in algorithms:
            raise AuthorizationError(f"{redact(url)}: the server accepts {', '.join(map(str, algorithms))} assertions, "
                                     f"the key signs {self.key.algorithm}: register and use a key for one of them")
        try:
            token_url = check_url(urljoin(url, config["token_endpoint"]), "token endpoint")
        except BadServerUrl as exc:
            raise InvalidResponse(f"{redact(url)}: {exc}") from None
        require_private_transport(token_url, "token endpoint", self._insecure_http)
        self.token_url = token_url
        return token_url

    def _hint(self) -> str:
        return ("check FHIR_MSC_SMART_CLIENT_ID, and that FHIR_MSC_SMART_KEY and FHIR_MSC_SMART_KID are the key "
                "registered with the server")

    def _scope_hint(self) -> str:
        scopes = SMART_SCOPES[scope_syntax(self._configuration() if self._discovery is not None else {})]
        return (f"the server does not grant this client that scope: set FHIR_MSC_SMART_SCOPE to scopes it grants "
                f"(reading needs {scopes['read']!r}, pushing {scopes['write']!r})")


# --- settings ---------------------------------------------------------------------------------

_METHODS = {"FHIR_MSC_TOKEN": "bearer token", "FHIR_MSC_USERNAME": "basic", "FHIR_MSC_CLIENT_ID": "OAuth2 client secret",
            "FHIR_MSC_SMART_CLIENT_ID": "SMART Backend Services"}


def auth_from_env(base_url: str, env: dict[str, str] | None = None) -> OriginAuth | None:
    """Credentials from the settings (environment or config file); None if there are none.

    One of: FHIR_MSC_TOKEN; FHIR_MSC_USERNAME/PASSWORD; FHIR_MSC_CLIENT_ID/SECRET/TOKEN_URL
    (+ FHIR_MSC_SCOPE); FHIR_MSC_SMART_CLIENT_ID/KEY (+ KID, KEY_PASSWORD, TOKEN_URL, SCOPE, JKU).
    """
    env = os.environ if env is None else env
    chosen = [name for name in _METHODS if env.get(name)]
    if len(chosen) > 1:
        raise InputError(f"credentials for more than one method are set ({', '.join(chosen)}): keep one of them")
    if not chosen:
        return None
    if chosen[0] == "FHIR_MSC_TOKEN":
        return BearerAuth(base_url, env["FHIR_MSC_TOKEN"])
    if chosen[0] == "FHIR_MSC_USERNAME":
        return BasicAuth(base_url, env["FHIR_MSC_USERNAME"], env.get("FHIR_MSC_PASSWORD", ""))
    if chosen[0] == "FHIR_MSC_CLIENT_ID":
        if not env.get("FHIR_MSC_TOKEN_URL"):
            raise InputError("FHIR_MSC_CLIENT_ID is set but FHIR_MSC_TOKEN_URL is not: set the OAuth2 token endpoint")
        return ClientCredentialsAuth(base_url, env["FHIR_MSC_TOKEN_URL"], env["FHIR_MSC_CLIENT_ID"],
                                     env.get("FHIR_MSC_CLIENT_SECRET", ""), env.get("FHIR_MSC_SCOPE", ""))
    if not env.get("FHIR_MSC_SMART_KEY"):
        raise InputError("FHIR_MSC_SMART_CLIENT_ID is set but FHIR_MSC_SMART_KEY is not: set the path of the private key "
                         "(PEM or JWK Set file)")
    key = load_signing_key(env["FHIR_MSC_SMART_KEY"], env.get("FHIR_MSC_SMART_KID") or None,
                           env.get("FHIR_MSC_SMART_KEY_PASSWORD") or None)
    return SmartBackendAuth(base_url, env["FHIR_MSC_SMART_CLIENT_ID"], key,
                            scope=env.get("FHIR_MSC_SMART_SCOPE") or None,
                            token_url=env.get("FHIR_MSC_SMART_TOKEN_URL") or None, jku=env.get("FHIR_MSC_SMART_JKU") or None)


def load_config(path: str | None) -> dict[str, str]:
    """Settings from a YAML config file, keyed like the environment (FHIR_MSC_TOKEN, FHIR_MSC_SERVER, …).

    Keys may leave out the ``FHIR_MSC_`` prefix and be in any case (``server``, ``token``).
    The file is the place for secrets that should not live in the shell environment; it
    must not be readable by others.
    """
    if not path:
        return {}
    import yaml

    if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"{path}: config file with credentials is readable by others: chmod 600 {path}")
    try:
        with open(path, encoding="utf-8") as file:
            raw = yaml.safe_load(file) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read config file ({exc})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: the config file must be a mapping of settings (server: …, token: …)")
    keys = (str(k).upper() for k in raw)
    return {k if k.startswith(CONFIG_PREFIX) else CONFIG_PREFIX + k: str(v) for k, v in zip(keys, raw.values())}


CONFIG_PREFIX = "FHIR_MSC_"
