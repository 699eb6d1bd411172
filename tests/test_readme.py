"""Claims of the README that no other test backs: environment, config file, validate --json."""

import json
from pathlib import Path

from click.testing import CliRunner

from fhir_msc.cli import main
from fhir_msc.errors import ExitCode
from fhir_msc.server.client import connect


def invoke(*argv: str):
    return CliRunner().invoke(main, list(argv))


def _config(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_fhir_msc_study_names_the_study_definition(tmp_path, monkeypatch):
    monkeypatch.setenv("FHIR_MSC_STUDY", str(tmp_path / "from-env.yaml"))
    result = invoke("unmap", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.exit_code == ExitCode.BAD_INPUT and "from-env.yaml" in result.output, result.output


def test_environment_wins_over_the_config_file_for_options(tmp_path, monkeypatch):
    config = _config(tmp_path / "c.yaml", f"study: {tmp_path / 'from-config.yaml'}\n")
    monkeypatch.setenv("FHIR_MSC_STUDY", str(tmp_path / "from-env.yaml"))
    result = invoke("analyze", "--store", str(tmp_path), "--config", str(config))
    assert result.exit_code == ExitCode.BAD_INPUT and "from-env.yaml" in result.output, result.output
    monkeypatch.delenv("FHIR_MSC_STUDY")
    result = invoke("analyze", "--store", str(tmp_path), "--config", str(config))
    assert result.exit_code == ExitCode.BAD_INPUT and "from-config.yaml" in result.output, result.output


def test_config_file_credentials_win_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FHIR_MSC_TOKEN", "from-env")
    config = _config(tmp_path / "c.yaml", "token: from-file\n")
    client = connect("http://127.0.0.1:9/fhir", config=str(config))
    assert client.auth.header() == "Bearer from-file"


def test_a_config_file_others_can_read_is_refused(tmp_path):
    config = _config(tmp_path / "c.yaml", "token: secret\n", mode=0o644)
    result = invoke("verify", "--store", str(tmp_path), "--config", str(config))
    assert result.exit_code == ExitCode.BAD_INPUT and f"chmod 600 {config}" in result.output
    assert "secret" not in result.output


def test_store_on_the_command_line_wins_over_a_server_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FHIR_MSC_SERVER", "http://127.0.0.1:9/fhir")  # nothing listens: a request would be exit 8
    result = invoke("analyze", "--store", str(tmp_path))
    assert result.exit_code == ExitCode.BAD_INPUT and "no findings of NCT04288102 subjects" in result.output


def test_validate_json_names_bundle_entries_without_a_resource(tmp_path):
    bundle = tmp_path / "b.json"
    bundle.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": "Patient/gone"}},
        {"resource": {"resourceType": "Patient", "id": "p1"}, "request": {"method": "PUT", "url": "Patient/p1"}}]}))
    result = invoke("validate", str(bundle), "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["checked"] == {"Patient": 1} and len(document["not_used"]) == 1
    assert "b.json" in document["not_used"][0]


def test_every_exit_code_is_in_the_help_and_in_the_readme_list():
    help_text = " ".join(invoke("--help").output.split())
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    listed = readme[readme.index("**Exit codes**"):].split("\n\n")[0]
    for code in ExitCode:
        assert f" {int(code)} " in help_text, code
        assert f"`{int(code)}`" in listed, code


def test_map_without_a_target_or_with_two_is_bad_usage(tmp_path):
    for targets in ([], ["--store", str(tmp_path / "s"), "--bundle", str(tmp_path / "b.json")]):
        result = invoke("map", str(tmp_path), *targets)
        assert result.exit_code == ExitCode.USAGE and "give exactly one target" in result.output, result.output


def _readme_section(title: str) -> str:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start = readme.index(f"\n## {title}\n")
    return readme[start:readme.index("\n## ", start + 1)]


def _blocks(text: str) -> list[str]:
    """The fenced code blocks of ``text``, each without its fences and indentation."""
    blocks, inside = [], None
    for line in text.splitlines():
        if line.strip().startswith("```"):
            if inside is None:
                inside = []
            else:
                blocks.append("\n".join(inside))
                inside = None
        elif inside is not None:
            inside.append(line.strip())
    return blocks


def test_your_own_trial_runs_as_the_readme_shows_it(tmp_path, monkeypatch):
    import shlex

    monkeypatch.chdir(tmp_path)
    commands, shown_mistakes, shown_valid = _blocks(_readme_section("Your own trial"))
    steps = [shlex.split(line.split("#")[0]) for line in commands.splitlines()]
    assert [argv[1] for argv in steps if argv[0] == "fhir-msc"] == ["init", "check", "map", "analyze", "verify"]
    for argv in steps:
        if argv[0] != "fhir-msc":  # step 2, the editor
            continue
        result = invoke(*argv[1:])
        assert result.exit_code == 0, f"{argv}: {result.output}"
        if argv[1] == "check":
            assert result.output.strip() == shown_valid
    assert "reproduced 3/3 published results" in result.output
    mapped = invoke("map", "mytrial/tables", "--study", "mytrial/study.yaml", "--store", "mytrial/store", "--json")
    assert sum(json.loads(mapped.stdout)["counts"].values()) == 208
    study = tmp_path / "mytrial" / "study.yaml"
    study.write_text(study.read_text().replace("type: coded", "type: codedd", 1)
                     .replace("intervention: DRUGA}", "interventon: DRUGA}", 1))
    result = invoke("check", "mytrial/study.yaml")
    assert result.exit_code == ExitCode.BAD_INPUT and result.output.strip() == shown_mistakes
