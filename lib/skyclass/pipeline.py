"""The nightly chain: extract → cutouts → training table → train (only when needed) → score → evaluate.

Each stage is the same library function its own job runs (``skyclass extract``, ``skyclass cutouts``, ...), imported
when its turn comes, so a missing or broken stage module fails with a message that names the stage rather than an
ImportError at start-up. Stages are idempotent and incremental on their own (extraction replaces the catalog,
cutouts fetches only missing ones, scoring skips objects already scored by the model), so rerunning a failed night
simply runs the chain again. The chain stops at the first failing stage: later stages read what it writes.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from skyclass.errors import SkyclassError

log = logging.getLogger(__name__)

# Stage name -> (module, function). Looked up at run time, so tests and deployments can see what runs where.
STAGE_FUNCTIONS: dict[str, tuple[str, str]] = {
    "extract": ("skyclass.extract", "extract_catalog"),
    "extract_photometric": ("skyclass.extract", "extract_photometric"),
    "cutouts": ("skyclass.cutouts", "download_cutouts"),
    "training_table": ("skyclass.training_table", "build_training_table"),
    "train": ("skyclass.train", "train_model"),
    "score": ("skyclass.score", "score_catalog"),
    "evaluate": ("skyclass.evaluate", "evaluate"),
    "export": ("skyclass.export", "export_predictions"),
}


class PipelineError(SkyclassError):
    """A stage of the nightly chain is missing or failed; ``stages`` holds what ran before it."""

    def __init__(self, message: str, stages: Optional[list] = None):
        super().__init__(message)
        self.stages = list(stages or [])


@dataclass(frozen=True)
class StageOutcome:
    """One stage of a nightly run: its summary line, duration, and the stage's own result object."""

    name: str
    summary: str
    seconds: float
    result: object = None
    skipped: bool = False


@dataclass
class NightlyResult:
    """Everything a nightly run did, stage by stage; ``str()`` is the CLI summary."""

    stages: list[StageOutcome] = field(default_factory=list)
    model_path: Optional[str] = None
    trained: bool = False

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def stage(self, name: str) -> StageOutcome:
        """The outcome of the stage called ``name`` (KeyError if it did not run)."""
        for outcome in self.stages:
            if outcome.name == name:
                return outcome
        raise KeyError(name)

    def __str__(self) -> str:
        lines = [f"nightly run: {len(self.stages)} stages in {self.seconds:.0f} s; model {self.model_path}"
                 f"{' (trained tonight)' if self.trained else ''}"]
        for s in self.stages:
            state = "skipped" if s.skipped else f"{s.seconds:.0f} s"
            lines.append(f"  [{s.name}] ({state}) {s.summary}")
        return "\n".join(lines)


def stage_function(stage: str) -> Callable:
    """Import and return the library function of a stage.

    Raises
    ------
    PipelineError
        The stage's module (or something it imports) is not installed, or lacks the function; the message names
        the stage, the module and the missing import.
    """
    module_name, function_name = STAGE_FUNCTIONS[stage]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        missing = getattr(err, "name", None) or str(err)
        what = "is not installed" if missing == module_name else f"cannot be imported: it needs {missing!r}"
        raise PipelineError(
            f"nightly stage {stage!r} runs {module_name}.{function_name}, but {module_name} {what} ({err}). "
            "Install the complete skyclass package and its requirements in the Spark environment (make setup, "
            "or deploy/package-venv.sh for clusters), or run the stages one by one with their jobs.") from err
    function = getattr(module, function_name, None)
    if not callable(function):
        raise PipelineError(f"nightly stage {stage!r}: {module_name} has no function {function_name}(spark, conf); "
                            "the installed skyclass does not match this pipeline — reinstall it")
    return function


def _existing_package(conf) -> Optional[str]:
    """The package scoring would use without training, or None when there is none yet."""
    if conf.score.model:
        return conf.score.model
    from skyclass.package import list_packages

    packages = list_packages(conf.lake.path("models"))
    return packages[-1] if packages else None


def _night_sky_map(spark, conf, scored, evaluated, result: NightlyResult) -> None:
    """The night's sky map, written beside the evaluation report and linked from it (a stage of its own in the
    summary). A map that cannot be drawn is logged and does not fail the night: the labels are already written."""
    run_date, report_dir = getattr(scored, "run_date", None), getattr(evaluated, "path", None)
    if not run_date or not report_dir:
        log.info("nightly: no sky map (the score or evaluate stage reported no night or report folder)")
        return
    began = time.monotonic()
    try:
        from skyclass import skymap

        simulated = bool(getattr(evaluated, "simulated", False))
        sky_map = skymap.write_night_sky_map(spark, conf, run_date, report_dir, simulated=simulated)
        skymap.attach_to_report(report_dir, sky_map, caption=f"Labels of night {run_date}", simulated=simulated)
        result.stages.append(StageOutcome("sky_map", str(sky_map), time.monotonic() - began, sky_map))
    except (SkyclassError, ImportError, OSError, ValueError) as err:
        log.error("nightly: the sky map of night %s could not be drawn: %s", run_date, err)
        result.stages.append(StageOutcome("sky_map", f"not drawn: {err}", time.monotonic() - began, skipped=True))


def run_nightly(spark, conf, retrain: bool = False) -> NightlyResult:
    """Run the nightly chain and return a summary of every stage.

    Stages, in order: ``extract`` (labelled catalog), ``extract_photometric`` (only when ``extract.box_ra_deg`` and
    ``extract.box_dec_deg`` are set), ``cutouts`` (for ``cutouts.catalog`` and, if different, ``score.catalog``),
    ``training_table``, ``train`` (only when there is no model package yet, or ``retrain``), ``score`` and
    ``evaluate`` (both with the package just trained, or the existing one); between them ``export (hats)`` when
    ``score.export_hats``; last, the night's sky map beside the evaluation report (``sky_map``).

    Parameters
    ----------
    spark : SparkSession
    conf : Config
    retrain : bool
        Train a new package even if one exists.

    Returns
    -------
    NightlyResult

    Raises
    ------
    PipelineError
        A stage is missing or raised a :class:`SkyclassError`; the message names the stage, ``.stages`` holds the
        outcomes of the stages before it. Other exceptions propagate unchanged after the failing stage is logged.
    """
    result = NightlyResult()

    def run(name: str, stage_conf, label: Optional[str] = None):
        label = label or name
        function = stage_function(name)
        log.info("nightly: %s starting", label)
        began = time.monotonic()
        try:
            value = function(spark, stage_conf)
        except SkyclassError as err:
            log.error("nightly: %s failed after %.0f s: %s", label, time.monotonic() - began, err)
            raise PipelineError(f"nightly run stopped at stage {label!r}: {err}", result.stages) from err
        except Exception:
            log.exception("nightly: %s failed after %.0f s", label, time.monotonic() - began)
            raise
        outcome = StageOutcome(label, str(value), time.monotonic() - began, value)
        result.stages.append(outcome)
        log.info("nightly: %s done in %.0f s: %s", label, outcome.seconds, outcome.summary)
        return value

    def skip(name: str, reason: str) -> None:
        result.stages.append(StageOutcome(name, reason, 0.0, skipped=True))
        log.info("nightly: %s skipped: %s", name, reason)

    run("extract", conf)
    if conf.extract.box_ra_deg is not None and conf.extract.box_dec_deg is not None:
        run("extract_photometric", conf)
    else:
        skip("extract_photometric", "extract.box_ra_deg / extract.box_dec_deg not set")
    for catalog in dict.fromkeys((conf.cutouts.catalog, conf.score.catalog)):
        run("cutouts", conf.replace(cutouts=dataclasses.replace(conf.cutouts, catalog=catalog)),
            label=f"cutouts ({catalog})")
    run("training_table", conf)

    model_path = _existing_package(conf)
    if retrain or model_path is None:
        trained = run("train", conf)
        model_path = trained.path
        result.trained = True
    else:
        skip("train", f"model package {model_path} exists (pass --retrain to train a new one)")
    result.model_path = model_path

    scored = run("score", conf.replace(score=dataclasses.replace(conf.score, model=model_path)))
    if conf.score.export_hats:
        run("export", conf.replace(export=dataclasses.replace(conf.export, format="hats", run_date=scored.run_date)),
            label="export (hats)")
    evaluate_model = conf.evaluate.model or model_path
    evaluated = run("evaluate", conf.replace(evaluate=dataclasses.replace(conf.evaluate, model=evaluate_model)))
    _night_sky_map(spark, conf, scored, evaluated, result)
    log.info("%s", result)
    return result
