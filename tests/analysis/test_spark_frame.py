"""`analyze --engine spark`: the shipped views run by Spark (local), joined as engine_frame joins them."""

from pathlib import Path

from click.testing import CliRunner
from pandas.testing import assert_frame_equal

from fhir_msc import Store, get_version, jobs, load_study
from fhir_msc.analysis.frame import frame_and_account
from fhir_msc.analysis import spark_frame
from fhir_msc.analysis.views.spark_engine import spark_session
from fhir_msc.cli import main
from fhir_msc.fhir.unmapping import NOT_ASKED


def test_analyze_with_spark_on_the_master_given_prints_the_default_table_on_the_demo_store(demo_store, spark):
    runs = {engine: CliRunner().invoke(main, ["analyze", "--store", str(demo_store.path), *engine])
            for engine in [(), ("--engine", "spark", "--spark-master", "local[1]")]}
    default, with_spark = runs[()], runs[("--engine", "spark", "--spark-master", "local[1]")]
    assert default.exit_code == with_spark.exit_code == 0, with_spark.output
    assert with_spark.stdout == default.stdout and "odds ratio" in default.stdout
    assert with_spark.stderr == default.stderr  # the account of the Observations read, line for line
    assert spark_session().sparkContext.master == "local[1]"


def test_spark_gives_the_frame_and_account_of_the_other_engines_collecting_only_what_is_asked(
        study, demo_store, spark, monkeypatch):
    collected = {}

    def run_view_on_paths(session, view, paths, *args, **kwargs):
        table = run_view(session, view, paths, *args, **kwargs)
        collected[view.resource] = table.num_rows
        return table

    run_view = spark_frame.run_view_on_paths
    monkeypatch.setattr(spark_frame, "run_view_on_paths", run_view_on_paths)
    frames = {engine: jobs.frame_and_account(study, demo_store.path, ["M36"], engine=engine)
              for engine in jobs.ENGINES}
    for engine in ("duckdb", "spark"):
        assert_frame_equal(frames[engine][0], frames["python"][0])
        assert frames[engine][1] == frames["python"][1]
    account = frames["spark"][1]
    assert len(frames["spark"][0]) > 0 and set(frames["spark"][0].visit) == {"M36"}
    assert account.read == demo_store.counts()["Observation"]
    assert collected["Observation"] == account.read - account.skipped[NOT_ASKED] > 0  # the rest stayed in Spark


def test_a_spark_master_needs_the_spark_engine(demo_store):
    result = CliRunner().invoke(main, ["analyze", "--store", str(demo_store.path), "--engine", "duckdb",
                                       "--spark-master", "local[1]"])
    assert result.exit_code == 2
    assert "--spark-master is for --engine spark, not --engine duckdb" in result.stderr


def test_spark_reads_every_visit_when_analysis_windows_may_place_a_finding_elsewhere(spark, tmp_path):
    """With analysis windows a finding of any visit may count for the one asked: Spark leaves nothing out."""
    types = Path(__file__).parents[1] / "data" / "types-study"
    study = load_study(types / "study.yaml")
    assert study.analysis.windows
    jobs.map_tables(study, types / "tables", store=tmp_path / "store", version=get_version("R4"))
    store = Store(tmp_path / "store")
    visit = study.visits[-1].code
    expected_frame, expected = frame_and_account(study, store, [visit])
    frame, account = spark_frame.frame_and_account(study, store, [visit])
    assert_frame_equal(frame, expected_frame)
    assert account == expected and len(frame) > 0
