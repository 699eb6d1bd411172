"""The study file's JSON Schema and reference page: shipped fresh, complete, and true of every study file we ship."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from fhir_msc.study import template
from fhir_msc.study.definition import REPO_ROOT, load_study
from fhir_msc.study.problems import InvalidStudyDefinition
from fhir_msc.study.schema import REFERENCE, reference_page, schema_json, study_schema

SHIPPED = REPO_ROOT / "fhir_msc" / "schemas" / template.SCHEMA_FILE
STUDY_FILES = sorted([*(REPO_ROOT / "mappings").glob("*.yaml"), *(REPO_ROOT / "tests" / "data").glob("*/study.yaml")])
STALE = "stale: rewrite it with `make schemas` (python -m fhir_msc.study.schema) and commit it"


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SHIPPED.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator(schema) -> jsonschema.Draft7Validator:
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_the_shipped_schema_is_a_fresh_generation_from_the_model():
    assert SHIPPED.read_text(encoding="utf-8") == schema_json(study_schema()), f"{SHIPPED}: {STALE}"


def test_the_reference_page_is_a_fresh_generation_from_the_schema(schema):
    page = REPO_ROOT / REFERENCE
    assert page.read_text(encoding="utf-8") == reference_page(schema, template.study_text()), f"{page}: {STALE}"


def test_every_key_of_every_part_is_described_in_the_schema(schema):
    parts = {"(top level)": schema, **schema["definitions"]}
    undescribed = [f"{name}.{key}" for name, part in parts.items()
                   for shape in [next((a for a in part.get("anyOf", []) if "properties" in a), part)]
                   for key, field in shape.get("properties", {}).items() if not field.get("description")]
    assert undescribed == []
    assert all(part.get("description") for part in parts.values())


def test_the_reference_page_lists_every_key_with_its_allowed_values(schema):
    page = (REPO_ROOT / REFERENCE).read_text(encoding="utf-8")
    for part in [schema, *schema["definitions"].values()]:
        shape = next((a for a in part.get("anyOf", []) if "properties" in a), part)
        for key in shape.get("properties", {}):
            assert f"| `{key}` |" in page, key
    assert "one of `quantity`, `coded`, `ordinal`, `integer`, `boolean`, `datetime`, `text`" in page
    assert "`adjusted-odds-ratio`, `mean-difference`" in page  # the effects of every kind, in one list
    assert "one of `male`, `female`, `other`, `unknown`" in page  # a required FHIR binding's codes
    assert page.count("```yaml") > 10 and template.study_text().splitlines()[3] in page


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_shipped_and_test_study_file_validates_against_the_schema(validator, path):
    assert [error.message for error in validator.iter_errors(yaml.safe_load(path.read_text()))] == []


@pytest.mark.parametrize("optional", [False, True], ids=["as written", "optional sections uncommented"])
def test_the_study_file_init_writes_validates_against_the_schema_and_loads(validator, tmp_path, optional):
    text = template.study_text()
    text = template.with_optional_sections(text) if optional else text
    assert [error.message for error in validator.iter_errors(yaml.safe_load(text))] == []
    (tmp_path / "study.yaml").write_text(text)
    study = load_study(tmp_path / "study.yaml")
    assert bool(study.time_to_event) == optional and bool(study.analysis.derived) == optional


@pytest.mark.parametrize("change, where", [
    (lambda raw: raw["arms"][0].update(interventon=raw["arms"][0].pop("intervention")), ["arms", 0]),
    (lambda raw: raw["outcomes"][0].update(type="codd"), ["outcomes", 0, "type"]),
    (lambda raw: raw["analysis"]["published"][0].update(effect="odds-ratoi"), ["analysis", "published", 0, "effect"]),
    (lambda raw: raw["analysis"]["published"][0].update(estimate=None), ["analysis", "published", 0, "estimate"]),
    (lambda raw: raw["analysis"]["published"][0].update(lower="about 1"), ["analysis", "published", 0, "lower"]),
    (lambda raw: raw["terms"]["sex"].update(M="man"), ["terms", "sex", "M"]),
    (lambda raw: raw["visits"][0].update(window=[1, 2, 3]), ["visits", 0, "window"]),
])
def test_the_schema_refuses_what_the_loader_refuses(validator, tmp_path, change, where):
    raw = yaml.safe_load(template.study_text())
    change(raw)
    assert list(jsonschema.exceptions.best_match(validator.iter_errors(raw)).absolute_path) == where
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(InvalidStudyDefinition, match="invalid study definition"):
        load_study(tmp_path / "study.yaml")


def test_written_numbers_the_loader_reads_are_numbers_to_the_schema(validator):
    raw = yaml.safe_load(template.study_text())
    entry = raw["analysis"]["published"][0]
    for written in ("<0.001", "> 5", "0.20", " 1e-3", 3, 0.5, {"value": 0.5}, {"test": "fisher", "value": "<0.001"}):
        entry["p"] = written
        assert list(validator.iter_errors(raw)) == [], written
    entry["means"] = {"TRT": {"value": 0.5, "decimals": 1}, "PBO": "12.0"}
    entry["estimate"] = "not estimable"
    assert list(validator.iter_errors(raw)) == []
