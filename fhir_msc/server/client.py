"""A FHIR REST client on requests: one Session per server, one request function.

- Auth (auth.py): bearer token, HTTP basic, OAuth2 client credentials or SMART Backend
  Services (tokens fetched through this client's session, cached, re-authenticated once
  on 401; SMART scopes for reading unless the job calls ``need_access("write")``).
  Credentials come from the environment or a config file, never from argv, are
  attached only to requests for the server's own origin, and never go over plain http to
  a host other than loopback unless ``insecure_http``.
- The base URL is checked first: a malformed one, or one with a user name or password in
  it, is a one-line error (exit 2) that never echoes the password.
- Temporary failures (408, 429, 502, 503, 504, connection errors, timeouts) are retried
  with exponential backoff and jitter, honouring Retry-After (seconds or HTTP-date; a
  malformed one counts as absent) up to a cap, bounded in attempts and total time. A
  failed TLS handshake is not temporary: it is reported at once as a certificate problem.
  Everything else maps to one exception class (errors.py).
- Requests go to the server's origin (scheme, host, port) only, under any path there (Bulk
  Data status and file URLs often live outside the base path); a URL on another origin is
  refused, except an anonymous request (no credentials, a session of its own: export files
  on another host, which the manifest says need no token), over https or to loopback only
  unless ``insecure_http``.
- Redirects are followed on the request's origin only, at most ``MAX_REDIRECTS`` in a row.
- Searches are generators following ``link[relation=next]``; a next link to another origin
  is refused, never followed. A page set that falls short of Bundle.total is never taken as
  proof that the rest is absent: :meth:`FhirClient.search` raises IncompleteSearch after its
  last resource, a listing (:meth:`FhirClient.listing`) says whether it is complete, and
  :meth:`FhirClient.presence` proves ids one way or the other.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from ..errors import (
    AuthorizationError,
    ForeignLinkRefused,
    IncompleteSearch,
    InsecureHttpRefused,
    InvalidResponse,
    MultipleMatches,
    OperationOutcomeError,
    ResourceNotFound,
    TemporaryServerError,
)
from ..fhir.versions import FhirVersion, get_version
from .auth import (  # noqa: F401  (the credential kinds are part of this module's interface)
    Access,
    BasicAuth,
    BearerAuth,
    ClientCredentialsAuth,
    OriginAuth,
    SmartBackendAuth,
    auth_from_env,
    certificate_error,
    check_url,
    is_loopback,
    load_config,
    redact,
    require_private_transport,
)
from .auth import origin as _origin

FHIR_JSON = "application/fhir+json"
log = logging.getLogger(__name__)
TEMPORARY_STATUSES = frozenset({408, 429, 502, 503, 504})
MAX_REDIRECTS = 5


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


def _retry_after(response: requests.Response | None, now: float | None = None) -> float | None:
    """Seconds to wait from Retry-After (delta-seconds or HTTP-date, counted from `now`, default the clock);
    None if absent or malformed."""
    value = (response.headers.get("Retry-After") or "").strip() if response is not None else ""
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


# --- the client --------------------------------------------------------------------------

@dataclass
class RequestStats:
    requests: int = 0
    retries: int = 0
    waits: list[float] = field(default_factory=list)


class FhirClient:
    """A FHIR server at ``base_url``: read, search (paged), transaction/batch, capabilities."""

    def __init__(self, base_url: str, *, auth: OriginAuth | None = None, timeout: float = 30.0,
                 verify: bool | str = True, retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep, insecure_http: bool = False):
        self.base_url = check_url(base_url).rstrip("/") + "/"
        self.session = _session(verify)
        self.anonymous_session = _session(verify)  # never given credentials: for URLs on other origins
        if auth is not None:
            require_private_transport(self.base_url, "server", insecure_http)
            auth.bind(self.session, timeout, insecure_http)  # token endpoints: same CA bundle, timeout, no proxies
        self.auth, self.timeout, self.retry, self._sleep = auth, timeout, retry, sleep
        self.insecure_http = insecure_http
        self.stats = RequestStats()
        self._capabilities: dict | None = None

    def __repr__(self) -> str:
        return f"FhirClient({self.base_url!r})"

    def need_access(self, access: Access) -> None:
        """Say what the job does here (it reads, unless it says it writes): SMART asks for the scopes that needs."""
        if self.auth is not None:
            self.auth.need_access(access)

    def url(self, path: str) -> str:
        return urljoin(self.base_url, path.lstrip("/"))

    # the single request function -----------------------------------------------------

    def request(self, method: str, path_or_url: str, *, json: Any = None, params: dict | None = None) -> Any:
        """Send one request with retries; return the parsed JSON body (None for empty)."""
        return self._parse(self.response(method, path_or_url, json=json, params=params))

    def response(self, method: str, path_or_url: str, *, json: Any = None, params: dict | None = None,
                 headers: dict[str, str] | None = None, stream: bool = False, anonymous: bool = False) -> requests.Response:
        """Send one request with retries; return the first answer that is not temporary, whatever its status.

        For callers that need headers (Content-Location, X-Progress) or a streamed body;
        ``check`` raises for an error status as ``request`` does. The URL must be on the
        server's origin, unless ``anonymous``: then it may be anywhere (https, or loopback, or
        ``insecure_http``) and goes without credentials, through a session that never has any.
        """
        url = path_or_url if path_or_url.startswith(("http://", "https://")) else self.url(path_or_url)
        if anonymous:
            self._check_anonymous(url)
        elif _origin(url) != _origin(self.base_url):
            raise ForeignLinkRefused(f"refusing {redact(url)}: it is on another origin than the server {self.base_url}")
        started, attempt, reauthenticated = time.monotonic(), 0, False
        while True:
            attempt += 1
            response, failure = self._send(method, url, json, params, headers or {}, stream, anonymous)
            if (response is not None and response.status_code == 401 and not reauthenticated and self.auth and not anonymous
                    and self.auth.refresh(response.request.headers.get("Authorization"))):
                reauthenticated = True
                response.close()
                continue
            temporary = failure is not None or response.status_code in TEMPORARY_STATUSES
            if not temporary:
                return response
            elapsed = time.monotonic() - started
            wait = self.retry.delay(attempt, _retry_after(response))
            if attempt >= self.retry.attempts or elapsed + wait > self.retry.max_total:
                what = failure or f"HTTP {response.status_code}"
                raise TemporaryServerError(f"{method} {url}: {what} after {attempt} attempt(s) in {elapsed:.1f}s; "
                                           "the server may be overloaded or down: try again later",
                                           status=response.status_code if response is not None else None,
                                           outcome=_outcome(response), response=response)
            if response is not None:
                response.close()
            self.stats.retries += 1
            self.stats.waits.append(wait)
            self._sleep(wait)

    def _check_anonymous(self, url: str) -> None:
        """An anonymous request's URL: a well-formed http(s) URL, and not plain http to another host unless allowed."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise ForeignLinkRefused(f"refusing {redact(url)}: not an http(s) URL with a host (and no credentials in it)")
        if parts.scheme.lower() == "http" and not is_loopback(parts.hostname or "") and not self.insecure_http:
            raise InsecureHttpRefused(f"refusing to fetch {redact(url)} over plain http from a host other than loopback: "
                                      "the data would cross the network unencrypted; pass --insecure-http if this network is trusted")

    def _send(self, method: str, url: str, json: Any, params: dict | None, extra_headers: dict[str, str] | None = None,
              stream: bool = False, anonymous: bool = False) -> tuple[requests.Response | None, str | None]:
        """One attempt, following at most MAX_REDIRECTS redirects on the request's origin."""
        headers = {**({"Content-Type": FHIR_JSON} if json is not None else {}), **(extra_headers or {})}
        first = url
        session, auth = (self.anonymous_session, None) if anonymous else (self.session, self.auth)
        for _ in range(MAX_REDIRECTS + 1):
            self.stats.requests += 1
            started = time.monotonic()
            try:
                response = session.request(method, url, json=json, params=params, headers=headers, auth=auth,
                                           timeout=self.timeout, allow_redirects=False, stream=stream)
            except requests.exceptions.SSLError as exc:  # before ConnectionError, its parent: not temporary
                raise certificate_error(method, url, exc) from None
            except requests.Timeout:
                log.info("%s %s: no answer within %gs", method, redact(url), self.timeout)
                return None, f"no answer within {self.timeout:g}s"
            except requests.ConnectionError as exc:
                log.info("%s %s: connection failed (%s)", method, redact(url), type(exc).__name__)
                return None, f"connection failed ({type(exc).__name__})"
            log.info("%s %s → %s (%.2fs)", method, redact(response.url), response.status_code, time.monotonic() - started)
            if not response.is_redirect:
                return response, None
            location = urljoin(url, response.headers.get("Location", ""))
            if _origin(location) != _origin(first):
                raise ForeignLinkRefused(f"{method} {url} redirected to another origin ({redact(location)}): not followed")
            url, params = location, None  # the Location is the whole URL, query included
        raise InvalidResponse(f"{method} {first}: more than {MAX_REDIRECTS} redirects in a row (last to {redact(url)}): "
                              "check the server's base URL", status=response.status_code, response=response)

    def _parse(self, response: requests.Response) -> Any:
        self.check(response)
        status = response.status_code
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise InvalidResponse(f"{response.request.method} {response.url}: HTTP {status} but the body is not JSON "
                                  f"({response.content[:60]!r})", status=status, response=response) from None

    def check(self, response: requests.Response) -> None:
        """Raise the error class of an HTTP error status (with the server's OperationOutcome); nothing below 400."""
        status = response.status_code
        if status < 400:
            return
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
        """Every resource of every page; follows next links on this server's origin only.

        Sends an explicit ``_sort=_id`` (unless given) so that pages are stable. A page set whose
        matches fall short of Bundle.total raises IncompleteSearch once its resources are yielded:
        it is never taken as all there is (callers that can narrow their search use :meth:`listing`).
        """
        matches = _Matches()
        for bundle in self.search_pages(resource_type, params):
            for _, resource in matches.page(bundle):
                yield resource
        if not matches.complete:
            raise IncompleteSearch(f"search {resource_type}{_query(params)}: {matches.shortfall}, and its pages end there: "
                                   "the rest cannot be read by this search")

    def listing(self, resource_type: str, params: dict[str, str] | None = None) -> Listing:
        """Every resource of a search, and whether that is all it matches (see :class:`Listing`).

        Fetched first without ``_sort`` (cheaper on many servers). Pages without a sort order
        can shift while they are read, so a page set of more than one page that falls short
        of Bundle.total is read again with ``_sort=_id``. Duplicates are dropped.
        """
        first = self._listing(resource_type, params, sort=False)
        if first.complete or first.pages == 1:
            return first
        return self._listing(resource_type, params, sort=True)

    def _listing(self, resource_type: str, params: dict[str, str] | None, *, sort: bool) -> Listing:
        found: dict[tuple[str, str], dict] = {}
        matches = _Matches()
        for bundle in self.search_pages(resource_type, params, sort=sort):
            for key, resource in matches.page(bundle):
                found[key] = resource
        return Listing(resources=list(found.values()), matched=len(matches.keys), total=matches.total,
                       pages=matches.pages, page=matches.largest)

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
        return _total(bundle) if isinstance(bundle, dict) and bundle.get("resourceType") == "Bundle" else None

    def id_listing(self, resource_type: str, params: dict[str, str] | None = None, page_size: int = 1000) -> Listing:
        """The resources a search matches, asking for ids only (``_elements=id``); see ``Listing.ids``."""
        return self.listing(resource_type, {"_elements": "id", "_count": str(page_size), **(params or {})})

    def presence(self, resource_type: str, ids: Iterable[str], chunk: int = 100) -> Presence:
        """Which of ``ids`` the server holds, each one proven (see :class:`Presence`).

        Asked by ``_id``, ``chunk`` ids a search. A search that falls short of its Bundle.total
        proves only what it listed: the rest is asked again in chunks the size of the largest
        page the server gave (a server that caps its pages answers those whole), and read
        one by one where even that falls short.
        """
        held: set[str] = set()
        absent: set[str] = set()
        unknown: dict[str, str] = {}
        queue, searches, reads = sorted(set(ids)), 0, 0
        while queue:
            part, queue = queue[:chunk], queue[chunk:]
            listing = self.id_listing(resource_type, {"_id": ",".join(part)}, page_size=len(part))
            searches += 1
            listed = listing.ids(resource_type) & set(part)
            held |= listed
            rest = [i for i in part if i not in listed]
            if listing.complete:
                absent.update(rest)
                continue
            if 0 < listing.page < len(part):
                chunk, queue = listing.page, rest + queue
                continue
            for resource_id in rest:
                reads += 1
                found = self._held_by_read(resource_type, resource_id)
                if found is True:
                    held.add(resource_id)
                elif found is False:
                    absent.add(resource_id)
                else:
                    unknown[resource_id] = found
        return Presence(held=frozenset(held), absent=frozenset(absent), unknown=unknown, searches=searches, reads=reads)

    def _held_by_read(self, resource_type: str, resource_id: str) -> bool | str:
        """True if a read finds the resource, False on 404/410; otherwise why neither is known."""
        try:
            body = self.read(resource_type, resource_id)
        except ResourceNotFound:
            return False
        except (AuthorizationError, OperationOutcomeError, InvalidResponse) as exc:
            return f"its read failed: {exc}"
        if isinstance(body, dict) and body.get("resourceType") == resource_type and body.get("id") == resource_id:
            return True
        return f"its read answered {'a ' + str(body.get('resourceType')) if isinstance(body, dict) else 'no resource'}, not it"


class _Matches:
    """The distinct matches of a search's pages (``_include``d resources are not), as they are read, against the
    server's Bundle.total; ``largest``: the most matches one page held."""

    def __init__(self) -> None:
        self.keys: set[tuple[str, str]] = set()
        self.total: int | None = None
        self.pages = self.largest = self._unnamed = 0

    def page(self, bundle: dict) -> Iterator[tuple[tuple[str, str], dict]]:
        """The page's resources, each with its (type, id) key (resources without an id each get a key of their own)."""
        self.pages += 1
        self.total = _total(bundle) if "total" in bundle else self.total
        on_page = 0
        for entry in bundle.get("entry", []):
            resource = entry.get("resource")
            if not resource:
                continue
            id_ = resource.get("id")
            if not isinstance(id_, str):
                self._unnamed += 1
            key = (resource.get("resourceType"), id_ if isinstance(id_, str) else f"#{self._unnamed}")
            if entry.get("search", {}).get("mode", "match") == "match":
                self.keys.add(key)
                on_page += 1
            yield key, resource
        self.largest = max(self.largest, on_page)

    @property
    def complete(self) -> bool:
        return self.total is None or len(self.keys) >= self.total

    @property
    def shortfall(self) -> str:
        return _shortfall(len(self.keys), self.total)


def _shortfall(matched: int, total: int | None) -> str:
    return f"the server listed {matched} of the {total} it matches (Bundle.total)"


def _query(params: dict[str, str] | None) -> str:
    return "?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else ""


@dataclass(frozen=True, kw_only=True)
class Listing:
    """What a search returned, and whether it is evidence of absence.

    ``matched`` counts the distinct matches of every page (``_include``d resources are in
    ``resources`` but not counted); ``page`` is the most matches one page held. The listing
    is *complete* when the matches add up to the server's Bundle.total: a page set that
    falls short of it (pages that end without a next link while total promised more) is
    not. A server that gives no total is taken at its word when its pages end.
    """

    resources: list[dict]
    matched: int
    total: int | None
    pages: int
    page: int

    @property
    def complete(self) -> bool:
        return self.total is None or self.matched >= self.total

    @property
    def shortfall(self) -> str:
        """How the listing falls short ("" if it does not), for notes."""
        return _shortfall(self.matched, self.total) if not self.complete else ""

    def ids(self, resource_type: str) -> set[str]:
        """The ids of the listed resources of one type."""
        return {r["id"] for r in self.resources if r.get("resourceType") == resource_type and isinstance(r.get("id"), str)}


@dataclass(frozen=True, kw_only=True)
class Presence:
    """Which of some ids a server holds, each proven: ``held`` (listed by an ``_id`` search, or read),
    ``absent`` (left out by a complete ``_id`` search, or 404/410 on its read) or ``unknown`` (id → why
    neither could be proven)."""

    held: frozenset[str]
    absent: frozenset[str]
    unknown: dict[str, str]
    searches: int
    reads: int

    @property
    def how(self) -> str:
        """How the ids were checked, in a few words."""
        reads = f" and {self.reads} read(s)" if self.reads else ""
        return f"by _id in {self.searches} search(es){reads}"


def _total(bundle: dict) -> int | None:
    total = bundle.get("total")
    return total if isinstance(total, int) and not isinstance(total, bool) else None


def _session(verify: bool | str) -> requests.Session:
    session = requests.Session()
    session.headers.update({"Accept": FHIR_JSON, "User-Agent": "fhir-msc"})
    session.verify = verify
    session.trust_env = False  # no proxies or netrc picked up behind the user's back
    return session


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


def connect(base_url: str, *, config: str | None = None, ca_bundle: str | None = None, timeout: float = 30.0,
            retry: RetryPolicy = RetryPolicy(), insecure_http: bool = False) -> FhirClient:
    """A client for ``base_url`` with credentials from the config file, else the environment."""
    base_url = check_url(base_url)  # before anything else reads it
    settings = {**os.environ, **load_config(config)}
    return FhirClient(base_url, auth=auth_from_env(base_url, settings), timeout=timeout,
                      verify=ca_bundle or True, retry=retry, insecure_http=insecure_http)
