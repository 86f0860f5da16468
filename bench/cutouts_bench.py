"""Cutout download throughput: cutouts/s of `download_cutouts` against the SkyServer stand-in with 100 ms of
injected latency per request, for 1, 8, 32 and 64 threads per task on 2 Spark tasks (local[2]), and the efficiency
against the ideal ``tasks x concurrency / latency``.

    python bench/cutouts_bench.py [--latency-ms 100] [--tasks 2] [--concurrency 1 8 32 64] [--seconds 8]

Two series:

- ``live``: every request is rendered by the stand-in (render.py), as in tests and demos. The renderer is real CPU
  (about 1-3 ms per 64 px cutout, in one Python process), so on a 2-core machine the stand-in itself caps the rate
  well below the ideal of the wider settings.
- ``pre-rendered``: the same requests again, answered from a cache the live series filled, so the stand-in only
  parses HTTP and sleeps the latency. This isolates what the downloader (threads, connection pool, validation,
  commits) achieves; the gap between the two series is the stand-in's CPU, not the downloader.

The stand-in runs in this process (the Spark driver is idle while tasks download, and its request arrival times
give the steady-state rate). "server rate" = requests / (last arrival - first arrival); "job rate" = objects /
the download job's duration, including Spark task start-up and the Parquet commits. Efficiency uses the server
rate. Results go to bench-results/cutouts.json and cutouts.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench-results"


class RenderCache:
    """Wraps the stand-in's ``render_field``: ``live`` renders every request (and remembers the bytes);
    otherwise a request seen before is answered from memory."""

    def __init__(self, render):
        self.render = render
        self.live = True
        self.store: dict = {}
        self.hits = 0
        self._lock = threading.Lock()

    def __call__(self, server, ra_deg, dec_deg, scale, width_px, height_px):
        key = (ra_deg, dec_deg, scale, width_px, height_px)
        if not self.live:
            with self._lock:
                jpeg = self.store.get(key)
                if jpeg is not None:
                    self.hits += 1
                    return jpeg
        jpeg = self.render(server, ra_deg, dec_deg, scale, width_px, height_px)
        with self._lock:
            self.store[key] = jpeg
        return jpeg


def _objects(n: int):
    """(stand-in catalog frame, lake photometric table) of ``n`` simulated objects spread over the sky."""
    import pyarrow as pa

    from skyclass import lake
    from skyclass.simulate import catalog_rows, simulated_objects

    objects = simulated_objects(0, 0, n, seed=1, missing_cutout_fraction=0.0, sentinel_fraction=0.0)
    standin = objects[["objid", "ra", "dec", "u", "g", "r", "i", "z"]].copy()
    rows = catalog_rows(objects, "photometric")
    return standin, pa.Table.from_pandas(rows, schema=lake.PHOTOMETRIC.arrow_schema(), preserve_index=False)


def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat (zeros where it does not exist)."""
    try:
        with open("/proc/stat") as fh:
            fields = [float(v) for v in fh.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _run_one(spark, server, table, *, n: int, tasks: int, concurrency: int, latency_ms: float, workdir: str):
    import pyarrow.parquet as pq

    from skyclass.config import load_config
    from skyclass.cutouts import download_cutouts

    root = os.path.join(workdir, f"lake-{concurrency}-{time.monotonic_ns()}")
    os.makedirs(os.path.join(root, "photometric"))
    pq.write_table(table.slice(0, n), os.path.join(root, "photometric", "part-0.parquet"))
    conf = load_config(None, [
        f"lake.root={root}", f"skyserver.url={server.url}", "cutouts.catalog=photometric",
        f"cutouts.tasks={tasks}", f"cutouts.concurrency_per_task={concurrency}",
        # High enough never to bind: this measures concurrency against latency, not the politeness limit.
        "cutouts.max_requests_per_s=1000000", "cutouts.retries=2", "cutouts.timeout_s=30"])
    server.reset_stats()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    load_before = os.getloadavg()[0]
    machine_before = _cpu_times()
    result = download_cutouts(spark, conf, progress_interval_s=5.0)
    machine_after = _cpu_times()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    machine_total = machine_after[1] - machine_before[1]
    machine_busy = (machine_after[0] - machine_before[0]) / machine_total if machine_total else float("nan")
    times = server.request_times("getjpeg")
    server_rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    ideal = tasks * concurrency / (latency_ms / 1000.0)
    in_process_cpu_s = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    shutil.rmtree(root, ignore_errors=True)
    return {
        "concurrency_per_task": concurrency, "tasks": tasks, "objects": n, "stored": result.stored,
        "failed": result.failed_total, "requests": len(times), "ideal_per_s": ideal,
        "server_rate_per_s": round(server_rate, 1), "efficiency": round(server_rate / ideal, 3),
        "job_rate_per_s": round(result.rate_per_s, 1), "elapsed_s": round(result.elapsed_s, 1),
        "lake_bytes_per_object": round(result.lake_bytes_per_object or 0.0, 1),
        # The stand-in (render + HTTP) and the idle driver share this process: its CPU per request is the
        # stand-in's cost.
        "standin_cpu_ms_per_request": round(1000 * in_process_cpu_s / max(len(times), 1), 2),
        "load_average_1min": round((load_before + os.getloadavg()[0]) / 2, 1),
        # Every process on the machine (other users included): near 100 % means the run was CPU-bound.
        "machine_cpu_busy": round(machine_busy, 3),
    }


def _markdown(report: dict) -> str:
    lines = [
        "# Cutout download throughput", "",
        f"Stand-in latency {report['latency_ms']:g} ms per request, {report['tasks']} Spark tasks (local"
        f"[{report['tasks']}]), 64 px cutouts, politeness limit set high enough not to bind. Machine: "
        f"{report['cpus']} CPUs (shared; the 1-minute load average during each run is shown).", "",
        "Ideal = tasks x concurrency / latency. Server rate = requests / (last - first arrival at the stand-in); "
        "job rate = objects / download-job duration (adds Spark task start-up and Parquet commits).", "",
        "| series | threads/task | objects | ideal/s | server rate/s | efficiency | job rate/s | stand-in CPU "
        "ms/request | machine CPU busy | load avg | lake bytes/object |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for series, runs in report["series"].items():
        for r in runs:
            lines.append(f"| {series} | {r['concurrency_per_task']} | {r['objects']:,} | {r['ideal_per_s']:,.0f} | "
                         f"{r['server_rate_per_s']:,.1f} | {100 * r['efficiency']:.0f}% | {r['job_rate_per_s']:,.1f} "
                         f"| {r['standin_cpu_ms_per_request']:.2f} | {100 * r['machine_cpu_busy']:.0f}% | "
                         f"{r['load_average_1min']} | "
                         f"{r['lake_bytes_per_object']:,.0f} |")
    lines += ["", report["note"], ""]
    return "\n".join(lines)


def _note(report: dict) -> str:
    parts = []
    for series, runs in report["series"].items():
        for r in runs:
            verdict = "" if r["efficiency"] >= 0.8 else (
                " - CPU-bound: the machine's cores were saturated" if r["machine_cpu_busy"] >= 0.9
                else " - below target with idle CPU: latency-bound, look at the downloader")
            parts.append(f"{series} {r['concurrency_per_task']} threads/task: {100 * r['efficiency']:.0f}% of ideal, "
                         f"machine {100 * r['machine_cpu_busy']:.0f}% busy{verdict}")
    return "Notes:\n" + "\n".join(f"- {p}" for p in parts) if parts else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="objects per run = ideal rate x this many seconds (at least 100)")
    parser.add_argument("--series", nargs="+", default=["live", "pre-rendered"], choices=["live", "pre-rendered"])
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "lib"))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("skyclass.cutouts").setLevel(logging.INFO)

    import skyclass.standin.server as standin_server
    from skyclass.config import SparkConfig
    from skyclass.session import build_spark
    from skyclass.standin.server import Faults, StandinServer

    sizes = {c: max(100, int(args.tasks * c / (args.latency_ms / 1000.0) * args.seconds)) for c in args.concurrency}
    standin_frame, table = _objects(max(sizes.values()))
    cache = RenderCache(standin_server.render_field)
    standin_server.render_field = cache  # bench-only: lets the pre-rendered series skip the renderer
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = build_spark(SparkConfig(master=f"local[{args.tasks}]", app_name="cutouts-bench",
                                    shuffle_partitions=args.tasks, driver_memory="2g",
                                    extra={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}))
    spark.sparkContext.setLogLevel("ERROR")
    report = {"latency_ms": args.latency_ms, "tasks": args.tasks, "cpus": os.cpu_count(), "series": {}}
    workdir = tempfile.mkdtemp(prefix="cutouts-bench-")
    try:
        with StandinServer([standin_frame], faults=Faults(latency_ms=args.latency_ms)) as server:
            # Warm-up: Python workers and imports, so the first measured run does not pay them.
            _run_one(spark, server, table, n=40, tasks=args.tasks, concurrency=4, latency_ms=args.latency_ms,
                     workdir=workdir)
            for series in args.series:
                cache.live = series == "live"
                runs = report["series"][series] = []
                for c in args.concurrency:
                    run = _run_one(spark, server, table, n=sizes[c], tasks=args.tasks, concurrency=c,
                                   latency_ms=args.latency_ms, workdir=workdir)
                    runs.append(run)
                    print(f"{series:>12} {c:>3} threads/task: {run['server_rate_per_s']:8.1f}/s of ideal "
                          f"{run['ideal_per_s']:6.0f}/s ({100 * run['efficiency']:.0f}%), "
                          f"job {run['job_rate_per_s']:.1f}/s, stand-in {run['standin_cpu_ms_per_request']:.2f} ms "
                          f"CPU/request, machine CPU {100 * run['machine_cpu_busy']:.0f}% busy, load "
                          f"{run['load_average_1min']}", flush=True)
    finally:
        standin_server.render_field = cache.render
        spark.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report["note"] = _note(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cutouts.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "cutouts.md").write_text(_markdown(report))
    print(_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
