"""One Spark session for every Spark test of the session (starting one takes seconds)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def spark():
    from fhir_msc.analysis.views.spark_engine import spark_session

    session = spark_session()
    yield session
    session.stop()
