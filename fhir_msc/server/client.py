"""A FHIR REST client on requests: one Session per server, one request function.

- Auth: bearer token, HTTP basic, or OAuth2 client credentials (fetched, cached,
  refreshed; re-authenticated once on 401). Credentials come from the environment or a
  config file (see :func:`auth_from_env`), never from argv, and are attached only to
  requests for the server's own origin.
- Temporary failures (408, 429, 502, 503, 504, connection errors, timeouts) are retried
  with exponential backoff and jitter, honouring Retry-After up to a cap, bounded in
  attempts and total time. Everything else maps to one exception class (errors.py).
- Searches are generators following ``link[relation=next]``; a next link outside the
  base URL is refused, never followed.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from ..errors import (
    AuthorizationError,
    ForeignLinkRefused,
    InputError,
    InvalidResponse,
    MultipleMatches,
    OperationOutcomeError,
    ResourceNotFound,
    TemporaryServerError,
)
from ..fhir.versions import FhirVersion, get_version

FHIR_JSON = "application/fhir+json"
TEMPORARY_STATUSES = frozenset({408, 429, 502, 503, 504})


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


# --- authentication ------------------------------------------------------------------

class _OriginAuth(requests.auth.AuthBase):
    """Adds credentials only to requests for one origin."""

    def __init__(self, base_url: str):
        self.origin = _origin(base_url)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if _origin(request.url or "") == self.origin:
            request.headers["Authorization"] = self.header()
        return request

    def header(self) -> str:
        raise NotImplementedError

    def refresh(self) -> bool:
        """Get fresh credentials after a 401; False if there is nothing to refresh."""
        return False

    def __repr__(self) -> str:  # never show the secret
        return f"{type(self).__name__}(origin={self.origin[1]!r})"


class BearerAuth(_OriginAuth):
    def __init__(self, base_url: str, token: str):
        super().__init__(base_url)
        self._token = token

    def header(self) -> str:
        return f"Bearer {self._token}"


class BasicAuth(_OriginAuth):
    def __init__(self, base_url: str, username: str, password: str):
        super().__init__(base_url)
        self._basic = requests.auth._basic_auth_str(username, password)

    def header(self) -> str:
        return self._basic


class ClientCredentialsAuth(_OriginAuth):
    """OAuth2 client credentials grant; the token is cached until shortly before it expires."""

    def __init__(self, base_url: str, token_url: str, client_id: str, client_secret: str, scope: str = "",
                 session: requests.Session | None = None, timeout: float = 30):
        super().__init__(base_url)
        self.token_url, self._client_id, self._secret, self.scope = token_url, client_id, client_secret, scope
        self._session, self._timeout = session or requests.Session(), timeout
        self._token: str | None = None
        self._expires = 0.0

    def header(self) -> str:
        if self._token is None or time.monotonic() >= self._expires:
            self._fetch()
        return f"Bearer {self._token}"

    def refresh(self) -> bool:
        self._token = None
        return True

    def _fetch(self) -> None:
        data = {"grant_type": "client_credentials", **({"scope": self.scope} if self.scope else {})}
        try:
            response = self._session.post(self.token_url, data=data, auth=(self._client_id, self._secret), timeout=self._timeout)
        except requests.RequestException as exc:
            raise AuthorizationError(f"token endpoint {self.token_url} unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise AuthorizationError(f"token endpoint {self.token_url} refused the client credentials (HTTP {response.status_code})",
                                     status=response.status_code, response=response)
        try:
            body = response.json()
            self._token = body["access_token"]
        except (ValueError, KeyError):
            raise InvalidResponse(f"token endpoint {self.token_url} sent no access_token") from None
        self._expires = time.monotonic() + max(float(body.get("expires_in", 300)) - 30, 5)


def auth_from_env(base_url: str, env: dict[str, str] | None = None) -> _OriginAuth | None:
    """Credentials from FHIR_MSC_TOKEN, FHIR_MSC_USERNAME/PASSWORD, or FHIR_MSC_CLIENT_ID/SECRET/TOKEN_URL."""
    env = os.environ if env is None else env
    if env.get("FHIR_MSC_TOKEN"):
        return BearerAuth(base_url, env["FHIR_MSC_TOKEN"])
    if env.get("FHIR_MSC_USERNAME"):
        return BasicAuth(base_url, env["FHIR_MSC_USERNAME"], env.get("FHIR_MSC_PASSWORD", ""))
    if env.get("FHIR_MSC_CLIENT_ID"):
        if not env.get("FHIR_MSC_TOKEN_URL"):
            raise InputError("FHIR_MSC_CLIENT_ID is set but FHIR_MSC_TOKEN_URL is not: set the OAuth2 token endpoint")
        return ClientCredentialsAuth(base_url, env["FHIR_MSC_TOKEN_URL"], env["FHIR_MSC_CLIENT_ID"],
                                     env.get("FHIR_MSC_CLIENT_SECRET", ""), env.get("FHIR_MSC_SCOPE", ""))
    return None


# --- retries ---------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded in attempts and total time."""

    attempts: int = 5
    backoff: float = 0.5  # seconds before the second attempt (before jitter)
    max_delay: float = 30.0  # cap on one wait, Retry-After included
    max_total: float = 120.0  # give up once this much time has passed

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        return min(self.backoff * 2 ** (attempt - 1), self.max_delay) * random.uniform(0.5, 1.0)


def _retry_after(response: requests.Response | None) -> float | None:
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    parsed = email.utils.parsedate_to_datetime(value) if value else None
    return max(parsed.timestamp() - time.time(), 0.0) if parsed else None


# --- the client --------------------------------------------------------------------------

@dataclass
class RequestStats:
    requests: int = 0
    retries: int = 0
    waits: list[float] = field(default_factory=list)


class FhirClient:
    """A FHIR server at ``base_url``: read, search (paged), transaction/batch, capabilities."""

    def __init__(self, base_url: str, *, auth: _OriginAuth | None = None, timeout: float = 30.0,
                 verify: bool | str = True, retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep):
        if not base_url.startswith(("http://", "https://")):
            raise InputError(f"{base_url!r} is not an http(s) FHIR base URL")
        self.base_url = base_url.rstrip("/") + "/"
        self.session = requests.Session()
        self.session.headers.update({"Accept": FHIR_JSON, "User-Agent": "fhir-msc"})
        self.session.verify = verify
        self.session.trust_env = False  # no proxies or netrc picked up behind the user's back
        self.auth, self.timeout, self.retry, self._sleep = auth, timeout, retry, sleep
        self.stats = RequestStats()
        self._capabilities: dict | None = None

    def __repr__(self) -> str:
        return f"FhirClient({self.base_url!r})"

    def url(self, path: str) -> str:
        return urljoin(self.base_url, path.lstrip("/"))

    # the single request function -----------------------------------------------------

    def request(self, method: str, path_or_url: str, *, json: Any = None, params: dict | None = None) -> Any:
        """Send one request with retries; return the parsed JSON body (None for empty)."""
        url = path_or_url if path_or_url.startswith(("http://", "https://")) else self.url(path_or_url)
        if _origin(url) != _origin(self.base_url) or not url.startswith(self.base_url.rstrip("/")):
            raise ForeignLinkRefused(f"refusing {url}: it is outside the server {self.base_url}")
        started, attempt, reauthenticated = time.monotonic(), 0, False
        while True:
            attempt += 1
            response, failure = self._send(method, url, json, params)
            if response is not None and response.status_code == 401 and not reauthenticated and self.auth and self.auth.refresh():
                reauthenticated = True
                continue
            temporary = failure is not None or response.status_code in TEMPORARY_STATUSES
            if not temporary:
                return self._parse(response)
            elapsed = time.monotonic() - started
            wait = self.retry.delay(attempt, _retry_after(response))
            if attempt >= self.retry.attempts or elapsed + wait > self.retry.max_total:
                what = failure or f"HTTP {response.status_code}"
                raise TemporaryServerError(f"{method} {url}: {what} after {attempt} attempt(s) in {elapsed:.1f}s; "
                                           "the server may be overloaded or down: try again later",
                                           status=response.status_code if response is not None else None,
                                           outcome=_outcome(response), response=response)
            self.stats.retries += 1
            self.stats.waits.append(wait)
            self._sleep(wait)

    def _send(self, method: str, url: str, json: Any, params: dict | None) -> tuple[requests.Response | None, str | None]:
        self.stats.requests += 1
        headers = {"Content-Type": FHIR_JSON} if json is not None else {}
        try:
            response = self.session.request(method, url, json=json, params=params, headers=headers, auth=self.auth,
                                            timeout=self.timeout, allow_redirects=False)
        except requests.Timeout:
            return None, f"no answer within {self.timeout:g}s"
        except requests.ConnectionError as exc:
            return None, f"connection failed ({type(exc).__name__})"
        if response.is_redirect:
            location = response.headers.get("Location", "")
            if _origin(urljoin(url, location)) != _origin(self.base_url):
                raise ForeignLinkRefused(f"{method} {url} redirected to another origin ({_origin(location)[1]}): not followed")
            return self._send(method, urljoin(url, location), json, params)
        return response, None

    def _parse(self, response: requests.Response) -> Any:
        status = response.status_code
        if status < 400:
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                raise InvalidResponse(f"{response.request.method} {response.url}: HTTP {status} but the body is not JSON "
                                      f"({response.content[:60]!r})", status=status, response=response) from None
        outcome = _outcome(response)
        diagnostics = _diagnostics(outcome) or response.reason or ""
        where = f"{response.request.method} {response.url}: HTTP {status}"
        kind = {401: AuthorizationError, 403: AuthorizationError, 404: ResourceNotFound, 410: ResourceNotFound,
                412: MultipleMatches}.get(status, OperationOutcomeError)
        hint = {401: "check the credentials in the environment or config file",
                403: "the credentials are valid but not allowed to do this",
                412: "more than one resource matches the business identifier: resolve the duplicates on the server"}.get(status, "")
        message = f"{where}: {diagnostics}" + (f" ({hint})" if hint else "")
        raise kind(message, status=status, outcome=outcome, response=response)

    # FHIR interactions -------------------------------------------------------------

    def capabilities(self) -> dict:
        if self._capabilities is None:
            self._capabilities = self.request("GET", "metadata")
            if not isinstance(self._capabilities, dict) or self._capabilities.get("resourceType") != "CapabilityStatement":
                raise InvalidResponse(f"{self.url('metadata')} did not return a CapabilityStatement")
        return self._capabilities

    def fhir_version(self) -> FhirVersion:
        """R4 or R5, from the CapabilityStatement's fhirVersion."""
        version = self.capabilities().get("fhirVersion", "4.0.1")
        try:
            return get_version(version)
        except ValueError:
            raise InvalidResponse(f"server speaks FHIR {version}: fhir-msc supports R4 (4.0.x) and R5 (5.0.x)") from None

    def supports_transactions(self) -> bool:
        rest = self.capabilities().get("rest", [{}])
        return any(i.get("code") == "transaction" for r in rest for i in r.get("interaction", []))

    def read(self, resource_type: str, resource_id: str) -> dict:
        return self.request("GET", f"{resource_type}/{resource_id}")

    def search(self, resource_type: str, params: dict[str, str] | None = None) -> Iterator[dict]:
        """Every resource of every page; follows next links on this server only.

        Sends an explicit ``_sort=_id`` (unless given) so that pages are stable.
        """
        for bundle in self.search_pages(resource_type, params):
            for entry in bundle.get("entry", []):
                if "resource" in entry:
                    yield entry["resource"]

    def search_complete(self, resource_type: str, params: dict[str, str] | None = None) -> list[dict]:
        """Every resource of a search, fetched without ``_sort`` (cheaper on many servers).

        Pages without a sort order can shift while they are read, so the result is checked:
        duplicates are dropped, and if the distinct matches do not add up to Bundle.total the
        search is repeated with ``_sort=_id``.
        """
        found: dict[tuple[str, str], dict] = {}
        matches, total = set(), None
        for bundle in self.search_pages(resource_type, params, sort=False):
            total = bundle.get("total", total)
            for entry in bundle.get("entry", []):
                resource = entry.get("resource")
                if resource:
                    key = (resource["resourceType"], resource["id"])
                    found[key] = resource
                    if entry.get("search", {}).get("mode", "match") == "match":
                        matches.add(key)
        if total is not None and len(matches) != total:
            return list({(r["resourceType"], r["id"]): r for r in self.search(resource_type, params)}.values())
        return list(found.values())

    def search_pages(self, resource_type: str, params: dict[str, str] | None = None, *, sort: bool = True) -> Iterator[dict]:
        query = {**({"_sort": "_id"} if sort else {}), **(params or {})}
        bundle = self.request("GET", resource_type, params=query)
        while True:
            if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
                raise InvalidResponse(f"search {resource_type} did not return a Bundle")
            yield bundle
            next_url = next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)
            if not next_url:
                return
            bundle = self.request("GET", next_url)

    def transaction(self, bundle: dict) -> dict:
        return self.request("POST", "", json=bundle)

    def count(self, resource_type: str, params: dict[str, str] | None = None) -> int | None:
        """How many resources a search matches (``_summary=count``); None if the server does not say."""
        bundle = self.request("GET", resource_type, params={**(params or {}), "_summary": "count"})
        total = bundle.get("total") if isinstance(bundle, dict) and bundle.get("resourceType") == "Bundle" else None
        return total if isinstance(total, int) and not isinstance(total, bool) else None

    def ids(self, resource_type: str, params: dict[str, str] | None = None, page_size: int = 1000) -> set[str]:
        """The ids of the resources a search matches, asking for ids only (``_elements=id``)."""
        query = {"_elements": "id", "_count": str(page_size), **(params or {})}
        return {r["id"] for r in self.search_complete(resource_type, query)
                if r.get("resourceType") == resource_type and isinstance(r.get("id"), str)}


def _outcome(response: requests.Response | None) -> dict | None:
    if response is None:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome" else None


def _diagnostics(outcome: dict | None) -> str:
    if not outcome:
        return ""
    parts = []
    for issue in outcome.get("issue", []):
        text = issue.get("diagnostics") or issue.get("details", {}).get("text") or issue.get("code", "")
        where = ", ".join(issue.get("expression", []) or issue.get("location", []))
        parts.append(f"{text} ({where})" if where else text)
    return "; ".join(p for p in parts if p)


def load_config(path: str | None) -> dict[str, str]:
    """Settings from a YAML config file, keyed like the environment (FHIR_MSC_TOKEN, …).

    The file is the place for secrets that should not live in the shell environment; it
    must not be readable by others.
    """
    if not path:
        return {}
    import stat

    import yaml

    file_mode = os.stat(path).st_mode
    if file_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"{path}: config file with credentials is readable by others: chmod 600 {path}")
    try:
        raw = yaml.safe_load(open(path, encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read config file ({exc})") from None
    return {str(k).upper(): str(v) for k, v in raw.items()}


def connect(base_url: str, *, config: str | None = None, ca_bundle: str | None = None, timeout: float = 30.0,
            retry: RetryPolicy = RetryPolicy()) -> FhirClient:
    """A client for ``base_url`` with credentials from the config file, else the environment."""
    settings = {**os.environ, **load_config(config)}
    return FhirClient(base_url, auth=auth_from_env(base_url, settings), timeout=timeout,
                      verify=ca_bundle or True, retry=retry)
