"""In-domain flags: is an object like those the model learned from, in a region its training labels resolve?

Three tests, in this order, the first that fails names the ``domain`` value (``in`` when all pass):

``outside_magnitudes``
    a magnitude lies outside the training split's coverage in that band: between the ``magnitude_quantiles``
    (default 0.5% and 99.5%) of the band over the training split. Unusable magnitudes (missing, sentinel) are
    outside too.
``far_from_training``
    the distance from the object's standardised features (the package's own features and normalisation) to its
    k-th nearest neighbour in a reference sample of training objects exceeds a threshold: the ``quantile``
    (default 0.99) of the same distance for the reference objects themselves, each leaving itself out.
``mixed_neighbourhood``
    among those k nearest training objects, the most common class holds less than ``min_purity`` (default 0.7) of
    them: the object lies where the training set itself mixes classes, so the labels there cannot settle what it is
    (with k = 10, fewer than 7 of its 10 nearest training objects share one class). This is the k-nearest-neighbour
    estimate of the best accuracy any classifier can reach at that point (Cover & Hart 1967); it is what separates
    the faint objects (r > 20) a model gets wrong, where colours of stars, QSOs and galaxies overlap, from those it
    gets right, which the distance alone does not (bench/accuracy.py measures both). A package written before the
    reference carried labels skips this test.

``domain_score`` is that k-th neighbour distance divided by the threshold: below 1 is as close to the training
objects as 99% (the quantile) of them are to each other; it is computed for every object, also those outside the
magnitudes, so users can choose their own cut.

The reference (a few thousand rows of float32 and their training labels) is stored in the package
(``domain_reference.npz``) with the coverage, threshold and ``min_purity`` in its metadata; scoring finds the k
nearest with one matrix product per chunk of rows, against the reference augmented once so that the product is
already the squared distance up to a per-row constant, one ``np.partition`` for the k-th value and one product of
the "nearer than that" mask with the labels' one-hot matrix for the class counts (no index structure is needed at
this size; ``bench`` measures the cost).
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
MIXED_NEIGHBOURHOOD = "mixed_neighbourhood"
DOMAIN_VALUES = (DOMAIN_IN, OUTSIDE_MAGNITUDES, FAR_FROM_TRAINING, MIXED_NEIGHBOURHOOD)
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
    # Training label (class index) of each reference row, and the least share of the k nearest that the most common
    # class must hold; None (a package from before labelled references): no mixed_neighbourhood test.
    labels: Optional[np.ndarray] = None
    min_purity: Optional[float] = None

    def metadata(self) -> dict:
        """What goes into metadata.json (everything but the reference array and labels)."""
        return {"bands": list(self.bands), "magnitude_low": list(self.magnitude_low),
                "magnitude_high": list(self.magnitude_high), "magnitude_quantiles": list(self.magnitude_quantiles),
                "features": list(self.features), "k": self.k, "quantile": self.quantile,
                "threshold": self.threshold, "reference_rows": int(len(self.reference)), "file": REFERENCE_FILE,
                "min_purity": self.min_purity, "labelled": self.labels is not None}

    def reference_bytes(self) -> bytes:
        """The reference sample (and its labels) as ``.npz`` bytes (the package's :data:`REFERENCE_FILE`)."""
        buffer = io.BytesIO()
        arrays = {"reference": self.reference.astype(np.float32)}
        if self.labels is not None:
            arrays["labels"] = np.asarray(self.labels, dtype=np.int32)
        np.savez(buffer, **arrays)
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
                labels = np.asarray(stored["labels"], dtype=np.int32) if "labels" in stored.files else None
            min_purity = metadata.get("min_purity")
            out = cls(bands=tuple(metadata["bands"]), magnitude_low=tuple(map(float, metadata["magnitude_low"])),
                      magnitude_high=tuple(map(float, metadata["magnitude_high"])),
                      magnitude_quantiles=tuple(map(float, metadata["magnitude_quantiles"])),
                      features=tuple(metadata["features"]), reference=reference, k=int(metadata["k"]),
                      quantile=float(metadata["quantile"]), threshold=float(metadata["threshold"]),
                      labels=labels, min_purity=None if min_purity is None else float(min_purity))
        except (KeyError, ValueError, OSError) as err:
            raise DomainError(f"the package's domain reference is unreadable ({err}); retrain the package") from None
        if reference.ndim != 2 or reference.shape[1] != len(out.features):
            raise DomainError(f"domain reference of shape {reference.shape} does not match the "
                              f"{len(out.features)} features; retrain the package")
        if labels is not None and labels.shape != (len(reference),):
            raise DomainError(f"domain reference has {len(reference)} rows but {labels.size} labels; retrain the "
                              "package")
        return out

    @property
    def _search(self) -> "_NeighbourSearch":
        # Built once per reference (a worker scores many batches against the same one); frozen dataclass, hence
        # object.__setattr__.
        cached = self.__dict__.get("_search_cache")
        if cached is None:
            cached = _NeighbourSearch(self.reference, self.labels)
            object.__setattr__(self, "_search_cache", cached)
        return cached

    def knn_distance(self, x: np.ndarray) -> np.ndarray:
        """Distance from each row of standardised features ``x`` to its k-th nearest reference object."""
        return self.neighbourhood(x)[0]

    def neighbourhood(self, x: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """k-th neighbour distance and neighbourhood purity of each row of standardised features ``x``.

        Returns
        -------
        tuple of numpy.ndarray
            ``(n,)`` distances to the k-th nearest reference object, and ``(n,)`` the share of those k nearest
            that the most common training class holds (None when the reference carries no labels).
        """
        distance, counts = self._search.query(x, self.k)
        purity = None if counts is None else counts.max(axis=1) / counts.sum(axis=1)
        return distance, purity

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
        if not len(x):
            return np.zeros(0, dtype=object), np.zeros(0, np.float32)
        distance, purity = self.neighbourhood(x)
        score = (distance / self.threshold).astype(np.float32)
        mixed = np.zeros(len(x), dtype=bool)
        if purity is not None and self.min_purity is not None:
            # The tolerance keeps an exact share such as 7/10 against min_purity 0.7 on the in side.
            mixed = purity < self.min_purity - 1e-6
        domain = np.where(~inside, OUTSIDE_MAGNITUDES, np.where(score > 1.0, FAR_FROM_TRAINING,
                                                                np.where(mixed, MIXED_NEIGHBOURHOOD, DOMAIN_IN)))
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


class _NeighbourSearch:
    """Brute-force k-nearest search against a fixed reference, prepared once.

    The reference is augmented to ``[-2 r, |r|^2]`` so that ``[q, 1] @ aug.T`` is ``|q - r|^2 - |q|^2`` in one BLAS
    call: the order along a row is that of the distances (``|q|^2`` is one constant per row, added back to the k-th
    value only), so no pass over the (chunk x m) matrix is spent assembling distances. The k-th value comes from
    ``np.partition`` (half the time of ``argpartition``, which the indices would need); the class counts of the k
    nearest are then one comparison with that value and one product with the labels' one-hot matrix.
    """

    def __init__(self, reference: np.ndarray, labels: Optional[np.ndarray] = None):
        reference = np.asarray(reference, dtype=np.float32)
        self.m = len(reference)
        self.augmented = np.ascontiguousarray(
            np.concatenate([-2.0 * reference, (reference.astype(np.float64) ** 2).sum(axis=1, keepdims=True)
                            .astype(np.float32)], axis=1).T)
        self.one_hot = None
        if labels is not None:
            classes = np.unique(labels)
            self.one_hot = (np.asarray(labels)[:, None] == classes[None, :]).astype(np.float32)

    def query(self, x: np.ndarray, k: int, leave_one_out: bool = False) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """k-th neighbour distance (n,) float64 and, with labels, the class counts (n, classes) of the k nearest."""
        x = np.asarray(x, dtype=np.float32)
        available = self.m - (1 if leave_one_out else 0)
        if not 1 <= k <= available:
            raise DomainError(f"k = {k} nearest neighbours needs at least {k + (1 if leave_one_out else 0)} "
                              f"reference objects, the reference has {self.m}; lower domain.k")
        # The object itself sits at distance 0, the smallest: with leave_one_out the k-th OTHER neighbour is at
        # index k.
        kth = k if leave_one_out else k - 1
        distance = np.empty(len(x))
        counts = None if self.one_hot is None else np.empty((len(x), self.one_hot.shape[1]), np.float32)
        for start in range(0, len(x), _CHUNK_ROWS):
            q = x[start:start + _CHUNK_ROWS]
            partial = np.concatenate([q, np.ones((len(q), 1), np.float32)], axis=1) @ self.augmented
            if leave_one_out:
                rows = np.arange(len(q))
                partial[rows, start + rows] = -np.inf  # certainly the smallest, so it takes the self slot
            kth_value = np.partition(partial, kth, axis=1)[:, kth]
            distance[start:start + len(q)] = kth_value.astype(np.float64) + (q.astype(np.float64) ** 2).sum(axis=1)
            if counts is not None:
                # Rows at most the k-th value are the k nearest (more only on exact ties of distance).
                near = (partial <= kth_value[:, None]) & (partial > -np.inf)
                counts[start:start + len(q)] = near.astype(np.float32) @ self.one_hot
        return np.sqrt(np.maximum(distance, 0.0)), counts


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
    return _NeighbourSearch(reference).query(x, k, leave_one_out)[0]


def build_domain_reference(frame: pd.DataFrame, x: np.ndarray, features: Sequence[str], *,
                           bands: Sequence[str], magnitude_low: Sequence[float], magnitude_high: Sequence[float],
                           magnitude_quantiles: tuple[float, float], k: int, quantile: float,
                           reference_rows: int, seed: int = 0, labels: Optional[np.ndarray] = None,
                           min_purity: Optional[float] = None) -> DomainReference:
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
    labels : numpy.ndarray, optional
        ``(n,)`` class index of each row: enables the ``mixed_neighbourhood`` test.
    min_purity : float, optional
        Least share of the k nearest reference objects the most common class must hold (with ``labels``).

    Returns
    -------
    DomainReference

    Raises
    ------
    DomainError
        Too few rows for k neighbours, a quantile outside (0, 1), or labels not one per row.
    """
    if not 0 < quantile < 1:
        raise DomainError(f"domain.quantile must lie strictly between 0 and 1, got {quantile}")
    x = np.asarray(x, dtype=np.float32)
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int32)
        if labels.shape != (len(x),):
            raise DomainError(f"domain reference: {labels.size} labels for {len(x)} rows")
    if min_purity is not None and not 0 <= min_purity <= 1:
        raise DomainError(f"domain.min_purity must lie in [0, 1], got {min_purity}")
    if len(x) > reference_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), reference_rows, replace=False))
        x = x[keep]
        labels = labels[keep] if labels is not None else None
    own = kth_neighbour_distance(x, x, k, leave_one_out=True)
    threshold = float(np.quantile(own, quantile))
    if threshold <= 0:
        raise DomainError(f"the {quantile} quantile of the training objects' {k}-th neighbour distances is 0 "
                          "(duplicated rows?); raise domain.k")
    log.info("domain reference: %d training objects, k = %d, threshold %.4f (%.3g quantile of their own distances), "
             "min_purity %s", len(x), k, threshold, quantile, min_purity if labels is not None else "n/a (no labels)")
    return DomainReference(bands=tuple(bands), magnitude_low=tuple(float(v) for v in magnitude_low),
                           magnitude_high=tuple(float(v) for v in magnitude_high),
                           magnitude_quantiles=(float(magnitude_quantiles[0]), float(magnitude_quantiles[1])),
                           features=tuple(features), reference=x, k=int(k), quantile=float(quantile),
                           threshold=threshold, labels=labels,
                           min_purity=float(min_purity) if labels is not None and min_purity is not None else None)


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
    to the driver), standardised with the package's own normalisation, with their labels (``label``) for the
    ``mixed_neighbourhood`` test at ``domain.min_purity``.

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
    labelled = "label" in frame.columns
    sample = (frame.select(*dict.fromkeys([*bands, *spec.features, *(["label"] if labelled else [])]))
              .sample(fraction=fraction, seed=0).limit(domain_conf.reference_rows).toPandas())
    x = standardise(sample, spec.features, spec.normalisation)
    labels = sample["label"].to_numpy(dtype=np.int32) if labelled else None
    return build_domain_reference(sample, x, spec.features, bands=bands,
                                  magnitude_low=[q[0] for q in quantiles], magnitude_high=[q[1] for q in quantiles],
                                  magnitude_quantiles=(low_q, high_q), k=domain_conf.k,
                                  quantile=domain_conf.quantile, reference_rows=domain_conf.reference_rows,
                                  labels=labels, min_purity=domain_conf.min_purity)
