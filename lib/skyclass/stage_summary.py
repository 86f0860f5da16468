"""The one machine-readable line every job in ``jobs/`` prints at its end, for operators' greps and alerts.

A stage's result object (ExtractResult, CutoutsResult, ...) already says what the stage did; this module turns it
into a single JSON line on stdout, the same keys for every stage::

    {"skyclass_summary": 1, "stage": "cutouts", "status": "ok", "rows_in": 200, "rows_out": 198, "failures": 2,
     "seconds": 41.3, "model_fingerprint": null, ...}

``status`` is ``"ok"`` or ``"failed"`` (with ``error``, the message the job printed to stderr). Cron's and
Airflow's logs hold the whole job output; ``grep '"skyclass_summary"'`` picks these lines out (deploy/README.md).
``rows_in`` is what the stage set out to process, ``rows_out`` what it wrote, ``failures`` the objects it could not
process (a failed cutout download; 0 where a stage has no per-object failure); a field that does not apply to a
stage is null.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Optional

log = logging.getLogger("skyclass.stage_summary")

MARKER = "skyclass_summary"
# The key's value: bumped if a key changes meaning, so alert rules can tell line formats apart.
FORMAT_VERSION = 1


def _fingerprint_of(package_path: Optional[str]) -> Optional[str]:
    if not package_path:
        return None
    try:
        from skyclass.package import ModelPackage

        return ModelPackage.load(package_path).fingerprint
    except Exception as err:  # noqa: BLE001 - a summary line must never fail the job it summarises
        log.warning("no fingerprint for the summary of %s (%s)", package_path, err)
        return None


def _stage_fields(command: str, result: Any) -> dict:
    """rows_in, rows_out, failures, model_fingerprint and a few stage-specific keys from a stage's result."""
    from skyclass import cutouts, evaluate, extract, score, train, training_table
    from skyclass.pipeline import NightlyResult

    if isinstance(result, extract.ExtractResult):
        dropped = sum(result.dropped.values())
        return {"table": result.table, "rows_in": result.rows_written + dropped, "rows_out": result.rows_written,
                "failures": 0, "dropped": dict(result.dropped), "flagged": dict(result.flagged),
                "requests": result.requests}
    if isinstance(result, cutouts.CutoutsResult):
        return {"catalog": result.catalog, "rows_in": result.requested, "rows_out": result.stored,
                "failures": result.failed_total, "failed": dict(result.failed),
                "skipped_present": result.skipped_present, "lake_objects": result.lake_objects}
    if isinstance(result, training_table.TrainingTableResult):
        written = sum(result.rows.values())
        excluded = sum(result.excluded.values())
        return {"rows_in": written + excluded + result.without_cutout, "rows_out": written, "failures": 0,
                "rows": dict(result.rows), "excluded": dict(result.excluded)}
    if isinstance(result, train.TrainResult):
        return {"rows_in": None, "rows_out": None, "failures": 0, "model_fingerprint": _fingerprint_of(result.path),
                "model_version": result.version, "epochs": result.epochs,
                "validation_accuracy": result.validation_accuracy}
    if isinstance(result, score.ScoreResult):
        return {"rows_in": result.n_catalog, "rows_out": result.n_scored, "failures": 0,
                "skipped": result.n_skipped, "night_rows": result.n_night_rows, "run_date": result.run_date,
                "status_counts": dict(result.status_counts), "model_version": result.model_version,
                "model_fingerprint": result.model_fingerprint or None}
    if isinstance(result, evaluate.EvaluationResult):
        return {"rows_in": result.test_rows, "rows_out": result.n_results, "failures": 0,
                "accuracy": result.accuracy, "simulated": result.simulated,
                "model_fingerprint": result.report.get("model_fingerprint")}
    if isinstance(result, NightlyResult):
        stages = []
        for outcome in result.stages:
            entry = {"stage": outcome.name, "skipped": outcome.skipped, "seconds": round(outcome.seconds, 1)}
            if outcome.result is not None and not outcome.skipped:
                entry.update(_stage_fields(outcome.name, outcome.result))
            stages.append(entry)
        scored = next((s for s in stages if s.get("run_date")), {})
        return {"rows_in": scored.get("rows_in"), "rows_out": scored.get("rows_out"),
                "failures": sum(s.get("failures") or 0 for s in stages), "trained": result.trained,
                "model_fingerprint": _fingerprint_of(result.model_path), "stages": stages}
    return {"rows_in": None, "rows_out": None, "failures": None}


def summary(command: str, result: Any, error: Optional[BaseException], seconds: float) -> dict:
    """The summary of one job as a dict (what :func:`print_summary` prints as JSON).

    Parameters
    ----------
    command : str
        The ``skyclass`` subcommand the job ran (``extract``, ``cutouts``, ...).
    result : object or None
        What the stage function returned (None when it failed).
    error : exception or None
        The SkyclassError the stage raised.
    seconds : float
        Wall time of the job, Spark's start included.

    Returns
    -------
    dict
        ``skyclass_summary``, ``stage``, ``status``, ``rows_in``, ``rows_out``, ``failures``, ``seconds``,
        ``model_fingerprint`` and stage-specific keys (JSON-serialisable).
    """
    out: dict[str, Any] = {MARKER: FORMAT_VERSION, "stage": command,
                           "status": "failed" if error is not None else "ok",
                           "rows_in": None, "rows_out": None, "failures": None, "seconds": round(seconds, 1),
                           "model_fingerprint": None}
    if error is not None:
        out["error"] = str(error)
    else:
        out.update(_stage_fields(command, result))
    return out


def _json_value(value: Any) -> Any:
    """numpy scalars as numbers; anything else JSON cannot hold, as text."""
    return value.item() if hasattr(value, "item") else str(value)


def print_summary(command: str, result: Any, error: Optional[BaseException], seconds: float) -> None:
    """Print the job's summary as one JSON line on stdout (the ``on_result`` of :func:`skyclass.cli.job_entry`).

    Parameters
    ----------
    command, result, error, seconds
        As for :func:`summary`.
    """
    print(json.dumps(summary(command, result, error, seconds), default=_json_value), flush=True)
