"""The synthetic lake: deterministic per (seed, partition), class-dependent colours, statuses exercised, written by
executors with the lake's schemas."""
from __future__ import annotations

import hashlib
import io
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import skyclass
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


# --- a simulated lake is marked so, and simulate never writes into a real lake ---------------------------------------

def _tree(root) -> dict:
    """Every file under ``root`` with its bytes' digest: what "nothing changed" compares."""
    import os

    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as fh:
                out[os.path.relpath(os.path.join(folder, name), root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _write_real_catalog(conf, table="catalog", n=20):
    """A catalog as extract writes it: Parquet without a provenance saying simulated."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = catalog_rows(simulated_objects(0, 0, n, seed=77), table)
    schema = lake.CATALOG if table == "catalog" else lake.PHOTOMETRIC
    path = conf.lake.table(table)
    os.makedirs(path)
    pq.write_table(pa.Table.from_pandas(rows, schema=schema.arrow_schema(), preserve_index=False),
                   os.path.join(path, "part-0.parquet"))


def test_simulate_marks_what_it_writes(spark, conf_for):
    conf = conf_for()
    before = datetime.now(timezone.utc).replace(microsecond=0)
    result = simulate_lake(spark, conf, n_objects=150, seed=2, rows_per_partition=100)
    for name, rows in (("photometric", 150), ("cutouts", result.n_cutouts)):
        provenance = lake.read_provenance(conf.lake.table(name))
        assert provenance["builder"] == "skyclass simulate" and provenance["simulated"] is True
        assert provenance["rows"] == rows == spark.read.parquet(conf.lake.table(name)).count()
        assert provenance["version"].startswith(skyclass.__version__)
        assert before <= datetime.fromisoformat(provenance["created_at"]) <= datetime.now(timezone.utc)
        assert provenance["inputs"]["seed"] == 2 and provenance["inputs"]["n_objects"] == 150
    # The cutouts carry their own mark, row by row.
    sources = spark.read.parquet(conf.lake.table("cutouts")).groupBy("source").count().collect()
    assert [(r["source"], r["count"]) for r in sources] == [("simulate", result.n_cutouts)]
    # Marked, so simulating into the same lake again (another table, another seed) is allowed.
    labelled = conf_for(score={"catalog": "catalog"})
    simulate_lake(spark, labelled, n_objects=60, seed=3, rows_per_partition=100)
    assert lake.read_provenance(labelled.lake.table("catalog"))["inputs"]["table"] == "catalog"


def test_simulate_refuses_a_lake_with_a_real_catalog_and_changes_nothing(spark, conf_for):
    from skyclass.simulate import RealLakeError

    conf = conf_for()  # writes photometric + cutouts; the lake's labelled catalog is real
    _write_real_catalog(conf, "catalog")
    root = conf.lake.path("root")
    before = _tree(root)
    with pytest.raises(RealLakeError) as caught:
        simulate_lake(spark, conf, n_objects=50, seed=1)
    message = str(caught.value)
    assert root in message and conf.lake.table("catalog") in message and "catalog table" in message
    assert "lake.root" in message and "_provenance.json" in message
    assert _tree(root) == before  # no photometric, no cutouts, nothing else either


@pytest.mark.parametrize("case", ["real_cutouts", "old_cutouts", "real_photometric", "unmarked_provenance"])
def test_simulate_refuses_every_kind_of_real_table(spark, conf_for, case):
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from skyclass.simulate import RealLakeError

    conf = conf_for()
    if case in ("real_cutouts", "old_cutouts"):
        # A simulated lake whose cutouts table also holds cutouts from elsewhere.
        simulate_lake(spark, conf, n_objects=30, seed=1, rows_per_partition=30)
        schema = lake.CUTOUTS.arrow_schema()
        row = {"objid": [1], "ra": [1.0], "dec": [2.0], "scale_arcsec_per_px": [0.396], "size_px": [64],
               "jpeg": [b"\xff\xd8"], "fetched_at": [datetime(2024, 1, 1, tzinfo=timezone.utc)],
               "source": ["skyserver"]}
        if case == "old_cutouts":  # written before sources were recorded: "unknown", not simulated
            del row["source"]
            schema = schema.remove(schema.get_field_index("source"))
        pq.write_table(pa.table(row, schema=schema), os.path.join(conf.lake.table("cutouts"), "part-x.parquet"))
        expected = "skyserver" if case == "real_cutouts" else "unknown"
    elif case == "real_photometric":
        _write_real_catalog(conf, "photometric")
        expected = "no _provenance.json"
    else:
        _write_real_catalog(conf, "photometric")
        lake.write_provenance(conf.lake.table("photometric"), {"builder": "skyclass extract", "simulated": False})
        expected = "does not say simulated: true"
    before = _tree(conf.lake.path("root"))
    with pytest.raises(RealLakeError, match=expected):
        simulate_lake(spark, conf, n_objects=30, seed=1, rows_per_partition=30)
    assert _tree(conf.lake.path("root")) == before


def test_a_training_table_built_from_a_simulated_lake_keeps_it_simulated(spark, conf_for):
    from skyclass.training_table import build_training_table

    conf = conf_for(score={"catalog": "catalog"})
    simulate_lake(spark, conf, n_objects=300, seed=4, rows_per_partition=150)
    stats = build_training_table(spark, conf)
    assert stats.catalog_simulated and stats.cutout_sources.keys() == {"simulate"}
    simulate_lake(spark, conf, n_objects=300, seed=5, rows_per_partition=150)  # allowed: all marked
    # A training table that does not say it was built from simulated data blocks simulate.
    import json

    from skyclass.simulate import RealLakeError

    path = lake.training_stats_path(conf.lake.path("root"))
    with open(path, encoding="utf-8") as fh:
        document = json.load(fh)
    document["catalog_simulated"] = False
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(document, fh)
    with pytest.raises(RealLakeError, match="training table"):
        simulate_lake(spark, conf, n_objects=300, seed=5, rows_per_partition=150)
