"""Shared fixtures: one local SparkSession for the whole run (UI off), and small catalogs made in code."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT / "lib", ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))


@pytest.fixture(scope="session")
def spark():
    """A real local Spark session on 2 cores, shared by every test of the run."""
    from skyclass.config import SparkConfig
    from skyclass.session import build_spark

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = build_spark(SparkConfig(
        master="local[2]", app_name="skyclass-tests", shuffle_partitions=4, driver_memory="2g",
        extra={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
               "spark.sql.adaptive.enabled": "false"}))
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def conf_for(tmp_path):
    """``conf_for(**sections)``: a Config whose lake lives in tmp_path, with section fields overridden, e.g.
    ``conf_for(skyserver={"url": url}, extract={"tasks": 2})``."""
    from skyclass.config import load_config

    def make(**sections):
        items = [f"lake.root={tmp_path / 'lake'}", f"lake.models={tmp_path / 'models'}",
                 f"lake.predictions={tmp_path / 'predictions'}", f"lake.reports={tmp_path / 'reports'}"]
        for section, values in sections.items():
            for key, value in values.items():
                items.append(f"{section}.{key}={_yaml(value)}")
        return load_config(None, items)

    return make


def _yaml(value):
    import json

    return json.dumps(value) if not isinstance(value, str) else value


@pytest.fixture
def standin_factory():
    """``standin_factory(catalogs=None, faults=None, row_cap=500_000, release="dr17")``: start a SkyServer
    stand-in on a free loopback port (default catalogs: 2,000 labelled + 500 photometric rows made in code);
    every server started is stopped at the end of the test."""
    from catalog_fixture import make_labelled, make_photometric
    from skyclass.standin.server import Faults, StandinServer

    started = []

    def make(catalogs=None, faults=None, row_cap=500_000, release="dr17"):
        if catalogs is None:
            catalogs = [make_labelled(2000, seed=0), make_photometric(500, seed=1)]
        server = StandinServer(catalogs, faults=faults or Faults(), row_cap=row_cap, release=release).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def standin(standin_factory):
    """A started SkyServer stand-in over a 2,000-row labelled catalog and 500 photometric objects."""
    return standin_factory()
