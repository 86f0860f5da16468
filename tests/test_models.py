"""Tests of skyclass.models: tiny models, built for real with TensorFlow on CPU."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from skyclass.models import (  # noqa: E402  (after the importorskip)
    ModelConfigError,
    build_model,
    compile_model,
    describe,
)

# Image-only models ignore the "features" key of a shared batch (and vice versa); Keras warns about it each call.
pytestmark = pytest.mark.filterwarnings("ignore:Input dict contained keys")

N_FEATURES = 5
TINY_CNN = dict(image_size_px=16, cnn_filters=(4, 8, 8, 8), tabular_units=(16, 8, 8), fusion_units=(8,))


@pytest.fixture(autouse=True)
def _seed():
    tf.keras.utils.set_random_seed(1234)


def _batch(n=4, size_px=16, n_features=N_FEATURES, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "features": rng.normal(size=(n, n_features)).astype("float32"),
        "image": rng.random((n, size_px, size_px, 3)).astype("float32"),
    }


def _predict(model, batch):
    return model(batch, training=False).numpy()


def test_importing_the_module_does_not_load_tensorflow():
    # A fresh interpreter: this test process already imported TensorFlow.
    code = "import sys, skyclass.models; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=dict(os.environ, PYTHONPATH=str(__import__("conftest").ROOT / "lib")))
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("mode, expected_inputs", [
    ("tabular", ["features"]), ("image", ["image"]), ("multimodal", ["features", "image"])])
def test_each_mode_has_named_inputs_and_a_softmax_output(mode, expected_inputs):
    model = build_model(mode, n_features=N_FEATURES, **TINY_CNN)

    assert sorted(model.input_names) == sorted(expected_inputs)
    assert describe(model)["inputs"] == model.input_names
    assert model.output_shape == (None, 3)
    assert model.layers[-1].name == "probabilities"
    probabilities = _predict(model, _batch())
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (probabilities >= 0).all()


def test_multimodal_output_depends_on_both_inputs():
    model = build_model("multimodal", n_features=N_FEATURES, **TINY_CNN)
    batch = _batch()
    reference = _predict(model, batch)

    other_image = dict(batch, image=_batch(seed=1)["image"])
    other_features = dict(batch, features=_batch(seed=2)["features"])

    assert np.abs(_predict(model, other_image) - reference).max() > 1e-4
    assert np.abs(_predict(model, other_features) - reference).max() > 1e-4


def test_tabular_model_has_no_image_input_and_ignores_images():
    model = build_model("tabular", n_features=N_FEATURES)
    batch = _batch()

    assert model.input_names == ["features"]
    with_other_image = dict(batch, image=_batch(seed=3)["image"])
    np.testing.assert_array_equal(_predict(model, batch), _predict(model, with_other_image))


def test_describe_counts_parameters_by_hand():
    model = build_model("tabular", n_features=4, tabular_units=(8, 4), batch_norm=True, dropout=0.0)

    # Dense: 4*8+8, 8*4+4, 4*3+3; BatchNormalization: 4 parameters (gamma, beta, mean, variance) per unit.
    expected = (4 * 8 + 8) + (8 * 4 + 4) + (4 * 3 + 3) + 4 * 8 + 4 * 4
    assert describe(model) == {"params": expected, "inputs": ["features"]}


def test_small_cnn_layout_follows_cnn_filters_and_batch_norm():
    with_bn = build_model("image", n_features=1, image_size_px=16, cnn_filters=(4, 8), batch_norm=True)
    without_bn = build_model("image", n_features=1, image_size_px=16, cnn_filters=(4, 8), batch_norm=False)

    conv_filters = [layer.filters for layer in with_bn.get_layer("small_cnn").layers
                    if isinstance(layer, tf.keras.layers.Conv2D)]
    assert conv_filters == [4, 8]
    assert with_bn.get_layer("small_cnn").output_shape == (None, 4, 4, 8)  # 16 px halved twice
    assert not any(isinstance(layer, tf.keras.layers.BatchNormalization)
                   for layer in without_bn.get_layer("small_cnn").layers)


def test_a_centre_crop_feeds_the_backbone_only_the_central_pixels():
    """The cropped model's output depends on the central 8 px of a 16 px cutout and on nothing outside them."""
    model = build_model("image", n_features=1, image_size_px=16, cnn_filters=(4, 8), image_crop_px=8)
    assert model.get_layer("small_cnn").input_shape == (None, 8, 8, 3)
    rng = np.random.default_rng(0)
    image = rng.random((2, 16, 16, 3)).astype(np.float32)
    other_border = rng.random((2, 16, 16, 3)).astype(np.float32)
    other_border[:, 4:12, 4:12] = image[:, 4:12, 4:12]
    other_centre = image.copy()
    other_centre[:, 7, 7] = 1.0 - image[:, 7, 7]

    def predict(x):
        return model({"image": x}, training=False).numpy()

    np.testing.assert_allclose(predict(image), predict(other_border), rtol=1e-6)
    assert not np.allclose(predict(image), predict(other_centre))
    odd = build_model("image", n_features=1, image_size_px=16, cnn_filters=(4,), image_crop_px=5)
    assert odd.get_layer("small_cnn").input_shape == (None, 5, 5, 3)


@pytest.mark.parametrize("backbone, size_px", [
    ("resnet50", 32), ("vgg16", 32), ("densenet121", 32), ("efficientnetb2", 32), ("xception", 71)])
def test_application_backbone_builds_and_applies_its_own_preprocessing(backbone, size_px):
    model = build_model("image", n_features=1, image_size_px=size_px, backbone=backbone, fusion_units=(8,))
    batch = _batch(n=2, size_px=size_px)

    assert model.output_shape == (None, 3)
    assert model.get_layer(backbone).name == backbone
    np.testing.assert_allclose(_predict(model, batch).sum(axis=1), 1.0, rtol=1e-5)
    # Independent reference: Keras' own preprocess_input on 0-255 pixels.
    module = {"resnet50": "resnet50", "vgg16": "vgg16", "densenet121": "densenet",
              "efficientnetb2": "efficientnet", "xception": "xception"}[backbone]
    expected = getattr(tf.keras.applications, module).preprocess_input(batch["image"] * 255.0)
    preprocess = tf.keras.Model(model.input, model.get_layer("image_preprocess").output)
    np.testing.assert_allclose(preprocess(batch["image"]).numpy(), np.asarray(expected), rtol=1e-5, atol=1e-3)
    assert not model.get_layer("image_preprocess").trainable_weights


def test_trainable_layers_freezes_all_but_the_last_n_backbone_layers():
    model = build_model("image", n_features=1, image_size_px=32, backbone="vgg16", trainable_layers=5,
                        fusion_units=(8,))
    vgg = model.get_layer("vgg16")

    assert len(vgg.layers) == 19  # input + 13 conv + 5 pooling
    assert [layer.trainable for layer in vgg.layers] == [False] * 14 + [True] * 5
    # The last 5 layers are block4_pool, block5_conv1..3, block5_pool: 3 convs x (kernel, bias) are trainable,
    # plus the head's dense and output layers (kernel, bias each).
    trainable = sorted(weight.name for weight in model.trainable_weights)
    assert len(trainable) == 3 * 2 + 2 * 2
    assert sum(name.startswith("block5_conv") for name in trainable) == 6


def test_trainable_layers_zero_freezes_the_whole_backbone_and_none_freezes_nothing():
    frozen = build_model("image", n_features=1, backbone="vgg16", image_size_px=32, trainable_layers=0)
    free = build_model("image", n_features=1, backbone="vgg16", image_size_px=32, trainable_layers=None)

    assert not frozen.get_layer("vgg16").trainable_weights
    assert all(layer.trainable for layer in free.get_layer("vgg16").layers)
    assert len(free.get_layer("vgg16").trainable_weights) == 13 * 2


def test_model_weights_file_restores_a_fresh_model(tmp_path):
    trained = build_model("multimodal", n_features=N_FEATURES, **TINY_CNN)
    path = tmp_path / "model.h5"
    trained.save_weights(str(path))
    batch = _batch()
    expected = _predict(trained, batch)

    fresh = build_model("multimodal", n_features=N_FEATURES, **TINY_CNN)
    assert np.abs(_predict(fresh, batch) - expected).max() > 1e-4  # otherwise the test proves nothing
    fresh.load_weights(str(path))
    np.testing.assert_allclose(_predict(fresh, batch), expected, rtol=1e-5, atol=1e-6)

    # Layer names are fixed, not session counters, so loading by name works too after other models were built.
    by_name = build_model("multimodal", n_features=N_FEATURES, **TINY_CNN)
    by_name.load_weights(str(path), by_name=True)
    np.testing.assert_allclose(_predict(by_name, batch), expected, rtol=1e-5, atol=1e-6)


def test_keras_format_round_trip_keeps_predictions(tmp_path):
    model = compile_model(build_model("image", n_features=1, backbone="vgg16", image_size_px=32), "adam")
    path = tmp_path / "model.keras"
    model.save(str(path))
    batch = _batch(n=2, size_px=32)

    loaded = tf.keras.models.load_model(str(path))
    np.testing.assert_allclose(_predict(loaded, batch), _predict(model, batch), rtol=1e-5, atol=1e-6)


def _backbone_weights(model, name):
    return model.get_layer(name).get_weights()


def test_backbone_weights_argument_loads_a_saved_backbone_file(tmp_path):
    source = build_model("image", n_features=1, image_size_px=32, backbone="vgg16")
    path = tmp_path / "vgg16_notop.h5"
    source.get_layer("vgg16").save_weights(str(path))

    loaded = build_model("image", n_features=1, image_size_px=32, backbone="vgg16", weights=str(path))
    random = build_model("image", n_features=1, image_size_px=32, backbone="vgg16", weights=None)

    for expected, actual in zip(_backbone_weights(source, "vgg16"), _backbone_weights(loaded, "vgg16")):
        np.testing.assert_array_equal(actual, expected)
    assert any(not np.array_equal(a, b) for a, b in zip(_backbone_weights(source, "vgg16"),
                                                          _backbone_weights(random, "vgg16")))


def test_backbone_weights_file_with_different_layers_loads_by_name(tmp_path):
    source = build_model("image", n_features=1, image_size_px=16, cnn_filters=(4, 8, 8, 8))
    path = tmp_path / "small_cnn.h5"
    source.get_layer("small_cnn").save_weights(str(path))

    # Three blocks instead of four: the file no longer matches layer for layer, the shared names still load.
    loaded = build_model("image", n_features=1, image_size_px=16, cnn_filters=(4, 8, 8), weights=path)

    for name in ("cnn_conv_1", "cnn_bn_2", "cnn_conv_3"):
        for expected, actual in zip(source.get_layer("small_cnn").get_layer(name).get_weights(),
                                    loaded.get_layer("small_cnn").get_layer(name).get_weights()):
            np.testing.assert_array_equal(actual, expected)


def test_weights_file_without_backbone_layers_is_rejected(tmp_path):
    whole = build_model("multimodal", n_features=N_FEATURES, **TINY_CNN)
    path = tmp_path / "whole_model.h5"
    whole.save_weights(str(path))  # nests the backbone under one "small_cnn" entry: no backbone layer names

    with pytest.raises(ModelConfigError, match="model.load_weights"):
        build_model("multimodal", n_features=N_FEATURES, weights=str(path), **dict(TINY_CNN, cnn_filters=(4, 8)))


def test_efficientnet_imagenet_file_normalization_is_corrected(tmp_path):
    # Keras' ImageNet EfficientNet weights store the channel stddev where the variance belongs.
    mean_rgb, stddev_rgb = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    source = build_model("image", n_features=1, image_size_px=32, backbone="efficientnetb2").get_layer(
        "efficientnetb2")
    normalization = next(layer for layer in source.layers if isinstance(layer, tf.keras.layers.Normalization))
    normalization.set_weights([mean_rgb, stddev_rgb, np.int64(0)])
    path = tmp_path / "efficientnetb2_notop.h5"
    source.save_weights(str(path))

    net = build_model("image", n_features=1, image_size_px=32, backbone="efficientnetb2",
                      weights=path).get_layer("efficientnetb2")
    normalization = next(layer for layer in net.layers if isinstance(layer, tf.keras.layers.Normalization))
    pixels_255 = np.random.default_rng(0).random((1, 32, 32, 3)).astype("float32") * 255
    normalized = tf.keras.Model(net.input, normalization.output)(pixels_255).numpy()

    np.testing.assert_allclose(normalized, (pixels_255 / 255 - mean_rgb) / stddev_rgb, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="video"), "tabular, image, multimodal"),
    (dict(mode="image", backbone="resnet18"), "small_cnn, resnet50, vgg16, densenet121, efficientnetb2, xception"),
    (dict(mode="image", backbone="xception", image_size_px=64), "at least 71 px"),
    (dict(mode="multimodal", backbone="resnet50", image_size_px=24), "at least 32 px"),
    (dict(mode="image", backbone="small_cnn", image_size_px=8), "at least 16 px"),
    (dict(mode="image", weights="no/such/weights.h5"), "no/such/weights.h5"),
    (dict(mode="image", weights="imagenet"), "no ImageNet weights"),
    (dict(mode="image", backbone="vgg16", image_size_px=32, trainable_layers=20), "19 layers"),
    (dict(mode="tabular", tabular_units=()), "tabular_units"),
    (dict(mode="tabular", dropout=1.0), "dropout"),
    (dict(mode="tabular", n_classes=1), "n_classes"),
])
def test_invalid_arguments_raise_model_config_error(kwargs, message):
    mode = kwargs.pop("mode")
    with pytest.raises(ModelConfigError, match=re.escape(message)):
        build_model(mode, n_features=N_FEATURES, **kwargs)


def test_non_hdf5_weights_file_is_rejected(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_text("not hdf5")
    with pytest.raises(ModelConfigError, match="not an HDF5"):
        build_model("image", n_features=1, backbone="vgg16", image_size_px=32, weights=path)


def test_model_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        build_model("nope", n_features=1)


def test_compile_model_loss_matches_hand_computed_cross_entropy():
    model = build_model("tabular", n_features=2)
    y_true = tf.constant([0])
    y_pred = tf.constant([[0.7, 0.2, 0.1]])

    compile_model(model, "adam")
    assert float(model.loss(y_true, y_pred)) == pytest.approx(-math.log(0.7), rel=1e-5)

    compile_model(model, "adam", label_smoothing=0.3)
    # Smoothed target: 0.7 * one_hot + 0.3 / 3 = [0.8, 0.1, 0.1].
    expected = -(0.8 * math.log(0.7) + 0.1 * math.log(0.2) + 0.1 * math.log(0.1))
    assert float(tf.reduce_mean(model.loss(y_true, y_pred))) == pytest.approx(expected, rel=1e-5)

    with pytest.raises(ModelConfigError, match="label_smoothing"):
        compile_model(model, "adam", label_smoothing=1.5)


def test_multimodal_small_cnn_learns_a_separable_problem():
    # Class k: features centred on 2*e_k, images brightest in channel k. Both modalities carry the label.
    rng = np.random.default_rng(7)
    n, size_px = 384, 16
    labels = rng.integers(0, 3, size=n)
    features = rng.normal(scale=0.5, size=(n, N_FEATURES)).astype("float32")
    features[np.arange(n), labels] += 2.0
    images = rng.random((n, size_px, size_px, 3)).astype("float32") * 0.5
    images[np.arange(n), :, :, labels] += 0.5
    model = compile_model(build_model("multimodal", n_features=N_FEATURES, **TINY_CNN),
                          tf.keras.optimizers.Adam(0.01))

    inputs = {"features": features, "image": images}
    initial_loss = model.evaluate(inputs, labels, batch_size=128, verbose=0)[0]
    history = model.fit(inputs, labels, batch_size=16, epochs=3, verbose=0)
    final_loss, final_accuracy = model.evaluate(inputs, labels, batch_size=128, verbose=0)

    assert set(history.history) == {"loss", "accuracy"}
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    # Evaluated in inference mode, i.e. with the BatchNormalization moving statistics after ~70 steps.
    assert final_loss < 0.25 * initial_loss
    assert final_accuracy > 0.95

