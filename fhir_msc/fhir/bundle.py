"""Transaction Bundles: export a store for upload anywhere, and read bundles back.

Each entry is a conditional update on the resource's first business identifier
(``PUT Observation?identifier=system|value``), so uploading the same bundle twice
creates nothing new. References between entries use ``urn:uuid:`` full URLs, which a
server resolves to the ids it assigns.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from ..errors import InputError
from ..store.files import private_open
from ..store.ndjson import Store
from ..store.source import BundleSource

Resource = dict[str, Any]


def conditional_url(resource: Resource) -> str:
    """``Type?identifier=system|value`` for the resource's first identifier (or its one: R4 AdverseEvent's is 0..1)."""
    identifier = resource["identifier"]
    identifier = identifier if isinstance(identifier, dict) else identifier[0]
    token = quote(f"{identifier['system']}|{identifier['value']}", safe=":/")
    return f"{resource['resourceType']}?identifier={token}"


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def rewrite_references(node: Any, rewrite: Any) -> Any:
    """Copy of ``node`` with every ``reference`` string passed through ``rewrite``."""
    if isinstance(node, dict):
        return {k: (rewrite(v) if k == "reference" and isinstance(v, str) else rewrite_references(v, rewrite))
                for k, v in node.items()}
    if isinstance(node, list):
        return [rewrite_references(item, rewrite) for item in node]
    return node


def _to_urn(reference: str) -> str:
    resource_type, _, rid = reference.partition("/")
    return f"urn:uuid:{rid}" if rid and _is_uuid(rid) and "/" not in rid else reference


def transaction_entry(resource: Resource) -> Resource:
    """A transaction entry: conditional PUT with ``urn:uuid`` references."""
    body = rewrite_references({k: v for k, v in resource.items() if k != "id"}, _to_urn)
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": body,
            "request": {"method": "PUT", "url": conditional_url(resource)}}


def write_bundle(resources: Iterable[Resource], path: Path) -> dict[str, int]:
    """Stream resources into one transaction Bundle JSON file; returns entries per type."""
    counts: Counter[str] = Counter()
    with private_open(path, "wb") as out:
        out.write(b'{"resourceType":"Bundle","type":"transaction","entry":[\n')
        for resource in resources:
            out.write((b",\n" if counts else b"") + orjson.dumps(transaction_entry(resource)))
            counts[resource["resourceType"]] += 1
        out.write(b"\n]}\n")
    return dict(counts)


def read_bundle(path: Path, not_used: list[str] | None = None) -> Iterator[Resource]:
    """Resources of a Bundle file, with ``urn:uuid`` references turned back into ``Type/id``.

    Entries without a resource (a transaction's DELETE or GET requests) hold no data; so that
    every entry is accounted for, they are summed up in one line appended to ``not_used``,
    with the entries that are no resource object at all.
    """
    try:
        bundle = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputError(f"{path}: bundle not found") from None
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InputError(f"{path}: not a FHIR Bundle (resourceType is {bundle.get('resourceType') if isinstance(bundle, dict) else None!r})")
    if not isinstance(bundle.get("entry", []), list):
        raise InputError(f"{path}: Bundle.entry is not a JSON array")
    entries, unused = [], []
    for index, entry in enumerate(bundle.get("entry", [])):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
            entries.append(entry)
        else:
            unused.append((index, entry))
    if unused and not_used is not None:
        not_used.append(_not_used_line(path, unused))
    local = {}
    for entry in entries:
        resource = entry["resource"]
        full_url = entry.get("fullUrl", "")
        if full_url.startswith("urn:uuid:"):
            local[full_url] = f"{resource['resourceType']}/{full_url[len('urn:uuid:'):]}"
    for entry in entries:
        resource = rewrite_references(entry["resource"], lambda ref: local.get(ref, ref))
        full_url = entry.get("fullUrl", "")
        if "id" not in resource and full_url.startswith("urn:uuid:"):
            resource = {"resourceType": resource["resourceType"], "id": full_url[len("urn:uuid:"):],
                        **{k: v for k, v in resource.items() if k != "resourceType"}}
        yield resource


MAX_NAMED = 5  # entries named in the not-used line


def _not_used_line(path: Path, unused: list[tuple[int, Any]]) -> str:
    """``PATH: 2 bundle entries hold no resource (…): entry[3] DELETE Patient/1, entry[4] GET Patient?name=x``."""
    def describe(index: int, entry: Any) -> str:
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or "resource" in entry:
            return f"entry[{index}] (no FHIR resource object)"
        if isinstance(request, dict):
            return f"entry[{index}] {request.get('method', '?')} {request.get('url', '?')}"
        return f"entry[{index}] (no request)"
    named = ", ".join(describe(index, entry) for index, entry in unused[:MAX_NAMED])
    more = f", and {len(unused) - MAX_NAMED} more" if len(unused) > MAX_NAMED else ""
    return f"{path}: {len(unused)} bundle entries hold no resource (a DELETE or GET request has none): {named}{more}"


def open_resources(path: str | Path) -> Store | BundleSource:
    """A readable source of resources: a store directory, or a Bundle JSON file (see BundleSource.not_used)."""
    path = Path(path)
    if path.is_dir():
        return Store(path)
    if path.is_file():
        not_used: list[str] = []
        return BundleSource(list(read_bundle(path, not_used)), not_used)
    raise InputError(f"{path}: no such store directory or bundle file")


def not_used(source: object) -> list[str]:
    """Lines about input of ``source`` that holds no resource (bundle entries without one), or none."""
    return list(source.not_used) if isinstance(source, BundleSource) else []
