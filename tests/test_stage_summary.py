"""skyclass.stage_summary: the one JSON line each job prints at its end (what operators grep in cron and Airflow
logs). The lines of real jobs are checked where the schedules run them (tests/test_airflow_run.py,
tests/test_crontab.py); here, the mapping from each stage's result to the line's fields."""
from __future__ import annotations

import json

import numpy as np

from skyclass.cutouts import CutoutsResult
from skyclass.errors import SkyclassError
from skyclass.extract import ExtractResult
from skyclass.pipeline import NightlyResult, StageOutcome
from skyclass.score import ScoreResult
from skyclass.stage_summary import print_summary, summary
from skyclass.training_table import TrainingTableResult


def _cutouts(**kw):
    values = dict(catalog="photometric", path="lake/cutouts", requested=120, stored=115,
                  failed={"http_404": 3, "blank": 2}, skipped_present=7, elapsed_s=3.0, rate_per_s=40.0,
                  lake_objects=400, lake_bytes_per_object=2000.0)
    values.update(kw)
    return CutoutsResult(**values)


def _score():
    return ScoreResult(run_date="2026-03-01", model_version="v1", package_path="models/v1", catalog="photometric",
                       path="predictions/run_date=2026-03-01", n_catalog=130, n_scored=30, n_skipped=100,
                       n_night_rows=30, status_counts={"ok": np.int64(29), "no_cutout": 1},
                       model_fingerprint="sha256:abc")


def test_cutouts_line_counts_requested_stored_and_failed(capsys):
    print_summary("cutouts", _cutouts(), None, 12.34)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith('{"skyclass_summary": 1')
    line = json.loads(out)
    assert (line["stage"], line["status"], line["rows_in"], line["rows_out"], line["failures"]) == \
        ("cutouts", "ok", 120, 115, 5)
    assert line["failed"] == {"http_404": 3, "blank": 2} and line["seconds"] == 12.3
    assert line["model_fingerprint"] is None


def test_extract_line_counts_dropped_rows_in():
    result = ExtractResult(table="catalog", path="lake/catalog", source="skyserver", rows_written=290,
                           dropped={"zwarning": 6, "sentinel": 4}, flagged={"bad_photometry": 3})
    line = summary("extract", result, None, 1.0)
    assert (line["rows_in"], line["rows_out"], line["dropped"]) == (300, 290, {"zwarning": 6, "sentinel": 4})


def test_table_and_score_lines():
    table = TrainingTableResult(path="lake/training", rows={"train": 200, "validation": 50, "test": 40},
                                excluded={"bad_photometry": 7}, without_cutout=3, tabular_only=False,
                                stats_path="lake/training/stats.json", elapsed_s=2.0)
    assert (summary("table", table, None, 1)["rows_in"], summary("table", table, None, 1)["rows_out"]) == (300, 290)
    line = json.loads(json.dumps(summary("score", _score(), None, 1), default=lambda v: v.item()))
    assert (line["rows_in"], line["rows_out"], line["skipped"]) == (130, 30, 100)
    assert line["model_fingerprint"] == "sha256:abc" and line["status_counts"] == {"ok": 29, "no_cutout": 1}


def test_failed_stage_says_failed_with_the_error(capsys):
    print_summary("extract", None, SkyclassError("SkyServer answered HTTP 500 to every try"), 4.0)
    line = json.loads(capsys.readouterr().out)
    assert line["status"] == "failed" and line["error"] == "SkyServer answered HTTP 500 to every try"
    assert line["rows_out"] is None


def test_nightly_line_holds_one_entry_per_stage():
    night = NightlyResult(stages=[StageOutcome("cutouts (photometric)", "…", 3.0, _cutouts()),
                                  StageOutcome("train", "skipped", 0.0, None, skipped=True),
                                  StageOutcome("score", "…", 5.0, _score())])
    line = summary("run", night, None, 9.0)
    assert [s["stage"] for s in line["stages"]] == ["cutouts (photometric)", "train", "score"]
    assert line["stages"][1] == {"stage": "train", "skipped": True, "seconds": 0.0}
    assert (line["rows_in"], line["rows_out"], line["failures"], line["trained"]) == (130, 30, 5, False)
