"""The store knows its study: map and pull record the definition, later commands use it, another one is refused."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from fhir_msc import Store, jobs, load_study
from fhir_msc.cli import main
from fhir_msc.errors import BadUsage, ExitCode
from fhir_msc.store.study_record import record_study, recorded_study
from fhir_msc.study.definition import DEFAULT_STUDY, REPO_ROOT

DATA = Path(__file__).parent / "data"
MINI = DATA / "mini-study"
DOSE_RANGING = (REPO_ROOT / "mappings" / "example-dose-ranging.yaml", REPO_ROOT / "fixtures" / "example-dose-ranging")


def invoke(*argv: object, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, [str(a) for a in argv], env=env)


@pytest.fixture
def mini_store(tmp_path) -> Path:
    """The mini study's tables mapped with --study into a store of their own."""
    store = tmp_path / "store"
    result = invoke("map", MINI / "tables", "--store", store, "--study", MINI / "study.yaml")
    assert result.exit_code == 0, result.output
    return store


def test_map_records_a_copy_of_the_definition_and_its_digest_owner_only(mini_store):
    recorded = recorded_study(mini_store)
    definition = (MINI / "study.yaml").read_bytes()
    assert recorded.path.read_bytes() == definition
    digest = hashlib.sha256(definition).hexdigest()
    assert recorded.sha256 == digest
    assert (recorded.path.parent / "study.yaml.sha256").read_text() == f"{digest}  study.yaml\n"  # as sha256sum writes it
    for path in (recorded.path.parent, *recorded.path.parent.iterdir()):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


def test_later_commands_on_the_store_use_its_study_without_study(mini_store, tmp_path):
    analyzed = invoke("analyze", "--store", mini_store)
    assert analyzed.exit_code == 0 and "RESP" in analyzed.stdout and "no --study given" not in analyzed.stderr, analyzed.output
    verified = invoke("verify", "--store", mini_store)
    assert verified.exit_code == 0 and "reproduced 2/2 published results" in verified.stdout, verified.output
    unmapped = invoke("unmap", mini_store, "--out", tmp_path / "tables")
    assert unmapped.exit_code == 0 and "xs.csv 28 rows" in unmapped.stdout, unmapped.output
    exported = invoke("export", "--store", mini_store, "--out", tmp_path / "views", "--format", "csv")
    assert exported.exit_code == 0 and "subjects: 14 rows" in exported.stdout, exported.output
    counted = invoke("sql", "SELECT count(*) AS n FROM subjects", "--store", mini_store, "--json")
    assert counted.exit_code == 0 and json.loads(counted.stdout)["rows"] == [{"n": 14}], counted.output


def test_derive_uses_the_recorded_study(tmp_path):
    definition, tables = DOSE_RANGING
    store = tmp_path / "store"
    assert invoke("map", tables, "--store", store, "--study", definition).exit_code == 0
    derived = invoke("derive", "--store", store)
    assert derived.exit_code == 0 and derived.stdout.startswith("derived "), derived.output


@pytest.mark.parametrize("how", ["option", "environment"])
def test_another_definition_is_refused_in_one_line_naming_both(mini_store, how):
    mine, other = load_study(MINI / "study.yaml"), load_study(DEFAULT_STUDY)
    argv = ["analyze", "--store", mini_store] + (["--study", DEFAULT_STUDY] if how == "option" else [])
    result = invoke(*argv, env={"FHIR_MSC_STUDY": str(DEFAULT_STUDY)} if how == "environment" else None)
    assert result.exit_code == ExitCode.USAGE
    (line,) = result.output.splitlines()
    assert line.startswith(f"fhir-msc: error: --study {DEFAULT_STUDY.resolve()} (NCT04288102, sha256 {other.sha256[:12]})")
    assert f"{mini_store} holds data of (MINI-001, sha256 {mine.sha256[:12]}" in line
    assert str(mini_store / ".fhir-msc" / "study.yaml") in line
    assert "leave out --study to use the store's copy, or map NCT04288102's tables into a store of its own" in line


def test_map_of_another_study_into_the_store_is_refused_and_changes_nothing(mini_store):
    before = {p.name: p.read_bytes() for p in mini_store.iterdir() if p.is_file()}
    result = invoke("map", REPO_ROOT / "tests" / "data" / "bad" / "good", "--store", mini_store, "--study", DEFAULT_STUDY)
    assert result.exit_code == ExitCode.USAGE and "is not the study definition" in result.output
    assert {p.name: p.read_bytes() for p in mini_store.iterdir() if p.is_file()} == before
    assert recorded_study(mini_store).path.read_bytes() == (MINI / "study.yaml").read_bytes()


def test_an_edited_definition_of_the_same_study_is_used_with_a_note_and_recorded_by_map(mini_store, tmp_path):
    edited = tmp_path / "edited.yaml"
    edited.write_bytes((MINI / "study.yaml").read_bytes() + b"# an edit\n")
    given = f"{edited} (MINI-001, sha256 {load_study(edited).sha256[:12]})"
    recorded = load_study(MINI / "study.yaml").sha256[:12]
    analyzed = invoke("analyze", "--store", mini_store, "--study", edited)
    assert analyzed.exit_code == 0, analyzed.output
    assert analyzed.stderr.splitlines()[0] == (f"note: {given} is an edited definition of the study {mini_store} holds "
                                               f"(its copy: sha256 {recorded}): used for this command; map or pull into "
                                               f"{mini_store} with it to record it")
    assert recorded_study(mini_store).path.read_bytes() == (MINI / "study.yaml").read_bytes()  # only map records
    mapped = invoke("map", MINI / "tables", "--store", mini_store, "--study", edited)
    assert mapped.exit_code == 0, mapped.output
    assert f"note: {given} is an edited definition of the study {mini_store} holds" in mapped.stderr
    assert "it replaces the copy recorded there" in mapped.stderr
    assert recorded_study(mini_store).path.read_bytes() == edited.read_bytes()
    again = invoke("analyze", "--store", mini_store, "--study", edited)
    assert again.exit_code == 0 and "edited definition" not in again.stderr


def test_the_jobs_refuse_another_definition_too(mini_store):
    with pytest.raises(BadUsage, match="is not the study definition"):
        jobs.analyze(load_study(DEFAULT_STUDY), mini_store)


def test_a_store_without_a_recorded_study_falls_back_to_the_bundled_one_and_says_so(tmp_path):
    store = Store(tmp_path / "older")
    store.write(Store(tmp_path / "unused").read_all())  # an empty store, as older versions left without a record
    result = invoke("analyze", "--store", store.path)
    assert result.exit_code == ExitCode.BAD_INPUT
    assert (f"note: no --study given and {store.path} records none: using the bundled NCT04288102 definition "
            f"({DEFAULT_STUDY}); pass --study FILE for another study") in result.stderr
    assert invoke("-q", "analyze", "--store", store.path).stderr.count("note:") == 0  # --quiet leaves notes out


def test_clearing_a_store_forgets_its_study(tmp_path):
    store = Store(tmp_path / "store")
    store.write([{"resourceType": "Patient", "id": "p1"}])
    record_study(store.path, MINI / "study.yaml")
    store.clear()
    assert recorded_study(store.path) is None and store.counts() == {}


def _with_a_bad_score(tmp_path: Path) -> tuple[Path, str]:
    """The mini study's tables with one SCORE written as a word; the value it should have."""
    tables = tmp_path / "tables"
    shutil.copytree(MINI / "tables", tables)
    lines = (tables / "xs.csv").read_text().splitlines()
    score = next(i for i, line in enumerate(lines) if ",SCORE," in line)
    fields = lines[score].split(",")
    good, fields[4] = fields[4], "sixteen"
    lines[score] = ",".join(fields)
    (tables / "xs.csv").write_text("\n".join(lines) + "\n")
    return tables, good


def _hint(result) -> list[str]:
    """The command printed after rejected rows, as the shell splits it (without "fhir-msc")."""
    argv = shlex.split(result.stdout.splitlines()[-1])
    assert argv[:2] == ["fhir-msc", "map"], result.stdout
    return argv[1:]


def test_the_replay_hint_of_a_store_works_as_printed_for_another_study(tmp_path):
    """The store knows its study: the replay needs no --study (without it the rows were refused as another study's)."""
    tables, good = _with_a_bad_score(tmp_path)
    store = tmp_path / "st_bad"
    first = invoke("map", tables, "--store", store, "--study", MINI / "study.yaml")
    assert first.exit_code == ExitCode.REJECTED, first.output
    hint = _hint(first)
    assert hint == ["map", str(store / "rejects"), "--store", str(store)]
    fixed = (store / "rejects" / "xs.csv").read_text().replace(",sixteen,", f",{good},")
    (store / "rejects" / "xs.csv").write_text(fixed)
    replayed = invoke(*hint)
    assert replayed.exit_code == 0, replayed.output
    assert "rows read = mapped + rejected: xs.csv 1 = 1 + 0" in replayed.stdout
    assert Store(store).counts()["Observation"] == 28 and not (store / "rejects").exists()


def test_the_hint_of_a_bundle_maps_the_corrected_tables_with_their_study(tmp_path):
    tables, good = _with_a_bad_score(tmp_path)
    bundle = tmp_path / "b.json"
    first = invoke("map", tables, "--bundle", bundle, "--study", MINI / "study.yaml")
    assert first.exit_code == ExitCode.REJECTED, first.output
    hint = _hint(first)
    assert hint == ["map", str(tables), "--bundle", str(bundle), "--study", str(MINI / "study.yaml")]
    (tables / "xs.csv").write_text((tables / "xs.csv").read_text().replace(",sixteen,", f",{good},"))
    again = invoke(*hint)
    assert again.exit_code == 0, again.output
    entries = json.loads(bundle.read_text())["entry"]
    assert sum(e["resource"]["resourceType"] == "Observation" for e in entries) == 28
    assert not (tmp_path / "b.json.rejects").exists()


def test_pull_records_the_study_it_pulled_for(fhir_server, mini_store, tmp_path):
    assert invoke("push", mini_store, "--server", fhir_server.base, "--state", tmp_path / "s1").exit_code == 0
    pulled = tmp_path / "pulled"
    result = invoke("pull", "--server", fhir_server.base, "--store", pulled, "--state", tmp_path / "s2",
                    "--study", MINI / "study.yaml")
    assert result.exit_code == 0, result.output
    assert recorded_study(pulled).sha256 == load_study(MINI / "study.yaml").sha256
    analyzed = invoke("analyze", "--store", pulled)
    assert analyzed.exit_code == 0 and "RESP" in analyzed.stdout, analyzed.output


def test_a_copy_recorded_by_hand_is_what_the_store_holds(tmp_path):
    store = tmp_path / "store"
    record_study(store, MINI / "study.yaml")
    assert jobs.choose_study(None, store).study.study.identifier.value == "MINI-001"
    assert jobs.choose_study(None, store).notes == ()


def test_a_new_study_from_init_needs_its_study_file_only_once(tmp_path, monkeypatch):
    """init, map with --study, then analyze and report without it; another study's definition is refused."""
    monkeypatch.chdir(tmp_path)
    for argv in (["init", "t"], ["map", "t/tables", "--study", "t/study.yaml", "--store", "s"],
                 ["analyze", "--store", "s"], ["report", "--store", "s", "--out", "r"]):
        result = invoke(*argv)
        assert result.exit_code == 0, (argv, result.output)
        assert "no --study given" not in result.stderr
    refused = invoke("analyze", "--store", "s", "--study", DEFAULT_STUDY)
    assert refused.exit_code == ExitCode.USAGE and "is not the study definition s holds data of" in refused.output
