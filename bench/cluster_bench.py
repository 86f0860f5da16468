"""Scoring on local[2] and on the 2-worker standalone cluster, the same SIMULATED lake and cores, in one run, through
both inference paths (score.inference=keras and =tflite).

    python bench/cluster_bench.py [--objects 20000] [--repeats 2] [--workdir DIR] [--keep]

Simulates a lake of ``--objects`` objects (catalog + rendered cutouts: SIMULATED images, the figures are about
throughput only) under a ``file://`` root, builds an untrained multimodal small_cnn package (throughput does not
depend on the weights), starts deploy/local-cluster.sh (a master and two one-core workers), then scores the lake
with `skyclass score` on local[2] and with deploy/submit-standalone.sh score_catalog on the cluster, alternating
(local, cluster, cluster, local, ... for ``--repeats`` > 1) so that a drift of the shared machine's load falls on
both. Each run writes its own predictions root. Reported per run: the scoring stage's objects/s (from the job's
summary line) and the whole submit's wall time (JVM start, shipping the environment, executors' start).

Targets: with Keras, cluster objects/s >= 0.8 x local[2] objects/s (same cores; the cluster adds shipping and task
scheduling only); on the cluster, tflite objects/s >= 1.8 x keras objects/s (issue 16). Each repeat runs the four
(side, path) pairs in an order reversed every other repeat. Writes bench-results/cluster.json and cluster.md;
exits 1 when a target is missed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.8
TARGET_TFLITE_RATIO = 1.8
PAIRS = (("local", "keras"), ("cluster", "keras"), ("cluster", "tflite"), ("local", "tflite"))
RUN_DATE = "2024-01-01"
_SUMMARY = re.compile(r"scored ([\d,]+) of ([\d,]+) objects .* in ([\d.]+) s \(([\d,]+) objects/s")


def _run(cmd: list[str], env: dict, what: str) -> tuple[str, float]:
    began = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall_s = time.monotonic() - began
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-6000:])
        raise SystemExit(f"cluster bench: {what} exited {done.returncode}")
    return done.stdout, wall_s


def _summary(stdout: str, what: str) -> dict:
    match = _SUMMARY.search(stdout)
    if not match:
        raise SystemExit(f"cluster bench: no scoring summary in the output of {what}:\n{stdout[-2000:]}")
    scored, catalog, seconds, _ = match.groups()
    return {"scored": int(scored.replace(",", "")), "catalog": int(catalog.replace(",", "")),
            "score_s": float(seconds), "objects_per_s": int(scored.replace(",", "")) / float(seconds)}


def _sets(workdir: Path, package: str, predictions: str, inference: str = "keras") -> list[str]:
    items = {"score.inference": inference, "lake.root": (workdir / "lake").as_uri(), "lake.predictions": (workdir / predictions).as_uri(),
             "lake.models": str(workdir / "models"), "score.model": package, "score.run_date": RUN_DATE,
             "score.batch_rows": "256", "spark.shuffle_partitions": "8"}
    return [arg for key, value in items.items() for arg in ("--set", f"{key}={value}")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 20k objects by default: a few minutes per run on the shared 2-core machine.
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating (default 2)")
    parser.add_argument("--workdir", help="where the lake and the cluster's state go (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="skyclass-cluster-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib"), "SKYCLASS_LOG_LEVEL": "WARNING",
           "SKYCLASS_CLUSTER_DIR": str(workdir / "cluster")}
    local = ["--set", "spark.master=local[2]", "--set", "spark.driver_memory=4g",
             "--set", "spark.extra={spark.ui.enabled: 'false', spark.ui.showConsoleProgress: 'false'}"]
    print(f"simulating {args.objects:,} objects (SIMULATED cutouts) under {workdir}", flush=True)
    _, simulate_s = _run([python, "-m", "skyclass.cli", "simulate", "--objects", str(args.objects), *local,
                          *_sets(workdir, "none", "unused")[2:6]], env, "simulate")
    package = subprocess.run([python, str(ROOT / "bench" / "score_bench.py"), "--build-package",
                              str(workdir / "models")], check=True, capture_output=True, text=True,
                             cwd=ROOT).stdout.strip().splitlines()[-1]
    cluster_script = ROOT / "deploy" / "local-cluster.sh"
    _run([str(cluster_script), "start"], env, "local-cluster.sh start")
    runs: list[dict] = []
    try:
        master_url = (workdir / "cluster" / "master-url").read_text().strip()
        submit_env = {**env, "SPARK_MASTER_URL": master_url, "SKYCLASS_CONF": str(ROOT / "conf" / "standalone.yaml")}
        order = [pair for k in range(args.repeats) for pair in (PAIRS if k % 2 == 0 else PAIRS[::-1])]
        for k, (side, inference) in enumerate(order):
            predictions = f"predictions-{side}-{inference}-{k}"
            if side == "local":
                cmd = [python, "-m", "skyclass.cli", "score", *local,
                       *_sets(workdir, package, predictions, inference)]
                stdout, wall_s = _run(cmd, env, "score on local[2]")
            else:
                cmd = [str(ROOT / "deploy" / "submit-standalone.sh"), "score_catalog",
                       *_sets(workdir, package, predictions, inference)]
                stdout, wall_s = _run(cmd, submit_env, "score_catalog on the cluster")
            run = {"side": side, "inference": inference, "wall_s": wall_s, **_summary(stdout, side),
                   "load_average_1min": os.getloadavg()[0]}
            runs.append(run)
            print(f"{side:8s} {inference:6s} {run['scored']:,} objects scored in {run['score_s']:.1f} s = "
                  f"{run['objects_per_s']:,.0f} objects/s (whole submit {wall_s:.0f} s)", flush=True)
            shutil.rmtree(workdir / predictions, ignore_errors=True)
    finally:
        subprocess.run([str(cluster_script), "stop"], cwd=ROOT, env=env, capture_output=True)
    def mean(values):
        return sum(values) / len(values)

    rate = {f"{side}/{inference}": mean([r["objects_per_s"] for r in runs
                                         if (r["side"], r["inference"]) == (side, inference)])
            for side, inference in PAIRS}
    wall = {f"{side}/{inference}": mean([r["wall_s"] for r in runs if (r["side"], r["inference"]) == (side, inference)])
            for side, inference in PAIRS}
    ratio = rate["cluster/keras"] / rate["local/keras"]
    tflite_ratio = rate["cluster/tflite"] / rate["cluster/keras"]
    met = ratio >= TARGET_RATIO and tflite_ratio >= TARGET_TFLITE_RATIO
    results = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "objects": args.objects,
               "cutouts": "SIMULATED (skyclass simulate)", "simulate_s": simulate_s, "runs": runs,
               "objects_per_s": rate, "wall_s": wall, "ratio_cluster_to_local": ratio,
               "ratio_tflite_to_keras_on_cluster": tflite_ratio,
               "ratio_tflite_to_keras_local": rate["local/tflite"] / rate["local/keras"],
               "target_ratio": TARGET_RATIO, "target_tflite_ratio": TARGET_TFLITE_RATIO, "target_met": met,
               "machine": f"{os.cpu_count()} cores (shared), load average {os.getloadavg()[0]:.1f} at the end"}
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "cluster.json").write_text(json.dumps(results, indent=2))
    lines = [f"# Scoring on local[2] vs the 2-worker standalone cluster ({results['when']})", "",
             f"{args.objects:,} objects of a SIMULATED lake, untrained multimodal small_cnn @64 px, "
             f"score.batch_rows 256, {args.repeats} run(s) per (side, path). {results['machine']}.", "",
             "| run | side | inference | objects/s (scoring stage) | stage s | whole submit s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {k + 1} | {r['side']} | {r['inference']} | {r['objects_per_s']:,.0f} | {r['score_s']:.1f} | "
              f"{r['wall_s']:.0f} |" for k, r in enumerate(runs)]
    lines += ["", "Mean objects/s: " + ", ".join(f"{key} {value:,.0f}" for key, value in rate.items()) + ".",
              f"Ratio cluster/local (keras) **{ratio:.2f}** (target >= {TARGET_RATIO}: "
              f"{'met' if ratio >= TARGET_RATIO else 'MISSED'}); ratio tflite/keras on the cluster "
              f"**{tflite_ratio:.2f}** (target >= {TARGET_TFLITE_RATIO}: "
              f"{'met' if tflite_ratio >= TARGET_TFLITE_RATIO else 'MISSED'}), on local[2] "
              f"{results['ratio_tflite_to_keras_local']:.2f}."]
    (out / "cluster.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
