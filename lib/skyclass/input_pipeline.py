"""Streaming the training table to Keras: Petastorm reads ``lake/training/<split>/`` row group by row group, a
TransformSpec decodes the cutouts and standardises the features, and tf.data rebatches them into
``({"features": ..., "image": ...}, label)`` batches.

Under Horovod every process reads its own shard. Petastorm's ``make_batch_reader`` shards by *row group* (row
group ``i`` of the dataset goes to shard ``i % shard_count``), so the rows a shard holds are known from the Parquet
footers alone: :func:`shard_row_counts` mirrors Petastorm's assignment so that every process can be told to run the
same number of steps (a process that stops early leaves the others waiting in an allreduce for ever).

Everything here runs in the Horovod processes as well as in the driver: TensorFlow and Petastorm are imported inside
the functions that need them.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from skyclass import storage
from skyclass.features import decode_jpegs, standardise
from skyclass.training_table import TrainingTableError

log = logging.getLogger(__name__)

IMAGE_MODES = ("image", "multimodal")
FEATURE_MODES = ("tabular", "multimodal")
# Each queued result is one decoded row group (~12 MB at 1,000 rows of 64 px uint8 images): keep few in flight.
RESULTS_QUEUE_ROW_GROUPS = 4


@dataclass(frozen=True)
class TrainingStats:
    """Contents of ``training/stats.json`` (statistics of the train split only)."""

    classes: tuple[str, ...]
    normalisation: Mapping[str, Mapping[str, float]]
    label_counts: Mapping[str, int]
    rows: Mapping[str, int]
    image_size_px: int
    created_at: str
    raw: Mapping = field(default_factory=dict, repr=False)


def load_training_stats(stats_path: str) -> TrainingStats:
    """Read ``training/stats.json``.

    Parameters
    ----------
    stats_path : str
        Path of the stats file (``lake.training_stats_path(root)``).

    Returns
    -------
    TrainingStats

    Raises
    ------
    TrainingTableError
        The file is missing or lacks a required key.
    """
    try:
        # Through the storage layer: the lake may be on HDFS or an object store; a training-table swap that a
        # crash interrupted is recovered before the file is read.
        storage.recover_swap(storage.split(stats_path)[0])
        raw = json.loads(storage.read_text(stats_path))
    except FileNotFoundError:
        raise TrainingTableError(f"training statistics {stats_path} do not exist; build the training table first "
                                 "(skyclass table)") from None
    except json.JSONDecodeError as err:
        raise TrainingTableError(f"training statistics {stats_path} are not valid JSON ({err}); rebuild the "
                                 "training table (skyclass table)") from None
    missing = [k for k in ("classes", "features", "label_counts", "rows") if k not in raw]
    if missing:
        raise TrainingTableError(f"training statistics {stats_path} lack {', '.join(missing)}; rebuild the training "
                                 "table (skyclass table)")
    return TrainingStats(
        classes=tuple(raw["classes"]), normalisation=raw["features"],
        label_counts={k: int(v) for k, v in raw["label_counts"].items()},
        rows={k: int(v) for k, v in raw["rows"].items()}, image_size_px=int(raw.get("image_size_px", 64)),
        created_at=str(raw.get("created_at", "")), raw=raw)


def class_weights(label_counts: Mapping[str, int], classes: Sequence[str]) -> dict[int, float]:
    """Balanced class weights ``n / (k * count)`` keyed by label index, so rare classes (QSO) count as much as
    common ones in the loss.

    Parameters
    ----------
    label_counts : mapping of class name to row count in the train split
    classes : sequence of str
        Class names in label-index order.

    Returns
    -------
    dict of int to float
        ``k`` is the number of classes present; an absent class gets weight 1 (it never occurs anyway).

    Raises
    ------
    TrainingTableError
        No class has any rows.
    """
    counts = [int(label_counts.get(name, 0)) for name in classes]
    present = [c for c in counts if c > 0]
    if not present:
        raise TrainingTableError(f"the train split has no labelled rows (label counts {dict(label_counts)}); "
                                 "rebuild the training table")
    total, k = sum(present), len(present)
    return {index: (total / (k * count) if count > 0 else 1.0) for index, count in enumerate(counts)}


def dataset_url(path: str) -> str:
    """Petastorm wants a URL: local paths become ``file://`` URLs, URIs (hdfs://, s3a://, file:) pass unchanged
    (:func:`skyclass.storage.spark_uri`, so Petastorm, Spark and the storage layer name the same place)."""
    return storage.spark_uri(path)


@dataclass(frozen=True)
class RowGroupInfo:
    """One Parquet row group of a split, in Petastorm's order."""

    path: str
    row_group: int
    rows: int
    rows_with_image: int
    # Rows with at least one feature value (None: all of them); what a tabular model that requires features reads.
    rows_with_features: Optional[int] = None


def list_row_groups(split_path: str, feature_columns: Sequence[str] = ()) -> list[RowGroupInfo]:
    """Row groups of a split in the order Petastorm shards them, with row and non-null ``jpeg`` counts.

    Parameters
    ----------
    split_path : str
        Folder (or URL) of one split of the training table.
    feature_columns : sequence of str
        With these, ``rows_with_features`` counts the rows that have a value in at least one of them (the rows minus
        the smallest null count: exact when the rows without photometry miss every feature, as a labels-only
        catalog's rows do).

    Returns
    -------
    list of RowGroupInfo

    Raises
    ------
    TrainingTableError
        The split does not exist or holds no Parquet data.
    """
    import pyarrow.parquet as pq
    from petastorm.etl import dataset_metadata
    from petastorm.fs_utils import get_filesystem_and_path_or_paths, normalize_dir_url

    url = normalize_dir_url(dataset_url(split_path))
    try:
        filesystem, path = get_filesystem_and_path_or_paths(url)
        dataset = pq.ParquetDataset(path, filesystem=filesystem, validate_schema=False)
        # Petastorm's own listing, so the order (and thus the shard of each row group) is the one readers use.
        pieces = dataset_metadata.load_row_groups(dataset)
    except (OSError, ValueError) as err:
        raise TrainingTableError(f"cannot read the training split {split_path} ({err}); build the training table "
                                 "first (skyclass table)") from None
    footers: dict[str, object] = {}
    infos = []
    for piece in pieces:
        if piece.path not in footers:
            with filesystem.open(piece.path) as fh:  # not dataset.fs: deprecated since pyarrow 5
                footers[piece.path] = pq.ParquetFile(fh).metadata
        meta = footers[piece.path]
        group = meta.row_group(piece.row_group)
        rows = group.num_rows
        with_features = (rows - min(_null_count(filesystem, piece, meta, group, c) for c in feature_columns)
                         if feature_columns else None)
        infos.append(RowGroupInfo(piece.path, piece.row_group, rows,
                                  rows - _null_count(filesystem, piece, meta, group, "jpeg"), with_features))
    if not infos:
        raise TrainingTableError(f"the training split {split_path} holds no rows; rebuild the training table")
    return infos


def _null_count(filesystem, piece, meta, group, column: str) -> int:
    names = [meta.schema.column(j).name for j in range(meta.num_columns)]
    if column not in names:
        return group.num_rows
    stats = group.column(names.index(column)).statistics
    if stats is not None and stats.has_null_count:
        return int(stats.null_count)
    # No statistics in the footer (some writers skip them for binary columns): count from the data itself.
    import pyarrow.parquet as pq

    with filesystem.open(piece.path) as fh:
        return int(pq.ParquetFile(fh).read_row_group(piece.row_group, columns=[column]).column(0).null_count)


def shard_plan(row_groups: Sequence[RowGroupInfo], shard_count: int) -> Optional[int]:
    """``shard_count`` when the split can be sharded, None when it has fewer row groups than shards.

    Petastorm refuses to build a shard without row groups; a split that small is read whole by every process
    instead (duplicated work, but the same number of steps everywhere).
    """
    return shard_count if shard_count > 1 and len(row_groups) >= shard_count else None


def shard_row_counts(row_groups: Sequence[RowGroupInfo], shard_count: Optional[int], *,
                     with_image: bool, with_features: bool = False) -> list[int]:
    """Rows each shard yields per pass (``[all rows]`` when not sharded).

    Parameters
    ----------
    row_groups : sequence of RowGroupInfo
        From :func:`list_row_groups`.
    shard_count : int or None
        From :func:`shard_plan`.
    with_image : bool
        Count only rows with a cutout (image modes drop the others).
    with_features : bool
        Count only rows with features (an :class:`InputSpec` with ``require_features`` drops the others); the
        groups must come from :func:`list_row_groups` with ``feature_columns``.
    """
    count = shard_count or 1
    rows = [0] * count
    for index, group in enumerate(row_groups):
        if with_image:
            rows[index % count] += group.rows_with_image
        elif with_features:
            if group.rows_with_features is None:
                raise ValueError("row groups listed without feature_columns cannot count rows with features")
            rows[index % count] += group.rows_with_features
        else:
            rows[index % count] += group.rows
    return rows


def shard_objids(split_path: str, cur_shard: Optional[int], shard_count: Optional[int]) -> np.ndarray:
    """objids one shard reads in one pass, in reading order (for checking that shards are disjoint and complete).

    Parameters
    ----------
    split_path : str
    cur_shard, shard_count : int or None
        As passed to ``make_batch_reader`` (``hvd.rank()``, ``hvd.size()``); None reads everything.

    Returns
    -------
    numpy.ndarray of int64
    """
    from petastorm import make_batch_reader

    fix_thread_pool_end_of_data_race()
    parts = []
    with make_batch_reader(dataset_url(split_path), schema_fields=["objid"], num_epochs=1, cur_shard=cur_shard,
                           shard_count=shard_count, shuffle_row_groups=False, workers_count=2,
                           reader_pool_type="thread") as reader:
        for batch in reader:
            parts.append(np.asarray(batch.objid, dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


@dataclass(frozen=True)
class InputSpec:
    """What the model of one mode reads from the training table (small and picklable: it travels to executors)."""

    mode: str
    features: tuple[str, ...]
    normalisation: Mapping[str, Mapping[str, float]]
    image_size_px: int
    # Drop rows without any feature value (a labels-only catalog's rows in an image table): the tabular fallback
    # of an image model learns from the rows with photometry only, not from rows whose features would all be 0.
    require_features: bool = False

    @property
    def uses_image(self) -> bool:
        return self.mode in IMAGE_MODES

    @property
    def uses_features(self) -> bool:
        return self.mode in FEATURE_MODES

    def source_columns(self) -> list[str]:
        """Columns read from Parquet: tabular mode never touches the (large) ``jpeg`` column."""
        return ["label", *self.features] + (["jpeg"] if self.uses_image else [])


def transform_batch(frame: pd.DataFrame, spec: InputSpec) -> pd.DataFrame:
    """One row group of the training table → model inputs, one row per object.

    Returns a frame with ``label`` (int32), ``features`` (float32 vector per row, standardised with the stored
    statistics; always present so every mode has the same reader schema) and, in image modes, ``image`` (uint8
    ``(S, S, 3)`` pixels, decoded and resized by :func:`skyclass.features.decode_jpegs`, the decoder scoring uses
    too; :func:`make_dataset` scales them to [0, 1] in TensorFlow. uint8 rows are a quarter of float32 ones
    through Petastorm's row-group round trip, which on float32 images cost more than the decoding itself).
    Image modes drop rows whose cutout is missing or undecodable: scoring sends those objects to the tabular
    model, so the image models never learn from blank images. ``spec.require_features`` drops the rows that have
    no feature value at all (labels-only rows).
    """
    if spec.require_features and len(frame):
        present = frame[list(spec.features)].apply(pd.to_numeric, errors="coerce").notna().any(axis=1).to_numpy()
        if not present.all():
            frame = frame[present]
    features = standardise(frame, spec.features, spec.normalisation)
    labels = frame["label"].to_numpy(dtype=np.int32)
    out = {"label": labels}
    if spec.uses_image:
        images, ok = decode_jpegs(list(frame["jpeg"]), spec.image_size_px, as_uint8=True)
        labels, features, images = labels[ok], features[ok], images[ok]
        out = {"label": labels, "image": list(images)}
    out["features"] = list(features)
    return pd.DataFrame(out, columns=["label", "features"] + (["image"] if spec.uses_image else []))


def _transform_spec(spec: InputSpec):
    from petastorm.transform import TransformSpec

    n_features = len(spec.features)
    edit = [("features", np.float32, (n_features,), False)]
    selected = ["label", "features"]
    if spec.uses_image:
        edit.append(("image", np.uint8, (spec.image_size_px, spec.image_size_px, 3), False))
        selected.append("image")
    return TransformSpec(_BatchTransform(spec), edit_fields=edit, selected_fields=selected)


class _BatchTransform:
    """Picklable callable for the TransformSpec (a closure would not pickle for Petastorm's process pool)."""

    def __init__(self, spec: InputSpec):
        self.spec = spec

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        return transform_batch(frame, self.spec)


def open_reader(split_path: str, spec: InputSpec, *, cur_shard: Optional[int] = None,
                shard_count: Optional[int] = None, num_epochs: Optional[int] = None, shuffle: bool = True,
                seed: Optional[int] = None, workers_count: int = 2):
    """A Petastorm batch reader over one split, yielding transformed row groups (see :func:`transform_batch`).

    Parameters
    ----------
    split_path : str
    spec : InputSpec
    cur_shard, shard_count : int or None
        This process's shard (``hvd.rank()``, ``hvd.size()``), or None to read every row group.
    num_epochs : int or None
        None repeats for ever: training asks for an explicit number of steps instead, identical on every process.
    shuffle : bool
        Shuffle row groups and rows within them.
    seed : int or None
    workers_count : int
        Decoding threads (Pillow releases the GIL while decoding).

    Returns
    -------
    petastorm.reader.Reader
        Use as a context manager so its threads stop.
    """
    from petastorm import make_batch_reader

    fix_thread_pool_end_of_data_race()
    reader = make_batch_reader(
        dataset_url(split_path), schema_fields=spec.source_columns(), transform_spec=_transform_spec(spec),
        num_epochs=num_epochs, cur_shard=cur_shard, shard_count=shard_count, shuffle_row_groups=shuffle,
        shuffle_rows=shuffle, seed=seed, workers_count=workers_count, reader_pool_type="thread",
        results_queue_size=RESULTS_QUEUE_ROW_GROUPS)
    if os.environ.get("SKYCLASS_VERBOSE") != "1":
        # Without a disk cache (none is asked for) Reader.cleanup_cache only prints "Cache cleanup complete." to
        # stdout when the reader closes: Horovod relays it once per reader and process. --verbose keeps it.
        reader.cleanup_cache = lambda: None
    return reader


def fix_thread_pool_end_of_data_race() -> None:
    """Make Petastorm's thread pool report the end of the data only once its ventilator has finished.

    ``ThreadPool.get_results`` (petastorm 0.13.1) first asks ``all_workers_done()`` and only then
    ``ventilator.completed()``. A reader asked for its first batch before any row group was handed to a worker sees
    every worker done (0 of 0 items); if the ventilator thread then hands out every row group before the second
    check, ``get_results`` reports the end of the data and the reader yields nothing. Seen here on 2 loaded cores:
    7 of 40 single-epoch readers of a 4-row-group shard returned no rows. With the ventilator checked first, "all
    workers done" can only be true when no more work will come. Idempotent; applied by every reader opened here.
    """
    from petastorm.workers_pool.thread_pool import ThreadPool

    if getattr(ThreadPool.all_workers_done, "checks_ventilator_first", False):
        return
    counts_done = ThreadPool.all_workers_done

    def all_workers_done(pool) -> bool:
        ventilator = getattr(pool, "_ventilator", None)
        return (ventilator is None or ventilator.completed()) and counts_done(pool)

    all_workers_done.checks_ventilator_first = True
    ThreadPool.all_workers_done = all_workers_done


def augment_image(image, seed=None):
    """One cutout under a random symmetry of the square: a left-right flip or not, then 0-3 quarter turns (the 8
    orientations the sky may appear in; it has no preferred one). A TensorFlow function on a ``(S, S, 3)`` tensor.

    Parameters
    ----------
    image : tf.Tensor
    seed : int, optional
        Op-level seed (with the global one, tf.keras.utils.set_random_seed, for reproducible runs).

    Returns
    -------
    tf.Tensor
        Same shape and dtype.
    """
    import tensorflow as tf

    image = tf.image.random_flip_left_right(image, seed=seed)
    turns = tf.random.uniform([], 0, 4, dtype=tf.int32, seed=None if seed is None else seed + 1)
    return tf.image.rot90(image, k=turns)


def make_dataset(reader, spec: InputSpec, *, batch_size: int, shuffle_buffer: int = 0,
                 drop_remainder: bool = True, seed: Optional[int] = None, augment: bool = False):
    """tf.data pipeline over a reader: ``({"features": ..., "image": ...}, label)`` batches of ``batch_size``.

    Petastorm hands over whole row groups; they are split into rows and rebatched so every step has the same
    batch size. Only the inputs the mode uses are in the dict. ``augment`` applies :func:`augment_image` to each
    image (training only; a no-op for tabular specs). Images arrive as uint8 pixels and leave as float32 in
    [0, 1] (``pixels / 255``, as :func:`skyclass.features.pixels_to_unit` computes for scoring).
    """
    import tensorflow as tf
    from petastorm.tf_utils import make_petastorm_dataset

    dataset = make_petastorm_dataset(reader).unbatch()
    if shuffle_buffer > 1:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    if augment and spec.uses_image:
        dataset = dataset.map(lambda row: row._replace(image=augment_image(row.image, seed)),
                              num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    uses_features, uses_image = spec.uses_features, spec.uses_image

    def to_inputs(row):
        inputs = {}
        if uses_features:
            inputs["features"] = row.features
        if uses_image:
            inputs["image"] = tf.cast(row.image, tf.float32) / tf.constant(255.0, tf.float32)
        return inputs, row.label

    return dataset.map(to_inputs, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def measure_reader_throughput(split_path: str, spec: InputSpec, *, max_rows: Optional[int] = None,
                              workers_count: int = 2, clock=None) -> dict:
    """Decoded + standardised rows per second the reader alone delivers (one pass, no TensorFlow).

    Training keeps one reader open for all its epochs, so what it can consume is the steady rate: rows after the
    first row group, over the time from the first row group to the last one counted. Opening the reader (dataset
    listing, threads) and the first row group's latency are reported apart, as ``first_batch_seconds``; closing it
    is not timed.

    Parameters
    ----------
    split_path : str
    spec : InputSpec
    max_rows : int, optional
        Stop once this many rows have been read (default: the whole split).
    workers_count : int
    clock : callable, optional
        Seconds as a float (default ``time.perf_counter``).

    Returns
    -------
    dict
        ``rows`` (all rows read), ``seconds`` (open to last row group), ``first_batch_seconds``, ``steady_rows``
        and ``rows_per_s`` (steady rows per second; NaN when the split is a single row group).
    """
    import time

    clock = clock or time.perf_counter
    rows = first_rows = 0
    start = clock()
    first = last = start
    with open_reader(split_path, spec, num_epochs=1, shuffle=False, workers_count=workers_count) as reader:
        for batch in reader:
            if not rows:
                first, first_rows = clock(), len(batch.label)
            rows += len(batch.label)
            last = clock()
            if max_rows is not None and rows >= max_rows:
                break
    steady_rows, steady_seconds = rows - first_rows, last - first
    return {"rows": rows, "seconds": last - start, "first_batch_seconds": first - start, "steady_rows": steady_rows,
            "rows_per_s": steady_rows / steady_seconds if steady_rows and steady_seconds > 0 else float("nan")}
