"""HATS export throughput: `skyclass export --format hats` of 1M SIMULATED predictions on local[2].

    python bench/export_bench.py [--objects 1000000] [--max-rows 100000] [--master local[2]] [--workdir DIR] [--keep]

The lake is made here with numpy, not by a model: a photometric catalog whose positions are a dense field (a third
of the objects within 0.3 deg of the Abell 2065 centre) on a uniform sky, and one night of predictions with random
probabilities. Then the real export (order-29 index on the executors, adaptive partitions, leaves, metadata, swap)
is timed, end to end from the night's Parquet to the swapped-in catalog, and a second export of the same night
(the atomic replacement) too.

Reports rows/s, files written (leaves and metadata files), the largest partition's rows and bytes, and the orders
used. Writes bench-results/export.json and export.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
RUN_DATE = "2026-01-01"
FIELD_RA_DEG, FIELD_DEC_DEG = 230.62, 27.71
CLASSES = np.array(["GALAXY", "STAR", "QSO"])


def simulate_night(root: Path, n: int, seed: int = 0) -> None:
    """Write lake/photometric and predictions/run_date=RUN_DATE with ``n`` SIMULATED objects, in chunks."""
    from skyclass import lake

    rng = np.random.default_rng(seed)
    (root / "lake" / "photometric").mkdir(parents=True)
    night = root / "predictions" / f"run_date={RUN_DATE}"
    night.mkdir(parents=True)
    chunk = 250_000
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        dense = rng.random(m) < 1 / 3
        ra = np.where(dense, FIELD_RA_DEG + rng.uniform(-0.34, 0.34, m), rng.uniform(0, 360, m))
        dec = np.where(dense, FIELD_DEC_DEG + rng.uniform(-0.3, 0.3, m),
                       np.degrees(np.arcsin(rng.uniform(-1, 1, m))))
        objid = 1_237_000_000_000_000_000 + np.arange(start, start + m, dtype=np.int64)
        catalog = pd.DataFrame({"objid": objid, "ra": ra, "dec": dec,
                                **{b: rng.uniform(15, 23, m) for b in lake.MAGNITUDES}, "quality": "ok"})
        pq.write_table(pa.Table.from_pandas(catalog, schema=lake.PHOTOMETRIC.arrow_schema(), preserve_index=False),
                       root / "lake" / "photometric" / f"part-{start // chunk:05d}.parquet")
        proba = rng.dirichlet([1, 1, 1], m).astype(np.float32)
        predictions = pd.DataFrame({"objid": objid, "predicted_class": CLASSES[proba.argmax(1)],
                                    "p_galaxy": proba[:, 0], "p_star": proba[:, 1], "p_qso": proba[:, 2],
                                    "model_version": "bench", "model_fingerprint": "sha256:bench", "status": "ok"})
        pq.write_table(pa.Table.from_pandas(predictions, schema=lake.PREDICTIONS.arrow_schema(), preserve_index=False),
                       night / f"part-{start // chunk:05d}.parquet")


def catalog_files(path: Path) -> dict:
    leaves = sorted(path.glob("dataset/Norder=*/Dir=*/Npix=*.parquet"))
    sizes = [p.stat().st_size for p in leaves]
    rows = [pq.read_metadata(p).num_rows for p in leaves]
    others = [p for p in path.rglob("*") if p.is_file() and p not in set(leaves)]
    biggest = int(np.argmax(rows))
    return {"leaves": len(leaves), "metadata_files": len(others), "files_written": len(leaves) + len(others),
            "bytes": int(sum(sizes) + sum(p.stat().st_size for p in others)),
            "largest_partition_rows": int(rows[biggest]), "largest_partition_bytes": int(sizes[biggest]),
            "largest_partition": str(leaves[biggest].relative_to(path / "dataset")),
            "orders": sorted({int(p.parts[-3].split("=")[1]) for p in leaves})}


def write_report(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "export.json").write_text(json.dumps(results, indent=2))
    lines = ["# HATS export benchmark (SIMULATED predictions)", "",
             f"{results['objects']:,} objects, cap {results['max_rows']:,} rows per partition, master "
             f"{results['master']}, {os.cpu_count()} CPUs (shared machine).", "",
             "| run | seconds | rows/s | files written | leaves | largest partition (rows / MB) | orders |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for run in results["runs"]:
        f = run["files"]
        lines.append(f"| {run['name']} | {run['seconds']:.1f} | {run['rows_per_s']:,.0f} | {f['files_written']} | "
                     f"{f['leaves']} | {f['largest_partition_rows']:,} / {f['largest_partition_bytes'] / 1e6:.1f} | "
                     f"{f['orders']} |")
    (out_dir / "export.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--max-rows", type=int, default=100_000, help="export.max_rows_per_partition")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--workdir")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "lib"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from skyclass.config import SparkConfig, load_config
    from skyclass.export import export_predictions
    from skyclass.session import build_spark

    work = Path(args.workdir or tempfile.mkdtemp(prefix="skyclass-export-bench-"))
    began = time.monotonic()
    simulate_night(work, args.objects)
    simulate_s = time.monotonic() - began
    spark = build_spark(SparkConfig(master=args.master, app_name="export-bench", shuffle_partitions=8,
                                    driver_memory="3g", extra={"spark.ui.enabled": "false"}))
    spark.sparkContext.setLogLevel("ERROR")
    conf = load_config(None, [f"lake.root={work}/lake", f"lake.predictions={work}/predictions",
                              f"export.output={work}/exports", f"export.max_rows_per_partition={args.max_rows}"])
    runs = []
    try:
        for name in ("first export", "rerun (atomic replacement)"):
            result = export_predictions(spark, conf)
            runs.append({"name": name, "seconds": result.seconds, "rows_per_s": result.rows_per_s,
                         "rows": result.rows, "files": catalog_files(Path(result.path))})
            print(result, flush=True)
    finally:
        spark.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results = {"objects": args.objects, "max_rows": args.max_rows, "master": args.master,
               "simulate_seconds": simulate_s, "runs": runs, "simulated": True}
    write_report(results, ROOT / "bench-results")
    print((ROOT / "bench-results" / "export.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
