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


def test_latest_package_is_the_newest_creation_time(tmp_path):
    # Written in a different order than their times; each carries the creation time its name says.
    for version in ("20240102-000000", "20231231-235959", "20240101-120000"):
        stamp = f"{version[:4]}-{version[4:6]}-{version[6:8]}T{version[9:11]}:{version[11:13]}:{version[13:]}+00:00"
        _write_fake(tmp_path, version, created_at=stamp)
    assert latest_package(str(tmp_path)) == str(tmp_path / "20240102-000000")
    assert [os.path.basename(p) for p in list_packages(str(tmp_path))] == [
        "20231231-235959", "20240101-120000", "20240102-000000"]


def test_latest_package_ignores_names_that_sort_the_other_way(tmp_path):
    # As text "v2" > "20250301-000000" > "20240101-000000"; by creation time the timestamp-named one is newest.
    _write_fake(tmp_path, "v2", created_at="2024-06-01T12:00:00+00:00")
    _write_fake(tmp_path, "20240101-000000", created_at="2024-01-01T00:00:00+00:00")
    _write_fake(tmp_path, "20250301-000000", created_at="2025-03-01T00:00:00.000001+00:00")
    assert latest_package(str(tmp_path)) == str(tmp_path / "20250301-000000")
    assert [os.path.basename(p) for p in list_packages(str(tmp_path))] == ["20240101-000000", "v2",
                                                                            "20250301-000000"]
    # A time in another zone is compared as the instant it is: 02:00+02:00 is 00:00 UTC, a microsecond older.
    _write_fake(tmp_path, "zone", created_at="2025-03-01T02:00:00+02:00")
    assert latest_package(str(tmp_path)) == str(tmp_path / "20250301-000000")
    # Equal times: the greater folder name wins, whatever the order of the folder listing.
    _write_fake(tmp_path, "b-tie", created_at="2026-01-01T00:00:00+00:00")
    _write_fake(tmp_path, "a-tie", created_at="2026-01-01T00:00:00+00:00")
    assert latest_package(str(tmp_path)) == str(tmp_path / "b-tie")


def test_fingerprint_is_stored_verified_and_changes_when_a_version_is_retrained(tmp_path):
    path = _write_fake(tmp_path, "v1")
    with open(os.path.join(path, package.METADATA_FILE), encoding="utf-8") as fh:
        stored = json.load(fh)
    loaded = ModelPackage.load(path)
    assert loaded.fingerprint == stored["fingerprint"]
    # Recomputed here from the definition: SHA-256 over the scheme tag, each weight file's SHA-256 and the metadata
    # without the fingerprint as canonical JSON.
    import hashlib

    digest = hashlib.sha256(b"skyclass-package-fingerprint-v1\n")
    for name, blob in (("model.keras", b"main"), ("tabular.keras", b"tab")):
        digest.update(f"{name}\0{hashlib.sha256(blob).hexdigest()}\n".encode())
    rest = {k: v for k, v in stored.items() if k != "fingerprint"}
    digest.update(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode())
    assert stored["fingerprint"] == "sha256:" + digest.hexdigest()
    # Same version, same weights, trained again later: another package, another fingerprint.
    retrained = ModelPackage.load(_write_fake(tmp_path, "v1", created_at="2099-01-01T00:00:00+00:00")).fingerprint
    assert retrained != loaded.fingerprint
    # Other weights under identical metadata: another fingerprint too.
    meta = _metadata(created_at="2099-01-01T00:00:00+00:00")
    other = write_package(str(tmp_path), "v1", model_keras=b"main2", tabular_keras=b"tab", metadata=meta)
    assert ModelPackage.load(other).fingerprint not in (loaded.fingerprint, retrained)
    path = _write_fake(tmp_path, "v1")
    # Rewriting metadata.json with another layout keeps its content, so the package still loads.
    with open(os.path.join(path, package.METADATA_FILE), encoding="utf-8") as fh:
        meta = json.load(fh)
    with open(os.path.join(path, package.METADATA_FILE), "w", encoding="utf-8") as fh:
        json.dump(dict(reversed(list(meta.items()))), fh)
    assert ModelPackage.load(path).fingerprint == meta["fingerprint"]


@pytest.mark.parametrize("tamper", ["weights", "tabular_weights", "metadata"])
def test_a_package_whose_files_no_longer_match_its_fingerprint_is_refused(tmp_path, tamper):
    path = _write_fake(tmp_path, "v1")
    if tamper == "metadata":
        with open(os.path.join(path, package.METADATA_FILE), encoding="utf-8") as fh:
            meta = json.load(fh)
        meta["normalisation"]["g"]["mean"] = 18.5
        with open(os.path.join(path, package.METADATA_FILE), "w", encoding="utf-8") as fh:
            json.dump(meta, fh)
    else:
        name = package.MODEL_FILE if tamper == "weights" else package.TABULAR_MODEL_FILE
        with open(os.path.join(path, name), "ab") as fh:
            fh.write(b"!")
    with pytest.raises(PackageError, match="no longer matches its fingerprint"):
        ModelPackage.load(path)


def test_an_old_package_without_fingerprint_gets_one_computed_and_logged_once(tmp_path, caplog):
    import logging

    path = _write_fake(tmp_path, "old")
    with open(os.path.join(path, package.METADATA_FILE), encoding="utf-8") as fh:
        meta = json.load(fh)
    written = meta.pop("fingerprint")
    with open(os.path.join(path, package.METADATA_FILE), "w", encoding="utf-8") as fh:
        json.dump(meta, fh)
    with caplog.at_level(logging.INFO, logger="skyclass.package"):
        first = ModelPackage.load(path)
        second = ModelPackage.load(path)
    # The fingerprint never covered itself, so the old package computes to what write_package stored.
    assert first.fingerprint == second.fingerprint == written
    assert sum("has no fingerprint" in r.getMessage() for r in caplog.records) == 1
    # Changing the old package's weights changes what it is identified by.
    with open(os.path.join(path, package.MODEL_FILE), "ab") as fh:
        fh.write(b"!")
    assert ModelPackage.load(path).fingerprint != written


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
