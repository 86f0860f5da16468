"""Typed configuration: ``conf/*.yaml`` loaded into frozen dataclasses and validated at start-up.

Every key of the YAML maps to a field below; unknown keys and bad values raise :class:`ConfigError` naming the key
and the file. Any key can be overridden from the command line with ``--set section.key=value`` (the value is
parsed as YAML, so ``--set train.epochs=3`` gives an int and ``--set score.model=null`` gives None).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

CLASSES = ("GALAXY", "STAR", "QSO")


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

    def validate(self, where: str) -> None:
        _positive(self.scale_arcsec_per_px, f"{where}.scale_arcsec_per_px")
        if not 64 <= self.size_px <= 2048:
            raise ConfigError(f"{where}.size_px must be within 64..2048 (SkyServer clamps to that), got {self.size_px}")
        _choice(self.catalog, ("catalog", "photometric"), f"{where}.catalog")
        for name in ("tasks", "concurrency_per_task", "max_requests_per_s", "timeout_s", "rows_per_file",
                     "rows_per_row_group", "lock_ttl_s"):
            _positive(getattr(self, name), f"{where}.{name}")
        if self.max_objects is not None:
            _positive(self.max_objects, f"{where}.max_objects")


@dataclass(frozen=True)
class SplitConfig:
    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1
    salt: str = "skyclass-v1"  # changing it reshuffles the split

    def validate(self, where: str) -> None:
        for name in ("train", "validation", "test"):
            _non_negative(getattr(self, name), f"{where}.{name}")
        if abs(self.train + self.validation + self.test - 1.0) > 1e-6:
            raise ConfigError(f"{where}: train + validation + test must sum to 1, got "
                              f"{self.train} + {self.validation} + {self.test}")


FEATURE_SETS = ("photometric", "paper")
MODES = ("tabular", "image", "multimodal")


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "multimodal"
    feature_set: str = "photometric"
    backbone: str = "small_cnn"
    weights: Optional[str] = None  # "imagenet" (needs internet), a local weights file, or None
    trainable_layers: Optional[int] = None
    image_size_px: int = 64
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
    num_proc: int = 2  # Horovod processes: 2 here, one per GPU on a cluster
    steps_per_epoch: Optional[int] = None  # None = one pass over the shard
    version: Optional[str] = None  # model package name; None = a UTC timestamp
    # Where rank 0 checkpoints each epoch (a run with the same version resumes from it); None = <models>/<version>.checkpoints
    checkpoint_dir: Optional[str] = None
    class_weights: bool = True

    def validate(self, where: str) -> None:
        _choice(self.mode, MODES, f"{where}.mode")
        _choice(self.feature_set, FEATURE_SETS, f"{where}.feature_set")
        for name in ("image_size_px", "epochs", "batch_size", "learning_rate", "num_proc"):
            _positive(getattr(self, name), f"{where}.{name}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{where}.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class EvaluateConfig:
    model: Optional[str] = None  # model package folder; None = the newest under lake.models
    baselines: Sequence[str] = ("logistic_regression", "decision_tree", "random_forest", "gbt", "naive_bayes",
                                "linear_svc", "mlp")
    feature_sets: Sequence[str] = FEATURE_SETS
    output: Optional[str] = None  # report folder; None = <lake.reports>/<model version>
    # Whether results are SIMULATED is read from the data (cutout sources, catalog provenance), never configured.

    def validate(self, where: str) -> None:
        for fs in self.feature_sets:
            _choice(fs, FEATURE_SETS, f"{where}.feature_sets")
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

    def validate(self, where: str) -> None:
        _choice(self.catalog, ("catalog", "photometric"), f"{where}.catalog")
        _positive(self.batch_rows, f"{where}.batch_rows")
        _choice(self.inference, ("auto", "keras", "tflite"), f"{where}.inference")


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
    standin: StandinConfig = field(default_factory=StandinConfig)
    source: str = "<defaults>"  # where the config came from, for messages

    def to_dict(self) -> dict:
        """Plain-data form (for model metadata and logs)."""
        return _plain(dataclasses.asdict(self))

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
    return conf


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
    except yaml.YAMLError:
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


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
