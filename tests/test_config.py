"""Configuration: YAML files load into typed sections, overrides apply, and bad input names the key and file."""
import dataclasses
import os

import pytest

from skyclass.config import REPO_ROOT, ConfigError, load_config

LOCAL = REPO_ROOT / "conf" / "local.yaml"
CLUSTER = REPO_ROOT / "conf" / "cluster.yaml"


def test_shipped_configs_load():
    local = load_config(LOCAL)
    cluster = load_config(CLUSTER)
    assert local.skyserver.url.startswith("http://127.0.0.1")
    assert cluster.skyserver.url == "https://skyserver.sdss.org/dr17"
    assert cluster.spark.master is None  # spark-submit decides the master on a cluster
    assert cluster.skyserver.max_queries_per_s <= 1.0  # SkyServer's documented 60 queries/min


def test_override_types_follow_the_field():
    conf = load_config(LOCAL, ["train.epochs=3", "skyserver.url=http://127.0.0.1:9/dr16",
                               "extract.photo_columns=[ra, dec, psfMag_r]", "score.model=null",
                               "cutouts.scale_arcsec_per_px=1"])
    assert conf.train.epochs == 3
    assert conf.skyserver.url == "http://127.0.0.1:9/dr16"
    assert conf.extract.photo_columns == ("ra", "dec", "psfMag_r")
    assert conf.score.model is None
    assert conf.cutouts.scale_arcsec_per_px == 1.0 and isinstance(conf.cutouts.scale_arcsec_per_px, float)


def test_configs_are_frozen():
    conf = load_config(LOCAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        conf.train.epochs = 1


@pytest.mark.parametrize("override, words", [
    ("train.epochs=many", ["train.epochs", "integer", "local.yaml"]),
    ("train.epoch=3", ["unknown key train.epoch", "local.yaml", "epochs"]),
    ("nosuch.key=1", ["unknown key nosuch", "local.yaml"]),
    ("cutouts.size_px=4096", ["cutouts.size_px", "64..2048"]),
    ("split.train=0.9", ["sum to 1"]),
    ("train.mode=vision", ["train.mode", "tabular, image, multimodal", "vision"]),
    ("skyserver.url=ftp://x", ["skyserver.url", "http"]),
    ("skyserver.max_queries_per_s=0", ["skyserver.max_queries_per_s", "> 0"]),
    ("train.batch_norm=maybe", ["train.batch_norm", "true or false"]),
    ("train", ["section.key=value"]),
])
def test_bad_values_name_key_and_file(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(LOCAL, [override])
    for word in words:
        assert word in str(err.value)


def test_bad_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("train:\n  epochs: 2\n  learning_rate: fast\n")
    with pytest.raises(ConfigError, match=r"train.learning_rate in .*wrong.yaml must be a number"):
        load_config(wrong)


def test_relative_lake_paths_resolve_against_repo_and_uris_pass():
    conf = load_config(LOCAL, ["lake.root=hdfs:///lake", "lake.models=/mnt/m"])
    assert conf.lake.table("catalog") == "hdfs:///lake/catalog"
    assert conf.lake.path("models") == "/mnt/m"
    assert load_config(LOCAL).lake.table("catalog") == str(REPO_ROOT / "lake" / "catalog")


@pytest.mark.parametrize("item", ["lake.models=hdfs:///m", "lake.reports=s3a://bucket/r",
                                  "evaluate.output=hdfs:///r/v1"])
def test_folders_written_with_file_io_refuse_uris(item):
    with pytest.raises(ConfigError, match=rf"{item.split('=')[0]} must be a local or mounted folder"):
        load_config(LOCAL, [item])


def test_cluster_config_keeps_reports_on_a_shared_mount():
    assert load_config(CLUSTER).lake.path("reports") == "/mnt/skyclass/reports"


def test_to_dict_is_plain_data():
    import json

    data = load_config(LOCAL).to_dict()
    assert json.loads(json.dumps(data))["train"]["mode"] == "multimodal"


def test_the_removed_simulated_flag_says_the_data_decide_now():
    # A config flag once labelled results SIMULATED (and cluster.yaml's default labelled real ones so).
    with pytest.raises(ConfigError, match="evaluate.cutouts_are_simulated .*no longer exists.*source"):
        load_config(LOCAL, ["evaluate.cutouts_are_simulated=false"])
    assert not hasattr(load_config(CLUSTER).evaluate, "cutouts_are_simulated")


def test_lake_root_and_predictions_are_absolute_once_loaded(tmp_path, monkeypatch):
    """Executors run in other working folders: a relative lake path must not reach them."""
    monkeypatch.chdir(tmp_path)  # the repository root decides, not the current folder
    conf = load_config(None, ["lake.root=some/lake", "lake.predictions=preds"])
    assert conf.lake.root == str(REPO_ROOT / "some" / "lake")
    assert conf.lake.predictions == str(REPO_ROOT / "preds")
    uris = load_config(None, ["lake.root=file:///data/lake", "lake.predictions=hdfs:///data/predictions"])
    assert (uris.lake.root, uris.lake.predictions) == ("file:///data/lake", "hdfs:///data/predictions")


def test_relative_paths_resolve_against_the_checkout_not_the_code_zip_spark_submit_ships(tmp_path):
    """Under spark-submit the driver imports skyclass from dist/skyclass-code-*.zip: without SKYCLASS_HOME (which
    the wrappers set) a relative lake.root must resolve against the current folder, never inside dist/."""
    import subprocess
    import sys
    import zipfile

    package = REPO_ROOT / "lib" / "skyclass"
    code_zip = tmp_path / "dist" / "skyclass-code.zip"
    code_zip.parent.mkdir()
    with zipfile.ZipFile(code_zip, "w") as zf:
        for path in package.rglob("*.py"):
            zf.write(path, path.relative_to(package.parent))
    work = tmp_path / "work"
    work.mkdir()
    probe = "from skyclass.config import load_config; print(load_config(None, ['lake.root=lake']).lake.root)"
    env = {k: v for k, v in os.environ.items() if k not in ("SKYCLASS_HOME", "PYTHONPATH")}
    run = lambda **extra: subprocess.run(  # noqa: E731
        [sys.executable, "-c", probe], cwd=work, capture_output=True, text=True, check=True,
        env={**env, "PYTHONPATH": str(code_zip), **extra}).stdout.strip()
    assert run() == str(work / "lake")
    assert run(SKYCLASS_HOME=str(tmp_path / "checkout")) == str(tmp_path / "checkout" / "lake")


# Keys with a fixed set of values, and rules between keys, are checked when the config loads: a typo must not
# surface inside Horovod after executors started, or after every network has been scored.
@pytest.mark.parametrize("overrides, words", [
    (["train.backbone=resnet"], ["train.backbone", "small_cnn", "xception", "'resnet'"]),
    (["evaluate.baselines=[logistic_regression, random_forrest]"], ["evaluate.baselines", "'random_forrest'", "gbt"]),
    (["evaluate.baselines=[gbt, gbt]"], ["evaluate.baselines lists an entry twice"]),
    (["evaluate.feature_sets=[paper, paper]"], ["evaluate.feature_sets lists an entry twice"]),
    (["evaluate.feature_sets=[photometric, colours]"], ["evaluate.feature_sets", "paper", "'colours'"]),
    (["score.run_date=2026-13-01"], ["score.run_date", "YYYY-MM-DD"]),
    (["spark.driver_memory=lots"], ["spark.driver_memory", "4g"]),
    (["extract.photo_columns=[ra, 'dec; drop table']"], ["extract.photo_columns[1]", "SQL column name"]),
    (["skyserver.backoff_s=5", "skyserver.max_backoff_s=1"], ["skyserver.max_backoff_s (1.0) must be >= "
                                                               "skyserver.backoff_s (5.0)"]),
    (["cutouts.backoff_s=5", "cutouts.max_backoff_s=1"], ["cutouts.max_backoff_s", "cutouts.backoff_s"]),
    (["cutouts.rows_per_row_group=6000", "cutouts.rows_per_file=5000"], ["cutouts.rows_per_row_group (6000)",
                                                                         "rows_per_file (5000)"]),
    (["train.warmup_epochs=-1"], ["train.warmup_epochs must be >= 0"]),
    (["train.warmup_epochs=5", "train.epochs=3"], ["train.warmup_epochs (5) must be <= train.epochs (3)"]),
    (["train.early_stopping_patience=-2"], ["train.early_stopping_patience must be >= 0"]),
    (["train.reduce_lr_patience=0"], ["train.reduce_lr_patience must be > 0"]),
    (["train.reduce_lr_patience=6", "train.early_stopping_patience=6"],
     ["train.reduce_lr_patience (6) must be < train.early_stopping_patience (6)"]),
    (["train.steps_per_epoch=0"], ["train.steps_per_epoch must be > 0"]),
    (["train.lr_schedule=onecycle"], ["train.lr_schedule", "'onecycle'", "cosine"]),
    (["train.lr_schedule=cosine", "train.reduce_lr_patience=2"],
     ["train.lr_schedule 'cosine'", "train.reduce_lr_patience (2) would be undone", "null"]),
    (["train.trainable_layers=-1"], ["train.trainable_layers must be >= 0"]),
    (["train.tabular_units=[64, 0]"], ["train.tabular_units[1] must be > 0"]),
    (["train.backbone=xception", "train.image_size_px=64"], ["train.image_size_px (64)", "'xception'", "71 px"]),
    (["train.image_crop_px=96"], ["train.image_crop_px (96) is larger than the cutouts", "image_size_px = 64"]),
    (["train.image_crop_px=0"], ["train.image_crop_px must be > 0"]),
    (["train.image_crop_px=8"], ["train.image_crop_px (8) is too small", "'small_cnn' with 4 conv blocks", "16 px"]),
    (["train.backbone=xception", "train.image_size_px=72", "cutouts.size_px=72", "train.image_crop_px=64"],
     ["train.image_crop_px (64) is too small", "'xception'", "71 px"]),
    (["train.cnn_filters=[]"], ["train.cnn_filters must list at least one"]),
    (["train.cnn_filters=[32, 0]"], ["train.cnn_filters[1] must be > 0"]),
    (["extract.page_rows=500001", "skyserver.row_cap=500000"],
     ["extract.page_rows (500001) must be <= skyserver.row_cap (500000)"]),
    (["train.image_size_px=128", "cutouts.size_px=64"], ["train.image_size_px (128) must be <= cutouts.size_px (64)"]),
])
def test_choices_and_rules_between_keys_are_checked_at_load(overrides, words):
    with pytest.raises(ConfigError) as err:
        load_config(LOCAL, overrides)
    for word in [*words, "local.yaml"]:
        assert word in str(err.value)


@pytest.mark.parametrize("overrides", [
    ["train.backbone=xception", "train.image_size_px=72", "cutouts.size_px=72"],
    ["train.image_crop_px=16"],  # 4 conv blocks halve 16 px to 1
    ["train.image_crop_px=8", "train.cnn_filters=[32, 64, 128]"],
    ["train.mode=tabular", "train.image_size_px=128", "cutouts.size_px=64"],  # a tabular model reads no image
    ["train.reduce_lr_patience=2", "train.early_stopping_patience=0"],  # no early stopping: any patience is fine
    ["train.warmup_epochs=2", "train.epochs=2"],
    ["train.lr_schedule=cosine", "train.reduce_lr_patience=null"],
    ["extract.page_rows=500000"],
    ["evaluate.baselines=[mlp, gbt]", "score.run_date=2026-01-02", "spark.driver_memory=512m"],
])
def test_values_next_to_the_limits_load(overrides):
    load_config(LOCAL, overrides)
