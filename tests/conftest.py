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
