"""FHIR Bulk Data Access (IG v2) ``$export`` through a FhirClient, resumable, and a bulk pull of a study.

- Kick-off at system (``$export``), ``Patient/$export`` or ``Group/[id]/$export`` level with
  ``Prefer: respond-async`` and ``_type``, ``_since``, ``_typeFilter``, ``_outputFormat``; the
  answer's Content-Location is the job's status URL.
- Polling: 202 answers are waited out for their Retry-After (capped; a growing backoff when
  absent), X-Progress is logged, and the whole wait is bounded; a 429 is retried by the client
  as any temporary answer, and so is (a few times in a row, with the same backoff) an error
  status whose OperationOutcome says ``transient`` (the IG's "try again later"); any other
  error status is the job's failure, with the server's OperationOutcome, and the job is
  DELETEd. The 200 answer is the manifest.
- Status and file URLs may be anywhere on the server's origin (scheme, host, port), not only
  under its base path. The server's credentials go to its own origin only: files on another
  origin are fetched without any (a session that never has credentials) when the manifest
  says ``requiresAccessToken: false`` (signed URLs), and refused when it says ``true``
  (the job is then DELETEd).
- Files are streamed to disk (owner-only), a few at a time (gzip accepted), and each is checked
  before use: every line one JSON resource of the manifest's type with an id, and as many as its
  ``count``. A broken download or a file that fails the check is fetched again, a few times.
- Error files (OperationOutcome NDJSON; their ``count``, if any, is not checked: servers give
  the count of the file that failed) are read and their issues reported.
- Deleted files (the manifest's ``deleted``, IG v2, with ``_since``: transaction Bundles of
  DELETE requests) are fetched and checked like the output; ``Export.deleted`` names what the
  server deleted since ``_since``.
- The manifest is checked against the request: a type asked for in ``_type`` that no output
  file holds is named (``Export.missing``; a full export only: after ``_since`` it means no
  change). A resource listed more than once across the files is read once, the copy with the
  latest ``meta.lastUpdated`` (ties: the one listed last), and counted (``Export.duplicates``).
- A ``_typeFilter`` the server did not apply is detected: resources outside it in the output, an
  OperationOutcome that names ``_typeFilter``, or an empty output. When fhir-msc can evaluate the
  filter itself (``code`` tokens), the type is then exported whole (a second export, where the
  first holds too little) and filtered here, and counted (``Export.unfiltered``, ``filtered_out``).
- A small journal (``job.json`` beside the files) records the status URL, the manifest and the
  files already verified, so a killed (or interrupted) export resumes instead of starting again;
  a job the server no longer knows is started afresh. ``finish`` DELETEs the job and removes the
  files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
import requests

from ..errors import InvalidResponse, ResourceNotFound, ServerError, TemporaryServerError
from ..progress import NO_PROGRESS, Progress
from ..store.ndjson import id_digest, repeated
from .auth import origin, redact
from .client import FhirClient, _retry_after

log = logging.getLogger(__name__)
NDJSON = "application/fhir+ndjson"
CHUNK = 1 << 16
IG_CAPABILITY = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
IG_OPERATION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
LEVEL_OF_OPERATION = {"export": "system", "patient-export": "Patient", "group-export": "Group"}  # the IG's OperationDefinitions
TRANSIENT_ISSUES = frozenset({"transient", "timeout", "throttled", "lock-error", "no-store"})  # "try again later"
EARLIEST = datetime.min.replace(tzinfo=timezone.utc)


class ExportFailed(ServerError):
    """The server could not complete the export, or its files could not be fetched intact."""


@dataclass(frozen=True, kw_only=True)
class BulkPolicy:
    """How long and how hard to wait for and fetch an export."""

    max_poll_wait: float = 60.0  # cap on one wait between status polls (Retry-After included)
    first_poll_wait: float = 1.0  # wait when a 202 has no Retry-After; doubles up to the cap
    max_total: float = 6 * 3600.0  # give up waiting for the manifest after this long
    parallel: int = 2  # files downloaded at once
    file_attempts: int = 3  # downloads of one file before giving up
    transient_attempts: int = 10  # status answers in a row saying `transient` before giving up (for this run)


@dataclass(frozen=True, kw_only=True)
class ExportFile:
    type: str
    url: str
    count: int | None = None


@dataclass(frozen=True, kw_only=True)
class Manifest:
    transaction_time: str
    request: str
    requires_access_token: bool
    output: tuple[ExportFile, ...]
    error: tuple[ExportFile, ...]
    deleted: tuple[ExportFile, ...] = ()  # Bundles of DELETE requests: resources deleted since _since


@dataclass(frozen=True)
class TypeFilter:
    """One ``_typeFilter`` query, ``Type?params``; ``str()`` is its wire form (the query URL-encoded, so its
    commas are not separators)."""

    resource_type: str
    params: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        return f"{self.resource_type}?{urlencode(self.params)}"

    @classmethod
    def parse(cls, value: TypeFilter | str) -> TypeFilter:
        if isinstance(value, TypeFilter):
            return value
        resource_type, _, query = value.partition("?")
        return cls(resource_type, tuple(parse_qsl(query)))

    @property
    def judged_here(self) -> bool:
        """Whether fhir-msc can tell itself which resources match: ``code`` tokens on ``code.coding`` only
        (``system|code``, ``|code``, ``code``, ``system|``; a comma means "or", several parameters "and")."""
        return all(name == "code" for name, _ in self.params)

    def matches(self, resource: dict) -> bool | None:
        """Whether ``resource`` matches, judged here; None when fhir-msc cannot judge this query (``judged_here``)."""
        if not self.judged_here:
            return None
        codings = (resource.get("code") or {}).get("coding") or []
        return all(any(_token_matches(token, codings) for token in value.split(",")) for _, value in self.params)


def _token_matches(token: str, codings: list[dict]) -> bool:
    if "|" not in token:
        return any(c.get("code") == token for c in codings)
    system, code = token.split("|", 1)
    return any((c.get("system") == system if system else not c.get("system")) and (not code or c.get("code") == code)
               for c in codings)


@dataclass(frozen=True, kw_only=True)
class Export:
    """A completed export whose output files are on disk and verified."""

    status_url: str
    manifest: Manifest
    directory: Path
    files: dict[str, str]  # url → file name in ``directory``
    errors: list[str]  # the error files' issues, one line each
    resumed: bool  # picked up from the journal instead of kicked off
    downloaded: int  # files fetched by this run
    reused: int  # files already verified by an earlier run
    missing: tuple[str, ...] = ()  # types asked for in _type that no output file holds (full exports only)
    duplicates: dict[str, int] = field(default_factory=dict)  # type → copies superseded by a newer copy of the same id
    superseded: dict[str, frozenset[int]] = field(default_factory=dict)  # url → its lines (from 1) not read, superseded
    filters: tuple[TypeFilter, ...] = ()  # the _typeFilter of the request
    unfiltered: dict[str, str] = field(default_factory=dict)  # type → why its _typeFilter is applied here, not by the server
    filtered_out: Counter[str] = field(default_factory=Counter)  # type → resources left out here by its _typeFilter
    warnings: tuple[str, ...] = ()  # e.g. an earlier job of this export that the server did not delete

    def resources(self, resource_type: str, *, as_exported: bool = False) -> Iterator[dict]:
        """Stream the exported resources of one type from the verified files, each id once (its newest copy).

        Where the server did not apply the type's ``_typeFilter``, only those that match it (the others
        counted in ``filtered_out``), unless ``as_exported``.
        """
        keep = None
        if resource_type in self.unfiltered and not as_exported:
            filters = [f for f in self.filters if f.resource_type == resource_type]
            keep = lambda resource: any(f.matches(resource) for f in filters)  # noqa: E731
        for item in self.manifest.output:
            if item.type == resource_type:
                for resource in self._file_resources(item):
                    if keep is None or keep(resource):
                        yield resource
                    else:
                        self.filtered_out[resource_type] += 1

    def _file_resources(self, item: ExportFile) -> Iterator[dict]:
        skipped = self.superseded.get(item.url, frozenset())
        with open(self.directory / self.files[item.url], "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip() and number not in skipped:
                    yield orjson.loads(line)

    def notes(self) -> list[str]:
        """What the export lacked or held twice, the filters applied here, and warnings, one line each."""
        lines = [f"the server exported no {t} file although _type asked for {t}" for t in self.missing]
        for resource_type, why in self.unfiltered.items():
            out = self.filtered_out[resource_type]
            lines.append(f"the server did not apply the _typeFilter of {resource_type} ({why}): {resource_type} was "
                         f"exported whole and filtered here{f' ({out} left out)' if out else ''}")
        lines += [f"{n} {t} listed more than once in the export files: the copy with the latest meta.lastUpdated was kept"
                  for t, n in self.duplicates.items()]
        return lines + list(self.warnings)

    def deleted(self) -> Iterator[tuple[str, str]]:
        """(resource type, id) of each resource the manifest's ``deleted`` Bundles say the server deleted."""
        for item in self.manifest.deleted:
            with open(self.directory / self.files[item.url], "rb") as handle:
                for line in handle:
                    if not line.strip():
                        continue
                    for entry in orjson.loads(line).get("entry", []):
                        request = entry.get("request") or {}
                        parts = str(request.get("url", "")).split("?")[0].rstrip("/").split("/")
                        if request.get("method") == "DELETE" and len(parts) >= 2:
                            yield parts[-2], parts[-1]


# --- capability -------------------------------------------------------------------------------

def export_levels(client: FhirClient) -> set[str]:
    """The export levels the CapabilityStatement declares: ``system``, ``Patient``, ``Group`` (empty without /metadata).

    Read as the Bulk Data IG's CapabilityStatement writes them: an operation named ``export`` under
    ``rest.operation`` (system), or under ``rest.resource`` Patient or Group (that level); one whose
    ``definition`` is an IG OperationDefinition (``…/OperationDefinition/patient-export``) has that
    definition's level wherever it is declared. A statement that declares none but ``instantiates``
    the IG's CapabilityStatement is taken at its word: the IG's three levels.
    """
    try:
        statement = client.capabilities()
    except ServerError:
        return set()
    levels = set()
    for part in statement.get("rest", []):
        operations = [("system", o) for o in part.get("operation", [])]
        operations += [(r.get("type"), o) for r in part.get("resource", []) for o in r.get("operation", [])]
        levels.update(level for where, operation in operations if (level := _export_level(where, operation)))
    if not levels and any(str(c).split("|")[0] == IG_CAPABILITY for c in statement.get("instantiates", [])):
        return set(LEVEL_OF_OPERATION.values())
    return levels


def _export_level(where: str | None, operation: dict) -> str | None:
    """The export level of one declared operation (declared under ``where``: system or a type); None if not an export."""
    definition = str(operation.get("definition", "")).split("|")[0]
    if definition.startswith(IG_OPERATION):
        return LEVEL_OF_OPERATION.get(definition[len(IG_OPERATION):])
    name = operation.get("name", "")
    if name == "export":
        return where if where in LEVEL_OF_OPERATION.values() else None
    return LEVEL_OF_OPERATION.get(name)


def type_filter(resource_type: str, params: Mapping[str, str]) -> TypeFilter:
    """One ``_typeFilter`` query, ``Type?params`` (see :class:`TypeFilter`)."""
    return TypeFilter(resource_type, tuple(params.items()))


# --- the protocol -------------------------------------------------------------------------------

def kick_off(client: FhirClient, level: str, params: dict[str, list[str]]) -> str:
    """Start an export at ``level`` (``system``, ``Patient`` or ``Group/<id>``); return its status URL."""
    path = "$export" if level == "system" else f"{level}/$export"
    query = [(key, value) for key, values in params.items() for value in values]
    response = client.response("GET", path, params=query, headers={"Prefer": "respond-async", "Accept": "application/fhir+json"})
    with response:
        client.check(response)
        location = response.headers.get("Content-Location")
        if response.status_code != 202 or not location:
            raise InvalidResponse(f"GET {response.url}: HTTP {response.status_code} without a Content-Location; "
                                  "the server did not start an asynchronous export", status=response.status_code, response=response)
    return location


def wait_for_manifest(client: FhirClient, status_url: str, policy: BulkPolicy, progress: Progress = NO_PROGRESS) -> Manifest:
    """Poll the status URL until the manifest; raises ExportFailed if the job failed, TemporaryServerError on timeout
    or after ``policy.transient_attempts`` answers in a row that say ``transient``."""
    started, wait_next, polls, transient = time.monotonic(), policy.first_poll_wait, 0, 0
    while True:
        polls += 1
        with client.response("GET", status_url, headers={"Accept": "application/json"}) as response:
            if response.status_code == 200:
                return parse_manifest(response)
            if response.status_code >= 400:
                transient = _failed_or_transient(client, response, transient, policy)
                progress_text = f"the server said to try again (transient, {transient} in a row)"
            elif response.status_code != 202:
                raise InvalidResponse(f"GET {status_url}: HTTP {response.status_code}: not a Bulk Data status answer",
                                      status=response.status_code, response=response)
            else:
                transient, progress_text = 0, response.headers.get("X-Progress", "")
            hint = _retry_after(response)
        wait_s = min(hint if hint is not None else wait_next, policy.max_poll_wait)
        wait_next = min(wait_next * 2, policy.max_poll_wait)
        elapsed = time.monotonic() - started
        log.info("export in progress%s; next status request in %.1fs", f" ({progress_text})" if progress_text else "", wait_s)
        progress.start(f"waiting for the export{': ' + progress_text if progress_text else ''}")
        if elapsed + wait_s > policy.max_total:
            raise TemporaryServerError(f"the export was not ready after {elapsed:.0f}s ({polls} status requests): "
                                       "rerun the same command to keep waiting for the same job")
        client.stats.waits.append(wait_s)
        client._sleep(wait_s)


def _failed_or_transient(client: FhirClient, response: requests.Response, transient: int, policy: BulkPolicy) -> int:
    """An error status answer: the job's failure (ExportFailed), or one more ``transient`` answer in a row (returned)."""
    try:
        client.check(response)
    except ResourceNotFound:
        raise  # the job is gone: a journaled one is started afresh
    except ServerError as exc:
        issues = [i for i in (exc.outcome or {}).get("issue", []) if i.get("severity") in ("error", "fatal")]
        if not issues or any(i.get("code") not in TRANSIENT_ISSUES for i in issues):
            raise ExportFailed(f"the export job failed on the server: {exc}", status=exc.status, outcome=exc.outcome) from None
        if transient + 1 >= policy.transient_attempts:
            raise TemporaryServerError(f"the export's status answered `transient` {transient + 1} times in a row ({exc}): "
                                       "rerun the same command to keep waiting for the same job",
                                       status=exc.status, outcome=exc.outcome) from None
        log.info("status request: %s; trying again", exc)
        client.stats.retries += 1
    return transient + 1


def parse_manifest(response: requests.Response) -> Manifest:
    try:
        return parse_manifest_json(response.json())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InvalidResponse(f"GET {response.url}: HTTP 200 but not a Bulk Data manifest "
                              f"(need transactionTime, output[{{type, url}}]): {response.content[:80]!r}",
                              status=200, response=response) from None


def _file(item: dict) -> ExportFile:
    count = item.get("count")
    return ExportFile(type=item["type"], url=item["url"], count=int(count) if count is not None else None)


def _manifest_json(manifest: Manifest) -> dict:
    files = lambda items: [{"type": f.type, "url": f.url, **({"count": f.count} if f.count is not None else {})} for f in items]  # noqa: E731
    return {"transactionTime": manifest.transaction_time, "request": manifest.request,
            "requiresAccessToken": manifest.requires_access_token, "output": files(manifest.output), "error": files(manifest.error),
            "deleted": files(manifest.deleted)}


def delete_job(client: FhirClient, status_url: str) -> list[str]:
    """DELETE the job (the server may drop its files); a job already gone is fine. Returns a warning line if the
    server did not delete it."""
    try:
        with client.response("DELETE", status_url) as response:
            if response.status_code not in (404, 410):
                client.check(response)
    except ServerError as exc:
        log.info("could not delete the export job %s: %s", status_url, exc)
        return [f"the server did not delete the export job ({exc}): it may keep the exported files until they expire there"]
    return []


def anonymous_files(client: FhirClient, manifest: Manifest) -> set[str]:
    """The URLs of the manifest's files on another origin than the server's: fetched without credentials.

    Raises ExportFailed (one line) if there are such files and the manifest says they need the access token.
    """
    home = origin(client.base_url)
    elsewhere = {item.url for item in manifest.output + manifest.deleted + manifest.error if origin(item.url) != home}
    if elsewhere and manifest.requires_access_token:
        shown = redact(min(elsewhere))
        raise ExportFailed(f"the export's files are on another origin than the server ({urlsplit(shown).netloc}, e.g. {shown}) "
                           "and its manifest says they need the access token (requiresAccessToken: true): fhir-msc sends "
                           "the server's credentials to its own origin only; ask the server's operators to serve the files "
                           "from its origin, or as URLs that need no token")
    return elsewhere


# --- files --------------------------------------------------------------------------------------

class BadFile(Exception):
    """A downloaded file that fails its check (not used; fetched again)."""


def verify(path: Path, item: ExportFile) -> int:
    """Lines of a downloaded file: each one JSON resource of the file's type, as many as ``count``.

    Resources need an id, except the OperationOutcomes of error files and the Bundles of deleted files.
    """
    needs_id = item.type not in ("OperationOutcome", "Bundle")  # error files and deleted Bundles may have none
    lines = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise BadFile(f"line {number} is not JSON ({exc})") from None
            if not isinstance(resource, dict) or resource.get("resourceType") != item.type or (needs_id and not resource.get("id")):
                raise BadFile(f"line {number} is not a {item.type}{' with an id' if needs_id else ''}")
            lines += 1
    if item.count is not None and lines != item.count:
        raise BadFile(f"{lines} resources, the manifest says {item.count}")
    return lines


def _private_file(path: Path):
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


class _Stopped(Exception):
    pass


def download(client: FhirClient, item: ExportFile, target: Path, policy: BulkPolicy, stop: threading.Event, *,
             anonymous: bool = False) -> int:
    """Fetch one file to ``target`` and verify it; retried up to ``policy.file_attempts`` times. Returns its lines.

    ``anonymous``: a file on another origin, fetched without credentials (see ``anonymous_files``).
    """
    part = target.with_name(target.name + ".part")
    for attempt in range(1, policy.file_attempts + 1):
        try:
            with client.response("GET", item.url, headers={"Accept": NDJSON}, stream=True, anonymous=anonymous) as response:
                client.check(response)
                with _private_file(part) as out:
                    for chunk in response.iter_content(CHUNK):
                        if stop.is_set():
                            raise _Stopped
                        out.write(chunk)
            lines = verify(part, item)
            os.replace(part, target)
            return lines
        except (requests.RequestException, BadFile) as exc:
            part.unlink(missing_ok=True)
            problem = f"{type(exc).__name__}: {exc}" if isinstance(exc, requests.RequestException) else str(exc)
            if attempt == policy.file_attempts:
                raise ExportFailed(f"export file {item.url} ({item.type}) could not be fetched intact in {attempt} attempts: "
                                   f"{problem}; rerun the same command to try again") from None
            log.info("export file %s: %s; fetching it again", item.url, problem)
            client.stats.retries += 1
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    raise AssertionError("unreachable")


# --- the journal of one export, and the whole run ------------------------------------------------

@dataclass
class _Journal:
    path: Path
    request: dict
    status_url: str | None = None
    manifest: dict | None = None
    verified: dict[str, str] = field(default_factory=dict)  # url → file name

    @classmethod
    def load(cls, directory: Path, request: dict) -> _Journal:
        path = directory / "job.json"
        try:
            saved = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return cls(path, request)
        if saved.get("request") != request:
            return cls(path, request)
        return cls(path, request, saved.get("status_url"), saved.get("manifest"), saved.get("verified", {}))

    def save(self) -> None:
        tmp = self.path.with_name("job.json.tmp")
        with _private_file(tmp) as out:
            out.write(json.dumps({"request": self.request, "status_url": self.status_url, "manifest": self.manifest,
                                  "verified": self.verified}, indent=1).encode())
        os.replace(tmp, self.path)


def job_directory(state_dir: Path, client: FhirClient, level: str, params: dict[str, list[str]]) -> Path:
    """Where one export's journal and files live: one directory per server, level and parameters."""
    key = hashlib.sha256(json.dumps([client.base_url, level, params], sort_keys=True).encode()).hexdigest()[:16]
    return state_dir / "bulk" / key


def export(client: FhirClient, level: str, state_dir: Path, *, types: Iterable[str] = (), since: str | None = None,
           type_filters: Iterable[TypeFilter | str] = (), policy: BulkPolicy = BulkPolicy(),
           progress: Progress = NO_PROGRESS) -> Export:
    """Run (or resume) an export and fetch its files; see the module docstring. Call ``finish`` once they are used.

    Where the server did not apply a ``_typeFilter`` fhir-msc can judge, and the output lacks what it
    asked for, the types are exported again without those filters (the first job is then finished)
    and filtered here.
    """
    filters = tuple(TypeFilter.parse(f) for f in type_filters)
    done = _export_once(client, level, state_dir, tuple(types), since, filters, policy, progress)
    unfiltered, again = _unapplied_filters(done, since)
    if not unfiltered:
        return done
    if again:
        log.warning("the server did not apply the _typeFilter of %s: exporting it whole", ", ".join(unfiltered))
        applied = tuple(f for f in filters if f.resource_type not in unfiltered)
        whole = _export_once(client, level, state_dir, tuple(types), since, applied, policy, progress)
        done = replace(whole, warnings=tuple(finish(client, done)))
    return replace(done, filters=filters, unfiltered=unfiltered)


def _unapplied_filters(done: Export, since: str | None) -> tuple[dict[str, str], bool]:
    """The types whose ``_typeFilter`` (one fhir-msc can judge) the server did not apply, each with why; and whether
    the output lacks what they asked for (so they must be exported again), rather than holding too much."""
    judged = [t for t in dict.fromkeys(f.resource_type for f in done.filters)
              if all(f.judged_here for f in done.filters if f.resource_type == t)]
    said = next((issue for issue in done.errors if "typefilter" in issue.lower()), None)
    if judged and said:
        return {t: f"its error file says: {said}" for t in judged}, True
    if judged and not done.manifest.output and since is None:
        return {t: "it exported no file at all" for t in judged}, True
    outside = {}
    for resource_type in judged:
        filters = [f for f in done.filters if f.resource_type == resource_type]
        if any(not any(f.matches(r) for f in filters) for r in done.resources(resource_type)):
            outside[resource_type] = f"it exported {resource_type} resources outside it"
    return outside, False


def _export_once(client: FhirClient, level: str, state_dir: Path, types: tuple[str, ...], since: str | None,
                 filters: tuple[TypeFilter, ...], policy: BulkPolicy, progress: Progress) -> Export:
    """One export job, resumed from its journal if there is one (started afresh if the server no longer knows it)."""
    params: dict[str, list[str]] = {"_outputFormat": [NDJSON]}
    if types:
        params["_type"] = [",".join(types)]
    if since:
        params["_since"] = [since]
    if filters:
        params["_typeFilter"] = [str(f) for f in filters]
    directory = job_directory(state_dir, client, level, params)
    directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # export files hold trial or hospital data: owner-only
    directory.mkdir(exist_ok=True, mode=0o700)
    journal = _Journal.load(directory, {"server": client.base_url, "level": level, "params": params})
    resumed = journal.status_url is not None
    for fresh_start in (False, True):
        if fresh_start:
            log.warning("the server no longer has export job %s: starting a new export", journal.status_url)
            journal = _Journal(journal.path, journal.request)
            resumed = False
        try:
            done = _run(client, level, params, directory, journal, resumed, policy, progress)
        except ResourceNotFound:
            if fresh_start or journal.status_url is None:
                raise
            continue
        missing = () if since else tuple(t for t in types if t not in {item.type for item in done.manifest.output})
        return replace(done, filters=filters, missing=missing)
    raise AssertionError("unreachable")


def _run(client: FhirClient, level: str, params: dict[str, list[str]], directory: Path, journal: _Journal,
         resumed: bool, policy: BulkPolicy, progress: Progress) -> Export:
    if journal.status_url is None:
        progress.start(f"starting a bulk export ({level}) on {client.base_url}")
        journal.status_url = kick_off(client, level, params)
        journal.save()
    try:
        if journal.manifest is None:
            manifest = wait_for_manifest(client, journal.status_url, policy, progress)
            journal.manifest = _manifest_json(manifest)
            journal.save()
        else:
            manifest = parse_manifest_json(journal.manifest)
        anonymous = anonymous_files(client, manifest)
    except ExportFailed as exc:
        left = _abandon(client, journal.status_url, directory)  # a failed or refused job is not resumed: the rerun starts anew
        if left:
            raise ExportFailed("; ".join([str(exc), *left]), status=exc.status, outcome=exc.outcome) from None
        raise
    files = manifest.output + manifest.deleted
    reused = sum(1 for item in files if item.url in journal.verified and (directory / journal.verified[item.url]).exists())
    pending = [(n, item) for n, item in enumerate(files)
               if not (item.url in journal.verified and (directory / journal.verified[item.url]).exists())]
    progress.start(f"downloading {len(pending)} export file(s)", len(pending), "files")
    _fetch_all(client, pending, directory, journal, policy, progress, anonymous)
    errors = _read_errors(client, manifest, directory, policy, anonymous)
    superseded, duplicates = _superseded(directory, manifest, journal.verified)
    return Export(status_url=journal.status_url, manifest=manifest, directory=directory, files=dict(journal.verified),
                  errors=errors, resumed=resumed, downloaded=len(pending), reused=reused, superseded=superseded,
                  duplicates=duplicates)


def _abandon(client: FhirClient, status_url: str, directory: Path) -> list[str]:
    """A job done with: DELETE it on the server, and remove its journal and files; a warning line if it stays there."""
    left = delete_job(client, status_url)
    shutil.rmtree(directory, ignore_errors=True)
    return left


def parse_manifest_json(body: dict) -> Manifest:
    """A manifest from its JSON (the status answer's body, or the journal's copy of it)."""
    return Manifest(transaction_time=body["transactionTime"], request=body.get("request", ""),
                    requires_access_token=bool(body.get("requiresAccessToken")),
                    output=tuple(_file(i) for i in body.get("output", [])), error=tuple(_file(i) for i in body.get("error", [])),
                    deleted=tuple(_file(i) for i in body.get("deleted") or []))


def _fetch_all(client: FhirClient, pending: list[tuple[int, ExportFile]], directory: Path, journal: _Journal,
               policy: BulkPolicy, progress: Progress, anonymous: set[str]) -> None:
    """Download ``pending`` files, ``policy.parallel`` at a time; each verified file is journaled at once."""
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=max(1, policy.parallel), thread_name_prefix="bulk-download") as pool:
        futures: dict[Future, tuple[ExportFile, str]] = {}
        for n, item in pending:
            name = f"{n:05d}-{item.type}.ndjson"
            futures[pool.submit(download, client, item, directory / name, policy, stop,
                                anonymous=item.url in anonymous)] = (item, name)
        try:
            remaining = set(futures)
            while remaining:
                done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
                    item, name = futures[future]
                    journal.verified[item.url] = name
                    journal.save()
                    progress.advance(1)
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise


def _read_errors(client: FhirClient, manifest: Manifest, directory: Path, policy: BulkPolicy, anonymous: set[str]) -> list[str]:
    """The issues of the manifest's error files, one line each (``severity code: diagnostics``).

    Their ``count`` is not checked: servers give there the count of the output file that could not be made.
    """
    issues = []
    for n, item in enumerate(manifest.error):
        path = directory / f"error-{n:05d}.ndjson"
        download(client, ExportFile(type="OperationOutcome", url=item.url), path, policy, threading.Event(),
                 anonymous=item.url in anonymous)
        with open(path, "rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                for issue in orjson.loads(line).get("issue", []):
                    text = issue.get("diagnostics") or issue.get("details", {}).get("text") or ""
                    issues.append(f"{issue.get('severity', 'error')} {issue.get('code', '')}: {text}".strip())
    return issues


def _superseded(directory: Path, manifest: Manifest, files: dict[str, str]) -> tuple[dict[str, frozenset[int]], dict[str, int]]:
    """Where an id is listed more than once among a type's output files: the lines of all its copies but the newest
    (latest ``meta.lastUpdated``; ties: the one listed last), by URL; and how many of each type.

    Memory holds an 8-byte digest per resource, and the copies of the ids whose digests repeat.
    """
    skip: dict[str, set[int]] = {}
    counts: dict[str, int] = {}
    for resource_type in dict.fromkeys(item.type for item in manifest.output):
        items = [item for item in manifest.output if item.type == resource_type]
        digests = bytearray()
        for _, _, resource in _lines(directory, files, items):
            digests += id_digest(resource["id"])
        suspects = repeated(digests)
        copies: dict[str, list[tuple[datetime, int, str, int]]] = {}
        for order, (url, number, resource) in enumerate(_lines(directory, files, items) if suspects else ()):
            if id_digest(resource["id"]) in suspects:
                copies.setdefault(resource["id"], []).append((_last_updated(resource), order, url, number))
        for versions in copies.values():
            for _, _, url, number in sorted(versions)[:-1]:
                skip.setdefault(url, set()).add(number)
                counts[resource_type] = counts.get(resource_type, 0) + 1
    return {url: frozenset(numbers) for url, numbers in skip.items()}, counts


def _lines(directory: Path, files: dict[str, str], items: list[ExportFile]) -> Iterator[tuple[str, int, dict]]:
    """(url, line number from 1, resource) of each resource in these verified files."""
    for item in items:
        with open(directory / files[item.url], "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield item.url, number, orjson.loads(line)


def _last_updated(resource: dict) -> datetime:
    try:
        when = datetime.fromisoformat(str((resource.get("meta") or {}).get("lastUpdated", "")))
    except ValueError:
        return EARLIEST
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def finish(client: FhirClient, done: Export) -> list[str]:
    """The files are used: DELETE the job on the server and remove the journal and files. Returns a warning line
    (for the user) if the server did not delete the job."""
    return _abandon(client, done.status_url, done.directory)


def require_patients(client: FhirClient, done: Export, level: str, why: str) -> None:
    """An export without the Patient file its ``_type`` asked for is the server's failure: finish the job and raise,
    saying ``why`` the Patients were needed (never "0 patients found")."""
    if "Patient" not in done.missing:
        return
    errors = f" (its error files say: {'; '.join(done.errors[:3])})" if done.errors else ""
    raise failed(client, done, f"the server's bulk export ({level}) holds no Patient file although _type asked for "
                               f"Patient{errors}: {why}; rerun without --bulk (paged search), or ask the server's "
                               "operators why it exported no Patient")


def failed(client: FhirClient, done: Export, message: str) -> ExportFailed:
    """An export that cannot be used: finished, and the error to raise (the warning of ``finish`` added to it)."""
    return ExportFailed("; ".join([message, *finish(client, done)]))
