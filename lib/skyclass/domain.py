"""In-domain flags: is an object like those the model learned from?

Two tests, in this order, the first that fails names the ``domain`` value (``in`` when both pass):

``outside_magnitudes``
    a magnitude lies outside the training split's coverage in that band: between the ``magnitude_quantiles``
    (default 0.5% and 99.5%) of the band over the training split. Unusable magnitudes (missing, sentinel) are
    outside too.
``far_from_training``
    the distance from the object's standardised features (the package's own features and normalisation) to its
    k-th nearest neighbour in a reference sample of training objects exceeds a threshold: the ``quantile``
    (default 0.99) of the same distance for the reference objects themselves, each leaving itself out.

``domain_score`` is that k-th neighbour distance divided by the threshold: below 1 is as close to the training
objects as 99% (the quantile) of them are to each other; it is computed for every object, also those outside the
magnitudes, so users can choose their own cut.

The reference (a few thousand rows of float32) is stored in the package (``domain_reference.npz``) with the
coverage and threshold in its metadata; scoring computes distances with one matrix product per chunk of rows
(no index structure is needed at this size; ``bench`` measures the cost).
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DOMAIN_IN = "in"
OUTSIDE_MAGNITUDES = "outside_magnitudes"
FAR_FROM_TRAINING = "far_from_training"
DOMAIN_VALUES = (DOMAIN_IN, OUTSIDE_MAGNITUDES, FAR_FROM_TRAINING)
REFERENCE_FILE = "domain_reference.npz"
# Rows of the distance matrix computed at once: 512 x 2,000 float32 is 4 MB.
_CHUNK_ROWS = 512


class DomainError(ValueError):
    """A domain reference cannot be built or does not fit the rows it is asked about."""


@dataclass(frozen=True)
class DomainReference:
    """Magnitude coverage and the nearest-neighbour reference of a package's training split."""

    bands: tuple[str, ...]
    magnitude_low: tuple[float, ...]
    magnitude_high: tuple[float, ...]
    magnitude_quantiles: tuple[float, float]
    features: tuple[str, ...]
    reference: np.ndarray  # (m, F) float32 standardised features of training objects
    k: int
    quantile: float
    threshold: float

    def metadata(self) -> dict:
        """What goes into metadata.json (everything but the reference array)."""
        return {"bands": list(self.bands), "magnitude_low": list(self.magnitude_low),
                "magnitude_high": list(self.magnitude_high), "magnitude_quantiles": list(self.magnitude_quantiles),
                "features": list(self.features), "k": self.k, "quantile": self.quantile,
                "threshold": self.threshold, "reference_rows": int(len(self.reference)), "file": REFERENCE_FILE}

    def reference_bytes(self) -> bytes:
        """The reference sample as ``.npz`` bytes (the package's :data:`REFERENCE_FILE`)."""
        buffer = io.BytesIO()
        np.savez(buffer, reference=self.reference.astype(np.float32))
        return buffer.getvalue()

    @classmethod
    def from_stored(cls, metadata: Mapping, reference_npz: bytes) -> "DomainReference":
        """Rebuild from :meth:`metadata` and :meth:`reference_bytes`.

        Raises
        ------
        DomainError
            A key is missing or the array does not match the features.
        """
        try:
            with np.load(io.BytesIO(reference_npz)) as stored:
                reference = np.asarray(stored["reference"], dtype=np.float32)
            out = cls(bands=tuple(metadata["bands"]), magnitude_low=tuple(map(float, metadata["magnitude_low"])),
                      magnitude_high=tuple(map(float, metadata["magnitude_high"])),
                      magnitude_quantiles=tuple(map(float, metadata["magnitude_quantiles"])),
                      features=tuple(metadata["features"]), reference=reference, k=int(metadata["k"]),
                      quantile=float(metadata["quantile"]), threshold=float(metadata["threshold"]))
        except (KeyError, ValueError, OSError) as err:
            raise DomainError(f"the package's domain reference is unreadable ({err}); retrain the package") from None
        if reference.ndim != 2 or reference.shape[1] != len(out.features):
            raise DomainError(f"domain reference of shape {reference.shape} does not match the "
                              f"{len(out.features)} features; retrain the package")
        return out

    def knn_distance(self, x: np.ndarray) -> np.ndarray:
        """Distance from each row of standardised features ``x`` to its k-th nearest reference object."""
        return kth_neighbour_distance(x, self.reference, self.k)

    def assess(self, frame: pd.DataFrame, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``domain`` (object array of :data:`DOMAIN_VALUES`) and ``domain_score`` (float32) of a batch.

        Parameters
        ----------
        frame : pandas.DataFrame
            Has the magnitude columns :attr:`bands`.
        x : numpy.ndarray
            ``(n, F)`` standardised features in the order of :attr:`features` (what the model was given).

        Raises
        ------
        DomainError
            ``x`` has another number of features, or ``frame`` lacks a band.
        """
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise DomainError(f"domain check got {x.shape[1] if x.ndim == 2 else '?'} features, the reference has "
                              f"{len(self.features)} ({', '.join(self.features)})")
        missing = [b for b in self.bands if b not in frame.columns]
        if missing:
            raise DomainError(f"domain check needs the magnitude column(s) {', '.join(missing)}")
        inside = magnitudes_inside(frame, self.bands, self.magnitude_low, self.magnitude_high)
        score = (self.knn_distance(x) / self.threshold).astype(np.float32) if len(x) else np.zeros(0, np.float32)
        domain = np.where(~inside, OUTSIDE_MAGNITUDES, np.where(score > 1.0, FAR_FROM_TRAINING, DOMAIN_IN))
        return domain.astype(object), score


def magnitudes_inside(frame: pd.DataFrame, bands: Sequence[str], low: Sequence[float],
                      high: Sequence[float]) -> np.ndarray:
    """Boolean per row: every band's magnitude is finite and within [low, high] of that band."""
    inside = np.ones(len(frame), dtype=bool)
    for band, lo, hi in zip(bands, low, high):
        values = pd.to_numeric(frame[band], errors="coerce").to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            inside &= np.isfinite(values) & (values >= lo) & (values <= hi)
    return inside


def kth_neighbour_distance(x: np.ndarray, reference: np.ndarray, k: int, *, leave_one_out: bool = False) -> np.ndarray:
    """Euclidean distance from each row of ``x`` to its k-th nearest row of ``reference``.

    Parameters
    ----------
    x, reference : numpy.ndarray
        ``(n, F)`` and ``(m, F)``.
    k : int
        1 = the nearest.
    leave_one_out : bool
        ``x`` IS ``reference`` (row i of both is the same object): the object itself is not its own neighbour.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` float64.

    Raises
    ------
    DomainError
        ``k`` is not in 1..m (m - 1 with ``leave_one_out``).
    """
    # float32: the distance matrix is the cost of the domain check, and standardised features need no more digits.
    x = np.asarray(x, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    available = len(reference) - (1 if leave_one_out else 0)
    if not 1 <= k <= available:
        raise DomainError(f"k = {k} nearest neighbours needs at least {k + (1 if leave_one_out else 0)} reference "
                          f"objects, the reference has {len(reference)}; lower domain.k")
    ref_sq = (reference ** 2).sum(axis=1)
    out = np.empty(len(x))
    # The object itself sits at distance 0, the smallest: the k-th other neighbour is then index k, not k - 1.
    kth = k if leave_one_out else k - 1
    for start in range(0, len(x), _CHUNK_ROWS):
        q = x[start:start + _CHUNK_ROWS]
        # |q - r|^2 = |q|^2 + |r|^2 - 2 q.r, assembled in place: the (chunk x m) matrix is the memory traffic.
        d2 = q @ reference.T
        d2 *= -2.0
        d2 += ref_sq[None, :]
        d2 += (q ** 2).sum(axis=1)[:, None]
        if leave_one_out:
            rows = np.arange(len(q))
            d2[rows, start + rows] = -1.0  # certainly the smallest, so it takes the self slot
        out[start:start + len(q)] = np.partition(d2, kth, axis=1)[:, kth]
    return np.sqrt(np.maximum(out, 0.0)).astype(np.float64)


def build_domain_reference(frame: pd.DataFrame, x: np.ndarray, features: Sequence[str], *,
                           bands: Sequence[str], magnitude_low: Sequence[float], magnitude_high: Sequence[float],
                           magnitude_quantiles: tuple[float, float], k: int, quantile: float,
                           reference_rows: int, seed: int = 0) -> DomainReference:
    """A domain reference from a sample of training-split rows.

    Parameters
    ----------
    frame : pandas.DataFrame
        Training rows (not used beyond their count here; kept for symmetry with :meth:`DomainReference.assess`).
    x : numpy.ndarray
        ``(n, F)`` standardised features of those rows.
    features : sequence of str
    bands, magnitude_low, magnitude_high, magnitude_quantiles
        The magnitude coverage, computed over the whole training split by the caller.
    k : int
    quantile : float
        Of the reference objects' own (leave-one-out) k-th neighbour distances: the threshold.
    reference_rows : int
        At most this many rows are kept (a random subset).
    seed : int

    Returns
    -------
    DomainReference

    Raises
    ------
    DomainError
        Too few rows for k neighbours, or a quantile outside (0, 1).
    """
    if not 0 < quantile < 1:
        raise DomainError(f"domain.quantile must lie strictly between 0 and 1, got {quantile}")
    x = np.asarray(x, dtype=np.float32)
    if len(x) > reference_rows:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), reference_rows, replace=False))]
    own = kth_neighbour_distance(x, x, k, leave_one_out=True)
    threshold = float(np.quantile(own, quantile))
    if threshold <= 0:
        raise DomainError(f"the {quantile} quantile of the training objects' {k}-th neighbour distances is 0 "
                          "(duplicated rows?); raise domain.k")
    log.info("domain reference: %d training objects, k = %d, threshold %.4f (%.3g quantile of their own distances)",
             len(x), k, threshold, quantile)
    return DomainReference(bands=tuple(bands), magnitude_low=tuple(float(v) for v in magnitude_low),
                           magnitude_high=tuple(float(v) for v in magnitude_high),
                           magnitude_quantiles=(float(magnitude_quantiles[0]), float(magnitude_quantiles[1])),
                           features=tuple(features), reference=x, k=int(k), quantile=float(quantile),
                           threshold=threshold)


def domain_accuracy(domain: np.ndarray, correct: np.ndarray) -> dict:
    """Accuracy in and out of domain, and the share kept in domain, of a labelled set.

    Returns
    -------
    dict
        ``rows``, ``in_share``, ``in_accuracy``, ``out_accuracy`` (None when a side is empty), ``reasons``
        (rows per domain value).
    """
    domain = np.asarray(domain, dtype=object)
    correct = np.asarray(correct, dtype=bool)
    inside = domain == DOMAIN_IN
    n = len(domain)
    return {"rows": int(n), "in_share": float(inside.mean()) if n else None,
            "in_accuracy": float(correct[inside].mean()) if inside.any() else None,
            "out_accuracy": float(correct[~inside].mean()) if (~inside).any() else None,
            "reasons": {value: int((domain == value).sum()) for value in DOMAIN_VALUES}}


def optional_reference(metadata: Mapping, read_file) -> Optional[DomainReference]:
    """The package's domain reference, or None for a package written before domain references existed.

    ``read_file(name)`` returns the bytes of a package file.
    """
    stored = metadata.get("domain")
    if not stored:
        return None
    return DomainReference.from_stored(stored, read_file(stored.get("file", REFERENCE_FILE)))


def domain_reference_from_training(spark, train_path: str, spec, domain_conf) -> Optional[DomainReference]:
    """Build the domain reference of a package from the training split of the training table.

    Magnitude coverage comes from Spark's ``approxQuantile`` over the whole split (relative error 1e-4); the
    nearest-neighbour reference is a seeded random sample of ``domain.reference_rows`` rows (the only rows brought
    to the driver), standardised with the package's own normalisation.

    Parameters
    ----------
    spark : SparkSession
    train_path : str
        The training split folder.
    spec : skyclass.input_pipeline.InputSpec
        The package's features and normalisation.
    domain_conf : skyclass.config.DomainConfig

    Returns
    -------
    DomainReference or None
        None when no training row has usable magnitudes in every band (an image-only package trained on a
        labels-only catalog): there is no photometric domain to compare with, and the package's predictions
        carry no domain flag, as those of a package from before domain flags.

    Raises
    ------
    DomainError
        The split has too few rows or none of the magnitude columns.
    """
    from skyclass import storage
    from skyclass.features import standardise
    from skyclass.lake import MAGNITUDES

    frame = spark.read.parquet(storage.spark_uri(train_path))
    bands = [b for b in MAGNITUDES if b in frame.columns]
    if not bands:
        raise DomainError(f"the training split at {train_path} has none of the magnitude columns {MAGNITUDES}")
    low_q, high_q = (float(q) for q in domain_conf.magnitude_quantiles)
    clean = frame
    for band in bands:
        clean = clean.where(f"{band} IS NOT NULL AND NOT isnan({band}) AND {band} > 0 AND {band} < 40")
    quantiles = clean.approxQuantile(bands, [low_q, high_q], 1e-4)
    if any(len(q) < 2 for q in quantiles):
        log.info("no in-domain reference: no row of the training split at %s has usable magnitudes in %s "
                 "(a labels-only catalog); predictions of this package carry no domain flag", train_path,
                 ", ".join(bands))
        return None
    n = frame.count()
    fraction = min(1.0, 1.5 * domain_conf.reference_rows / max(n, 1))
    sample = (frame.select(*dict.fromkeys([*bands, *spec.features])).sample(fraction=fraction, seed=0)
              .limit(domain_conf.reference_rows).toPandas())
    x = standardise(sample, spec.features, spec.normalisation)
    return build_domain_reference(sample, x, spec.features, bands=bands,
                                  magnitude_low=[q[0] for q in quantiles], magnitude_high=[q[1] for q in quantiles],
                                  magnitude_quantiles=(low_q, high_q), k=domain_conf.k,
                                  quantile=domain_conf.quantile, reference_rows=domain_conf.reference_rows)
