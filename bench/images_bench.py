"""``make bench-images``: the image network on REAL SDSS cutouts (../shared/data/sdss/real_cutouts.parquet) and the
paper's multimodal claim on the real image+photometry pairs (real_pairs.csv). Results under bench-results/.

Steps (``--steps``, default all):

- ``scale``: how to bring the 128 px @ 0.4"/px getjpeg cutouts to the lake's 64 px -- resize the whole 51" field
  (0.8"/px) or crop the central 64 px at native scale (25.6" field) -- decided by a quick small_cnn comparison on a
  field-grouped subsample (in-process Keras, same model, same epochs; only the pixels differ).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "lib"))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data", "sdss")
CUTOUTS_FILE = os.path.join(SHARED, "real_cutouts.parquet")
PAIRS_FILE = os.path.join(SHARED, "real_pairs.csv")
RESULTS = os.path.join(REPO, "bench-results")
CLASSES = ("GALAXY", "STAR", "QSO")


def _field_fraction(run, camcol, field, salt="skyclass-v1"):
    key = f"{salt}:{int(run)}-{int(camcol)}-{int(field)}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:13], 16) / 16 ** 13


def _decode(blob: bytes, mode: str, size_px: int = 64) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as img:
        img = img.convert("RGB")
        if mode == "resize":
            img = img.resize((size_px, size_px), Image.BILINEAR)
        else:
            w, h = img.size
            left, top = (w - size_px) // 2, (h - size_px) // 2
            img = img.crop((left, top, left + size_px, top + size_px))
        return np.asarray(img, dtype=np.float32) / 255.0


def step_scale(n_train: int, n_test: int, epochs: int) -> dict:
    """small_cnn on resized vs centre-cropped pixels; same objects, model, seed and epochs."""
    import pyarrow.parquet as pq
    import tensorflow as tf

    from skyclass.metrics import classification_metrics  # noqa: F401  (same metrics module as evaluate)
    from skyclass.models import build_model, compile_model

    table = pq.read_table(CUTOUTS_FILE).to_pandas()
    frac = np.array([_field_fraction(r, c, f) for r, c, f in zip(table.run, table.camcol, table.field)])
    rng = np.random.default_rng(0)
    train_idx = rng.permutation(np.flatnonzero(frac < 0.8))[:n_train]
    test_idx = rng.permutation(np.flatnonzero(frac >= 0.9))[:n_test]
    labels = table["class"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    counts = np.bincount(labels[train_idx], minlength=3)
    class_weight = {i: len(train_idx) / (3 * max(c, 1)) for i, c in enumerate(counts)}
    out = {"n_train": len(train_idx), "n_test": len(test_idx), "epochs": epochs, "modes": {}}
    for mode in ("resize", "crop"):
        x_train = np.stack([_decode(table.jpeg[i], mode) for i in train_idx])
        x_test = np.stack([_decode(table.jpeg[i], mode) for i in test_idx])
        tf.keras.utils.set_random_seed(1)
        model = compile_model(build_model("image", n_features=1, image_size_px=64),
                              tf.keras.optimizers.legacy.Adam(1e-3))
        started = time.perf_counter()
        model.fit({"image": x_train}, labels[train_idx], batch_size=64, epochs=epochs, verbose=0,
                  class_weight=class_weight)
        seconds = time.perf_counter() - started
        pred = model.predict({"image": x_test}, batch_size=256, verbose=0).argmax(axis=1)
        truth = labels[test_idx]
        acc = float((pred == truth).mean())
        f1 = {}
        for i, c in enumerate(CLASSES):
            tp = int(((pred == i) & (truth == i)).sum())
            p, t = int((pred == i).sum()), int((truth == i).sum())
            f1[c] = 2 * tp / (p + t) if p + t else float("nan")
        out["modes"][mode] = {"accuracy": acc, "f1": f1, "train_s": seconds}
        print(f"[scale] {mode}: accuracy {acc:.4f}, F1 " + ", ".join(f"{c} {v:.3f}" for c, v in f1.items())
              + f" ({seconds:.0f} s)", flush=True)
    best = max(out["modes"], key=lambda m: out["modes"][m]["accuracy"])
    out["chosen"] = best
    print(f"[scale] chosen: {best}", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="scale")
    parser.add_argument("--scale-train", type=int, default=6000)
    parser.add_argument("--scale-test", type=int, default=3000)
    parser.add_argument("--scale-epochs", type=int, default=4)
    args = parser.parse_args(argv)
    os.makedirs(RESULTS, exist_ok=True)
    results = {}
    if "scale" in args.steps.split(","):
        results["scale"] = step_scale(args.scale_train, args.scale_test, args.scale_epochs)
        with open(os.path.join(RESULTS, "images_scale.json"), "w") as fh:
            json.dump(results["scale"], fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
