"""Property test: whatever happens to the bytes or the CSV of the tables, `map` accounts for every row.

Random byte-level (encodings, BOM, line endings, truncation, junk) and CSV-level (quotes,
delimiters, extra or missing fields, repeated rows, odd numbers and dates) mutations of a
3-subject copy of the fixture must give exit 0, 3 or 4 without a traceback, an account
that balances, a store that validates, and a replay of the rejects that converges.
Bounded and derandomized: no example database, the same examples on every run.
"""

from __future__ import annotations

import codecs
import json
import tempfile
from pathlib import Path

from click.testing import CliRunner
from cohort_subset import write_subset
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fhir_msc import Store, get_version
from fhir_msc.cli import main
from fhir_msc.jobs import validate
from fhir_msc.study.definition import REPO_ROOT

COHORT = REPO_ROOT / "fixtures" / "msc-covid19"
TABLES = sorted(p.name for p in COHORT.glob("*.csv"))
ODD_VALUES = ["1_000", "٣", "3.1", "2020-02-30", "2020-13", "2023-03-27T25:61:00Z", "2023-03-27T10:30", "1e999",
              "", "nan", " 5 ", "50,9", '"', 'x"y', "\x00", "é", "9" * 140_000]


def _byte_mutation(data: bytes, kind: str, at: float, junk: bytes) -> bytes:
    cut = int(len(data) * at)
    if kind == "utf-16":
        return data.decode("utf-8", "replace").encode("utf-16")
    if kind == "bom":
        return codecs.BOM_UTF8 + data
    if kind == "crlf":
        return data.replace(b"\n", b"\r\n")
    if kind == "cr":
        return data.replace(b"\n", b"\r")
    if kind == "truncate":
        return data[:cut]
    return data[:cut] + junk + data[cut:]  # junk


def _csv_mutation(lines: list[str], kind: str, row: int, column: int, value: str) -> list[str]:
    if not lines:
        return lines
    row = row % len(lines)
    fields = lines[row].split(",")
    column %= len(fields)
    if kind == "quote":
        fields[column] = '"' + fields[column]
    elif kind == "semicolons":
        return [line.replace(",", ";") for line in lines]
    elif kind == "drop-field":
        del fields[column]
    elif kind == "extra-field":
        fields.insert(column, value)
    elif kind == "repeat-row":
        return [*lines[:row + 1], lines[row], *lines[row + 1:]]
    else:  # odd value
        fields[column] = value
    return [*lines[:row], ",".join(fields), *lines[row + 1:]]


byte_mutations = st.tuples(st.just("bytes"), st.sampled_from(TABLES),
                           st.sampled_from(["utf-16", "bom", "crlf", "cr", "truncate", "junk"]),
                           st.floats(0, 1), st.binary(min_size=1, max_size=8))
csv_mutations = st.tuples(st.just("csv"), st.sampled_from(TABLES),
                          st.sampled_from(["quote", "semicolons", "drop-field", "extra-field", "repeat-row", "value"]),
                          st.integers(0, 200), st.integers(0, 10), st.sampled_from(ODD_VALUES))


def _apply(tables: Path, mutation: tuple) -> None:
    path = tables / mutation[1]
    if mutation[0] == "bytes":
        path.write_bytes(_byte_mutation(path.read_bytes(), *mutation[2:]))
    else:
        lines = path.read_bytes().decode("utf-8", "surrogateescape").splitlines()
        text = "\n".join(_csv_mutation(lines, *mutation[2:])) + "\n"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))


def _map(source: Path, store: Path) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["map", str(source), "--store", str(store), "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 3, 4), result.output
    if result.output.startswith("fhir-msc: error:"):  # input unusable: nothing was done
        assert result.exit_code == 4 and len(result.output.splitlines()) == 1
        return 4, {"accounts": []}
    return result.exit_code, json.loads(result.stdout)


def _snapshot(store: Path) -> tuple[dict, dict]:
    rejects = {p.name: p.read_bytes() for p in sorted((store / "rejects").glob("*"))} if (store / "rejects").exists() else {}
    return {t: {r["id"]: r for r in Store(store).read(t)} for t in Store(store).resource_types()}, rejects


@settings(max_examples=25, derandomize=True, database=None, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(byte_mutations, csv_mutations), min_size=1, max_size=3))
def test_mutated_tables_are_accounted_for_and_replay_converges(mutations):
    with tempfile.TemporaryDirectory(prefix="fhir-msc-prop-") as tmp:
        tables, store = Path(tmp) / "tables", Path(tmp) / "store"
        write_subset(COHORT, tables, 3)
        for mutation in mutations:
            _apply(tables, mutation)
        _, result = _map(tables, store)
        assert all(a["read"] == a["mapped"] + a["rejected"] for a in result["accounts"]), result["accounts"]
        if Store(store).resource_types():
            report = validate(store, get_version("R4"))
            assert report.ok, report.errors[:3]
        _assert_replay_converges(store)


def _assert_replay_converges(store: Path, passes: int = 5) -> None:
    """Replaying the rejects as they are reaches a fixed point: nothing left, or the same store and rejects again.

    It may take more than one pass: of rows repeated in one input, one is mapped per pass.
    """
    before = _snapshot(store)
    for _ in range(passes):
        if not (store / "rejects").exists():
            return
        _map(store / "rejects", store)
        after = _snapshot(store)
        if after == before:
            return
        before = after
    raise AssertionError(f"replay did not converge in {passes} passes")
