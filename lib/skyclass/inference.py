"""Batch inference, the one path scoring (:mod:`skyclass.score`) and evaluation (:mod:`skyclass.evaluate`) share:
the models cached per Python worker, TensorFlow fitted to the task's CPUs, the fallback routing of objects without
a usable cutout, and the model call -- with Keras or with the package's TensorFlow Lite form.

The public surface is small:

:class:`InferenceSpec`
    what a worker needs to know about a package (small and picklable; read once on the driver);
:func:`worker_models`
    the package's models, loaded once per Python worker and reused by every later task and batch;
:func:`predict_batch`
    a pandas batch (the package's feature columns, plus ``jpeg`` for image packages) → class probabilities per
    object and whether its cutout was used. **This is where probabilities come out**: whatever is applied to them
    (calibration, priors) is applied to what it returns, so scoring and evaluation see the same numbers.

Backends (``score.inference``)
    ``keras`` runs ``model.keras`` / ``tabular.keras`` with TensorFlow; ``tflite`` runs their TensorFlow Lite forms
    (``model.tflite`` / ``tabular.tflite``, written by training or ``skyclass package --add-cpu-model``) with
    ``tf.lite.Interpreter`` and its XNNPACK CPU kernels; ``auto`` is ``tflite`` when the Python worker sees no GPU
    and the package has the form, else ``keras``. A package without the form is scored with Keras, and the driver
    says so once (:func:`resolve_backend`).

CPU forms (:func:`add_cpu_models`)
    converted with ``tf.lite.TFLiteConverter`` and checked against Keras on rows of the validation split: any class
    flip, or a probability differing by more than :data:`MAX_ABS_DIFF`, refuses the conversion
    (:class:`CpuModelError`), and the package stays Keras-only.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from skyclass.errors import SkyclassError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "keras", "tflite")
# The largest |p_keras - p_tflite| a CPU form may show on the validation rows; the bound.
MAX_ABS_DIFF = 1e-4
# Validation rows the CPU forms are checked on (decoded 64 px images: ~50 MB of float32 per 1,000 rows).
AGREEMENT_MAX_ROWS = 2048
# Rows per TensorFlow Lite invocation: small enough that the interpreter's preallocated activations stay ~0.1 GB
# for the 64 px CNN, large enough that the per-invocation overhead is negligible.
TFLITE_CHUNK_ROWS = 64
# Task local property naming a folder where each Python worker appends one line per model load to
# ``loads-<pid>.txt`` (a diagnostic: shows that models load once per worker, not per batch or task).
LOAD_LOG_PROPERTY = "skyclass.inference.load_log"

# Per Python worker: (package path, fingerprint, backend) -> WorkerModels. The fingerprint, not the version: a
# package retrained under the same version at the same path must not be served from the old weights.
# Module-level on purpose: Spark reuses Python workers across tasks (spark.python.worker.reuse), and the
# mapInPandas functions are pickled by reference, so every task a worker runs finds the models already loaded.
_WORKER_MODELS: dict[tuple[str, str, str], "WorkerModels"] = {}


class InferenceError(SkyclassError):
    """A worker cannot load the package it was asked to use (it changed after the run was planned)."""


class CpuModelError(SkyclassError):
    """A package's TensorFlow Lite form cannot be written: conversion failed or disagrees with Keras."""


@dataclass(frozen=True)
class InferenceSpec:
    """What a worker needs to classify batches with a package: small, picklable, read once on the driver."""

    package_path: str
    version: str
    fingerprint: str
    mode: str
    features: tuple[str, ...]
    classes: tuple[str, ...]
    normalisation: Mapping[str, Mapping[str, float]]
    image_size_px: int
    backend: str = "keras"  # auto | keras | tflite, after resolve_backend
    # The package's calibration (metadata "calibration", skyclass.calibration) and in-domain reference
    # (skyclass.domain.DomainReference), and the target class priors of the run (None: the validation mix).
    calibration: Optional[Mapping] = None
    domain: Optional[object] = None
    class_priors: Optional[tuple[float, ...]] = None

    @property
    def needs_images(self) -> bool:
        return self.mode in ("image", "multimodal")

    @classmethod
    def from_package(cls, package, package_path: str, backend: str = "keras") -> "InferenceSpec":
        """Spec of a loaded :class:`skyclass.package.ModelPackage`, with ``backend`` as given."""
        return cls(package_path=str(package_path), version=str(package.version),
                   fingerprint=str(package.fingerprint), mode=str(package.mode),
                   features=tuple(package.features), classes=tuple(package.classes),
                   normalisation={k: dict(v) for k, v in package.normalisation.items()},
                   image_size_px=int(package.metadata.get("image_size_px") or 0), backend=backend,
                   calibration=package.metadata.get("calibration"), domain=package.domain_reference())


def resolve_backend(requested: str, package, package_path: str) -> str:
    """The backend workers should use for ``package``: ``requested`` unless the package has no TFLite form.

    A package without the form is scored with Keras; this logs one line saying so (on the driver, once per run).

    Parameters
    ----------
    requested : str
        ``score.inference``: ``auto``, ``keras`` or ``tflite``.
    package : skyclass.package.ModelPackage
    package_path : str

    Returns
    -------
    str
        ``keras``, ``tflite`` or ``auto`` (each worker then picks by whether it sees a GPU).

    Raises
    ------
    ValueError
        ``requested`` is not one of :data:`BACKENDS`.
    """
    if requested not in BACKENDS:
        raise ValueError(f"score.inference must be one of {', '.join(BACKENDS)}; got {requested!r}")
    if requested == "keras" or package.has_cpu_model:
        return requested
    log.info("model package %s has no TensorFlow Lite form (score.inference=%s): scoring with Keras; add one with "
             "`skyclass package --add-cpu-model %s`", package_path, requested, package_path)
    return "keras"


@dataclass
class WorkerModels:
    """The two models of a package as a worker uses them: ``main`` (the package's mode) and ``tabular`` (the
    fallback for objects without a usable cutout; the same object for a tabular package)."""

    main: "_Model"
    tabular: "_Model"
    backend: str  # keras or tflite: what this worker actually runs


@dataclass(frozen=True)
class BatchPrediction:
    """What :func:`predict_batch` returns: ``proba`` (n, classes) float32 in the package's class order, calibrated
    and re-weighted to the spec's class priors; ``raw``, the models' own probabilities; ``cutout_used`` (n,) bool —
    the main model saw the object's cutout (always False for a tabular package); ``domain`` (n,) ``in`` or the
    first reason the object is unlike the training objects, and ``domain_score`` (n,) (None and NaN for a package
    without a domain reference)."""

    proba: np.ndarray
    cutout_used: np.ndarray
    raw: Optional[np.ndarray] = None
    domain: Optional[np.ndarray] = None
    domain_score: Optional[np.ndarray] = None


def predict_batch(frame: pd.DataFrame, spec: InferenceSpec, models: WorkerModels) -> BatchPrediction:
    """Class probabilities of one batch of objects, with the fallback routing of objects without a cutout.

    Objects whose ``jpeg`` is missing or does not decode are classified by the tabular model; the others by the
    main model. A tabular package never looks at ``jpeg``.

    Parameters
    ----------
    frame : pandas.DataFrame
        The package's feature columns (``spec.features``, not yet standardised; NaN for an unusable value, which
        standardisation maps to the training mean) and, for image packages, ``jpeg`` (bytes or None).
    spec : InferenceSpec
    models : WorkerModels
        From :func:`worker_models`.

    Returns
    -------
    BatchPrediction
    """
    from skyclass.calibration import adjust_probabilities
    from skyclass.features import decode_jpegs, standardise

    n = len(frame)
    x = standardise(frame, spec.features, spec.normalisation)
    raw = np.zeros((n, len(spec.classes)), dtype=np.float32)
    if n == 0:
        return BatchPrediction(raw, np.zeros(0, dtype=bool), raw, np.zeros(0, dtype=object), np.zeros(0))
    if not spec.needs_images:
        raw[:] = models.main({"features": x})
        ok = np.zeros(n, dtype=bool)
    else:
        blobs = frame["jpeg"].tolist() if "jpeg" in frame.columns else [None] * n
        images, ok = decode_jpegs(blobs, spec.image_size_px)
        if ok.all():
            raw[:] = models.main({"features": x, "image": images})
        elif ok.any():
            raw[ok] = models.main({"features": x[ok], "image": images[ok]})
        if not ok.all():
            raw[~ok] = models.tabular({"features": x[~ok]})
    # Calibration of the model that classified each row (main or tabular fallback), then the target priors.
    proba = adjust_probabilities(raw, ok if spec.needs_images else None, spec.calibration, spec.class_priors)
    if spec.domain is not None:
        domain, domain_score = spec.domain.assess(frame, x)
    else:
        domain, domain_score = np.full(n, None, dtype=object), np.full(n, np.nan)
    return BatchPrediction(np.asarray(proba, dtype=np.float32), ok, raw, domain,
                           np.asarray(domain_score, dtype=np.float64) * np.ones(n))


# ---------------------------------------------------------------------------------------------------------------
# Models as callables: inputs dict -> probabilities.

class _Model:
    input_names: tuple[str, ...] = ()

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


class KerasModel(_Model):
    """A Keras model called with ``predict_on_batch``: the compiled predict function once per batch, without
    ``model.predict``'s per-call tf.data setup."""

    def __init__(self, model):
        self.model = model
        self.input_names = tuple(model.input_names)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        # Only the inputs the model declares: a tabular model given an image would reject the dict.
        wanted = {name: inputs[name] for name in self.input_names}
        return np.asarray(self.model.predict_on_batch(wanted), dtype=np.float32)


class TFLiteModel(_Model):
    """A TensorFlow Lite model (XNNPACK CPU kernels) taking any number of rows.

    The interpreter's tensors are allocated once, for :data:`TFLITE_CHUNK_ROWS` rows: a batch is run in chunks of
    that many rows, the last one padded with zero rows whose outputs are dropped (rows are independent at
    inference). So batches of any size never reallocate, and the interpreter's arena (the CNN's activations) stays
    a quarter of what a 256-row allocation would hold. One interpreter is not thread-safe: one per Python worker,
    as the cache keeps it.
    """

    def __init__(self, model_bytes: bytes, num_threads: Optional[int] = None, chunk_rows: Optional[int] = None):
        import tensorflow as tf

        self.interpreter = tf.lite.Interpreter(model_content=model_bytes, num_threads=num_threads)
        runner = self.interpreter.get_signature_runner()
        details = runner.get_input_details()
        self._inputs = {name: detail["index"] for name, detail in details.items()}
        outputs = runner.get_output_details()
        if len(outputs) != 1:
            raise CpuModelError(f"a TensorFlow Lite model with one output was expected, got {sorted(outputs)}")
        self._output = next(iter(outputs.values()))["index"]
        self.input_names = tuple(self._inputs)
        del runner  # it holds references into the interpreter's buffers, which allocate_tensors must not have
        self.rows = int(chunk_rows or TFLITE_CHUNK_ROWS)  # rows the tensors are allocated for
        self._padded = {}
        for name, index in self._inputs.items():
            row_shape = tuple(int(d) for d in details[name]["shape_signature"][1:])
            self.interpreter.resize_tensor_input(index, [self.rows, *row_shape], strict=True)
            self._padded[name] = np.zeros((self.rows, *row_shape), np.float32)
        self.interpreter.allocate_tensors()
        self.invocations = 0

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(inputs.values())))
        chunks = []
        for start in range(0, n, self.rows):
            stop = min(n, start + self.rows)
            for name, index in self._inputs.items():
                value = np.asarray(inputs[name][start:stop], dtype=np.float32)
                if stop - start < self.rows:
                    padded = self._padded[name]
                    padded[:stop - start] = value
                    padded[stop - start:] = 0.0
                    value = padded
                self.interpreter.set_tensor(index, np.ascontiguousarray(value))
            self.interpreter.invoke()
            self.invocations += 1
            chunks.append(np.array(self.interpreter.get_tensor(self._output)[:stop - start], dtype=np.float32))
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Worker side: load once, fit TensorFlow to the task slot.

def worker_models(spec: InferenceSpec, loads=None) -> WorkerModels:
    """The package's models, loaded on first use in this process and cached after.

    Parameters
    ----------
    spec : InferenceSpec
    loads : pyspark Accumulator, optional
        Counts actual loads, so the driver can report them.

    Returns
    -------
    WorkerModels

    Raises
    ------
    InferenceError
        The package folder no longer holds the package the run was planned with (another fingerprint).
    skyclass.package.PackageError
        The package is incomplete or its files do not match its fingerprint.
    """
    key = (spec.package_path, spec.fingerprint, spec.backend)
    cached = _WORKER_MODELS.get(key)
    if cached is not None:
        return cached
    import tensorflow as tf

    from skyclass.package import ModelPackage

    cpus = task_cpus()
    configure_tensorflow(tf, cpus)
    began = time.monotonic()
    package = ModelPackage.load(spec.package_path)
    if package.fingerprint != spec.fingerprint:
        # Replaced (e.g. retrained under the same version) after the driver planned this run: going on would
        # label rows with a fingerprint their probabilities did not come from.
        raise InferenceError(f"model package {spec.package_path} changed while scoring: the run was planned with "
                             f"fingerprint {spec.fingerprint}, the folder now holds {package.fingerprint}; run the "
                             "scoring job again")
    backend = spec.backend
    if backend == "auto":
        backend = "keras" if tf.config.list_physical_devices("GPU") or not package.has_cpu_model else "tflite"
    if backend == "tflite" and package.has_cpu_model:
        main = TFLiteModel(package.read_cpu_model("main"), num_threads=cpus)
        tabular = TFLiteModel(package.read_cpu_model("tabular"), num_threads=cpus) if spec.needs_images else main
    else:
        backend = "keras"
        main = KerasModel(package.load_model())
        tabular = KerasModel(package.load_tabular_model()) if spec.needs_images else main
    models = WorkerModels(main, tabular, backend)
    _WORKER_MODELS.clear()  # one package per worker at a time: a new version replaces the old one's memory
    _WORKER_MODELS[key] = models
    if loads is not None:
        loads.add(1)
    _record_load(spec, backend)
    log.info("worker loaded model %s (%s, %s threads) from %s in %.1f s", spec.version, backend, cpus or "default",
             spec.package_path, time.monotonic() - began)
    return models


def task_cpus() -> Optional[int]:
    """CPUs of the running Spark task (``spark.task.cpus``), or None outside a Spark task."""
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        return int(context.cpus()) if context is not None else None
    except Exception:  # outside a Spark task (tests, notebooks): keep TensorFlow's defaults
        return None


def configure_tensorflow(tf, cpus: Optional[int]) -> None:
    """Fit TensorFlow to the task slot before it starts (settings are fixed once TF has run an op).

    Parameters
    ----------
    tf : module
        The imported ``tensorflow``.
    cpus : int or None
        The task's CPUs (:func:`task_cpus`); None keeps TensorFlow's thread defaults.
    """
    try:
        if cpus:
            # Spark runs one Python worker per task slot: each worker's TensorFlow gets the slot's cores, not the
            # whole machine's, or the workers' thread pools spin against each other.
            tf.config.threading.set_intra_op_parallelism_threads(cpus)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        # On GPU executors each Python worker would otherwise reserve all GPU memory and starve its neighbours.
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # TensorFlow already initialised in this process: nothing left to configure
        pass


def _record_load(spec: InferenceSpec, backend: str) -> None:
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        folder = context.getLocalProperty(LOAD_LOG_PROPERTY) if context is not None else None
    except Exception:
        folder = None
    if folder:
        with open(os.path.join(folder, f"loads-{os.getpid()}.txt"), "a", encoding="utf-8") as fh:
            fh.write(f"{spec.version} {spec.fingerprint} {backend}\n")


# ---------------------------------------------------------------------------------------------------------------
# CPU forms: conversion and the agreement check.

def convert_to_tflite(model) -> bytes:
    """A Keras model's TensorFlow Lite form (float32, no quantisation: the labels must not change).

    Raises
    ------
    CpuModelError
        The converter fails.
    """
    import tensorflow as tf

    from skyclass.logs import native_output_captured

    try:
        # The converter's own report ("Summary on the non-converted ops", C++ warnings) is shown on failure only.
        with native_output_captured() as printed:
            return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    except Exception as err:  # the converter raises assorted types (ConverterError, ValueError, ...)
        tail = "\n".join(printed.text.strip().splitlines()[-20:])
        raise CpuModelError(f"TensorFlow Lite conversion failed ({type(err).__name__}: {err})"
                            + (f"; the converter printed:\n{tail}" if tail else "")) from err


def add_cpu_models(package_path: str, rows: pd.DataFrame) -> str:
    """Write the TensorFlow Lite forms of a package's models, checked against Keras on ``rows``.

    The package is rewritten (staging folder, then swapped in), with ``model.tflite`` and ``tabular.tflite``
    covered by its fingerprint and ``metadata.json``'s ``cpu_model`` recording the converter version and the
    agreement. The fingerprint therefore changes: scoring then labels every object once more.

    Parameters
    ----------
    package_path : str
        A complete package folder.
    rows : pandas.DataFrame
        Rows of the validation split: the package's feature columns and, for image packages, ``jpeg``.

    Returns
    -------
    str
        The package's new fingerprint.

    Raises
    ------
    CpuModelError
        No rows, the conversion failed, or the TensorFlow Lite forms disagree with Keras (a class flip, or
        |Δp| > :data:`MAX_ABS_DIFF`); the package is left as it was.
    """
    import tensorflow as tf

    from skyclass.features import decode_jpegs, standardise
    from skyclass.package import CPU_MODEL_FILES, ModelPackage, rewrite_package

    package = ModelPackage.load(package_path)
    if len(rows) == 0:
        raise CpuModelError(f"no validation rows to check the TensorFlow Lite form of {package_path} against; "
                            "rebuild the training table with a non-zero split.validation")
    rows = rows.iloc[:AGREEMENT_MAX_ROWS]
    x = standardise(rows, package.features, package.normalisation)
    keras_models = {"main": package.load_model()}
    keras_models["tabular"] = package.load_tabular_model() if package.mode != "tabular" else keras_models["main"]
    inputs = {"features": x}
    if package.mode != "tabular":
        images, ok = decode_jpegs(rows["jpeg"].tolist() if "jpeg" in rows.columns else [None] * len(rows),
                                  package.image_size_px)
        if not ok.any():
            raise CpuModelError(f"none of the {len(rows)} validation rows has a decodable cutout to check the "
                                f"{package.mode} model of {package_path} against")
        inputs = {"features": x[ok], "image": images[ok]}
    blobs, agreement = {}, {}
    for which, model in keras_models.items():
        blob = convert_to_tflite(model)
        model_inputs = inputs if which == "main" else {"features": x}
        keras_p = KerasModel(model)(model_inputs)
        lite_p = TFLiteModel(blob)(model_inputs)
        flips = int((keras_p.argmax(axis=1) != lite_p.argmax(axis=1)).sum())
        diff = float(np.abs(keras_p - lite_p).max())
        agreement[which] = {"rows": int(len(keras_p)), "class_flips": flips, "max_abs_diff": diff}
        if flips or diff > MAX_ABS_DIFF:
            raise CpuModelError(
                f"the TensorFlow Lite form of the {which} model of {package_path} disagrees with Keras on "
                f"{len(keras_p)} validation rows ({flips} class flips, max |Δp| {diff:.2e}, allowed 0 and "
                f"{MAX_ABS_DIFF:g}); the package stays Keras-only and scores with Keras")
        blobs[CPU_MODEL_FILES[which]] = blob
    cpu_model = {"format": "tflite", "files": dict(CPU_MODEL_FILES),
                 "converter": f"tensorflow {tf.__version__} tf.lite.TFLiteConverter.from_keras_model (float32)",
                 "agreement": {"split": "validation", "max_abs_diff_allowed": MAX_ABS_DIFF, **agreement}}
    fingerprint = rewrite_package(package_path, blobs, {"cpu_model": cpu_model})
    log.info("TensorFlow Lite forms written to %s (agreement with Keras on %d validation rows: max |Δp| %.1e); "
             "new fingerprint %s", package_path, agreement["tabular"]["rows"],
             max(a["max_abs_diff"] for a in agreement.values()), fingerprint)
    return fingerprint


def validation_rows(lake_root: str, columns: Sequence[str], max_rows: int = AGREEMENT_MAX_ROWS) -> pd.DataFrame:
    """The first ``max_rows`` rows of the training table's validation split (``columns`` only), read with pyarrow.

    Raises
    ------
    CpuModelError
        The split cannot be read.
    """
    import pyarrow.dataset as ds

    from skyclass import lake, storage

    path = lake.training_split_path(lake_root, "validation")
    try:
        fs, fs_path = storage.filesystem(path)
        dataset = ds.dataset(fs_path, filesystem=fs, format="parquet", exclude_invalid_files=True)
        present = [c for c in columns if c in dataset.schema.names]
        return dataset.head(max_rows, columns=present).to_pandas()
    except (OSError, ValueError, SkyclassError) as err:
        raise CpuModelError(f"cannot read the validation split {path} to check the TensorFlow Lite form against "
                            f"({err}); build the training table first (skyclass table)") from None


def add_cpu_models_from_lake(package_path: str, lake_root: str) -> Optional[str]:
    """:func:`add_cpu_models` checked on the lake's validation split; a failure is logged as an error and the
    package stays Keras-only (what training calls after writing a package).

    Returns
    -------
    str or None
        The package's new fingerprint, or None when no TensorFlow Lite form was written.
    """
    from skyclass.package import ModelPackage

    try:
        package = ModelPackage.load(package_path)
        columns = [*package.features, *(["jpeg"] if package.mode != "tabular" else [])]
        return add_cpu_models(package_path, validation_rows(lake_root, columns))
    except CpuModelError as err:
        log.error("%s. The package stays Keras-only (it scores with Keras); `skyclass package --add-cpu-model %s` "
                  "tries again", err, package_path)
        return None
