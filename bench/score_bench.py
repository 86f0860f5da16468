"""Scoring throughput and memory: `score_catalog` over SIMULATED lakes on local[2], with the default multimodal
small_cnn model at 64x64 (untrained: throughput does not depend on the weights), through both inference paths
(score.inference=keras and =tflite) on the same lake in one run.

    python bench/score_bench.py [--objects 20000 [200000]] [--inference keras tflite] [--master local[2]]
                                [--workdir DIR] [--keep]

For each size: simulate the lake (catalog + rendered cutouts, in the executors), then score it with each path
(alternating order from size to size) while a sampler thread records, every 0.2 s with psutil, the RSS of the
driver's Python process, of the driver JVM (which in local mode also hosts the executors) and of the Python worker
processes, and the CPU seconds of each. Memory should stay flat as the catalog grows: the driver holds no rows and
each worker holds one Arrow batch plus the model. Then, in this process, the JPEG decode rate of one core and each
path's model-only rate (one thread, as a worker with spark.task.cpus=1 runs it), from which the decode share and
the projection to 3M objects (here, and per GPU worker with the brief's H200 figure) are derived.

Writes bench-results/score.json and score.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_OBJECTS_PER_S = 1000.0
TARGET_TFLITE_RATIO = 2.0  # issue 16: tflite objects/s >= 2x keras on the same lake
PROJECT_OBJECTS = 3_000_000
# The brief's figure for the small CNN at 64x64 on one H200 (inference only, data already on the GPU).
H200_SMALL_CNN_IMAGES_PER_S = 220_000
BRIEF_DECODE_PER_CORE = (7_000, 12_000)  # the brief's JPEG decode range, 64 px, images/s per core
GPU_WORKER_CORES = (8, 16, 32)
PACKAGE_VERSION = "bench-untrained"
MB = 1024 * 1024


def build_package(models_dir: str) -> str:
    """An untrained multimodal small_cnn package at 64 px with its TensorFlow Lite forms (checked against Keras on
    simulated rows), run in a subprocess: TensorFlow stays out of the driver whose memory is measured."""
    from skyclass import lake
    from skyclass.features import COLOURS, PHOTOMETRIC_FEATURES
    from skyclass.config import CLASSES
    from skyclass.inference import add_cpu_models
    from skyclass.models import build_model
    from skyclass.package import keras_model_bytes, write_package
    from skyclass.score import clean_photometry

    features = list(PHOTOMETRIC_FEATURES)
    main_model = build_model("multimodal", n_features=len(features), image_size_px=64)
    tabular = build_model("tabular", n_features=len(features))
    normalisation = {**{m: {"mean": 18.0, "std": 1.5} for m in lake.MAGNITUDES},
                     **{c: {"mean": 0.5, "std": 0.5} for c in COLOURS}}
    metadata = {"mode": "multimodal", "backbone": "small_cnn", "feature_set": "photometric", "features": features,
                "classes": list(CLASSES), "normalisation": normalisation, "image_size_px": 64,
                "note": "untrained, for the scoring benchmark only"}
    path = write_package(models_dir, PACKAGE_VERSION, model_keras=keras_model_bytes(main_model),
                         tabular_keras=keras_model_bytes(tabular), metadata=metadata)
    objects, blobs = _simulated_cutouts(512)
    rows = clean_photometry(objects)
    rows["jpeg"] = blobs
    add_cpu_models(path, rows)
    return path


def _simulated_cutouts(n: int):
    from skyclass.simulate import simulated_objects
    from skyclass.standin.render import SkyObject, render_cutout

    objects = simulated_objects(0, 0, n, seed=99, sentinel_fraction=0.0)
    blobs = [render_cutout(o.ra, o.dec, [SkyObject(o.objid, o.ra, o.dec, o.cls, o.g, o.r, o.i)])
             for o in objects.rename(columns={"class": "cls"}).itertuples(index=False)]
    return objects, blobs


class MemorySampler:
    """Peak RSS of the driver Python process, the JVM below it, and the Python workers below the JVM."""

    def __init__(self, interval_s: float = 0.2):
        import psutil

        self._psutil = psutil
        self.interval_s = interval_s
        self.me = psutil.Process()
        self.peaks = {"driver_python_mb": 0.0, "driver_jvm_mb": 0.0, "workers_total_mb": 0.0,
                      "worker_max_mb": 0.0, "workers_max_count": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        # CPU seconds per process (pid -> (kind, first seen, last seen)): on a shared machine the CPU time spent
        # per object is a steadier figure than wall-clock throughput.
        self._cpu: dict[int, list] = {}

    def sample(self) -> dict:
        psutil = self._psutil
        now = {"driver_python_mb": self.me.memory_info().rss / MB, "driver_jvm_mb": 0.0, "workers_total_mb": 0.0,
               "worker_max_mb": 0.0, "workers_max_count": 0}
        try:
            children = self.me.children(recursive=True)
        except psutil.Error:
            return now
        self._track_cpu("driver", self.me)
        for proc in children:
            try:
                name, rss = proc.name(), proc.memory_info().rss / MB
                cmdline = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if name.startswith("java"):
                now["driver_jvm_mb"] += rss
                self._track_cpu("jvm", proc)
            elif "pyspark" in cmdline or "python" in name:
                # pyspark.daemon and the workers it forks (their cmdline is the daemon's).
                now["workers_total_mb"] += rss
                now["worker_max_mb"] = max(now["worker_max_mb"], rss)
                now["workers_max_count"] += 1
                self._track_cpu("workers", proc)
        return now

    def _track_cpu(self, kind: str, proc) -> None:
        try:
            times = proc.cpu_times()
        except self._psutil.Error:
            return
        used = times.user + times.system
        entry = self._cpu.setdefault(proc.pid, [kind, used, used])
        entry[2] = used

    def cpu_seconds(self) -> dict:
        """CPU seconds used since the sampler started, per kind of process (a lower bound: a process's time is
        counted up to its last sample)."""
        out = {"driver": 0.0, "jvm": 0.0, "workers": 0.0}
        for kind, first, last in self._cpu.values():
            out[kind] += last - first
        return out

    def _run(self):
        while not self._stop.is_set():
            for key, value in self.sample().items():
                self.peaks[key] = max(self.peaks[key], value)
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self.sample()  # CPU baselines of the processes already running
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def decode_rate_per_core(n: int = 2000) -> float:
    """64 px JPEGs decoded per CPU second (features.decode_jpegs, single-threaded), on simulated cutouts.

    CPU time rather than wall time: on a shared machine it is what one dedicated core would do."""
    from skyclass.features import decode_jpegs

    _, blobs = _simulated_cutouts(n)
    best = 0.0
    for _ in range(3):
        began = time.process_time()
        decode_jpegs(blobs, 64)
        best = max(best, n / (time.process_time() - began))
    return best


def inference_rate_cpu(package_path: str, backend: str = "keras", batch: int = 256) -> dict:
    """The main model's images per CPU second and wall-clock images/s through one path of skyclass.inference
    (KerasModel: predict_on_batch; TFLiteModel: the interpreter), on one thread as a worker with one task CPU
    runs it."""
    import numpy as np
    import tensorflow as tf

    from skyclass.inference import KerasModel, TFLiteModel, configure_tensorflow
    from skyclass.package import ModelPackage

    configure_tensorflow(tf, 1)
    package = ModelPackage.load(package_path)
    if backend == "tflite":
        model = TFLiteModel(package.read_cpu_model("main"), num_threads=1)
    else:
        model = KerasModel(package.load_model())
    inputs = {"features": np.zeros((batch, 9), np.float32),
              "image": np.random.default_rng(0).random((batch, 64, 64, 3), dtype=np.float32)}
    model(inputs)
    per_cpu_s, per_s = 0.0, 0.0
    for _ in range(3):
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(4):
            model(inputs)
        per_cpu_s = max(per_cpu_s, 4 * batch / (time.process_time() - cpu))
        per_s = max(per_s, 4 * batch / (time.perf_counter() - wall))
    return {"images_per_cpu_s": per_cpu_s, "images_per_s_wall": per_s, "batch": batch, "threads": 1}


def run_size(spark, workdir: Path, package_path: str, n_objects: int, batch_rows: int,
             backends: list[str]) -> dict:
    from skyclass.config import load_config
    from skyclass.simulate import simulate_lake

    lake_root = workdir / f"lake-{n_objects}"
    conf = load_config(None, [f"lake.root={lake_root}", f"lake.models={workdir / 'models'}"])
    # ~25k objects (~40 MB of JPEGs) per shuffle partition for the catalog-cutouts join.
    spark.conf.set("spark.sql.shuffle.partitions", str(max(8, n_objects // 25_000)))
    began = time.monotonic()
    simulated = simulate_lake(spark, conf, n_objects=n_objects, seed=0, rows_per_partition=10_000)
    simulate_s = time.monotonic() - began
    logging.getLogger("score_bench").warning("%s", simulated)
    lake_bytes = sum(f.stat().st_size for f in lake_root.rglob("*.parquet"))
    paths = {backend: score_once(spark, workdir, lake_root, package_path, n_objects, batch_rows, backend)
             for backend in backends}
    return {"objects": n_objects, "cutouts": simulated.n_cutouts, "lake_mb": lake_bytes / MB,
            "simulate_s": simulate_s, "simulate_objects_per_s": n_objects / simulate_s, "paths": paths}


def score_once(spark, workdir: Path, lake_root: Path, package_path: str, n_objects: int, batch_rows: int,
               backend: str) -> dict:
    from skyclass.config import load_config
    from skyclass.score import score_catalog

    conf = load_config(None, [f"lake.root={lake_root}",
                              f"lake.predictions={workdir / f'predictions-{n_objects}-{backend}'}",
                              f"lake.models={workdir / 'models'}", f"score.model={package_path}",
                              "score.run_date=2024-01-01", f"score.batch_rows={batch_rows}",
                              f"score.inference={backend}"])
    with MemorySampler() as sampler:
        before = sampler.sample()
        began = time.monotonic()
        result = score_catalog(spark, conf)
        score_s = time.monotonic() - began
        sampler.sample()
    cpu = sampler.cpu_seconds()
    logging.getLogger("score_bench").warning("%s", result)
    return {
        "inference": result.inference,
        "score_s": score_s,
        "objects_per_s": result.n_scored / score_s,
        "status_counts": dict(result.status_counts),
        "model_loads": result.model_loads,
        "cpu_s": cpu,
        "objects_per_cpu_s": result.n_scored / max(sum(cpu.values()), 1e-9),
        "load_average_1min": os.getloadavg()[0],
        "rss_before_mb": before,
        "rss_peak_mb": sampler.peaks,
    }


def projections(largest: dict, decode_per_core: float, inference: dict, cores_here: int) -> dict:
    """Time for 3M objects here, and per GPU worker (decode-bound; see the assumptions in the report)."""
    here_s = PROJECT_OBJECTS / largest["objects_per_s"]
    # CPU time per object that is neither decoding nor inference (measured in-process): Spark's share — the
    # shuffle join of the JPEGs, Arrow transfer, features, the de-duplicating aggregation, writing. A GPU removes
    # the inference term, not this one.
    core_cpu_s_per_object = 1.0 / decode_per_core + 1.0 / inference["images_per_cpu_s"]
    overhead_s = max(0.0, 1.0 / largest["objects_per_cpu_s"] - core_cpu_s_per_object)
    gpu = []
    for cores in GPU_WORKER_CORES:
        for label, rate in (("measured here", decode_per_core), ("brief low", BRIEF_DECODE_PER_CORE[0]),
                            ("brief high", BRIEF_DECODE_PER_CORE[1])):
            bound = min(H200_SMALL_CNN_IMAGES_PER_S, cores * rate)
            with_spark = min(H200_SMALL_CNN_IMAGES_PER_S, cores / (1.0 / rate + overhead_s))
            gpu.append({"cores": cores, "decode_per_core": rate, "decode_source": label,
                        "ideal_images_per_s": bound, "ideal_3M_s": PROJECT_OBJECTS / bound,
                        "with_spark_overhead_images_per_s": with_spark,
                        "with_spark_overhead_3M_s": PROJECT_OBJECTS / with_spark})
    return {"objects": PROJECT_OBJECTS, "here_s": here_s, "here_cores": cores_here,
            "decode_per_core_images_per_s": decode_per_core, "cpu_inference": inference,
            "spark_overhead_cpu_ms_per_object": overhead_s * 1e3,
            "spark_share_of_cpu": overhead_s * largest["objects_per_cpu_s"], "gpu_worker": gpu,
            "h200_small_cnn_images_per_s": H200_SMALL_CNN_IMAGES_PER_S}


def _flat(runs: list[dict]) -> list[dict]:
    """One row per (size, path): the run's lake figures with the path's scoring figures."""
    return [{**{k: v for k, v in run.items() if k != "paths"}, **path}
            for run in runs for path in run["paths"].values()]


def comparison(run: dict, models: dict, decode_per_core: float, cores: int) -> dict:
    """Keras vs TFLite on one lake: objects/s, objects per CPU second, their ratios, decode share, 3M projection."""
    out = {"objects": run["objects"], "paths": {}}
    for backend, path in run["paths"].items():
        per_cpu = path["objects_per_cpu_s"]
        out["paths"][backend] = {
            "objects_per_s": path["objects_per_s"], "objects_per_cpu_s": per_cpu,
            "objects_per_s_per_core": path["objects_per_s"] / cores,
            "model_only_images_per_cpu_s": models[backend]["images_per_cpu_s"],
            # Of the job's CPU time per object, the share spent decoding its JPEG (one core's measured rate).
            "decode_share_of_cpu": per_cpu / decode_per_core,
            "worker_max_rss_mb": path["rss_peak_mb"]["worker_max_mb"],
            "workers_total_rss_mb": path["rss_peak_mb"]["workers_total_mb"],
            "projection_3M_min_here": PROJECT_OBJECTS / path["objects_per_s"] / 60,
            "projection_3M_min_dedicated": PROJECT_OBJECTS / (per_cpu * cores) / 60,
        }
    if {"keras", "tflite"} <= set(out["paths"]):
        k, t = out["paths"]["keras"], out["paths"]["tflite"]
        out["ratio_objects_per_s"] = t["objects_per_s"] / k["objects_per_s"]
        out["ratio_objects_per_cpu_s"] = t["objects_per_cpu_s"] / k["objects_per_cpu_s"]
        out["ratio_model_only"] = t["model_only_images_per_cpu_s"] / k["model_only_images_per_cpu_s"]
    return out


def write_report(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(exist_ok=True)
    (out_dir / "score.json").write_text(json.dumps(results, indent=2))
    runs, proj = _flat(results["runs"]), results["projection"]
    lines = [
        "# Scoring benchmark", "",
        f"{results['when']} on {results['machine']}; Spark `{results['master']}`, "
        f"score.batch_rows={results['batch_rows']}; model: untrained multimodal small_cnn, 64x64 "
        "(throughput does not depend on the weights), scored through score.inference=keras and =tflite on the same "
        "lake. Lakes are SIMULATED (skyclass.simulate): ~3 % of objects without a cutout (tabular fallback), ~1 % "
        "with a sentinel magnitude.", "",
        "| objects | inference | lake MB | simulate s | score s | objects/s (wall) | CPU s (workers + JVM + driver) | "
        "objects per CPU s | ok / no_cutout / bad_phot | model loads | driver Python peak MB | "
        "driver JVM peak MB | workers total peak MB | largest worker MB | load avg |",
        "|---:|---|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        s, p, c = r["status_counts"], r["rss_peak_mb"], r["cpu_s"]
        lines.append(f"| {r['objects']:,} | {r['inference']} | {r['lake_mb']:.0f} | {r['simulate_s']:.0f} | "
                     f"{r['score_s']:.0f} | {r['objects_per_s']:,.0f} | {c['workers']:.0f} + {c['jvm']:.0f} + "
                     f"{c['driver']:.0f} | **{r['objects_per_cpu_s']:,.0f}** | {s.get('ok', 0):,} / "
                     f"{s.get('no_cutout', 0):,} / {s.get('bad_photometry', 0):,} | {r['model_loads']} | "
                     f"{p['driver_python_mb']:.0f} | {p['driver_jvm_mb']:.0f} | {p['workers_total_mb']:.0f} "
                     f"({p['workers_max_count']} procs) | {p['worker_max_mb']:.0f} | {r['load_average_1min']:.1f} |")
    cores = proj["here_cores"]
    for comp in results.get("comparisons", []):
        lines += ["", f"## Keras vs TFLite, {comp['objects']:,} objects", "",
                  "| path | objects/s (wall) | objects/s per core | objects per CPU s | model only, img per CPU s "
                  "(1 thread) | decode share of CPU | largest worker MB | 3M here (wall) | 3M on "
                  f"{cores} dedicated cores |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for backend, t in comp["paths"].items():
            lines.append(f"| {backend} | {t['objects_per_s']:,.0f} | {t['objects_per_s_per_core']:,.0f} | "
                         f"{t['objects_per_cpu_s']:,.0f} | {t['model_only_images_per_cpu_s']:,.0f} | "
                         f"{t['decode_share_of_cpu']:.0%} | {t['worker_max_rss_mb']:.0f} | "
                         f"{t['projection_3M_min_here']:.0f} min | {t['projection_3M_min_dedicated']:.0f} min |")
        if "ratio_objects_per_s" in comp:
            met = comp["ratio_objects_per_s"] >= TARGET_TFLITE_RATIO
            lines += ["", f"Ratio tflite/keras: objects/s **{comp['ratio_objects_per_s']:.2f}** (target >= "
                      f"{TARGET_TFLITE_RATIO}: {'met' if met else 'MISSED'}), objects per CPU second "
                      f"{comp['ratio_objects_per_cpu_s']:.2f}, model only {comp['ratio_model_only']:.2f}. "
                      "Wall-clock figures on this shared machine depend on what else ran; the per-CPU-second ones "
                      "less so."]
    lines += [
        "", "## Projection to 3M objects on GPU executors (Keras path)", "",
        f"- Measured in-process, per CPU second: JPEG decode {proj['decode_per_core_images_per_s']:,.0f} img/s "
        f"(64 px, PIL); Keras inference of the small CNN {proj['cpu_inference']['images_per_cpu_s']:,.0f} img/s "
        f"(batch {proj['cpu_inference']['batch']}). What remains of the Keras job's CPU time per object is "
        f"Spark's (join, Arrow, aggregation, writing): {proj['spark_overhead_cpu_ms_per_object']:.3f} ms per "
        f"object, {proj['spark_share_of_cpu']:.0%} of the job's CPU time.",
        "", "Per GPU worker (one H200 plus N cores decoding):", "",
        "| cores | decode img/s/core | decode-bound img/s | 3M, decode-bound | with Spark overhead img/s | "
        "3M, with Spark overhead |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for g in proj["gpu_worker"]:
        lines.append(f"| {g['cores']} | {g['decode_per_core']:,.0f} ({g['decode_source']}) | "
                     f"{g['ideal_images_per_s']:,.0f} | {g['ideal_3M_s']:.0f} s | "
                     f"{g['with_spark_overhead_images_per_s']:,.0f} | {g['with_spark_overhead_3M_s']:.0f} s |")
    lines += [
        "", "Assumptions: the small CNN at 64x64 infers ~220,000 img/s on one H200 (the brief's figure, not "
        "measured here: there is no GPU), so a GPU worker is bound by JPEG decoding on its cores: min(220k, "
        "cores x decode rate). Decode runs in one Python worker per core (GPU=score in deploy/: "
        "spark.task.cpus=1, spark.task.resource.gpu.amount=1/cores), all feeding the same GPU. The last columns "
        "add this machine's measured Spark CPU time per object to each core's decode time. Not modelled: the CPU "
        "cost of driving the GPU (TensorFlow dispatch, host-to-device copies of ~12 MB per 256-image float32 "
        "batch, which this simple loop does not overlap with decoding), reading the lake from HDFS/S3, and the "
        "shuffle over a network; so every projected figure is an upper bound on throughput.",
    ]
    (out_dir / "score.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 20k objects by default: a few minutes per path on the shared 2-core machine (add 200000 for a longer run).
    parser.add_argument("--objects", type=int, nargs="+", default=[20_000],
                        help="catalog sizes, smallest first (default 20000)")
    parser.add_argument("--inference", nargs="+", default=["keras", "tflite"], choices=("keras", "tflite"),
                        help="paths to score each lake with (default both)")
    parser.add_argument("--master", default="local[2]")
    # 256 rows: the same CPU time per object as 1,024 here, at half the worker memory (the CNN's activations
    # grow with the batch: ~1.8 GB per worker at 1,024 rows, ~0.9 GB at 256).
    parser.add_argument("--batch-rows", type=int, default=256, help="score.batch_rows (default 256)")
    parser.add_argument("--workdir", help="where the simulated lakes go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the simulated lakes")
    parser.add_argument("--build-package", metavar="MODELS_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "lib"))
    if args.build_package:
        print(build_package(args.build_package))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import psutil  # noqa: F401  (fail early if the sampler cannot work)

    from skyclass.config import SparkConfig
    from skyclass.session import build_spark

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="skyclass-score-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # Built in a subprocess so the measured driver never imports TensorFlow.
    package_path = subprocess.run([sys.executable, __file__, "--build-package", str(workdir / "models")],
                                  check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    spark = build_spark(SparkConfig(master=args.master, app_name="skyclass-bench-score", shuffle_partitions=8,
                                    driver_memory="4g",
                                    extra={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}))
    spark.sparkContext.setLogLevel("ERROR")
    runs = []
    try:
        for k, n in enumerate(sorted(args.objects)):
            # Alternate the order from size to size, so that a drift of the shared machine's load falls on both.
            backends = list(args.inference) if k % 2 == 0 else list(reversed(args.inference))
            runs.append(run_size(spark, workdir, package_path, n, args.batch_rows, backends))
            for backend, path in runs[-1]["paths"].items():
                print(f"{n:,} objects, {backend}: {path['objects_per_s']:,.0f} objects/s, "
                      f"{path['objects_per_cpu_s']:,.0f} per CPU s, peaks "
                      f"{ {key: round(v) for key, v in path['rss_peak_mb'].items()} }", flush=True)
            if not args.keep:
                shutil.rmtree(workdir / f"lake-{n}", ignore_errors=True)
    finally:
        spark.stop()
    cores_here = spark_cores(args.master)
    decode = decode_rate_per_core()
    models = {backend: inference_rate_cpu(package_path, backend) for backend in args.inference}
    keras_run = _flat([{**runs[-1], "paths": {b: p for b, p in runs[-1]["paths"].items() if b == "keras"}
                        or runs[-1]["paths"]}])[0]
    results = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end "
                   "(the machine is shared)",
        "master": args.master, "batch_rows": args.batch_rows, "runs": runs, "model_only": models,
        "decode_per_core_images_per_s": decode,
        "comparisons": [comparison(run, models, decode, cores_here) for run in runs],
        "projection": projections(keras_run, decode, models.get("keras") or next(iter(models.values())),
                                  cores_here),
        "target_objects_per_s": TARGET_OBJECTS_PER_S, "target_tflite_ratio": TARGET_TFLITE_RATIO,
    }
    write_report(results, ROOT / "bench-results")
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print((ROOT / "bench-results" / "score.md").read_text())
    return 0


def spark_cores(master: str) -> int:
    """Cores of a local[N] master (local[*]: all of them)."""
    inside = master[master.find("[") + 1:master.find("]")] if "[" in master else "1"
    return (os.cpu_count() or 1) if inside == "*" else int(inside.split(",")[0])


if __name__ == "__main__":
    sys.exit(main())
