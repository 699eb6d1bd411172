"""Property tests: whatever happens to the NDJSON lines of a store or the entries of a Bundle,
`validate`, `unmap` and `analyze` end with a documented exit code, without a traceback, and
account for every resource.

A store mapped from the mini study is mutated line by line (truncation, bytes that are not
UTF-8, JSON values that are not objects, bad ids and resource types, repeated lines, dropped
or junk elements, numbers written as strings, unknown elements, empty objects); a transaction
Bundle of it is mutated entry by entry (entries without a resource, junk entries, wrong
resource types, nested junk, missing ids, repeated entries). Each mutation knows whether it
breaks the resource (FHIR forbids the result) or not, so `validate` must name exactly the
resources broken. Bounded and derandomized: no example database, the same examples on every run.
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fhir_msc import get_version
from fhir_msc.cli import main
from fhir_msc.fhir.bundle import write_bundle
from fhir_msc.jobs import validate
from fhir_msc.study.definition import REPO_ROOT

MINI = REPO_ROOT / "tests" / "data" / "mini-study"
STUDY = MINI / "study.yaml"
SETTINGS = settings(max_examples=20, derandomize=True, database=None, deadline=None,
                    phases=[Phase.explicit, Phase.generate], suppress_health_check=[HealthCheck.too_slow])
JUNK = [[], {}, None, [[]], [None], {"unknownElement": None}]  # never a valid value of any FHIR element
BAD_IDS = ["bad id!", "", "x" * 65, 5, "ünï", ["a"]]
BAD_TYPES = ["Observatio", "", "observation"]  # strings, but no resource type
NOT_TYPES = [5, None, ["Patient"], {}]  # not even a string: the entry holds no resource
NOT_OBJECTS = [5, "x", [], None, True]
ANALYZED = {f"{t}.ndjson" for t in ("Patient", "Encounter", "ResearchSubject", "Observation")}  # what analyze reads


@dataclass
class Item:
    """One NDJSON line or Bundle entry resource: raw bytes (unparsable), or a JSON value; broken or not."""

    value: Any
    raw: bytes | None = None
    broken: bool = False

    def label(self) -> str:
        """How `validate` names the resource (Type/id)."""
        return f"{self.value.get('resourceType')}/{self.value.get('id')}"


@functools.lru_cache(maxsize=1)
def _mapped() -> dict[str, list[bytes]]:
    """The mini study's store, as lines per file."""
    with tempfile.TemporaryDirectory(prefix="fhir-msc-prop-") as tmp:
        store = Path(tmp) / "store"
        result = CliRunner().invoke(main, ["map", str(MINI / "tables"), "--study", str(STUDY), "--store", str(store)])
        assert result.exit_code == 0, result.output
        return {p.name: p.read_bytes().splitlines() for p in sorted(store.glob("*.ndjson"))}


def _numbers(node: Any, path: tuple = ()) -> list[tuple]:
    """Paths to the JSON numbers (not booleans) in a resource."""
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in _numbers(value, (*path, key))]
    if isinstance(node, list):
        return [p for index, value in enumerate(node) for p in _numbers(value, (*path, index))]
    return [path] if type(node) in (int, float) else []


def _set(node: Any, path: tuple, value: Any) -> None:
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value


def _mutate_resource(item: Item, kind: str, pick: int) -> None:
    """Change one resource (a JSON object) in place; ``item.broken`` says whether FHIR now forbids it."""
    resource = item.value
    keys = [k for k in resource if k != "resourceType"]
    if kind == "bad-id":
        resource["id"] = BAD_IDS[pick % len(BAD_IDS)]
        item.broken = True
    elif kind == "bad-type":
        resource["resourceType"] = BAD_TYPES[pick % len(BAD_TYPES)]
        item.broken = True
    elif kind == "drop-type":
        resource.pop("resourceType", None)
        item.broken = True
    elif kind == "drop-required" and "status" in resource:  # every type of the store that has status requires it
        del resource["status"]
        item.broken = True
    elif kind == "drop-optional":  # 0..* elements: FHIR allows leaving them out
        resource.pop(["meta", "extension", "identifier"][pick % 3], None)
    elif kind == "drop-id":  # a resource without an id is valid FHIR (a create)
        resource.pop("id", None)
    elif kind == "number-to-string" and (paths := _numbers(resource)):
        path = paths[pick % len(paths)]
        value = resource
        for step in path:
            value = value[step]
        _set(resource, path, str(value))
        item.broken = True
    elif kind == "unknown-element":
        resource["unknownElement"] = "x"
        item.broken = True
    elif kind == "empty-object":
        resource["text"] = {}
        item.broken = True
    elif kind == "nested-junk" and keys:
        resource[keys[pick % len(keys)]] = JUNK[pick % len(JUNK)]
        item.broken = True
    elif kind == "reorder":
        item.value = dict(reversed(list(resource.items())))


RESOURCE_MUTATIONS = ["bad-id", "bad-type", "drop-type", "drop-required", "drop-optional", "drop-id",
                      "number-to-string", "unknown-element", "empty-object", "nested-junk", "reorder"]
LINE_MUTATIONS = ["truncate", "junk-bytes", "not-an-object", "empty-object-line", "repeat"]
BUNDLE_MUTATIONS = ["no-resource", "junk-entry", "resource-not-an-object", "not-a-type", "drop-full-url", "repeat"]

line_mutations = st.tuples(st.sampled_from(RESOURCE_MUTATIONS + LINE_MUTATIONS), st.integers(0, 10_000),
                           st.integers(0, 10_000), st.binary(max_size=6))
entry_mutations = st.tuples(st.sampled_from(RESOURCE_MUTATIONS + BUNDLE_MUTATIONS), st.integers(0, 10_000),
                            st.integers(0, 10_000))


def _mutate_line(items: list[Item], kind: str, at: int, pick: int, junk: bytes) -> None:
    index = at % len(items)
    item = items[index]
    if kind == "repeat":
        items.insert(index, Item(orjson.loads(orjson.dumps(item.value)), item.raw, item.broken))
    elif kind in ("truncate", "junk-bytes"):
        data = item.raw if item.raw is not None else orjson.dumps(item.value)
        cut = 1 + pick % max(1, len(data) - 2)
        # a proper prefix of a JSON object is never JSON; \xff is never UTF-8
        item.raw = data[:cut] if kind == "truncate" else data[:cut] + b"\xff" + junk + data[cut:]
    elif kind == "not-an-object":
        item.value, item.raw = NOT_OBJECTS[pick % len(NOT_OBJECTS)], None
    elif kind == "empty-object-line":
        item.value, item.raw, item.broken = {}, None, True
    elif item.raw is None and isinstance(item.value, dict):
        _mutate_resource(item, kind, pick)


def _write_store(store: Path, files: dict[str, list[Item]]) -> None:
    store.mkdir()
    for name, items in files.items():
        (store / name).write_bytes(b"".join((i.raw if i.raw is not None else orjson.dumps(i.value)) + b"\n"
                                            for i in items))


def _invoke(args: list[str]) -> Any:
    result = CliRunner().invoke(main, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def _check_jobs(source: Path, tmp: Path, resources: list[Item], observations: int, not_used: int | None) -> None:
    """The properties of validate, unmap and analyze on one mutated source.

    ``resources`` are the items every job reads as resources; ``observations`` how many of them
    analyze reads as Observations; ``not_used`` (bundles) the entries that hold no resource.
    """
    checked = _invoke(["validate", str(source), "--fhir-version", "R4", "--json"])
    assert checked.exit_code in (0, 5), checked.output
    report = validate(source, get_version("R4"))
    assert report.error_count == len(report.errors), "keep the examples under MAX_REPORTED problems"
    assert {p.resource for p in report.errors} == {i.label() for i in resources if i.broken}, report.errors
    assert sum(report.checked.values()) == len(resources)
    assert checked.exit_code == (5 if any(i.broken for i in resources) else 0)
    if not_used is not None:
        line = next((line for line in report.not_used if "bundle entries hold no resource" in line), "")
        assert int(re.search(r": (\d+) bundle entries", line).group(1) if line else 0) == not_used, report.not_used

    unmapped = _invoke(["unmap", str(source), "--out", str(tmp / "tables"), "--study", str(STUDY), "--json"])
    assert unmapped.exit_code == 0, unmapped.output
    accounts = json.loads(unmapped.stdout)["accounts"]
    assert all(a["read"] == a["used"] + sum(a["skipped"].values()) for a in accounts.values()), accounts
    assert sum(a["read"] for a in accounts.values()) == len(resources), accounts

    analyzed = _invoke(["analyze", "--store", str(source), "--study", str(STUDY), "--json"])
    assert analyzed.exit_code in (0, 4), analyzed.output
    if analyzed.exit_code == 0:
        account = json.loads(analyzed.stdout)["observations"]
        assert account["read"] == account["used"] + sum(account["skipped"].values()) == observations, account
    else:
        assert analyzed.output.startswith("fhir-msc: error:"), analyzed.output


@SETTINGS
@given(st.lists(line_mutations, min_size=1, max_size=4))
def test_mutated_store_lines_are_reported_or_accounted_for(mutations):
    files = {name: [Item(orjson.loads(line)) for line in lines] for name, lines in _mapped().items()}
    names = sorted(files)
    for kind, at, pick, junk in mutations:
        _mutate_line(files[names[at % len(names)]], kind, at // len(names), pick, junk)
    with tempfile.TemporaryDirectory(prefix="fhir-msc-prop-") as tmp:
        store = Path(tmp) / "store"
        _write_store(store, files)
        items = [i for items in files.values() for i in items]
        unreadable = {name for name, items in files.items()
                      if any(i.raw is not None or not isinstance(i.value, dict) for i in items)}
        if not unreadable:
            _check_jobs(store, Path(tmp), items, len(files["Observation.ndjson"]), None)
            return
        # a line that is no JSON object: every job reading its file names it and stops (repair drops it)
        jobs = [["validate", str(store), "--fhir-version", "R4"],
                ["unmap", str(store), "--out", str(Path(tmp) / "t"), "--study", str(STUDY)]]
        if unreadable & ANALYZED:
            jobs.append(["analyze", "--store", str(store), "--study", str(STUDY)])
        for args in jobs:
            result = _invoke(args)
            assert result.exit_code == 4, result.output
            assert re.match(r"fhir-msc: error: .*ndjson, line \d+: not", result.output), result.output


def _entries() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="fhir-msc-prop-") as tmp:
        write_bundle((orjson.loads(line) for lines in _mapped().values() for line in lines), Path(tmp) / "b.json")
        return orjson.loads((Path(tmp) / "b.json").read_bytes())["entry"]


def _mutate_entry(entries: list[Any], kind: str, at: int, pick: int) -> None:
    index = at % len(entries)
    entry = entries[index]
    if kind == "repeat":
        entries.insert(index, orjson.loads(orjson.dumps(entry)))
    elif kind == "junk-entry":
        entries[index] = NOT_OBJECTS[pick % len(NOT_OBJECTS)] if pick % 2 else {}
    elif not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
        return
    elif kind == "no-resource":
        del entry["resource"]
    elif kind == "resource-not-an-object":
        entry["resource"] = NOT_OBJECTS[pick % len(NOT_OBJECTS)]
    elif kind == "not-a-type":
        entry["resource"]["resourceType"] = NOT_TYPES[pick % len(NOT_TYPES)]
    elif kind == "drop-full-url":
        entry.pop("fullUrl", None)
    else:
        item = Item(entry["resource"], broken=bool(entry.get("broken")))
        _mutate_resource(item, kind, pick)
        entry["resource"], entry["broken"] = item.value, item.broken  # "broken" is ours: removed before writing


def _holds_resource(entry: Any) -> bool:
    resource = entry.get("resource") if isinstance(entry, dict) else None
    return isinstance(resource, dict) and isinstance(resource.get("resourceType"), str)


def _as_read(entry: dict) -> Item:
    """The entry's resource as read: with the id its fullUrl gives when it has none."""
    resource, url = dict(entry["resource"]), entry.get("fullUrl", "")
    if "id" not in resource and url.startswith("urn:uuid:"):
        resource["id"] = url[len("urn:uuid:"):]
    return Item(resource, broken=bool(entry.get("broken")))


@SETTINGS
@given(st.lists(entry_mutations, min_size=1, max_size=4))
def test_mutated_bundle_entries_are_reported_or_accounted_for(mutations):
    entries: list[Any] = _entries()
    for kind, at, pick in mutations:
        _mutate_entry(entries, kind, at, pick)
    resources = [_as_read(e) for e in entries if _holds_resource(e)]
    for entry in entries:
        if isinstance(entry, dict):
            entry.pop("broken", None)
    with tempfile.TemporaryDirectory(prefix="fhir-msc-prop-") as tmp:
        bundle = Path(tmp) / "bundle.json"
        bundle.write_bytes(orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
        observations = sum(i.value["resourceType"] == "Observation" for i in resources)
        _check_jobs(bundle, Path(tmp), resources, observations, len(entries) - len(resources))
