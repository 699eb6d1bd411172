"""Refused ViewDefinitions: one line that starts with the JSON path of the problem and says what to do."""

from __future__ import annotations

import json

import pytest

from fhir_msc.analysis.views.definition import Column, load_view
from fhir_msc.analysis.views.python_engine import run_view
from fhir_msc.errors import ExitCode, ViewDefinitionError

ID = {"name": "id", "path": "id", "type": "id"}


def view(*select, **more) -> dict:
    return {"resourceType": "ViewDefinition", "resource": "Patient", "select": list(select), **more}


def test_columns_in_the_views_order_with_type_and_collection():
    loaded = load_view(view({"column": [ID], "select": [{"forEach": "name", "column": [
        {"name": "given", "path": "given", "type": "string", "collection": True}]}]},
        {"column": [{"name": "gender", "path": "gender"}]}))
    assert loaded.columns == (Column("id", "id", False, "id"), Column("given", "string", True, "given"),
                              Column("gender", None, False, "gender"))


@pytest.mark.parametrize(("bad", "message"), [
    ({"select": [{"column": [ID]}]}, "resource: missing"),
    (view({"column": [ID]}, resource="Patients"), "resource: 'Patients' is not a FHIR R4 resource type"),
    (view(), "select: missing"),
    (view({"column": [ID, {"name": "a", "path": "gender"}, {"name": "b", "path": "name.where("}]}),
     "select[0].column[2].path: 'name.where(' is not valid FHIRPath"),
    (view({"column": [ID, {"name": "2nd", "path": "gender"}]}), "select[0].column[1].name: '2nd' is not a usable name"),
    (view({"column": [{"name": "id"}]}), "select[0].column[0].path: missing"),
    (view({"forEach": 1, "column": [ID]}), "select[0].forEach: must be a FHIRPath string, not a number"),
    (view({"forEach": "name", "forEachOrNull": "name", "column": [ID]}), "select[0]: has both forEach and forEachOrNull"),
    (view({"column": [ID], "colum": []}), "select[0].colum: is not an element of a select"),
    (view({"unionAll": [{"column": [ID]}, {"column": [{"name": "other", "path": "id"}]}]}),
     "select[0].unionAll[1]: has columns ['other'] but unionAll[0] has ['id']"),
    (view({"column": [{"name": "id", "path": "name.where(use = %usual).family"}]}),
     "select[0].column[0].path: %usual is not a constant of this view"),
    (view({"column": [ID]}, constant=[{"name": "usual"}]), "constant[0]: constant 'usual' needs exactly one value[x]"),
    (view({"column": [ID]}, where=[{"path": 3}]), "where[0].path: missing"),
    (view({"column": [ID], "select": [{"column": [ID]}]}), "select: column 'id' is defined twice"),
])
def test_a_bad_view_is_refused_naming_the_json_path(bad, message):
    with pytest.raises(ViewDefinitionError) as refused:
        load_view(bad)
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)
    assert refused.value.exit_code == ExitCode.BAD_INPUT


def test_a_view_file_that_is_not_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "v.json"
    path.write_text('{"resource": "Patient",\n "select": [}')
    with pytest.raises(ViewDefinitionError, match=rf"^{path}: not JSON \(.* at line 2"):
        load_view(path)


def test_a_view_file_is_read_and_checked(tmp_path):
    path = tmp_path / "v.json"
    path.write_text(json.dumps(view({"column": [{"name": "id", "path": "id", "type": "wrong"}], "forEach": "@@"})))
    with pytest.raises(ViewDefinitionError, match=rf"^{path}: select\[0\]\.forEach: '@@' is not valid FHIRPath"):
        load_view(path)


def test_several_values_in_a_single_column_name_the_path_the_resource_and_the_fix():
    with pytest.raises(ViewDefinitionError) as refused:
        run_view(view({"column": [ID, {"name": "given", "path": "name.given", "type": "string"}]}),
                 [{"resourceType": "Patient", "id": "p1", "name": [{"given": ["A", "B"]}]}])
    assert str(refused.value) == ("select[0].column[1].path: 'name.given' gives 2 values for Patient/p1 but column "
                                  "'given' holds one; set \"collection\": true or narrow the path (e.g. first())")


def test_a_where_that_is_not_boolean_names_the_where_and_the_resource():
    with pytest.raises(ViewDefinitionError, match=r"^where\[0\]\.path: gives 'female' for Patient/p1, not true or false"):
        run_view(view({"column": [ID]}, where=[{"path": "gender"}]),
                 [{"resourceType": "Patient", "id": "p1", "gender": "female"}])
