"""Lossless round trips, both directions, both FHIR versions, through a store and a bundle."""

import pytest

from fhir_msc import Store, get_version
from fhir_msc.fhir.bundle import read_bundle, write_bundle
from fhir_msc.fhir.roundtrip import check_roundtrip, compare_stores, compare_tables
from fhir_msc.fhir.unmapping import fhir_to_tables
from fhir_msc.store.source import BundleSource


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_round_trip_is_lossless(study, cohort, tmp_path, version):
    result = check_roundtrip(study, cohort, get_version(version), tmp_path)
    assert result.differences == []
    assert result.lossless


def test_tables_come_back_byte_identical(study, cohort, mapped, tmp_path):
    _, store = mapped
    fhir_to_tables(study, store, tmp_path)
    for source in cohort.iterdir():
        assert (tmp_path / source.name).read_bytes() == source.read_bytes(), source.name


def test_bundle_round_trip_restores_the_store(mapped, tmp_path):
    _, store = mapped
    write_bundle(store.read_all(), tmp_path / "bundle.json")
    copy = Store(tmp_path / "copy")
    copy.write(read_bundle(tmp_path / "bundle.json"))
    assert compare_stores(store, copy) == []


def test_unmap_from_bundle_equals_cohort(study, cohort, mapped, tmp_path):
    _, store = mapped
    write_bundle(store.read_all(), tmp_path / "bundle.json")
    fhir_to_tables(study, BundleSource(list(read_bundle(tmp_path / "bundle.json"))), tmp_path / "tables")
    assert compare_tables(cohort, tmp_path / "tables") == []


def test_a_changed_value_is_detected(study, cohort, mapped, tmp_path):
    _, store = mapped
    fhir_to_tables(study, store, tmp_path)
    lines = (tmp_path / "qs.csv").read_text().splitlines(keepends=True)
    fields = lines[1].split(",")
    fields[4] = "0"
    lines[1] = ",".join(fields)
    (tmp_path / "qs.csv").write_text("".join(lines))
    differences = compare_tables(cohort, tmp_path)
    assert len(differences) == 2 and "row lost" in differences[0] and "row added" in differences[1]
