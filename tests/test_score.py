"""Scoring: batch classification against independently computed expectations, the tabular fallback, incremental
nights with atomic partition swaps, model loading once per worker, and a driver that never collects rows."""
from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skyclass import lake
from skyclass.config import CLASSES, load_config
from skyclass.features import COLOURS, PAPER_FEATURES, PHOTOMETRIC_FEATURES
from skyclass.inference import InferenceError, KerasModel, WorkerModels
from skyclass.score import (
    STATUS_BAD_PHOTOMETRY,
    STATUS_NO_CUTOUT,
    STATUS_OK,
    ScoreError,
    ScoringSpec,
    resolve_run_date,
    score_catalog,
    score_frame,
)

FEATURES = PHOTOMETRIC_FEATURES
# Hand-picked statistics (not computed from the data) so expected z-scores are easy to check.
NORMALISATION = {**{m: {"mean": 18.0, "std": 1.5} for m in lake.MAGNITUDES},
                 **{c: {"mean": 0.5, "std": 0.5} for c in COLOURS}}
SIZE_PX = 64


def make_package(models_dir, version: str, mode: str = "multimodal", *, seed: int = 0) -> str:
    """A small untrained package written with skyclass.package (scoring does not care about the weights)."""
    import tensorflow as tf
    from skyclass.models import build_model
    from skyclass.package import keras_model_bytes, write_package

    tf.keras.utils.set_random_seed(seed)
    small = dict(tabular_units=(16,), fusion_units=(8,), dropout=0.0)
    main = build_model(mode, n_features=len(FEATURES), image_size_px=SIZE_PX, cnn_filters=(4, 8), **small)
    tabular = build_model("tabular", n_features=len(FEATURES), **small) if mode != "tabular" else main
    metadata = {"mode": mode, "backbone": "small_cnn", "feature_set": "photometric", "features": list(FEATURES),
                "classes": list(CLASSES), "normalisation": NORMALISATION,
                "image_size_px": SIZE_PX if mode != "tabular" else None}
    return write_package(str(models_dir), version, model_keras=keras_model_bytes(main),
                         tabular_keras=keras_model_bytes(tabular), metadata=metadata)


def hand_features(frame: pd.DataFrame) -> np.ndarray:
    """Standardised features computed without skyclass.features: bad magnitudes (and their colours) → 0."""
    out = np.zeros((len(frame), len(FEATURES)), np.float32)
    mags = {m: frame[m].to_numpy(float) for m in lake.MAGNITUDES}
    good = {m: (v > 0) & (v < 40) for m, v in mags.items()}
    for k, name in enumerate(FEATURES):
        if name in mags:
            value, ok = mags[name], good[name]
        else:
            blue, red = name.split("_")
            value, ok = mags[blue] - mags[red], good[blue] & good[red]
        z = (value - NORMALISATION[name]["mean"]) / NORMALISATION[name]["std"]
        out[:, k] = np.where(ok, z, 0.0)
    return out


def hand_image(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as img:
        return np.asarray(img.convert("RGB"), np.float32) / 255.0


def _jpeg(seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (SIZE_PX, SIZE_PX, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    return {"v1": make_package(models, "v1", seed=1), "v2": make_package(models, "v2", seed=2),
            "tab": make_package(models, "tab", "tabular", seed=3)}


def _spec(path):
    from skyclass.package import ModelPackage

    return ScoringSpec.from_package(ModelPackage.load(path), path)


def _models(path):
    from skyclass.package import ModelPackage

    package = ModelPackage.load(path)
    return package.load_model(), package.load_tabular_model()


def _keras(main, tabular):
    return WorkerModels(KerasModel(main), KerasModel(tabular), "keras")


def _predict(model, **inputs):
    return model.predict({k: v for k, v in inputs.items() if k in model.input_names}, verbose=0)


def test_score_frame_matches_independent_computation(packages):
    good = _jpeg(1)
    frame = pd.DataFrame({
        "objid": np.array([11, 12, 13, 14], np.int64),
        "u": [19.1, 18.2, -9999.0, 20.5], "g": [17.3, 17.0, 16.9, 19.1], "r": [16.4, 16.6, 16.2, 18.7],
        "i": [16.0, 16.3, 15.9, 18.5], "z": [15.8, 16.1, 15.7, 18.3],
        "jpeg": [good, None, _jpeg(2), good[:100]],  # ok, missing, ok (bad photometry), truncated
    })
    main, tabular = _models(packages["v1"])
    got = score_frame(frame, _spec(packages["v1"]), _keras(main, tabular))

    assert list(got.columns) == lake.PREDICTIONS.names
    assert got["objid"].tolist() == [11, 12, 13, 14]
    assert got["status"].tolist() == [STATUS_OK, STATUS_NO_CUTOUT, STATUS_BAD_PHOTOMETRY, STATUS_NO_CUTOUT]
    x = hand_features(frame)
    assert x[2, 0] == 0.0 and x[2, FEATURES.index("u_g")] == 0.0  # the sentinel never reaches the model
    expected = np.zeros((4, 3), np.float32)
    with_image = [0, 2]
    expected[with_image] = _predict(main, features=x[with_image],
                                    image=np.stack([hand_image(frame["jpeg"][k]) for k in with_image]))
    expected[[1, 3]] = _predict(tabular, features=x[[1, 3]])
    proba = got[["p_galaxy", "p_star", "p_qso"]].to_numpy()
    np.testing.assert_allclose(proba, expected, atol=1e-5)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert got["predicted_class"].tolist() == [CLASSES[k] for k in expected.argmax(axis=1)]
    assert set(got["model_version"]) == {"v1"}
    # The fallback really is the tabular model: the main model on a blank image would say something else.
    blank = _predict(main, features=x[[1]], image=np.zeros((1, SIZE_PX, SIZE_PX, 3), np.float32))
    assert not np.allclose(proba[1], blank[0], atol=1e-4)


def test_tabular_package_ignores_images(packages):
    frame = pd.DataFrame({"objid": np.array([1, 2], np.int64), "u": [19.0, 19.5], "g": [18.0, 18.1],
                          "r": [17.5, 17.2], "i": [17.3, 17.0], "z": [17.1, np.nan]})
    main, tabular = _models(packages["tab"])
    got = score_frame(frame, _spec(packages["tab"]), _keras(main, tabular))
    assert got["status"].tolist() == [STATUS_OK, STATUS_BAD_PHOTOMETRY]
    np.testing.assert_allclose(got[["p_galaxy", "p_star", "p_qso"]].to_numpy(),
                               _predict(main, features=hand_features(frame)), atol=1e-5)


@pytest.mark.parametrize("text", ["2024-13-01", "20240101", "yesterday", "2024-1-5"])
def test_bad_run_dates_are_refused(text):
    with pytest.raises(ScoreError, match="YYYY-MM-DD"):
        resolve_run_date(text)
    assert resolve_run_date("2024-02-29") == "2024-02-29"


# --------------------------------------------------------------------------------------------------------------
# On Spark, over one small simulated lake shared by the tests below (each test has its own predictions folder).

N_OBJECTS = 600
SIM = dict(seed=4, rows_per_partition=200, missing_cutout_fraction=0.05, sentinel_fraction=0.03,
           corrupt_cutout_fraction=0.02)


@pytest.fixture(scope="module")
def lake_root(spark, tmp_path_factory):
    from skyclass.simulate import simulate_lake

    root = tmp_path_factory.mktemp("lake")
    simulate_lake(spark, load_config(None, [f"lake.root={root}"]), n_objects=N_OBJECTS, **SIM)
    return root


@pytest.fixture(scope="module")
def expected_objects():
    from skyclass.simulate import partition_bounds, simulated_objects

    options = {k: v for k, v in SIM.items() if k != "rows_per_partition"}
    return pd.concat([simulated_objects(p, *partition_bounds(p, N_OBJECTS, 200), **options) for p in range(3)]) \
        .set_index("objid")


def _conf(lake_root, tmp_path, **score):
    items = [f"lake.root={lake_root}", f"lake.predictions={tmp_path / 'predictions'}",
             f"lake.models={tmp_path / 'no-models'}", "score.batch_rows=64"]
    items += [f"score.{k}={v}" for k, v in score.items()]
    return load_config(None, items)


def _night(spark, conf, run_date):
    path = os.path.join(conf.lake.path("predictions"), f"run_date={run_date}")
    return spark.read.parquet(path).toPandas(), path


def _files(path):
    return sorted((name, os.path.getsize(os.path.join(path, name))) for name in os.listdir(path)
                  if name.endswith(".parquet"))


def _scored_with_load_log(spark, conf, log_dir):
    """score_catalog with every Python worker writing a line per real model load to log_dir/loads-<pid>.txt."""
    from skyclass.inference import LOAD_LOG_PROPERTY

    os.makedirs(log_dir, exist_ok=True)
    spark.sparkContext.setLocalProperty(LOAD_LOG_PROPERTY, str(log_dir))
    try:
        result = score_catalog(spark, conf)
    finally:
        spark.sparkContext.setLocalProperty(LOAD_LOG_PROPERTY, None)
    return result, {name: open(os.path.join(log_dir, name)).read().splitlines()
                    for name in sorted(os.listdir(log_dir))}


def test_models_load_once_per_worker_not_per_batch(spark, lake_root, tmp_path):
    # A package no worker of this test session has seen, so every load happens in this run.
    path = make_package(tmp_path / "models", "once", seed=21)
    result, loads = _scored_with_load_log(spark, _conf(lake_root, tmp_path, model=path, run_date="2024-07-01",
                                                       inference="keras"), tmp_path / "loads")
    # 600 objects in batches of 64 over the scoring stage's 4 tasks (spark.sql.shuffle.partitions here): at least
    # ten batches, and more tasks than local[2] has Python workers.
    assert result.n_scored == N_OBJECTS
    assert 1 <= len(loads) <= 2, loads
    assert all(len(lines) == 1 for lines in loads.values()), loads  # one load per worker process
    assert result.model_loads == len(loads)
    assert {line.split()[-1] for lines in loads.values() for line in lines} == {"keras"}


def test_keras_and_tflite_give_the_same_labels_on_the_same_lake(spark, lake_root, tmp_path):
    from skyclass.inference import add_cpu_models
    from skyclass.score import clean_photometry

    path = make_package(tmp_path / "models", "lite", seed=22)
    # Checked on rows of the lake itself (its photometric table stands in for the validation split).
    catalog = spark.read.parquet(os.path.join(lake_root, "photometric")).toPandas().iloc[:200]
    cutouts = spark.read.parquet(os.path.join(lake_root, "cutouts")).select("objid", "jpeg").toPandas()
    rows = clean_photometry(catalog).merge(cutouts, on="objid", how="left")
    rows["jpeg"] = [blob if isinstance(blob, (bytes, bytearray)) else None for blob in rows["jpeg"]]
    add_cpu_models(path, rows)
    nights = {}
    for backend in ("keras", "tflite"):
        conf = load_config(None, [f"lake.root={lake_root}", f"lake.predictions={tmp_path / backend}",
                                  "score.batch_rows=64", f"score.model={path}", "score.run_date=2024-08-01",
                                  f"score.inference={backend}"])
        result, loads = _scored_with_load_log(spark, conf, tmp_path / f"loads-{backend}")
        assert result.n_scored == N_OBJECTS and result.inference == backend
        assert {line.split()[-1] for lines in loads.values() for line in lines} == {backend}
        nights[backend] = _night(spark, conf, "2024-08-01")[0].set_index("objid").sort_index()
    keras, lite = nights["keras"], nights["tflite"]
    assert list(keras.index) == list(lite.index) and len(keras) == N_OBJECTS
    assert (keras["predicted_class"] == lite["predicted_class"]).all()
    assert (keras["status"] == lite["status"]).all() and set(keras["status"]) >= {STATUS_OK, STATUS_NO_CUTOUT}
    columns = ["p_galaxy", "p_star", "p_qso"]
    np.testing.assert_allclose(lite[columns].to_numpy(), keras[columns].to_numpy(), atol=1e-5, rtol=0)


def test_a_package_without_a_tflite_form_is_scored_with_keras_and_says_so_once(spark, lake_root, packages,
                                                                               tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="skyclass"):
        result = score_catalog(spark, _conf(lake_root, tmp_path, model=packages["v1"], run_date="2024-09-01",
                                            inference="tflite"))
    said = [r for r in caplog.records if "has no TensorFlow Lite form" in r.getMessage()]
    assert len(said) == 1 and packages["v1"] in said[0].getMessage() and "--add-cpu-model" in said[0].getMessage()
    assert result.inference == "keras" and result.n_scored == N_OBJECTS


def test_nights_are_incremental_and_rescore_replaces_without_duplicates(spark, lake_root, expected_objects,
                                                                        packages, tmp_path):
    first = score_catalog(spark, _conf(lake_root, tmp_path, model=packages["v1"], run_date="2024-01-01"))
    assert (first.n_catalog, first.n_scored, first.n_skipped) == (N_OBJECTS, N_OBJECTS, 0)
    # At most once per Python worker: local[2] runs two at a time and reuses them for every task and batch (an
    # earlier test of this session may have left v1 loaded in them: then 0).
    assert first.model_loads <= 2
    night1, night1_path = _night(spark, _conf(lake_root, tmp_path), "2024-01-01")
    assert len(night1) == N_OBJECTS and night1["objid"].is_unique
    assert set(night1["objid"]) == set(expected_objects.index)
    # Statuses follow from the simulator's own bookkeeping.
    exp = expected_objects.loc[night1["objid"]]
    expected_status = np.where(exp["quality"] == lake.QUALITY_BAD_PHOTOMETRY, STATUS_BAD_PHOTOMETRY,
                               np.where(exp["has_cutout"] & ~exp["corrupt_cutout"], STATUS_OK, STATUS_NO_CUTOUT))
    np.testing.assert_array_equal(night1["status"].to_numpy(), expected_status)
    assert {STATUS_OK, STATUS_NO_CUTOUT, STATUS_BAD_PHOTOMETRY} <= set(night1["status"])
    assert dict(first.status_counts) == night1["status"].value_counts().to_dict()

    # The next night skips everything already scored by v1, and writes no empty partition.
    second = score_catalog(spark, _conf(lake_root, tmp_path, model=packages["v1"], run_date="2024-01-02"))
    assert (second.n_scored, second.n_skipped) == (0, N_OBJECTS)
    assert not os.path.exists(os.path.join(tmp_path, "predictions", "run_date=2024-01-02"))
    files_before = _files(night1_path)
    rerun = score_catalog(spark, _conf(lake_root, tmp_path, model=packages["v1"], run_date="2024-01-01"))
    assert rerun.n_scored == 0 and _files(night1_path) == files_before

    # A new model version scores everything again, on its own night.
    third = score_catalog(spark, _conf(lake_root, tmp_path, model=packages["v2"], run_date="2024-01-03"))
    assert third.n_scored == N_OBJECTS
    night3_path = os.path.join(tmp_path, "predictions", "run_date=2024-01-03")
    night3_files = _files(night3_path)

    # Rescoring night 1 with v2 replaces it whole: each object once, all v2; night 3 untouched.
    rescored = score_catalog(spark, _conf(lake_root, tmp_path, model=packages["v2"], run_date="2024-01-01",
                                          rescore="true"))
    assert rescored.n_scored == N_OBJECTS and rescored.n_night_rows == N_OBJECTS
    night1, _ = _night(spark, _conf(lake_root, tmp_path), "2024-01-01")
    assert night1.groupby("objid").size().max() == 1 and len(night1) == N_OBJECTS
    assert set(night1["model_version"]) == {"v2"}
    assert _files(night3_path) == night3_files
    # No staging or replaced folders are left behind.
    assert sorted(os.listdir(tmp_path / "predictions")) == ["run_date=2024-01-01", "run_date=2024-01-03"]
    whole = spark.read.parquet(str(tmp_path / "predictions"))
    assert whole.count() == 2 * N_OBJECTS


def test_a_night_whose_swap_died_midway_is_recovered_before_the_next_night_skips(spark, lake_root, packages,
                                                                               tmp_path, monkeypatch):
    from skyclass import storage

    score_catalog(spark, _conf(lake_root, tmp_path, model=packages["v1"], run_date="2024-03-01"))
    real_replace = storage.replace_directory

    class Crash(BaseException):
        """Stands for the driver dying: nothing after the first rename runs."""

    def crash_after_the_first_rename(path, write, **kwargs):
        def on_step(step):
            if step == "moved_aside":
                raise Crash()
        real_replace(path, write, on_step=on_step)

    monkeypatch.setattr(storage, "replace_directory", crash_after_the_first_rename)
    with pytest.raises(Crash):
        score_catalog(spark, _conf(lake_root, tmp_path, model=packages["v1"], run_date="2024-03-01", rescore="true"))
    monkeypatch.undo()
    night_path = os.path.join(tmp_path, "predictions", "run_date=2024-03-01")
    assert not os.path.exists(night_path)  # the crash left the night without its partition

    # The next night recovers the interrupted swap first, so it knows every object is already scored by v1.
    following = score_catalog(spark, _conf(lake_root, tmp_path, model=packages["v1"], run_date="2024-03-02"))
    assert (following.n_scored, following.n_skipped) == (0, N_OBJECTS)
    night, _ = _night(spark, _conf(lake_root, tmp_path), "2024-03-01")
    assert len(night) == N_OBJECTS and night["objid"].is_unique
    assert sorted(os.listdir(tmp_path / "predictions")) == ["run_date=2024-03-01"]


def test_objects_without_cutouts_are_scored_by_the_tabular_fallback(spark, lake_root, packages, tmp_path):
    score_catalog(spark, _conf(lake_root, tmp_path, model=packages["v1"], run_date="2024-02-01"))
    predictions, _ = _night(spark, _conf(lake_root, tmp_path), "2024-02-01")
    catalog = spark.read.parquet(os.path.join(lake_root, "photometric")).toPandas().set_index("objid")
    cutouts = spark.read.parquet(os.path.join(lake_root, "cutouts")).select("objid", "jpeg").toPandas() \
        .set_index("objid")["jpeg"]
    main, tabular = _models(packages["v1"])

    fallback = predictions[predictions["status"] == STATUS_NO_CUTOUT].set_index("objid")
    assert len(fallback) > 0
    x = hand_features(catalog.loc[fallback.index])
    np.testing.assert_allclose(fallback[["p_galaxy", "p_star", "p_qso"]].to_numpy(),
                               _predict(tabular, features=x), atol=1e-5)
    # ...and rows with a cutout got the main model on *their own* image (the join matched objids).
    ok = predictions[predictions["status"] == STATUS_OK].set_index("objid").iloc[:20]
    images = np.stack([hand_image(cutouts[objid]) for objid in ok.index])
    np.testing.assert_allclose(ok[["p_galaxy", "p_star", "p_qso"]].to_numpy(),
                               _predict(main, features=hand_features(catalog.loc[ok.index]), image=images),
                               atol=1e-5)


def test_missing_cutouts_table_means_every_object_falls_back(spark, packages, tmp_path):
    from skyclass.simulate import simulate_lake

    root = tmp_path / "lake"
    simulate_lake(spark, load_config(None, [f"lake.root={root}"]), n_objects=50, seed=9, cutouts=False)
    result = score_catalog(spark, _conf(root, tmp_path, model=packages["v1"], run_date="2024-03-01"))
    assert result.n_scored == 50
    assert set(result.status_counts) <= {STATUS_NO_CUTOUT, STATUS_BAD_PHOTOMETRY}


def test_driver_collects_aggregates_only(spark, lake_root, packages, tmp_path, monkeypatch):
    """Nothing but aggregates reaches the driver: every DataFrame action that returns rows is watched, and the
    largest result must stay at the size of a status count — whatever the catalog size. A `.collect()` or
    `.toPandas()` of catalog rows or predictions (600 rows here) fails this deterministically; a driver RSS
    comparison would need large catalogs and still be noisy."""
    from pyspark.sql import DataFrame

    returned = []

    def watch(name):
        original = getattr(DataFrame, name)

        def wrapper(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            returned.append((name, len(out) if hasattr(out, "__len__") else -1))
            return out

        monkeypatch.setattr(DataFrame, name, wrapper)

    for name in ("collect", "toPandas", "take", "head", "tail", "toLocalIterator"):
        watch(name)
    score_catalog(spark, _conf(lake_root, tmp_path, model=packages["v1"], run_date="2024-04-01"))
    assert returned, "score_catalog reads its counts through Spark actions; the spy saw none"
    assert all(name == "collect" for name, _ in returned), returned
    assert max(rows for _, rows in returned) <= 3, returned


def test_package_needing_redshift_cannot_score_the_photometric_catalog(spark, lake_root, tmp_path):
    from skyclass.models import build_model
    from skyclass.package import keras_model_bytes, write_package

    model = build_model("tabular", n_features=len(PAPER_FEATURES), tabular_units=(4,), dropout=0.0)
    blob = keras_model_bytes(model)
    path = write_package(str(tmp_path / "models"), "paper", model_keras=blob, tabular_keras=blob, metadata={
        "mode": "tabular", "features": list(PAPER_FEATURES), "classes": list(CLASSES),
        "normalisation": {f: {"mean": 0.0, "std": 1.0} for f in PAPER_FEATURES}, "image_size_px": None})
    with pytest.raises(ScoreError, match="redshift"):
        score_catalog(spark, _conf(lake_root, tmp_path, model=path))


def test_paper_package_scores_rows_with_the_redshift_encodings_computed_here(tmp_path):
    from skyclass.models import build_model
    from skyclass.package import keras_model_bytes, write_package

    model = build_model("tabular", n_features=len(PAPER_FEATURES), tabular_units=(8,), dropout=0.0)
    blob = keras_model_bytes(model)
    path = write_package(str(tmp_path / "models"), "paper", model_keras=blob, tabular_keras=blob, metadata={
        "mode": "tabular", "features": list(PAPER_FEATURES), "classes": list(CLASSES),
        "normalisation": {f: {"mean": 0.0, "std": 1.0} for f in PAPER_FEATURES}, "image_size_px": None})
    frame = pd.DataFrame({"objid": np.array([1, 2, 3], np.int64), "u": [19.0, 20.0, 18.0], "g": [18.0, 19.5, 17.0],
                          "r": [17.5, 19.0, 16.5], "i": [17.25, 18.8, 16.25], "z": [17.0, 18.7, 16.0],
                          "redshift": [0.0, 0.001, 2.5]})
    main, tabular = _models(path)
    got = score_frame(frame, _spec(path), _keras(main, tabular))
    # By hand, in PAPER_FEATURES order: magnitudes, colours, redshift, asinh(z / 0.001), z == 0.
    mags = frame[list(lake.MAGNITUDES)].to_numpy()
    colours = mags[:, :-1] - mags[:, 1:]
    z = frame["redshift"].to_numpy()
    x = np.column_stack([mags, colours, z, np.arcsinh(z / 0.001), [1.0, 0.0, 0.0]]).astype(np.float32)
    expected = _predict(model, features=x)
    np.testing.assert_allclose(got[["p_galaxy", "p_star", "p_qso"]].to_numpy(), expected, atol=1e-5)
    assert got["status"].tolist() == [STATUS_OK] * 3


def test_no_catalog_table_says_what_to_run(spark, packages, tmp_path):
    with pytest.raises(ScoreError, match="skyclass extract --photometric"):
        score_catalog(spark, _conf(tmp_path / "empty-lake", tmp_path, model=packages["v1"]))


def test_an_empty_batch_gives_an_empty_frame(packages):
    main, tabular = _models(packages["v1"])
    empty = pd.DataFrame({"objid": np.array([], np.int64), **{m: np.array([], float) for m in lake.MAGNITUDES},
                          "jpeg": pd.Series([], dtype=object)})
    got = score_frame(empty, _spec(packages["v1"]), _keras(main, tabular))
    assert list(got.columns) == lake.PREDICTIONS.names and len(got) == 0
    assert got["objid"].dtype == np.int64 and got["p_galaxy"].dtype == np.float32


def test_a_package_retrained_under_the_same_version_rescores_and_an_unchanged_one_skips(spark, lake_root, tmp_path):
    from skyclass.package import ModelPackage

    models = tmp_path / "models"
    first = make_package(models, "nightly", "tabular", seed=5)
    old_fingerprint = ModelPackage.load(first).fingerprint
    night1 = score_catalog(spark, _conf(lake_root, tmp_path, model=first, run_date="2024-05-01"))
    assert (night1.n_scored, night1.n_skipped) == (N_OBJECTS, 0) and night1.model_fingerprint == old_fingerprint
    # The same package on another night: every object was scored by this fingerprint already.
    again = score_catalog(spark, _conf(lake_root, tmp_path, model=first, run_date="2024-05-02"))
    assert (again.n_scored, again.n_skipped) == (0, N_OBJECTS)

    # Retrained under the same version, at the same path (the name alone would say "already scored").
    retrained = make_package(models, "nightly", "tabular", seed=6)
    assert retrained == first
    new_fingerprint = ModelPackage.load(retrained).fingerprint
    assert new_fingerprint != old_fingerprint
    night3 = score_catalog(spark, _conf(lake_root, tmp_path, model=retrained, run_date="2024-05-03"))
    assert (night3.n_scored, night3.n_skipped) == (N_OBJECTS, 0)
    rows1, _ = _night(spark, _conf(lake_root, tmp_path), "2024-05-01")
    rows3, _ = _night(spark, _conf(lake_root, tmp_path), "2024-05-03")
    assert set(rows1["model_fingerprint"]) == {old_fingerprint} and set(rows1["model_version"]) == {"nightly"}
    assert set(rows3["model_fingerprint"]) == {new_fingerprint} and set(rows3["model_version"]) == {"nightly"}
    # The new weights really were used (another seed, other probabilities), not a worker's cached old model.
    merged = rows1.set_index("objid")[["p_galaxy"]].join(rows3.set_index("objid")[["p_galaxy"]], rsuffix="_new")
    assert not np.allclose(merged["p_galaxy"], merged["p_galaxy_new"], atol=1e-4)
    # And the night after, the retrained package skips everything again.
    night4 = score_catalog(spark, _conf(lake_root, tmp_path, model=retrained, run_date="2024-05-04"))
    assert (night4.n_scored, night4.n_skipped) == (0, N_OBJECTS)


def test_nights_scored_before_fingerprints_are_rescored_and_logged(spark, lake_root, tmp_path, caplog):
    import logging

    import pyarrow.parquet as pq

    path = make_package(tmp_path / "models", "legacy", "tabular", seed=7)
    score_catalog(spark, _conf(lake_root, tmp_path, model=path, run_date="2024-06-01"))
    # Rewrite that night as an old run wrote it: the same rows without the model_fingerprint column.
    import shutil

    night_path = os.path.join(tmp_path, "predictions", "run_date=2024-06-01")
    table = pq.read_table(night_path).drop(["model_fingerprint"])
    shutil.rmtree(night_path)  # with Hadoop's .crc files, which would no longer match
    os.makedirs(night_path)
    pq.write_table(table, os.path.join(night_path, "part-00000.parquet"))
    assert "model_fingerprint" not in pq.read_table(night_path).column_names
    with caplog.at_level(logging.INFO, logger="skyclass.score"):
        result = score_catalog(spark, _conf(lake_root, tmp_path, model=path, run_date="2024-06-02"))
    assert (result.n_scored, result.n_skipped) == (N_OBJECTS, 0)
    assert any(f"{N_OBJECTS} prediction rows in 1 earlier night(s) name model version legacy but carry no "
               "model_fingerprint" in r.getMessage() for r in caplog.records)
    # Both kinds of night read together: the old one's fingerprint is null, the new one's the package's.
    from skyclass.score import read_predictions

    both = read_predictions(spark, os.path.join(tmp_path, "predictions")).groupBy("run_date") \
        .agg({"model_fingerprint": "count", "objid": "count"}).toPandas().set_index("run_date")
    assert both.loc["2024-06-01", "count(model_fingerprint)"] == 0
    assert both.loc["2024-06-02", "count(model_fingerprint)"] == N_OBJECTS == both.loc["2024-06-02", "count(objid)"]


def test_a_worker_refuses_a_package_replaced_after_the_run_was_planned(packages, tmp_path):
    from skyclass import inference

    path = make_package(tmp_path / "models", "moving", "tabular", seed=8)
    spec = _spec(path)
    make_package(tmp_path / "models", "moving", "tabular", seed=9)  # retrained in place meanwhile
    inference._WORKER_MODELS.clear()
    with pytest.raises(InferenceError, match="changed while scoring"):
        inference.worker_models(spec)
