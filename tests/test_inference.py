"""The one inference path: TensorFlow Lite forms of a package (conversion, agreement check, fingerprint), the
interpreter on batches of any size, the score.inference key, and the CLI that adds the forms."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from skyclass import inference, lake
from skyclass.config import ConfigError, load_config
from skyclass.inference import CpuModelError, KerasModel, TFLiteModel, add_cpu_models, convert_to_tflite
from skyclass.package import CPU_MODEL_FILES, ModelPackage, PackageError

from test_score import FEATURES, SIZE_PX, _jpeg, make_package


def _rows(n: int, seed: int = 0) -> pd.DataFrame:
    """Validation-like rows: the package's (unstandardised) features and a cutout, every fifth one missing."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({name: rng.normal(18.0 if name in lake.MAGNITUDES else 0.5, 1.0, n) for name in FEATURES})
    frame["jpeg"] = [None if k % 5 == 0 else _jpeg(seed * 1000 + k) for k in range(n)]
    return frame


@pytest.fixture(scope="module")
def keras_and_lite():
    import tensorflow as tf

    from skyclass.models import build_model

    tf.keras.utils.set_random_seed(3)
    model = build_model("multimodal", n_features=len(FEATURES), image_size_px=SIZE_PX, cnn_filters=(4, 8),
                        tabular_units=(16,), fusion_units=(8,), dropout=0.0)
    return KerasModel(model), TFLiteModel(convert_to_tflite(model), num_threads=1)


def test_the_interpreter_takes_batches_of_any_size_and_matches_keras(keras_and_lite):
    keras, lite = keras_and_lite
    rng = np.random.default_rng(1)
    # Batches of any size run in chunks of the rows the tensors were allocated for, the last chunk padded.
    calls = 0
    for n in (256, 200, 129, 7, 300, 1, 64, 65):
        inputs = {"features": rng.normal(size=(n, len(FEATURES))).astype(np.float32),
                  "image": rng.random((n, SIZE_PX, SIZE_PX, 3), dtype=np.float32)}
        got = lite(inputs)
        assert got.shape == (n, 3)
        np.testing.assert_allclose(got, keras(inputs), atol=1e-5)
        calls += -(-n // lite.rows)
    assert lite.rows == 64 and lite.invocations == calls


def test_add_cpu_models_writes_checked_forms_covered_by_the_fingerprint(tmp_path):
    path = make_package(tmp_path / "models", "cpu", seed=11)
    before = ModelPackage.load(path).fingerprint
    after = add_cpu_models(path, _rows(60))
    package = ModelPackage.load(path)
    assert package.has_cpu_model and package.fingerprint == after != before
    meta = json.loads(open(os.path.join(path, "metadata.json")).read())["cpu_model"]
    import tensorflow as tf

    assert tf.__version__ in meta["converter"] and meta["files"] == CPU_MODEL_FILES
    # The main model is checked on the 48 rows with a cutout, the tabular one on all 60.
    assert (meta["agreement"]["main"]["rows"], meta["agreement"]["tabular"]["rows"]) == (48, 60)
    assert all(meta["agreement"][m]["class_flips"] == 0 and meta["agreement"][m]["max_abs_diff"] <= 1e-4
               for m in ("main", "tabular"))
    assert not [n for n in os.listdir(tmp_path / "models") if n.startswith(".")]  # no staging left behind
    # A changed TFLite file no longer matches the fingerprint.
    with open(os.path.join(path, CPU_MODEL_FILES["main"]), "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(PackageError, match="no longer matches its fingerprint"):
        ModelPackage.load(path)


def test_a_disagreeing_conversion_is_refused_and_the_package_stays_keras_only(tmp_path, monkeypatch):
    import tensorflow as tf

    from skyclass.models import build_model

    path = make_package(tmp_path / "models", "flip", seed=12)
    before = ModelPackage.load(path).fingerprint
    tf.keras.utils.set_random_seed(99)
    other = build_model("multimodal", n_features=len(FEATURES), image_size_px=SIZE_PX, cnn_filters=(4, 8),
                        tabular_units=(16,), fusion_units=(8,), dropout=0.0)
    # A converter that returns another network's weights: what a broken conversion would look like.
    monkeypatch.setattr(inference, "convert_to_tflite", lambda model: bytes(
        tf.lite.TFLiteConverter.from_keras_model(other).convert()))
    with pytest.raises(CpuModelError, match="disagrees with Keras.*stays Keras-only"):
        add_cpu_models(path, _rows(40, seed=2))
    package = ModelPackage.load(path)
    assert package.fingerprint == before and not package.has_cpu_model
    assert not any(name.endswith(".tflite") for name in os.listdir(path))


def test_score_inference_is_checked_at_load():
    assert load_config(None, ["score.inference=tflite"]).score.inference == "tflite"
    assert load_config(None).score.inference == "keras"
    assert load_config(None, ["score.inference=auto"]).score.inference == "auto"
    with pytest.raises(ConfigError, match="score.inference must be one of auto, keras, tflite"):
        load_config(None, ["score.inference=xnnpack"])


def test_cli_adds_the_cpu_model_from_the_lakes_validation_split(tmp_path, capsys):
    from skyclass import cli

    path = make_package(tmp_path / "models", "cli", seed=13)
    rows = _rows(30, seed=3)
    split = lake.training_split_path(str(tmp_path / "lake"), "validation")
    os.makedirs(split)
    rows.to_parquet(os.path.join(split, "part-0.parquet"))
    assert cli.main(["package", "--add-cpu-model", path, "--set", f"lake.root={tmp_path / 'lake'}"]) == 0
    assert "added TensorFlow Lite forms" in capsys.readouterr().out
    assert ModelPackage.load(path).metadata["cpu_model"]["agreement"]["tabular"]["rows"] == 30
    # No validation split: a clear error naming what to build, and the package is unchanged.
    other = make_package(tmp_path / "models", "cli2", seed=14)
    assert cli.main(["package", "--add-cpu-model", other, "--set", f"lake.root={tmp_path / 'none'}"]) == 1
    assert "skyclass table" in capsys.readouterr().err and not ModelPackage.load(other).has_cpu_model


def test_the_converters_own_report_stays_off_the_terminal_unless_verbose(capfd, monkeypatch):
    """The TensorFlow Lite converter writes its "Summary on the non-converted ops" straight to file descriptor
    2; a user's terminal gets it only with --verbose (SKYCLASS_VERBOSE=1)."""
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.layers.Input((4,)), tf.keras.layers.Dense(3)])
    monkeypatch.delenv("SKYCLASS_VERBOSE", raising=False)
    capfd.readouterr()
    assert convert_to_tflite(model)
    quiet = capfd.readouterr()
    assert "non-converted ops" not in quiet.err + quiet.out
    monkeypatch.setenv("SKYCLASS_VERBOSE", "1")
    convert_to_tflite(model)
    assert "non-converted ops" in capfd.readouterr().err
