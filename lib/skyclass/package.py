"""Model packages: ``<models>/<version>/`` with ``model.keras`` (the configured mode), ``tabular.keras`` (always:
scoring falls back to it for objects without a usable cutout), ``metadata.json`` and ``curves.png``.

A package is written to a hidden staging folder and renamed into place, so :func:`latest_package` can never pick
a half-written one. Packages live on a file system every scoring executor can read (local disk here, a shared mount
on a cluster).

Identity: a package is identified by its *fingerprint*, not its name. :func:`package_fingerprint` hashes both weight
files and the metadata (without the fingerprint itself); it is computed when the package is written, stored in
``metadata.json`` and checked on every :meth:`ModelPackage.load`, so retraining under the same ``train.version``
gives a new fingerprint (scoring then rescores), and a package whose files were changed after it was written is
refused. "Newest" means the newest ``created_at`` (:func:`latest_package`), never the greatest name.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping, Optional

from skyclass.errors import SkyclassError

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
TABULAR_MODEL_FILE = "tabular.keras"
METADATA_FILE = "metadata.json"
CURVES_FILE = "curves.png"
REQUIRED_FILES = (MODEL_FILE, TABULAR_MODEL_FILE, METADATA_FILE)
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Hidden names: never listed as packages.
STAGING_PREFIX = ".staging-"
PREVIOUS_PREFIX = ".previous-"
# Training checkpoints default to <models>/<version>.checkpoints/ (see skyclass.train).
CHECKPOINTS_SUFFIX = ".checkpoints"
FINGERPRINT_KEY = "fingerprint"
# What a fingerprint covers besides the metadata: the weights. curves.png is drawn from the metadata and left out.
FINGERPRINTED_FILES = (MODEL_FILE, TABULAR_MODEL_FILE)
# TensorFlow Lite forms of the two models (skyclass.inference.add_cpu_models), when the package has them; metadata's
# CPU_MODEL_KEY lists them, and the fingerprint then covers them too.
CPU_MODEL_FILES = {"main": "model.tflite", "tabular": "tabular.tflite"}
CPU_MODEL_KEY = "cpu_model"
# Files a package may carry (skyclass.domain's reference sample); fingerprinted when present, so packages without
# them keep the fingerprint they always had.
OPTIONAL_FILES = ("domain_reference.npz",)
# Changing how fingerprints are computed changes this tag, so old and new fingerprints can never be confused.
_FINGERPRINT_SCHEME = b"skyclass-package-fingerprint-v1\n"
_HASH_CHUNK_BYTES = 1 << 20
# Packages (by path) whose missing fingerprint was already logged by this process.
_LOGGED_WITHOUT_FINGERPRINT: set[str] = set()


class PackageError(SkyclassError):
    """A model package is missing, incomplete or cannot be written."""


def check_version_name(version: str) -> str:
    """Return ``version`` if it is usable as a package folder name.

    Raises
    ------
    PackageError
        Empty, hidden (leading dot), containing a path separator or other characters outside ``[A-Za-z0-9_.-]``.
    """
    if not isinstance(version, str) or not VERSION_PATTERN.match(version) or version.endswith(CHECKPOINTS_SUFFIX):
        raise PackageError(f"model version {version!r} is not a usable folder name: use letters, digits, '_', '-' "
                           "and '.', starting with a letter or digit (e.g. --set train.version=20240101-120000)")
    return version


def keras_model_bytes(model) -> bytes:
    """A Keras model serialised in the ``.keras`` format, as bytes (so it can travel from a Horovod process)."""
    with tempfile.TemporaryDirectory(prefix="skyclass-model-") as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as fh:
            return fh.read()


def code_version() -> str:
    """``skyclass.__version__``, plus ``git describe`` of the checkout when there is one."""
    from skyclass import __version__
    from skyclass.config import REPO_ROOT

    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=REPO_ROOT,
                                   capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+git.{described}" if described else __version__


def write_package(models_dir: str, version: str, *, model_keras: bytes, tabular_keras: bytes,
                  metadata: Mapping, simulated: bool = False, extra_files: Optional[Mapping[str, bytes]] = None) -> str:
    """Write a complete package to a staging folder under ``models_dir``, then rename it to ``<version>``.

    An existing package of the same version is replaced (it stays whole until the new one is in place).

    Parameters
    ----------
    models_dir : str
        Local folder holding packages.
    version : str
        Package name (see :func:`check_version_name`).
    model_keras, tabular_keras : bytes
        ``.keras`` files of the main and the tabular model (the same bytes for a tabular package).
    metadata : mapping
        JSON-serialisable; ``version`` and ``created_at`` are set here. ``history`` (and ``tabular_history``) are
        drawn to ``curves.png``.
    simulated : bool
        The training images were simulated: the curves carry a warning banner.
    extra_files : mapping, optional
        Further files by name, each one of :data:`OPTIONAL_FILES` (fingerprinted with the weights).

    Returns
    -------
    str
        Path of the package.

    Raises
    ------
    PackageError
        Bad version name, or the package could not be moved into place.
    """
    check_version_name(version)
    os.makedirs(models_dir, exist_ok=True)
    final = os.path.join(models_dir, version)
    staging = os.path.join(models_dir, f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
    os.makedirs(staging)
    try:
        meta = {k: v for k, v in metadata.items() if k != FINGERPRINT_KEY}
        meta["version"] = version
        meta.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="microseconds"))
        # Through JSON and back: the fingerprint must be of exactly what load() will read (tuples become lists,
        # numpy scalars plain numbers).
        meta = json.loads(json.dumps(meta, default=_json_default))
        unknown = sorted(set(extra_files or {}) - set(OPTIONAL_FILES))
        if unknown:
            raise PackageError(f"cannot write {unknown} into a package: only {', '.join(OPTIONAL_FILES)} may be added")
        for name, blob in ((MODEL_FILE, model_keras), (TABULAR_MODEL_FILE, tabular_keras),
                           *sorted((extra_files or {}).items())):
            with open(os.path.join(staging, name), "wb") as fh:
                fh.write(blob)
        meta[FINGERPRINT_KEY] = package_fingerprint(staging, meta)
        with open(os.path.join(staging, METADATA_FILE), "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)
        _write_curves(os.path.join(staging, CURVES_FILE), meta, simulated=simulated)
        _swap_into_place(staging, final, models_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("model package %s written (fingerprint %s)", final, meta[FINGERPRINT_KEY])
    return final


def package_fingerprint(path: str, metadata: Mapping) -> str:
    """The fingerprint of the package files in ``path`` with ``metadata``: ``sha256:<hex>``.

    A SHA-256 over each weight file's own SHA-256 (by name) and the canonical JSON of the metadata without its
    ``fingerprint`` key (sorted keys, no spaces), so any change of weights or metadata changes it, and rewriting the
    same metadata with different indentation does not.

    Parameters
    ----------
    path : str
        Package (or staging) folder holding :data:`FINGERPRINTED_FILES`.
    metadata : mapping
        JSON-serialisable metadata as stored in ``metadata.json``.

    Returns
    -------
    str

    Raises
    ------
    PackageError
        A weight file cannot be read.
    """
    digest = hashlib.sha256(_FINGERPRINT_SCHEME)
    present = [name for name in OPTIONAL_FILES if os.path.isfile(os.path.join(path, name))]
    for name in (*FINGERPRINTED_FILES, *present, *_cpu_model_files(metadata)):
        file_digest = hashlib.sha256()
        try:
            with open(os.path.join(path, name), "rb") as fh:
                for block in iter(lambda: fh.read(_HASH_CHUNK_BYTES), b""):
                    file_digest.update(block)
        except OSError as err:
            raise PackageError(f"cannot read {os.path.join(path, name)} to fingerprint the package ({err})") from None
        digest.update(f"{name}\0{file_digest.hexdigest()}\n".encode("utf-8"))
    described = {k: v for k, v in metadata.items() if k != FINGERPRINT_KEY}
    digest.update(json.dumps(described, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8"))
    return f"sha256:{digest.hexdigest()}"


def _cpu_model_files(metadata: Mapping) -> tuple[str, ...]:
    # Sorted: the order of the hash must not depend on how metadata.json lists them. Packages without CPU forms
    # hash exactly as before they existed.
    files = (metadata.get(CPU_MODEL_KEY) or {}).get("files") or {}
    return tuple(sorted(set(files.values())))


def rewrite_package(path: str, files: Mapping[str, bytes], metadata_update: Mapping) -> str:
    """Add files to an existing package and update its metadata, then refingerprint it; swapped in whole.

    The package is copied to a staging folder beside it, changed there and renamed into place (the old one stays
    whole until then), like :func:`write_package`.

    Parameters
    ----------
    path : str
        A complete package folder.
    files : mapping of str to bytes
        File name in the package -> content (replaced if present).
    metadata_update : mapping
        Keys set in ``metadata.json`` (``version`` and ``created_at`` stay).

    Returns
    -------
    str
        The package's new fingerprint.

    Raises
    ------
    PackageError
        ``path`` is not a complete package, or the new one could not be moved into place.
    """
    package = ModelPackage.load(path)
    models_dir, version = os.path.split(os.path.abspath(path))
    staging = os.path.join(models_dir, f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
    shutil.copytree(path, staging)
    try:
        for name, blob in files.items():
            with open(os.path.join(staging, name), "wb") as fh:
                fh.write(blob)
        meta = {k: v for k, v in package.metadata.items() if k != FINGERPRINT_KEY}
        meta.update(metadata_update)
        meta = json.loads(json.dumps(meta, default=_json_default))
        meta[FINGERPRINT_KEY] = package_fingerprint(staging, meta)
        with open(os.path.join(staging, METADATA_FILE), "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)
        _swap_into_place(staging, os.path.abspath(path), models_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("model package %s rewritten (fingerprint %s)", path, meta[FINGERPRINT_KEY])
    return meta[FINGERPRINT_KEY]


def _json_default(value):
    # numpy scalars from Keras logs
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_curves(path: str, meta: Mapping, *, simulated: bool) -> None:
    from skyclass.plots import plot_training_curves

    curves = {k: v for k, v in (meta.get("history") or {}).items() if v}
    if meta.get("mode") != "tabular":
        # Same panels, distinct colours: "tabular_loss" pairs with "val_tabular_loss" like "loss" with "val_loss".
        for key, values in (meta.get("tabular_history") or {}).items():
            if values and key not in ("lr", "learning_rate"):
                prefix = "val_" if key.startswith("val_") else ""
                curves[f"{prefix}tabular_{key.removeprefix('val_')}"] = values
    if not curves:
        log.warning("no training history to draw; %s not written", path)
        return
    title = f"skyclass {meta.get('version')} — {meta.get('mode')} ({meta.get('backbone')})"
    plot_training_curves(curves, path, title=title, simulated=simulated)


def _swap_into_place(staging: str, final: str, models_dir: str) -> None:
    previous = None
    if os.path.exists(final):
        previous = os.path.join(models_dir, f"{PREVIOUS_PREFIX}{os.path.basename(final)}-{uuid.uuid4().hex[:8]}")
        os.rename(final, previous)
    try:
        os.rename(staging, final)
    except OSError as err:
        if previous:
            os.rename(previous, final)
        raise PackageError(f"could not move the new model package into {final} ({err}); the previous package, if "
                           "any, is unchanged") from err
    if previous:
        shutil.rmtree(previous, ignore_errors=True)


def list_packages(models_dir: str) -> list[str]:
    """Paths of the complete packages under ``models_dir``, oldest first by ``created_at`` (see :func:`created_at`).

    Staging and replaced folders (hidden names), checkpoint folders and folders missing a required file are left
    out. Equal creation times are ordered by folder name, so the order never depends on the file system.
    """
    try:
        names = os.listdir(models_dir)
    except FileNotFoundError:
        return []
    packages = []
    for name in sorted(names):
        path = os.path.join(models_dir, name)
        if name.startswith(".") or name.endswith(CHECKPOINTS_SUFFIX) or not os.path.isdir(path):
            continue
        if all(os.path.isfile(os.path.join(path, f)) for f in REQUIRED_FILES):
            packages.append(path)
    return sorted(packages, key=lambda p: (created_at(p), os.path.basename(p)))


def created_at(path: str) -> datetime:
    """When the package at ``path`` was written (its metadata's ``created_at``, as an aware UTC datetime).

    A package whose metadata is unreadable or lacks a parsable ``created_at`` counts as the oldest possible
    (logged), so it is never mistaken for the newest.
    """
    try:
        with open(os.path.join(path, METADATA_FILE), encoding="utf-8") as fh:
            text = json.load(fh)["created_at"]
        stamp = datetime.fromisoformat(str(text))
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("model package %s has no readable created_at (%s: %s); it counts as the oldest package", path,
                    type(err).__name__, err)
        return datetime.min.replace(tzinfo=timezone.utc)
    # A naive time is taken as UTC, which is what write_package writes.
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def latest_package(models_dir: str) -> str:
    """Path of the newest complete package: the latest ``created_at`` (ties: the greatest folder name).

    Names are not compared: ``v2`` must not outrank a package trained later under a timestamp name.

    Raises
    ------
    PackageError
        No package under ``models_dir``.
    """
    packages = list_packages(models_dir)
    if not packages:
        raise PackageError(f"no model package under {models_dir}; train one first with `skyclass train` "
                           "(or point score.model / evaluate.model at a package folder)")
    return packages[-1]


@dataclass(frozen=True)
class ModelPackage:
    """A model package on disk: metadata in memory, models loaded on request."""

    path: str
    metadata: Mapping = field(repr=False)

    @classmethod
    def load(cls, path: str) -> "ModelPackage":
        """Read a package's metadata, check its files are there and match its fingerprint.

        A package without a stored fingerprint (written before fingerprints existed) gets one computed from its
        files, logged once per process.

        Raises
        ------
        PackageError
            ``path`` is not a complete package, or its files no longer match its fingerprint.
        """
        missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(path, f))]
        if missing:
            raise PackageError(f"{path} is not a complete model package (missing {', '.join(missing)}); pass a "
                               "folder written by `skyclass train`, or train a new model")
        with open(os.path.join(path, METADATA_FILE), encoding="utf-8") as fh:
            try:
                metadata = json.load(fh)
            except json.JSONDecodeError as err:
                raise PackageError(f"{path}/{METADATA_FILE} is not valid JSON ({err}); retrain the model") from None
        if not isinstance(metadata, dict):
            raise PackageError(f"{path}/{METADATA_FILE} is not a JSON object; retrain the model")
        computed = package_fingerprint(path, metadata)
        stored = metadata.get(FINGERPRINT_KEY)
        if stored is None:
            # Written before packages had fingerprints: identify it by what its files are now.
            if path not in _LOGGED_WITHOUT_FINGERPRINT:
                _LOGGED_WITHOUT_FINGERPRINT.add(path)
                log.info("model package %s has no fingerprint (written before fingerprints); computed %s from its "
                         "files", path, computed)
            metadata = {**metadata, FINGERPRINT_KEY: computed}
        elif stored != computed:
            raise PackageError(
                f"model package {path} no longer matches its fingerprint: metadata.json says {stored}, its files "
                f"give {computed}, so {', '.join(FINGERPRINTED_FILES)} or {METADATA_FILE} changed after the package "
                "was written. Restore the package or retrain it (skyclass train); never edit a package in place")
        return cls(path=path, metadata=metadata)

    @property
    def version(self) -> str:
        return self.metadata["version"]

    @property
    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the weights and metadata (verified when the package was loaded)."""
        return self.metadata[FINGERPRINT_KEY]

    @property
    def mode(self) -> str:
        return self.metadata["mode"]

    @property
    def backbone(self) -> Optional[str]:
        return self.metadata.get("backbone")

    @property
    def feature_set(self) -> Optional[str]:
        return self.metadata.get("feature_set")

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.metadata["features"])

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.metadata["classes"])

    @property
    def normalisation(self) -> Mapping[str, Mapping[str, float]]:
        return self.metadata["normalisation"]

    @property
    def image_size_px(self) -> int:
        return int(self.metadata["image_size_px"])

    def load_model(self, compile: bool = False):
        """The main model (``model.keras``); uncompiled by default, which is all prediction needs."""
        return _load_keras(os.path.join(self.path, MODEL_FILE), compile)

    def load_tabular_model(self, compile: bool = False):
        """The tabular model (``tabular.keras``), for objects without a usable cutout."""
        return _load_keras(os.path.join(self.path, TABULAR_MODEL_FILE), compile)

    @property
    def has_cpu_model(self) -> bool:
        """The package carries TensorFlow Lite forms of its models (checked by the fingerprint on load)."""
        return bool(_cpu_model_files(self.metadata))

    def read_cpu_model(self, which: str) -> bytes:
        """The TensorFlow Lite form of the ``main`` or ``tabular`` model, as bytes.

        Raises
        ------
        PackageError
            The package has no TensorFlow Lite form.
        """
        files = (self.metadata.get(CPU_MODEL_KEY) or {}).get("files") or {}
        if which not in files:
            raise PackageError(f"model package {self.path} has no TensorFlow Lite form of its {which} model; add "
                               f"one with `skyclass package --add-cpu-model {self.path}`")
        with open(os.path.join(self.path, files[which]), "rb") as fh:
            return fh.read()
    def calibration(self, which: str = "main"):
        """The :class:`skyclass.calibration.Calibration` of the main or the ``tabular`` model (``none`` for a
        package written before calibration)."""
        from skyclass.calibration import Calibration

        return Calibration.from_dict((self.metadata.get("calibration") or {}).get(which))

    def domain_reference(self):
        """The package's :class:`skyclass.domain.DomainReference`, or None (a package from before domain flags)."""
        from skyclass.domain import optional_reference

        def read(name: str) -> bytes:
            with open(os.path.join(self.path, name), "rb") as fh:
                return fh.read()

        return optional_reference(self.metadata, read)


def _load_keras(path: str, compile: bool):
    import tensorflow as tf

    return tf.keras.models.load_model(path, compile=compile)
