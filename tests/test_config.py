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
