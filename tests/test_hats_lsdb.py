"""A real reader proves the HATS export: LSDB, in its own virtual environment (.venv-hats, built and cached by
deploy/hats-venv.sh; its numpy/pyarrow are never the pinned stack's), opens a night exported by skyclass, and
what it sees is compared here with values computed from the predictions table with numpy:

* rows per predicted class equal the predictions table's;
* a cone search returns exactly the objects a brute-force angular-distance filter keeps;
* a cross-match against a second HATS catalog of the same objects shifted by 0.5" matches every object once, to
  itself, at 0.5".

``make check-hats`` runs this file. The first run builds .venv-hats (a few minutes); later runs reuse it.
"""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pandas as pd
import pytest

from export_fixture import FIELD_DEC_DEG, FIELD_RA_DEG, make_night_lake
from skyclass import export
from skyclass.config import REPO_ROOT, load_config

pytestmark = pytest.mark.slow

RUN_DATE = "2026-01-03"
CONE_RADIUS_ARCSEC = 900.0
SHIFT_ARCSEC = 0.5


@pytest.fixture(scope="module")
def hats_python():
    done = subprocess.run([str(REPO_ROOT / "deploy" / "hats-venv.sh")], capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def _separation_arcsec(ra1, dec1, ra2, dec2):
    """Great-circle distance (haversine), all in degrees in, arcsec out."""
    ra1, dec1, ra2, dec2 = map(np.radians, (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(h))) * 3600.0


def test_lsdb_opens_cone_searches_and_cross_matches_the_export(spark, tmp_path, hats_python):
    make_night_lake(f"{tmp_path}/lake", f"{tmp_path}/predictions", RUN_DATE, n_dense=3000, n_sparse=1500, seed=3)
    conf = load_config(None, [f"lake.root={tmp_path}/lake", f"lake.predictions={tmp_path}/predictions",
                              f"export.output={tmp_path}/exports", "export.max_rows_per_partition=400"])
    result = export.export_predictions(spark, conf)
    assert result.files > 10  # a real tiling, several orders deep, for LSDB to align

    # The expected values, from the predictions table and the catalog as the lake holds them.
    predictions = pd.read_parquet(f"{tmp_path}/predictions/run_date={RUN_DATE}")
    positions = pd.read_parquet(f"{tmp_path}/lake/photometric")[["objid", "ra", "dec"]]
    table = predictions.merge(positions, on="objid")
    assert len(table) == len(predictions)
    cone_ra, cone_dec = FIELD_RA_DEG + 0.1, FIELD_DEC_DEG - 0.05
    inside = _separation_arcsec(cone_ra, cone_dec, table.ra.to_numpy(), table.dec.to_numpy()) <= CONE_RADIUS_ARCSEC
    assert 200 < inside.sum() < len(table) // 2  # the cone cuts through the dense field and its partitions

    out = tmp_path / "lsdb.json"
    done = subprocess.run(
        [hats_python, str(REPO_ROOT / "tests" / "hats_checks" / "lsdb_roundtrip.py"), result.path,
         "--cone", str(cone_ra), str(cone_dec), str(CONE_RADIUS_ARCSEC), "--shift-arcsec", str(SHIFT_ARCSEC),
         "--work", str(tmp_path / "lsdb-work"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON")})
    errors = "\n".join(line for line in done.stderr.splitlines() if "Computing" not in line)
    assert done.returncode == 0, f"exit {done.returncode}: {errors[-3000:]}"
    seen = json.loads(out.read_text())

    assert seen["rows"] == len(predictions) and seen["objids_unique"]
    assert seen["npartitions"] == result.files
    assert seen["class_counts"] == {k: int(v) for k, v in predictions.predicted_class.value_counts().items()}
    assert seen["cone_objids"] == sorted(int(x) for x in table.objid[inside])

    match = seen["crossmatch"]
    assert seen["shifted_rows"] == len(predictions)
    assert sorted(match["left_objid"]) == sorted(int(x) for x in predictions.objid)  # every object, once
    assert match["left_objid"] == match["right_objid"]  # each to itself
    assert np.allclose(match["separation_arcsec"], SHIFT_ARCSEC, atol=1e-3)
