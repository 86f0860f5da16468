"""``skyclass demo`` (what ``make demo`` runs): the whole pipeline on this machine, against the SkyServer stand-in.

It serves ``../shared/data/sdss/labelled.csv`` and ``unlabelled_abell2065.csv`` (real SDSS photometry and labels)
from a stand-in on a free loopback port, then runs the nightly chain of :mod:`skyclass.pipeline` (extract →
cutouts → training table → train → score → evaluate) on local Spark; what only a demo needs (the stand-in, the
summary of predicted classes) is added here. The stand-in's cutouts are SIMULATED images rendered from each
object's photometry: any accuracy of the image and multimodal networks printed here is on simulated images, not
real SDSS cutouts.
The chain's sky_map stage draws the scored field's sky map (labelled SIMULATED) beside the evaluation report.
A last stage (:func:`run_real_images_demo`) imports a few thousand REAL SDSS cutouts and prints the image network's
accuracy on real pixels, labelled so.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field

from skyclass.config import Config, resolve_path
from skyclass.errors import SkyclassError

log = logging.getLogger("skyclass.demo")

SIMULATED_NOTE = ("NOTE: cutouts of the stand-in stages are SIMULATED by its renderer; their image/multimodal "
                  "metrics are not results on real SDSS images. Only the 'real images' stage uses REAL SDSS cutouts.")


@dataclass
class DemoResult:
    stages: list = field(default_factory=list)  # (stage name, summary text, seconds)
    class_counts: dict = field(default_factory=dict)  # (predicted class, status) -> objects, of the scored field
    domain_counts: dict = field(default_factory=dict)  # {"all": {class: n}, "in_domain": {class: n}}

    def __str__(self) -> str:
        lines = ["", "skyclass demo — summary", "=" * 23]
        for name, summary, seconds in self.stages:
            lines.append(f"[{name}] ({seconds:.0f} s)")
            lines.extend("    " + line for line in str(summary).splitlines())
        if self.class_counts:
            lines.append("Predicted classes of the scored field (status ok: multimodal model; no_cutout: tabular "
                         "fallback):")
            for cls in sorted({c for c, _ in self.class_counts}):
                per_status = {s: n for (c, s), n in self.class_counts.items() if c == cls}
                detail = ", ".join(f"{s} {n:,}" for s, n in sorted(per_status.items()))
                lines.append(f"    {cls:<7} {sum(per_status.values()):>7,}  ({detail})")
        if self.domain_counts:
            lines.append(format_domain_counts(self.domain_counts))
        lines.append(SIMULATED_NOTE)
        return "\n".join(lines)


def demo_catalogs(conf: Config) -> tuple[str, str]:
    """The labelled and unlabelled catalog CSVs the demo serves (``standin.catalogs`` of the config).

    Raises
    ------
    SkyclassError
        A catalog file is missing; the message says where it was looked for and how to point at another one.
    """
    paths = [resolve_path(p) for p in conf.standin.catalogs]
    if len(paths) != 2:
        raise SkyclassError("standin.catalogs must list two CSVs: labelled objects, then unlabelled photometric "
                            f"objects (got {len(paths)}); e.g. --set 'standin.catalogs=[a.csv, b.csv]'")
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise SkyclassError(
            f"demo catalog not found: {missing[0]}. The demo expects the shared SDSS tables in ../shared/data/sdss/ "
            "beside the checkout. Point it at other SkyServer CSV exports with "
            "--set 'standin.catalogs=[labelled.csv, unlabelled.csv]' (labelled: objid, ra, dec, u, g, r, i, z, "
            "specobjid, class, redshift; unlabelled: objid, ra, dec, u, g, r, i, z).")
    return paths[0], paths[1]


def run_demo(spark, conf: Config) -> DemoResult:
    """Serve the demo catalogs from the stand-in and run the nightly chain (:func:`skyclass.pipeline.run_nightly`,
    training a new package) against it.

    Parameters
    ----------
    spark : SparkSession
    conf : Config
        ``skyserver.url`` is replaced by the stand-in's address; everything else is used as given.

    Returns
    -------
    DemoResult
        Each stage's summary and duration, and the predicted classes of the scored field.

    Raises
    ------
    SkyclassError
        A demo catalog is missing, or a stage failed (:class:`skyclass.pipeline.PipelineError`).
    """
    from skyclass.pipeline import run_nightly
    from skyclass.standin.server import StandinServer

    labelled, unlabelled = demo_catalogs(conf)
    with StandinServer([labelled, unlabelled], port=0) as server:
        log.info("SkyServer stand-in serving %s and %s at %s", os.path.basename(labelled),
                 os.path.basename(unlabelled), server.url)
        conf = conf.replace(skyserver=dataclasses.replace(conf.skyserver, url=server.url))
        # retrain: a demo shows training every time, even when an earlier demo left a package behind.
        nightly = run_nightly(spark, conf, retrain=True)
    result = DemoResult(stages=[(s.name, s.summary, s.seconds) for s in nightly.stages if not s.skipped])
    result.class_counts = predicted_class_counts(spark, nightly.stage("score").result.path)
    # The field's sky map is the nightly chain's own sky_map stage (beside the evaluation report, labelled
    # SIMULATED: the demo's model learnt from stand-in-rendered cutouts).
    scored = nightly.stage("score").result
    result.domain_counts = domain_class_counts(spark, scored.path)
    name, summary, seconds = run_real_images_demo(spark, conf)
    result.stages.append((name, summary, seconds))
    return result


REAL_CUTOUTS_FILE = "real_cutouts.parquet"
REAL_DEMO_OBJECTS = 3000


def run_real_images_demo(spark, conf: Config, *, objects: int = REAL_DEMO_OBJECTS) -> tuple[str, str, float]:
    """The image network on REAL SDSS cutouts: import a sample of ``real_cutouts.parquet`` (beside the demo's
    labelled catalog), build a field-grouped image table, train small_cnn with Horovod and evaluate it.

    Runs in its own lake (``<lake.root>-real-images``, models and reports beside it), so the simulated demo's tables
    stay as they were and nothing real is mixed with simulated cutouts.

    Parameters
    ----------
    spark : SparkSession
    conf : Config
    objects : int
        Cutouts imported (a deterministic sample: every k-th row of the file).

    Returns
    -------
    (str, str, float)
        Stage name, summary text (labelled REAL) and seconds; the summary says why when the file is missing.
    """
    import pyarrow.parquet as pq

    from skyclass import cutout_import, evaluate, train, training_table

    started = time.monotonic()
    name = "real images (REAL SDSS cutouts, not simulated)"
    labelled, _ = demo_catalogs(conf)
    source = os.path.join(os.path.dirname(labelled), REAL_CUTOUTS_FILE)
    if not os.path.exists(source):
        return name, f"skipped: {source} not found (the shared real cutouts file)", 0.0
    root = conf.lake.path("root").rstrip("/") + "-real-images"
    lake_conf = dataclasses.replace(conf.lake, root=root, models=root + "-models", reports=root + "-reports")
    real = conf.replace(
        lake=lake_conf,
        split=dataclasses.replace(conf.split, group_by="field"),
        cutouts=dataclasses.replace(conf.cutouts, import_fit="crop"),
        train=dataclasses.replace(conf.train, mode="image", backbone="small_cnn", epochs=6,
                                  augment=True, version=None, checkpoint_dir=None),
        evaluate=dataclasses.replace(conf.evaluate, model=None, output=None, baselines=()))
    from skyclass import storage

    # The sample sits beside the lake, not in it, under a name Spark reads (it skips names starting with "_").
    storage.make_dirs(root + "-input")
    sample_path = os.path.join(root + "-input", "real_cutouts_sample.parquet")
    if not os.path.exists(sample_path):
        table = pq.read_table(source)
        step = max(1, table.num_rows // objects)
        pq.write_table(table.take(list(range(0, table.num_rows, step))[:objects]), sample_path + ".partial")
        os.replace(sample_path + ".partial", sample_path)  # an interrupted demo leaves no half-written sample
    lines = []
    for stage, run in (("import", lambda: cutout_import.import_cutouts(spark, real, sample_path,
                                                                        name="real_cutouts")),
                       ("table", lambda: training_table.build_training_table(spark, real)),
                       ("train", lambda: train.train_model(spark, real)),
                       ("evaluate", lambda: evaluate.evaluate(spark, real))):
        log.info("=== demo stage: real images %s ===", stage)
        summary = run()
        print(f"\n[real images: {stage}]\n{summary}\n", flush=True)
        lines.append(str(summary).splitlines()[0])
    lines.append(f"REAL-image accuracy {summary.accuracy:.4f}, QSO F1 {summary.qso_f1:.4f} on {summary.test_rows:,} "
                 "test objects of held-out SDSS fields (a small sample and few epochs: see make bench-images)")
    return name, "\n".join(lines), time.monotonic() - started


def predicted_class_counts(spark, predictions_path: str) -> dict:
    """Objects per predicted class (and per status) in one night's predictions, aggregated in Spark."""
    from skyclass import storage

    rows = (spark.read.parquet(storage.spark_uri(predictions_path)).groupBy("predicted_class", "status").count()
            .orderBy("predicted_class", "status").collect())
    return {(row["predicted_class"] or "none", row["status"]): row["count"] for row in rows}


def domain_class_counts(spark, predictions_path: str) -> dict:
    """Objects per predicted class in one night's predictions, over all objects and over those flagged in domain
    (``domain = 'in'``, see :mod:`skyclass.domain`), aggregated in Spark.

    Returns
    -------
    dict
        ``{"all": {class: n}, "in_domain": {class: n}}``.
    """
    from pyspark.sql import functions as F

    from skyclass import lake, storage

    frame = spark.read.schema(lake.PREDICTIONS.spark_schema()).parquet(storage.spark_uri(predictions_path))
    rows = (frame.groupBy(F.coalesce("predicted_class", F.lit("none")).alias("cls"))
            .agg(F.count(F.lit(1)).alias("all"), F.sum((F.col("domain") == "in").cast("long")).alias("in_domain"))
            .collect())
    return {"all": {row["cls"]: int(row["all"]) for row in rows},
            "in_domain": {row["cls"]: int(row["in_domain"] or 0) for row in rows}}


def format_domain_counts(counts: dict) -> str:
    """The demo's lines comparing the field's class counts over all objects and in domain only."""
    total, inside = sum(counts["all"].values()), sum(counts["in_domain"].values())
    lines = [f"Predicted classes of the scored field, all objects vs in domain only ({inside:,} of {total:,} objects "
             "lie inside the training set's magnitudes and near its objects; the rest are extrapolations):"]
    for cls in sorted(counts["all"]):
        n_all, n_in = counts["all"][cls], counts["in_domain"].get(cls, 0)
        lines.append(f"    {cls:<7} all {n_all:>7,} ({n_all / max(total, 1):6.1%})   in domain {n_in:>7,} "
                     f"({n_in / max(inside, 1):6.1%})")
    return "\n".join(lines)
