"""Which small_cnn variant to train on real cutouts: in-process Keras on a subsample of the image training table
that ``bench/images_bench.py --steps import,images`` leaves in bench-results/images/lake, scored on its validation
split (the test split stays for the real runs). One seed, no Horovod: a quick screen, not a result.

    python bench/image_variants.py \
        base,crop32,crop32-f64_128_256_256,crop24-f64_128_256_256,centre8 25000 6

A variant name is dash-separated parts: ``cropN`` (the central N px, as train.image_crop_px), ``fA_B_C`` (conv
filters, as train.cnn_filters), ``dbl`` (two convs per block), ``centreN`` (the central NxN pixels also fed
directly to the head), ``logratio`` (log(R/G) and log(G/B) of every pixel as two more input channels),
``apcolN`` (the log colour ratios and log level of the central NxN pixels' summed channels fed to the head),
``base`` (none of these: small_cnn on the whole 64 px cutout). Variants without ``dbl``, ``centreN``, ``logratio``
or ``apcolN`` are models.build_model's small_cnn; the others copy its layout (Conv2D 3x3 relu + BatchNorm +
MaxPool 2x2 per block, global average pooling, Dense 64 relu, Dropout 0.2, softmax). ``rings`` alone is no CNN:
a dense network on 21 aperture and annulus measurements of the cutout (brightness, colour, profile, sky), the
yardstick a CNN must beat.
Batches of 128 with random flips and quarter turns; Adam 2e-3, 1e-3 for the last two epochs (``--schedule cosine``:
2e-3 decayed to 0 along a cosine over the run's steps). Prints validation
accuracy and per-class F1 after every epoch and a RESULT line per variant (with the accuracy of the softmax averaged
over the eight orientations of each image); writes bench-results/image_variants-s<seed>.json and each model's
validation probabilities under bench-results/images/variant-probs/, which ``--ensemble FILE...`` averages and
``--by-brightness FILE...`` scores in fifths of core brightness.
"""
from __future__ import annotations

import glob
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "lib"))
RESULTS = os.path.join(REPO, "bench-results")
TRAINING = os.path.join(RESULTS, "images", "lake", "training")


def load(split: str):
    """uint8 pixels, labels and objids of one split of the bench's image training table (cached as .npz)."""
    import pyarrow.parquet as pq

    from skyclass.features import decode_jpegs

    cache = os.path.join(RESULTS, "images", f"variants-{split}.npz")
    if os.path.exists(cache):
        data = np.load(cache)
        return data["x"], data["y"], data["objid"]
    files = glob.glob(os.path.join(TRAINING, split, "*.parquet"))
    if not files:
        raise SystemExit(f"no image training table under {TRAINING}: run bench/images_bench.py --steps "
                         "import,images first")
    table = pq.ParquetDataset(files).read(columns=["objid", "label", "jpeg"]).to_pandas()
    table = table[table["jpeg"].notna()]
    x, ok = decode_jpegs(table["jpeg"].tolist(), 64, as_uint8=True)
    x, y, objid = x[ok], table["label"].to_numpy()[ok], table["objid"].to_numpy()[ok]
    np.savez(cache, x=x, y=y, objid=objid)
    return x, y, objid


def build(name: str):
    import tensorflow as tf

    layers = tf.keras.layers
    image = tf.keras.Input((64, 64, 3), name="image")
    if name == "rings":
        return _rings_network(image)
    filters, crop, convs, centre, logratio, aperture = (32, 64, 128, 128), 0, 1, 0, False, 0
    for part in name.split("-"):
        if part.startswith("crop"):
            crop = int(part[4:])
        elif part == "logratio":
            logratio = True
        elif part.startswith("apcol"):
            aperture = int(part[5:])
        elif part.startswith("centre"):
            centre = int(part[6:])
        elif part.startswith("f"):
            filters = tuple(int(v) for v in part[1:].split("_"))
        elif part == "dbl":
            convs = 2
        elif part != "base":
            raise SystemExit(f"unknown variant part {part!r} in {name!r}")
    if convs == 1 and not (centre or logratio or aperture):  # small_cnn itself, with train.image_crop_px / train.cnn_filters
        from skyclass.models import build_model

        return build_model("image", n_features=1, image_size_px=64, image_crop_px=crop or None, cnn_filters=filters)
    # Variants small_cnn has no setting for: two convs per block, or the central pixels fed to the head.
    x = layers.Cropping2D((64 - crop) // 2)(image) if crop else image
    if logratio:  # SDSS's gri composites keep each pixel's flux ratios: log(R/G), log(G/B) are its colours
        x = layers.Concatenate()([x, layers.Lambda(_log_ratios)(x)])
    for n_filters in filters:
        for _ in range(convs):
            x = layers.Conv2D(n_filters, 3, padding="same", activation="relu")(x)
            x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.MaxPooling2D(2)(x)
    pooled = layers.GlobalAveragePooling2D()(x)
    if centre:
        direct = layers.Dense(64, activation="relu")(layers.Flatten()(layers.Cropping2D((64 - centre) // 2)(image)))
        pooled = layers.Concatenate()([pooled, direct])
    if aperture:  # the central NxN pixels' summed channels: the source's colour and brightness, as numbers
        sums = layers.Lambda(lambda t: tf.reduce_sum(t, axis=[1, 2], keepdims=True))(
            layers.Cropping2D((64 - aperture) // 2)(image))
        colour = layers.Flatten()(layers.Lambda(_log_ratios_and_level)(sums))
        pooled = layers.Concatenate()([pooled, layers.BatchNormalization()(colour)])
    head = layers.Dropout(0.2)(layers.Dense(64, activation="relu")(pooled))
    return tf.keras.Model(image, layers.Dense(3, activation="softmax")(head))


_EPS = 2.0 / 255.0  # about the JPEG's quantisation: keeps the ratios of dark sky finite
# Annuli (inner, outer radius in px from the centre of the 64 px cutout) whose sky-subtracted channel sums the
# ``rings`` network sees; the sky is the mean of the pixels beyond SKY_RADIUS_PX.
RINGS_PX = ((0, 2), (0, 3), (0, 5), (3, 6), (6, 10))
SKY_RADIUS_PX = 28


def _rings_network(image):
    """No convolutions: a dense network on 21 numbers measured on the cutout (the logs of the sky-subtracted sums of
    each channel in five apertures and annuli, the two colour ratios of the 3 px aperture, log(R/G) and log(G/B) (R,
    G, B = i, r, g in SDSS composites), its concentration, and the sky level of each channel). It knows an object's
    brightness, colour and profile and nothing else, so what the CNN gets beyond it is what the pixels carry beyond
    a profile."""
    import tensorflow as tf

    layers = tf.keras.layers
    yy, xx = np.mgrid[:64, :64] - 31.5
    radius = np.hypot(yy, xx)
    masks = np.stack([(radius >= lo) & (radius < hi) for lo, hi in RINGS_PX] + [radius > SKY_RADIUS_PX], -1)
    masks = tf.constant(masks.astype(np.float32))  # (64, 64, rings + 1)
    areas = tf.reduce_sum(masks, axis=[0, 1])

    def measure(t):
        sums = tf.einsum("bhwc,hwk->bkc", t * 255.0, masks)  # (batch, rings + 1, channel)
        sky = sums[:, -1:, :] / areas[-1]
        flux = sums[:, :-1, :] - sky * areas[:-1, None]
        logs = tf.math.log(tf.maximum(flux + 5.0, 1.0))
        colours = logs[:, 1, :2] - logs[:, 1, 1:]  # log(R/G), log(G/B) in the 3 px aperture
        concentration = logs[:, 0, :1] - logs[:, 2, :1]
        return tf.concat([tf.reshape(logs, (-1, len(RINGS_PX) * 3)), colours, concentration, sky[:, 0, :] / 255.0],
                         axis=-1)

    x = layers.BatchNormalization()(layers.Lambda(measure)(image))
    x = layers.Dense(64, activation="relu")(layers.Dense(128, activation="relu")(x))
    return tf.keras.Model(image, layers.Dense(3, activation="softmax")(x))


def _log_ratios(t):
    import tensorflow as tf

    r, g, b = t[..., 0:1] + _EPS, t[..., 1:2] + _EPS, t[..., 2:3] + _EPS
    return tf.concat([tf.math.log(r / g), tf.math.log(g / b)], axis=-1)


def _log_ratios_and_level(t):
    import tensorflow as tf

    return tf.concat([_log_ratios(t), tf.math.log(tf.reduce_sum(t, axis=-1, keepdims=True) + _EPS)], axis=-1)


def f1_scores(truth, pred):
    from skyclass.metrics import confusion_matrix, metrics_from_confusion

    per_class = metrics_from_confusion(confusion_matrix(truth, pred, 3))["per_class"]
    return [round(per_class[name]["f1"], 4) for name in ("GALAXY", "STAR", "QSO")]


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the eight orientations of a batch of NHWC images: k % 4 quarter turns, mirrored when k >= 4."""
    out = np.rot90(x, k % 4, axes=(1, 2))
    return out[:, :, ::-1] if k >= 4 else out


def predict_orientations(model, x: np.ndarray, as_is: np.ndarray) -> np.ndarray:
    """Softmax averaged over the eight orientations, given the model's softmax on the images as they are."""
    total = as_is.copy()
    for k in range(1, 8):
        total += model.predict(dihedral(x, k), batch_size=512, verbose=0)
    return total / 8


def _scored(truth, pred) -> str:
    return f"validation accuracy {float((pred == truth).mean()):.4f}, F1 GALAXY/STAR/QSO {f1_scores(truth, pred)}"


def _load_aligned(files, objid=None) -> list:
    """Saved validation files' arrays in objid order (a rebuilt table may list the same objects in another order),
    checked to hold the same objects as the first file, or as ``objid`` (sorted) when given."""
    saved = []
    for f in files:
        data = np.load(f)
        order = np.argsort(data["objid"])
        saved.append({k: data[k][order] for k in ("p1", "p8", "y", "objid")})
    expected = saved[0]["objid"] if objid is None else objid
    for data, f in zip(saved, files):
        if not np.array_equal(data["objid"], expected):
            raise SystemExit(f"{f} holds other validation objects than "
                             f"{files[0] if objid is None else 'the bench table'}")
    return saved


def ensemble(files) -> int:
    """Accuracy and F1 of the mean of saved validation probabilities (one file per trained model)."""
    probs = _load_aligned(files)
    truth = probs[0]["y"]
    for key in ("p1", "p8"):
        members = [p[key] for p in probs]
        for p, f in zip(members, files):
            print(f"{key} {os.path.basename(f)}: {_scored(truth, p.argmax(axis=1))}")
        print(f"RESULT ensemble of {len(files)}, {'8 orientations' if key == 'p8' else 'as they are'}: "
              f"{_scored(truth, np.mean(members, axis=0).argmax(axis=1))}", flush=True)
    return 0


def by_brightness(files, bins: int = 5) -> int:
    """STAR/QSO accuracy and QSO F1 of saved validation probabilities in bins of equal size by the central 4x4 px'
    summed channels (the brightness of the core): where in brightness a model tells stars from QSOs."""
    x, y, objid = load("validation")
    order = np.argsort(objid)
    x, y, objid = x[order], y[order], objid[order]
    core = x[:, 30:34, 30:34].astype(np.int64).sum(axis=(1, 2, 3))
    edges = np.quantile(core, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, core, side="right") - 1, 0, bins - 1)
    for f, saved in zip(files, _load_aligned(files, objid)):
        pred = saved["p1"].argmax(axis=1)
        print(f"{os.path.basename(f)}: {_scored(y, pred)}")
        for b in range(bins):
            in_bin = which == b
            stars_qsos = in_bin & (y > 0)
            print(f"  core {edges[b]:6.0f}-{edges[b + 1]:6.0f}: {int(in_bin.sum()):,} objects (GALAXY/STAR/QSO "
                  f"{[int(((y == c) & in_bin).sum()) for c in range(3)]}), accuracy "
                  f"{float((pred[in_bin] == y[in_bin]).mean()):.3f}, STAR/QSO objects right "
                  f"{float((pred[stars_qsos] == y[stars_qsos]).mean()):.3f}, QSO F1 "
                  f"{f1_scores(y[in_bin], pred[in_bin])[2]:.3f}", flush=True)
    return 0


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="?", default="base,crop32")
    parser.add_argument("n_train", nargs="?", type=int, default=25000)
    parser.add_argument("epochs", nargs="?", type=int, default=6)
    parser.add_argument("--seed", type=int, default=7, help="weights and batch order (the subsample stays)")
    parser.add_argument("--low-lr-epochs", type=int, default=2, help="last epochs at half the learning rate")
    parser.add_argument("--schedule", choices=("step", "cosine"), default="step",
                        help="step: 2e-3, then half for --low-lr-epochs; cosine: 2e-3 decayed to 0 over the run")
    parser.add_argument("--ensemble", nargs="+", metavar="NPZ",
                        help="only average saved validation probabilities of earlier runs and score them")
    parser.add_argument("--by-brightness", nargs="+", metavar="NPZ",
                        help="only score saved validation probabilities in five bins of core brightness")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.ensemble:
        return ensemble(args.ensemble)
    if args.by_brightness:
        return by_brightness(args.by_brightness)
    names, n_train, epochs = args.names.split(","), args.n_train, args.epochs
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.keras.utils.set_random_seed(args.seed)
    x_train, y_train, _ = load("train")
    x_val, y_val, val_ids = load("validation")
    idx = np.random.default_rng(0).permutation(len(y_train))[:n_train]
    x_train, y_train = x_train[idx], y_train[idx]
    n_train = len(y_train)  # the whole split when asked for more

    def augment(pixels, label):
        img = tf.image.random_flip_left_right(tf.cast(pixels, tf.float32) / 255.0)
        return tf.image.rot90(img, k=tf.random.uniform([], 0, 4, dtype=tf.int32)), label

    data = (tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(20000, seed=args.seed)
            .map(augment, num_parallel_calls=2).batch(128).prefetch(2))
    x_val_f = x_val.astype(np.float32) / 255.0
    results = []
    for name in names:
        model = build(name)
        rate = 0.002
        if args.schedule == "cosine":
            rate = tf.keras.optimizers.schedules.CosineDecay(0.002, decay_steps=epochs * -(-n_train // 128))
        model.compile(tf.keras.optimizers.legacy.Adam(rate), "sparse_categorical_crossentropy", ["accuracy"])
        started, rows = time.perf_counter(), []
        for epoch in range(epochs):
            if args.schedule == "step" and epoch == epochs - args.low_lr_epochs:
                model.optimizer.learning_rate.assign(0.001)
            model.fit(data, epochs=1, verbose=0)
            p1 = model.predict(x_val_f, batch_size=512, verbose=0)
            pred = p1.argmax(axis=1)
            rows.append({"epoch": epoch + 1, "accuracy": round(float((pred == y_val).mean()), 4),
                         "f1": f1_scores(y_val, pred)})
            print(f"{name} epoch {epoch + 1}: validation accuracy {rows[-1]['accuracy']}, F1 GALAXY/STAR/QSO "
                  f"{rows[-1]['f1']} ({time.perf_counter() - started:.0f} s)", flush=True)
        seconds = time.perf_counter() - started
        p8 = predict_orientations(model, x_val_f, p1)  # p1: the last epoch's softmax
        tta = p8.argmax(axis=1)
        result = {"name": name, "seed": args.seed, "schedule": args.schedule, "params": int(model.count_params()),
                  "validation_objects": int(len(y_val)), "train_images": int(n_train), "epochs": epochs,
                  "accuracy": rows[-1]["accuracy"], "f1": rows[-1]["f1"],
                  "best_accuracy": max(r["accuracy"] for r in rows),
                  "accuracy_8_orientations": round(float((tta == y_val).mean()), 4),
                  "f1_8_orientations": f1_scores(y_val, tta),
                  "img_per_s": round(n_train * epochs / seconds), "curve": rows}
        print("RESULT", json.dumps({k: v for k, v in result.items() if k != "curve"}), flush=True)
        results.append(result)
        saved = os.path.join(RESULTS, "images", "variant-probs",
                             f"{name}-n{n_train}-e{epochs}-s{args.seed}-{args.schedule}.npz")
        os.makedirs(os.path.dirname(saved), exist_ok=True)
        np.savez(saved, p1=p1, p8=p8, y=y_val, objid=val_ids)
        print(f"validation probabilities: {os.path.relpath(saved, REPO)}", flush=True)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"image_variants-s{args.seed}.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
