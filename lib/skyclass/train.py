"""Distributed training: Horovod on Spark, each process streaming its shard of ``lake/training`` with Petastorm.

The driver (:func:`train_model`) reads the training table's statistics and Parquet footers, works out a plan that
every process can follow in lock step (steps per epoch, shards, class weights), runs :func:`_train_on_horovod` in
``conf.train.num_proc`` processes with ``horovod.spark.run``, and writes the model package from what rank 0 returns.

For image and multimodal models a tabular model is trained in the same Horovod run after the main one, because
scoring falls back to it for objects without a cutout.

Rank 0 checkpoints every epoch (``<models>/<version>.checkpoints/<phase>/`` or ``train.checkpoint_dir``); a run
with the same version picks up from there: ``train.epochs=4`` after a finished 2-epoch run trains epochs 3 and 4.
A checkpoint holds the weights, the epoch and the per-epoch metrics so far; the optimizer's moments start afresh.
"""
from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from skyclass import input_pipeline, lake, package
from skyclass.config import Config, plain_data
from skyclass.errors import SkyclassError
from skyclass.features import declared_features, source_columns
from skyclass.logs import quiet_third_party_warnings
from skyclass.input_pipeline import InputSpec

log = logging.getLogger(__name__)

VERSION_FORMAT = "%Y%m%d-%H%M%S"
MAIN_PHASE = "main"
TABULAR_PHASE = "tabular"
SEED = 20240101
STATE_FILE = "state.json"
# Keras metrics kept per epoch (plus validation twins); "lr" is the warmed-up learning rate.
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")


class TrainingError(SkyclassError):
    """Training cannot start or failed; the message says why and what to do."""


@dataclass(frozen=True)
class PhasePlan:
    """One model to train (the configured mode, or the tabular fallback), as every process must run it."""

    name: str
    spec: InputSpec
    steps_per_epoch: int
    train_shards: Optional[int]  # shard_count for make_batch_reader; None = every process reads everything
    validation_batch_size: int
    validation_steps: int
    validation_shards: Optional[int]
    rows_per_epoch: int  # samples all processes together consume per epoch
    fingerprint: Mapping[str, Any]  # what the checkpointed weights must match
    shuffle_buffer_rows: int = 0  # tf.data shuffle buffer of each process (see shuffle_buffer_rows)


@dataclass(frozen=True)
class TrainPlan:
    """Everything the Horovod processes need: plain data, pickled to the executors."""

    version: str
    train_path: str
    validation_path: str
    checkpoint_dir: str
    phases: tuple[PhasePlan, ...]
    model_kwargs: Mapping[str, Any]
    epochs: int
    batch_size: int
    learning_rate: float
    warmup_epochs: int
    patience: int
    class_weight: Optional[Mapping[int, float]]
    num_proc: int
    seed: int = SEED
    reduce_lr_patience: Optional[int] = None
    augment: bool = False
    lr_schedule: str = "constant"


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_model` did; ``str()`` is the summary the CLI prints."""

    path: str
    version: str
    mode: str
    validation_loss: float
    validation_accuracy: float
    tabular_validation_loss: float
    tabular_validation_accuracy: float
    epochs: int  # epochs the main model has been trained for, including resumed ones
    initial_epoch: int  # epochs already done (from a checkpoint) when this run started
    stopped_early: bool
    elapsed_s: float
    samples_per_s: Optional[float]  # training throughput of the main model, all processes together
    num_proc: int
    history: Mapping[str, list] = field(repr=False, default_factory=dict)
    image_weights: Optional[str] = None  # the image branch's weights file (train.weights loads it), if any

    def __str__(self) -> str:
        rate = f"{self.samples_per_s:,.0f} samples/s" if self.samples_per_s else "no new epochs"
        resumed = f", resumed at epoch {self.initial_epoch}" if self.initial_epoch else ""
        stopped = ", stopped early" if self.stopped_early else ""
        lines = [
            f"model {self.version} ({self.mode}) written to {self.path}",
            f"  validation: loss {self.validation_loss:.4f}, accuracy {self.validation_accuracy:.4f}",
        ]
        if self.mode != "tabular":
            lines.append(f"  tabular fallback validation: loss {self.tabular_validation_loss:.4f}, accuracy "
                         f"{self.tabular_validation_accuracy:.4f}")
        lines.append(f"  {self.epochs} epochs{resumed}{stopped} on {self.num_proc} Horovod processes, "
                     f"{self.elapsed_s:.1f} s, {rate}")
        if self.image_weights:
            lines.append(f"  image branch weights: {self.image_weights} (train.weights loads them)")
        return "\n".join(lines)


def train_model(spark, conf: Config) -> TrainResult:
    """Train the configured model with Horovod on Spark and write a model package.

    Parameters
    ----------
    spark : SparkSession
        Horovod starts one Spark task per process (``conf.train.num_proc``), so the cluster needs that many task
        slots free at once.
    conf : Config
        ``train`` section: mode, feature set, backbone, epochs, batch size (per process), learning rate (per
        process, scaled by the number of processes), warmup, early-stopping patience, version, checkpoint folder.

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingError
        Missing training table, too few rows for one batch, a checkpoint written for a different model, Horovod
        missing, or a failed Horovod run.
    """
    started = time.perf_counter()
    tc = conf.train
    version = package.check_version_name(tc.version or datetime.now(timezone.utc).strftime(VERSION_FORMAT))
    lake_root = conf.lake.path("root")
    models_dir = conf.lake.path("models")
    stats = input_pipeline.load_training_stats(lake.training_stats_path(lake_root))
    plan = build_plan(conf, stats, version)
    _check_local_checkpoints(plan)

    try:
        import horovod.spark
    except ImportError as err:
        raise TrainingError(f"Horovod is not installed in this environment ({err}); run `make setup`, which builds "
                            "it with TensorFlow and Gloo") from None
    slots = spark.sparkContext.defaultParallelism
    if slots < tc.num_proc:
        # horovod.spark.run needs all its tasks running at once; with fewer slots it waits for its start timeout.
        log.warning("Spark offers %d task slots but train.num_proc=%d: Horovod will wait for more executors (lower "
                    "train.num_proc or add executors)", slots, tc.num_proc)
    log.info("training %s model %s on %d Horovod processes: %s", tc.mode, version, tc.num_proc,
             ", ".join(f"{p.name} {p.steps_per_epoch} steps/epoch x {tc.epochs} epochs" for p in plan.phases))
    try:
        results = horovod.spark.run(_train_on_horovod, args=(plan,), num_proc=tc.num_proc, use_gloo=True,
                                    verbose=1, env=_worker_env())
    except Exception as err:  # Horovod wraps worker failures in assorted exception types
        raise TrainingError(f"Horovod training of {version} failed: {err}. The workers' output above shows the "
                            f"cause; rerunning with the same version resumes from {plan.checkpoint_dir}") from err
    summary = next((r for r in results if r is not None), None)
    if summary is None:
        raise TrainingError("no Horovod process returned the trained model (rank 0 returned nothing)")

    main = summary[MAIN_PHASE]
    tabular = summary.get(TABULAR_PHASE, main)
    for record in main["records"]:
        log.info("epoch %d: %s", record["epoch"], _format_record(record))
    metadata = _metadata(conf, stats, plan, main, tabular)
    # Calibration on the validation probabilities and the in-domain reference of the training split (issue 12).
    from skyclass.calibration import fit_package_calibration
    from skyclass.domain import domain_reference_from_training

    metadata["calibration"] = fit_package_calibration(main, tabular, stats.classes)
    reference = domain_reference_from_training(spark, plan.train_path, plan.phases[0].spec, conf.domain)
    metadata["domain"], extra_files = None, {}
    if reference is not None:  # None: no photometry to compare with (a labels-only image table)
        metadata["domain"] = reference.metadata()
        extra_files[metadata["domain"]["file"]] = reference.reference_bytes()
    path = package.write_package(models_dir, version, model_keras=main["model_keras"],
                                 tabular_keras=tabular["model_keras"], metadata=metadata,
                                 simulated=metadata["simulated_images"] or metadata["simulated_catalog"],
                                 extra_files=extra_files)
    # The TensorFlow Lite forms CPU executors score with (skyclass.inference); checked against Keras on the
    # validation split, else logged and the package stays Keras-only.
    from skyclass.inference import add_cpu_models_from_lake

    add_cpu_models_from_lake(path, lake_root)
    image_weights = _export_image_weights(path, conf) if tc.mode != "tabular" else None
    result = TrainResult(
        path=path, version=version, mode=tc.mode,
        validation_loss=main["validation"]["loss"], validation_accuracy=main["validation"]["accuracy"],
        tabular_validation_loss=tabular["validation"]["loss"],
        tabular_validation_accuracy=tabular["validation"]["accuracy"],
        epochs=len(main["records"]), initial_epoch=main["initial_epoch"], stopped_early=main["stopped_early"],
        elapsed_s=time.perf_counter() - started, samples_per_s=_typical_rate(main), num_proc=tc.num_proc,
        history=metadata["history"], image_weights=image_weights)
    log.info("%s", result)
    return result


def _export_image_weights(package_path: str, conf: Config) -> str:
    """The trained image branch as ``<models>/<version>.image-weights.h5`` (beside the package, not in it), which
    ``train.weights`` loads into the backbone of another image or multimodal model (models.save_image_weights)."""
    from skyclass.models import IMAGE_WEIGHTS_SUFFIX, backbone_input_px, save_image_weights
    from skyclass.package import ModelPackage

    target = package_path.rstrip("/") + IMAGE_WEIGHTS_SUFFIX
    seen_px = backbone_input_px(conf.train.image_size_px, conf.train.image_crop_px)
    save_image_weights(ModelPackage.load(package_path).load_model(), target, backbone=conf.train.backbone,
                       image_size_px=seen_px, cnn_filters=tuple(conf.train.cnn_filters))
    log.info("image branch weights (%s, %d px) written to %s", conf.train.backbone, seen_px, target)
    return target


def build_plan(conf: Config, stats: input_pipeline.TrainingStats, version: str) -> TrainPlan:
    """Work out shards, steps and class weights from the training table's footers and statistics.

    Raises
    ------
    TrainingError
        A split is too small for one batch per process, or has no cutouts for an image model.
    """
    tc = conf.train
    lake_root = conf.lake.path("root")
    features = declared_features(tc)
    without_photometry = int(stats.raw.get("rows_without_photometry", 0) or 0)
    if without_photometry and tc.mode != "image":
        raise TrainingError(
            f"the training table holds {without_photometry:,} rows without photometry (a labels-only catalog: objid "
            f"and class, no ugriz), and train.mode={tc.mode} needs photometry for every row. Train with "
            "train.mode=image, or rebuild the table (skyclass table) with train.mode=tabular or multimodal, which "
            "leaves those rows out")
    missing = [f for f in features if f not in stats.normalisation]
    if missing:
        raise TrainingError(f"training statistics have no mean/std for {', '.join(missing)} (feature set "
                            f"{tc.feature_set!r}); rebuild the training table (skyclass table)")
    train_path = lake.training_split_path(lake_root, "train")
    validation_path = lake.training_split_path(lake_root, "validation")
    # An image table may hold labels-only rows (no photometry): the tabular fallback reads the others only.
    feature_columns = features if without_photometry else ()
    train_groups = input_pipeline.list_row_groups(train_path, feature_columns)
    validation_groups = input_pipeline.list_row_groups(validation_path, feature_columns)
    normalisation = {f: dict(stats.normalisation[f]) for f in features}
    model_kwargs = {
        "n_features": len(features), "image_size_px": tc.image_size_px, "n_classes": len(stats.classes),
        "backbone": tc.backbone, "weights": tc.weights, "trainable_layers": tc.trainable_layers,
        "tabular_units": tuple(tc.tabular_units), "fusion_units": tuple(tc.fusion_units), "dropout": tc.dropout,
        "batch_norm": tc.batch_norm, "cnn_filters": tuple(tc.cnn_filters), "image_crop_px": tc.image_crop_px,
    }
    for split, groups in (("train", train_groups), ("validation", validation_groups)):
        if tc.num_proc > 1 and input_pipeline.shard_plan(groups, tc.num_proc) is None:
            log.warning("the %s split has %d row group(s), fewer than the %d processes: every process reads all of "
                        "it (rebuild the training table with smaller row groups, cutouts.rows_per_row_group, to "
                        "shard it)", split, len(groups), tc.num_proc)
    modes = [(MAIN_PHASE, tc.mode)] + ([(TABULAR_PHASE, "tabular")] if tc.mode != "tabular" else [])
    phases = []
    for name, mode in modes:
        require = (name == TABULAR_PHASE and bool(without_photometry)
                   and _fallback_has_photometry(tc, train_groups, validation_groups))
        spec = InputSpec(mode, tuple(features), normalisation, tc.image_size_px, require_features=require)
        phases.append(_phase_plan(name, spec, tc, train_groups, validation_groups, model_kwargs))
    checkpoint_dir = tc.checkpoint_dir or os.path.join(conf.lake.path("models"),
                                                       f"{version}{package.CHECKPOINTS_SUFFIX}")
    weights = (input_pipeline.class_weights(stats.label_counts, stats.classes) if tc.class_weights else None)
    return TrainPlan(
        version=version, train_path=train_path, validation_path=validation_path,
        checkpoint_dir=os.path.join(checkpoint_dir, "") if "://" not in checkpoint_dir else checkpoint_dir,
        phases=tuple(phases), model_kwargs=model_kwargs, epochs=tc.epochs, batch_size=tc.batch_size,
        learning_rate=tc.learning_rate, warmup_epochs=tc.warmup_epochs, patience=tc.early_stopping_patience,
        class_weight=weights, num_proc=tc.num_proc, reduce_lr_patience=tc.reduce_lr_patience, augment=tc.augment,
        lr_schedule=tc.lr_schedule)


def _rows_per_shard(groups, num_proc: int, *, with_image: bool, with_features: bool) -> int:
    """Rows the smallest shard of a split yields per pass (what every process can read in lock step)."""
    return min(input_pipeline.shard_row_counts(groups, input_pipeline.shard_plan(groups, num_proc),
                                               with_image=with_image, with_features=with_features))


def _fallback_has_photometry(tc, train_groups, validation_groups) -> bool:
    """Whether an image table's rows with photometry are enough for the tabular fallback to train on them alone
    (a batch for every process, and some validation rows); said either way."""
    train_rows, validation_rows = (_rows_per_shard(g, tc.num_proc, with_image=False, with_features=True)
                                   for g in (train_groups, validation_groups))
    total = sum(g.rows_with_features for g in train_groups)
    if train_rows >= tc.batch_size and validation_rows >= 1:
        log.info("tabular fallback: trained on the %d train rows with photometry only (of %d; the others are "
                 "labels-only)", total, sum(g.rows for g in train_groups))
        return True
    log.warning("tabular fallback: the train split has %d rows with photometry (labels-only rows have none), too "
                "few to train it on: it learns only the class mix, which objects scored without a usable cutout "
                "get. Add their photometry (skyclass extract) for a fallback that classifies.", total)
    return False


def _phase_plan(name, spec: InputSpec, tc, train_groups, validation_groups, model_kwargs) -> PhasePlan:
    train_shards = input_pipeline.shard_plan(train_groups, tc.num_proc)
    validation_shards = input_pipeline.shard_plan(validation_groups, tc.num_proc)
    train_rows, validation_rows = (_rows_per_shard(g, tc.num_proc, with_image=spec.uses_image,
                                                   with_features=spec.require_features)
                                   for g in (train_groups, validation_groups))
    what = ("rows with a cutout" if spec.uses_image else "rows with photometry" if spec.require_features
            else "rows")
    if train_rows < tc.batch_size:
        raise TrainingError(f"the train split gives a process only {train_rows} {what}, fewer than one batch of "
                            f"train.batch_size={tc.batch_size}; lower train.batch_size or train.num_proc, or add data")
    if validation_rows < 1:
        raise TrainingError(f"the validation split has no {what} for the {spec.mode} model; rebuild the training "
                            "table with a non-zero split.validation")
    # Every process runs exactly this many steps (Horovod's allreduce needs all of them in every step); the
    # readers repeat for ever, so a shard a little longer than the others just wraps around later.
    steps = tc.steps_per_epoch or train_rows // tc.batch_size
    validation_batch = min(tc.batch_size, validation_rows)
    fingerprint = {"mode": spec.mode, "features": list(spec.features), "classes": model_kwargs["n_classes"],
                   **({k: plain_data(v) for k, v in model_kwargs.items() if k not in ("n_features", "n_classes")}
                      if spec.mode != "tabular" else
                      {k: plain_data(model_kwargs[k]) for k in ("tabular_units", "dropout", "batch_norm")})}
    shuffle_rows = shuffle_buffer_rows(train_groups, tc.batch_size, spec)
    return PhasePlan(name=name, spec=spec, steps_per_epoch=steps, train_shards=train_shards,
                     shuffle_buffer_rows=shuffle_rows,
                     validation_batch_size=validation_batch, validation_steps=validation_rows // validation_batch,
                     validation_shards=validation_shards, rows_per_epoch=steps * tc.batch_size * tc.num_proc,
                     fingerprint=fingerprint)


# What the decoded rows waiting in one process's shuffle buffer may take (64 px uint8 images: 12 KB a row).
SHUFFLE_BUFFER_BYTES = 256 * 2**20


def shuffle_buffer_rows(train_groups, batch_size: int, spec: InputSpec) -> int:
    """Rows of a process's tf.data shuffle buffer: one whole row group (Petastorm hands over row groups, so a
    smaller buffer mixes rows of one group only, and a group written from a class-sorted catalog stays one class),
    at least two batches, at most :data:`SHUFFLE_BUFFER_BYTES` of decoded rows.

    Parameters
    ----------
    train_groups : sequence of RowGroupInfo
        Row groups of the train split.
    batch_size : int
    spec : InputSpec

    Returns
    -------
    int
    """
    largest_group = max((g.rows for g in train_groups), default=0)
    # float32 features, uint8 pixels, the label.
    row_bytes = 4 * len(spec.features) + (3 * spec.image_size_px ** 2 if spec.uses_image else 0) + 8
    return max(2 * batch_size, min(largest_group, SHUFFLE_BUFFER_BYTES // row_bytes))


def _check_local_checkpoints(plan: TrainPlan) -> None:
    """Refuse early, on the driver, to resume from a checkpoint of a different model (local folders only; rank 0
    checks again wherever the folder is)."""
    if "://" in plan.checkpoint_dir:
        return
    for phase in plan.phases:
        path = os.path.join(plan.checkpoint_dir, phase.name, STATE_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                _check_fingerprint(json.load(fh), phase, path)


def _check_fingerprint(state: Mapping, phase: PhasePlan, where: str) -> None:
    if state.get("fingerprint") != phase.fingerprint:
        raise TrainingError(
            f"the checkpoint {where} was written for a different {phase.name} model ({state.get('fingerprint')} "
            f"vs {dict(phase.fingerprint)}); choose another train.version, or delete that folder to start over")


def _worker_env() -> dict:
    # Added to each executor's own environment by Horovod's task service (the executor's PATH, PYTHONPATH and
    # Hadoop tokens must stay): only quieten TensorFlow's C++ start-up chatter in the relayed output.
    # SKYCLASS_VERBOSE (set by --verbose) lets the training processes show third-party warnings too.
    return {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
            **({"SKYCLASS_VERBOSE": "1"} if os.environ.get("SKYCLASS_VERBOSE") == "1" else {})}


def _typical_rate(phase_summary: Mapping) -> Optional[float]:
    rates = [r["samples_per_s"] for r in phase_summary["records"][phase_summary["initial_epoch"]:]]
    # The first epoch of a process pays for graph tracing and reader start-up: leave it out when there are more.
    rates = rates[1:] if len(rates) > 1 else rates
    return float(statistics.median(rates)) if rates else None


def _format_record(record: Mapping) -> str:
    parts = [f"{k} {record[k]:.4f}" for k in ("loss", "val_loss", "accuracy", "val_accuracy") if k in record]
    return ", ".join(parts) + f", {record['samples_per_s']:,.0f} samples/s"


def _any_simulated_source(cutout_sources) -> bool:
    return any(n and source in lake.SIMULATED_SOURCES for source, n in (cutout_sources or {}).items())


def _history(records) -> dict:
    return {k: [float(r[k]) for r in records] for k in HISTORY_KEYS if records and all(k in r for r in records)}


def _metadata(conf: Config, stats, plan: TrainPlan, main: Mapping, tabular: Mapping) -> dict:
    tc = conf.train
    main_phase = plan.phases[0]
    return {
        "version": plan.version, "mode": tc.mode, "backbone": tc.backbone if tc.mode != "tabular" else None,
        "feature_set": tc.feature_set, "features": list(main_phase.spec.features), "classes": list(stats.classes),
        # The catalog columns scoring needs to compute the features again (the names say how: skyclass.features).
        "catalog_columns": list(source_columns(main_phase.spec.features)),
        "normalisation": {k: dict(v) for k, v in main_phase.spec.normalisation.items()},
        "image_size_px": tc.image_size_px, "config": conf.to_dict(),
        "lake_snapshot": {"training_path": os.path.dirname(plan.train_path), "rows": dict(stats.rows),
                          "label_counts": dict(stats.label_counts), "stats_created_at": stats.created_at,
                          "cutout_sources": stats.raw.get("cutout_sources")},
        # What the model learned from, read from the training table's stats.json (i.e. from the data): evaluate
        # labels the package's results SIMULATED from these.
        "simulated_images": tc.mode != "tabular" and _any_simulated_source(stats.raw.get("cutout_sources")),
        "simulated_catalog": bool(stats.raw.get("catalog_simulated", False)),
        "class_weight": {stats.classes[k]: w for k, w in plan.class_weight.items()} if plan.class_weight else None,
        "num_proc": plan.num_proc, "batch_size_per_process": plan.batch_size,
        "history": _history(main["records"]), "tabular_history": _history(tabular["records"]),
        "epochs": [{k: r[k] for k in ("epoch", "samples_per_s", "train_seconds")} for r in main["records"]],
        "initial_epoch": main["initial_epoch"], "stopped_early": main["stopped_early"],
        "validation": main["validation"], "tabular_validation": tabular["validation"],
        "code_version": package.code_version(),
        # Microseconds: latest_package orders packages by it, and two trainings can end within one second.
        "created_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
    }


# ---------------------------------------------------------------------------------------------------------------
# What runs in the Horovod processes (shipped by horovod.spark.run to Spark tasks).
# ---------------------------------------------------------------------------------------------------------------

def _train_on_horovod(plan: TrainPlan) -> Optional[dict]:
    """Train every phase of ``plan`` in one Horovod process; rank 0 returns the models and metrics, others None.

    TensorFlow, Horovod and Petastorm are imported here, not at module level: this function runs in a fresh
    process started by Horovod's Spark task service, and the driver must be able to import this module without
    loading TensorFlow.
    """
    import tensorflow as tf
    import horovod.tensorflow as hvd_tf
    import horovod.tensorflow.keras as hvd

    # Collective operations need every process: init before touching data or models.
    hvd.init()
    rank = hvd.rank()
    _configure_worker_logging(rank)
    # pyarrow 10 deprecations raised inside Petastorm, once per row group: noise in the relayed output.
    quiet_third_party_warnings()
    gpus = tf.config.list_physical_devices("GPU")
    # One GPU per process: the one Spark reserved for this task. The local rank is no guide when executors share a
    # host (in separate containers each process has local rank 0) or when Spark gave this task GPUs other than the
    # first ones.
    gpu_index = assigned_gpu(task_gpu_addresses(), [g.name for g in gpus], hvd.local_rank(),
                             os.environ.get("CUDA_VISIBLE_DEVICES"))
    if gpu_index is not None:
        gpu = gpus[gpu_index]
        tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpu, "GPU")
    else:
        # Processes on one machine share its cores; oversubscribing them makes every allreduce wait for the slowest.
        tf.config.threading.set_intra_op_parallelism_threads(max(1, (os.cpu_count() or 1) // hvd.local_size()))

    summary = {}
    for phase in plan.phases:
        summary[phase.name] = _train_phase(plan, phase, tf, hvd, hvd_tf)
    # Rank 0 alone exports and checkpoints at the end of each phase; keep the others here until it is done, so no
    # process leaves the Horovod job while another may still need it.
    hvd_tf.broadcast_object(0, root_rank=0, name="skyclass_done")
    return summary if rank == 0 else None


def task_gpu_addresses() -> list[str]:
    """The GPU addresses Spark assigned to the Spark task this Horovod process belongs to ([] when none).

    ``horovod.spark.run`` runs one ordinary (not barrier) Spark task per process; that task starts Horovod's task
    service, which launches the training function in a separate Python process (``safe_shell_exec``), where
    ``TaskContext.get()`` is None. Before calling the function, Horovod's ``task_exec`` asks the task service of
    its own task for the resources, which the service reads from ``TaskContext.get().resources()`` inside the
    Spark task; ``horovod.spark.task.get_available_devices()`` returns their ``gpu`` addresses. When this runs
    inside a Spark task itself, TaskContext is read directly.

    Returns
    -------
    list of str
        Addresses as the executor's discovery script reported them (``deploy/get-gpus.sh``: nvidia-smi indices).
    """
    try:
        from horovod.spark.task import get_available_devices

        addresses = list(get_available_devices())
    except ImportError:
        addresses = []
    if not addresses:
        from pyspark import TaskContext

        context = TaskContext.get()
        gpu = context.resources().get("gpu") if context is not None else None
        addresses = list(gpu.addresses) if gpu is not None else []
    return [str(a) for a in addresses]


def assigned_gpu(task_gpu_addresses: Sequence[str], visible_gpu_names: Sequence[str], local_rank: int,
                 cuda_visible_devices: Optional[str] = None) -> Optional[int]:
    """Which of the GPUs TensorFlow sees this Horovod process must use.

    With Spark GPU scheduling, Spark has reserved GPUs for this task and for no other task on the host: the
    process takes the first of them (two processes then never share a GPU, even when their executors share a host
    and each sees every GPU, where both may have local rank 0). Without it (local mode, or no
    ``spark.task.resource.gpu.amount``), the local rank chooses, as Horovod's examples do, with a warning.

    Spark's address is the discovery script's name for the GPU, normally the nvidia-smi index, which ignores
    ``CUDA_VISIBLE_DEVICES``; TensorFlow numbers only the GPUs CUDA lets it see, in the order of
    ``CUDA_VISIBLE_DEVICES``. So with ``CUDA_VISIBLE_DEVICES`` set, the address is looked up among its entries
    (index or UUID, compared as text) and its position is TensorFlow's index; unset, the address is the index.

    Parameters
    ----------
    task_gpu_addresses : sequence of str
        :func:`task_gpu_addresses` (empty: Spark assigned none).
    visible_gpu_names : sequence of str
        ``tf.config.list_physical_devices("GPU")`` names, in TensorFlow's order (only their number and order
        matter).
    local_rank : int
        ``hvd.local_rank()``, used only without assigned addresses.
    cuda_visible_devices : str, optional
        The process's ``CUDA_VISIBLE_DEVICES`` (None: unset).

    Returns
    -------
    int or None
        Index into ``visible_gpu_names``; None when TensorFlow sees no GPU and none was assigned (CPU training).

    Raises
    ------
    TrainingError
        An assigned GPU that TensorFlow cannot see (hidden by ``CUDA_VISIBLE_DEVICES``, an index beyond the
        visible GPUs, an address that is not an index, or no GPU visible at all).
    """
    addresses = [str(a).strip() for a in task_gpu_addresses]
    visible = list(visible_gpu_names)
    if not addresses:
        if not visible:
            return None
        index = local_rank % len(visible)
        log.warning("Spark assigned no GPU to this task (no GPU scheduling: local mode, or no "
                    "spark.task.resource.gpu.amount): local rank %d takes %s. Executors that share a host may then "
                    "share a GPU; set spark.executor/task.resource.gpu.amount (deploy/spark-gpu.conf)", local_rank,
                    visible[index])
        return index
    address = addresses[0]
    if len(addresses) > 1:
        log.warning("Spark assigned GPUs %s to this task; a Horovod process uses only GPU %s (ask for "
                    "spark.task.resource.gpu.amount=1)", ", ".join(addresses), address)
    if not visible:
        raise TrainingError(f"Spark assigned GPU {address} to this task but TensorFlow sees no GPU (a CPU-only "
                            "TensorFlow build, or no CUDA driver on the executor): install a GPU build of TensorFlow "
                            "on GPU executors, or submit training without GPU resources")
    if cuda_visible_devices is not None:
        entries = [e.strip() for e in cuda_visible_devices.split(",") if e.strip()]
        if address not in entries:
            raise TrainingError(f"Spark assigned GPU {address} to this task but CUDA_VISIBLE_DEVICES="
                                f"{cuda_visible_devices.strip()} hides it from TensorFlow: unset CUDA_VISIBLE_DEVICES "
                                "on the executors, or make the GPU discovery script report the same GPUs")
        index = entries.index(address)
    else:
        if not address.isdigit():
            raise TrainingError(f"Spark assigned GPU {address!r} to this task, which is not an index and cannot be "
                                "matched to TensorFlow's GPUs without CUDA_VISIBLE_DEVICES: make the discovery script "
                                "report nvidia-smi indices (deploy/get-gpus.sh)")
        index = int(address)
    if index >= len(visible):
        raise TrainingError(f"Spark assigned GPU {address} to this task but TensorFlow sees {len(visible)} GPUs "
                            f"({', '.join(visible)}): the GPU discovery script and the executor's GPUs disagree")
    return index


def _configure_worker_logging(rank: int) -> None:
    # A fresh process has no handlers; Horovod relays its stderr to the driver, prefixed with the rank.
    root = logging.getLogger("skyclass")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def _train_phase(plan: TrainPlan, phase: PhasePlan, tf, hvd, hvd_tf) -> Optional[dict]:
    from skyclass.models import build_model, compile_model

    rank = hvd.rank()
    checkpoint = _Checkpoint(os.path.join(plan.checkpoint_dir, phase.name), tf)
    # Only rank 0 touches the checkpoint folder (it alone writes it; others may not even see it on a cluster).
    state = checkpoint.load_state() if rank == 0 else None
    if state is not None:
        _check_fingerprint(state, phase, checkpoint.folder)
    state = hvd_tf.broadcast_object(state, root_rank=0, name=f"skyclass_state_{phase.name}")

    # The same seed everywhere gives every process the same initial weights; the broadcast below makes it certain.
    tf.keras.utils.set_random_seed(plan.seed)
    kwargs = dict(plan.model_kwargs, mode=phase.spec.mode)
    model = build_model(**kwargs)
    if state is not None and rank == 0:
        checkpoint.load_weights(model, state)
    hvd_tf.broadcast_variables(model.variables, root_rank=0)

    records = list(state["records"]) if state else []
    initial_epoch = int(state["epoch"]) if state else 0
    stopped_early = bool(state and state.get("stopped_early"))
    if initial_epoch > 0:
        log.info("%s model: resuming from the checkpoint at epoch %d", phase.name, initial_epoch)
    if not stopped_early and initial_epoch < plan.epochs:
        stopped_early = _fit(plan, phase, model, records, initial_epoch, checkpoint, tf, hvd)
    else:
        log.info("%s model: checkpoint already complete (%d epochs%s)", phase.name, initial_epoch,
                 ", stopped early" if stopped_early else "")

    # Every process evaluates the final weights on its shard of the validation split; rank 0 gathers the parts.
    validation = _evaluate_sharded(plan, phase, model, rank, hvd_tf)
    if rank != 0:
        return None
    # A clean copy compiled with a plain optimizer: the Horovod-wrapped one would not load without Horovod.
    export = build_model(**kwargs)
    export.set_weights(model.get_weights())
    compile_model(export, tf.keras.optimizers.legacy.Adam(plan.learning_rate))
    checkpoint.save(export, {"epoch": len(records), "records": records, "stopped_early": stopped_early,
                             "fingerprint": dict(phase.fingerprint)})
    log.info("%s model: validation loss %.4f, accuracy %.4f over %d objects", phase.name, validation["loss"],
             validation["accuracy"], validation["objects"])
    # The validation probabilities travel back for calibration (skyclass.calibration), not into metadata.json.
    calibration_inputs = {"proba": validation.pop("proba"), "labels": validation.pop("labels")}
    return {"model_keras": package.keras_model_bytes(export), "records": records, "initial_epoch": initial_epoch,
            "stopped_early": stopped_early, "validation": validation, "calibration_inputs": calibration_inputs}


def _fit(plan: TrainPlan, phase: PhasePlan, model, records: list, initial_epoch: int, checkpoint: "_Checkpoint",
         tf, hvd) -> bool:
    """Train ``model`` from ``initial_epoch`` to ``plan.epochs``; returns True if early stopping ended it."""
    from skyclass.models import compile_model

    rank, size = hvd.rank(), hvd.size()
    # Gradients are averaged over `size` processes, i.e. a batch `size` times larger: scale the rate to match,
    # and warm up to it (large rates at the start of training diverge; Goyal et al. 2017).
    scaled_lr = plan.learning_rate * size
    optimizer = hvd.DistributedOptimizer(tf.keras.optimizers.legacy.Adam(learning_rate=scaled_lr))
    compile_model(model, optimizer)
    early_stopping = tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=plan.patience,
                                                      restore_best_weights=True)
    callbacks = [
        # Rank 0's weights (and, after the first step, optimizer slots) everywhere, resumed or not.
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),
        # Before anything reading the logs: early stopping must see the same val_loss on every process, or one
        # would stop while the others wait for it in the next allreduce.
        hvd.callbacks.MetricAverageCallback(),
    ]
    if plan.warmup_epochs > 0:
        callbacks.append(hvd.callbacks.LearningRateWarmupCallback(
            initial_lr=scaled_lr, warmup_epochs=plan.warmup_epochs, steps_per_epoch=phase.steps_per_epoch))
    if plan.lr_schedule == "cosine":
        callbacks.append(cosine_decay_callback(scaled_lr, warmup_epochs=plan.warmup_epochs, epochs=plan.epochs,
                                               steps_per_epoch=phase.steps_per_epoch))
    callbacks.append(_epoch_end_callback(phase, records, checkpoint if rank == 0 else None, plan.epochs))
    callbacks.append(early_stopping)
    if plan.reduce_lr_patience:
        # Halve the rate when validation loss stalls: the last per-mille of accuracy comes from small steps. Safe
        # across processes because MetricAverageCallback ran first, so every process sees the same val_loss.
        callbacks.append(tf.keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                              patience=plan.reduce_lr_patience,
                                                              min_lr=scaled_lr / 64))

    shuffle_buffer = phase.shuffle_buffer_rows or 2 * plan.batch_size
    train_shard = rank if phase.train_shards else None
    validation_shard = rank if phase.validation_shards else None
    spec = phase.spec
    # The same Petastorm seed on every process (it also seeds the row-group shuffle); tf.data's shuffle differs.
    with input_pipeline.open_reader(plan.train_path, spec, cur_shard=train_shard, shard_count=phase.train_shards,
                                    num_epochs=None, seed=plan.seed) as train_reader, \
            input_pipeline.open_reader(plan.validation_path, spec, cur_shard=validation_shard,
                                       shard_count=phase.validation_shards, num_epochs=None,
                                       shuffle=False) as validation_reader:
        train = input_pipeline.make_dataset(train_reader, spec, batch_size=plan.batch_size,
                                            shuffle_buffer=shuffle_buffer, seed=plan.seed + rank,
                                            augment=plan.augment)
        validation = input_pipeline.make_dataset(validation_reader, spec, batch_size=phase.validation_batch_size)
        model.fit(train, steps_per_epoch=phase.steps_per_epoch, epochs=plan.epochs, initial_epoch=initial_epoch,
                  validation_data=validation, validation_steps=phase.validation_steps,
                  class_weight=dict(plan.class_weight) if plan.class_weight else None, callbacks=callbacks,
                  verbose=0)
    stopped_early = early_stopping.stopped_epoch > 0
    if not stopped_early and early_stopping.best_weights is not None:
        # Keras 2 restores the best weights only when it stops early; a run that uses every epoch would keep the
        # last epoch's. Every process holds the same best weights (same averaged val_loss, synchronised weights).
        model.set_weights(early_stopping.best_weights)
    return stopped_early


def _evaluate_sharded(plan: TrainPlan, phase: PhasePlan, model, rank: int, hvd_tf) -> Optional[dict]:
    """Loss and accuracy of the final weights over the whole validation split, each process evaluating its own
    shard (every row group once; rank 0 alone when the split has fewer row groups than processes), the parts
    gathered with ``allgather_object``. Returns the totals on rank 0, None elsewhere."""
    shards = phase.validation_shards
    if shards is None:
        part = _evaluate_part(plan, phase, model) if rank == 0 else None
    else:
        part = _evaluate_part(plan, phase, model, cur_shard=rank, shard_count=shards)
    parts = [p for p in hvd_tf.allgather_object(part, name=f"skyclass_validation_{phase.name}") if p is not None]
    return _combine_validation(parts) if rank == 0 else None


def _evaluate_part(plan: TrainPlan, phase: PhasePlan, model, **shard) -> dict:
    """One pass over (a shard of) the validation split: the loss sum, correct count, probabilities and labels."""
    with input_pipeline.open_reader(plan.validation_path, phase.spec, num_epochs=1, shuffle=False,
                                    **shard) as reader:
        dataset = input_pipeline.make_dataset(reader, phase.spec, batch_size=plan.batch_size, drop_remainder=False)
        all_proba, all_labels = [], []
        for inputs, labels in dataset:
            all_proba.append(model(inputs, training=False).numpy())
            all_labels.append(labels.numpy())
    return {"proba": all_proba, "labels": all_labels}


def _combine_validation(parts: list[dict]) -> dict:
    """The validation totals from the processes' parts (see :func:`_evaluate_sharded`)."""
    probas = [p for part in parts for p in part["proba"]]
    labels = [y for part in parts for y in part["labels"]]
    arrays = {"proba": np.concatenate(probas) if probas else np.zeros((0, 0), np.float32),
              "labels": np.concatenate(labels) if labels else np.zeros(0, np.int64)}
    objects = len(arrays["labels"])
    if objects == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "objects": 0, **arrays}
    proba, y = arrays["proba"], arrays["labels"]
    # Keras clips probabilities at its epsilon (1e-7) in cross-entropy: same here, so the numbers compare.
    picked = np.clip(proba[np.arange(objects), y], 1e-7, 1 - 1e-7)
    return {"loss": float(-np.log(picked).sum()) / objects, "accuracy": float((proba.argmax(axis=1) == y).mean()),
            "objects": objects, **arrays}


def cosine_learning_rate(base_lr: float, progress_epochs: float, *, warmup_epochs: int, epochs: int) -> float:
    """The learning rate of ``train.lr_schedule: cosine`` after ``progress_epochs`` (fractional) epochs.

    From the end of warm-up to the end of the last epoch the rate falls from ``base_lr`` to 0 along a half cosine
    (Loshchilov & Hutter 2017, without restarts): large steps while the loss is far from a minimum, small ones at
    the end, where a constant rate keeps hopping across the boundary between close classes (on real cutouts,
    STAR/QSO) from epoch to epoch.

    Parameters
    ----------
    base_lr : float
        The rate reached at the end of warm-up (already scaled by the number of processes).
    progress_epochs : float
        Epochs done so far, counting the steps of the current one (epoch + step / steps_per_epoch).
    warmup_epochs, epochs : int
        As train.warmup_epochs and train.epochs.

    Returns
    -------
    float
        ``base_lr`` during warm-up (the warm-up callback owns those steps), then the decayed rate.

    Examples
    --------
    >>> round(cosine_learning_rate(0.002, 6.0, warmup_epochs=1, epochs=11), 9)  # halfway
    0.001
    >>> round(cosine_learning_rate(0.002, 11.0, warmup_epochs=1, epochs=11), 9)  # the end of the last epoch
    0.0
    """
    span = epochs - warmup_epochs
    if progress_epochs <= warmup_epochs or span <= 0:
        return base_lr
    done = min(1.0, (progress_epochs - warmup_epochs) / span)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * done))


def cosine_decay_callback(base_lr: float, *, warmup_epochs: int, epochs: int, steps_per_epoch: int):
    """Keras callback that sets the optimizer's rate before every training step to :func:`cosine_learning_rate`
    (the epoch Keras passes counts resumed epochs, so a run resumed from its checkpoint continues the same curve).
    Defined in a function because TensorFlow is imported only inside the Horovod process.

    Parameters
    ----------
    base_lr : float
    warmup_epochs, epochs, steps_per_epoch : int

    Returns
    -------
    tf.keras.callbacks.Callback
    """
    import tensorflow as tf

    class CosineDecay(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            progress = self.epoch + batch / steps_per_epoch
            if progress >= warmup_epochs:
                tf.keras.backend.set_value(self.model.optimizer.lr, cosine_learning_rate(
                    base_lr, progress, warmup_epochs=warmup_epochs, epochs=epochs))

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:  # the rate of the epoch's last step, in the history and checkpoint records
                logs["lr"] = float(tf.keras.backend.get_value(self.model.optimizer.lr))

    return CosineDecay()


def _epoch_end_callback(phase: PhasePlan, records: list, checkpoint: Optional["_Checkpoint"], epochs: int):
    """Keras callback for the bookkeeping after each epoch: metrics record (every rank), progress line and
    checkpoint (rank 0, which alone gets a ``checkpoint``). Defined here because TensorFlow is imported only inside
    the Horovod process."""
    import tensorflow as tf

    class EpochEnd(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()
            self.validation_started = None

        def on_test_begin(self, logs=None):
            if self.validation_started is None:
                self.validation_started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            # Training time only: validation is not part of the training throughput.
            train_seconds = (self.validation_started or time.perf_counter()) - self.started
            record = {k: float(v) for k, v in (logs or {}).items()}
            record.update(epoch=epoch + 1, train_seconds=train_seconds,
                          samples_per_s=phase.rows_per_epoch / train_seconds if train_seconds > 0 else 0.0)
            records.append(record)
            if checkpoint is not None:
                log.info("%s epoch %d/%d: %s", phase.name, epoch + 1, epochs, _format_record(record))
                checkpoint.save(self.model, {"epoch": epoch + 1, "records": records, "stopped_early": False,
                                             "fingerprint": dict(phase.fingerprint)})

    return EpochEnd()


class _Checkpoint:
    """Weights + state of one phase in a folder that may be local or any URI tf.io.gfile knows (hdfs://, gs://).

    Weights go to a new file per epoch and state.json is replaced after it, so a crash mid-write leaves the
    previous consistent pair.
    """

    def __init__(self, folder: str, tf):
        self.folder = folder.rstrip("/")
        self.tf = tf

    def _path(self, name: str) -> str:
        return f"{self.folder}/{name}"

    def load_state(self) -> Optional[dict]:
        gfile = self.tf.io.gfile
        if not gfile.exists(self._path(STATE_FILE)):
            return None
        with gfile.GFile(self._path(STATE_FILE), "r") as fh:
            return json.load(fh)

    def load_weights(self, model, state: Mapping) -> None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="skyclass-ckpt-") as tmp:
            local = os.path.join(tmp, "weights.h5")
            self.tf.io.gfile.copy(self._path(state["weights"]), local, overwrite=True)
            model.load_weights(local)

    def save(self, model, state: dict) -> None:
        import tempfile

        gfile = self.tf.io.gfile
        gfile.makedirs(self.folder)
        previous = self.load_state()
        weights_name = f"weights-epoch{state['epoch']:04d}-{int(time.time() * 1000)}.h5"
        with tempfile.TemporaryDirectory(prefix="skyclass-ckpt-") as tmp:
            local = os.path.join(tmp, "weights.h5")
            model.save_weights(local)
            gfile.copy(local, self._path(weights_name), overwrite=True)
        state = dict(state, weights=weights_name)
        with gfile.GFile(self._path(STATE_FILE + ".tmp"), "w") as fh:
            json.dump(state, fh, default=float)
        gfile.rename(self._path(STATE_FILE + ".tmp"), self._path(STATE_FILE), overwrite=True)
        if previous and previous.get("weights") and previous["weights"] != weights_name:
            try:
                gfile.remove(self._path(previous["weights"]))
            except self.tf.errors.NotFoundError:
                pass
