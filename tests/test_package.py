"""Model packages: write/load round trip, latest-package ordering, and staging folders never counted."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from skyclass import package
from skyclass.package import ModelPackage, PackageError, latest_package, list_packages, write_package

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metadata(**extra):
    meta = {"mode": "tabular", "backbone": "small_cnn", "feature_set": "photometric", "features": ["g", "r", "g_r"],
            "classes": ["GALAXY", "STAR", "QSO"], "image_size_px": 64,
            "normalisation": {"g": {"mean": 18.0, "std": 1.5}, "r": {"mean": 17.5, "std": 1.4},
                              "g_r": {"mean": 0.5, "std": 0.3}},
            "history": {"loss": [1.0, 0.7, 0.5], "val_loss": [1.1, 0.8, 0.65], "accuracy": [0.5, 0.7, 0.8],
                        "val_accuracy": [0.45, 0.66, 0.75]}}
    meta.update(extra)
    return meta


def _write_fake(models_dir, version, **meta):
    # Bytes that are not a model are fine where only the folder mechanics are under test.
    return write_package(str(models_dir), version, model_keras=b"main", tabular_keras=b"tab",
                         metadata=_metadata(**meta))


def test_round_trip_restores_metadata_and_predictions(tmp_path):
    import tensorflow as tf

    from skyclass.models import build_model, compile_model

    model = build_model("tabular", n_features=3, tabular_units=(8,), dropout=0.0, batch_norm=False)
    compile_model(model, tf.keras.optimizers.legacy.Adam(1e-3))
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in model.get_weights()])
    x = {"features": rng.normal(size=(5, 3)).astype(np.float32)}
    expected = model.predict(x, verbose=0)
    blob = package.keras_model_bytes(model)

    path = write_package(str(tmp_path / "models"), "v1", model_keras=blob, tabular_keras=blob,
                         metadata=_metadata(lake_snapshot={"rows": {"train": 10}}))
    assert path == str(tmp_path / "models" / "v1")
    loaded = ModelPackage.load(path)
    assert (loaded.version, loaded.mode, loaded.backbone, loaded.feature_set) == ("v1", "tabular", "small_cnn",
                                                                                    "photometric")
    assert loaded.features == ("g", "r", "g_r")
    assert loaded.classes == ("GALAXY", "STAR", "QSO")
    assert loaded.normalisation["r"] == {"mean": 17.5, "std": 1.4}
    assert loaded.image_size_px == 64
    assert loaded.metadata["lake_snapshot"] == {"rows": {"train": 10}}
    assert loaded.metadata["created_at"]
    np.testing.assert_allclose(loaded.load_model().predict(x, verbose=0), expected, rtol=1e-6)
    np.testing.assert_allclose(loaded.load_tabular_model().predict(x, verbose=0), expected, rtol=1e-6)
    with open(os.path.join(path, package.CURVES_FILE), "rb") as fh:
        assert fh.read(8) == PNG_MAGIC
    assert sorted(os.listdir(tmp_path / "models")) == ["v1"]


def test_latest_package_is_the_greatest_version_name(tmp_path):
    for version in ("20240102-000000", "20231231-235959", "20240101-120000"):
        _write_fake(tmp_path, version)
    assert latest_package(str(tmp_path)) == str(tmp_path / "20240102-000000")
    assert [os.path.basename(p) for p in list_packages(str(tmp_path))] == [
        "20231231-235959", "20240101-120000", "20240102-000000"]


def test_staging_checkpoints_and_incomplete_folders_are_never_latest(tmp_path):
    _write_fake(tmp_path, "20240101-000000")
    # Later-sorting folders that are not complete packages: a staging folder with every file, the checkpoint
    # folder of a newer run, and a package missing its tabular model.
    for name in (".staging-20991231-000000-abcd1234", "20991231-000000.checkpoints", "20990101-000000"):
        folder = tmp_path / name
        folder.mkdir()
        for f in package.REQUIRED_FILES:
            if not (name == "20990101-000000" and f == package.TABULAR_MODEL_FILE):
                (folder / f).write_text("{}")
    assert latest_package(str(tmp_path)) == str(tmp_path / "20240101-000000")


def test_failed_write_leaves_no_staging_and_keeps_the_previous_package(tmp_path, monkeypatch):
    _write_fake(tmp_path, "v1", mode="tabular")

    def broken(path, meta, simulated):
        raise OSError("disk full")

    monkeypatch.setattr(package, "_write_curves", broken)
    with pytest.raises(OSError, match="disk full"):
        _write_fake(tmp_path, "v1", mode="image")
    assert sorted(os.listdir(tmp_path)) == ["v1"]
    assert ModelPackage.load(str(tmp_path / "v1")).mode == "tabular"


def test_rewriting_a_version_replaces_it_whole(tmp_path):
    _write_fake(tmp_path, "v1", mode="tabular")
    _write_fake(tmp_path, "v1", mode="multimodal", tabular_history={"loss": [0.9, 0.8]})
    assert sorted(os.listdir(tmp_path)) == ["v1"]
    with open(tmp_path / "v1" / package.METADATA_FILE, encoding="utf-8") as fh:
        assert json.load(fh)["mode"] == "multimodal"


def test_no_package_says_to_train(tmp_path):
    with pytest.raises(PackageError, match="skyclass train"):
        latest_package(str(tmp_path / "absent"))


def test_incomplete_package_cannot_be_loaded(tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / package.METADATA_FILE).write_text("{}")
    with pytest.raises(PackageError, match="model.keras, tabular.keras"):
        ModelPackage.load(str(tmp_path / "v1"))


@pytest.mark.parametrize("bad", ["", ".hidden", "../up", "a/b", "x.checkpoints", "sp ace"])
def test_bad_version_names_are_refused(tmp_path, bad):
    with pytest.raises(PackageError, match="not a usable folder name"):
        _write_fake(tmp_path, bad)
    assert not os.listdir(tmp_path)
