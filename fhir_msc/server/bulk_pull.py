"""``pull --bulk``: the study's resources by Bulk Data ``$export``, then the same study filter as the paged pull.

The ResearchStudy and its enrollment Group are found by identifier (two searches, as the
paged pull does); the subjects' data come from one export: ``Group/[id]/$export`` when the
server exports Groups and the study has its Group there, else ``Patient/$export``, else a
system ``$export`` (``_type`` = Patient, ResearchSubject, Encounter, MedicationAdministration,
Observation, AdverseEvent; ``_since`` = the last pull's mark). Of what comes back, the store keeps what the
paged pull would: ResearchSubjects of the study, the Patients they name (all the store's
subjects, as in the paged pull) and the visits, infusions, Observations and AdverseEvents of those Patients.
Files stream into the store; memory holds ids, not resources.

A full export without a Patient file, when the study's Group lists members, is an error
(ExportFailed) and nothing is stored; types asked for and absent, resources listed twice (the
newest kept) are named in ``notes``.

Incremental: the resources the manifest's ``deleted`` files name (deleted on the server since
``_since``) are removed from the store and counted in ``removed``. The mark recorded after a complete export is its manifest's ``transactionTime``
(the server's clock), in the same journal row as the paged pull's, so the two take turns. An
export whose error file reports problems is stored but does not move the mark, and its
issues are returned. Servers whose CapabilityStatement declares no export get the paged pull.

Local data the server does not have is kept as the paged pull keeps it (``sync.PullIntake``: a
conflict, unless ``prefer`` is "server"), for what is stored and for what ``deleted`` names; the
ids pulled, with the hash of each version, are journaled as the paged pull journals them.
"""

from __future__ import annotations

import dataclasses

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadUsage
from ..progress import NO_PROGRESS, Progress
from ..store.ndjson import Resource, Store
from ..study.definition import Study
from . import bulk
from .client import FhirClient
from .journal import Journal
from .sync import (
    SUBJECT_DATA,
    PullConflict,
    PullIntake,
    PullResult,
    StudyScope,
    kept_local,
    of_patients,
    pull_mark,
    study_patients,
)
from .sync import pull as paged_pull

EXPORTED = ("Patient", "ResearchSubject", *SUBJECT_DATA)


@dataclass(frozen=True, kw_only=True)
class BulkPullResult:
    """A pull by bulk export (where the server has no export, ``pull`` returns the paged pull's PullResult)."""

    source: str
    method: str  # "bulk" (a paged fallback returns a PullResult, which has no method), so --json says how
    counts: dict[str, int]
    since: str | None
    high_water: str | None
    requests: int
    seconds: float
    level: str | None = None  # system, Patient or Group/<id>
    files: int = 0  # export files downloaded by this run
    resumed_files: int = 0  # export files already downloaded and verified by a killed run
    resumed: bool = False  # the export job was picked up from the journal
    errors: list[str] = field(default_factory=list)  # issues of the export's error files
    removed: dict[str, int] = field(default_factory=dict)  # stored resources the manifest's `deleted` says are gone
    recovered: tuple[str, ...] = ()  # what killed jobs left in the store, completed or removed first
    notes: list[str] = field(default_factory=list)  # what the export lacked or held twice
    conflicts: list[PullConflict] = field(default_factory=list)  # local data the server does not have (the paged pull's rule)
    prefer: str = "local"
    conflicts_file: str | None = None  # where the job that ran the pull listed its conflicts (None: it met none)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def unresolved(self) -> int:
        return kept_local(self.conflicts)


def pull(client: FhirClient, study: Study, store: Store, journal: Journal, state_dir: Path, *, full: bool = False,
         since: str | None = None, prefer: str = "local", policy: bulk.BulkPolicy = bulk.BulkPolicy(),
         progress: Progress = NO_PROGRESS) -> BulkPullResult | PullResult:
    """Pull the study by bulk export when the server offers it, else by paged search; see the module docstring."""
    levels = bulk.export_levels(client)
    if not levels:
        if since:
            raise BadUsage(f"{client.base_url} declares no $export in its CapabilityStatement, and the paged pull has no "
                           "--since: drop --since (the paged pull is incremental from the journal) or use --full")
        paged = paged_pull(client, study, store, journal, full=full, prefer=prefer, progress=progress)
        return dataclasses.replace(paged, notes=[f"{client.base_url} declares no $export: pulled by paged search",
                                                 *paged.notes])
    started, before = time.monotonic(), client.stats.requests
    key = study.study.identifier.value
    mark = pull_mark(study, store)
    since = since or (None if full else journal.high_water(client.base_url, mark))
    changed = (lambda r: r.get("meta", {}).get("lastUpdated", "") > since) if since else (lambda r: True)
    progress.start(f"finding {key} on {client.base_url}")
    token = f"{study.study.identifier.system}|{key}"
    studies = list(client.search("ResearchStudy", {"identifier": token}))
    if not studies:
        return BulkPullResult(source=client.base_url, method="bulk", counts={}, since=since, high_water=since,
                              requests=client.stats.requests - before, seconds=time.monotonic() - started, prefer=prefer,
                              notes=[f"study {token} is not on the server: no export was started, nothing pulled, "
                                     "nothing removed"])
    groups = list(client.search("Group", {"identifier": f"{study.system('group')}|{key}"}))
    level = _level(levels, groups)
    done = bulk.export(client, level, state_dir, types=EXPORTED, since=since,
                       policy=policy, progress=progress)
    if members := sum(len(g.get("member") or []) for g in groups):
        bulk.require_patients(client, done, level, f"the study's Group lists {members} members: nothing was stored")
    pulled = journal.pulled(client.base_url, mark)
    intake = PullIntake(store, pulled, prefer)
    intake.store_all(r for r in studies + groups if changed(r))
    scope = StudyScope(frozenset(s["id"] for s in studies))  # the paged pull's, as a filter
    intake.store_all(filter(scope.has_subject, done.resources("ResearchSubject")))
    patients = set(study_patients(store, {r["id"] for r in store.read("ResearchSubject") if scope.has_subject(r)}))
    progress.start("storing the export", len(EXPORTED), "resource types")
    intake.store_all(r for r in done.resources("Patient") if r["id"] in patients)
    for resource_type in SUBJECT_DATA:
        intake.store_all(of_patients(done.resources(resource_type), patients))
        progress.advance(1)
    deleted = _deleted(done)
    removed = {}
    for resource_type, ids in intake.settle(deleted).items():
        if n := store.remove(resource_type, ids):
            removed[resource_type] = n
    held = {t: set(ids) for t, ids in (pulled.items() if since or done.errors else ())}  # a full export: all it holds
    for resource_type, ids in intake.fetched.items():
        held.setdefault(resource_type, set()).update(ids)
    journal.record_pulled(client.base_url, mark, intake.hashes({t: ids - deleted.get(t, set()) for t, ids in held.items()}))
    high_water = since if done.errors else done.manifest.transaction_time
    if high_water:
        journal.record_pull(client.base_url, mark, high_water)
    notes = [*done.notes(), *bulk.finish(client, done)]
    return BulkPullResult(source=client.base_url, method="bulk", counts={t: n for t, n in intake.counts.items() if n},
                          since=since, high_water=high_water, requests=client.stats.requests - before,
                          seconds=time.monotonic() - started, level=level, files=done.downloaded, resumed_files=done.reused,
                          resumed=done.resumed, errors=done.errors, removed=removed, notes=notes,
                          conflicts=intake.conflicts, prefer=prefer)


def _deleted(done: bulk.Export) -> dict[str, set[str]]:
    """Per type, the ids the export's ``deleted`` files say the server deleted (of the types a bulk pull keeps)."""
    gone: dict[str, set[str]] = {}
    for resource_type, resource_id in done.deleted():
        if resource_type in EXPORTED:
            gone.setdefault(resource_type, set()).add(resource_id)
    return gone


def _level(levels: set[str], groups: list[Resource]) -> str:
    """Group export of the study's Group when possible (only its members), else Patient, else system."""
    if "Group" in levels and len(groups) == 1 and groups[0].get("member"):
        return f"Group/{groups[0]['id']}"
    return "Patient" if "Patient" in levels else "system"
