"""Model packages: ``<models>/<version>/`` with ``model.keras`` (the configured mode), ``tabular.keras`` (always:
scoring falls back to it for objects without a usable cutout), ``metadata.json`` and ``curves.png``.

A package is written to a hidden staging folder and renamed into place, so :func:`latest_package` can never pick
a half-written one. Packages live on a file system every scoring executor can read (local disk here, a shared mount
on a cluster).
"""
from __future__ import annotations

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
                  metadata: Mapping, simulated: bool = False) -> str:
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
        meta = dict(metadata)
        meta["version"] = version
        meta.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        for name, blob in ((MODEL_FILE, model_keras), (TABULAR_MODEL_FILE, tabular_keras)):
            with open(os.path.join(staging, name), "wb") as fh:
                fh.write(blob)
        with open(os.path.join(staging, METADATA_FILE), "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2, default=_json_default)
        _write_curves(os.path.join(staging, CURVES_FILE), meta, simulated=simulated)
        _swap_into_place(staging, final, models_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("model package %s written", final)
    return final


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
    """Paths of the complete packages under ``models_dir``, oldest first (ordered by version name).

    Staging and replaced folders (hidden names), checkpoint folders and folders missing a required file are left
    out.
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
    return packages


def latest_package(models_dir: str) -> str:
    """Path of the newest complete package (the greatest version name; timestamps sort chronologically).

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
        """Read a package's metadata and check its files are there.

        Raises
        ------
        PackageError
            ``path`` is not a complete package.
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
        return cls(path=path, metadata=metadata)

    @property
    def version(self) -> str:
        return self.metadata["version"]

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


def _load_keras(path: str, compile: bool):
    import tensorflow as tf

    return tf.keras.models.load_model(path, compile=compile)
