"""Typed configuration: ``conf/*.yaml`` loaded into frozen dataclasses and validated at start-up.

Every key of the YAML maps to a field below; unknown keys and bad values raise :class:`ConfigError` naming the key
and the file. Any key can be overridden from the command line with ``--set section.key=value`` (the value is
parsed as YAML, so ``--set train.epochs=3`` gives an int and ``--set score.model=null`` gives None).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

CLASSES = ("GALAXY", "STAR", "QSO")
# Values of keys with a fixed set of choices, defined here so the config is checked whole at load time; the modules
# that implement them (models.py, baselines.py) import these.
BACKBONES = ("small_cnn", "resnet50", "vgg16", "densenet121", "efficientnetb2", "xception")
# The order of the paper's Table 4; names are the values allowed in ``evaluate.baselines``.
BASELINE_NAMES = ("logistic_regression", "decision_tree", "random_forest", "gbt", "naive_bayes", "linear_svc", "mlp")


def _project_root() -> Path:
    """The folder relative config paths are resolved against: ``$SKYCLASS_HOME`` when set (the deploy wrappers
    set it to the checkout), else the checkout this package lies in, else the current folder. Under spark-submit
    the package is imported from the shipped code zip (``dist/skyclass-code-*.zip``), whose parent is not a
    checkout: a relative ``lake`` must not become ``dist/lake``."""
    home = os.environ.get("SKYCLASS_HOME")
    if home:
        return Path(home).resolve()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "setup.py").is_file() and (checkout / "lib" / "skyclass").is_dir():
        return checkout
    return Path.cwd()


REPO_ROOT = _project_root()


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key and the source."""


@dataclass(frozen=True)
class SparkConfig:
    master: Optional[str] = "local[*]"  # None: leave it to spark-submit (cluster runs)
    app_name: str = "skyclass"
    shuffle_partitions: int = 8
    driver_memory: str = "4g"
    extra: Mapping[str, str] = field(default_factory=dict)  # any spark.* setting, passed through verbatim

    def validate(self, where: str) -> None:
        _positive(self.shuffle_partitions, f"{where}.shuffle_partitions")
        _memory_size(self.driver_memory, f"{where}.driver_memory")


@dataclass(frozen=True)
class SkyServerConfig:
    # Base URL including the data release; the SqlSearch and ImgCutout endpoints hang below it.
    url: str = "https://skyserver.sdss.org/dr17"
    timeout_s: float = 60.0
    retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    # SkyServer documents 60 queries/min per client; stay below it for the whole job, all tasks together.
    max_queries_per_s: float = 1.0
    # SqlSearch returns at most this many rows: a page of exactly this size may be truncated and is split.
    row_cap: int = 500_000
    user_agent: str = "skyclass/0.1 (+https://github.com/skyclass)"

    def validate(self, where: str) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.url must start with http:// or https://, got {self.url!r}")
        for name in ("timeout_s", "max_queries_per_s", "row_cap"):
            _positive(getattr(self, name), f"{where}.{name}")
        for name in ("retries", "backoff_s", "max_backoff_s"):
            _non_negative(getattr(self, name), f"{where}.{name}")
        _backoff_cap(self, where)


@dataclass(frozen=True)
class LakeConfig:
    # Relative paths resolve against the repository root, so `make demo` works from any folder. root and
    # predictions are made absolute when the config is loaded (on the driver): executors run in other folders.
    # They may also be URIs (file:///..., hdfs://..., s3a://..., gs://...), read through skyclass.storage.
    root: str = "lake"
    models: str = "models"
    predictions: str = "predictions"
    reports: str = "reports"

    def validate(self, where: str) -> None:
        # Keras files and the report's PNG/Markdown are written with plain file I/O on the driver: a cluster keeps
        # them on a shared mount, never behind an hdfs:// or s3a:// URI.
        _local_path(self.models, f"{where}.models", "model packages")
        _local_path(self.reports, f"{where}.reports", "evaluation reports")

    def path(self, name: str) -> str:
        """Resolved location of one of ``root``, ``models``, ``predictions``, ``reports``."""
        return resolve_path(getattr(self, name))

    def table(self, name: str) -> str:
        """Location of a lake table such as ``catalog`` or ``cutouts``."""
        return os.path.join(self.path("root"), name)


DEFAULT_PHOTO_COLUMNS = ("ra", "dec", "u", "g", "r", "i", "z")


@dataclass(frozen=True)
class ExtractConfig:
    # PhotoObj columns fetched besides objID (the SpecObj side adds specObjID, class, z, zWarning).
    photo_columns: Sequence[str] = DEFAULT_PHOTO_COLUMNS
    page_rows: int = 50_000
    tasks: int = 8  # id ranges fetched in parallel by Spark tasks
    min_specobjid: int = 0
    max_specobjid: int = 2**64 - 1
    # Real specObjIDs cluster by plate (half of them in 2% of the id space): one histogram query first gives
    # ranges of equal row counts instead of equal width. false = equal-width ranges, no extra query.
    balance_ranges: bool = True
    # What to do with zWarning != 0 and sentinel magnitudes (-9999): "flag" keeps them with a flag, "drop" removes.
    bad_rows: str = "flag"
    # Unlabelled photometric objects are extracted in this box (degrees); None = no photometric extraction.
    box_ra_deg: Optional[Sequence[float]] = None
    box_dec_deg: Optional[Sequence[float]] = None
    # The run staged ranges belong to (YYYY-MM-DD; None = today, UTC): a rerun of the same night resumes from its
    # own finished ranges, a later night fetches afresh. resume: true reuses the staging of any earlier run.
    run_date: Optional[str] = None
    resume: bool = False

    def validate(self, where: str) -> None:
        _positive(self.page_rows, f"{where}.page_rows")
        _positive(self.tasks, f"{where}.tasks")
        _choice(self.bad_rows, ("flag", "drop"), f"{where}.bad_rows")
        if not (0 <= self.min_specobjid < self.max_specobjid <= 2**64 - 1):
            raise ConfigError(f"{where}: need 0 <= min_specobjid < max_specobjid <= 2**64-1")
        for name in ("box_ra_deg", "box_dec_deg"):
            box = getattr(self, name)
            if box is not None and (len(box) != 2 or not box[0] < box[1]):
                raise ConfigError(f"{where}.{name} must be [min, max] with min < max, got {box!r}")
        if self.run_date is not None:
            _iso_date(self.run_date, f"{where}.run_date")
        from skyclass.skyserver import SqlValueError, sql_identifier  # skyserver imports this module

        for i, column in enumerate(self.photo_columns):
            try:
                sql_identifier(column)
            except SqlValueError as err:
                raise ConfigError(f"{where}.photo_columns[{i}]: {err}") from None


@dataclass(frozen=True)
class CutoutsConfig:
    scale_arcsec_per_px: float = 0.396  # SDSS native pixel scale
    size_px: int = 64  # stored at the training size: JPEG decode cost grows with the square of this
    catalog: str = "catalog"  # lake table whose objects need cutouts ("catalog" or "photometric")
    tasks: int = 2
    concurrency_per_task: int = 32
    max_requests_per_s: float = 20.0  # politeness limit for the whole job, divided among tasks
    timeout_s: float = 30.0
    retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_objects: Optional[int] = None  # a sample for demos; None = every object lacking a cutout
    rows_per_file: int = 5_000  # ~15 KB/object at 64 px: several row groups per file for Petastorm sharding
    rows_per_row_group: int = 1_000
    # One download per lake at a time (<lake>/_locks/cutouts.lock); a lock whose heartbeat (refreshed every
    # lock_ttl_s / 4) is older than this belongs to a dead run and is taken over.
    lock_ttl_s: float = 900.0
    # `skyclass cutouts --import`: how an imported cutout of another size becomes size_px ("resize" the whole
    # field, or "crop" the centre at native scale; see cutout_import.py), and the imported cutouts' pixel scale.
    # crop: measured better on real getjpeg cutouts (bench/images_bench.py --steps scale; README).
    import_fit: str = "crop"
    import_scale_arcsec_per_px: float = 0.4

    def validate(self, where: str) -> None:
        _positive(self.scale_arcsec_per_px, f"{where}.scale_arcsec_per_px")
        _choice(self.import_fit, ("resize", "crop"), f"{where}.import_fit")
        _positive(self.import_scale_arcsec_per_px, f"{where}.import_scale_arcsec_per_px")
        if not 64 <= self.size_px <= 2048:
            raise ConfigError(f"{where}.size_px must be within 64..2048 (SkyServer clamps to that), got {self.size_px}")
        _choice(self.catalog, ("catalog", "photometric"), f"{where}.catalog")
        for name in ("tasks", "concurrency_per_task", "max_requests_per_s", "timeout_s", "rows_per_file",
                     "rows_per_row_group", "lock_ttl_s"):
            _positive(getattr(self, name), f"{where}.{name}")
        if self.max_objects is not None:
            _positive(self.max_objects, f"{where}.max_objects")
        _backoff_cap(self, where)
        if self.rows_per_row_group > self.rows_per_file:
            raise ConfigError(f"{where}.rows_per_row_group ({self.rows_per_row_group}) must be <= "
                              f"{where}.rows_per_file ({self.rows_per_file}): a row group never spans files")


SPLIT_GROUPS = ("object", "field")


@dataclass(frozen=True)
class SplitConfig:
    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1
    salt: str = "skyclass-v1"  # changing it reshuffles the split
    # What one hash decides the split of: "object" (each objid alone) or "field" (run, camcol, field: every
    # object of an SDSS field lands in the same split; neighbours share sky, seeing and calibration).
    group_by: str = "object"

    def validate(self, where: str) -> None:
        _choice(self.group_by, SPLIT_GROUPS, f"{where}.group_by")
        for name in ("train", "validation", "test"):
            _non_negative(getattr(self, name), f"{where}.{name}")
        if abs(self.train + self.validation + self.test - 1.0) > 1e-6:
            raise ConfigError(f"{where}: train + validation + test must sum to 1, got "
                              f"{self.train} + {self.validation} + {self.test}")


FEATURE_SETS = ("photometric", "paper")
MODES = ("tabular", "image", "multimodal")
# constant: the (warmed-up) rate, halved on plateaus when reduce_lr_patience is set; cosine: decayed to 0 along a
# half cosine from the end of warm-up to the last step of train.epochs.
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "multimodal"
    # A preset (photometric, paper) or, with train.features, the name of that declaration (reports, package).
    feature_set: str = "photometric"
    # The model's features by name (skyclass.features: catalog columns such as psfMag_r, extinction_g, petroRad_r;
    # derived ones such as g_r, psfmag_g_r, dered_cmodelmag_r, psf_minus_cmodel_r); empty = the preset's.
    # Extraction fetches the PhotoObj columns they need (added to extract.photo_columns at load).
    features: Sequence[str] = ()
    backbone: str = "small_cnn"
    weights: Optional[str] = None  # "imagenet" (needs internet), a local weights file, or None
    trainable_layers: Optional[int] = None
    image_size_px: int = 64
    # The central N px of each cutout are all the image network sees (a crop inside the model); None = all of it.
    image_crop_px: Optional[int] = None
    cnn_filters: Sequence[int] = (32, 64, 128, 128)  # small_cnn's conv blocks (each halves the side)
    tabular_units: Sequence[int] = (128, 64, 32)
    fusion_units: Sequence[int] = (64,)
    dropout: float = 0.2
    batch_norm: bool = True
    epochs: int = 10
    batch_size: int = 256  # per process
    learning_rate: float = 1e-3  # per process; scaled by the number of processes
    warmup_epochs: int = 1
    early_stopping_patience: int = 3
    reduce_lr_patience: Optional[int] = None  # epochs without val_loss progress before halving the rate; None = off
    lr_schedule: str = "constant"  # or "cosine" (LR_SCHEDULES)
    num_proc: int = 2  # Horovod processes: 2 here, one per GPU on a cluster
    steps_per_epoch: Optional[int] = None  # None = one pass over the shard
    version: Optional[str] = None  # model package name; None = a UTC timestamp
    # Where rank 0 checkpoints each epoch (a run with the same version resumes from it); None = <models>/<version>.checkpoints
    checkpoint_dir: Optional[str] = None
    class_weights: bool = True
    # Random flips and quarter turns of the training cutouts (input_pipeline.augment_image); validation never.
    augment: bool = False

    def validate(self, where: str) -> None:
        _choice(self.mode, MODES, f"{where}.mode")
        if self.features:
            _check_features(self, where)
        else:
            _choice(self.feature_set, FEATURE_SETS, f"{where}.feature_set")
        for name in ("image_size_px", "epochs", "batch_size", "learning_rate", "num_proc"):
            _positive(getattr(self, name), f"{where}.{name}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{where}.dropout must be in [0, 1), got {self.dropout}")
        _choice(self.backbone, BACKBONES, f"{where}.backbone")
        _choice(self.lr_schedule, LR_SCHEDULES, f"{where}.lr_schedule")
        if self.lr_schedule != "constant" and self.reduce_lr_patience is not None:
            raise ConfigError(f"{where}.lr_schedule {self.lr_schedule!r} sets the rate at every step, so "
                              f"{where}.reduce_lr_patience ({self.reduce_lr_patience}) would be undone: set "
                              f"{where}.reduce_lr_patience to null, or {where}.lr_schedule to 'constant'")
        if not self.cnn_filters:
            raise ConfigError(f"{where}.cnn_filters must list at least one conv block's filters, "
                              "e.g. [32, 64, 128, 128]")
        for name in ("tabular_units", "fusion_units", "cnn_filters"):
            for i, units in enumerate(getattr(self, name)):
                _positive(units, f"{where}.{name}[{i}]")
        for name in ("warmup_epochs", "early_stopping_patience"):
            _non_negative(getattr(self, name), f"{where}.{name}")
        for name in ("steps_per_epoch", "reduce_lr_patience"):
            if getattr(self, name) is not None:
                _positive(getattr(self, name), f"{where}.{name}")
        if self.trainable_layers is not None:
            _non_negative(self.trainable_layers, f"{where}.trainable_layers")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"{where}.warmup_epochs ({self.warmup_epochs}) must be <= {where}.epochs "
                              f"({self.epochs}): the run would end before the learning rate reaches its value")
        if self.reduce_lr_patience is not None and self.reduce_lr_patience >= self.early_stopping_patience > 0:
            raise ConfigError(f"{where}.reduce_lr_patience ({self.reduce_lr_patience}) must be < "
                              f"{where}.early_stopping_patience ({self.early_stopping_patience}), or early "
                              "stopping ends the run before the learning rate is ever reduced; set it lower or null")
        if self.image_crop_px is not None:
            _positive(self.image_crop_px, f"{where}.image_crop_px")
            if self.image_crop_px > self.image_size_px:
                raise ConfigError(f"{where}.image_crop_px ({self.image_crop_px}) is larger than the cutouts "
                                  f"({where}.image_size_px = {self.image_size_px}); crop to at most "
                                  f"{self.image_size_px} px, or null for the whole cutout")
        if self.mode != "tabular":
            from skyclass.models import backbone_input_px, min_image_size_px

            smallest = min_image_size_px(self.backbone, tuple(self.cnn_filters))
            seen = backbone_input_px(self.image_size_px, self.image_crop_px)
            if seen < smallest:
                name = "image_crop_px" if self.image_crop_px is not None else "image_size_px"
                raise ConfigError(f"{where}.{name} ({seen}) is too small for {where}.backbone "
                                  f"{self.backbone!r}" + (f" with {len(self.cnn_filters)} conv blocks"
                                                          if self.backbone == "small_cnn" else "")
                                  + f", which needs at least {smallest} px")


@dataclass(frozen=True)
class EvaluateConfig:
    model: Optional[str] = None  # model package folder; None = the newest under lake.models
    baselines: Sequence[str] = ("logistic_regression", "decision_tree", "random_forest", "gbt", "naive_bayes",
                                "linear_svc", "mlp")
    feature_sets: Sequence[str] = FEATURE_SETS
    output: Optional[str] = None  # report folder; None = <lake.reports>/<model version>
    # Whether results are SIMULATED is read from the data (cutout sources, catalog provenance), never configured.

    def validate(self, where: str) -> None:
        # Presets, or the name of train.features' declaration: checked across sections (_check_feature_sets).
        for name in self.baselines:
            _choice(name, BASELINE_NAMES, f"{where}.baselines")
        for name in ("baselines", "feature_sets"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ConfigError(f"{where}.{name} lists an entry twice: {list(values)}")
        if self.output is not None:
            _local_path(self.output, f"{where}.output", "the evaluation report")


@dataclass(frozen=True)
class ScoreConfig:
    model: Optional[str] = None  # model package folder; None = the newest under lake.models
    catalog: str = "photometric"  # lake table to label: "catalog" (labelled) or "photometric"
    batch_rows: int = 1024  # rows per Arrow batch handed to the model
    rescore: bool = False
    run_date: Optional[str] = None  # YYYY-MM-DD; None = today (UTC)
    # Model runtime in the Python workers: keras, tflite (the package's TensorFlow Lite form, XNNPACK CPU kernels)
    # or auto (tflite when a worker sees no GPU and the package has the form, else keras); see skyclass.inference.
    # keras by default: on this machine's CPUs (oneDNN, AVX-512) the TFLite form measured no faster per CPU second
    # (bench/score_bench.py, README "Scoring performance").
    inference: str = "keras"
    # The nightly run (skyclass run) exports the night as a HATS catalog after scoring (see the export section).
    export_hats: bool = False
    # Target class mix the calibrated probabilities are re-weighted to (skyclass.priors): None = the validation
    # split's mix, a mapping such as {GALAXY: 0.6, STAR: 0.2, QSO: 0.2}, or "estimate" (EM over the night's catalog).
    class_priors: Any = None

    def validate(self, where: str) -> None:
        _choice(self.catalog, ("catalog", "photometric"), f"{where}.catalog")
        _positive(self.batch_rows, f"{where}.batch_rows")
        _choice(self.inference, ("auto", "keras", "tflite"), f"{where}.inference")
        if self.run_date is not None:
            _iso_date(self.run_date, f"{where}.run_date")
        if isinstance(self.class_priors, str):
            _choice(self.class_priors, ("estimate",), f"{where}.class_priors")
        elif self.class_priors is not None:
            from skyclass.priors import PriorsError, normalise_priors

            if not isinstance(self.class_priors, Mapping):
                raise ConfigError(f"{where}.class_priors must be a mapping of class to prior, `estimate` or null; "
                                  f"got {self.class_priors!r}")
            try:
                normalise_priors(self.class_priors, CLASSES, f"{where}.class_priors")
            except PriorsError as err:
                raise ConfigError(str(err)) from None


EXPORT_FORMATS = ("hats", "csv", "fits")


@dataclass(frozen=True)
class ExportConfig:
    format: str = "hats"  # hats (a HATS catalog LSDB opens), csv or fits (one file)
    # Folder of the exports (local, mounted or a storage URI): <output>/skyclass_<run_date>[.csv|.fits].
    output: str = "exports"
    run_date: Optional[str] = None  # YYYY-MM-DD of the night to export; None = the newest night of predictions
    catalog: Optional[str] = None  # lake table the positions come from; None = score.catalog
    # Catalog columns exported beside ra, dec and the predictions, where the catalog has them.
    catalog_columns: Sequence[str] = ("u", "g", "r", "i", "z", "quality", "domain")
    # HATS: no partition holds more rows than this; denser pixels are split into their children...
    max_rows_per_partition: int = 1_000_000
    # ... down to this HEALPix order at most (order 10: pixels of about 3.4 arcmin).
    highest_order: int = 10

    def validate(self, where: str) -> None:
        _choice(self.format, EXPORT_FORMATS, f"{where}.format")
        _positive(self.max_rows_per_partition, f"{where}.max_rows_per_partition")
        if not 0 <= self.highest_order <= 29:
            raise ConfigError(f"{where}.highest_order must be within 0..29, got {self.highest_order}")
        if self.catalog is not None:
            _choice(self.catalog, ("catalog", "photometric"), f"{where}.catalog")
        if self.run_date is not None:
            _iso_date(self.run_date, f"{where}.run_date")


@dataclass(frozen=True)
class DomainConfig:
    """In-domain flags (skyclass.domain), built at training time and stored in the package."""

    k: int = 10  # the k-th nearest training neighbour's distance is the domain score
    quantile: float = 0.99  # threshold: this quantile of training objects' own (leave-one-out) distances
    magnitude_quantiles: Sequence[float] = (0.005, 0.995)  # per-band coverage of the training split
    # Training objects kept as the nearest-neighbour reference; the distance matrix (rows x reference_rows) is the
    # cost of the check at scoring time, so it stays small; 5000 rather than 2000 because the neighbourhood purity
    # of faint objects (rare in the training split) needs enough labelled neighbours near them (validation split).
    reference_rows: int = 5000
    # mixed_neighbourhood: the most common class among the k nearest training objects holds less than this share
    # (0 disables the test). 0.7 was chosen on the validation split's r > 20 slice (bench/accuracy.py).
    min_purity: float = 0.7

    def validate(self, where: str) -> None:
        _positive(self.k, f"{where}.k")
        _positive(self.reference_rows, f"{where}.reference_rows")
        if not 0 < self.quantile < 1:
            raise ConfigError(f"{where}.quantile must lie strictly between 0 and 1, got {self.quantile}")
        if not 0 <= self.min_purity <= 1:
            raise ConfigError(f"{where}.min_purity must lie in [0, 1] (0 disables the test), got {self.min_purity}")
        low_high = tuple(self.magnitude_quantiles)
        if len(low_high) != 2 or not 0 <= low_high[0] < low_high[1] <= 1:
            raise ConfigError(f"{where}.magnitude_quantiles must be two increasing numbers in [0, 1], got "
                              f"{list(low_high)}")


@dataclass(frozen=True)
class StandinConfig:
    # Catalog CSVs the stand-in serves (SkyServer columns, see ../shared/data/sdss/README.md).
    catalogs: Sequence[str] = ()
    port: int = 8089

    def validate(self, where: str) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"{where}.port must be 0..65535, got {self.port}")


@dataclass(frozen=True)
class Config:
    spark: SparkConfig = field(default_factory=SparkConfig)
    skyserver: SkyServerConfig = field(default_factory=SkyServerConfig)
    lake: LakeConfig = field(default_factory=LakeConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    cutouts: CutoutsConfig = field(default_factory=CutoutsConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    domain: DomainConfig = field(default_factory=DomainConfig)
    standin: StandinConfig = field(default_factory=StandinConfig)
    source: str = "<defaults>"  # where the config came from, for messages

    def to_dict(self) -> dict:
        """Plain-data form (for model metadata and logs)."""
        return plain_data(dataclasses.asdict(self))

    def replace(self, **sections: Any) -> "Config":
        """A copy with whole sections replaced, e.g. ``conf.replace(train=dataclasses.replace(conf.train, epochs=1))``."""
        return dataclasses.replace(self, **sections)


def _local_path(value: str, where: str, what: str) -> None:
    if "://" in value and not value.startswith("file://"):
        raise ConfigError(f"{where} must be a local or mounted folder ({what} are written with file I/O), got "
                          f"{value!r}; on a cluster use a shared mount such as /mnt/skyclass/...")


def resolve_path(path: str) -> str:
    """Resolve a relative local path against the repository root; URIs (hdfs://, s3a://, file:/) pass unchanged."""
    if "://" in path or path.startswith("file:") or os.path.isabs(path):
        return path
    return str(REPO_ROOT / path)


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config file, apply ``section.key=value`` overrides and validate everything.

    Parameters
    ----------
    path : path-like, optional
        YAML file; None gives the built-in defaults (equal to ``conf/local.yaml``'s intent: local Spark).
    overrides : sequence of str
        ``--set`` items such as ``skyserver.url=http://127.0.0.1:8089/dr17``.

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        Unknown key, wrong type or invalid value; the message names the key and the file.
    """
    source = str(path) if path is not None else "<defaults>"
    raw: dict = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as fh:
                raw = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist; pass --conf conf/local.yaml or another file") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {source} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {source} must hold a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        _apply_override(raw, item)
    sources = source + (" (with --set overrides)" if overrides else "")
    conf = _build(Config, {k: v for k, v in raw.items()}, "", sources)
    # Qualified here, on the driver: an executor resolving a relative path would land in its own work folder.
    conf = dataclasses.replace(conf, source=sources, lake=dataclasses.replace(
        conf.lake, root=resolve_path(conf.lake.root), predictions=resolve_path(conf.lake.predictions)))
    for f in dataclasses.fields(Config):
        section = getattr(conf, f.name)
        if hasattr(section, "validate"):
            try:
                section.validate(f.name)
            except ConfigError as err:
                raise ConfigError(f"{err} (in {sources})") from None
    try:
        _check_feature_sets(conf)
        check_across_sections(conf)
    except ConfigError as err:
        raise ConfigError(f"{err} (in {sources})") from None
    return _with_feature_columns(conf)


def _check_features(train: "TrainConfig", where: str) -> None:
    """train.features: every name a feature (skyclass.features), and a name of its own for the declaration."""
    from skyclass.features import FEATURE_SETS as PRESETS, FeatureError, parse_features

    try:
        parse_features(train.features)
    except FeatureError as err:
        message = str(err)
        raise ConfigError(f"{where}.features{'' if message.startswith('[') else ': '}{message}") from None
    if train.feature_set in PRESETS:
        raise ConfigError(f"{where}.feature_set is the preset {train.feature_set!r}, but {where}.features declares "
                          "other features: name the declaration (e.g. feature_set: psf_cmodel) or drop features")
    if not train.feature_set.isidentifier():
        raise ConfigError(f"{where}.feature_set must be a plain name (letters, digits, _) when {where}.features is "
                          f"set, got {train.feature_set!r}")


def _check_feature_sets(conf: "Config") -> None:
    known = list(FEATURE_SETS) + ([conf.train.feature_set] if conf.train.features else [])
    for fs in conf.evaluate.feature_sets:
        _choice(fs, known, "evaluate.feature_sets")


def _with_feature_columns(conf: "Config") -> "Config":
    """extract.photo_columns plus the PhotoObj columns train.features reads, so extraction fetches them."""
    if not conf.train.features:
        return conf
    from skyclass.features import photo_columns_needed

    have = {c.lower() for c in conf.extract.photo_columns}
    extra = tuple(c for c in photo_columns_needed(conf.train.features) if c not in have)
    if not extra:
        return conf
    return dataclasses.replace(conf, extract=dataclasses.replace(
        conf.extract, photo_columns=tuple(conf.extract.photo_columns) + extra))


def check_across_sections(conf: Config) -> None:
    """Rules between keys of different sections (each section checks its own keys in its ``validate``).

    Parameters
    ----------
    conf : Config

    Raises
    ------
    ConfigError
        A rule is broken; the message names both keys and their values.
    """
    # A page of exactly row_cap rows may have been cut by SkyServer and is split (extract's truncated-page path);
    # a page asking for more than the cap always comes back cut, so every page would be fetched twice.
    if conf.extract.page_rows > conf.skyserver.row_cap:
        raise ConfigError(f"extract.page_rows ({conf.extract.page_rows}) must be <= skyserver.row_cap "
                          f"({conf.skyserver.row_cap}): a page larger than the row cap always comes back truncated "
                          "by SkyServer, so every page would be fetched again in halves")
    if conf.train.mode != "tabular" and conf.train.image_size_px > conf.cutouts.size_px:
        raise ConfigError(f"train.image_size_px ({conf.train.image_size_px}) must be <= cutouts.size_px "
                          f"({conf.cutouts.size_px}): the {conf.train.mode} model would train on upscaled cutouts; "
                          "download larger cutouts or train at their size")


def _apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set train.epochs=3")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
    except (yaml.YAMLError, ValueError):  # ValueError: YAML reads 2026-13-01 as an impossible date
        node[parts[-1]] = value


# Keys that existed once, with what to do instead (a plain "unknown key" would not say why).
_REMOVED_KEYS = {
    "evaluate.cutouts_are_simulated": "whether results are SIMULATED is read from the data (the cutouts' source "
                                      "column, the catalog's _provenance.json); delete the key",
}


def _build(cls: type, raw: Any, prefix: str, source: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'} in {source} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(raw) - known)
    for name in unknown:
        key = f"{prefix}.{name}" if prefix else name
        if key in _REMOVED_KEYS:
            raise ConfigError(f"{key} in {source} no longer exists: {_REMOVED_KEYS[key]}")
    if unknown:
        where = f"section {prefix!r}" if prefix else "top level"
        raise ConfigError(f"unknown key {prefix + '.' if prefix else ''}{unknown[0]} in {source} ({where} has: "
                          f"{', '.join(sorted(known))})")
    kwargs = {}
    for name in known & set(raw):
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, raw[name], key, source)
        else:
            kwargs[name] = _coerce(raw[name], hint, key, source)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str, source: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, source)
    if hint is Any:
        return value
    bad = ConfigError(f"{key} in {source} must be {_type_name(hint)}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        # YAML reads an unquoted 2024-01-01 (e.g. --set score.run_date=2024-01-01) as a date; keep its ISO text.
        if isinstance(value, datetime.date):
            return value.isoformat()
        raise bad
    if origin in (Sequence, list, tuple, typing.Sequence) or origin is not None and str(origin).endswith("Sequence'>"):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise bad
        return tuple(_coerce(v, args[0] if args else Any, f"{key}[{i}]", source) for i, v in enumerate(value))
    if origin in (Mapping, dict) or str(origin).endswith("Mapping'>"):
        if not isinstance(value, dict):
            raise bad
        return {str(k): str(v) for k, v in value.items()}
    return value


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is not None and str(origin).endswith("Sequence'>"):
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _memory_size(value: str, key: str) -> None:
    if not re.fullmatch(r"[0-9]+[kmgtp]?", value.strip().lower()):
        raise ConfigError(f"{key} must be a JVM memory size such as 512m or 4g, got {value!r}")


def _backoff_cap(section: Any, where: str) -> None:
    if section.max_backoff_s < section.backoff_s:
        raise ConfigError(f"{where}.max_backoff_s ({section.max_backoff_s}) must be >= {where}.backoff_s "
                          f"({section.backoff_s})")


def _positive(value: float, key: str) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value}")


def _non_negative(value: float, key: str) -> None:
    if value < 0:
        raise ConfigError(f"{key} must be >= 0, got {value}")


def _iso_date(value: str, key: str) -> None:
    try:
        if len(value) != 10:
            raise ValueError(value)
        datetime.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{key} must be a date written YYYY-MM-DD, got {value!r}") from None


def _choice(value: str, choices: Sequence[str], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def plain_data(value: Any) -> Any:
    """``value`` as JSON-ready plain data: mappings become dicts with str keys, tuples and lists become lists,
    recursively (config sections, model arguments and estimator parameters are written into JSON metadata)."""
    if isinstance(value, Mapping):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    return value
