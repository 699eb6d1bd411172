"""The command line: every command callable with an argv list, exit codes that mean something."""

import json
import re

import click
import pytest
from click.testing import CliRunner
from storesafety import not_owner_only

from fhir_msc import Store
from fhir_msc.cli import main
from fhir_msc.errors import ExitCode


def invoke(*argv: str):
    return CliRunner().invoke(main, list(argv))


@pytest.mark.parametrize("command", ["map", "unmap", "validate", "demo", "analyze", "verify", "push", "pull", "sync", "repair",
                                     "hospital-pull", "init", "check"])
def test_help_teaches_every_command(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and f"{command} [OPTIONS]" in result.output
    for param in main.commands[command].params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help and param.help.endswith("."), param.name


def test_demo_prints_store_counts_and_lossless(tmp_path, umask_022):
    result = invoke("demo", "--workdir", str(tmp_path / "demo"))
    assert result.exit_code == 0, result.output
    assert not_owner_only(tmp_path / "demo" / "store", tmp_path / "demo" / "bundle.json") == []
    assert (tmp_path / "demo").stat().st_mode & 0o777 == 0o700
    assert f"store: {tmp_path / 'demo' / 'store'}" in result.output
    assert re.search(r"ResearchSubject\s+100\n", result.output)
    assert re.search(r"MedicationAdministration\s+300\n", result.output)
    assert "MSC 65" in result.output and "Placebo 35" in result.output
    assert "round trip: lossless" in result.output
    assert result.output.endswith("reproduced 3/3 published results\n")
    for key, line in (("example-dose-ranging", "example EXDR-001 (example-dose-ranging.yaml): mapped 469 resources, "
                                               "reproduced 7/7 published results; report "),
                      ("example-zero-cell", "example EXZC-001 (example-zero-cell.yaml): mapped 194 resources, "
                                            "reproduced 3/3 published results; report ")):
        report = tmp_path / "demo" / "examples" / key / "report" / "report.html"
        assert f"{line}{report}\n" in result.output and report.is_file()
    assert (tmp_path / "demo" / "report" / "forest.png").exists() and (tmp_path / "demo" / "report" / "report.html").exists()
    assert re.search(r"AdverseEvent\s+40\n", result.output)
    assert re.search(r"any adverse event\s+23/65 \(35\.4%\)\s+12/35 \(34\.3%\)\s+1\.000\n", result.output)
    assert "Adverse events by arm" in (tmp_path / "demo" / "report" / "report.html").read_text()


def test_map_json_output_is_machine_readable(cohort, tmp_path):
    result = invoke("map", str(cohort), "--bundle", str(tmp_path / "b.json"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["counts"]["Observation"] > 9000 and data["rejections"] == []


def test_unmap_then_validate(cohort, tmp_path):
    assert invoke("map", str(cohort), "--store", str(tmp_path / "s"), "--fhir-version", "R5").exit_code == 0
    result = invoke("validate", str(tmp_path / "s"), "--fhir-version", "R5", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["error_count"] == 0
    result = invoke("unmap", str(tmp_path / "s"), "--out", str(tmp_path / "t"))
    assert result.exit_code == 0 and "dm.csv 100 rows" in result.output


def test_validate_detects_the_version_of_a_store(mapped):
    stored_as, store = mapped
    result = invoke("validate", str(store.path))
    assert result.exit_code == 0, result.output
    expected = {"R4": "ResearchSubject.individual", "R5": "ResearchSubject.subject"}[stored_as]
    assert f"FHIR {stored_as} detected ({expected})" in result.output
    assert f"FHIR {stored_as}: 10921 resources checked, all valid" in result.output


def test_validate_of_a_store_without_version_markers_says_it_uses_r4(tmp_path):
    Store(tmp_path).write([{"resourceType": "Patient", "id": "p1", "gender": "female"}])
    result = invoke("validate", str(tmp_path))
    assert result.exit_code == 0 and "FHIR R4 detected (no element that differs between R4 and R5" in result.output


def test_validate_exits_5_on_an_invalid_resource(tmp_path):
    Store(tmp_path).write([{"resourceType": "Observation", "id": "x", "status": "final"}])
    result = invoke("validate", str(tmp_path))
    assert result.exit_code == ExitCode.INVALID
    assert "Observation/x: code" in result.output


def test_bad_study_file_is_exit_4_without_traceback(cohort, tmp_path):
    (tmp_path / "study.yaml").write_text("study: [unclosed")
    result = invoke("map", str(cohort), "--store", str(tmp_path / "s"), "--study", str(tmp_path / "study.yaml"))
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "not valid YAML" in result.output and "Traceback" not in result.output


# --- outputs for people: progress, --quiet/--verbose, Ctrl-C, empty input, config ------------

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from fhir_msc import jobs  # noqa: E402
from fhir_msc.progress import Progress  # noqa: E402
from fhir_msc.server.client import FhirClient, load_config  # noqa: E402

BAD = Path(__file__).parent / "data" / "bad"


class Recorder(Progress):
    """Every stage a job starts, with its total and what was advanced."""

    active = True

    def __init__(self):
        self.stages: list[list] = []

    def start(self, label, total=None, unit="resources"):
        self.stages.append([label, total, unit, 0])

    def advance(self, n=1):
        self.stages[-1][3] += n


def _stages(recorder, word):
    return [s for s in recorder.stages if word in s[0]]


def test_map_progress_counts_input_rows_up_to_the_total(study, tmp_path):
    recorder = Recorder()
    jobs.map_tables(study, BAD / "good", bundle=tmp_path / "b.json", progress=recorder)
    [(label, total, unit, done)] = recorder.stages
    rows = sum(len((BAD / "good" / f).read_text().splitlines()) - 1 for f in ("dm.csv", "ex.csv", "qs.csv", "re.csv"))
    assert (unit, total, done) == ("rows", rows, rows) and str(BAD / "good") in label


def test_validate_and_analyze_progress_count_the_store_in_bytes(study, demo_store):
    recorder = Recorder()
    jobs.validate(demo_store.path, jobs.get_version("R4"), recorder)
    read = _stages(recorder, "validating (R4) ")
    assert {s[0].split()[-1] for s in read} == set(demo_store.resource_types())
    assert all(s[2] == "B" and s[1] == s[3] == (demo_store.path / f"{s[0].split()[-1]}.ndjson").stat().st_size for s in read)
    recorder = Recorder()
    jobs.analyze(study, demo_store.path, ["M36"], progress=recorder)  # other visits are skipped, yet counted
    observations = _stages(recorder, "reading Observation")
    assert observations and observations[0][1] == observations[0][3] > 0


def test_push_and_pull_progress_reach_their_totals(study, fhir_server, tmp_path):
    client = FhirClient(fhir_server.base)
    recorder = Recorder()
    jobs.push(study, BAD / "good", client, tmp_path / "state", bundle_size=8, progress=recorder)
    jobs.push(study, BAD / "good", client, tmp_path / "state", progress=recorder)  # all unchanged: still counted
    assert [s[1:] for s in _stages(recorder, "pushing")] == [[54, "resources", 54]] * 2
    recorder = Recorder()
    jobs.pull(study, client, tmp_path / "pulled", tmp_path / "state", progress=recorder)
    assert [s[1:] for s in _stages(recorder, "pulling Observation")] == [[3, "subjects", 3]]


def test_progress_bar_goes_to_stderr_when_asked_and_never_with_quiet(tmp_path):
    shown = CliRunner().invoke(main, ["--progress", "map", str(BAD / "good"), "--bundle", str(tmp_path / "b.json")])
    assert shown.exit_code == 0 and re.search(r"mapping .*good: +\d+%\|", shown.stderr), shown.stderr
    quiet = CliRunner().invoke(main, ["--progress", "-q", "map", str(BAD / "good"), "--bundle", str(tmp_path / "c.json")])
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_quiet_prints_only_errors_and_the_result_line(tmp_path):
    result = invoke("--quiet", "map", str(BAD / "non-numeric"), "--store", str(tmp_path / "s"))
    assert result.exit_code == ExitCode.REJECTED
    lines = result.output.splitlines()
    assert len(lines) == 2 and lines[0].startswith("rejected: ") and lines[1].startswith("mapped 53 resources")
    loud = invoke("map", str(BAD / "non-numeric"), "--store", str(tmp_path / "t"))
    assert "replay with" in loud.output and len(loud.output.splitlines()) > 2


def test_verbose_logs_steps_and_requests_but_no_credentials(fhir_server, tmp_path, monkeypatch):
    monkeypatch.setenv("FHIR_MSC_TOKEN", "s3cret-token")
    result = invoke("--verbose", "push", str(BAD / "good"), "--server", fhir_server.base, "--state", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    assert f"fhir-msc: GET {fhir_server.base}/metadata → 200" in result.stderr
    assert re.search(r"fhir-msc: POST \S+ → 200", result.stderr) and "fhir-msc: pushing" in result.stderr
    assert "s3cret" not in result.output and "Bearer" not in result.output
    assert invoke("-q", "-v", "validate", str(tmp_path)).exit_code == ExitCode.USAGE


def test_global_options_after_the_command_mean_the_same_as_before_it(tmp_path):
    before = invoke("--quiet", "map", str(BAD / "non-numeric"), "--store", str(tmp_path / "s"))
    after = invoke("map", str(BAD / "non-numeric"), "--store", str(tmp_path / "t"), "-q")
    assert before.exit_code == after.exit_code == ExitCode.REJECTED
    assert after.output.replace(str(tmp_path / "t"), str(tmp_path / "s")) == before.output and len(before.output.splitlines()) == 2
    logged = invoke("map", str(BAD / "good"), "--bundle", str(tmp_path / "b.json"), "--verbose")
    assert logged.exit_code == 0 and f"fhir-msc: mapping {BAD / 'good'}" in logged.stderr, logged.stderr
    shown = invoke("map", str(BAD / "good"), "--bundle", str(tmp_path / "c.json"), "--progress")
    assert shown.exit_code == 0 and re.search(r"mapping .*good: +\d+%\|", shown.stderr), shown.stderr
    hidden = invoke("--progress", "map", str(BAD / "good"), "--bundle", str(tmp_path / "d.json"), "--no-progress")
    assert hidden.exit_code == 0 and "%|" not in hidden.stderr  # the last one given wins
    assert invoke("-q", "validate", str(tmp_path), "-v").exit_code == ExitCode.USAGE
    silent = invoke("map", str(BAD / "good"), "--bundle", str(tmp_path / "e.json"))
    assert silent.exit_code == 0 and "fhir-msc: mapping" not in silent.stderr  # the refused -v left no logging behind
    assert "-q, --quiet" in invoke("view", "run", "--help").output


def test_ctrl_c_says_what_was_done_and_how_to_resume_with_exit_130(demo_store, fhir_server, tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-c", "from fhir_msc.cli import main; main()", "--verbose", "--progress", "push",
         str(demo_store.path), "--server", fhir_server.base, "--state", str(tmp_path / "state")],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "100"})
    seen = ""
    while "POST" not in seen:  # the push has started sending bundles
        line = process.stderr.readline()
        assert line, "push ended before it sent anything"
        seen += line
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    err = seen + err
    assert process.returncode == ExitCode.INTERRUPTED == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert re.search(rf"interrupted while pushing {re.escape(str(demo_store.path))}: [\d,]+ of 10,921 resources done", err)
    assert f"the journal in {tmp_path / 'state'} records every bundle the server confirmed" in err
    assert "rerun the same command" in err and out == ""


@pytest.mark.parametrize("command", ["analyze", "verify"])
def test_empty_or_foreign_store_is_exit_4_not_an_empty_table(command, tmp_path):
    Store(tmp_path / "empty").path.mkdir()
    Store(tmp_path / "foreign").write([{"resourceType": "Patient", "id": "p1"}])
    for store in ("empty", "foreign"):
        result = invoke(command, "--store", str(tmp_path / store))
        assert result.exit_code == ExitCode.BAD_INPUT, result.output
        assert "no findings of NCT04288102 subjects" in result.output and "Empty DataFrame" not in result.output


def test_unknown_outcome_is_an_error_listing_the_known_codes(demo_store):
    result = invoke("analyze", "--store", str(demo_store.path), "--outcome", "NOPE")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "unknown outcome NOPE: use one of CTNORM, CTTSS" in result.output and "Traceback" not in result.output


def test_config_file_sets_server_state_and_method(fhir_server, tmp_path, monkeypatch):
    for name in ("FHIR_MSC_SERVER", "FHIR_MSC_STATE", "FHIR_MSC_METHOD"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "fhir-msc.yaml"
    config.write_text(f"server: {fhir_server.base}\nFHIR_MSC_STATE: {tmp_path / 'state'}\nmethod: conditional\n")
    config.chmod(0o600)
    result = invoke("push", str(BAD / "good"), "--config", str(config), "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"would push to {fhir_server.base}/ (method conditional" in result.output
    assert (tmp_path / "state" / "journal.sqlite").exists()
    overridden = invoke("push", str(BAD / "good"), "--config", str(config), "--method", "id", "--dry-run")
    assert "(method id" in overridden.output


def test_config_keys_may_leave_out_the_prefix(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("token: abc\nFHIR_MSC_SCOPE: system/*.read\n")
    config.chmod(0o600)
    assert load_config(str(config)) == {"FHIR_MSC_TOKEN": "abc", "FHIR_MSC_SCOPE": "system/*.read"}


def test_sql_csv_is_the_csv_export_writes(demo_store, tmp_path):
    exported = invoke("export", "--store", str(demo_store.path), "--out", str(tmp_path / "t"), "--format", "csv")
    assert exported.exit_code == 0, exported.output
    for view in ("subjects", "observations"):  # observations has a list column, answers
        queried = invoke("sql", f"SELECT * FROM {view}", "--store", str(demo_store.path), "--format", "csv")
        written = (tmp_path / "t" / f"{view}.csv").read_text(encoding="utf-8")
        assert queried.exit_code == 0 and queried.stdout.splitlines()[0] == written.splitlines()[0]
        assert sorted(queried.stdout.splitlines()) == sorted(written.splitlines())
    literal = invoke("sql", "SELECT ['a', 'b'] AS codes, true AS done, {'k': 1} AS object FROM subjects LIMIT 1",
                     "--store", str(demo_store.path), "--format", "csv")
    assert literal.stdout == '"codes","done","object"\n"[""a"", ""b""]",true,"{""k"": 1}"\n'
