"""Training-table build time: `build_training_table` on a SIMULATED lake (catalog + 64 px cutouts written by
`skyclass simulate`), with the number of Spark jobs it ran and the bytes its shuffles wrote.

    python bench/table_bench.py [--objects 8000] [--repeats 2]

The lake is made once; the table is built ``--repeats`` times and the fastest build is reported (the first pays
for JIT and page cache). Writes bench-results/table.json and bench-results/table.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench-results"))
    args = parser.parse_args(argv)
    if str(ROOT / "lib") not in sys.path:
        sys.path.insert(0, str(ROOT / "lib"))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from skyclass.config import load_config
    from skyclass.session import build_spark
    from skyclass.simulate import simulate_lake
    from skyclass.training_table import build_training_table

    work = Path(tempfile.mkdtemp(prefix="skyclass-table-bench-"))
    try:
        conf = load_config(ROOT / "conf" / "local.yaml", [
            f"lake.root={work / 'lake'}", "score.catalog=catalog", "spark.master=local[2]",
            "spark.shuffle_partitions=4", "spark.driver_memory=2g",
            "spark.extra={spark.ui.showConsoleProgress: 'false'}"])
        spark = build_spark(conf.spark)
        spark.sparkContext.setLogLevel("ERROR")
        try:
            simulate_lake(spark, conf, n_objects=args.objects, seed=3)
            builds = []
            for _ in range(args.repeats):
                tracker = spark.sparkContext.statusTracker()
                group = f"table-bench-{len(builds)}"
                spark.sparkContext.setJobGroup(group, "build")
                started = time.perf_counter()
                result = build_training_table(spark, conf)
                seconds = time.perf_counter() - started
                jobs = tracker.getJobIdsForGroup(group)
                shuffle_bytes = _shuffle_write_bytes(spark, jobs)
                spark.sparkContext.setJobGroup("", "")
                builds.append({"seconds": seconds, "spark_jobs": len(jobs), "shuffle_write_bytes": shuffle_bytes,
                               "rows": sum(result.rows.values())})
                print(f"table built in {seconds:.1f} s: {len(jobs)} Spark jobs, {shuffle_bytes / 1e6:.1f} MB shuffled",
                      flush=True)
        finally:
            spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = min(builds, key=lambda b: b["seconds"])
    report = {"objects": args.objects, "builds": builds, "best": best}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(report, indent=2))
    (out / "table.md").write_text(
        f"# Training table build\n\n{args.objects:,} simulated objects (64 px cutouts), local[2]: best of "
        f"{args.repeats} builds {best['seconds']:.1f} s, {best['spark_jobs']} Spark jobs, "
        f"{best['shuffle_write_bytes'] / 1e6:.1f} MB shuffle writes, {best['rows']:,} rows.\n")
    return 0


def _shuffle_write_bytes(spark, job_ids) -> int:
    """Shuffle bytes written by the stages of ``job_ids``, from Spark's REST API (the UI of this application)."""
    import urllib.request

    sc = spark.sparkContext
    base = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}"
    stage_ids = set()
    for job_id in job_ids:
        stage_ids.update(sc.statusTracker().getJobInfo(job_id).stageIds)
    with urllib.request.urlopen(f"{base}/stages?status=complete") as answer:
        stages = json.load(answer)
    return sum(int(s.get("shuffleWriteBytes", 0)) for s in stages if s["stageId"] in stage_ids)


if __name__ == "__main__":
    sys.exit(main())
