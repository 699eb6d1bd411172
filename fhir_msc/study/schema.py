"""The study file's JSON Schema, generated from its pydantic model, and the reference page made from the schema.

The schema is draft-07, which YAML editors read (``# yaml-language-server: $schema=…``). Each key's description is
the docstring below its field in the model (read from the source here, not at import: ``model.StudyModel``). Both
are shipped or committed: ``fhir_msc/schemas/study.schema.json`` and ``docs/study-file.md``, rewritten by
``python -m fhir_msc.study.schema`` (``make schemas``); tests check they equal a fresh generation.
"""

from __future__ import annotations

import ast
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from pydantic.json_schema import GenerateJsonSchema

from . import adverse_events, definition, model, template
from .definition import REPO_ROOT, Study

SCHEMA_ID = "https://fhir-msc.org/schemas/study.schema.json"
DRAFT_07 = "http://json-schema.org/draft-07/schema#"
REFERENCE = "docs/study-file.md"  # in the source checkout
_DEFINITIONS = "#/definitions/"


class _WithoutFieldTitles(GenerateJsonSchema):
    """pydantic's schema without the titles it makes of field names ("Time To Event")."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def study_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07) of a study file."""
    generated = Study.model_json_schema(ref_template=_DEFINITIONS + "{model}", schema_generator=_WithoutFieldTitles)
    definitions = generated.pop("$defs")
    docs = field_docs(model, adverse_events, definition)
    for name, part in [("Study", generated), *definitions.items()]:
        _describe(part, docs.get(name, {}))
    for part in [generated, *definitions.values()]:  # a field without a docstring: its part's first sentence
        for field in _properties(part).values():
            if "description" not in field:
                field["description"] = next(_first_sentence(definitions[ref]["description"])
                                            for ref, _ in _references(field))
    generated.pop("title")
    return _draft_07({
        "$schema": DRAFT_07, "$id": SCHEMA_ID, "title": "fhir-msc study file",
        **generated, "description": "One YAML file describes a whole study for fhir-msc: its arms, visits, "
                                    "outcomes, tables and analysis plan.",
        "definitions": dict(sorted(definitions.items())),
    })


def field_docs(*modules: ModuleType) -> dict[str, dict[str, str]]:
    """Per class of the modules: each field's docstring (the string right below it), its base classes' too."""
    docs: dict[str, dict[str, str]] = {}
    for module in modules:
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.ClassDef):
                inherited = [docs.get(base.id, {}) for base in node.bases if isinstance(base, ast.Name)]
                docs[node.name] = {**{k: v for parent in inherited for k, v in parent.items()}, **{
                    field.target.id: inspect.cleandoc(doc.value.value)
                    for field, doc in zip(node.body, node.body[1:])
                    if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                    and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)}}
    return docs


def _describe(part: dict[str, Any], docs: dict[str, str]) -> None:
    """Give a model's properties their docstrings; a model written in other forms too (anyOf) is described once."""
    shape = next((a for a in part.get("anyOf", []) if "properties" in a), part)
    if shape is not part:
        part["title"], part["description"] = shape.pop("title"), shape.pop("description", "")
    for name, field in shape.get("properties", {}).items():
        if name in docs:
            field["description"] = _markdown(docs[name])
    if "description" in part:
        part["description"] = _markdown(inspect.cleandoc(part["description"]))


def _markdown(text: str) -> str:
    """A docstring's reStructuredText literals (``x``) as Markdown's (`x`), which editors show."""
    return text.replace("``", "`")


def _draft_07(node: Any) -> Any:
    """Draft 2020-12 constructs pydantic writes, as draft-07 has them: a tuple's ``prefixItems`` as ``items`` (a
    list); and a union of lists of allowed values as one list."""
    if isinstance(node, list):
        return [_draft_07(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _draft_07(value) for key, value in node.items()}
    if "prefixItems" in node:
        node["items"] = node.pop("prefixItems")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    alternatives = node.get("anyOf", [])
    listed = [a for a in alternatives if set(a) == {"enum", "type"} and a["type"] == "string"]
    if len(listed) > 1:
        merged = {"type": "string", "enum": [value for a in listed for value in a["enum"]]}
        node["anyOf"] = [merged, *(a for a in alternatives if a not in listed)]
        if len(node["anyOf"]) == 1:
            node.update(node.pop("anyOf")[0])
    return node


def schema_json(schema: dict[str, Any]) -> str:
    """The schema as the shipped file holds it."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


# --- the reference page ----------------------------------------------------------------------------------------

def reference_page(schema: dict[str, Any], example: str) -> str:
    """``docs/study-file.md``: every key of every part of the file with its type, default and allowed values, an
    example of each part (from ``example``, a study file), and ``example`` whole."""
    sections = _sections(schema)
    titles = {name: title for name, (title, _) in sections.items()}
    sample = yaml.safe_load(template.with_optional_sections(example))
    lines = [
        "# The study file", "",
        "<!-- Generated from fhir_msc/schemas/study.schema.json by `python -m fhir_msc.study.schema`: do not edit. -->",
        "",
        "One YAML file describes a whole study: its arms, treatments, visits, outcomes, the tables they are read from "
        "and the analysis plan. `fhir-msc init DIR` writes a commented one with synthetic tables that map, analyse "
        "and verify as written ([the example](#a-complete-example) below); `fhir-msc check FILE` reports every "
        "mistake in one, one line each with its YAML path and line. An editor with a YAML language server (e.g. VS "
        "Code's YAML extension) completes and checks keys from the JSON Schema when the file's first line is "
        "`# yaml-language-server: $schema=study.schema.json` (`init` writes the schema beside the file; it ships "
        "in the package as `fhir_msc/schemas/study.schema.json`).",
        "",
        "A key not listed here is an error. Paths are written as in messages: `arms[0].code` is the `code` of the "
        "first arm, `interventions.<key>` an entry of the `interventions` mapping under any key.",
        "",
    ]
    lines += [f"- [{'the top level' if name == 'Study' else f'`{title}`'}](#{_anchor(name)})"
              for name, (title, _) in sections.items()] + [""]
    for name, (title, paths) in sections.items():
        lines += _section(name, title, paths, _part(schema, name), titles, sample)
    lines += ["## A complete example", "",
              "What `fhir-msc init` writes (its optional sections commented out):", "",
              "```yaml", example.rstrip("\n"), "```", ""]
    return "\n".join(lines)


def _part(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return schema if name == "Study" else schema["definitions"][name]


def _sections(schema: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
    """Each model by its name, in the order of the file: its title (its YAML path, or its name where it is at
    several) and every path of it."""
    paths: dict[str, list[str]] = {"Study": ["(top level)"]}

    def visit(name: str, prefix: str) -> None:
        for key, field in _properties(_part(schema, name)).items():
            for ref, suffix in _references(field):
                first = ref not in paths
                paths.setdefault(ref, []).append(f"{prefix}{key}{suffix}")
                if first:
                    visit(ref, f"{prefix}{key}{suffix}.")
    visit("Study", "")
    return {name: (found[0] if len(found) == 1 else name, found) for name, found in paths.items()}


def _properties(part: dict[str, Any]) -> dict[str, Any]:
    shape = next((a for a in part.get("anyOf", []) if "properties" in a), part)
    return shape.get("properties", {})


def _references(field: dict[str, Any], suffix: str = "") -> Iterator[tuple[str, str]]:
    """The models a field holds, each with the path suffix that reaches it (``[]``, ``.<key>``)."""
    if "$ref" in field:
        yield field["$ref"].removeprefix(_DEFINITIONS), suffix
    for alternative in field.get("anyOf", []):
        yield from _references(alternative, suffix)
    items = field.get("items")
    if isinstance(items, dict):
        yield from _references(items, suffix + "[]")
    if isinstance(field.get("additionalProperties"), dict):
        yield from _references(field["additionalProperties"], suffix + ".<key>")


def _anchor(name: str) -> str:
    return f"part-{name.lower()}"


def _section(name: str, title: str, paths: list[str], part: dict[str, Any], titles: dict[str, str],
             sample: Any) -> list[str]:
    lines = [f'<a id="{_anchor(name)}"></a>', "", "## The top level" if name == "Study" else f"## `{title}`", ""]
    if part.get("description"):
        lines += [_one_line(part["description"]), ""]
    if len(paths) > 1:
        lines += ["At " + ", ".join(f"`{path}`" for path in paths) + ".", ""]
    if "anyOf" in part:
        written = [_type(a, titles) for a in part["anyOf"] if "properties" not in a]
        lines += ["Written as " + " or as ".join(written) + ", or as a mapping:", ""]
    required = set(next((a for a in part.get("anyOf", []) if "properties" in a), part).get("required", []))
    lines += ["| key | type | required or default | description |", "|---|---|---|---|"]
    for key, field in _properties(part).items():
        need = "required" if key in required else _default(field)
        lines.append(f"| `{key}` | {_type(field, titles)} | {need} | {_cell(field['description'])} |")
    lines.append("")
    shown = _example(sample, paths[0])
    if shown is not None:
        lines += ["Example:", "", "```yaml", shown, "```", ""]
    return lines


def _type(field: dict[str, Any], titles: dict[str, str]) -> str:
    """A field's type in words, with links to the parts it holds."""
    if "$ref" in field:
        name = field["$ref"].removeprefix(_DEFINITIONS)
        return f"[`{titles[name]}`](#{_anchor(name)})"
    if "enum" in field:
        return "one of " + ", ".join(f"`{json.dumps(value)}`" if value == "" else f"`{value}`" for value in field["enum"])
    if "anyOf" in field:
        kinds = [_type(a, titles) for a in field["anyOf"] if a != {"type": "null"}]
        return " or ".join(dict.fromkeys(kinds))
    kind = field.get("type")
    if kind == "array":
        items = field.get("items")
        if isinstance(items, list):
            return "[" + ", ".join(_type(item, titles) for item in items) + "]"
        kind = _type(items, titles) if items else "anything"
        return "list of " + (kind + "s" if kind in ("string", "integer", "number", "boolean") else kind)
    if kind == "object":
        values = field.get("additionalProperties")
        return "mapping of key → " + _type(values, titles) if isinstance(values, dict) else "any mapping"
    if kind == "string" and "pattern" in field:
        return "string: a number as written, may start with < or >" + (
            ", or `not estimable`" if "not estimable" in field["pattern"] else "")
    return {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}.get(str(kind), "any")


def _default(field: dict[str, Any]) -> str:
    if "default" not in field or field["default"] is None:
        return "optional"
    return f"`{json.dumps(field['default'], ensure_ascii=False)}`"


def _first_sentence(text: str) -> str:
    return _one_line(text).split(". ")[0].rstrip(".") + "." if text else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|")


def _example(sample: Any, path: str) -> str | None:
    """The example study's value at ``path`` (its first list item, its first mapping entry) as YAML, if short."""
    if path == "(top level)":
        return None
    value = sample
    for part in path.replace("[]", ".[]").split("."):
        if part == "[]":
            value = value[0] if isinstance(value, list) and value else None
        elif part == "<key>":
            value = next(iter(value.values()), None) if isinstance(value, dict) else None
        else:
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return None
    text = yaml.safe_dump(value, sort_keys=False, default_flow_style=None, allow_unicode=True, width=100)
    text = text.removesuffix("...\n").rstrip("\n")
    return text if text.count("\n") < 12 else None


def main() -> None:
    """Rewrite the shipped schema and, in a source checkout, the reference page."""
    schema = study_schema()
    shipped = Path(inspect.getfile(definition)).parent.parent / "schemas" / template.SCHEMA_FILE
    shipped.write_text(schema_json(schema), encoding="utf-8")
    print(f"wrote {shipped}")
    page = REPO_ROOT / REFERENCE
    if page.parent.is_dir():
        page.write_text(reference_page(schema, template.study_text()), encoding="utf-8")
        print(f"wrote {page}")


if __name__ == "__main__":
    main()
