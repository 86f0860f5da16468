"""Lake schemas, the atomic table swap (skyclass.storage), and the features shared by training and scoring."""
import io
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image
from skyclass import features, lake, storage
from skyclass.features import PAPER_FEATURES


def test_schemas_derive_consistently():
    for table in (lake.CATALOG, lake.PHOTOMETRIC, lake.CUTOUTS, lake.CUTOUT_FAILURES,
                  lake.training_table(PAPER_FEATURES),
                  lake.PREDICTIONS):
        spark_schema = table.spark_schema()
        assert [f.name for f in spark_schema.fields] == table.names == table.arrow_schema().names
    # specObjID beyond 2**63 must be exact: DECIMAL(20,0) holds 2**64-1.
    assert lake.CATALOG.spark_schema()["specobjid"].dataType.simpleString() == "decimal(20,0)"
    assert pa.array([2**64 - 1], type=lake.SPECOBJID_TYPE)[0].as_py() == 2**64 - 1


def test_with_columns_appends_once():
    extra = lake.CATALOG.with_columns([lake.Column("psfMag_r", pa.float64()), lake.Column("ra", pa.float64())])
    assert extra.names == lake.CATALOG.names + ["psfMag_r"]


def test_replace_directory_swaps_whole_table(spark, tmp_path):
    path = str(tmp_path / "t")
    storage.replace_directory(path, lambda p: spark.range(5).write.parquet(p))
    storage.replace_directory(path, lambda p: spark.range(3).write.parquet(p))
    assert spark.read.parquet(path).count() == 3
    assert storage.table_exists(path)
    assert not storage.table_exists(str(tmp_path / "nothing"))
    assert sorted(os.listdir(tmp_path)) == ["t"]  # no staging or previous folders left behind


def test_replace_directory_keeps_old_table_when_write_fails(spark, tmp_path):
    path = str(tmp_path / "t")
    storage.replace_directory(path, lambda p: spark.range(4).write.parquet(p))

    def broken(p):
        raise RuntimeError("executor lost")

    with pytest.raises(RuntimeError):
        storage.replace_directory(path, broken)
    assert spark.read.parquet(path).count() == 4

    # The new table is written and the old one already moved aside when the second rename fails (here: the
    # staging folder vanished, as when a cleaner removes it): the old table must be put back, the marker removed.
    def lose_staging(step):
        if step == "moved_aside":
            [staging] = [p for p in os.listdir(tmp_path) if ".staging-" in p]
            shutil.rmtree(tmp_path / staging)

    with pytest.raises(OSError):
        storage.replace_directory(path, lambda p: spark.range(9).write.parquet(p), on_step=lose_staging)
    assert spark.read.parquet(path).count() == 4
    assert sorted(os.listdir(tmp_path)) == ["t"]  # no previous, staging or swap marker left behind


def test_colours_spark_and_pandas_agree_and_null_sentinels(spark):
    frame = pd.DataFrame({"u": [19.0, -9999.0, 21.5], "g": [18.0, 17.0, 20.25], "r": [17.5, 16.5, 20.0],
                          "i": [17.25, 16.0, 19.5], "z": [17.0, 15.75, 41.0]})
    got = features.add_colours(spark.createDataFrame(frame)).toPandas()
    # By hand: row 0 u-g=1, g-r=0.5, r-i=0.25, i-z=0.25; row 1 has u=-9999 → u-g unusable;
    # row 2 has z=41 (implausible) → i-z unusable.
    assert got.loc[0, ["u_g", "g_r", "r_i", "i_z"]].tolist() == [1.0, 0.5, 0.25, 0.25]
    assert pd.isna(got.loc[1, "u_g"]) and got.loc[1, "g_r"] == 0.5
    assert pd.isna(got.loc[2, "i_z"]) and got.loc[2, "u_g"] == 1.25
    pandas_got = features.add_colours_pandas(frame)
    pd.testing.assert_frame_equal(pandas_got[["u_g", "g_r", "r_i", "i_z"]], got[["u_g", "g_r", "r_i", "i_z"]])
    assert features.photometry_ok_pandas(frame).tolist() == [True, False, False]
    ok = spark.createDataFrame(frame).select(features.photometry_ok_column().alias("ok")).toPandas()["ok"]
    assert ok.tolist() == [True, False, False]


def test_redshift_encodings_spark_and_pandas_agree(spark):
    frame = pd.DataFrame({"redshift": [0.0, 0.001, -0.001, 1.0, None]})
    got = features.add_redshift_encodings(spark.createDataFrame(frame)).toPandas()
    # By hand: asinh(0)=0, asinh(+-1)=+-ln(1+sqrt(2)), asinh(1000)=ln(1000+sqrt(1000001)); only 0.0 is flagged.
    want_asinh = [0.0, np.log(1 + np.sqrt(2)), -np.log(1 + np.sqrt(2)), np.log(1000 + np.sqrt(1_000_001))]
    np.testing.assert_allclose(got["redshift_asinh"][:4], want_asinh, rtol=1e-12)
    assert got["redshift_zero"][:4].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert pd.isna(got.loc[4, "redshift_asinh"]) and pd.isna(got.loc[4, "redshift_zero"])
    pandas_got = features.add_redshift_encodings_pandas(frame)
    pd.testing.assert_frame_equal(pandas_got, got, check_dtype=False)


def test_source_columns_name_what_derived_features_need():
    assert features.source_columns(("g_r", "u", "redshift_zero", "redshift_asinh")) == ("g", "r", "u", "redshift")
    assert features.source_columns(features.feature_names("photometric")) == lake.MAGNITUDES


def test_declared_features_spark_and_pandas_agree_with_values_by_hand(spark):
    frame = pd.DataFrame({
        "u": [19.0, 20.0, 18.0], "g": [18.0, 19.5, 17.0], "r": [17.5, 19.0, 16.0], "i": [17.0, 18.5, 15.5],
        "z": [16.5, 18.0, 15.0],
        "psfmag_r": [18.25, -9999.0, 16.0], "cmodelmag_r": [17.5, 19.0, 16.0], "cmodelmag_g": [18.0, 19.5, 17.25],
        "extinction_g": [0.125, 0.25, 0.0], "extinction_r": [0.0625, 0.125, np.nan], "petrorad_r": [3.5, -9999.0, 1.25],
    })
    names = ["psf_minus_cmodel_r", "dered_cmodelmag_r", "dered_cModelMag_g_r", "cmodelmag_g_r", "dered_g",
             "petroRad_r", "r"]
    got = features.add_features(spark.createDataFrame(frame), names).toPandas()
    # By hand: row 0 psf-cModel 0.75, dereddened cModel r 17.4375, dereddened colour (18-0.125)-(17.5-0.0625)
    # = 0.4375, colour 0.5, dered g 17.875; row 1 has psfMag_r and petroRad_r sentinels; row 2 lacks A_r.
    want = pd.DataFrame({
        "psf_minus_cmodel_r": [0.75, np.nan, 0.0], "dered_cmodelmag_r": [17.4375, 18.875, np.nan],
        "dered_cmodelmag_g_r": [0.4375, 0.375, np.nan], "cmodelmag_g_r": [0.5, 0.5, 1.25],
        "dered_g": [17.875, 19.25, 17.0], "petrorad_r": [3.5, np.nan, 1.25], "r": [17.5, 19.0, 16.0]})
    pd.testing.assert_frame_equal(got[list(want.columns)], want)
    pd.testing.assert_frame_equal(features.add_features_pandas(frame, names)[list(want.columns)], want)
    assert features.source_columns(names) == ("psfmag_r", "cmodelmag_r", "extinction_r", "cmodelmag_g",
                                              "extinction_g", "g", "petrorad_r", "r")
    assert features.inputs_ok_pandas(frame, ["psf_minus_cmodel_r"]).tolist() == [True, False, True]
    with pytest.raises(features.FeatureError, match="needs catalog column 'psfmag_g'"):
        features.add_features_pandas(frame, ["psf_minus_cmodel_g"])


def test_extract_does_not_import_later_stages():
    import subprocess
    import sys

    code = "import sys, skyclass.extract; print(sorted(m for m in sys.modules if m.startswith('skyclass.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(eval(out))
    assert "skyclass.lake" in loaded and not loaded & {"skyclass.features", "skyclass.training_table"}


def test_standardise_uses_stored_stats_and_zeroes_missing():
    frame = pd.DataFrame({"a": [1.0, 3.0, np.nan], "b": [10.0, 10.0, 12.0]})
    stats = {"a": {"mean": 2.0, "std": 1.0}, "b": {"mean": 10.0, "std": 2.0}}
    got = features.standardise(frame, ["b", "a"], stats)
    np.testing.assert_array_equal(got, np.array([[0, -1], [0, 1], [1, 0]], dtype=np.float32))
    with pytest.raises(KeyError, match="'c'"):
        features.standardise(frame, ["c"], stats)


def test_feature_sets():
    assert features.feature_names("photometric") == ("u", "g", "r", "i", "z", "u_g", "g_r", "r_i", "i_z")
    assert features.feature_names("paper")[9:] == ("redshift", "redshift_asinh", "redshift_zero")
    with pytest.raises(ValueError, match="photometric"):
        features.feature_names("spectro")


def _jpeg(colour, size):
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_decode_jpegs_scales_resizes_and_masks_broken():
    blobs = [_jpeg((255, 0, 0), 64), None, b"not a jpeg", _jpeg((0, 0, 255), 128)]
    images, ok = features.decode_jpegs(blobs, 64)
    assert images.shape == (4, 64, 64, 3) and images.dtype == np.float32
    assert ok.tolist() == [True, False, False, True]
    assert images[0, 32, 32, 0] > 0.95 and images[0, 32, 32, 2] < 0.05
    assert images[3, 10, 10, 2] > 0.95  # 128 px resized down to 64
    assert not images[1].any() and not images[2].any()
    with pytest.raises(features.CutoutDecodeError):
        features.decode_jpeg(b"\xff\xd8garbage", 64)


def test_a_labels_only_training_split_says_once_that_it_has_no_photometry(spark, caplog):
    """feature_stats warns in one line when no feature has values (a labels-only image table), and names the empty
    features when only some are empty; the empty ones get mean 0, std 1."""
    import logging

    from skyclass.training_table import feature_stats

    df = spark.createDataFrame([(1.0, None, None), (2.0, None, None)], "a double, b double, c double")
    with caplog.at_level(logging.WARNING, logger="skyclass.training_table"):
        assert feature_stats(df, ["b", "c"]) == {"b": {"mean": 0.0, "std": 1.0}, "c": {"mean": 0.0, "std": 1.0}}
    assert [r.getMessage() for r in caplog.records] == [
        "no feature has finite values (2: no photometry) in the training split; storing mean 0, std 1"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="skyclass.training_table"):
        assert feature_stats(df, ["a", "b", "c"])["a"] == {"mean": 1.5, "std": 0.5}
    assert [r.getMessage() for r in caplog.records] == [
        "features b, c have no finite values in the training split; storing mean 0, std 1"]
