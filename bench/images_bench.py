"""``make bench-images``: the image network on REAL SDSS cutouts (../shared/data/sdss/real_cutouts.parquet) and the
paper's multimodal claim on the real image+photometry pairs (real_pairs.csv). Results under bench-results/.

Steps (``--steps``, default all):

- ``scale``: how to bring the 128 px @ 0.4"/px getjpeg cutouts to the lake's 64 px -- resize the whole 51" field
  (0.8"/px) or crop the central 64 px at native scale (25.6" field) -- decided by a quick small_cnn comparison on a
  field-grouped subsample (in-process Keras, same model, same epochs; only the pixels differ).
- ``import``: the real jobs' code on a bench lake (bench-results/images/lake): ``extract --from-csv real_pairs.csv``
  (real photometry of 7,637 of the objects) and ``cutouts --import real_cutouts.parquet`` (all 68,725 cutouts and
  their classes, a labels-only catalog for the rest).
- ``images``: the image training table (train.mode=image, split.group_by=field), the Petastorm reader's img/s, and
  per backbone a Horovod-on-Spark training run (small_cnn on the central 32 px; small_cnn on the whole cutout with
  and without augmentation; two of the paper's backbones from scratch on fewer images per epoch, said in the
  output) with test accuracy and per-class F1 with 95% bootstrap intervals; `skyclass evaluate`'s report
  (Table 5/6) for the best small_cnn.
- ``pairs``: the same lake's table rebuilt for train.mode=multimodal (only the pairs have photometry; the same
  field hash, so the pairs' test fields are test fields of the image table too and the SDSS-trained weights never
  saw them): tabular, image and multimodal (fresh, and with the image weights of ``images``' small_cnn) on the
  same test objects, with the paired McNemar test of multimodal against the better single modality.

The machine has 2 shared cores: the sizes below are what fits in about 45 minutes; every figure says its size.
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
# The image run that gets the evaluate report and gives the pairs their SDSS-trained weights: small_cnn on the
# central 32 px (12.8") of the 64 px cutouts. On a 25,000-image subsample (6 epochs, validation split) it beat the
# whole 64 px cutout at a quarter of the work; the bench's small_cnn-augment run trains on the whole cutout.
BEST_RUN = "small_cnn-crop32"
BEST_IMAGE = {"image_crop_px": 32}


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
    """small_cnn on resized vs centre-cropped pixels, and on the central 32 px of the cropped ones (the model's own
    crop, train.image_crop_px); same objects, seed and epochs. The pixel choice is decided between the first two
    (the lake stores one of them); the third measures the model's crop on the lake's pixels."""
    import pyarrow.parquet as pq
    import tensorflow as tf

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
    for mode, pixels, model_crop in (("resize", "resize", None), ("crop", "crop", None),
                                     ("crop, central 32 px in the model", "crop", 32)):
        x_train = np.stack([_decode(table.jpeg[i], pixels) for i in train_idx])
        x_test = np.stack([_decode(table.jpeg[i], pixels) for i in test_idx])
        tf.keras.utils.set_random_seed(1)
        model = compile_model(build_model("image", n_features=1, image_size_px=64, image_crop_px=model_crop),
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
    best = max(("resize", "crop"), key=lambda m: out["modes"][m]["accuracy"])
    out["chosen"] = best
    print(f"[scale] chosen: {best}", flush=True)
    return out


BENCH = os.path.join(RESULTS, "images")


def _conf(**overrides):
    from skyclass.config import load_config

    items = [f"lake.root={BENCH}/lake", f"lake.models={BENCH}/models", f"lake.predictions={BENCH}/predictions",
             f"lake.reports={BENCH}/reports", "spark.master=local[2]", "spark.driver_memory=3g",
             "spark.shuffle_partitions=4", "split.group_by=field", "cutouts.import_fit=crop",
             "train.image_size_px=64", "train.num_proc=2", "train.warmup_epochs=1", "train.early_stopping_patience=3",
             "train.reduce_lr_patience=2",
             "evaluate.baselines=[]"]
    items += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(os.path.join(REPO, "conf", "local.yaml"), items)


def _spark(conf):
    from skyclass.session import build_spark

    return build_spark(conf.spark)


def step_import(spark, limit=None) -> dict:
    from skyclass import extract
    from skyclass.cutout_import import import_cutouts

    conf = _conf()
    source = CUTOUTS_FILE
    if limit:
        import pyarrow.parquet as pq

        source = os.path.join(BENCH, "real_cutouts_sample.parquet")
        os.makedirs(BENCH, exist_ok=True)
        pq.write_table(pq.read_table(CUTOUTS_FILE).slice(0, limit), source)
    started = time.perf_counter()
    catalog = extract.extract_catalog(spark, conf, from_csv=PAIRS_FILE)
    print(f"[import] real pairs catalog: {catalog}", flush=True)
    result = import_cutouts(spark, conf, source, name="real_cutouts")
    seconds = time.perf_counter() - started
    print(f"[import] {result}", flush=True)
    return {"read": result.read, "stored": result.stored, "failed": len(result.failed),
            "already_present": result.already_present, "labels": result.labels_stored,
            "scale_arcsec_per_px": result.scale_arcsec_per_px, "seconds": seconds,
            "images_per_s": result.read / result.elapsed_s if result.elapsed_s else None}


def _test_predictions(package_path: str, lake_root: str):
    """True labels, predicted labels, objids and the labels scoring gives (the argmax of the package's calibrated
    probabilities: vector scaling can move decisions) of a package on the test split (read with pyarrow, decoded
    with the scoring decoder: independent of the training input pipeline)."""
    import pyarrow.parquet as pq

    from skyclass import lake
    from skyclass.features import decode_jpegs, standardise
    from skyclass.package import ModelPackage

    pkg = ModelPackage.load(package_path)
    model = pkg.load_model()
    names = set(model.input_names)
    table = pq.read_table(lake.training_split_path(lake_root, "test"))
    calibration = pkg.calibration("main")
    truth, pred, ids, scored = [], [], [], []
    for batch in table.to_batches(1024):
        frame = batch.to_pandas()
        inputs = {"features": standardise(frame, pkg.features, pkg.normalisation)}
        keep = np.ones(len(frame), dtype=bool)
        if "image" in names:
            images, keep = decode_jpegs(list(frame["jpeg"]), pkg.image_size_px)
            inputs["image"] = images
        inputs = {k: v[keep] for k, v in inputs.items() if k in names}
        proba = model.predict(inputs, batch_size=256, verbose=0)
        truth.append(frame["label"].to_numpy()[keep])
        pred.append(proba.argmax(axis=1))
        scored.append(calibration.apply(proba).argmax(axis=1))
        ids.append(frame["objid"].to_numpy()[keep])
    return np.concatenate(truth), np.concatenate(pred), np.concatenate(ids), np.concatenate(scored)


def _scores(truth, pred) -> dict:
    from skyclass.metrics import bootstrap_intervals, confusion_matrix, metrics_from_confusion

    cm = confusion_matrix(truth, pred, 3)
    metrics = metrics_from_confusion(cm, CLASSES)
    intervals = bootstrap_intervals(cm, CLASSES)
    return {"n": int(len(truth)), "accuracy": metrics["accuracy"], "accuracy_95": intervals["accuracy"],
            "f1": {c: metrics["per_class"][c]["f1"] for c in CLASSES},
            "f1_95": {c: intervals["per_class"][c]["f1"] for c in CLASSES}, "confusion": cm.tolist()}


def _fmt(entry: dict) -> str:
    f1 = ", ".join(f"{c} {entry['f1'][c]:.3f} [{entry['f1_95'][c][0]:.3f}, {entry['f1_95'][c][1]:.3f}]"
                   for c in CLASSES)
    lo, hi = entry["accuracy_95"]
    return f"accuracy {entry['accuracy']:.4f} [{lo:.4f}, {hi:.4f}] on {entry['n']:,} test objects; F1 {f1}"


def _train(spark, version: str, **train):
    import dataclasses

    from skyclass.train import train_model

    conf = _conf(**{f"train.{k}": v for k, v in train.items()}, **{"train.version": version})
    # One models folder per run, so evaluate and latest-package lookups see only that run.
    conf = conf.replace(lake=dataclasses.replace(conf.lake, models=os.path.join(BENCH, "models", version)))
    return conf, train_model(spark, conf)


def image_table(spark, reader_rows: int) -> dict:
    """The image training table (rebuilt: the pairs step replaces it with the multimodal one) and the reader."""
    from skyclass import input_pipeline, lake
    from skyclass.training_table import build_training_table

    conf = _conf(**{"train.mode": "image"})
    table = build_training_table(spark, conf)
    print(f"[images] {table}", flush=True)
    out = {"table_rows": table.rows, "runs": {}}
    if reader_rows:
        spec = input_pipeline.InputSpec("image", (), {}, 64)
        train_path = lake.training_split_path(conf.lake.path("root"), "train")
        input_pipeline.measure_reader_throughput(train_path, spec, max_rows=reader_rows)  # warm the page cache
        reader = input_pipeline.measure_reader_throughput(train_path, spec, max_rows=reader_rows)
        print(f"[images] Petastorm reader (decode + batch, 2 threads, no training): {reader['rows_per_s']:.0f} "
              f"img/s over {reader['steady_rows']:,} images after the first row group (opening and first row "
              f"group {reader['first_batch_seconds']:.1f} s, not in the rate)", flush=True)
        out["reader"] = reader
    return out


def step_images(spark, runs, out: dict) -> dict:
    from skyclass.evaluate import evaluate

    root = _conf().lake.path("root")
    for name, train in runs:
        started = time.perf_counter()
        print(f"[images] training {name}: {train}", flush=True)
        run_conf, result = _train(spark, f"img-{name}", mode="image", **train)
        truth, pred, _, scored = _test_predictions(result.path, root)
        entry = _scores(truth, pred)
        entry["calibrated"] = _scores(truth, scored)
        images_per_epoch = result.samples_per_s and int(
            (train.get("steps_per_epoch") or 0) * train.get("batch_size", 64) * 2) or None
        entry.update(train=train, train_img_per_s=result.samples_per_s, epochs=result.epochs,
                     images_per_epoch=images_per_epoch, seconds=time.perf_counter() - started,
                     package=result.path, image_weights=result.image_weights,
                     validation_accuracy=result.validation_accuracy)
        if name == BEST_RUN:
            report = evaluate(spark, run_conf)
            entry["report"] = report.path
            print(f"[images] evaluate report (Table 5/6, real images): {report.path}; SIMULATED label: "
                  f"{report.simulated}", flush=True)
        size = (f"{images_per_epoch:,} images/epoch (subsample)" if images_per_epoch else "whole train split/epoch")
        print(f"[images] {name}: {_fmt(entry)}; training {result.samples_per_s or 0:.0f} img/s, {result.epochs} "
              f"epochs, {size}, {entry['seconds']:.0f} s", flush=True)
        print(f"[images] {name}, labels as scored (calibrated probabilities): {_fmt(entry['calibrated'])}",
              flush=True)
        out["runs"][name] = entry
    return out


def step_pairs(spark, weights: str, train_common: dict, *, tabular_epochs: int, only=None, build_table: bool = True,
               predictions_dir: str = None) -> dict:
    """``only``: the runs to train here (others are read from ``predictions_dir``, where every run leaves its test
    predictions, so runs made by several processes on the same table are compared object by object).

    The tabular network gets ``tabular_epochs``: a dense net on ~6,000 rows of photometry needs far more epochs than
    the image runs' ``train_common`` gives, and a comparison against an undertrained photometric model says nothing
    about fusion."""
    from skyclass.metrics import mcnemar_exact_p
    from skyclass.training_table import build_training_table

    conf = _conf(**{"train.mode": "multimodal"})
    out = {"runs": {}}
    if build_table:
        table = build_training_table(spark, conf)
        print(f"[pairs] {table}", flush=True)
        out["table_rows"] = table.rows
    root = conf.lake.path("root")
    predictions_dir = predictions_dir or BENCH
    runs = [("tabular", dict(mode="tabular", epochs=tabular_epochs)), ("image", dict(mode="image")),
            ("multimodal", dict(mode="multimodal"))]
    if weights:
        runs.append(("multimodal-sdss-weights", dict(mode="multimodal", weights=weights)))
    correct = {}
    ids_of = {}
    names = [n for n, _ in runs]
    for name in (only or []):
        if name not in names:
            names.append(name)
    for name in names:
        saved = os.path.join(predictions_dir, f"pairs-{name}.npz")
        train = dict(runs).get(name)
        if train is not None and (only is None or name in only):
            print(f"[pairs] training {name}", flush=True)
            _, result = _train(spark, f"pairs-{name}", **{**train_common, **train})
            truth, pred, ids, _ = _test_predictions(result.path, root)
            np.savez(saved, truth=truth, pred=pred, ids=ids, rate=result.samples_per_s or 0.0, epochs=result.epochs)
        elif os.path.exists(saved):
            data = np.load(saved)
            truth, pred, ids = data["truth"], data["pred"], data["ids"]
            result = type("Saved", (), {"samples_per_s": float(data["rate"]), "epochs": int(data["epochs"])})
        else:
            continue
        order = np.argsort(ids)
        ids_of[name] = ids[order]
        correct[name] = (truth == pred)[order]
        entry = _scores(truth, pred)
        entry.update(train_img_per_s=result.samples_per_s, epochs=result.epochs)
        out["runs"][name] = entry
        print(f"[pairs] {name}: {_fmt(entry)}", flush=True)
    if not all(k in out["runs"] for k in ("tabular", "image")):
        return out
    for name in ids_of:
        if not np.array_equal(ids_of[name], ids_of["tabular"]):
            raise RuntimeError(f"{name} was scored on other test objects than tabular")
    single = max(("tabular", "image"), key=lambda k: out["runs"][k]["accuracy"])
    out["better_single"] = single
    for name in [n for n in out["runs"] if n.startswith("multimodal")]:
        only_mm = int((correct[name] & ~correct[single]).sum())
        only_single = int((~correct[name] & correct[single]).sum())
        p = mcnemar_exact_p(only_mm, only_single)
        delta = out["runs"][name]["accuracy"] - out["runs"][single]["accuracy"]
        verdict = ("fusion helps (significantly better)" if p < 0.05 and delta > 0 else
                   "fusion hurts (significantly worse)" if p < 0.05 and delta < 0 else
                   "no significant difference: fusion neither helps nor hurts here")
        out["runs"][name]["mcnemar_vs_" + single] = {"only_multimodal_right": only_mm,
                                                    "only_single_right": only_single, "p": p, "verdict": verdict}
        print(f"[pairs] {name} vs {single}: accuracy {delta:+.4f}, McNemar exact p = {p:.3g} ({only_mm} objects "
              f"only {name} gets right, {only_single} only {single}): {verdict}", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default=None, help="comma-separated; default import,images,pairs (and scale "
                                                      "when bench-results/images_scale.json does not exist yet)")
    parser.add_argument("--limit", type=int, help="import only the first N cutouts (a smoke run)")
    parser.add_argument("--epochs", type=int, default=4, help="small_cnn epochs")
    parser.add_argument("--patience", type=int, default=6,
                        help="early stopping patience (epochs without val_loss progress) of the small_cnn runs")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                        help="train.lr_schedule of the small_cnn runs: constant (halved on val_loss plateaus of 2 "
                             "epochs) or cosine (decayed to 0 by the last of --epochs)")
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="small_cnn steps per epoch (default: the whole train split)")
    parser.add_argument("--large-backbones", default="resnet50,efficientnetb2")
    parser.add_argument("--large-epochs", type=int, default=2)
    parser.add_argument("--large-steps", type=int, default=40, help="steps per epoch of the large backbones")
    parser.add_argument("--class-weights", choices=("true", "false"), default="true",
                        help="balanced class weights for the image runs (train.class_weights); a run resumed from "
                             "its checkpoint trains its further epochs with this setting")
    parser.add_argument("--pairs-epochs", type=int, default=8, help="epochs of the pairs' image and multimodal runs")
    parser.add_argument("--pairs-tabular-epochs", type=int, default=40, help="epochs of the pairs' tabular run")
    parser.add_argument("--reader-rows", type=int, default=16000)
    parser.add_argument("--scale-train", type=int, default=6000)
    parser.add_argument("--scale-test", type=int, default=3000)
    parser.add_argument("--scale-epochs", type=int, default=4)
    parser.add_argument("--out", default=None, help="bench folder (default bench-results/images)")
    parser.add_argument("--image-runs", default=None, help="image runs to train (default all)")
    parser.add_argument("--no-image-table", action="store_true", help="use the image table already built")
    parser.add_argument("--pairs-runs", default=None, help="pairs runs to train in this process (default all)")
    parser.add_argument("--pairs-weights", default=None, help="image weights file for multimodal-sdss-weights")
    parser.add_argument("--pairs-no-table", action="store_true", help="use the multimodal table already built")
    parser.add_argument("--pairs-predictions", default=None, help="folder of the pairs runs' test predictions")
    args = parser.parse_args(argv)
    global BENCH
    BENCH = args.out or BENCH
    os.makedirs(RESULTS, exist_ok=True)
    results = {}
    if args.steps is None:
        measured = os.path.exists(os.path.join(RESULTS, "images_scale.json"))
        args.steps = "import,images,pairs" if measured else "scale,import,images,pairs"
        if measured:
            with open(os.path.join(RESULTS, "images_scale.json")) as fh:
                results["scale"] = json.load(fh)
            print("[scale] measured earlier (bench-results/images_scale.json): " + ", ".join(
                f"{m} accuracy {v['accuracy']:.4f}, QSO F1 {v['f1']['QSO']:.3f}" for m, v in
                results["scale"]["modes"].items()) + f" on {results['scale']['n_test']:,} test objects after "
                f"{results['scale']['epochs']} epochs on {results['scale']['n_train']:,}; chosen: "
                f"{results['scale']['chosen']}", flush=True)
    if "scale" in args.steps.split(","):
        results["scale"] = step_scale(args.scale_train, args.scale_test, args.scale_epochs)
        with open(os.path.join(RESULTS, "images_scale.json"), "w") as fh:
            json.dump(results["scale"], fh, indent=2)
    steps = args.steps.split(",")
    if any(s_ in steps for s_ in ("import", "images", "pairs")):
        spark = _spark(_conf())
        try:
            if "import" in steps:
                if os.path.exists(BENCH):
                    import shutil

                    shutil.rmtree(BENCH)
                results["import"] = step_import(spark, args.limit)
                _save(results)
            weights = None
            # Patience 6, not _conf's 3: on the whole train split val_loss moves by more from epoch to epoch than
            # it gains: a crop32 run stopped by patience 3 at epoch 5 (test accuracy 0.880), where an earlier run
            # of the same settings went on to 24 epochs and 0.905.
            small = dict(backbone="small_cnn", batch_size=64, epochs=args.epochs, reduce_lr_patience=2,
                         early_stopping_patience=args.patience, class_weights=args.class_weights)
            if args.lr_schedule == "cosine":
                small.update(lr_schedule="cosine", reduce_lr_patience="null")
            if args.steps_per_epoch:
                small["steps_per_epoch"] = args.steps_per_epoch
            # The best model first, then the pairs (they need its weights), then what the time left allows: every
            # finished run is saved to images_bench.json at once.
            extra = [("small_cnn-augment", dict(small, augment=True)), ("small_cnn-no-augment", dict(small))]
            for backbone in [b for b in args.large_backbones.split(",") if b]:
                extra.append((backbone, dict(backbone=backbone, batch_size=32, epochs=args.large_epochs,
                                             steps_per_epoch=args.large_steps, augment=True, learning_rate=5e-4)))
            first = [(BEST_RUN, dict(small, augment=True, **BEST_IMAGE))]
            if args.image_runs:
                wanted = args.image_runs.split(",")
                first = [r for r in first if r[0] in wanted]
                extra = [r for r in extra if r[0] in wanted]
            if "images" in steps and first:
                results["images"] = image_table(spark, args.reader_rows)
                step_images(spark, first, results["images"])
                _save(results)
                weights = results["images"]["runs"][BEST_RUN]["image_weights"]
            if "pairs" in steps:
                if weights is None:
                    candidate = os.path.join(BENCH, "models", f"img-{BEST_RUN}",
                                             f"img-{BEST_RUN}.image-weights.h5")
                    weights = candidate if os.path.exists(candidate) else None
                # No balanced class weights on the pairs: their 22 galaxies in ~6,000 objects would weigh ~90 each
                # and pull every model towards a class the test split barely holds (same for all runs).
                # The image branch of the best image run (its central crop), so its weights load into the pairs' models.
                common = dict(backbone="small_cnn", batch_size=64, epochs=args.pairs_epochs, augment=True,
                              reduce_lr_patience=2, early_stopping_patience=4, class_weights="false", **BEST_IMAGE)
                weights = args.pairs_weights or weights
                results["pairs"] = step_pairs(spark, weights, common, tabular_epochs=args.pairs_tabular_epochs,
                                              only=args.pairs_runs.split(",") if args.pairs_runs else None,
                                              build_table=not args.pairs_no_table,
                                              predictions_dir=args.pairs_predictions)
                _save(results)
            if "images" in steps and extra:
                results.setdefault("images", {"runs": {}})
                if not args.no_image_table:
                    image_table(spark, 0)
                step_images(spark, extra, results["images"])
                _save(results)
                _reader_ratio(results)
        finally:
            spark.stop()
    print(json.dumps(_summary(results), indent=2), flush=True)
    return 0


def _reader_ratio(results: dict) -> None:
    runs = results["images"]["runs"].values()
    rate = max([r["train_img_per_s"] or 0 for r in runs] or [0])
    reader = results["images"].get("reader", {}).get("rows_per_s", float("nan"))
    print(f"[images] reader {reader:.0f} img/s vs the fastest training {rate:.0f} img/s: "
          f"{reader / rate if rate else float('nan'):.1f}x (target >= 3x)", flush=True)


def _save(results: dict) -> None:
    with open(os.path.join(BENCH + ".json"), "w") as fh:
        json.dump(results, fh, indent=2, default=str)


def _summary(results: dict) -> dict:
    summary = {}
    if "scale" in results:
        summary["scale"] = {m: round(v["accuracy"], 4) for m, v in results["scale"]["modes"].items()}
    for step in ("images", "pairs"):
        if step in results:
            summary[step] = {name: {"accuracy": round(r["accuracy"], 4),
                                    "QSO_F1": round(r["f1"]["QSO"], 4)} for name, r in results[step]["runs"].items()}
    return summary


if __name__ == "__main__":
    sys.exit(main())
