"""unmap accounts for every resource it reads; censored results keep their comparator both ways."""

import copy
import shutil

import pytest

from click.testing import CliRunner

from fhir_msc import Store, get_version
from fhir_msc.cli import main
from fhir_msc.fhir.bundle import write_bundle
from fhir_msc.fhir.roundtrip import check_roundtrip
from fhir_msc.fhir.unmapping import NO_ID, NOT_READABLE, REPEATED_ID, fhir_to_tables
from fhir_msc.store.source import BundleSource
from fhir_msc.tables.sdtm import split_comparator
from fhir_msc.study.definition import REPO_ROOT

GOOD = REPO_ROOT / "tests" / "data" / "bad" / "good"


def _by_type(store) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for resource in store.read_all():
        found.setdefault(resource["resourceType"], []).append(resource)
    return found


def test_unmap_accounts_for_every_resource_of_the_cohort(study, mapped, tmp_path):
    _, store = mapped
    result = fhir_to_tables(study, store, tmp_path)
    assert {t: a.read for t, a in result.accounts.items()} == store.counts()
    assert all(a.balanced for a in result.accounts.values())
    assert result.accounts["Observation"].used == sum(n for name, n in result.rows.items()
                                                      if name not in ("dm.csv", "ex.csv", "ae.csv"))
    assert result.accounts["AdverseEvent"].used == result.rows["ae.csv"]
    assert result.accounts["ResearchSubject"].used == result.rows["dm.csv"]
    assert result.accounts["MedicationAdministration"].used == result.rows["ex.csv"]
    assert result.skipped == 2 and set(result.accounts["Group"].skipped) == {"not a table row: DM lists the enrolled subjects"}


def test_unmap_names_each_skipped_resource_by_reason_and_says_how_many_more(study, demo_store, tmp_path):
    resources = _by_type(demo_store)
    observations = resources["Observation"]
    foreign = [{**o, "id": f"foreign-{i}", "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]}}
               for i, o in enumerate(observations[:7])]
    coded = next(o for o in observations if "valueCodeableConcept" in o)
    unknown_answer = {**coded, "id": "odd-answer", "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "0"}]}}
    quantity = next(o for o in observations if "valueQuantity" in o)
    bad_comparator = {**quantity, "id": "ad", "valueQuantity": {**quantity["valueQuantity"], "comparator": "ad"}}
    no_visit = {**quantity, "id": "no-visit", "encounter": {"reference": "Encounter/elsewhere"}}
    stranger = {"resourceType": "Patient", "id": "stranger", "identifier": [{"system": "urn:mrn", "value": "1"}]}
    lonely = {**resources["Patient"][0], "id": "lonely", "identifier": [{**resources["Patient"][0]["identifier"][0], "value": "X-1"}]}
    other_type = {"resourceType": "Basic", "id": "b", "identifier": [{"system": "urn:note", "value": "1"}], "code": {"text": "note"}}
    added = [*foreign, unknown_answer, bad_comparator, no_visit, stranger, lonely, other_type]
    everything = [r for rs in resources.values() for r in rs] + added
    write_bundle(everything, tmp_path / "bundle.json")

    result = fhir_to_tables(study, BundleSource(copy.deepcopy(everything)), tmp_path / "tables")
    accounts = result.accounts
    assert all(a.balanced for a in accounts.values()) and result.read == len(everything)
    assert accounts["Observation"].skipped == {"no outcome code of this study": 7, "unknown answer code": 1,
                                               "unknown visit": 1,
                                               "value not interpretable (no value, unit not convertible or comparator unknown)": 1}
    assert accounts["Patient"].skipped == {"no ResearchSubject of this study refers to it": 1,
                                           "no study subject identifier (a patient of another study or system)": 1}
    assert accounts["Basic"].read == 1 and accounts["Basic"].used == 0
    assert accounts["Observation"].examples["unknown answer code"] == [f"Observation/odd-answer ({coded['code']['coding'][-1]['code']}: http://snomed.info/sct|0)"]

    out = CliRunner().invoke(main, ["unmap", str(tmp_path / "bundle.json"), "--out", str(tmp_path / "t2")])
    assert out.exit_code == 0, out.output
    assert f"read {len(everything)} resources: " in out.output and "  Basic: 1 read = 0 used + 1 no table" in out.output
    assert "skipped: Observation 7 × no outcome code of this study: Observation/foreign-0, " in out.output
    assert "Observation/foreign-4 … and 2 more" in out.output


def test_a_censored_result_keeps_its_comparator_through_fhir_and_back(study, tmp_path):
    tables = tmp_path / "tables"
    shutil.copytree(GOOD, tables)
    lines = (tables / "re.csv").read_text().splitlines()
    lines[1] = lines[1].replace(",2.03,L,", ",<500,mL,")  # FVC below the limit, in mL
    (tables / "re.csv").write_text("\n".join(lines) + "\n")
    store = tmp_path / "store"
    assert CliRunner().invoke(main, ["map", str(tables), "--store", str(store)]).exit_code == 0
    fvc = next(o for o in _by_type(Store(store))["Observation"] if o["identifier"][0]["value"].endswith("/M36/FVC")
               and o["identifier"][0]["value"].startswith("NCT04288102-001"))
    assert fvc["valueQuantity"] == {"value": 0.5, "comparator": "<", "unit": "L", "system": "http://unitsofmeasure.org", "code": "L"}
    fhir_to_tables(study, Store(store), tmp_path / "back")
    assert ",<0.5,L,9,Month 36," in (tmp_path / "back" / "re.csv").read_text()
    lines[1] = lines[1].replace(",<500,mL,", ",<0.5,L,")
    (tables / "re.csv").write_text("\n".join(lines) + "\n")
    assert check_roundtrip(study, tables, get_version("R5"), tmp_path / "rt").lossless


@pytest.mark.parametrize("text, expected", [("<0.5", ("<", "0.5")), (">1000", (">", "1000")), ("<=2", ("<=", "2")),
                                            (">= 7", (">=", "7")), ("0.5", ("", "0.5")), ("", ("", ""))])
def test_the_comparator_of_a_censored_result_is_read_before_its_number(text, expected):
    assert split_comparator(text) == expected


def test_resources_unmap_cannot_read_are_skipped_by_reason_not_a_traceback(study, demo_store, tmp_path):
    """Found by tests/test_resource_properties.py: each of these was a KeyError or TypeError, or (a repeated
    Patient id) an account that did not balance."""
    resources = _by_type(demo_store)
    patient, observation, subject = resources["Patient"][0], resources["Observation"][0], resources["ResearchSubject"][0]
    odd = [{k: v for k, v in patient.items() if k != "id"}, {**patient, "id": ["a"]}, dict(patient),
           {**observation, "id": "junk-code", "code": [[]]}, {**observation, "id": "junk-date", "effectiveDateTime": None},
           {**subject, "id": "junk-period", "period": {"start": 5}}, {**subject, "id": "junk-meta", "meta": []}]
    everything = [r for rs in resources.values() for r in rs] + odd
    result = fhir_to_tables(study, BundleSource(copy.deepcopy(everything)), tmp_path / "tables")
    assert all(a.balanced for a in result.accounts.values()) and result.read == len(everything)
    assert result.accounts["Patient"].skipped == {NO_ID: 2, REPEATED_ID: 1}
    assert result.accounts["Observation"].skipped[NOT_READABLE] == 2
    assert result.accounts["ResearchSubject"].skipped == {NOT_READABLE: 1}
    assert result.accounts["ResearchSubject"].used == len(resources["ResearchSubject"]) + 1  # junk meta: still read
