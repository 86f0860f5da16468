"""Training: the Petastorm input pipeline (sharding, decoding, standardisation, class weights) and Horovod-on-Spark
training of each mode on a tiny lake written here with pyarrow (the paper preset's training table + stats.json)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from skyclass import lake
from skyclass.config import CLASSES
from skyclass.features import PAPER_FEATURES, PHOTOMETRIC_FEATURES

# Class-dependent photometry (mean g-r, u-g, redshift) so the features carry signal, with enough scatter that the
# classes overlap a little.
_CLASS_PHOTOMETRY = {"GALAXY": (0.9, 1.8, 0.12), "STAR": (0.4, 1.2, 0.0), "QSO": (0.1, 0.3, 1.6)}
_CLASS_SHARE = (0.5, 0.35, 0.15)  # QSO is the rare class, as in real samples


def _cutout_jpeg(cls: str, size_px: int, rng: np.random.Generator) -> bytes:
    """A cutout whose look depends on the class: stars are small white dots, QSOs small blue dots, galaxies large
    reddish smudges; random position jitter, brightness and noise."""
    from PIL import Image

    yy, xx = np.mgrid[0:size_px, 0:size_px].astype(np.float64)
    cx, cy = size_px / 2 + rng.normal(0, 1.5, 2)
    sigma = {"STAR": 1.2, "QSO": 1.2, "GALAXY": size_px / 8}[cls] * rng.uniform(0.8, 1.25)
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    colour = {"STAR": (1.0, 1.0, 1.0), "QSO": (0.35, 0.55, 1.0), "GALAXY": (1.0, 0.7, 0.4)}[cls]
    brightness = rng.uniform(0.6, 1.0)
    pixels = np.stack([blob * c * brightness for c in colour], axis=-1) + rng.normal(0.05, 0.03,
                                                                                   (size_px, size_px, 3))
    buffer = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _rows(n: int, split: str, first_objid: int, size_px: int, missing_image_fraction: float,
          rng: np.random.Generator) -> dict:
    labels = rng.choice(len(CLASSES), size=n, p=_CLASS_SHARE).astype(np.int32)
    classes = [CLASSES[k] for k in labels]
    g_r, u_g, z = (np.array([_CLASS_PHOTOMETRY[c][j] for c in classes]) for j in range(3))
    r = rng.uniform(15.0, 19.5, n)
    g = r + g_r + rng.normal(0, 0.25, n)
    u = g + u_g + rng.normal(0, 0.35, n)
    i = r - 0.5 * g_r + rng.normal(0, 0.15, n)
    zmag = i - 0.3 * g_r + rng.normal(0, 0.15, n)
    redshift = np.abs(z + rng.normal(0, 0.05 + 0.3 * z, n))
    mags = {"u": u, "g": g, "r": r, "i": i, "z": zmag}
    columns = {
        "objid": np.arange(first_objid, first_objid + n, dtype=np.int64),
        "split": [split] * n, "label": labels, "class": classes,
        **{m: mags[m].astype(np.float32) for m in lake.MAGNITUDES},
        "u_g": (u - g).astype(np.float32), "g_r": (g - r).astype(np.float32),
        "r_i": (r - i).astype(np.float32), "i_z": (i - zmag).astype(np.float32),
        "redshift": redshift.astype(np.float32),
        "redshift_asinh": np.arcsinh(redshift / 0.001).astype(np.float32),
        "redshift_zero": (redshift == 0).astype(np.float32),
        "jpeg": [None if rng.random() < missing_image_fraction else _cutout_jpeg(c, size_px, rng) for c in classes],
    }
    return columns


def write_training_lake(lake_root, *, rows=None, rows_per_group=None, size_px: int = 32, seed: int = 0,
                        missing_image_fraction: float = 0.05, files_per_split: int = 2) -> dict:
    """Write ``<lake_root>/training/{train,validation,test}/`` (the paper preset's training table, several files
    and row groups per split, as Petastorm shards by row group) and ``training/stats.json`` with statistics of the
    train split.

    Returns the stats dict. Also used by bench/train_bench.py.
    """
    rows = rows or {"train": 320, "validation": 80, "test": 40}
    rows_per_group = rows_per_group or {"train": 40, "validation": 20, "test": 20}
    rng = np.random.default_rng(seed)
    schema = lake.training_table(PAPER_FEATURES).arrow_schema()
    first = 1_237_650_000_000_000_000
    train_columns = None
    for split in lake.SPLITS:
        columns = _rows(rows[split], split, first, size_px, missing_image_fraction, rng)
        first += rows[split]
        if split == "train":
            train_columns = columns
        table = pa.Table.from_pydict(columns, schema=schema)
        folder = lake.training_split_path(str(lake_root), split)
        os.makedirs(folder, exist_ok=True)
        bounds = np.linspace(0, table.num_rows, files_per_split + 1).astype(int)
        for k in range(files_per_split):
            pq.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]),
                           os.path.join(folder, f"part-{k:05d}.parquet"), row_group_size=rows_per_group[split])
    stats = {
        "classes": list(CLASSES),
        "features": {f: {"mean": float(np.mean(train_columns[f], dtype=np.float64)),
                         "std": float(np.std(train_columns[f], dtype=np.float64))} for f in PAPER_FEATURES},
        "label_counts": {c: int(np.sum(train_columns["label"] == k)) for k, c in enumerate(CLASSES)},
        "rows": dict(rows), "image_size_px": size_px,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # The images made here are synthetic; say so as the table job would.
        "cutout_sources": {lake.SOURCE_SIMULATE: int(sum(
            pq.read_table(lake.training_split_path(str(lake_root), s), columns=["jpeg"]).column("jpeg")
            .drop_null().__len__() for s in lake.SPLITS))},
        "catalog_simulated": False,
    }
    with open(lake.training_stats_path(str(lake_root)), "w", encoding="utf-8") as fh:
        json.dump(stats, fh, indent=2)
    return stats


# ---------------------------------------------------------------------------------------------------------------
# Input pipeline (no Horovod)
# ---------------------------------------------------------------------------------------------------------------

from skyclass import input_pipeline  # noqa: E402
from skyclass.input_pipeline import InputSpec, TrainingTableError  # noqa: E402


def _solid_jpeg(rgb, size_px=8) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size_px, size_px), rgb).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_class_weights_are_balanced():
    weights = input_pipeline.class_weights({"GALAXY": 50, "STAR": 30, "QSO": 20}, CLASSES)
    # n / (k * count) with n = 100, k = 3
    assert weights == pytest.approx({0: 100 / 150, 1: 100 / 90, 2: 100 / 60})
    # An absent class does not count in k and gets a neutral weight.
    assert input_pipeline.class_weights({"GALAXY": 30, "STAR": 10}, CLASSES) == pytest.approx(
        {0: 40 / 60, 1: 40 / 20, 2: 1.0})
    with pytest.raises(TrainingTableError, match="no labelled rows"):
        input_pipeline.class_weights({"GALAXY": 0}, CLASSES)


def test_transform_standardises_features_and_decodes_cutouts():
    import pandas as pd

    frame = pd.DataFrame({
        "label": [0, 1, 2, 1],
        "g": [18.0, 20.0, 17.0, 19.0], "r": [17.0, 17.5, 16.0, np.nan],
        "jpeg": [_solid_jpeg((255, 0, 0)), None, b"not a jpeg", _solid_jpeg((0, 0, 255), size_px=16)],
    })
    normalisation = {"g": {"mean": 18.0, "std": 2.0}, "r": {"mean": 17.0, "std": 0.5}}
    tabular = input_pipeline.transform_batch(frame, InputSpec("tabular", ("g", "r"), normalisation, 8))
    assert list(tabular.columns) == ["label", "features"]
    np.testing.assert_array_equal(tabular["label"], [0, 1, 2, 1])
    # (value - mean) / std by hand; a missing value becomes the mean (0).
    np.testing.assert_allclose(np.stack(tabular["features"]), [[0, 0], [1, 1], [-0.5, -2], [0.5, 0]])

    image = input_pipeline.transform_batch(frame, InputSpec("multimodal", ("g", "r"), normalisation, 8))
    # The missing and the corrupt cutout are dropped; the 16 px one is resized to 8 px.
    np.testing.assert_array_equal(image["label"], [0, 1])
    np.testing.assert_allclose(np.stack(image["features"]), [[0, 0], [0.5, 0]])
    pixels = np.stack(image["image"])
    assert pixels.shape == (2, 8, 8, 3) and pixels.dtype == np.uint8  # scaled to [0, 1] in make_dataset
    np.testing.assert_allclose(pixels[0].mean(axis=(0, 1)), [255, 0, 0], atol=5)
    np.testing.assert_allclose(pixels[1].mean(axis=(0, 1)), [0, 0, 255], atol=5)


def test_training_batches_hold_the_pixels_scoring_decodes_to_the_bit(tmp_path):
    """The reader hands uint8 pixels through Petastorm and TensorFlow scales them; scoring decodes with
    features.decode_jpegs: both must give the models the same float32 values."""
    from skyclass.features import decode_jpegs

    stats = write_training_lake(tmp_path / "lake", rows={"train": 60, "validation": 20, "test": 20},
                                rows_per_group={"train": 60, "validation": 20, "test": 20}, files_per_split=1)
    path = lake.training_split_path(str(tmp_path / "lake"), "train")
    jpegs = [b for b in pq.read_table(path, columns=["jpeg"]).column("jpeg").to_pylist() if b is not None]
    expected, ok = decode_jpegs(jpegs, 32)
    assert ok.all() and expected.dtype == np.float32 and 0 < expected.mean() < 1
    spec = InputSpec("multimodal", PHOTOMETRIC_FEATURES, stats["features"], 32)
    with input_pipeline.open_reader(path, spec, num_epochs=1, shuffle=False, workers_count=1) as reader:
        inputs, _ = next(iter(input_pipeline.make_dataset(reader, spec, batch_size=len(jpegs),
                                                          drop_remainder=False)))
    got = inputs["image"].numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_tabular_reader_never_reads_cutouts():
    spec = InputSpec("tabular", ("g", "r_i"), {}, 64)
    assert spec.source_columns() == ["label", "g", "r_i"]
    assert InputSpec("image", ("g",), {}, 64).source_columns() == ["label", "g", "jpeg"]


def test_shards_are_disjoint_and_cover_the_split(tmp_path):
    write_training_lake(tmp_path / "lake")
    path = lake.training_split_path(str(tmp_path / "lake"), "train")
    everything = pq.read_table(path, columns=["objid"]).column("objid").to_numpy()
    shard0 = input_pipeline.shard_objids(path, 0, 2)
    shard1 = input_pipeline.shard_objids(path, 1, 2)
    assert len(set(shard0) & set(shard1)) == 0
    assert sorted(np.concatenate([shard0, shard1])) == sorted(everything)
    groups = input_pipeline.list_row_groups(path)
    assert len(groups) == 8  # 2 files x 160 rows in row groups of 40
    assert input_pipeline.shard_row_counts(groups, 2, with_image=False) == [len(shard0), len(shard1)]


def test_row_counts_from_footers_match_what_each_shard_reader_delivers(tmp_path):
    stats = write_training_lake(tmp_path / "lake", missing_image_fraction=0.2)
    path = lake.training_split_path(str(tmp_path / "lake"), "train")
    groups = input_pipeline.list_row_groups(path)
    spec = InputSpec("image", PHOTOMETRIC_FEATURES, stats["features"], 32)
    delivered = []
    for shard in (0, 1):
        with input_pipeline.open_reader(path, spec, cur_shard=shard, shard_count=2, num_epochs=1) as reader:
            delivered.append(sum(len(batch.label) for batch in reader))
    assert input_pipeline.shard_row_counts(groups, 2, with_image=True) == delivered
    # The footers' null counts, checked against the data itself.
    jpegs = pq.read_table(path, columns=["jpeg"]).column("jpeg")
    assert sum(delivered) == len(jpegs) - jpegs.null_count < len(jpegs)


def test_reader_throughput_is_the_steady_rate_with_the_opening_reported_apart(tmp_path, monkeypatch):
    """Opening the reader costs 100 s of a fake clock and each row group 1 s: the rate counts the row groups after
    the first over the time they took, and the opening is reported as the first row group's latency."""
    stats = write_training_lake(tmp_path / "lake")
    path = lake.training_split_path(str(tmp_path / "lake"), "train")
    now = [0.0]
    real_open = input_pipeline.open_reader

    @contextlib.contextmanager
    def slow_to_open(*args, **kwargs):
        now[0] += 100.0
        with real_open(*args, **kwargs) as reader:
            def timed():
                for batch in reader:
                    now[0] += 1.0
                    yield batch
            yield timed()

    monkeypatch.setattr(input_pipeline, "open_reader", slow_to_open)
    spec = InputSpec("tabular", PHOTOMETRIC_FEATURES, stats["features"], 32)
    whole = input_pipeline.measure_reader_throughput(path, spec, clock=lambda: now[0])
    assert whole["rows"] == 320 and whole["steady_rows"] == 280  # 8 row groups of 40
    assert whole["first_batch_seconds"] == 101.0 and whole["seconds"] == 108.0
    assert whole["rows_per_s"] == 40.0  # 280 rows in the 7 s after the first row group
    now[0] = 0.0
    part = input_pipeline.measure_reader_throughput(path, spec, max_rows=100, clock=lambda: now[0])
    assert (part["rows"], part["steady_rows"], part["rows_per_s"]) == (120, 80, 40.0)


def test_thread_pool_does_not_end_before_its_ventilator_has_handed_out_the_work():
    """The race behind readers that yielded no rows, made deterministic: the ventilator hands out every item at
    the moment the pool first asks whether it has finished (as a ventilator thread can between the pool's
    "all workers done?" and "ventilator finished?" checks). Unpatched petastorm 0.13.1 returns no results."""
    from petastorm.workers_pool import EmptyResultError
    from petastorm.workers_pool.thread_pool import ThreadPool
    from petastorm.workers_pool.ventilator import Ventilator
    from petastorm.workers_pool.worker_base import WorkerBase

    class Echo(WorkerBase):
        def process(self, value):
            self.publish_func(value)

    class LateVentilator(Ventilator):
        def __init__(self, ventilate_fn, items):
            super().__init__(ventilate_fn)
            self.items = items

        def start(self):
            pass

        def processed_item(self):
            pass

        def completed(self):
            while self.items:
                self._ventilate_fn(value=self.items.pop())
            return True

        def stop(self):
            pass

    input_pipeline.fix_thread_pool_end_of_data_race()
    pool = ThreadPool(2)
    pool.start(Echo, ventilator=LateVentilator(pool.ventilate, [1, 2, 3]))
    got = []
    try:
        while True:
            got.append(pool.get_results())
    except EmptyResultError:
        pass
    finally:
        pool.stop()
        pool.join()
    assert sorted(got) == [1, 2, 3]


def test_a_split_with_fewer_row_groups_than_processes_is_read_whole(tmp_path):
    write_training_lake(tmp_path / "lake", rows_per_group={"train": 40, "validation": 100, "test": 100})
    groups = input_pipeline.list_row_groups(lake.training_split_path(str(tmp_path / "lake"), "validation"))
    assert len(groups) == 2 and input_pipeline.shard_plan(groups, 4) is None
    assert input_pipeline.shard_row_counts(groups, None, with_image=False) == [80]


def test_missing_statistics_say_to_build_the_table(tmp_path):
    with pytest.raises(TrainingTableError, match="skyclass table"):
        input_pipeline.load_training_stats(lake.training_stats_path(str(tmp_path)))


def test_dataset_url_makes_local_paths_file_urls(tmp_path):
    assert input_pipeline.dataset_url(str(tmp_path)) == f"file://{tmp_path}"
    assert input_pipeline.dataset_url("hdfs://nn/lake/training/train") == "hdfs://nn/lake/training/train"


# ---------------------------------------------------------------------------------------------------------------
# Planning on the driver (no Horovod)
# ---------------------------------------------------------------------------------------------------------------

from skyclass import train as train_module  # noqa: E402
from skyclass.package import ModelPackage, latest_package  # noqa: E402
from skyclass.train import TrainingError, train_model  # noqa: E402

# Small and quick: 32 px cutouts, narrow layers. No batch norm: with a handful of steps its moving averages are
# still far from the batch statistics, and validation would look like chance.
TINY_TRAIN = {"batch_size": 32, "image_size_px": 32, "tabular_units": [32, 16], "fusion_units": [16],
              "batch_norm": False, "dropout": 0.0, "learning_rate": 0.003, "num_proc": 2, "warmup_epochs": 1,
              "early_stopping_patience": 5}


def _tiny_conf(conf_for, tmp_path, **train):
    stats = write_training_lake(tmp_path / "lake")
    return conf_for(train={**TINY_TRAIN, **train}), stats


def _build_plan(conf, version: str = "v1"):
    """train.build_plan on the statistics the training table of ``conf``'s lake holds."""
    stats = input_pipeline.load_training_stats(lake.training_stats_path(conf.lake.path("root")))
    return train_module.build_plan(conf, stats, version)


def test_an_unshardable_split_is_warned_about_once_for_all_phases(conf_for, tmp_path, caplog):
    """A validation split of one row group cannot be sharded over 2 processes: one warning naming the split (not
    one per model phase), none for the shardable train split."""
    write_training_lake(tmp_path / "lake", rows_per_group={"train": 40, "validation": 80, "test": 40},
                        files_per_split=1)
    conf = conf_for(train={**TINY_TRAIN, "mode": "multimodal", "version": "v1"})
    with caplog.at_level("WARNING", logger="skyclass.train"):
        plan = _build_plan(conf)
    assert len(plan.phases) == 2
    warned = [r.getMessage() for r in caplog.records if "fewer than the 2 processes" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("the validation split has 1 row group(s)")


def test_plan_gives_every_process_the_same_steps(conf_for, tmp_path):
    conf, stats = _tiny_conf(conf_for, tmp_path, mode="multimodal", version="v1")
    plan = _build_plan(conf)
    main, tabular = plan.phases
    assert (main.name, main.spec.mode, tabular.name, tabular.spec.mode) == ("main", "multimodal", "tabular",
                                                                            "tabular")
    # 320 train rows in 8 row groups -> 160 per shard -> 5 batches of 32; validation 80 rows -> 40 per shard.
    assert (tabular.steps_per_epoch, tabular.train_shards, tabular.validation_steps) == (5, 2, 1)
    # Image models only see rows with a cutout: the smaller shard decides.
    path = lake.training_split_path(conf.lake.path("root"), "train")
    with_image = min(input_pipeline.shard_row_counts(input_pipeline.list_row_groups(path), 2, with_image=True))
    assert main.steps_per_epoch == with_image // 32 < 5
    assert plan.checkpoint_dir.rstrip("/") == os.path.join(conf.lake.path("models"), "v1.checkpoints")
    counts = stats["label_counts"]
    assert plan.class_weight[2] == pytest.approx(sum(counts.values()) / (3 * counts["QSO"]))


def test_cosine_schedule_sets_every_step_rate_from_warmup_to_zero_and_resumes_on_the_same_curve(conf_for,
                                                                                                  tmp_path):
    """train.lr_schedule=cosine reaches the plan, and its callback sets the rate before every step: untouched in
    warm-up, then base * (1 + cos(pi * t)) / 2 with t the fraction of the post-warm-up steps done; a fit resumed
    at epoch 2 (as from a checkpoint) continues the same curve."""
    import doctest

    import tensorflow as tf

    conf, _ = _tiny_conf(conf_for, tmp_path, mode="tabular", version="v1", lr_schedule="cosine",
                         reduce_lr_patience=None)
    assert _build_plan(conf).lr_schedule == "cosine"
    finder = doctest.DocTestFinder().find(train_module.cosine_learning_rate)
    assert sum(doctest.DocTestRunner().run(t).failed for t in finder) == 0 and finder[0].examples

    base, warmup, epochs, steps = 0.01, 1, 4, 4
    seen = []

    class Record(tf.keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(tf.keras.backend.get_value(self.model.optimizer.lr)))

    def fit(initial_epoch):
        tf.keras.utils.set_random_seed(0)
        model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(3, activation="softmax")])
        model.compile(tf.keras.optimizers.legacy.Adam(base), "sparse_categorical_crossentropy")
        x, y = np.zeros((steps * 8, 2), np.float32), np.zeros(steps * 8, np.int64)
        history = model.fit(x, y, batch_size=8, epochs=epochs, initial_epoch=initial_epoch, verbose=0, shuffle=False,
                            callbacks=[train_module.cosine_decay_callback(base, warmup_epochs=warmup, epochs=epochs,
                                                                          steps_per_epoch=steps), Record()])
        return history.history["lr"]

    # Expected rates written out: 3 post-warm-up epochs of 4 steps, so step k of them is at t = k / 12.
    after_warmup = [base * (1 + np.cos(np.pi * k / 12)) / 2 for k in range(12)]
    last_of_epoch = [base, *after_warmup[3::4]]
    assert fit(0) == pytest.approx(last_of_epoch)
    assert seen == pytest.approx([base] * steps + after_warmup)
    seen.clear()
    assert fit(2) == pytest.approx(last_of_epoch[2:])
    assert seen == pytest.approx(after_warmup[4:])


def test_a_batch_larger_than_a_shard_is_refused(conf_for, tmp_path):
    conf, _ = _tiny_conf(conf_for, tmp_path, mode="tabular", batch_size=200)
    with pytest.raises(TrainingError, match="train.batch_size=200"):
        train_model(None, conf)


def test_a_checkpoint_of_another_model_is_refused_before_training(conf_for, tmp_path):
    conf, _ = _tiny_conf(conf_for, tmp_path, mode="tabular", version="v1")
    folder = tmp_path / "models" / "v1.checkpoints" / "main"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"epoch": 1, "records": [], "fingerprint": {"mode": "image"}}))
    with pytest.raises(TrainingError, match="different main model"):
        train_model(None, conf)


# ---------------------------------------------------------------------------------------------------------------
# Horovod on Spark, 2 processes
# ---------------------------------------------------------------------------------------------------------------

def _validation_accuracy(package_path, lake_root, *, tabular: bool) -> tuple[float, int]:
    """Accuracy of a packaged model on the validation split, computed here with pyarrow + features (not Petastorm)."""
    from skyclass.features import decode_jpegs, standardise

    pkg = ModelPackage.load(package_path)
    frame = pq.read_table(lake.training_split_path(lake_root, "validation")).to_pandas()
    model = pkg.load_tabular_model() if tabular else pkg.load_model()
    inputs = {"features": standardise(frame, pkg.features, pkg.normalisation)}
    labels = frame["label"].to_numpy()
    if not tabular and pkg.mode != "tabular":
        images, ok = decode_jpegs(list(frame["jpeg"]), pkg.image_size_px)
        inputs = {"features": inputs["features"][ok], "image": images[ok]}
        labels = labels[ok]
    names = set(model.input_names)
    proba = model.predict({k: v for k, v in inputs.items() if k in names}, verbose=0)
    return float(np.mean(proba.argmax(axis=1) == labels)), len(labels)


def test_multimodal_training_on_two_horovod_processes(spark, conf_for, tmp_path):
    conf, stats = _tiny_conf(conf_for, tmp_path, mode="multimodal", epochs=3, version="mm-1")
    result = train_model(spark, conf)

    assert result.path == latest_package(conf.lake.path("models")) == os.path.join(conf.lake.path("models"), "mm-1")
    pkg = ModelPackage.load(result.path)
    meta = pkg.metadata
    assert (pkg.mode, pkg.backbone, pkg.version, pkg.image_size_px) == ("multimodal", "small_cnn", "mm-1", 32)
    assert pkg.features == PHOTOMETRIC_FEATURES and pkg.classes == CLASSES
    assert pkg.normalisation == {f: stats["features"][f] for f in PHOTOMETRIC_FEATURES}
    assert meta["lake_snapshot"]["rows"] == stats["rows"]
    assert meta["lake_snapshot"]["stats_created_at"] == stats["created_at"]
    assert meta["config"]["train"]["mode"] == "multimodal"
    assert meta["code_version"].startswith("0.1.0")
    # What the model learned from, as the table's stats.json says: simulated images, a real catalog.
    assert meta["simulated_images"] is True and meta["simulated_catalog"] is False
    assert meta["lake_snapshot"]["cutout_sources"] == stats["cutout_sources"]
    assert pkg.fingerprint.startswith("sha256:")
    # With the TensorFlow Lite forms training writes (checked against Keras on the validation split).
    assert sorted(os.listdir(result.path)) == ["curves.png", "domain_reference.npz", "metadata.json", "model.keras",
                                               "model.tflite", "tabular.keras", "tabular.tflite"]
    assert meta["cpu_model"]["files"] == {"main": "model.tflite", "tabular": "tabular.tflite"}
    # Calibrated on the validation split, one fit per model; the domain reference came from the training split.
    assert meta["calibration"]["main"]["fitted_on"]["rows"] == meta["validation"]["objects"]
    assert meta["calibration"]["tabular"]["fitted_on"]["rows"] == meta["tabular_validation"]["objects"]
    assert pkg.calibration().temperature > 0 and pkg.domain_reference().features == pkg.features
    # Both models learned: training loss fell over the 3 epochs.
    for history in (meta["history"], meta["tabular_history"]):
        assert len(history["loss"]) == 3 and len(history["val_loss"]) == 3
        assert history["loss"][-1] < history["loss"][0]
    assert result.epochs == 3 and result.initial_epoch == 0 and result.samples_per_s > 0
    # The validation numbers (every process's shard, gathered) agree with an independent evaluation of the packaged
    # models: a shard lost or counted twice changes the object count.
    accuracy, objects = _validation_accuracy(result.path, conf.lake.path("root"), tabular=False)
    assert meta["validation"]["objects"] == objects
    assert result.validation_accuracy == pytest.approx(accuracy, abs=1e-6)
    tabular_accuracy, _ = _validation_accuracy(result.path, conf.lake.path("root"), tabular=True)
    assert result.tabular_validation_accuracy == pytest.approx(tabular_accuracy, abs=1e-6)
    assert set(pkg.load_model().input_names) == {"features", "image"}
    assert pkg.load_tabular_model().input_names == ["features"]
    assert "validation: loss" in str(result) and "tabular fallback" in str(result)


@pytest.mark.slow
def test_tabular_training_with_the_paper_features(spark, conf_for, tmp_path):
    conf, _ = _tiny_conf(conf_for, tmp_path, mode="tabular", feature_set="paper", epochs=3, version="tab-1")
    result = train_model(spark, conf)
    pkg = ModelPackage.load(result.path)
    assert pkg.features == PAPER_FEATURES and "redshift" in pkg.features
    with open(os.path.join(result.path, "model.keras"), "rb") as a, \
            open(os.path.join(result.path, "tabular.keras"), "rb") as b:
        assert a.read() == b.read()
    assert pkg.metadata["history"]["loss"][-1] < pkg.metadata["history"]["loss"][0]
    assert pkg.load_model().input_shape == (None, len(PAPER_FEATURES))
    assert "tabular fallback" not in str(result)


@pytest.mark.slow
def test_image_training(spark, conf_for, tmp_path):
    conf, _ = _tiny_conf(conf_for, tmp_path, mode="image", epochs=3, version="img-1")
    result = train_model(spark, conf)
    pkg = ModelPackage.load(result.path)
    assert pkg.load_model().input_names == ["image"]
    assert pkg.metadata["history"]["loss"][-1] < pkg.metadata["history"]["loss"][0]
    accuracy, _ = _validation_accuracy(result.path, conf.lake.path("root"), tabular=False)
    assert result.validation_accuracy == pytest.approx(accuracy, abs=1e-6)


@pytest.mark.slow
def test_a_run_with_the_same_version_resumes_from_its_checkpoint(spark, conf_for, tmp_path):
    conf, _ = _tiny_conf(conf_for, tmp_path, mode="tabular", epochs=2, version="resume-1")
    first = train_model(spark, conf)
    assert (first.epochs, first.initial_epoch) == (2, 0)

    more = conf_for(train={**TINY_TRAIN, "mode": "tabular", "epochs": 4, "version": "resume-1"})
    second = train_model(spark, more)
    assert (second.epochs, second.initial_epoch) == (4, 2)
    # Epochs 1-2 come from the checkpoint unchanged; only 3-4 were trained now.
    assert second.history["loss"][:2] == first.history["loss"]
    assert len(second.history["loss"]) == 4
    meta = ModelPackage.load(second.path).metadata
    assert meta["initial_epoch"] == 2 and [e["epoch"] for e in meta["epochs"]] == [1, 2, 3, 4]
    assert sorted(os.listdir(tmp_path / "models")) == ["resume-1", "resume-1.checkpoints"]


# ---------------------------------------------------------------------------------------------------------------
# GPU pinning: each Horovod process takes the GPU Spark assigned to its task
# ---------------------------------------------------------------------------------------------------------------

from skyclass.train import assigned_gpu  # noqa: E402

TWO_GPUS = ["/physical_device:GPU:0", "/physical_device:GPU:1"]


def test_two_executors_on_one_host_get_the_gpus_spark_assigned_not_the_same_one():
    # Two executors on one host in separate containers (Horovod's host hash includes the namespaces), each seeing
    # both GPUs: Horovod gives each its own "host", so both processes have local rank 0.
    local_ranks = (0, 0)
    old_rule = [rank % len(TWO_GPUS) for rank in local_ranks]
    assert old_rule == [0, 0]  # the rule this replaces put both on GPU 0
    chosen = [assigned_gpu([address], TWO_GPUS, rank) for address, rank in zip(("0", "1"), local_ranks)]
    assert chosen == [0, 1]


def test_spark_addresses_win_over_the_local_rank():
    # Spark gave this task GPU 3 of four (another application holds 0 and 1): local rank 1 would take GPU 1.
    four = [f"/physical_device:GPU:{k}" for k in range(4)]
    assert assigned_gpu(["3"], four, local_rank=1) == 3
    assert assigned_gpu(["2"], four, local_rank=0) == 2


def test_cuda_visible_devices_renumbers_the_gpus():
    # With CUDA_VISIBLE_DEVICES=2,3 TensorFlow calls physical GPU 3 "GPU:1"; Spark's address is the physical one.
    assert assigned_gpu(["3"], TWO_GPUS, 0, cuda_visible_devices="2,3") == 1
    assert assigned_gpu(["2"], TWO_GPUS, 1, cuda_visible_devices=" 2, 3 ") == 0
    uuids = "GPU-aaaa,GPU-bbbb"
    assert assigned_gpu(["GPU-bbbb"], TWO_GPUS, 0, cuda_visible_devices=uuids) == 1


def test_an_assigned_gpu_that_is_not_visible_is_a_clear_error():
    with pytest.raises(TrainingError, match=r"GPU 1 .*CUDA_VISIBLE_DEVICES=2,3"):
        assigned_gpu(["1"], TWO_GPUS, 0, cuda_visible_devices="2,3")
    with pytest.raises(TrainingError, match=r"GPU 5 .*sees 2 GPUs"):
        assigned_gpu(["5"], TWO_GPUS, 0)
    with pytest.raises(TrainingError, match=r"GPU-cccc.*not an index"):
        assigned_gpu(["GPU-cccc"], TWO_GPUS, 0)
    with pytest.raises(TrainingError, match=r"sees no GPU"):
        assigned_gpu(["0"], [], 0)


def test_without_spark_gpu_scheduling_the_local_rank_chooses_and_says_so(caplog):
    with caplog.at_level("WARNING", logger="skyclass.train"):
        assert assigned_gpu([], TWO_GPUS, local_rank=3) == 1
    assert "local rank 3" in caplog.text and "no GPU" in caplog.text
    assert assigned_gpu([], [], local_rank=0) is None  # CPU only: nothing to pin
    caplog.clear()
    with caplog.at_level("WARNING", logger="skyclass.train"):
        assert assigned_gpu(["1", "0"], TWO_GPUS, local_rank=0) == 1  # a process uses one GPU: the first
    assert "uses only GPU 1" in caplog.text


# Run as its own application (one SparkContext per process; the test session's is local[2]): a local-cluster
# master (a real standalone master, worker and executor JVM) whose worker "discovers" GPUs 2 and 3 with a script,
# as it would on a GPU host where another application holds 0 and 1. No GPU is needed: Spark only bookkeeps the
# addresses. Horovod's training function then runs in processes started by its task service, not in the Spark
# tasks, and reports what it would pin among four GPUs.
GPU_CLUSTER_APP = textwrap.dedent("""
    import json, os, sys
    from pyspark.sql import SparkSession
    import horovod.spark

    discovery, lib = sys.argv[1], sys.argv[2]
    spark = (SparkSession.builder.master("local-cluster[1,2,1024]").appName("skyclass-gpu-pinning")
             .config("spark.ui.enabled", "false")
             .config("spark.worker.resource.gpu.amount", "2")
             .config("spark.worker.resource.gpu.discoveryScript", discovery)
             .config("spark.executor.resource.gpu.amount", "2")
             .config("spark.task.resource.gpu.amount", "1")
             .config("spark.executor.memory", "512m")
             .config("spark.executorEnv.PYTHONPATH", lib)
             .getOrCreate())

    def report():
        import os
        from pyspark import TaskContext
        import skyclass
        from skyclass.train import assigned_gpu, task_gpu_addresses

        addresses = task_gpu_addresses()
        four = [f"/physical_device:GPU:{k}" for k in range(4)]
        local_rank = int(os.environ["HOROVOD_LOCAL_RANK"])
        return {"addresses": addresses, "local_rank": local_rank, "chosen": assigned_gpu(addresses, four, local_rank),
                "task_context": TaskContext.get() is not None, "skyclass": skyclass.__file__}

    try:
        print("RESULT " + json.dumps(horovod.spark.run(report, num_proc=2, use_gloo=True, verbose=0)))
    finally:
        spark.stop()
""")


@pytest.mark.slow
def test_horovod_processes_pin_the_gpus_spark_assigned_to_their_tasks(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lib = os.path.join(root, "lib")
    discovery = tmp_path / "gpus.sh"
    discovery.write_text('#!/bin/sh\necho \'{"name": "gpu", "addresses": ["2", "3"]}\'\n')
    discovery.chmod(0o755)
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join([lib, os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen([sys.executable, "-c", GPU_CLUSTER_APP, str(discovery), lib], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the app, its JVMs and workers
            process.wait(30)
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, err[-3000:]
    reports = json.loads(lines[-1][len("RESULT "):])
    assert all(r["skyclass"].startswith(lib) for r in reports)  # this checkout's code, not an installed one
    # The training processes are not Spark tasks: TaskContext is None there, the addresses came from Horovod's
    # task service, which read them from TaskContext in the Spark task.
    assert not any(r["task_context"] for r in reports)
    assert sorted(a for r in reports for a in r["addresses"]) == ["2", "3"]
    assert sorted(r["local_rank"] for r in reports) == [0, 1]
    assert sorted(r["chosen"] for r in reports) == [2, 3]  # the local ranks would have chosen 0 and 1
    assert all(r["chosen"] == int(r["addresses"][0]) for r in reports)


def test_shuffle_buffer_holds_a_whole_row_group_within_its_memory_budget():
    from skyclass.input_pipeline import RowGroupInfo
    from skyclass.train import SHUFFLE_BUFFER_BYTES, shuffle_buffer_rows

    groups = [RowGroupInfo("a.parquet", k, rows, rows) for k, rows in enumerate((1000, 640, 1200))]
    images = InputSpec("multimodal", ("u_g", "g_r"), {}, 64)
    tabular = InputSpec("tabular", ("u_g", "g_r"), {}, 64)
    assert shuffle_buffer_rows(groups, 64, images) == 1200  # the largest row group, not 2 batches
    assert shuffle_buffer_rows(groups[:1], 800, images) == 1600  # never under two batches
    row_bytes = 4 * 2 + 3 * 512 ** 2 + 8  # float32 features, uint8 pixels, the label
    huge = InputSpec("image", ("u_g", "g_r"), {}, 512)  # 768 KB a row: the memory budget decides
    assert shuffle_buffer_rows(groups, 64, huge) == max(128, SHUFFLE_BUFFER_BYTES // row_bytes)
    assert shuffle_buffer_rows(groups, 64, tabular) == 1200
