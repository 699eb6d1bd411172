"""`analyze --engine spark`: the shipped views run by Spark (local), joined as engine_frame joins them."""

from click.testing import CliRunner
from pandas.testing import assert_frame_equal

from fhir_msc import jobs
from fhir_msc.cli import main


def test_analyze_with_spark_prints_the_default_table_on_the_demo_store(demo_store, spark):
    runs = {engine: CliRunner().invoke(main, ["analyze", "--store", str(demo_store.path), *engine])
            for engine in [(), ("--engine", "spark")]}
    default, with_spark = runs[()], runs[("--engine", "spark")]
    assert default.exit_code == with_spark.exit_code == 0, with_spark.output
    assert with_spark.stdout == default.stdout and "odds ratio" in default.stdout
    assert with_spark.stderr == default.stderr  # the account of the Observations read, line for line


def test_spark_gives_the_frame_and_account_of_the_other_engines(study, demo_store, spark):
    frames = {engine: jobs.frame_and_account(study, demo_store.path, ["M36"], engine=engine)
              for engine in jobs.ENGINES}
    for engine in ("duckdb", "spark"):
        assert_frame_equal(frames[engine][0], frames["python"][0])
        assert frames[engine][1] == frames["python"][1]
    assert len(frames["spark"][0]) > 0 and set(frames["spark"][0].visit) == {"M36"}
