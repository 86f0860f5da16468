"""A lake with a catalog and one night of predictions made in code, for the export tests (no model needed).

The sky: a dense field (a cluster-like clump of ``dense`` objects within 0.3 deg of the Abell 2065 centre, at
least ~20" apart) on top
of ``sparse`` objects spread uniformly over the whole sphere, including the poles and both sides of ra = 0/360, so
an adaptive tiling must go deeper in the field than elsewhere.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from skyclass import lake

CLASSES = ("GALAXY", "STAR", "QSO")
FIELD_RA_DEG, FIELD_DEC_DEG = 230.62, 27.71


def sky_positions(n_dense: int, n_sparse: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # A jittered grid, not uniform draws: no two field objects closer than a few arcsec, so a cross-match against
    # the same objects shifted by 0.5" has exactly one answer per object.
    side = int(np.ceil(np.sqrt(n_dense)))
    step_deg = 0.6 / side
    gx, gy = np.meshgrid(np.arange(side), np.arange(side))
    x = (gx.ravel()[:n_dense] + 0.5) * step_deg - 0.3 + rng.uniform(-0.25, 0.25, n_dense) * step_deg
    y = (gy.ravel()[:n_dense] + 0.5) * step_deg - 0.3 + rng.uniform(-0.25, 0.25, n_dense) * step_deg
    ra_field = FIELD_RA_DEG + x / np.cos(np.radians(FIELD_DEC_DEG))
    dec_field = FIELD_DEC_DEG + y
    ra_sky = rng.uniform(0.0, 360.0, n_sparse)
    dec_sky = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n_sparse)))
    edges_ra = np.array([0.0, 359.999999, 0.000001, 180.0, 45.0])
    edges_dec = np.array([0.0, 10.0, -10.0, 89.9999, -89.9999])
    return (np.concatenate([ra_field, ra_sky, edges_ra]), np.concatenate([dec_field, dec_sky, edges_dec]))


def make_night_lake(root: str, predictions_root: str, run_date: str = "2026-01-02", *, n_dense: int = 3000,
                    n_sparse: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Write ``<root>/photometric`` and ``<predictions_root>/run_date=<run_date>``; return the joined truth
    (objid, ra, dec, predicted_class, p_qso, ...)."""
    rng = np.random.default_rng(seed + 1)
    ra, dec = sky_positions(n_dense, n_sparse, seed)
    n = len(ra)
    objid = 1_237_000_000_000_000_000 + np.arange(n, dtype=np.int64) * 7
    mags = {m: rng.uniform(15, 22, n) for m in lake.MAGNITUDES}
    catalog = pd.DataFrame({"objid": objid, "ra": ra, "dec": dec, **mags,
                            "quality": np.where(rng.random(n) < 0.05, "bad_photometry", "ok")})
    os.makedirs(os.path.join(root, "photometric"), exist_ok=True)
    pq.write_table(pa.Table.from_pandas(catalog, schema=lake.PHOTOMETRIC.arrow_schema(), preserve_index=False),
                   os.path.join(root, "photometric", "part-0.parquet"))
    proba = rng.dirichlet([1.0, 1.0, 1.0], n).astype(np.float32)
    predictions = pd.DataFrame({
        "objid": objid, "predicted_class": np.array(CLASSES)[proba.argmax(axis=1)],
        "p_galaxy": proba[:, 0], "p_star": proba[:, 1], "p_qso": proba[:, 2],
        "model_version": "v-test", "model_fingerprint": "sha256:test", "status": "ok",
        "domain": np.where(rng.random(n) < 0.1, "outside_magnitudes", "in"),
        "domain_score": rng.uniform(0.0, 2.0, n).astype(np.float32), "skyclass_version": "test",
        "data_release": "dr17", "scored_at": pd.Timestamp("2026-01-03T02:00:00", tz="UTC")})
    night = os.path.join(predictions_root, f"run_date={run_date}")
    os.makedirs(night, exist_ok=True)
    # Two files, as Spark would write a night.
    for i, part in enumerate(np.array_split(np.arange(n), 2)):
        pq.write_table(pa.Table.from_pandas(predictions.iloc[part], schema=lake.PREDICTIONS.arrow_schema(),
                                            preserve_index=False), os.path.join(night, f"part-{i}.parquet"))
    return predictions.merge(catalog, on="objid")
