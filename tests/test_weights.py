"""SDSS-trained image weights: the image branch saved as a file that `train.weights` loads into the CNN branch of
an image or multimodal model, `train.trainable_layers` fine-tuning, and clear errors for a mismatched file."""
import numpy as np
import pytest

from skyclass.models import ModelConfigError, build_model, image_weights_info, save_image_weights

SMALL = {"image_size_px": 32, "cnn_filters": (8, 16), "fusion_units": (8,), "tabular_units": (8,)}


def _trained_image_model(seed=3):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    model = build_model("image", n_features=5, **SMALL)
    # Weights unlike any fresh initialisation, so a match can only come from the file.
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def test_loaded_backbone_holds_the_files_values_and_fine_tuning_freezes(tmp_path):
    source = _trained_image_model()
    path = save_image_weights(source, tmp_path / "sdss.h5", backbone="small_cnn", image_size_px=32,
                              cnn_filters=SMALL["cnn_filters"])
    assert image_weights_info(path) == {"backbone": "small_cnn", "image_size_px": 32, "cnn_filters": (8, 16)}

    model = build_model("multimodal", n_features=5, weights=path, trainable_layers=2, **SMALL)
    expected = source.get_layer("small_cnn").get_weights()
    got = model.get_layer("small_cnn").get_weights()
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    # The fusion head and the tabular branch are new: not the file's.
    assert not np.allclose(model.get_layer("probabilities").get_weights()[0],
                           source.get_layer("probabilities").get_weights()[0])
    backbone = model.get_layer("small_cnn")
    trainable = [layer.trainable for layer in backbone.layers]
    assert trainable[-2:] == [True, True] and not any(trainable[:-2])

    fresh = build_model("multimodal", n_features=5, **SMALL)
    assert not np.allclose(fresh.get_layer("small_cnn").get_weights()[0], expected[0])


def test_a_file_of_another_size_or_backbone_is_a_clear_error(tmp_path):
    path = save_image_weights(_trained_image_model(), tmp_path / "sdss.h5", backbone="small_cnn", image_size_px=32,
                              cnn_filters=SMALL["cnn_filters"])
    other_size = dict(SMALL, image_size_px=64)
    with pytest.raises(ModelConfigError, match="small_cnn image branch trained at 32 px.*at 64 px.*image_size_px"):
        build_model("image", n_features=5, weights=path, **other_size)
    with pytest.raises(ModelConfigError, match="backbone .vgg16. at 32 px \(backbone"):
        build_model("image", n_features=5, weights=path, backbone="vgg16", image_size_px=32)
    other_filters = dict(SMALL, cnn_filters=(8, 32))
    with pytest.raises(ModelConfigError, match="cnn_filters differ"):
        build_model("image", n_features=5, weights=path, **other_filters)


def test_a_cropped_model_s_file_records_the_size_its_backbone_saw(tmp_path):
    cropped = dict(SMALL, image_crop_px=16)
    path = save_image_weights(build_model("image", n_features=5, **cropped), tmp_path / "crop.h5",
                              backbone="small_cnn", image_size_px=16, cnn_filters=SMALL["cnn_filters"])
    build_model("multimodal", n_features=5, weights=path, **cropped)  # the same crop of the same cutouts loads
    with pytest.raises(ModelConfigError, match="trained at 16 px.*at 32 px.*train.image_crop_px"):
        build_model("image", n_features=5, weights=path, **SMALL)  # the whole 32 px cutout does not


def test_saving_needs_an_image_branch(tmp_path):
    tabular = build_model("tabular", n_features=5, tabular_units=(8,))
    with pytest.raises(ModelConfigError, match="no 'small_cnn' image branch"):
        save_image_weights(tabular, tmp_path / "x.h5", backbone="small_cnn", image_size_px=32)
