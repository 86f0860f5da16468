"""The training table: split, labels, features, statistics and the cutout rule, checked against values computed
here independently (hashlib for the split, numpy for the statistics) from hand-built lake tables."""
from __future__ import annotations

import hashlib
import io
import json
import os
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from catalog_fixture import make_labelled
from skyclass import lake
from skyclass.config import CLASSES, SplitConfig
from skyclass.training_table import (TrainingTableError, build_training_table, split_column,
                                     split_fraction_column)

SALT = "test-salt"


def expected_split(objid: int, salt: str, train: float, validation: float) -> str:
    """The documented rule, recomputed with hashlib rather than Spark."""
    fraction = int(hashlib.sha256(f"{salt}:{objid}".encode()).hexdigest()[:13], 16) / 16**13
    return "train" if fraction < train else "validation" if fraction < train + validation else "test"


def catalog_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """A lake catalog (lake.CATALOG columns) with zwarning rows, sentinel magnitudes and an unknown class."""
    frame = make_labelled(n, seed, zwarning=True, sentinels=12)
    frame.loc[frame.index[:5], "class"] = "UNKNOWN"  # a class the model does not know
    frame.loc[frame.index[:5], "zwarning"] = 0
    frame.loc[frame.index[:5], "u"] = 19.0
    quality = np.where(frame["u"] < 0, lake.QUALITY_BAD_PHOTOMETRY,
                       np.where(frame["zwarning"] != 0, lake.QUALITY_ZWARNING, lake.QUALITY_OK))
    frame["quality"] = quality
    frame["specobjid"] = [Decimal(int(v)) for v in frame["specobjid"]]
    return frame[lake.CATALOG.names]


def noise_jpeg(seed: int, size_px: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size_px, size_px, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def write_catalog(conf, frame: pd.DataFrame) -> None:
    path = conf.lake.table("catalog")
    os.makedirs(path, exist_ok=True)
    table = pa.Table.from_pandas(frame, schema=lake.CATALOG.arrow_schema(), preserve_index=False)
    pq.write_table(table, os.path.join(path, "part-0.parquet"))


def write_cutouts(conf, frame: pd.DataFrame, source="skyserver", name="part-0.parquet", first_jpeg=0) -> None:
    """``frame``'s objects as a cutouts file; ``source=None`` writes it as before sources were recorded (no
    column)."""
    path = conf.lake.table("cutouts")
    os.makedirs(path, exist_ok=True)
    cutouts = pd.DataFrame({
        "objid": frame["objid"].to_numpy(), "ra": frame["ra"].to_numpy(), "dec": frame["dec"].to_numpy(),
        "scale_arcsec_per_px": 0.396, "size_px": np.int32(64),
        "jpeg": [noise_jpeg(first_jpeg + k) for k in range(len(frame))],
        "fetched_at": pd.Timestamp("2024-01-01 12:00:00"),
        "source": source,
    })
    schema = lake.CUTOUTS.arrow_schema()
    if source is None:
        cutouts = cutouts.drop(columns="source")
        schema = schema.remove(schema.get_field_index("source"))
    table = pa.Table.from_pandas(cutouts, schema=schema, preserve_index=False)
    pq.write_table(table, os.path.join(path, name))


def read_split(conf, split: str) -> pd.DataFrame:
    return pq.read_table(lake.training_split_path(conf.lake.path("root"), split)).to_pandas()


@pytest.fixture
def table_conf(conf_for):
    return conf_for(split={"train": 0.7, "validation": 0.2, "test": 0.1, "salt": SALT},
                    cutouts={"rows_per_row_group": 40, "rows_per_file": 200})


def test_split_fraction_matches_hashlib_and_fractions_are_close(spark):
    from pyspark.sql import functions as F

    objids = [1237645000000000000 + 7919 * k for k in range(20_000)]
    frame = spark.range(20_000).select((F.lit(objids[0]) + F.col("id") * 7919).alias("objid"))
    split = SplitConfig(train=0.8, validation=0.1, test=0.1, salt=SALT)
    got = (frame.select("objid", split_fraction_column(SALT).alias("f"), split_column(split).alias("s"))
           .orderBy("objid").toPandas())
    expected_fraction = [int(hashlib.sha256(f"{SALT}:{o}".encode()).hexdigest()[:13], 16) / 16**13 for o in objids]
    np.testing.assert_array_equal(got["f"].to_numpy(), np.array(expected_fraction))
    assert got["s"].tolist() == [expected_split(o, SALT, 0.8, 0.1) for o in objids]
    shares = got["s"].value_counts(normalize=True)
    # 20,000 draws: binomial standard error of a 10 % share is 0.2 %, so 1 % is five sigma.
    assert abs(shares["train"] - 0.8) < 0.01 and abs(shares["validation"] - 0.1) < 0.01
    # Another salt reshuffles.
    other = frame.select(split_column(SplitConfig(salt="other")).alias("s")).toPandas()["s"]
    assert (other != got["s"]).mean() > 0.2


def test_training_table_rows_labels_stats_and_cutout_rule(spark, table_conf):
    conf = table_conf
    catalog = catalog_frame(600, seed=3)
    with_cutout = catalog.iloc[::5].index  # every fifth object has no cutout
    has_cutout = catalog.drop(index=with_cutout)
    write_catalog(conf, catalog)
    write_cutouts(conf, has_cutout)

    result = build_training_table(spark, conf)

    usable = catalog[(catalog["quality"] == "ok") & catalog["class"].isin(CLASSES)]
    expected = usable[usable["objid"].isin(has_cutout["objid"])].copy()
    expected["split"] = [expected_split(o, SALT, 0.7, 0.2) for o in expected["objid"]]
    assert result.excluded == {
        "zwarning": int((catalog["quality"] == "zwarning").sum()),
        "bad_photometry": int((catalog["quality"] == "bad_photometry").sum()),
        "unknown_class": 5,
        "no_cutout": int(len(usable) - len(expected)),
    }
    assert result.excluded["no_cutout"] > 50 and not result.tabular_only

    jpeg_of = dict(zip(has_cutout["objid"], [noise_jpeg(k) for k in range(len(has_cutout))]))
    for split in lake.SPLITS:
        got = read_split(conf, split).sort_values("objid").reset_index(drop=True)
        want = expected[expected["split"] == split].sort_values("objid").reset_index(drop=True)
        assert got["objid"].tolist() == want["objid"].tolist(), split
        assert (got["split"] == split).all()
        assert got["label"].tolist() == [CLASSES.index(c) for c in want["class"]]
        assert got["class"].tolist() == want["class"].tolist()
        assert [bytes(b) for b in got["jpeg"]] == [jpeg_of[o] for o in got["objid"]]
        np.testing.assert_allclose(got["g_r"], (want["g"] - want["r"]).astype(np.float32), rtol=1e-6)
        assert result.rows[split] == len(want)

    schema = pq.read_schema(next(_parquet_files(conf, "train")))
    assert schema.field("label").type == pa.int32() and schema.field("u_g").type == pa.float32()
    assert schema.field("jpeg").type == pa.binary()

    stats = json.loads(open(result.stats_path).read())
    train = expected[expected["split"] == "train"]
    mags = {m: train[m].to_numpy() for m in lake.MAGNITUDES}
    independent = {m: mags[m].astype(np.float32) for m in lake.MAGNITUDES}
    for colour, blue, red in (("u_g", "u", "g"), ("g_r", "g", "r"), ("r_i", "r", "i"), ("i_z", "i", "z")):
        independent[colour] = (mags[blue] - mags[red]).astype(np.float32)
    redshift = train["redshift"].to_numpy()
    independent["redshift"] = redshift.astype(np.float32)
    independent["redshift_asinh"] = np.log(redshift / 0.001 + np.sqrt((redshift / 0.001) ** 2 + 1)).astype(np.float32)
    independent["redshift_zero"] = (redshift == 0).astype(np.float32)
    assert set(stats["features"]) == set(independent)
    for name, values in independent.items():
        values = values.astype(np.float64)
        assert stats["features"][name]["mean"] == pytest.approx(values.mean(), rel=1e-9, abs=1e-9), name
        assert stats["features"][name]["std"] == pytest.approx(values.std(), rel=1e-6), name
    assert stats["classes"] == list(CLASSES)
    assert stats["label_counts"] == {c: int((train["class"] == c).sum()) for c in CLASSES}
    assert stats["rows"] == {s: int((expected["split"] == s).sum()) for s in lake.SPLITS}
    assert stats["image_size_px"] == 64
    # Every row's cutout came from (what the cutouts table calls) SkyServer; the catalog has no provenance.
    assert stats["cutout_sources"] == {"skyserver": len(expected)} == result.cutout_sources
    assert stats["catalog_simulated"] is False and stats["simulated"] is False and not result.simulated


def test_cutout_sources_are_counted_and_old_files_without_the_column_read_as_unknown(spark, table_conf, caplog):
    conf = table_conf
    catalog = catalog_frame(300, seed=8)
    write_catalog(conf, catalog)
    # Three generations of files in one table: before sources were recorded, from SkyServer, from the stand-in.
    thirds = [catalog.iloc[k::3] for k in range(3)]
    write_cutouts(conf, thirds[0], source=None, name="part-old.parquet")
    write_cutouts(conf, thirds[1], source="skyserver", name="part-real.parquet", first_jpeg=1000)
    write_cutouts(conf, thirds[2], source="standin-simulated", name="part-standin.parquet", first_jpeg=2000)
    with caplog.at_level("WARNING", logger="skyclass.training_table"):
        result = build_training_table(spark, conf)

    usable = catalog["quality"].eq("ok") & catalog["class"].isin(CLASSES)
    expected = {source: int(usable.loc[part.index].sum())
                for source, part in zip(("unknown", "skyserver", "standin-simulated"), thirds)}
    stats = json.loads(open(result.stats_path).read())
    assert stats["cutout_sources"] == expected and sum(expected.values()) == sum(result.rows.values())
    # A stand-in cutout among them: the table holds simulated data.
    assert stats["simulated"] is True and stats["catalog_simulated"] is False and result.simulated
    assert f"{expected['unknown']} rows have cutouts of unknown source" in caplog.text
    # The old file's cutouts are in the table like the others.
    frames = pd.concat([read_split(conf, s) for s in lake.SPLITS])
    assert set(frames["objid"]) == set(catalog.loc[usable, "objid"])


def test_a_catalog_marked_simulated_makes_the_table_simulated(spark, table_conf):
    conf = table_conf
    catalog = catalog_frame(200, seed=9)
    write_catalog(conf, catalog)
    lake.write_provenance(conf.lake.table("catalog"), {"builder": "skyclass simulate", "simulated": True})
    result = build_training_table(spark, conf)
    stats = json.loads(open(result.stats_path).read())
    assert stats["catalog_simulated"] is True and stats["simulated"] is True and stats["cutout_sources"] == {}
    # A provenance that does not say simulated: true (e.g. a future extract's) leaves the table real.
    lake.write_provenance(conf.lake.table("catalog"), {"builder": "skyclass extract", "simulated": False})
    stats = json.loads(open(build_training_table(spark, conf).stats_path).read())
    assert stats["catalog_simulated"] is False and stats["simulated"] is False


def test_training_files_have_several_row_groups(spark, table_conf):
    conf = table_conf
    catalog = catalog_frame(600, seed=4)
    write_catalog(conf, catalog)
    write_cutouts(conf, catalog)
    build_training_table(spark, conf)
    files = list(_parquet_files(conf, "train"))
    row_groups = [pq.ParquetFile(f).metadata.num_row_groups for f in files]
    rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
    assert max(rows) <= 200  # rows_per_file
    assert sum(row_groups) >= 4 and max(row_groups) >= 2, (rows, row_groups)


def test_rerun_replaces_the_table_and_split_is_stable(spark, table_conf):
    conf = table_conf
    catalog = catalog_frame(300, seed=5)
    write_catalog(conf, catalog)
    write_cutouts(conf, catalog)
    first = build_training_table(spark, conf)
    before = {s: sorted(read_split(conf, s)["objid"]) for s in lake.SPLITS}
    second = build_training_table(spark, conf)
    after = {s: sorted(read_split(conf, s)["objid"]) for s in lake.SPLITS}
    assert before == after and first.rows == second.rows
    leftovers = [n for n in os.listdir(conf.lake.path("root")) if n.startswith("training") and n != "training"]
    assert leftovers == []
    visible = {n for n in os.listdir(os.path.join(conf.lake.path("root"), "training")) if not n.startswith(".")}
    assert visible == {"_SUCCESS", "stats.json", "train", "validation", "test"}


def test_no_cutouts_gives_a_tabular_only_table(spark, table_conf, caplog):
    conf = table_conf
    catalog = catalog_frame(200, seed=6)
    write_catalog(conf, catalog)
    with caplog.at_level("WARNING", logger="skyclass.training_table"):
        result = build_training_table(spark, conf)
    assert result.tabular_only and "TABULAR-ONLY" in caplog.text
    usable = catalog[(catalog["quality"] == "ok") & catalog["class"].isin(CLASSES)]
    frames = pd.concat([read_split(conf, s) for s in lake.SPLITS])
    assert sorted(frames["objid"]) == sorted(usable["objid"])
    assert frames["jpeg"].isna().all()
    assert "no_cutout" not in result.excluded


def test_missing_catalog_says_what_to_run(spark, table_conf):
    with pytest.raises(TrainingTableError, match="skyclass extract"):
        build_training_table(spark, table_conf)


def _parquet_files(conf, split):
    folder = lake.training_split_path(conf.lake.path("root"), split)
    return (os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith(".parquet"))


def test_row_groups_mix_classes_even_when_the_catalog_arrives_sorted_by_class(spark, conf_for):
    """A catalog grouped by class (as per-class SkyServer exports are) must not give one-class row groups: the
    trainer's shuffle buffer is smaller than a row group."""
    import numpy as np
    import pyarrow.parquet as pq
    from catalog_fixture import make_labelled, write_csv
    from skyclass.extract import extract_catalog
    from skyclass.training_table import build_training_table
    import pathlib
    import tempfile

    frame = make_labelled(3000, seed=11).sort_values("class", kind="stable")
    conf = conf_for(cutouts={"rows_per_file": 1000, "rows_per_row_group": 250})
    csv = write_csv(frame, pathlib.Path(tempfile.mkdtemp()) / "sorted.csv")
    extract_catalog(spark, conf, from_csv=csv)
    build_training_table(spark, conf)
    train = pathlib.Path(conf.lake.table("training")) / "train"
    worst = 0.0
    for path in sorted(train.glob("*.parquet")):
        parquet = pq.ParquetFile(path)
        for k in range(parquet.metadata.num_row_groups):
            labels = parquet.read_row_group(k, columns=["label"]).column("label").to_numpy()
            worst = max(worst, np.bincount(labels, minlength=3).max() / len(labels))
    # The class mix is ~45/32/23 %; a sorted table would have row groups of 100 % one class.
    assert worst < 0.7
