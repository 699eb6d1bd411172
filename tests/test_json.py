"""--json for scripts: numbers, not display strings, in documents that follow the shipped JSON Schemas."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import click
import jsonschema
import pytest
from click.testing import CliRunner
from referencing import Registry, Resource

from fhir_msc import Store
from fhir_msc.account import Account
from fhir_msc.analysis.export import analyze_json, schema
from fhir_msc.analysis.frame import Comparison
from fhir_msc.analysis.report import comparison_table, format_p, render
from fhir_msc.analysis.stats import EXACT_NOT_ASKED, compare_binary, odds_ratio_exact
from fhir_msc.cli import MAX_SHOWN, main
from fhir_msc.errors import ExitCode

MINI = Path(__file__).parent / "data" / "mini-study"
REGISTRY = Registry().with_resources(
    (schema(name)["$id"], Resource.from_contents(schema(name))) for name in ("analyze", "verify", "validate"))


def invoke(*argv: str):
    return CliRunner().invoke(main, list(argv))


def valid(document: dict, name: str) -> dict:
    """``document`` after checking it against the shipped schema ``name`` (raises on any violation)."""
    jsonschema.Draft202012Validator.check_schema(schema(name))
    jsonschema.Draft202012Validator(schema(name), registry=REGISTRY).validate(document)
    return document


def keys(value) -> set[str]:
    """Every object key anywhere in a JSON value."""
    if isinstance(value, dict):
        return set(value).union(*(keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(keys(v) for v in value))
    return set()


def _commands() -> dict[str, click.Command]:
    """Every command, those of a group (``view run``) included."""
    found = {}
    for name, command in main.commands.items():
        subcommands = command.commands.items() if isinstance(command, click.Group) else [("", command)]
        found.update({f"{name} {sub}".strip(): leaf for sub, leaf in subcommands})
    return found


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_command_takes_json(command):
    assert "as_json" in {p.name for p in _commands()[command].params if isinstance(p, click.Option)}


def test_analyze_json_follows_the_schema_with_numbers(demo_store):
    result = invoke("analyze", "--store", str(demo_store.path), "--visit", "M36", "--json")
    assert result.exit_code == 0, result.stderr
    document = valid(json.loads(result.stdout), "analyze")
    by_outcome = {c["outcome"]: c for c in document["comparisons"]}
    ct = by_outcome["CTNORM"]
    assert [(a["role"], a["code"], a["events"], a["n"]) for a in ct["arms"]] == [("treatment", "MSC", 23, 49),
                                                                                ("control", "PBO", 10, 29)]
    assert ct["effect"]["effect"] == "odds-ratio" and round(ct["effect"]["estimate"], 2) == 1.68
    assert (round(ct["effect"]["lower"], 2), round(ct["effect"]["upper"], 2)) == (0.65, 4.34)
    assert set(ct["p_values"]) == {"fisher_exact", "chi_square", "chi_square_yates", "likelihood_ratio",
                                   "wald_odds_ratio", "wald_risk_difference", "wald_relative_risk"}
    assert set(ct["estimates"]) == {"odds-ratio", "exact-odds-ratio", "relative-risk", "risk-difference",
                                    "risk-difference-newcombe"}
    assert round(ct["estimates"]["relative-risk"]["estimate"], 4) == round((23 / 49) / (10 / 29), 4)
    assert ct["p_values"]["wald_odds_ratio"] == ct["effect"]["p"]
    gh = by_outcome["SF36GH"]
    assert set(gh["p_values"]) == {"t_pooled", "t_welch", "mann_whitney", "wilcoxon"}
    assert gh["arms"][0]["median"] == 67.0 and round(gh["effect"]["estimate"], 2) == 12.86
    assert not keys(document) & {"MSC", "PBO", "Placebo"}  # keys never depend on the study's arms


def test_format_json_is_the_same_document(demo_store):
    by_flag = invoke("analyze", "--store", str(demo_store.path), "--visit", "M36", "--outcome", "REINF", "--json")
    by_format = invoke("analyze", "--store", str(demo_store.path), "--visit", "M36", "--outcome", "REINF",
                       "--format", "json")
    assert by_flag.exit_code == by_format.exit_code == 0
    assert json.loads(by_format.stdout) == json.loads(by_flag.stdout)


def test_estimates_name_functions_that_exist(demo_store):
    document = json.loads(invoke("analyze", "--store", str(demo_store.path), "--visit", "M36", "--json").stdout)
    named = {e["function"].split(";")[0] for c in document["comparisons"] for e in c["estimates"].values()}
    ours = {name for name in named if name.startswith("fhir_msc.")}
    assert ours
    for name in ours:
        module, _, function = name.rpartition(".")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_verify_json_has_the_result_and_counts(demo_store):
    result = invoke("verify", "--store", str(demo_store.path), "--json")
    assert result.exit_code == 0, result.stderr
    document = valid(json.loads(result.stdout), "verify")
    assert document["result"] == "reproduced"
    assert document["counts"] == {"published": 3, "reproduced": 3, "not_reproduced": 0}
    first = document["results"][0]
    assert first["published"]["arms"][0] == {"role": "treatment", "code": "MSC", "events": 23, "n": 49,
                                             "percent": {"value": 46.94, "decimals": 2, "comparator": ""}}
    assert [(f["field"], f["arm"], f["expected"], f["got"]) for f in first["fields"] if f["field"] == "percent"] == [
        ("percent", "MSC", "46.94", "46.94"), ("percent", "PBO", "34.48", "34.48")]
    assert round(first["reproduced"]["effect"]["estimate"], 2) == first["published"]["estimate"]


def test_verify_json_on_a_mismatch_says_not_reproduced(tmp_path):
    (tmp_path / "study.yaml").write_text((MINI / "study.yaml").read_text().replace("upper: 61.84", "upper: 70.00"))
    invoke("map", str(MINI / "tables"), "--store", str(tmp_path / "s"), "--study", str(tmp_path / "study.yaml"))
    result = invoke("verify", "--store", str(tmp_path / "s"), "--study", str(tmp_path / "study.yaml"), "--json")
    assert result.exit_code == ExitCode.MISMATCH
    document = valid(json.loads(result.stdout), "verify")
    assert document["result"] == "not reproduced" and document["counts"]["not_reproduced"] == 1
    assert [c["mismatches"] for c in document["results"] if not c["matches"]] == [
        ["upper: expected 70.00, got 61.84 (2 decimals)"]]
    wrong = [(f["field"], f["expected"], f["got"]) for c in document["results"] for f in c["fields"] if not f["matches"]]
    assert wrong == [("upper", "70.00", "61.84")]


def test_validation_errors_are_objects_and_the_human_list_is_cut(tmp_path):
    Store(tmp_path).write([{"resourceType": "Observation", "id": f"o{i}", "status": "final"} for i in range(60)])
    result = invoke("validate", str(tmp_path), "--json")
    assert result.exit_code == ExitCode.INVALID
    document = valid(json.loads(result.stdout), "validate")
    assert document["ok"] is False and document["error_count"] == 60 and len(document["errors"]) == 50  # code missing
    assert {"resource": "Observation/o0", "path": "code", "message": "Field required"} in document["errors"]
    human = invoke("validate", str(tmp_path))
    assert human.stderr.count("invalid: Observation/") == MAX_SHOWN
    assert f"invalid: … and {60 - MAX_SHOWN} more" in human.stderr


def test_tiny_p_prints_as_below_one_in_a_thousand_and_json_keeps_it():
    summary = compare_binary((40, 5), (50, 50))
    comparison = Comparison(outcome="X", display="X", visit="V", kind="binary", arms=("A", "B"),
                            effect=summary.odds_ratio, summary=summary)
    assert summary.odds_ratio.p_value < 1e-6
    table = render(comparison_table([comparison]), "table")
    assert "<0.001" in table and " 0.0 " not in table
    assert [format_p(p) for p in (0.0004, 0.001, 0.0284, None, float("nan"))] == ["<0.001", "0.001", "0.028", "—", "—"]


def test_demo_on_another_study_with_json(tmp_path):
    result = invoke("demo", "--tables", str(MINI / "tables"), "--study", str(MINI / "study.yaml"),
                    "--workdir", str(tmp_path / "demo"), "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    valid(document["verify"], "verify")
    for report in document["validation"].values():
        valid(report, "validate")
    assert document["verify"]["study"] == "MINI-001" and document["verify"]["counts"]["reproduced"] == 2
    assert {a["arm"]: a["subjects"] for a in document["subjects_by_arm"]} == {"Treatment": 8, "Control": 6}
    assert document["roundtrip"]["lossless"] is True and document["mapped"]["rejections"] == []
    assert Path(document["report"]["html"]).is_file()


def test_unmap_json_counts_rows(tmp_path):
    study = ["--study", str(MINI / "study.yaml")]
    assert invoke("map", str(MINI / "tables"), "--store", str(tmp_path / "s"), *study).exit_code == 0
    result = invoke("unmap", str(tmp_path / "s"), "--out", str(tmp_path / "t"), "--json", *study)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["rows"]["dm.csv"] == 14


def test_analyze_json_says_why_the_exact_odds_ratio_is_missing_and_computes_it_when_asked(demo_store):
    args = ("analyze", "--store", str(demo_store.path), "--visit", "M36", "--outcome", "CTNORM", "--json")
    plain, asked = (invoke(*args, *extra) for extra in ((), ("--exact-odds-ratio",)))
    assert plain.exit_code == asked.exit_code == 0, plain.stderr + asked.stderr
    (left,), (computed,) = (valid(json.loads(r.stdout), "analyze")["comparisons"] for r in (plain, asked))
    missing = left["estimates"].pop("exact-odds-ratio")
    assert (missing["estimate"], missing["lower"], missing["upper"], missing["p"]) == (None, None, None, None)
    assert missing["note"] == EXACT_NOT_ASKED
    exact = odds_ratio_exact(23, 26, 10, 19)  # CTNORM at M36: 23/49 vs 10/29
    got = computed["estimates"].pop("exact-odds-ratio")
    assert (got["estimate"], got["lower"], got["upper"], got["p"], got["note"]) == (
        exact.estimate, exact.lower, exact.upper, exact.p_value, "")
    assert left == computed and left["effect"]["effect"] == "odds-ratio"  # the rest is the same; the plan's effect stays


def test_what_was_not_computed_is_null(study):
    summary = compare_binary((0, 0), (5, 4))  # no events at all: χ² undefined
    comparison = Comparison(outcome="CTNORM", display="CT", visit="M36", kind="binary", arms=("MSC", "PBO"),
                            effect=summary.odds_ratio, summary=summary)
    document = valid(analyze_json(study, [comparison], Account(read=9, used=9)), "analyze")
    assert document["comparisons"][0]["p_values"]["chi_square"] is None
    assert document["comparisons"][0]["p_values"]["chi_square_yates"] is None
    assert document["comparisons"][0]["p_values"]["likelihood_ratio"] is None
    for key in ("odds-ratio", "exact-odds-ratio", "relative-risk"):  # no events in either arm: no ratio, never a number
        estimate = document["comparisons"][0]["estimates"][key]
        assert (estimate["estimate"], estimate["lower"], estimate["upper"]) == (None, None, None)
        assert estimate["note"] == "not estimable: no events in either arm"
    table = render(comparison_table([comparison]), "table")
    assert "not estimable" in table and "Fisher 1.000; χ² —" in table


def test_a_corrected_zero_cell_and_an_open_exact_ci_are_said_and_valid(study):
    summary = compare_binary((0, 5), (10, 12), exact=True)
    comparison = Comparison(outcome="CTNORM", display="CT", visit="M36", kind="binary", arms=("MSC", "PBO"),
                            effect=summary.exact_odds_ratio, summary=summary)
    document = valid(analyze_json(study, [comparison], Account(read=22, used=22)), "analyze")
    estimates = document["comparisons"][0]["estimates"]
    assert "Haldane-Anscombe" in estimates["odds-ratio"]["note"] and "Haldane-Anscombe" in estimates["relative-risk"]["note"]
    assert (estimates["exact-odds-ratio"]["estimate"], estimates["exact-odds-ratio"]["lower"]) == (0.0, 0.0)
    assert "zero cell" in estimates["exact-odds-ratio"]["note"]


def test_a_failure_with_json_is_an_error_document_on_stdout(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    failed = invoke("analyze", "--store", str(empty), "--json")
    assert failed.exit_code == ExitCode.BAD_INPUT
    message = failed.stderr.splitlines()[-1].removeprefix("fhir-msc: error: ")  # after the note naming the study used
    assert "no findings" in message and json.loads(failed.stdout) == {"error": {"code": 4, "message": message}}
    misused = invoke("analyze", "--json", "--no-such-option")
    assert misused.exit_code == ExitCode.USAGE and "No such option" in misused.stderr
    assert json.loads(misused.stdout)["error"]["code"] == 2 and "--no-such-option" in json.loads(misused.stdout)["error"]["message"]
    both = invoke("analyze", "--store", str(empty), "--server", "http://127.0.0.1:9", "--json")
    assert both.exit_code == ExitCode.USAGE
    assert json.loads(both.stdout) == {"error": {"code": 2, "message": "give exactly one of --store PATH or --server URL"}}
    assert invoke("analyze", "--store", str(empty)).stdout == ""  # without --json, stdout stays empty


def test_ctrl_c_with_json_is_an_error_document_with_exit_130(tmp_path, monkeypatch):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("fhir_msc.jobs.validate", interrupted)
    result = invoke("validate", str(tmp_path), "--json")
    assert result.exit_code == ExitCode.INTERRUPTED == 130
    assert json.loads(result.stdout) == {"error": {"code": 130, "message": "interrupted: nothing was changed: rerun the same command"}}
    assert result.stderr.endswith("\nfhir-msc: interrupted.\nfhir-msc: nothing was changed: rerun the same command\n")
