"""The ``skyclass`` command: one subcommand per pipeline stage, each also a spark-submit-able file in ``jobs/``.

Every subcommand takes ``--conf FILE`` (default ``conf/local.yaml``) and any number of ``--set section.key=value``.
Subcommands are thin: parse arguments, load the config, build Spark, call one library function, print its summary.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from typing import Callable, Sequence

from skyclass.config import FEATURE_SETS, MODES, REPO_ROOT, ConfigError, load_config
from skyclass.errors import SkyclassError
from skyclass.logs import configure_logging

log = logging.getLogger("skyclass")
DEFAULT_CONF = REPO_ROOT / "conf" / "local.yaml"


def _extract(spark, conf, args):
    from skyclass import extract

    if args.photometric:
        return extract.extract_photometric(spark, conf, from_csv=args.from_csv)
    return extract.extract_catalog(spark, conf, from_csv=args.from_csv)


def _cutouts(spark, conf, args):
    if getattr(args, "import_path", None):
        from skyclass.cutout_import import import_cutouts

        return import_cutouts(spark, conf, args.import_path, name=args.name)
    from skyclass.cutouts import download_cutouts

    return download_cutouts(spark, conf)


def _table(spark, conf, args):
    from skyclass.training_table import build_training_table

    return build_training_table(spark, conf)


def _train(spark, conf, args):
    from skyclass.train import train_model

    return train_model(spark, conf)


def _evaluate(spark, conf, args):
    from skyclass.evaluate import evaluate

    return evaluate(spark, conf)


def _score(spark, conf, args):
    from skyclass.score import score_catalog

    return score_catalog(spark, conf)


def _export(spark, conf, args):
    from skyclass.export import export_predictions

    return export_predictions(spark, conf)


def _simulate(spark, conf, args):
    from skyclass.simulate import simulate_lake

    return simulate_lake(spark, conf, n_objects=args.objects, seed=args.seed)


def _run(spark, conf, args):
    from skyclass.pipeline import run_nightly

    return run_nightly(spark, conf, retrain=args.retrain)


def _demo(spark, conf, args):
    from skyclass.demo import run_demo

    return run_demo(spark, conf)


def _check_cluster(spark, conf, args):
    from skyclass.cluster_check import describe_executors

    description = describe_executors(spark, tasks=args.tasks, min_executors=args.wait_executors,
                                     timeout_s=args.timeout_s)
    return description.to_json() if args.json else description


def _package(conf, args):
    from skyclass.inference import CpuModelError, add_cpu_models, validation_rows
    from skyclass.package import ModelPackage

    package = ModelPackage.load(args.add_cpu_model)
    columns = [*package.features, *(["jpeg"] if package.mode != "tabular" else [])]
    try:
        fingerprint = add_cpu_models(args.add_cpu_model, validation_rows(conf.lake.path("root"), columns))
    except CpuModelError as err:
        raise CpuModelError(f"{err}. Package {args.add_cpu_model} is unchanged") from None
    return f"added TensorFlow Lite forms to {args.add_cpu_model}; new fingerprint {fingerprint}"


def _standin(args):
    from skyclass.standin.server import run_from_args

    return run_from_args(args)


def _add_standin_arguments(parser):
    from skyclass.standin.server import add_cli_arguments

    add_cli_arguments(parser)


# name: (help, handler(spark, conf, args), argument adder)
COMMANDS: dict[str, tuple[str, Callable, Callable | None]] = {
    "extract": ("extract labelled objects (or --photometric ones) from SkyServer or a CSV export into the lake",
                _extract, lambda p: (
                    p.add_argument("--from-csv", metavar="FILE",
                                   help="import a SkyServer/CasJobs CSV export instead of querying SkyServer"),
                    p.add_argument("--photometric", action="store_true",
                                   help="unlabelled photometric objects (PhotoObj without spectrum) in the "
                                        "configured extract.box_ra_deg/box_dec_deg"),
                    p.add_argument("--run-date", help="YYYY-MM-DD of this run (default: today, UTC): a rerun of the "
                                                      "same run resumes from its finished ranges"),
                    p.add_argument("--resume", action="store_true",
                                   help="reuse ranges staged by an interrupted run of another date"))),
    "cutouts": ("download image cutouts for catalog objects that lack one", _cutouts, lambda p: (
        p.add_argument("--catalog", choices=("catalog", "photometric"), help="lake table needing cutouts"),
        p.add_argument("--max-objects", type=int, help="download at most this many (a sample)"),
        p.add_argument("--import", dest="import_path", metavar="PATH",
                       help="import existing cutouts instead of downloading: a Parquet file with objid and jpeg "
                            "columns, or a folder of <objid>.jpg/.png files"),
        p.add_argument("--name", help="provenance name of an --import (source import:<name>; default: the "
                                      "input's base name)"))),
    "table": ("join catalog and cutouts into the training table with its split and statistics", _table, None),
    "train": ("train a model with Horovod on Spark, streamed from the lake by Petastorm", _train, lambda p: (
        p.add_argument("--mode", choices=MODES),
        p.add_argument("--feature-set", choices=FEATURE_SETS))),
    "evaluate": ("evaluate a model package and the classical baselines on the test split", _evaluate, lambda p: (
        p.add_argument("--model", help="model package folder (default: the newest)"),)),
    "score": ("label a lake catalog with a model package", _score, lambda p: (
        p.add_argument("--model", help="model package folder (default: the newest)"),
        p.add_argument("--catalog", choices=("catalog", "photometric")),
        p.add_argument("--run-date", help="YYYY-MM-DD (default: today, UTC)"),
        p.add_argument("--rescore", action="store_true",
                       help="score objects already scored by this model version again"))),
    "export": ("export a night's predictions with positions and photometry as a HATS catalog (for LSDB), CSV or "
               "FITS", _export, lambda p: (
                   p.add_argument("--format", choices=("hats", "csv", "fits"), help="default: export.format (hats)"),
                   p.add_argument("--run-date", help="YYYY-MM-DD of the night (default: the newest night)"),
                   p.add_argument("--output", help="folder of the exports (default: export.output)"))),
    "simulate": ("write a synthetic catalog and cutouts lake of any size, for load tests", _simulate, lambda p: (
        p.add_argument("--objects", type=int, required=True, help="number of objects"),
        p.add_argument("--seed", type=int, default=0))),
    "run": ("the nightly chain: extract, cutouts, training table, train if needed, score, evaluate", _run,
            lambda p: (p.add_argument("--retrain", action="store_true", help="train even if a model exists"),)),
    "check-cluster": ("run a few tasks and show, per task, the executor, its Python and where skyclass was "
                      "imported from", _check_cluster, lambda p: (
                          p.add_argument("--tasks", type=int, default=4, help="number of tasks (default 4)"),
                          p.add_argument("--wait-executors", type=int, default=0, metavar="N",
                                         help="wait for N executors to register before running (default 0)"),
                          p.add_argument("--timeout-s", type=float, default=120.0,
                                         help="how long to wait for them (default 120)"),
                          p.add_argument("--json", action="store_true", help="print JSON instead of a table"))),
    "demo": ("the whole pipeline on this machine against the SkyServer stand-in (what `make demo` runs)", _demo,
             None),
}

# Command-line flags that are shorthands for config keys.
_FLAG_TO_KEY = {
    "catalog": {"cutouts": "cutouts.catalog", "score": "score.catalog"},
    "max_objects": {"cutouts": "cutouts.max_objects"},
    "mode": {"train": "train.mode"},
    "feature_set": {"train": "train.feature_set"},
    "model": {"evaluate": "evaluate.model", "score": "score.model"},
    "run_date": {"score": "score.run_date", "extract": "extract.run_date", "export": "export.run_date"},
    "format": {"export": "export.format"},
    "output": {"export": "export.output"},
    "resume": {"extract": "extract.resume"},
    "rescore": {"score": "score.rescore"},
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skyclass", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, _, add_args) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_common(p)
        if add_args:
            add_args(p)
    p = sub.add_parser("standin", help="serve the SkyServer stand-in (SqlSearch, ImgCutout) on 127.0.0.1",
                       description="serve the SkyServer stand-in (SqlSearch, ImgCutout) on 127.0.0.1; "
                                   "its cutouts are SIMULATED images for tests and demos")
    _add_standin_arguments(p)
    _add_verbose(p)
    p = sub.add_parser("package", help="change a model package: --add-cpu-model writes its TensorFlow Lite forms",
                       description="write a model package's TensorFlow Lite forms (model.tflite, tabular.tflite) "
                                   "for CPU scoring, checked against Keras on the lake's validation split")
    _add_common(p)
    p.add_argument("--add-cpu-model", metavar="PACKAGE", required=True, help="model package folder")
    return parser


def _add_common(p):
    p.add_argument("--conf", default=str(DEFAULT_CONF) if DEFAULT_CONF.exists() else None,
                   help="YAML config (default: conf/local.yaml of the checkout, else built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set skyserver.url=http://127.0.0.1:8089/dr17")
    _add_verbose(p)


def _add_verbose(p):
    p.add_argument("--verbose", action="store_true",
                   help="also show third-party INFO logs and warnings (Horovod, Petastorm, py4j, TensorFlow) that "
                        "a normal run hides")


def _overrides_from_flags(args) -> list[str]:
    items = []
    for flag, by_command in _FLAG_TO_KEY.items():
        value = getattr(args, flag, None)
        key = by_command.get(args.command)
        if key and value not in (None, False):
            items.append(f"{key}={'true' if value is True else value}")
    return items


def main(argv: Sequence[str] | None = None, on_result: Callable | None = None) -> int:
    """Entry point of the ``skyclass`` console script and of every file in ``jobs/``.

    ``on_result(command, result, error, seconds)``, when given, is called once the stage has returned (``error``
    None) or failed with a SkyclassError (``result`` None): the jobs print their JSON summary line with it
    (skyclass.stage_summary).
    """
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    if args.command == "standin":
        return _standin(args) or 0
    try:
        conf = load_config(args.conf, [*args.overrides, *_overrides_from_flags(args)])
    except ConfigError as err:
        print(f"skyclass {args.command}: configuration error: {err}", file=sys.stderr)
        return 2
    if args.command == "package":  # file work on the driver only: no Spark session
        try:
            print(_package(conf, args))
        except SkyclassError as err:
            print(f"skyclass {args.command}: {err}", file=sys.stderr)
            return 1
        return 0
    from pyspark.sql import SparkSession

    from skyclass.session import build_spark

    started = time.monotonic()
    # A session that was running before this call (a test's, a notebook's) is used and left running.
    already_running = SparkSession.getActiveSession() is not None
    spark = build_spark(replace(conf.spark, app_name=f"{conf.spark.app_name}-{args.command}"))
    try:
        result = COMMANDS[args.command][1](spark, conf, args)
    except SkyclassError as err:
        print(f"skyclass {args.command}: {err}", file=sys.stderr)
        if on_result is not None:
            on_result(args.command, None, err, time.monotonic() - started)
        return 1
    finally:
        if not already_running:
            spark.stop()
    if result is not None:
        print(result)
    if on_result is not None:
        on_result(args.command, result, None, time.monotonic() - started)
    return 0


def job_entry(command: str, on_result: Callable | None = None) -> Callable[[Sequence[str] | None], int]:
    """The ``main(argv=None)`` of a ``jobs/`` file: the ``skyclass COMMAND`` subcommand under spark-submit
    (``on_result``: see :func:`main`)."""

    def job_main(argv: Sequence[str] | None = None) -> int:
        return main([command, *(sys.argv[1:] if argv is None else argv)], on_result=on_result)

    job_main.__doc__ = f"spark-submit entry point of `skyclass {command}`."
    return job_main


if __name__ == "__main__":
    sys.exit(main())
