"""Extraction throughput: rows/s of `extract_catalog` against the SkyServer stand-in with 50 ms of latency per
query, for 1, 2 and 4 parallel tasks, and the speed-up over 1 task.

    python bench/extract_bench.py [--catalog FILE] [--latency-ms 50] [--page-rows 2000] [--tasks 1 2 4]

Uses ../shared/data/sdss/labelled.csv when it exists (else a generated 20,000-row catalog). The stand-in runs in
its own process (`skyclass standin`), as SkyServer would, so it does not compete with the Spark driver for the
GIL. Writes bench-results/extract.json and extract.md. "fetch" is the parallel SkyServer part; "total" adds
assembling the ranges, the quality rules and writing the Parquet table with Spark. A last run repeats the widest
task count with equal-width ranges (extract.balance_ranges=false) to show what balancing buys on real ids.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_LABELLED = ROOT.parent / "shared" / "data" / "sdss" / "labelled.csv"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_standin(catalog: str, latency_ms: float):
    """`skyclass standin` in a subprocess; returns (process, base URL) once it answers."""
    import subprocess

    import requests

    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "lib"), SKYCLASS_LOG_LEVEL="WARNING")
    process = subprocess.Popen([sys.executable, "-m", "skyclass.cli", "standin", "--catalog", catalog,
                                "--port", str(port), "--latency-ms", str(latency_ms)], env=env)
    url = f"http://127.0.0.1:{port}/dr17"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the stand-in exited with code {process.returncode}")
        try:
            requests.get(f"{url}/SkyServerWS/SearchTools/SqlSearch", params={"cmd": "SELECT 1"}, timeout=5)
            return process, url
        except requests.ConnectionError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError("the stand-in did not start within 120 s")


def _catalog(path: str | None, tmp: str):
    """(catalog CSV for the stand-in, description, [min, max] specObjID)."""
    import pandas as pd

    if path or SHARED_LABELLED.exists():
        path = path or str(SHARED_LABELLED)
        ids = pd.read_csv(path, usecols=lambda c: c.lower() == "specobjid", dtype=str).iloc[:, 0].map(int)
        return path, f"{path} ({len(ids):,} rows)", int(ids.min()), int(ids.max())
    sys.path.insert(0, str(ROOT / "tests"))
    from catalog_fixture import make_labelled

    frame = make_labelled(20_000, seed=0)
    ids = [int(v) for v in frame["specobjid"]]
    path = os.path.join(tmp, "generated.csv")
    frame.to_csv(path, index=False)
    return path, "generated catalog (20,000 rows; ../shared/data/sdss/labelled.csv not found)", min(ids), max(ids)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", help="labelled catalog CSV (default: ../shared/data/sdss/labelled.csv)")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--page-rows", type=int, default=2000)
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "lib"))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from skyclass.config import SparkConfig, load_config
    from skyclass.extract import extract_catalog
    from skyclass.session import build_spark

    # Enough Spark slots for the widest run: fetching is I/O-bound, so tasks may outnumber the cores.
    spark = build_spark(SparkConfig(master=f"local[{max(args.tasks)}]", app_name="skyclass-bench-extract",
                                    shuffle_partitions=4, driver_memory="2g",
                                    extra={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}))
    spark.sparkContext.setLogLevel("ERROR")
    runs = []
    with tempfile.TemporaryDirectory(prefix="skyclass-bench-extract-") as tmp:
        catalog, description, min_id, max_id = _catalog(args.catalog, tmp)
        process, url = _start_standin(catalog, args.latency_ms)
        try:
            # The first run warms Spark and the Python workers up and is not reported.
            plans = [(args.tasks[0], True), *[(t, True) for t in args.tasks], (max(args.tasks), False)]
            for k, (tasks, balanced) in enumerate(plans):
                conf = load_config(None, [
                    f"lake.root={tmp}/lake-{k}", f"skyserver.url={url}", "skyserver.max_queries_per_s=1000",
                    f"extract.tasks={tasks}", f"extract.page_rows={args.page_rows}",
                    f"extract.balance_ranges={'true' if balanced else 'false'}",
                    f"extract.min_specobjid={min_id}", f"extract.max_specobjid={max_id}"])
                result = extract_catalog(spark, conf)
                runs.append({"tasks": tasks, "balanced_ranges": balanced, "ranges": result.ranges,
                             "rows": result.rows_written, "pages": result.pages,
                             "fetch_s": round(result.fetch_s, 3), "total_s": round(result.elapsed_s, 3),
                             "fetch_rows_per_s": round(result.rows_written / result.fetch_s, 1),
                             "total_rows_per_s": round(result.rows_per_s, 1)})
                print(f"tasks={tasks} balanced={balanced}: {result.rows_written:,} rows, {result.pages} pages, "
                      f"fetch {result.fetch_s:.2f} s, total {result.elapsed_s:.2f} s", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    spark.stop()
    runs = runs[1:]
    base = runs[0]
    for run in runs:
        run["fetch_speedup"] = round(base["fetch_s"] / run["fetch_s"], 2)
        run["total_speedup"] = round(base["total_s"] / run["total_s"], 2)
    report = {"benchmark": "extract", "catalog": description, "latency_ms": args.latency_ms,
              "page_rows": args.page_rows, "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None, "runs": runs,
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "extract.json").write_text(json.dumps(report, indent=2))
    lines = ["# Extraction benchmark", "",
             f"`extract_catalog` against the SkyServer stand-in with {args.latency_ms:g} ms latency per query, "
             f"{args.page_rows:,} rows per page; catalog: {description}. Spark local[{max(args.tasks)}] on "
             f"{os.cpu_count()} cores (load average {report['load_average'][0]:.1f} at the end). "
             "*fetch* = the parallel SkyServer part; *total* adds assembling, quality rules and the Parquet write.",
             "", "| tasks | ranges | rows | pages | fetch s | fetch rows/s | fetch speed-up | total s | total rows/s | "
             "total speed-up |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        label = f"{r['tasks']}" + ("" if r["balanced_ranges"] else " (equal-width ranges)")
        lines.append(f"| {label} | {r['ranges']} | {r['rows']:,} | {r['pages']} | {r['fetch_s']:.2f} | "
                     f"{r['fetch_rows_per_s']:,.0f} | {r['fetch_speedup']:.2f}x | {r['total_s']:.2f} | "
                     f"{r['total_rows_per_s']:,.0f} | {r['total_speedup']:.2f}x |")
    (out / "extract.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
