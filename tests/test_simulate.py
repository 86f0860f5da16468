"""The synthetic lake: deterministic per (seed, partition), class-dependent colours, statuses exercised, written by
executors with the lake's schemas."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skyclass import lake, storage
from skyclass.simulate import (SENTINEL_MAG, SIMULATED_OBJID_BASE, SimulationError, catalog_rows,
                               partition_bounds, simulate_lake, simulated_objects)


def test_objects_are_deterministic_per_seed_and_partition():
    a = simulated_objects(3, 3000, 4000, seed=7)
    b = simulated_objects(3, 3000, 4000, seed=7)
    pd.testing.assert_frame_equal(a, b)
    other_partition = simulated_objects(4, 3000, 4000, seed=7)
    other_seed = simulated_objects(3, 3000, 4000, seed=8)
    assert not np.allclose(a["r"], other_partition["r"])
    assert not np.allclose(a["r"], other_seed["r"])
    # objIDs are the global indices on top of the seed's block, so partitions never collide.
    assert a["objid"].tolist() == [SIMULATED_OBJID_BASE + 7 * 10**10 + k for k in range(3000, 4000)]
    assert set(a["objid"]).isdisjoint(other_seed["objid"])


def test_partition_bounds_cover_every_object_once():
    bounds = [partition_bounds(p, 1050, 400) for p in range(3)]
    assert bounds == [(0, 400), (400, 800), (800, 1050)]


def test_fractions_and_sentinels():
    n = 20_000
    objects = simulated_objects(0, 0, n, seed=1, missing_cutout_fraction=0.03, sentinel_fraction=0.01,
                                corrupt_cutout_fraction=0.02)
    # Binomial standard deviations: 24 objects for 3 % of 20k, 14 for 1 %; allow 5 of them.
    assert abs((~objects["has_cutout"]).sum() - 600) < 120
    sentinel_rows = (objects[list(lake.MAGNITUDES)] == SENTINEL_MAG).any(axis=1)
    assert abs(sentinel_rows.sum() - 200) < 70
    # Exactly one unmeasured band per sentinel object, and every such object is flagged.
    assert ((objects[list(lake.MAGNITUDES)] == SENTINEL_MAG).sum(axis=1)[sentinel_rows] == 1).all()
    assert (objects.loc[sentinel_rows, "quality"] == lake.QUALITY_BAD_PHOTOMETRY).all()
    assert (objects.loc[~sentinel_rows, "quality"] != lake.QUALITY_BAD_PHOTOMETRY).all()
    # Corrupt cutouts only among objects that have one.
    assert not (objects["corrupt_cutout"] & ~objects["has_cutout"]).any()
    assert abs(objects["corrupt_cutout"].sum() - 0.02 * 0.97 * n) < 5 * np.sqrt(0.02 * n)


def test_colours_depend_on_class_like_the_real_loci():
    objects = simulated_objects(0, 0, 6000, seed=2, sentinel_fraction=0.0)
    ug = (objects["u"] - objects["g"]).groupby(objects["class"]).mean()
    gr = (objects["g"] - objects["r"]).groupby(objects["class"]).mean()
    # The generator's class means: u-g 1.8 / 1.2 / 0.3, g-r 0.8 / 0.5 / 0.2 (galaxy / star / QSO).
    assert ug["GALAXY"] == pytest.approx(1.8, abs=0.05)
    assert ug["STAR"] == pytest.approx(1.2, abs=0.05)
    assert ug["QSO"] == pytest.approx(0.3, abs=0.05)
    assert gr["GALAXY"] > gr["STAR"] > gr["QSO"]
    shares = objects["class"].value_counts(normalize=True)
    assert shares["GALAXY"] == pytest.approx(0.45, abs=0.03)


def test_catalog_rows_follow_the_lake_schemas():
    objects = simulated_objects(0, 0, 50, seed=3)
    photometric = catalog_rows(objects, "photometric")
    assert list(photometric.columns) == lake.PHOTOMETRIC.names
    assert set(photometric["quality"]) <= {lake.QUALITY_OK, lake.QUALITY_BAD_PHOTOMETRY}
    labelled = catalog_rows(objects, "catalog")
    assert list(labelled.columns) == lake.CATALOG.names
    with pytest.raises(SimulationError, match="unknown catalog table"):
        catalog_rows(objects, "cutouts")


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_objects=0), "n_objects"),
    (dict(n_objects=10, seed=-1), "seed"),
    (dict(n_objects=10, missing_cutout_fraction=1.5), "missing_cutout_fraction"),
])
def test_bad_arguments_are_refused_before_any_work(conf_for, kwargs, match):
    with pytest.raises(SimulationError, match=match):
        simulate_lake(None, conf_for(), **kwargs)


def _digest(frame: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).values.tobytes()).hexdigest()


def test_simulate_lake_writes_catalog_and_cutouts(spark, conf_for):
    conf = conf_for()
    n, per_partition = 900, 300
    result = simulate_lake(spark, conf, n_objects=n, seed=5, rows_per_partition=per_partition,
                           missing_cutout_fraction=0.05, sentinel_fraction=0.03, corrupt_cutout_fraction=0.02)
    # Expected values from the pure generator, partition by partition (the executors must agree with it).
    expected = pd.concat([simulated_objects(p, *partition_bounds(p, n, per_partition), seed=5,
                                            missing_cutout_fraction=0.05, sentinel_fraction=0.03,
                                            corrupt_cutout_fraction=0.02) for p in range(3)])
    assert result.partitions == 3 and result.n_objects == n
    assert result.n_cutouts == int(expected["has_cutout"].sum())
    assert result.quality_counts.get(lake.QUALITY_BAD_PHOTOMETRY, 0) == \
        int((expected["quality"] == lake.QUALITY_BAD_PHOTOMETRY).sum())

    catalog = spark.read.parquet(conf.lake.table("photometric"))
    assert catalog.columns == lake.PHOTOMETRIC.names
    got = catalog.toPandas().sort_values("objid").reset_index(drop=True)
    np.testing.assert_array_equal(got["objid"].to_numpy(), expected["objid"].to_numpy())
    np.testing.assert_allclose(got["u"].to_numpy(), expected["u"].to_numpy())

    cutouts = spark.read.parquet(conf.lake.table("cutouts"))
    assert cutouts.columns == lake.CUTOUTS.names
    rows = cutouts.select("objid", "jpeg", "size_px").toPandas().set_index("objid")
    assert set(rows.index) == set(expected.loc[expected["has_cutout"], "objid"])
    corrupt_ids = set(expected.loc[expected["corrupt_cutout"], "objid"])
    assert corrupt_ids, "the fixture should include a corrupt cutout"
    for objid, jpeg in rows["jpeg"].items():
        if objid in corrupt_ids:
            with pytest.raises(OSError):
                Image.open(io.BytesIO(jpeg)).load()
        else:
            with Image.open(io.BytesIO(jpeg)) as img:
                assert img.size == (64, 64)
    assert (rows["size_px"] == 64).all()

    # Same arguments, same lake.
    simulate_lake(spark, conf, n_objects=n, seed=5, rows_per_partition=per_partition,
                  missing_cutout_fraction=0.05, sentinel_fraction=0.03, corrupt_cutout_fraction=0.02)
    again = spark.read.parquet(conf.lake.table("photometric")).toPandas().sort_values("objid")
    assert _digest(again.reset_index(drop=True)) == _digest(got)


def test_simulate_labelled_catalog_keeps_exact_specobjids(spark, conf_for):
    conf = conf_for(score={"catalog": "catalog"})
    simulate_lake(spark, conf, n_objects=200, seed=1, rows_per_partition=100, cutouts=False)
    catalog = spark.read.parquet(conf.lake.table("catalog"))
    assert catalog.columns == lake.CATALOG.names
    frame = catalog.select("objid", "specobjid", "class").toPandas().sort_values("objid")
    ids = [int(v) for v in frame["specobjid"]]
    # 2**63 - 8192 * (100 - index): from index 100 on they exceed the signed 64-bit range, and must stay exact.
    assert ids == [2**63 - 8192 * 100 + 8192 * k for k in range(200)]
    assert max(ids) > 2**63 > min(ids)
    assert set(frame["class"]) == {"GALAXY", "STAR", "QSO"}
    assert not storage.table_exists(conf.lake.table("cutouts"))
