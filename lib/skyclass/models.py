"""Keras 2 model builders for the GALAXY/STAR/QSO classifier.

Three model families share one builder (after Ethiraj & Bolla, "Classification of Quasars, Galaxies, and Stars
using Multi-modal Deep Learning"): a small dense network on photometric features, a CNN on image cutouts, and
their late fusion (pooled image features concatenated with the dense network's last layer, then a small head).

TensorFlow is imported inside the functions, never at module import, because Spark drivers import this module to
read its constants without paying for (or having) TensorFlow.

Every layer that carries weights outside the Keras application backbones is named explicitly, so a model rebuilt
with the same arguments in another process (e.g. a prediction job) has the same layer names and can load weights
saved by the training job, by name or by topology.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from skyclass.config import BACKBONES, MODES
from skyclass.errors import SkyclassError

if TYPE_CHECKING:  # pragma: no cover - typing only; keeps TensorFlow out of module import
    import tensorflow as tf

logger = logging.getLogger(__name__)


FEATURES_INPUT = "features"
IMAGE_INPUT = "image"
OUTPUT_LAYER = "probabilities"
IMAGE_PREPROCESS_LAYER = "image_preprocess"

# Keras' default 0.99 needs a few hundred steps before the inference-mode moving statistics catch up with
# training, so short runs (smoke tests, small catalogs) evaluate far worse than they train; 0.9 settles in ~20
# steps and is still a ~10-batch average.
_BN_MOMENTUM = 0.9

# Smallest input side each Keras application accepts with include_top=False (keras' obtain_input_shape limits).
_MIN_IMAGE_SIZE_PX = {"resnet50": 32, "vgg16": 32, "densenet121": 32, "efficientnetb2": 32, "xception": 71}

# The ImageNet EfficientNet weights shipped by Keras store the per-channel *standard deviation* in the
# Normalization layer's `variance` slot (tensorflow/tensorflow#49930); Keras compensates with an extra Rescaling
# layer only when built with weights="imagenet", which would make the architecture depend on where the weights
# came from. We instead square the stored values after loading (see _fix_efficientnet_normalization).
_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


class ModelConfigError(SkyclassError, ValueError):
    """A model argument is invalid (unknown mode/backbone, input too small, missing weights file, ...).

    A ValueError for callers validating arguments, and a SkyclassError so the CLI prints just the message.
    """


def _application(backbone: str) -> tuple[Any, Any]:
    """Return (constructor, preprocess_input) of a tf.keras.applications backbone."""
    import tensorflow as tf

    apps = tf.keras.applications
    return {
        "resnet50": (apps.ResNet50, apps.resnet50.preprocess_input),
        "vgg16": (apps.VGG16, apps.vgg16.preprocess_input),
        "densenet121": (apps.DenseNet121, apps.densenet.preprocess_input),
        "efficientnetb2": (apps.EfficientNetB2, apps.efficientnet.preprocess_input),
        "xception": (apps.Xception, apps.xception.preprocess_input),
    }[backbone]


def backbone_input_px(image_size_px: int, image_crop_px: int | None = None) -> int:
    """Side of the images the backbone sees: the central crop if there is one, else the whole cutout."""
    return int(image_crop_px) if image_crop_px is not None else int(image_size_px)


def min_image_size_px(backbone: str, cnn_filters: Sequence[int] = (32, 64, 128, 128)) -> int:
    """Smallest image side a backbone accepts.

    Parameters
    ----------
    backbone : str
        One of BACKBONES.
    cnn_filters : sequence of int
        Conv blocks of `small_cnn` (each halves the side, so it needs 2**len(cnn_filters) pixels).

    Returns
    -------
    int
        Minimum `image_size_px`.

    Raises
    ------
    ModelConfigError
        If `backbone` is unknown.
    """
    _check_choice("backbone", backbone, BACKBONES)
    if backbone == "small_cnn":
        return 2 ** len(cnn_filters)
    return _MIN_IMAGE_SIZE_PX[backbone]


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ModelConfigError(f"unknown {name} {value!r}; valid choices are: {', '.join(choices)}")


def _check_units(name: str, units: Sequence[int], *, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(units, (str, bytes)) or not isinstance(units, Sequence):
        raise ModelConfigError(f"{name} must be a sequence of positive ints, got {units!r}")
    checked = tuple(units)
    if not checked and not allow_empty:
        raise ModelConfigError(f"{name} must contain at least one layer size, got {units!r}")
    for unit in checked:
        if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)) or unit < 1:
            raise ModelConfigError(f"{name} must contain positive ints, got {units!r}")
    return tuple(int(unit) for unit in checked)


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ModelConfigError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def build_model(
    mode: str,
    *,
    n_features: int,
    image_size_px: int = 64,
    n_classes: int = 3,
    backbone: str = "small_cnn",
    weights: str | os.PathLike | None = None,
    trainable_layers: int | None = None,
    tabular_units: Sequence[int] = (128, 64, 32),
    fusion_units: Sequence[int] = (64,),
    dropout: float = 0.2,
    batch_norm: bool = True,
    cnn_filters: Sequence[int] = (32, 64, 128, 128),
    image_crop_px: int | None = None,
) -> "tf.keras.Model":
    """Build an (uncompiled) tabular, image or late-fusion multimodal classifier.

    Inputs are named ``features`` (float32, shape ``(n_features,)``) and ``image`` (float32,
    ``(image_size_px, image_size_px, 3)``, pixels scaled to [0, 1]); call the model with a dict of them. Extra keys
    are ignored, so the same batches can feed every mode. The output layer ``probabilities`` is a softmax over
    ``n_classes``.

    - tabular: ``features`` -> Dense(relu) per ``tabular_units`` (each + BatchNorm + Dropout) -> softmax.
    - image: ``image`` -> [centre crop] -> backbone -> GlobalAveragePooling -> head -> softmax.
    - multimodal: concat(pooled image features, last tabular layer) -> head -> softmax.

    The head is one Dense(relu) (+ Dropout) per ``fusion_units``. Application backbones get their own
    ``preprocess_input`` applied inside the model (to ``255 * image``), as a frozen per-channel affine layer named
    ``image_preprocess`` so the model stays serialisable; the ``small_cnn`` backbone takes the [0, 1] pixels as is.
    The backbone is a nested model named after ``backbone``.

    Parameters
    ----------
    mode : str
        One of MODES.
    n_features : int
        Length of the ``features`` vector (unused in image mode).
    image_size_px : int
        Side of the square image cutouts (unused in tabular mode).
    n_classes : int
        Number of classes (>= 2).
    backbone : str
        One of BACKBONES. ``small_cnn`` is a fast default for 64 px cutouts; the others come from
        ``tf.keras.applications`` with ``include_top=False``.
    weights : str or os.PathLike or None
        Backbone weights: None (random init), ``"imagenet"`` (downloads; not for ``small_cnn``) or the path of a
        local HDF5 weights file for the backbone alone (e.g. Keras' ``*_notop.h5`` file, or one written with
        ``model.get_layer(backbone).save_weights("x.h5")``). Loaded by topology when the file matches the backbone
        layer for layer, otherwise by layer name skipping shape mismatches. Ignored in tabular mode.
    trainable_layers : int or None
        If given, freeze every backbone layer except the last ``trainable_layers`` of ``backbone.layers``
        (0 freezes the whole backbone). None leaves all layers trainable. Frozen BatchNormalization layers run
        in inference mode.
    tabular_units : sequence of int
        Dense layer sizes of the tabular network.
    fusion_units : sequence of int
        Dense layer sizes of the head after pooling/fusion (image and multimodal modes); may be empty.
    dropout : float
        Dropout rate after each tabular and head layer, in [0, 1); 0 adds no Dropout layers.
    batch_norm : bool
        Add BatchNormalization after each tabular dense layer and each ``small_cnn`` conv layer.
    cnn_filters : sequence of int
        Filters of the ``small_cnn`` conv blocks (Conv2D 3x3 relu [+BN] + MaxPool 2x2).
    image_crop_px : int or None
        If given, the backbone sees only the central ``image_crop_px`` pixels of each ``image_size_px`` cutout (a
        ``Cropping2D`` layer named ``image_centre_crop``, inside the model, so scoring feeds the same cutouts as
        training). The object is at the centre of its cutout; the crop leaves out neighbours and sky and costs
        ``(image_crop_px / image_size_px)**2`` of the backbone's work. None uses the whole cutout.

    Returns
    -------
    tf.keras.Model
        The uncompiled model (see compile_model).

    Raises
    ------
    ModelConfigError
        On an unknown mode or backbone, an image smaller than the backbone accepts, a missing or unusable weights
        file, or any other invalid argument.
    """
    _check_choice("mode", mode, MODES)
    _check_choice("backbone", backbone, BACKBONES)
    n_classes = _check_positive_int("n_classes", n_classes, minimum=2)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ModelConfigError(f"dropout must be a float in [0, 1), got {dropout!r}")
    fusion_units = _check_units("fusion_units", fusion_units, allow_empty=True)
    uses_features = mode in ("tabular", "multimodal")
    uses_image = mode in ("image", "multimodal")
    if uses_features:
        n_features = _check_positive_int("n_features", n_features)
        tabular_units = _check_units("tabular_units", tabular_units, allow_empty=False)
    if uses_image:
        cnn_filters = _check_units("cnn_filters", cnn_filters, allow_empty=backbone != "small_cnn")
        image_size_px = _check_positive_int("image_size_px", image_size_px)
        if image_crop_px is not None:
            image_crop_px = _check_positive_int("image_crop_px", image_crop_px)
            if image_crop_px > image_size_px:
                raise ModelConfigError(f"image_crop_px={image_crop_px} is larger than the cutouts "
                                       f"(image_size_px={image_size_px}); crop to at most {image_size_px} px")
        seen_px = backbone_input_px(image_size_px, image_crop_px)
        minimum_px = min_image_size_px(backbone, cnn_filters)
        if seen_px < minimum_px:
            what = f"image_crop_px={image_crop_px}" if image_crop_px is not None else f"image_size_px={image_size_px}"
            raise ModelConfigError(
                f"{what} is too small for backbone {backbone!r}, which needs at least "
                f"{minimum_px} px; use larger cutouts or another backbone"
            )
        if trainable_layers is not None:
            trainable_layers = _check_positive_int("trainable_layers", trainable_layers, minimum=0)
        _check_weights_argument(backbone, weights)

    import tensorflow as tf

    layers = tf.keras.layers
    inputs = []
    branches = []
    if uses_features:
        features = tf.keras.Input(shape=(n_features,), dtype="float32", name=FEATURES_INPUT)
        inputs.append(features)
        branches.append(_tabular_network(features, tabular_units, dropout=dropout, batch_norm=batch_norm))
    if uses_image:
        image = tf.keras.Input(shape=(image_size_px, image_size_px, 3), dtype="float32", name=IMAGE_INPUT)
        inputs.append(image)
        net = _image_backbone(backbone, seen_px, cnn_filters=cnn_filters, batch_norm=batch_norm, weights=weights)
        _freeze_all_but_last(net, trainable_layers)
        x = image
        if seen_px != image_size_px:
            before = (image_size_px - seen_px) // 2
            margins = (before, image_size_px - seen_px - before)
            x = layers.Cropping2D((margins, margins), name="image_centre_crop")(x)
        if backbone != "small_cnn":
            x = _preprocess_layer(backbone)(x)
        branches.append(layers.GlobalAveragePooling2D(name="image_pool")(net(x)))

    if mode == "tabular":
        x = branches[0]
    else:
        x = branches[0] if len(branches) == 1 else layers.Concatenate(name="fusion_concat")(branches)
        for index, units in enumerate(fusion_units, start=1):
            x = layers.Dense(units, activation="relu", name=f"head_dense_{index}")(x)
            if dropout > 0:
                x = layers.Dropout(dropout, name=f"head_dropout_{index}")(x)
    # float32 output keeps the softmax numerically safe if a mixed-precision policy is ever set globally.
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name=OUTPUT_LAYER)(x)
    model_name = mode if mode == "tabular" else f"{mode}_{backbone}"
    return tf.keras.Model(inputs=inputs, outputs=outputs, name=model_name)


def _check_weights_argument(backbone: str, weights: str | os.PathLike | None) -> None:
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ModelConfigError(f"weights must be None, 'imagenet' or a path to an .h5 file, got {weights!r}")
    if weights == "imagenet":
        if backbone == "small_cnn":
            raise ModelConfigError(
                "backbone 'small_cnn' has no ImageNet weights; use weights=None or a local .h5 file, or pick one of "
                f"{', '.join(b for b in BACKBONES if b != 'small_cnn')}"
            )
        return
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise ModelConfigError(
            f"weights file {path!r} for backbone {backbone!r} does not exist; pass an existing .h5 file, "
            "'imagenet' or None"
        )
    import h5py

    if not h5py.is_hdf5(path):
        raise ModelConfigError(f"weights file {path!r} is not an HDF5 (.h5) Keras weights file")


def _tabular_network(features: Any, units: Sequence[int], *, dropout: float, batch_norm: bool) -> Any:
    import tensorflow as tf

    layers = tf.keras.layers
    x = features
    for index, size in enumerate(units, start=1):
        x = layers.Dense(size, activation="relu", name=f"tabular_dense_{index}")(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"tabular_bn_{index}")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"tabular_dropout_{index}")(x)
    return x


def _small_cnn(image_size_px: int, filters: Sequence[int], *, batch_norm: bool) -> "tf.keras.Model":
    import tensorflow as tf

    layers = tf.keras.layers
    image = tf.keras.Input(shape=(image_size_px, image_size_px, 3), name="small_cnn_input")
    x = image
    for index, n_filters in enumerate(filters, start=1):
        x = layers.Conv2D(n_filters, 3, padding="same", activation="relu", name=f"cnn_conv_{index}")(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"cnn_bn_{index}")(x)
        x = layers.MaxPooling2D(2, name=f"cnn_pool_{index}")(x)
    return tf.keras.Model(image, x, name="small_cnn")


def _image_backbone(
    backbone: str, image_size_px: int, *, cnn_filters: Sequence[int], batch_norm: bool, weights: Any
) -> "tf.keras.Model":
    """Build the nested backbone model (unpooled feature maps), with weights loaded."""
    if backbone == "small_cnn":
        net = _small_cnn(image_size_px, cnn_filters, batch_norm=batch_norm)
    else:
        constructor, _ = _application(backbone)
        input_shape = (image_size_px, image_size_px, 3)
        # Always built without weights so the architecture never depends on where the weights come from.
        net = constructor(include_top=False, weights=None, input_shape=input_shape)
        if weights == "imagenet":
            reference = constructor(include_top=False, weights="imagenet", input_shape=input_shape)
            # Same layers in the same order (EfficientNet's extra imagenet-only Rescaling layer has no weights).
            net.set_weights(reference.get_weights())
    if weights is not None and weights != "imagenet":
        _check_image_weights_match(os.fspath(weights), backbone, image_size_px, cnn_filters)
        _load_weights_file(net, os.fspath(weights), backbone)
    if backbone == "efficientnetb2" and weights is not None:
        _fix_efficientnet_normalization(net)
    return net


def _h5_layer_names(path: str) -> list[str]:
    import h5py

    with h5py.File(path, "r") as h5_file:
        # Files written by model.save(...) keep the weights under "model_weights"; save_weights files at the root.
        group = h5_file["model_weights"] if "model_weights" in h5_file else h5_file
        names = group.attrs.get("layer_names")
        if names is None:
            raise ModelConfigError(
                f"weights file {path!r} is HDF5 but not a Keras weights file (no 'layer_names' attribute)"
            )
        return [name.decode("utf8") if isinstance(name, bytes) else str(name) for name in names]


# Attributes skyclass writes into an image-weights file (save_image_weights): what the weights were trained as.
_WEIGHTS_ATTRS = ("skyclass_backbone", "skyclass_image_size_px", "skyclass_cnn_filters")
IMAGE_WEIGHTS_SUFFIX = ".image-weights.h5"


def save_image_weights(model: "tf.keras.Model", path: str | os.PathLike, *, backbone: str, image_size_px: int,
                       cnn_filters: Sequence[int] = (32, 64, 128, 128)) -> str:
    """Save the image branch (the nested backbone model) of an image or multimodal model as an HDF5 weights file
    that ``build_model(weights=path)`` (config ``train.weights``) loads into the backbone of another model.

    The file records the backbone, image size and ``small_cnn`` filters it was trained with, so loading it into a
    different backbone or size is refused with a clear error instead of half-loading.

    Parameters
    ----------
    model : tf.keras.Model
        A model from build_model in image or multimodal mode (or a package's ``load_model()``).
    path : path-like
        Output ``.h5`` file.
    backbone : str
    image_size_px : int
        Side of the images the backbone was trained on (the central crop, if the model crops).
    cnn_filters : sequence of int

    Returns
    -------
    str
        The path written.

    Raises
    ------
    ModelConfigError
        The model has no ``backbone`` layer (a tabular model, or another backbone).
    """
    import h5py

    try:
        net = model.get_layer(backbone)
    except ValueError:
        raise ModelConfigError(f"model {model.name!r} has no {backbone!r} image branch to save (layers: "
                               f"{', '.join(layer.name for layer in model.layers)})") from None
    path = os.fspath(path)
    net.save_weights(path)
    with h5py.File(path, "a") as h5_file:
        h5_file.attrs["skyclass_backbone"] = backbone
        h5_file.attrs["skyclass_image_size_px"] = int(image_size_px)
        h5_file.attrs["skyclass_cnn_filters"] = np.asarray(tuple(cnn_filters) if backbone == "small_cnn" else (),
                                                           dtype=np.int64)
    return path


def image_weights_info(path: str | os.PathLike) -> dict | None:
    """What a :func:`save_image_weights` file was trained as (``backbone``, ``image_size_px``, ``cnn_filters``),
    or None for other weights files (Keras' own ``*_notop.h5``)."""
    import h5py

    with h5py.File(os.fspath(path), "r") as h5_file:
        if "skyclass_backbone" not in h5_file.attrs:
            return None
        attrs = h5_file.attrs
        backbone = attrs["skyclass_backbone"]
        return {"backbone": backbone.decode() if isinstance(backbone, bytes) else str(backbone),
                "image_size_px": int(attrs["skyclass_image_size_px"]),
                "cnn_filters": tuple(int(v) for v in attrs["skyclass_cnn_filters"])}


def _check_image_weights_match(path: str, backbone: str, image_size_px: int, cnn_filters: Sequence[int]) -> None:
    info = image_weights_info(path)
    if info is None:
        return
    want = {"backbone": backbone, "image_size_px": int(image_size_px),
            "cnn_filters": tuple(cnn_filters) if backbone == "small_cnn" else ()}
    different = [k for k in want if info[k] != want[k]]
    if different:
        raise ModelConfigError(
            f"weights file {path!r} holds a {info['backbone']} image branch trained at {info['image_size_px']} px"
            + (f" with filters {list(info['cnn_filters'])}" if info["cnn_filters"] else "")
            + f", but this model has backbone {backbone!r} at {image_size_px} px"
            + (f" with filters {list(want['cnn_filters'])}" if want["cnn_filters"] else "")
            + f" ({', '.join(different)} differ); set train.backbone, train.image_size_px (train.image_crop_px if "
            "the model crops) and train.cnn_filters to the file's, or use weights trained for this model")


def _load_weights_file(net: "tf.keras.Model", path: str, backbone: str) -> None:
    file_layers = set(_h5_layer_names(path))
    try:
        # Exact files (Keras *_notop.h5, or saved from this backbone) load by topology, which does not depend on
        # session-dependent auto-generated layer names such as EfficientNet's "normalization_<n>".
        net.load_weights(path)
        logger.info("loaded %s backbone weights from %s by topology", backbone, path)
        return
    except ValueError as exc:
        logger.info("weights file %s does not match %s layer for layer (%s); loading by name", path, backbone, exc)
    weighted_layers = [layer.name for layer in net.layers if layer.weights]
    matched = [name for name in weighted_layers if name in file_layers]
    if not matched:
        raise ModelConfigError(
            f"weights file {path!r} has no layer named like a {backbone!r} layer (file layers start with "
            f"{sorted(file_layers)[:5]}); pass a Keras include_top=False weights file for {backbone!r} or one "
            f"saved with model.get_layer({backbone!r}).save_weights(...). To restore a whole skyclass model, build "
            "it with weights=None and call model.load_weights(path) instead."
        )
    net.load_weights(path, by_name=True, skip_mismatch=True)
    missing = len(weighted_layers) - len(matched)
    log = logger.warning if missing else logger.info
    log("loaded %s backbone weights from %s by name: %d of %d weighted layers found in the file (the rest keep "
        "their random init; shape mismatches are skipped)", backbone, path, len(matched), len(weighted_layers))


def _fix_efficientnet_normalization(net: "tf.keras.Model") -> None:
    import tensorflow as tf

    for layer in net.layers:
        if isinstance(layer, tf.keras.layers.Normalization):
            mean, variance, count = layer.get_weights()
            if np.allclose(mean, _IMAGENET_MEAN_RGB, atol=1e-6) and np.allclose(
                variance, _IMAGENET_STDDEV_RGB, atol=1e-6
            ):
                # set_weights (unlike assigning the variable) refreshes the constants the layer computes with.
                layer.set_weights([mean, np.square(variance), count])
                logger.info("squared EfficientNet ImageNet normalization variance (Keras weights store stddev)")
            return


def _freeze_all_but_last(net: "tf.keras.Model", trainable_layers: int | None) -> None:
    if trainable_layers is None:
        return
    n_layers = len(net.layers)
    if trainable_layers > n_layers:
        raise ModelConfigError(
            f"trainable_layers={trainable_layers} exceeds the {n_layers} layers of backbone {net.name!r}; "
            "use None to train all of them"
        )
    for index, layer in enumerate(net.layers):
        layer.trainable = index >= n_layers - trainable_layers


def _preprocess_layer(backbone: str) -> "tf.keras.layers.Layer":
    """Return a frozen Dense layer computing ``preprocess_input(255 * image)`` per pixel.

    Every Keras application ``preprocess_input`` is an affine map of the channel vector (scale, mean shift,
    division by std, RGB->BGR swap), so it is sampled once here and stored as a 3x3 kernel and a bias: unlike
    calling it on symbolic tensors, this serialises with ``model.save(".keras")``.
    """
    import tensorflow as tf

    _, preprocess_input = _application(backbone)

    def apply(pixels_0_1: np.ndarray) -> np.ndarray:
        # preprocess_input modifies float arrays in place, hence the copy.
        return np.asarray(preprocess_input(np.array(pixels_0_1, dtype=np.float64) * 255.0), dtype=np.float64)

    bias = apply(np.zeros((1, 3)))[0]
    kernel = apply(np.eye(3)) - bias
    probe = np.random.default_rng(0).random((16, 3))
    if not np.allclose(apply(probe), probe @ kernel + bias, rtol=1e-6, atol=1e-6):
        raise RuntimeError(f"{backbone} preprocess_input is not a per-channel affine map in this Keras version")
    return tf.keras.layers.Dense(
        3,
        use_bias=True,
        kernel_initializer=tf.keras.initializers.Constant(kernel.tolist()),
        bias_initializer=tf.keras.initializers.Constant(bias.tolist()),
        trainable=False,
        name=IMAGE_PREPROCESS_LAYER,
    )


def describe(model: "tf.keras.Model") -> dict:
    """Summarise a model for run metadata.

    Parameters
    ----------
    model : tf.keras.Model
        A model from build_model.

    Returns
    -------
    dict
        ``{"params": total parameter count (trainable and not), "inputs": input names in model order}``.
    """
    return {"params": int(model.count_params()), "inputs": [str(name) for name in model.input_names]}


def compile_model(model: "tf.keras.Model", optimizer: Any, *, label_smoothing: float = 0.0) -> "tf.keras.Model":
    """Compile with sparse categorical cross-entropy on integer class labels and an ``accuracy`` metric.

    Parameters
    ----------
    model : tf.keras.Model
        A model from build_model (softmax output).
    optimizer : tf.keras.optimizers.Optimizer or str
        Passed to ``model.compile`` as is (e.g. a Horovod DistributedOptimizer).
    label_smoothing : float
        In [0, 1). Keras 2's sparse cross-entropy has no smoothing, so for > 0 the labels are one-hot encoded
        inside a plain-function loss: a model saved that way must be loaded with ``compile=False`` (or with the
        loss in ``custom_objects``).

    Returns
    -------
    tf.keras.Model
        The same model, compiled.

    Raises
    ------
    ModelConfigError
        If `label_smoothing` is outside [0, 1).
    """
    import tensorflow as tf

    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) or not (
        0.0 <= label_smoothing < 1.0
    ):
        raise ModelConfigError(f"label_smoothing must be a float in [0, 1), got {label_smoothing!r}")
    if label_smoothing == 0:
        loss: Any = tf.keras.losses.SparseCategoricalCrossentropy(name="sparse_categorical_crossentropy")
    else:
        n_classes = int(model.output_shape[-1])
        smoothing = float(label_smoothing)

        def sparse_categorical_crossentropy_smoothed(y_true, y_pred):
            labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
            return tf.keras.losses.categorical_crossentropy(
                tf.one_hot(labels, n_classes), y_pred, label_smoothing=smoothing
            )

        loss = sparse_categorical_crossentropy_smoothed
    model.compile(optimizer=optimizer, loss=loss, metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return model
