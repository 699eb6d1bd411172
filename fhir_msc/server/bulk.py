"""FHIR Bulk Data Access (IG v2) ``$export`` through a FhirClient, resumable, and a bulk pull of a study.

- Kick-off at system (``$export``), ``Patient/$export`` or ``Group/[id]/$export`` level with
  ``Prefer: respond-async`` and ``_type``, ``_since``, ``_typeFilter``, ``_outputFormat``; the
  answer's Content-Location is the job's status URL.
- Polling: 202 answers are waited out for their Retry-After (capped; a growing backoff when
  absent), X-Progress is logged, and the whole wait is bounded; a 429 is retried by the client
  as any temporary answer; an error status is the job's failure, with the server's
  OperationOutcome. The 200 answer is the manifest.
- Files are streamed to disk (owner-only), a few at a time (gzip accepted), and each is checked
  before use: every line one JSON resource of the manifest's type with an id, and as many as its
  ``count``. A broken download or a file that fails the check is fetched again, a few times.
- Error files (OperationOutcome NDJSON) are read and their issues reported.
- Deleted files (the manifest's ``deleted``, IG v2, with ``_since``: transaction Bundles of
  DELETE requests) are fetched and checked like the output; ``Export.deleted`` names what the
  server deleted since ``_since``.
- A small journal (``job.json`` beside the files) records the status URL, the manifest and the
  files already verified, so a killed export resumes instead of starting again; a job the server
  no longer knows is started afresh. ``finish`` DELETEs the job and removes the files.

The token the server requires (``requiresAccessToken``) is the client's own credentials: files
on the server's own origin only are fetched, so they never go anywhere else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode
import orjson
import requests

from ..errors import InvalidResponse, ResourceNotFound, ServerError, TemporaryServerError
from ..progress import NO_PROGRESS, Progress
from .client import FhirClient, _retry_after

log = logging.getLogger(__name__)
NDJSON = "application/fhir+ndjson"
CHUNK = 1 << 16


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

    def resources(self, resource_type: str) -> Iterator[dict]:
        """Stream the exported resources of one type from the verified files."""
        for item in self.manifest.output:
            if item.type == resource_type:
                with open(self.directory / self.files[item.url], "rb") as handle:
                    for line in handle:
                        if line.strip():
                            yield orjson.loads(line)

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
    """The export levels the CapabilityStatement declares: ``system``, ``Patient``, ``Group`` (empty without /metadata)."""
    try:
        rest = client.capabilities().get("rest", [])
    except ServerError:
        return set()
    levels = set()
    for part in rest:
        operations = [("system", o) for o in part.get("operation", [])]
        operations += [(r.get("type"), o) for r in part.get("resource", []) for o in r.get("operation", [])]
        for level, operation in operations:
            name = operation.get("name", "")
            definition = operation.get("definition", "")
            if name in ("export", "patient-export", "group-export") or "/bulkdata/OperationDefinition/" in definition:
                levels.add({"export": "system", "patient-export": "Patient", "group-export": "Group"}.get(name, level))
    return levels


def type_filter(resource_type: str, params: dict[str, str]) -> str:
    """One ``_typeFilter`` value, ``Type?query`` with the query URL-encoded (so its commas are not separators)."""
    return f"{resource_type}?{urlencode(params)}"


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
    """Poll the status URL until the manifest; raises ExportFailed if the job failed, TemporaryServerError on timeout."""
    started, wait_next, polls = time.monotonic(), policy.first_poll_wait, 0
    while True:
        polls += 1
        with client.response("GET", status_url, headers={"Accept": "application/json"}) as response:
            if response.status_code == 200:
                return parse_manifest(response)
            if response.status_code >= 400:
                try:
                    client.check(response)
                except ServerError as exc:
                    raise ExportFailed(f"the export job failed on the server: {exc}", status=exc.status, outcome=exc.outcome) from None
            if response.status_code != 202:
                raise InvalidResponse(f"GET {status_url}: HTTP {response.status_code}: not a Bulk Data status answer",
                                      status=response.status_code, response=response)
            hint = _retry_after(response)
            progress_text = response.headers.get("X-Progress", "")
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


def delete_job(client: FhirClient, status_url: str) -> None:
    """DELETE the job (the server may drop its files); a job already gone is fine."""
    try:
        with client.response("DELETE", status_url) as response:
            if response.status_code not in (404, 410):
                client.check(response)
    except ServerError as exc:
        log.warning("could not delete the export job %s: %s", status_url, exc)


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


def download(client: FhirClient, item: ExportFile, target: Path, policy: BulkPolicy, stop: threading.Event) -> int:
    """Fetch one file to ``target`` and verify it; retried up to ``policy.file_attempts`` times. Returns its lines."""
    part = target.with_name(target.name + ".part")
    for attempt in range(1, policy.file_attempts + 1):
        try:
            with client.response("GET", item.url, headers={"Accept": NDJSON}, stream=True) as response:
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
           type_filters: Iterable[str] = (), policy: BulkPolicy = BulkPolicy(), progress: Progress = NO_PROGRESS) -> Export:
    """Run (or resume) an export and fetch its files; see the module docstring. Call ``finish`` once they are used."""
    params: dict[str, list[str]] = {"_outputFormat": [NDJSON]}
    if types:
        params["_type"] = [",".join(types)]
    if since:
        params["_since"] = [since]
    if type_filters:
        params["_typeFilter"] = list(type_filters)
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
            return _run(client, level, params, directory, journal, resumed, policy, progress)
        except ResourceNotFound:
            if fresh_start or journal.status_url is None:
                raise
    raise AssertionError("unreachable")


def _run(client: FhirClient, level: str, params: dict[str, list[str]], directory: Path, journal: _Journal,
         resumed: bool, policy: BulkPolicy, progress: Progress) -> Export:
    if journal.status_url is None:
        progress.start(f"starting a bulk export ({level}) on {client.base_url}")
        journal.status_url = kick_off(client, level, params)
        journal.save()
    if journal.manifest is None:
        try:
            manifest = wait_for_manifest(client, journal.status_url, policy, progress)
        except ExportFailed:
            journal.path.unlink(missing_ok=True)  # a failed job is not resumed: the rerun starts a new one
            raise
        journal.manifest = _manifest_json(manifest)
        journal.save()
    else:
        manifest = parse_manifest_json(journal.manifest)
    files = manifest.output + manifest.deleted
    reused = sum(1 for item in files if item.url in journal.verified and (directory / journal.verified[item.url]).exists())
    pending = [(n, item) for n, item in enumerate(files)
               if not (item.url in journal.verified and (directory / journal.verified[item.url]).exists())]
    progress.start(f"downloading {len(pending)} export file(s)", len(pending), "files")
    _fetch_all(client, pending, directory, journal, policy, progress)
    errors = _read_errors(client, manifest, directory, policy)
    return Export(status_url=journal.status_url, manifest=manifest, directory=directory, files=dict(journal.verified),
                  errors=errors, resumed=resumed, downloaded=len(pending), reused=reused)


def parse_manifest_json(body: dict) -> Manifest:
    """A manifest from its JSON (the status answer's body, or the journal's copy of it)."""
    return Manifest(transaction_time=body["transactionTime"], request=body.get("request", ""),
                    requires_access_token=bool(body.get("requiresAccessToken")),
                    output=tuple(_file(i) for i in body.get("output", [])), error=tuple(_file(i) for i in body.get("error", [])),
                    deleted=tuple(_file(i) for i in body.get("deleted") or []))


def _fetch_all(client: FhirClient, pending: list[tuple[int, ExportFile]], directory: Path, journal: _Journal,
               policy: BulkPolicy, progress: Progress) -> None:
    """Download ``pending`` files, ``policy.parallel`` at a time; each verified file is journaled at once."""
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=max(1, policy.parallel), thread_name_prefix="bulk-download") as pool:
        futures: dict[Future, tuple[ExportFile, str]] = {}
        for n, item in pending:
            name = f"{n:05d}-{item.type}.ndjson"
            futures[pool.submit(download, client, item, directory / name, policy, stop)] = (item, name)
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


def _read_errors(client: FhirClient, manifest: Manifest, directory: Path, policy: BulkPolicy) -> list[str]:
    """The issues of the manifest's error files, one line each (``severity code: diagnostics``)."""
    issues = []
    for n, item in enumerate(manifest.error):
        path = directory / f"error-{n:05d}.ndjson"
        download(client, ExportFile(type="OperationOutcome", url=item.url, count=item.count), path, policy, threading.Event())
        with open(path, "rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                for issue in orjson.loads(line).get("issue", []):
                    text = issue.get("diagnostics") or issue.get("details", {}).get("text") or ""
                    issues.append(f"{issue.get('severity', 'error')} {issue.get('code', '')}: {text}".strip())
    return issues


def finish(client: FhirClient, done: Export) -> None:
    """The files are used: DELETE the job on the server and remove the journal and files."""
    delete_job(client, done.status_url)
    shutil.rmtree(done.directory, ignore_errors=True)
