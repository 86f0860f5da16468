"""Every pipeline command, run as a user runs it (``python -m skyclass.cli …`` in its own process with its own
Spark), against the SkyServer stand-in on loopback: extract → photometric extract → cutouts → table → train →
evaluate → score → score again (incremental) → run (nightly chain)."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from catalog_fixture import make_labelled, make_photometric
from skyclass.config import REPO_ROOT

pytestmark = pytest.mark.slow


def _skyclass(*args, sets, timeout_s=900):
    cmd = [sys.executable, "-m", "skyclass.cli", *args]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "lib"), "SKYCLASS_LOG_LEVEL": "WARNING"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT, env=env)
    if done.returncode != 0:
        raise AssertionError(f"skyclass {' '.join(args)} exited {done.returncode}\n--- stdout\n{done.stdout[-3000:]}"
                             f"\n--- stderr\n{done.stderr[-6000:]}")
    return done.stdout


def test_every_command_end_to_end(standin_factory, tmp_path):
    labelled = make_labelled(600, seed=3)
    photometric = make_photometric(200, seed=4)
    server = standin_factory(catalogs=[labelled, photometric])
    sets = [
        f"skyserver.url={server.url}", "skyserver.backoff_s=0.05",
        "spark.master=local[2]", "spark.shuffle_partitions=4", "spark.driver_memory=1g",
        "spark.extra={spark.ui.enabled: 'false', spark.ui.showConsoleProgress: 'false'}",
        f"lake.root={tmp_path / 'lake'}", f"lake.models={tmp_path / 'models'}",
        f"lake.predictions={tmp_path / 'predictions'}", f"lake.reports={tmp_path / 'reports'}",
        "extract.tasks=2", "extract.page_rows=250", "extract.box_ra_deg=[230.0, 231.5]",
        "extract.box_dec_deg=[27.0, 28.5]",
        "cutouts.max_objects=null", "cutouts.concurrency_per_task=8",
        "train.epochs=2", "train.batch_size=32", "train.num_proc=2",
        "evaluate.baselines=[logistic_regression, decision_tree]", "evaluate.feature_sets=[photometric]",
    ]
    out = _skyclass("extract", sets=sets)
    assert "catalog: 600 rows written" in out
    catalog = pd.read_parquet(tmp_path / "lake" / "catalog")
    assert len(catalog) == 600 and catalog.objid.is_unique
    assert sorted(int(v) for v in catalog.specobjid) == sorted(labelled.specobjid)

    _skyclass("extract", "--photometric", sets=sets)
    assert len(pd.read_parquet(tmp_path / "lake" / "photometric")) == 200

    _skyclass("cutouts", sets=sets)
    cutouts = pd.read_parquet(tmp_path / "lake" / "cutouts")
    assert cutouts.objid.is_unique and set(cutouts.objid) <= set(labelled.objid) and len(cutouts) >= 590

    _skyclass("table", sets=sets)
    stats = json.loads((tmp_path / "lake" / "training" / "stats.json").read_text())
    assert sum(stats["rows"].values()) == len(cutouts)

    out = _skyclass("train", "--mode", "multimodal", sets=sets)
    packages = sorted(p for p in (tmp_path / "models").iterdir() if (p / "metadata.json").exists())
    assert len(packages) == 1
    meta = json.loads((packages[0] / "metadata.json").read_text())
    assert meta["mode"] == "multimodal" and len(meta["history"]["loss"]) >= 1
    assert (packages[0] / "tabular.keras").exists()

    _skyclass("evaluate", sets=sets)
    reports = list((tmp_path / "reports").rglob("report.md"))
    assert reports and "SIMULATED" in reports[0].read_text().upper()
    report = json.loads((reports[0].parent / "report.json").read_text())
    # Exactly the configured baselines on the configured feature set, and the network that was trained.
    assert sorted(r["key"] for r in report["results"] if r["kind"] == "baseline") == [
        "decision_tree-photometric", "logistic_regression-photometric"]
    assert {r["version"] for r in report["results"] if r["kind"] == "network"} == {packages[0].name}
    assert 0.0 <= report["results"][0]["metrics"]["accuracy"] <= 1.0
    evaluated_at = reports[0].stat().st_mtime

    # Score the photometric field: no cutouts were downloaded for it, so every object takes the tabular fallback.
    _skyclass("score", "--run-date", "2026-01-01", sets=sets)
    night = pd.read_parquet(tmp_path / "predictions" / "run_date=2026-01-01")
    assert len(night) == 200 and night.objid.is_unique
    assert set(night.status) <= {"no_cutout", "bad_photometry"}
    # The next night skips what this model version already labelled.
    _skyclass("score", "--run-date", "2026-01-02", sets=sets)
    second = tmp_path / "predictions" / "run_date=2026-01-02"
    assert not second.exists() or len(pd.read_parquet(second)) == 0

    # The nightly chain: everything is in place, so it re-extracts, fetches the photometric field's cutouts, keeps
    # the model, scores nothing new (this model labelled the field already) and evaluates again.
    out = _skyclass("run", sets=[*sets, "score.run_date=2026-01-03"])
    assert len([p for p in (tmp_path / "models").iterdir() if (p / "metadata.json").exists()]) == 1
    assert "[train] (skipped)" in out and "[score]" in out and "[evaluate]" in out
    assert "[cutouts (photometric)]" in out
    assert len(pd.read_parquet(tmp_path / "lake" / "cutouts")) >= len(cutouts) + 190  # the field's cutouts too
    third = tmp_path / "predictions" / "run_date=2026-01-03"
    assert not third.exists() or len(pd.read_parquet(third)) == 0
    assert reports[0].stat().st_mtime > evaluated_at  # the chain's evaluate rewrote the report
