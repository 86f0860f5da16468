"""The whole chain on a real standalone cluster (deploy/local-cluster.sh: a master and two one-core workers, each
its own JVM with its own Python workers and work directory), every job submitted through
deploy/submit-standalone.sh with the packed environment, the lake under a ``file://`` URI root."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from catalog_fixture import make_labelled, make_photometric
from cluster_fixture import standalone_cluster  # noqa: F401 - the fixture
from cluster_jobs import app_name, events, job_settings, submit, task_workers

pytestmark = pytest.mark.slow


def _read(path) -> pd.DataFrame:
    return pd.read_parquet(path)


def test_every_job_then_a_second_incremental_night_on_the_standalone_cluster(standalone_cluster, standin_factory,
                                                                            tmp_path):
    cluster = standalone_cluster
    labelled = make_labelled(600, seed=3)
    photometric = make_photometric(200, seed=4)
    server = standin_factory(catalogs=[labelled, photometric])
    sets = job_settings(tmp_path, server.url)
    logs = tmp_path / "events"
    lake = tmp_path / "lake"

    submit(cluster, logs, "extract_catalog", *sets)
    catalog = _read(lake / "catalog")
    assert len(catalog) == 600 and catalog.objid.is_unique
    assert sorted(int(v) for v in catalog.specobjid) == sorted(labelled.specobjid)
    submit(cluster, logs, "extract_catalog", "--photometric", *sets)
    field = _read(lake / "photometric")
    assert sorted(field.objid) == sorted(photometric.objid)

    submit(cluster, logs, "download_cutouts", *sets)
    submit(cluster, logs, "download_cutouts", "--catalog", "photometric", *sets)
    cutouts = _read(lake / "cutouts")
    assert cutouts.objid.is_unique
    assert set(cutouts.objid) == set(labelled.objid) | set(photometric.objid)

    submit(cluster, logs, "build_training_table", *sets)
    stats = json.loads((lake / "training" / "stats.json").read_text())
    assert sum(stats["rows"].values()) == 600

    submit(cluster, logs, "train", "--mode", "multimodal", *sets)
    packages = [p for p in (tmp_path / "models").iterdir() if (p / "metadata.json").exists()]
    assert len(packages) == 1
    meta = json.loads((packages[0] / "metadata.json").read_text())
    assert meta["mode"] == "multimodal" and len(meta["history"]["loss"]) == 2

    submit(cluster, logs, "evaluate", *sets)
    assert list((tmp_path / "reports").rglob("report.md"))

    submit(cluster, logs, "score_catalog", "--run-date", "2026-01-01", *sets)
    night = _read(tmp_path / "predictions" / "run_date=2026-01-01")
    assert sorted(night.objid) == sorted(photometric.objid)  # every field object, exactly once
    assert (night.status == "ok").sum() >= 190  # each has a cutout (a few may carry bad photometry)

    # Night two: the field has grown by 50 objects. The nightly chain re-extracts, fetches only the new cutouts,
    # keeps the model and labels only the objects this model has not labelled yet.
    grown = pd.concat([photometric, make_photometric(250, seed=4).iloc[200:]], ignore_index=True)
    server2 = standin_factory(catalogs=[labelled, grown])
    sets2 = job_settings(tmp_path, server2.url, **{"score.run_date": "2026-01-02"})
    submit(cluster, logs, "run_nightly", *sets2)
    assert server2.stats()["getjpeg"]["requests"] == 50
    second = _read(tmp_path / "predictions" / "run_date=2026-01-02")
    assert sorted(second.objid) == sorted(grown.objid.iloc[200:])
    assert _read(lake / "cutouts").objid.is_unique
    assert len([p for p in (tmp_path / "models").iterdir() if (p / "metadata.json").exists()]) == 1

    # Every job ran tasks in the executors of both workers (never in the driver).
    by_app = [(app_name(app), task_workers(app)) for app in events(logs)]
    assert len(by_app) == 9, by_app  # one application per submit
    for name, workers in by_app:
        assert workers and "driver" not in workers, (name, workers)
    for name in ("extract", "cutouts", "table", "train", "score", "run"):
        assert any(name in app and len(workers) == 2 for app, workers in by_app), (name, by_app)
