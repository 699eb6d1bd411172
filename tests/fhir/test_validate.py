"""Validation per shape gives the fhir.resources model's verdict, resource by resource."""

import copy

import pytest

from fhir_msc import get_version
from fhir_msc.fhir.validate import ShapeValidator, validate_resource

BAD_VALUES = ["", " padded", "2020-13-45", "has space", "not a uri", "x" * 2000, "\u0000"]


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
