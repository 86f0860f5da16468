"""JPEG decoding for training: Pillow in the Petastorm transform (today's path) against ``tf.io.decode_jpeg`` in a
``tf.data`` map with ``num_parallel_calls=AUTOTUNE`` (issue 13, item 5: decode inside tf.data if it measures faster).

    python bench/decode_bench.py [--images 20000] [--size-px 64] [--threads 2]

Both paths turn the same stored JPEG bytes into float32 (size, size, 3) arrays in [0, 1]. Cutouts: the real SDSS
cutouts of ``../shared/data/sdss/real_cutouts.parquet`` brought to ``--size-px`` with Pillow and re-encoded as the
lake stores them (when that file exists), else SIMULATED images (noise and a blob). Measured on one
machine in one run: compare the ratio, not the absolute rates. Writes bench-results/decode.json and decode.md.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT.parent / "shared" / "data" / "sdss" / "real_cutouts.parquet"


def stored_cutouts(n: int, size_px: int) -> tuple[list[bytes], str]:
    """``n`` JPEGs of ``size_px`` as the lake stores them, and where their pixels came from."""
    from PIL import Image

    if REAL.exists():
        import pyarrow.parquet as pq

        table = pq.read_table(REAL, columns=["jpeg"]).slice(0, n)
        blobs = []
        for data in table.column("jpeg").to_pylist():
            with Image.open(io.BytesIO(data)) as img:
                out = io.BytesIO()
                img.convert("RGB").resize((size_px, size_px), Image.BILINEAR).save(out, format="JPEG", quality=90)
                blobs.append(out.getvalue())
        return blobs, f"real SDSS cutouts ({REAL.name}), resized to {size_px} px"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size_px, :size_px] - size_px / 2
    blobs = []
    for k in range(n):  # a noisy sky with one blob of random width at the centre
        blob = 200 * np.exp(-(xx ** 2 + yy ** 2) / (2 * (1 + k % 5) ** 2))
        sky = rng.normal(20, 6, (size_px, size_px, 3)) + blob[..., None]
        out = io.BytesIO()
        Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
        blobs.append(out.getvalue())
    return blobs, "SIMULATED cutouts (noise and a central blob)"


def pillow_rate(blobs: list[bytes], size_px: int, threads: int, batch: int) -> float:
    """Images/s through skyclass.features.decode_jpegs in ``threads`` threads, one batch per call (as Petastorm's
    thread pool runs the transform on row groups)."""
    from skyclass.features import decode_jpegs

    chunks = [blobs[i:i + batch] for i in range(0, len(blobs), batch)]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for images, ok in pool.map(lambda c: decode_jpegs(c, size_px), chunks):
            assert ok.all()
    return len(blobs) / (time.perf_counter() - started)


def tf_data_rate(blobs: list[bytes], size_px: int, threads: int, batch: int) -> float:
    """Images/s through a tf.data map of tf.io.decode_jpeg (+ resize when needed), AUTOTUNE parallel calls, on a
    ``threads``-thread private pool."""
    import tensorflow as tf

    def decode(data):
        # INTEGER_ACCURATE is libjpeg's ISLOW DCT, the one Pillow uses: the same pixels as scoring's decoder.
        image = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
        image = tf.image.resize(image, (size_px, size_px)) if size_px != 64 else image
        return tf.cast(image, tf.float32) / 255.0

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    dataset = (tf.data.Dataset.from_tensor_slices(tf.constant(blobs, dtype=tf.string)).with_options(options)
               .map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch))
    for _ in dataset.take(1):  # graph tracing is not decoding
        pass
    started = time.perf_counter()
    n = sum(int(images.shape[0]) for images in dataset)
    return n / (time.perf_counter() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size-px", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=250, help="rows per decode call (a row group)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "lib"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    blobs, source = stored_cutouts(args.images, args.size_px)
    # The same check both paths must pass: equal pixels up to JPEG decoder rounding.
    import tensorflow as tf

    from skyclass.features import decode_jpeg

    diff = max(float(np.abs(decode_jpeg(b, args.size_px)
                            - tf.cast(tf.io.decode_jpeg(b, channels=3, dct_method="INTEGER_ACCURATE"), tf.float32)
                            .numpy() / 255.0).max())
               for b in blobs[:200])
    rates = {"pillow": [], "tf_data": []}
    for _ in range(args.repeats):  # interleaved, so a load change hits both
        rates["pillow"].append(pillow_rate(blobs, args.size_px, args.threads, args.batch))
        rates["tf_data"].append(tf_data_rate(blobs, args.size_px, args.threads, args.batch))
    best = {k: max(v) for k, v in rates.items()}
    results = {"images": len(blobs), "size_px": args.size_px, "threads": args.threads, "source": source,
               "rates_img_per_s": rates, "best_img_per_s": best, "ratio_tf_data_over_pillow":
               best["tf_data"] / best["pillow"], "max_abs_pixel_difference": diff,
               "load_average": os.getloadavg()[0]}
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "decode.json").write_text(json.dumps(results, indent=2))
    lines = ["# JPEG decode for training: Pillow (Petastorm transform) vs tf.data tf.io.decode_jpeg", "",
             f"{len(blobs):,} {source}; {args.threads} threads; best of {args.repeats}; load average "
             f"{results['load_average']:.1f} at the end.", "",
             "| path | img/s (best) | all runs |", "|---|---:|---|",
             *(f"| {k} | {best[k]:,.0f} | {', '.join(f'{r:,.0f}' for r in v)} |" for k, v in rates.items()), "",
             f"tf.data / Pillow: {results['ratio_tf_data_over_pillow']:.2f}; largest pixel difference between the "
             f"two decoders on 200 images: {diff:.4f} (of 1.0)."]
    (out / "decode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
