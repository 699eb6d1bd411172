"""Moving FHIR data: push a store to a server, pull a study from a server, sync between them.

push sends transaction Bundles (batch where the server has no transactions) in one of
two ways, both idempotent:

- ``id``: ``PUT Observation/<id>``: update-as-create with fhir-msc's ids, which are UUID5
  of the business identifier, so the same identifier always lands on the same resource.
  Used when the CapabilityStatement allows it (``updateCreate``); cheap for any server.
- ``conditional``: ``PUT Observation?identifier=system|value`` with ``urn:uuid``
  references inside each bundle and the server's own ids (from the journal) for resources
  pushed earlier. For servers that assign their own ids.

A bundle the server rejects is split in halves until the bad resource is isolated; the
smaller size is kept for the following bundles. The reply is checked entry by entry: an
entry without a 2xx ``response.status``, or missing from a short reply, is a failure of
that resource. Resources whose content hash is in the journal for this server are not
sent again, but the journal is only what fhir-msc believes: every push ends by checking
that the server holds each resource of the source (see :func:`server_check`), sends the
missing ones again (with, for ``conditional``, the resources that refer to them) and
checks those once more; what is still missing is a failure. A listing proves absence only
when it is complete (its matches add up to Bundle.total); what one that falls short left
out is proven by ``_id`` searches and reads (``FhirClient.presence``).

pull fetches the study by search, mirrors deletions only with proof, and keeps local data
the server does not have as conflicts (see :func:`pull`; :class:`PullIntake` is that rule,
which the bulk pull shares).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidResponse, MultipleMatches, OperationOutcomeError, ResourceNotFound
from ..fhir.bundle import conditional_url, rewrite_references
from ..fhir.unmapping import ref_id
from ..fhir.validate import ShapeValidator
from ..fhir.versions import FhirVersion, get_version
from ..progress import NO_PROGRESS, Progress
from ..store.ndjson import Store
from ..study.definition import Study
from .client import FhirClient, Listing
from .journal import Journal, content_hash, value_hash
from .options import METHODS, PREFER

Resource = dict[str, Any]
Key = tuple[str, str]  # (resource type, local id)
Advance = Callable[[int], None] | None  # called with the number of resources dealt with
# Referenced types first, so every reference can be resolved when it is sent.
PUSH_ORDER = ["Patient", "Group", "ResearchStudy", "ResearchSubject", "Encounter", "MedicationAdministration", "Observation",
              "AdverseEvent"]
PUSH_MODES = ("push", "full", "dry-run", "verify")
SENDING_MODES = ("push", "full")  # the others only read the server
ID_CHUNK = 100  # ids per `_id` search when checking the server (keeps URLs under ~4 KB)
ID_PAGE = 5000  # ids asked for per page when listing every id of a type (servers may send fewer)


# --- what the server is ---------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ServerProfile:
    """What fhir-msc knows of a server: its CapabilityStatement (None if it has no usable one) and FHIR version."""

    capabilities: dict | None
    version: FhirVersion
    notes: tuple[str, ...] = ()

    @property
    def bundle_type(self) -> str:
        """``transaction`` unless the CapabilityStatement lists only batch (assumed without one)."""
        if self.capabilities is None:
            return "transaction"
        interactions = [i.get("code") for rest in self.capabilities.get("rest", []) for i in rest.get("interaction", [])]
        return "transaction" if "transaction" in interactions else "batch"

    def push_method(self, method: str) -> str:
        """``auto`` is ``id`` when the server allows update-as-create for every resource type, else ``conditional``."""
        if method != "auto":
            return method
        if self.capabilities is None:
            raise InvalidResponse("without a CapabilityStatement fhir-msc cannot tell whether the server allows "
                                  "update-as-create: pass --method id (PUT Type/id) or --method conditional "
                                  "(PUT Type?identifier=…)")
        resources = [r for rest in self.capabilities.get("rest", []) for r in rest.get("resource", [])]
        return "id" if resources and all(r.get("updateCreate") for r in resources) else "conditional"


def server_profile(client: FhirClient, fhir_version: str | None = None) -> ServerProfile:
    """Read ``/metadata`` once. Without a usable CapabilityStatement, say so in ``notes`` and go on.

    The FHIR version is ``fhir_version`` when given, else the CapabilityStatement's, else R4.
    """
    try:
        body = client.request("GET", "metadata")
        problem = None if isinstance(body, dict) and body.get("resourceType") == "CapabilityStatement" \
            else f"it answered {_what(body)}"
    except (InvalidResponse, ResourceNotFound, OperationOutcomeError) as exc:
        body, problem = None, str(exc)
    if problem is None:
        declared = body.get("fhirVersion", "4.0.1")
        try:
            version = get_version(fhir_version or declared)
        except ValueError:
            raise InvalidResponse(f"server speaks FHIR {declared}: fhir-msc supports R4 (4.0.x) and R5 (5.0.x); "
                                  "pass --fhir-version to override") from None
        return ServerProfile(capabilities=body, version=version)
    version = get_version(fhir_version or "R4")
    how = "--fhir-version" if fhir_version else "the default; pass --fhir-version R5 otherwise"
    note = (f"{client.url('metadata')} gave no usable CapabilityStatement ({problem}): going on with "
            f"FHIR {version.name} ({how}) and transaction bundles")
    return ServerProfile(capabilities=None, version=version, notes=(note,))


def _what(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("resourceType"), str):
        kind = f" {body['type']}" if body["resourceType"] == "Bundle" and isinstance(body.get("type"), str) else ""
        return f"a{kind} {body['resourceType']}"
    return "no FHIR resource" if body is None else "something that is not a FHIR resource"


# --- push ------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class PushResult:
    """What a push did (``dry-run``: would do; ``verify``: what the server holds and lacks).

    Every resource of the source is counted once: ``total = created + updated + unchanged
    + len(failed)``. ``restored`` of the created/updated ones were recorded in the journal
    but missing on the server (dry-run: would be sent again). ``verify`` sends nothing:
    ``unchanged`` is what the server holds and ``failed`` what it lacks. ``checked`` is how
    many resources the final server check looked for.
    """

    target: str
    method: str
    mode: str
    total: int
    created: int
    updated: int
    unchanged: int
    failed: list[str]
    restored: int
    checked: int
    bundles: int
    requests: int
    retries: int
    seconds: float
    bundle_size: int
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def dry_run(self) -> bool:
        return self.mode == "dry-run"


def push_order(store: Store) -> Iterator[Resource]:
    """A store's resources, streamed type by type in PUSH_ORDER (other types last)."""
    types = store.resource_types()
    for resource_type in [t for t in PUSH_ORDER if t in types] + [t for t in types if t not in PUSH_ORDER]:
        yield from store.read(resource_type)


class StoreInPushOrder:
    """A store's resources in PUSH_ORDER, streamed afresh each time it is iterated."""

    def __init__(self, store: Store):
        self.store = store

    def __iter__(self) -> Iterator[Resource]:
        return push_order(self.store)


def in_push_order(resources: list[Resource]) -> list[Resource]:
    """The same order for resources already in memory (a bundle, freshly mapped tables)."""
    rank = {t: i for i, t in enumerate(PUSH_ORDER)}
    return sorted(resources, key=lambda r: rank.get(r["resourceType"], len(rank)))


@dataclass
class _Pusher:
    client: FhirClient
    journal: Journal
    bundle_size: int
    progress: Advance
    method: str
    kind: str
    target: str = ""
    outcome: dict[Key, str] = field(default_factory=dict)  # "created" or "updated"
    failures: dict[Key, str] = field(default_factory=dict)
    server_ids: dict[Key, str] = field(default_factory=dict)
    bundles: int = 0

    def __post_init__(self) -> None:
        self.target = self.client.base_url

    def send_all(self, resources: Iterable[Resource]) -> None:
        """Send in bundles of at most bundle_size (batches hold one resource type each)."""
        pending: list[tuple[Resource, str]] = []
        for resource in resources:
            if pending and (len(pending) >= self.bundle_size or
                            (self.kind == "batch" and resource["resourceType"] != pending[-1][0]["resourceType"])):
                self.send(pending)
                pending = []
            pending.append((resource, content_hash(resource)))
        if pending:
            self.send(pending)

    def send(self, pending: list[tuple[Resource, str]]) -> None:
        """Push resources (with their hashes), halving bundles the server rejects."""
        try:
            self.bundles += 1
            response = self.client.transaction(self._bundle(pending))
        except (OperationOutcomeError, MultipleMatches) as exc:
            if len(pending) == 1:
                resource = pending[0][0]
                identifier = resource.get("identifier")  # a list; one Identifier in R4 AdverseEvent
                value = (identifier if isinstance(identifier, dict) else (identifier or [{}])[0]).get("value")
                self.fail(_key(resource), f"{_label(resource)} ({value}): {exc}" if value else f"{_label(resource)}: {exc}")
                self._tick(1)
                return
            half = max(1, len(pending) // 2)
            self.bundle_size = min(self.bundle_size, half)
            for start in range(0, len(pending), half):
                self.send(pending[start:start + half])
            return
        self._record(pending, response)

    def fail(self, key: Key, message: str) -> None:
        self.outcome.pop(key, None)
        self.failures[key] = message

    def _bundle(self, pending: list[tuple[Resource, str]]) -> dict:
        if self.method == "id":
            return {"resourceType": "Bundle", "type": self.kind, "entry": [
                {"fullUrl": self.client.url(f"{r['resourceType']}/{r['id']}"), "resource": r,
                 "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r, _ in pending]}
        local = {r["id"] for r, _ in pending} if self.kind == "transaction" else set()

        def reference(ref: str) -> str:
            resource_type, _, rid = ref.partition("/")
            if rid in local:
                return f"urn:uuid:{rid}"
            known = self.journal.pushed(self.target, resource_type, rid)
            return f"{resource_type}/{known[0]}" if known else ref

        entries = []
        for resource, _ in pending:
            body = rewrite_references({k: v for k, v in resource.items() if k not in ("id", "meta")}, reference)
            body["meta"] = {k: v for k, v in resource.get("meta", {}).items() if k in ("tag", "security", "profile")}
            if not body["meta"]:
                del body["meta"]
            entries.append({"fullUrl": f"urn:uuid:{resource['id']}", "resource": body,
                            "request": {"method": "PUT", "url": conditional_url(resource)}})
        return {"resourceType": "Bundle", "type": self.kind, "entry": entries}

    def _record(self, pending: list[tuple[Resource, str]], response: Any) -> None:
        """Check the reply entry by entry: each sent resource needs its own entry with a 2xx status."""
        entries = response.get("entry") if isinstance(response, dict) else None
        entries = entries if isinstance(entries, list) else []
        rows = []
        for position, (resource, digest) in enumerate(pending):
            key = _key(resource)
            entry = entries[position] if position < len(entries) else None
            answer = entry.get("response") if isinstance(entry, dict) else None
            if not isinstance(answer, dict):
                self.fail(key, f"{_label(resource)}: the server's {self.kind} reply has no entry for it "
                               f"({len(entries)} entries for {len(pending)} sent): push again")
                continue
            status = str(answer.get("status", ""))
            if not status.startswith("2"):
                outcome = f" {answer['outcome']}" if answer.get("outcome") else ""
                self.fail(key, f"{_label(resource)}: {status or 'no response.status'}{outcome}")
                continue
            server_id = _server_id(answer.get("location", ""), entry.get("resource")) or \
                (resource["id"] if self.method == "id" else "")
            if not server_id:
                self.fail(key, f"{_label(resource)}: {status} but the reply gives neither its location nor the resource")
                continue
            rows.append((resource["resourceType"], resource["id"], server_id, digest))
            self.failures.pop(key, None)
            self.outcome[key] = "created" if status.startswith("201") else "updated"
            self.server_ids[key] = server_id
        self.journal.record_push(self.target, rows)
        self._tick(len(pending))

    def _tick(self, n: int) -> None:
        if self.progress:
            self.progress(n)


def _key(resource: Resource) -> Key:
    return resource["resourceType"], resource["id"]


def _label(resource: Resource) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def _server_id(location: str, resource: dict | None) -> str:
    if resource and resource.get("id"):
        return resource["id"]
    parts = location.split("/_history")[0].rstrip("/").split("/")
    return parts[-1]


def push(client: FhirClient, resources: Iterable[Resource], journal: Journal, *, bundle_size: int = 50,
         method: str = "auto", mode: str = "push", profile: ServerProfile | None = None,
         progress: Advance = None) -> PushResult:
    """Push resources (referenced types first) to the client's server; see the module docstring.

    ``mode``: ``push`` sends what the journal does not record as sent unchanged; ``full``
    sends everything; ``dry-run`` sends nothing and says what a push would send, checking
    the server for what the journal records; ``verify`` sends nothing and checks that the
    server holds every resource. ``resources`` is iterated a second time when something
    must be sent again (a generator is read into a list first). ``progress`` is called with
    the number of resources dealt with (sent, failed, unchanged or checked).
    """
    if mode not in PUSH_MODES:
        raise ValueError(f"mode must be one of {PUSH_MODES}")
    started = time.monotonic()
    requests_before, retries_before = client.stats.requests, client.stats.retries
    profile = profile or server_profile(client)
    method = profile.push_method(method)
    if iter(resources) is resources:
        resources = list(resources)
    pusher = _Pusher(client, journal, bundle_size, progress, method, profile.bundle_type)
    target = pusher.target
    unchanged: dict[Key, str] = {}  # resources the journal records as on the server, with their server ids
    unknown: set[Key] = set()  # verify: never pushed by conditional, so their server ids are unknown
    total = 0

    def planned() -> Iterator[Resource]:
        nonlocal total
        for resource in resources:
            total += 1
            key = _key(resource)
            known = journal.pushed(target, *key)
            if mode == "verify":
                server_id = known[0] if known else resource["id"] if method == "id" else None
                if server_id:
                    unchanged[key] = server_id
                else:
                    unknown.add(key)
            elif mode != "full" and known and known[1] == content_hash(resource):
                unchanged[key] = known[0]
            elif mode == "dry-run":
                pusher.outcome[key] = "updated" if known else "created"
            else:
                yield resource
                continue
            if progress:
                progress(1)

    pusher.send_all(planned())
    expected = {**unchanged, **({} if mode == "dry-run" else {k: pusher.server_ids[k] for k in pusher.outcome})}
    check = server_check(client, expected)
    missing, notes = check.lacking, [*profile.notes, *check.notes]
    restored = 0
    if mode == "verify":
        for key in sorted(missing | unknown):
            unchanged.pop(key, None)
            pusher.fail(key, f"{key[0]}/{key[1]}: not on the server" if key in check.absent else
                        f"{key[0]}/{key[1]}: not confirmed on the server ({check.unconfirmed[key]})" if key in missing else
                        f"{key[0]}/{key[1]}: not recorded as pushed to this server (conditional ids are the server's): push it")
    elif mode == "dry-run":
        for key in missing:
            unchanged.pop(key)
            pusher.outcome[key] = "created"
        restored = len(missing)
    elif missing:
        journal.forget_push(target, sorted(missing))
        resent = _send_again(pusher, resources, missing, unchanged)
        again = server_check(client, {k: pusher.server_ids[k] for k in resent if k in pusher.outcome})
        still, notes = again.lacking, [*notes, *again.notes]
        journal.forget_push(target, sorted(still))
        for key in still:
            pusher.fail(key, f"{key[0]}/{key[1]}: the server accepted it but does not hold it, even when sent again"
                        if key in again.absent else
                        f"{key[0]}/{key[1]}: not confirmed on the server, even when sent again ({again.unconfirmed[key]})")
        restored = len(missing - still - set(pusher.failures))
    return PushResult(target=target, method=method, mode=mode, total=total,
                      created=sum(v == "created" for v in pusher.outcome.values()),
                      updated=sum(v == "updated" for v in pusher.outcome.values()), unchanged=len(unchanged),
                      failed=list(pusher.failures.values()), restored=restored, checked=len(expected),
                      bundles=pusher.bundles, requests=client.stats.requests - requests_before,
                      retries=client.stats.retries - retries_before, seconds=time.monotonic() - started,
                      bundle_size=pusher.bundle_size, notes=notes)


def _send_again(pusher: _Pusher, resources: Iterable[Resource], missing: set[Key], unchanged: dict[Key, str]) -> set[Key]:
    """Send the missing resources again, in push order; returns the keys sent.

    With ``conditional`` the server gives new ids to what it re-creates, so resources that
    refer to a resent one are sent again too (their references then carry the new ids).
    """
    again = set(missing)

    def selected() -> Iterator[Resource]:
        for resource in resources:
            key = _key(resource)
            if key not in again and not (pusher.method == "conditional" and any(r in again for r in _references(resource))):
                continue
            again.add(key)
            unchanged.pop(key, None)
            pusher.outcome.pop(key, None)
            pusher.failures.pop(key, None)
            yield resource

    pusher.send_all(selected())
    return again


def _references(node: Any) -> Iterator[Key]:
    """(type, id) of every relative ``Type/id`` reference in a resource."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name == "reference" and isinstance(value, str) and value.count("/") == 1:
                yield tuple(value.split("/"))  # type: ignore[misc]
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


@dataclass(frozen=True, kw_only=True)
class ServerCheck:
    """What a server check found: the keys it proved absent, those it could prove neither held nor
    absent (with why), and a note for each type whose listing fell short of its Bundle.total."""

    absent: set[Key]
    unconfirmed: dict[Key, str]
    notes: list[str]

    @property
    def lacking(self) -> set[Key]:
        """What must be sent again: absent or not confirmed."""
        return self.absent | set(self.unconfirmed)


def server_check(client: FhirClient, expected: dict[Key, str]) -> ServerCheck:
    """Which of the keys, by their server ids (the values), the server does not hold, checked type by type.

    Per type: ``_summary=count``, then whichever needs fewer requests: every id of the type
    (``_elements=id``, pages of ID_PAGE) or the expected ids asked for by ``_id``, ID_CHUNK
    at a time. A server holding only the pushed data is checked in about two requests per
    type. A listing is proof of absence only when complete: where it falls short of its
    Bundle.total, what it left out is asked for by ``_id`` and read (``FhirClient.presence``).
    """
    by_type: dict[str, dict[str, Key]] = {}
    for key, server_id in expected.items():
        by_type.setdefault(key[0], {})[server_id] = key
    absent: set[Key] = set()
    unconfirmed: dict[Key, str] = {}
    notes = []
    for resource_type, wanted in by_type.items():
        held, unknown, note = _held(client, resource_type, set(wanted))
        absent.update(key for server_id, key in wanted.items() if server_id not in held and server_id not in unknown)
        unconfirmed.update((wanted[server_id], why) for server_id, why in unknown.items())
        notes += [note] if note else []
    return ServerCheck(absent=absent, unconfirmed=unconfirmed, notes=notes)


def _held(client: FhirClient, resource_type: str, wanted: set[str]) -> tuple[set[str], dict[str, str], str]:
    """The wanted ids the server holds, those neither proven held nor absent (id → why), and a note if a listing fell short."""
    total = client.count(resource_type)
    by_id_requests = -(-len(wanted) // ID_CHUNK)
    if total is not None and max(1, -(-total // ID_PAGE)) <= by_id_requests:
        listing = client.id_listing(resource_type, page_size=ID_PAGE)
        listed = listing.ids(resource_type) & wanted
        if listing.complete:
            return listed, {}, ""
        presence = client.presence(resource_type, wanted - listed, ID_CHUNK)
        return (listed | presence.held, presence.unknown,
                f"server check, {resource_type}: asked for every id, {listing.shortfall}, so the "
                f"{len(wanted - listed)} it left out were checked {presence.how}")
    presence = client.presence(resource_type, wanted, ID_CHUNK)
    fell_short = presence.searches > by_id_requests or presence.reads
    return set(presence.held), presence.unknown, (f"server check, {resource_type}: _id searches fell short of their "
                                                  f"Bundle.total, so the {len(wanted)} ids were checked {presence.how}"
                                                  if fell_short else "")


# --- pull ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PullConflict:
    """A local resource whose content the server does not have, met by a pull, and which version was kept."""

    resource_type: str
    id: str
    differs: str  # what differs, in a few words
    server_last_updated: str  # meta.lastUpdated of the server's version ("" where it deleted the resource)
    kept: str  # "local" or "server"


@dataclass(frozen=True, kw_only=True)
class PullResult:
    """What a pull stored, removed, kept and missed.

    Every resource fetched is counted once: stored (``counts``, by type), ``invalid`` (by
    reason; kept out of the store, first ones in ``invalid_examples``), or a conflict whose
    local version was kept (``conflicts`` with ``kept`` "local"). ``removed``: resources the
    server held for the study at the last pull and has deleted since, proven (see
    :func:`pull`), removed from the store. ``unconfirmed``: such resources the server no
    longer lists but that could not be proven deleted ("Type/id: why"): kept. ``missed``:
    searches whose answer fell short of their Bundle.total, so the pull did not get
    everything (not ``ok``; the mark does not move).
    """

    source: str
    counts: dict[str, int]
    invalid: dict[str, int]
    invalid_examples: list[str]
    removed: dict[str, int]
    since: str | None
    high_water: str | None
    requests: int
    seconds: float
    notes: list[str]
    unconfirmed: list[str] = field(default_factory=list)
    conflicts: list[PullConflict] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    prefer: str = "local"
    conflicts_file: str | None = None  # where the job that ran the pull listed its conflicts (None: it met none)
    recovered: tuple[str, ...] = ()  # what killed jobs left in the store, completed or removed first

    @property
    def ok(self) -> bool:
        return not self.invalid and not self.missed

    @property
    def unresolved(self) -> int:
        return kept_local(self.conflicts)


def kept_local(conflicts: Iterable[PullConflict]) -> int:
    """How many conflicts kept the local version (the server's differs)."""
    return sum(conflict.kept == "local" for conflict in conflicts)


SUBJECT_CHUNK = 40  # subjects per search at most (keeps URLs short)
MAX_EXAMPLES = 20
PULLED_TYPES = ("ResearchStudy", "Group", "ResearchSubject", "Patient", "Encounter", "MedicationAdministration", "Observation",
                "AdverseEvent")


class PullIntake:
    """Writes a pull's fetched resources to the store, setting aside those whose local version the server does not
    have (conflicts, settled at the end of the pull): the paged pull's and the bulk pull's rule."""

    def __init__(self, store: Store, pulled: dict[str, dict[str, str | None]], prefer: str):
        self.store, self.pulled, self.prefer = store, pulled, prefer
        self.counts: dict[str, int] = {}
        self.fetched: dict[str, dict[str, str]] = {}  # per type: id → value_hash of the server's version fetched
        self.conflicts: list[PullConflict] = []
        self._edited: dict[str, dict[str, str]] = {}
        self._theirs: dict[str, dict[str, Resource]] = {}  # per type: the server's versions in conflict, until settled

    def store_all(self, resources: Iterable[Resource]) -> None:
        """Write those of ``resources`` that conflict with no local change (streamed: one store write)."""
        self._add(self.store.write(self._admitted(resources)))

    def _admitted(self, resources: Iterable[Resource]) -> Iterator[Resource]:
        return (resource for resource in resources if not self._in_conflict(resource))

    def _add(self, written: dict[str, int]) -> None:
        for resource_type, n in written.items():
            self.counts[resource_type] = self.counts.get(resource_type, 0) + n

    def _in_conflict(self, resource: Resource) -> bool:
        """Record the server's version; True (and set it aside) if the store's differs and the server does not have it."""
        resource_type, id_ = resource["resourceType"], resource["id"]
        digest = value_hash(resource)
        self.fetched.setdefault(resource_type, {})[id_] = digest
        local = self.edited(resource_type).get(id_)
        if local is None or local == digest:
            return False
        self._theirs.setdefault(resource_type, {})[id_] = resource
        return True

    def edited(self, resource_type: str) -> dict[str, str]:
        """The store's resources of one type that a pull from this server did not leave as they are (id →
        value_hash): never pulled from it, or changed here since. Read once, before this pull writes the type."""
        if resource_type not in self._edited:
            pulled = self.pulled.get(resource_type, {})
            edited = {}
            for resource in self.store.read(resource_type):
                id_, digest = resource.get("id"), value_hash(resource)
                if isinstance(id_, str) and not (id_ in pulled and pulled[id_] in (None, digest)):
                    edited[id_] = digest
            self._edited[resource_type] = edited
        return self._edited[resource_type]

    def hashes(self, held: dict[str, set[str]]) -> dict[str, dict[str, str | None]]:
        """What the journal records of a pull: per type, the ids the server holds, each with the value_hash of the
        version this pull fetched (else the one an earlier pull recorded)."""
        return {t: {i: self.fetched.get(t, {}).get(i, self.pulled.get(t, {}).get(i)) for i in ids} for t, ids in held.items()}

    def settle(self, deleted: dict[str, set[str]]) -> dict[str, set[str]]:
        """Settle the conflicts (the versions set aside, and ``deleted`` ids whose local version was changed since the
        last pull): the server's version is written where it is preferred. Returns per type the ids to remove."""
        remove: dict[str, set[str]] = {}
        for resource_type in sorted(set(self._theirs) | set(deleted)):
            theirs, gone = self._theirs.get(resource_type, {}), deleted.get(resource_type, set())
            disputed = set(theirs) | ((gone & set(self.edited(resource_type))) if gone else set())
            mine = {r["id"]: r for r in self.store.read(resource_type) if r.get("id") in disputed} if disputed else {}
            for id_ in sorted(disputed):
                server = theirs.get(id_)
                self.conflicts.append(PullConflict(
                    resource_type=resource_type, id=id_, differs=_differences(mine.get(id_, {}), server),
                    server_last_updated=(server or {}).get("meta", {}).get("lastUpdated", ""), kept=self.prefer))
            remove[resource_type] = gone if self.prefer == "server" else gone - disputed
            if self.prefer == "server" and theirs:
                self._add(self.store.write(theirs.values()))
        return remove


class _Intake(PullIntake):
    """The paged pull's intake: also validates fetched resources before they are stored, and counts what it keeps
    out, by reason."""

    def __init__(self, version: FhirVersion, store: Store, pulled: dict[str, dict[str, str | None]], prefer: str):
        super().__init__(store, pulled, prefer)
        self.validator = ShapeValidator(version)
        self.invalid: dict[str, int] = {}
        self.examples: list[str] = []

    def _admitted(self, resources: Iterable[Resource]) -> Iterator[Resource]:
        for resource in resources:
            if resource.get("resourceType") == "OperationOutcome":  # a search's warnings, not data
                continue
            problem = self._problem(resource)
            if problem is None:
                if not self._in_conflict(resource):
                    yield resource
                continue
            label, _, reason = problem.partition(": ")
            reason = f"{resource.get('resourceType')}: {reason}" if reason else problem
            self.invalid[reason] = self.invalid.get(reason, 0) + 1
            if len(self.examples) < MAX_EXAMPLES:
                self.examples.append(problem)

    def _problem(self, resource: Resource) -> str | None:
        resource_type = resource.get("resourceType")
        if resource_type not in PULLED_TYPES:
            return f"{resource_type}/{resource.get('id')}: not a resource type pull asked for"
        if not isinstance(resource.get("id"), str) or not resource["id"]:
            return f"{resource_type}/?: no id"
        problems = self.validator.problems(resource)
        return str(problems[0]) if problems else None


def _differences(local: Resource, server: Resource | None) -> str:
    """What differs between the store's version and the server's, in a few words (the elements, lists by length)."""
    if server is None:
        return "deleted on the server; changed here since the last pull"
    parts = []
    for key in sorted((set(local) | set(server)) - {"id", "meta"}):
        mine, theirs = local.get(key), server.get(key)
        if mine == theirs:
            continue
        if key not in server or key not in local:
            parts.append(f"{key} only {'here' if key in local else 'on the server'}")
        elif isinstance(mine, list) and isinstance(theirs, list) and len(mine) != len(theirs):
            parts.append(f"{key} ({len(mine)} here, {len(theirs)} on the server)")
        else:
            parts.append(key)
    return ", ".join(parts[:4]) + (f" and {len(parts) - 4} more" if len(parts) > 4 else "")


@dataclass
class _Held:
    """Per resource type, the ids the server holds for the study as far as its answers show, and how an answer fell
    short of its Bundle.total (then what it left out is not proven absent)."""

    ids: dict[str, set[str]] = field(default_factory=dict)
    short: dict[str, str] = field(default_factory=dict)

    def add(self, resource_type: str, ids: Iterable[str], shortfall: str = "") -> None:
        self.ids.setdefault(resource_type, set()).update(ids)
        if shortfall:
            self.short.setdefault(resource_type, shortfall)


def pull_mark(study: Study, store: Store) -> str:
    """The journal key of a pull's mark and ids: the study *and* the store it is pulled into.

    Keyed by store too, so pulling the same server into a second store with the same
    ``--state`` starts from nothing, not from the first store's mark.
    """
    return f"{study.study.identifier.value} into {store.path.resolve()}"


def pull(client: FhirClient, study: Study, store: Store, journal: Journal, *, full: bool = False,
         page_size: int = 1000, prefer: str = "local", profile: ServerProfile | None = None,
         progress: Progress = NO_PROGRESS) -> PullResult:
    """Fetch the study's resources from the server into ``store``, mirroring deletions.

    Incremental: only resources updated after the last successful pull (``_lastUpdated=gt``),
    unless ``full``. The high-water mark is the newest ``meta.lastUpdated`` seen, in the
    server's own clock, so the two machines' clocks never have to agree. A search whose
    answer falls short of its Bundle.total is asked again one subject at a time; what still
    falls short is ``missed``, and then the mark does not move.

    Deletions: the journal keeps the ids the server held for the study at each pull. A full
    pull knows the ids the server holds now from what it fetched; an incremental one compares,
    per type, the server's ``_summary=count`` of the study's searches with the ids it knows and
    lists the ids (``_elements=id``) only where they differ. Ids held before and not now are
    removed from the store only with proof: a complete listing without them, or, where a
    listing fell short of its Bundle.total, an ``_id`` search that is complete or a read that
    answers 404/410 (``FhirClient.presence``); the others are kept and ``unconfirmed``.

    Conflicts: a fetched resource whose local version differs and was not left by an earlier
    pull from this server as it is (never pulled from it, or changed here since), and a
    deleted one changed here since, is a conflict: ``prefer`` "local" keeps the store's
    version, "server" takes the server's. Resources that fail validation are kept out of the
    store and counted by reason.
    """
    if prefer not in PREFER:
        raise ValueError(f"prefer must be one of {PREFER}")
    started, before = time.monotonic(), client.stats.requests
    profile = profile or server_profile(client)
    source, key = client.base_url, study.study.identifier.value
    mark = pull_mark(study, store)
    since = None if full else journal.high_water(source, mark)
    changes = {"_count": str(page_size), **({"_lastUpdated": f"gt{since}"} if since else {})}
    pulled = journal.pulled(source, mark)
    intake = _Intake(profile.version, store, pulled, prefer)
    token = f"{study.study.identifier.system}|{study.study.identifier.value}"
    progress.start(f"pulling {key} and its subjects from {client.base_url}")
    studies = client.listing("ResearchStudy", {"identifier": token, "_count": str(page_size)})
    missed: list[str] = []
    notes: list[str] = []

    def result(removed: dict[str, int], high_water: str | None, unconfirmed: tuple[str, ...] = ()) -> PullResult:
        return PullResult(source=source, counts=intake.counts, invalid=intake.invalid, invalid_examples=intake.examples,
                          removed=removed, since=since, high_water=high_water, requests=client.stats.requests - before,
                          seconds=time.monotonic() - started, notes=[*profile.notes, *notes], unconfirmed=list(unconfirmed),
                          conflicts=intake.conflicts, missed=missed, prefer=prefer)

    if not studies.ids("ResearchStudy"):
        notes.append(f"study {token} is not on the server: nothing pulled, nothing removed")
        return result({}, since)
    held = _Held()

    def fetched(what: str, resources: list[Resource], shortfall: str) -> list[Resource]:
        missed.extend([f"{what}: {shortfall}"] if shortfall else [])
        return resources

    def holds(resource_type: str, queries: list[dict[str, str]], got: set[str], shortfall: str) -> None:
        if since:
            held.add(resource_type, *_held_by(client, resource_type, queries, set(pulled.get(resource_type, {})) | got,
                                              page_size))
        else:
            held.add(resource_type, got, shortfall)

    held.add("ResearchStudy", studies.ids("ResearchStudy"), studies.shortfall)
    scope = StudyScope(frozenset(held.ids["ResearchStudy"]))
    group_query = {"identifier": f"{study.system('group')}|{key}"}
    subject_query = scope.subject_query()
    groups = client.listing("Group", {**group_query, **changes})
    subjects = client.listing("ResearchSubject", {**subject_query, "_include": "ResearchSubject:individual", **changes})
    patients, patients_short = _missing_patients(client, subjects.resources, page_size)
    fetched_now = [s for s in fetched(f"ResearchStudy {token}", studies.resources, studies.shortfall)
                   if not since or s.get("meta", {}).get("lastUpdated", "") > since] + \
        fetched(f"Group {group_query['identifier']}", groups.resources, groups.shortfall) + \
        fetched("the study's ResearchSubjects", subjects.resources, subjects.shortfall) + \
        fetched("the subjects' Patients by _id", patients, patients_short)
    intake.store_all(_dedupe(fetched_now))
    newest = [max((r.get("meta", {}).get("lastUpdated", "") for r in fetched_now), default="")]
    holds("Group", [group_query], groups.ids("Group"), groups.shortfall)
    holds("ResearchSubject", [subject_query], subjects.ids("ResearchSubject"), subjects.shortfall)
    patient_ids = study_patients(store, held.ids["ResearchSubject"])
    holds("Patient", _by_id(patient_ids), {r["id"] for r in fetched_now if r.get("resourceType") == "Patient"},
          subjects.shortfall or patients_short)
    for resource_type in SUBJECT_DATA:
        step = subjects_per_search(study, resource_type, page_size)
        progress.start(f"pulling {resource_type}", len(patient_ids), "subjects")
        got: set[str] = set()
        short: list[str] = []
        intake.store_all(_searched(client, resource_type, patient_ids, step, changes, got, short, newest, progress))
        missed += short
        holds(resource_type, _by_subject(patient_ids, SUBJECT_CHUNK), got, short[0] if short else "")
    deleted, unconfirmed = _proven_deleted(client, pulled, held, notes)
    removed = {}
    for resource_type, ids in intake.settle(deleted).items():
        if n := store.remove(resource_type, ids):
            removed[resource_type] = n
    journal.record_pulled(source, mark, intake.hashes(held.ids))
    high_water = since if missed else (newest[0] or since)
    if high_water:
        journal.record_pull(source, mark, high_water)
    return result(removed, high_water, tuple(unconfirmed))


def _proven_deleted(client: FhirClient, pulled: dict[str, dict[str, str | None]], held: _Held,
                    notes: list[str]) -> tuple[dict[str, set[str]], list[str]]:
    """Per type, the ids pulled before that the server has deleted, proven; and those not proven ("Type/id: why").

    Where the answers the server gave for a type fell short of their Bundle.total, the ids
    they left out are asked for by ``_id`` and read (``FhirClient.presence``); those it still
    holds, and those not proven either way, stay in ``held`` (so the next pull checks again).
    """
    deleted: dict[str, set[str]] = {}
    unconfirmed: list[str] = []
    for resource_type, before in sorted(pulled.items()):
        candidates = set(before) - held.ids.get(resource_type, set())
        why = held.short.get(resource_type)
        if not candidates or not why:
            deleted[resource_type] = candidates
            continue
        presence = client.presence(resource_type, candidates, ID_CHUNK)
        held.add(resource_type, presence.held | set(presence.unknown))
        deleted[resource_type] = set(presence.absent)
        unconfirmed += [f"{resource_type}/{i}: {reason}" for i, reason in sorted(presence.unknown.items())]
        notes.append(f"{resource_type}: {why}, so the {len(candidates)} pulled before and not listed now were checked "
                     f"{presence.how}: {len(presence.absent)} deleted, {len(presence.held)} still there, "
                     f"{len(presence.unknown)} not confirmed")
    return deleted, unconfirmed


# --- what a pull of a study keeps: asked for by search (paged pull), or filtered out of an export (bulk pull) ---

SUBJECT_DATA = ("Encounter", "MedicationAdministration", "Observation", "AdverseEvent")  # each names its Patient in `subject`


@dataclass(frozen=True)
class StudyScope:
    """The ResearchSubjects of the studies ``study_ids`` (the ResearchStudy ids on the server)."""

    study_ids: frozenset[str]

    def subject_query(self) -> dict[str, str]:
        """The search for them."""
        return {"study": ",".join(f"ResearchStudy/{i}" for i in sorted(self.study_ids))}

    def has_subject(self, subject: Resource) -> bool:
        """Whether a ResearchSubject is one of them (what ``subject_query`` finds)."""
        return ref_id((subject.get("study") or {}).get("reference", "")) in self.study_ids


def study_patients(store: Store, subject_ids: set[str]) -> list[str]:
    """Ids of the Patients the store's ResearchSubjects among ``subject_ids`` name, sorted: whose data a pull keeps."""
    return sorted({ref_id(ref) for ref in _patients_of(store, subject_ids)})


def _by_subject(patient_ids: list[str], step: int) -> list[dict[str, str]]:
    """Searches for the SUBJECT_DATA of these Patients, ``step`` Patients each."""
    return [_subject_query(patient_ids[start:start + step]) for start in range(0, len(patient_ids), step)]


def _subject_query(patient_ids: list[str]) -> dict[str, str]:
    return {"subject": ",".join(f"Patient/{pid}" for pid in patient_ids)}


def _by_id(ids: list[str]) -> list[dict[str, str]]:
    """Searches for these ids, SUBJECT_CHUNK each."""
    return [{"_id": ",".join(ids[start:start + SUBJECT_CHUNK])} for start in range(0, len(ids), SUBJECT_CHUNK)]


def of_patients(resources: Iterable[Resource], patient_ids: set[str]) -> Iterator[Resource]:
    """The SUBJECT_DATA among ``resources`` of these Patients (what ``_by_subject``'s searches find)."""
    for resource in resources:
        if ref_id((resource.get("subject") or {}).get("reference", "")) in patient_ids:
            yield resource


def _held_by(client: FhirClient, resource_type: str, queries: list[dict[str, str]], known: set[str],
             page_size: int) -> tuple[set[str], str]:
    """The ids the server holds for these searches (``known`` if their counts add up to it, else listed), and how a
    listing fell short of its Bundle.total ("" if none did)."""
    counts = [client.count(resource_type, query) for query in queries]
    if None not in counts and sum(counts) == len(known):  # type: ignore[arg-type]
        return known, ""
    listings = [client.id_listing(resource_type, query, page_size) for query in queries]
    return set().union(*(listing.ids(resource_type) for listing in listings)), \
        next((listing.shortfall for listing in listings if not listing.complete), "")


def subjects_per_search(study: Study, resource_type: str, page_size: int) -> int:
    """How many subjects one search asks for: as many as the design fits in one page, at most SUBJECT_CHUNK.

    Servers without search indexes re-filter every resource for every page, so a search
    that needs one page is much cheaper than one that needs many (measured on the loopback
    server, 100 subjects: 40 per search 8.6 s, 10 per search 3.9 s, with pages of 1,000).
    """
    per_subject = {"Observation": sum(len(outcome.visits) for outcome in study.outcomes),
                   "Encounter": len(study.visits),
                   "MedicationAdministration": max((len(i.days) for i in study.interventions.values()), default=1)}
    return max(1, min(SUBJECT_CHUNK, page_size // max(1, per_subject.get(resource_type, 1))))


def _missing_patients(client: FhirClient, found: list[Resource], page_size: int) -> tuple[list[Resource], str]:
    """Patients the ResearchSubjects point at that _include did not bring (not every server supports it), and how
    a search for them fell short of its Bundle.total ("" if none did)."""
    have = {r["id"] for r in found if r["resourceType"] == "Patient"}
    wanted = sorted({ref_id((r.get("individual") or r.get("subject") or {}).get("reference", ""))
                     for r in found if r["resourceType"] == "ResearchSubject"} - have - {""})
    listings = [client.listing("Patient", {**query, "_count": str(page_size)}) for query in _by_id(wanted)]
    return [r for listing in listings for r in listing.resources], \
        next((listing.shortfall for listing in listings if not listing.complete), "")


def _patients_of(store: Store, subject_ids: set[str]) -> Iterator[str]:
    """References to the Patients of the store's ResearchSubjects that are among ``subject_ids``."""
    for subject in store.read("ResearchSubject"):
        if subject["id"] not in subject_ids:
            continue
        ref = (subject.get("individual") or subject.get("subject") or {}).get("reference")
        if ref:
            yield ref


def _searched(client: FhirClient, resource_type: str, patient_ids: list[str], step: int, changes: dict[str, str],
              got: set[str], missed: list[str], newest: list[str], progress: Progress) -> Iterator[Resource]:
    """The SUBJECT_DATA of these Patients, ``step`` Patients a search, as they come, once each (the last fetched
    within a search, the first across searches); memory keeps their ids (``got``) and the newest
    ``meta.lastUpdated`` (``newest[0]``), not them. Searches that fall short are named in ``missed``."""
    others: set[tuple[Any, str]] = set()  # ids of other types a server may add (not OperationOutcomes)
    for start in range(0, len(patient_ids), step):
        for listing in _subject_listings(client, resource_type, patient_ids[start:start + step], changes, missed):
            for resource in listing.resources:
                id_, kind = resource.get("id"), resource.get("resourceType")
                if isinstance(id_, str) and kind != "OperationOutcome":
                    seen, key = (got, id_) if kind == resource_type else (others, (kind, id_))
                    if key in seen:
                        continue
                    seen.add(key)  # type: ignore[arg-type]
                newest[0] = max(newest[0], resource.get("meta", {}).get("lastUpdated", ""))
                yield resource
        progress.advance(min(step, len(patient_ids) - start))


def _subject_listings(client: FhirClient, resource_type: str, patient_ids: list[str], changes: dict[str, str],
                      missed: list[str]) -> Iterator[Listing]:
    """The search for these Patients' resources; if it falls short of its Bundle.total (a server that caps its pages),
    one search per Patient instead, and those that still fall short are named in ``missed``."""
    listing = client.listing(resource_type, {**_subject_query(patient_ids), **changes})
    if listing.complete or len(patient_ids) == 1:
        if not listing.complete:
            missed.append(f"{resource_type} of Patient/{patient_ids[0]}: {listing.shortfall}")
        yield listing
        return
    for patient_id in patient_ids:
        yield from _subject_listings(client, resource_type, [patient_id], changes, missed)


def _dedupe(resources: list[Resource]) -> list[Resource]:
    """One resource per (type, id), the last one fetched; resources without an id are all kept."""
    seen: dict[tuple[Any, Any], Resource] = {}
    for n, resource in enumerate(resources):
        id_ = resource.get("id")
        seen[(resource.get("resourceType"), id_ if isinstance(id_, str) else n)] = resource
    return list(seen.values())


# --- sync ---------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class SyncResult:
    """One sync run: what was pulled from the source and pushed to the target."""

    source: str
    target: str
    pulled: PullResult | None
    pushed: PushResult | None

    @property
    def ok(self) -> bool:
        return (self.pushed is None or self.pushed.ok) and (self.pulled is None or self.pulled.ok)
