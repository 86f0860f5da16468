"""Extraction into the lake with a real local Spark and the SkyServer stand-in on 127.0.0.1: parallel keyset pages,
truncated-page splits, faults, errors, CSV import, quality rules, rerun and resume."""
from __future__ import annotations

import re
import threading
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from catalog_fixture import make_labelled, make_photometric, write_csv
from skyclass import lake
from skyclass.storage import table_exists as storage_exists
from skyclass.config import ConfigError
from skyclass.extract import (ExtractError, IdRange, catalog_page_sql, catalog_plan, extract_catalog,
                              extract_photometric, fetch_catalog_range, frame_to_arrow, photo_columns, plan_balanced_ranges,
                              plan_id_ranges, plan_ra_strips, prepare_staging, raw_schema, read_done_marker,
                              write_range)
from skyclass.skyserver import SkyServerClient
from skyclass.standin.server import Faults

BOX = {"box_ra_deg": [230.1, 231.1], "box_dec_deg": [27.2, 28.2]}


def _ids(frame):
    return [int(v) for v in frame["specobjid"]]


def _conf(conf_for, server, frame, skyserver=None, **extract):
    ids = _ids(frame)
    settings = {"min_specobjid": min(ids), "max_specobjid": max(ids), "tasks": 3, "page_rows": 300, **extract}
    return conf_for(skyserver={"url": server.url, "max_queries_per_s": 500, "retries": 6, "backoff_s": 0.02,
                               "max_backoff_s": 0.2, "timeout_s": 5, "row_cap": server.row_cap, **(skyserver or {})},
                    extract=settings)


def tmp_lake_root(conf):
    from pathlib import Path

    return Path(conf.lake.path("root"))


def _expected_quality(frame):
    # The fixtures' only bad magnitudes are the -9999 sentinel; everything else lies between 10 and 30.
    photometry_ok = ~(frame[list(lake.MAGNITUDES)].to_numpy(dtype=float) == -9999.0).any(axis=1)
    zwarning = frame["zwarning"].to_numpy() if "zwarning" in frame else np.zeros(len(frame))
    return np.where(zwarning != 0, "zwarning", np.where(photometry_ok, "ok", "bad_photometry"))


def _compare_one_to_one(spark, path, source):
    got = spark.read.parquet(path).toPandas()
    assert len(got) == len(source)
    got["specobjid"] = [int(v) for v in got["specobjid"]]  # Decimal → int, exact
    got = got.sort_values("specobjid").reset_index(drop=True)
    want = source.assign(specobjid=_ids(source)).sort_values("specobjid").reset_index(drop=True)
    assert got["specobjid"].tolist() == want["specobjid"].tolist()  # none lost, none duplicated, exact > 2**63
    assert got["objid"].tolist() == want["objid"].tolist()
    for column in ("ra", "dec", *lake.MAGNITUDES, "redshift"):
        assert got[column].tolist() == want[column].tolist(), column
    assert got["class"].tolist() == want["class"].tolist()
    assert got["quality"].tolist() == _expected_quality(want).tolist()
    return got


# --- pure parts ---------------------------------------------------------------------------------------------------

def test_plan_id_ranges_cover_the_id_space_without_gaps():
    ranges = plan_id_ranges(0, 2**64 - 1, 3)
    assert ranges[0].after == -1 and ranges[-1].end == 2**64 - 1
    assert all(a.end == b.after for a, b in zip(ranges, ranges[1:]))
    widths = [r.end - r.after for r in ranges]
    assert max(widths) - min(widths) <= 1 and sum(widths) == 2**64
    assert [(r.after, r.end) for r in plan_id_ranges(10, 12, 5)] == [(9, 10), (10, 11), (11, 12)]


def test_plan_ra_strips():
    strips = plan_ra_strips([230.0, 231.0], [27.0, 28.0], 4)
    assert [(s.ra_min, s.ra_max) for s in strips] == [(230.0, 230.25), (230.25, 230.5), (230.5, 230.75),
                                                      (230.75, 231.0)]
    assert [s.last for s in strips] == [False, False, False, True]


def test_balanced_ranges_split_by_row_counts():
    # Buckets of width 10: 0..9 holds 90 rows, 10..19 holds 5, 90..99 holds 5.
    ranges = plan_balanced_ranges(0, 99, 4, [(0, 90), (1, 5), (9, 5)], 10)
    assert [(r.after, r.end) for r in ranges] == [(-1, 9), (9, 99)]  # one bucket outweighs 3/4 of the rows
    ranges = plan_balanced_ranges(0, 99, 2, [(0, 50), (5, 25), (9, 25)], 10)
    assert [(r.after, r.end) for r in ranges] == [(-1, 9), (9, 99)]
    ranges = plan_balanced_ranges(5, 99, 3, [(0, 30), (5, 30), (9, 30)], 10)
    assert [(r.after, r.end) for r in ranges] == [(4, 9), (9, 59), (59, 99)]
    assert plan_balanced_ranges(0, 99, 3, [], 10) == plan_id_ranges(0, 99, 3)


def test_catalog_plan_balances_skewed_ids_with_one_histogram_query(conf_for, standin_factory):
    source = make_labelled(1000, seed=21)
    # Like real specObjIDs: 80 % of the rows packed into the lowest 1 % of the id space.
    ids = [2**60 + k * 2**46 for k in range(800)] + [2**63 + k * 2**52 for k in range(200)]
    source["specobjid"] = pd.Series(ids, dtype=object)
    server = standin_factory([source])
    conf = _conf(conf_for, server, source, tasks=4)
    plan = catalog_plan(conf)
    assert plan.probe_requests == 1 == server.stats()["sqlsearch"]["requests"]
    sizes = [sum(r.after < i <= r.end for i in ids) for r in plan.ranges]
    assert sum(sizes) == 1000 and max(sizes) <= 400, sizes
    uniform = [sum(r.after < i <= r.end for i in ids) for r in plan_id_ranges(min(ids), max(ids), 4)]
    assert max(uniform) >= 800  # what equal-width ranges would do


def test_catalog_page_sql():
    sql = catalog_page_sql(2**63 - 1, 2**63 + 10, 100, ["ra", "dec", "u"])
    assert sql.startswith("SELECT TOP 100")
    assert "p.ra, p.dec, p.u" in sql
    assert "WHERE s.specObjID > 9223372036854775807 AND s.specObjID <= 9223372036854775818" in sql


def test_bad_photo_column_is_a_clear_error_before_any_request(conf_for, standin):
    # Refused when the config loads (config checks the names), before any stage runs.
    with pytest.raises(ConfigError, match="extract.photo_columns"):
        conf_for(skyserver={"url": standin.url}, extract={"photo_columns": ["ra", "r; DROP TABLE SpecObj"]})
    conf = conf_for(skyserver={"url": standin.url}, extract={"photo_columns": ["ra", "class"]})
    with pytest.raises(ExtractError, match="clashes"):
        catalog_plan(conf)
    assert standin.stats() == {}


def test_bad_config_value_is_a_clear_error(conf_for):
    with pytest.raises(ConfigError, match="extract.bad_rows"):
        conf_for(extract={"bad_rows": "maybe"})
    with pytest.raises(ConfigError, match="extract.tasks"):
        conf_for(extract={"tasks": 0})


def test_fetch_range_splits_truncated_pages(standin_factory):
    frame = make_labelled(400, seed=5)
    server = standin_factory([frame], row_cap=50)
    ids = sorted(_ids(frame))
    rng = IdRange(0, ids[0] - 1, ids[-1])
    with SkyServerClient(server.url, max_requests_per_s=1000, retries=0) as client:
        got, stats = fetch_catalog_range(client, rng, ["ra", "dec", "u", "g", "r", "i", "z"], page_rows=60,
                                         row_cap=50)
    assert sorted(int(v) for v in got["specObjID"]) == ids
    assert stats.splits > 0 and stats.rows == 400
    assert stats.pages == stats.requests == server.stats()["sqlsearch"]["requests"]


# --- with Spark ---------------------------------------------------------------------------------------------------

def test_extract_catalog_parallel_pages_one_to_one(spark, conf_for, standin_factory):
    source = make_labelled(3000, seed=11, zwarning=True, sentinels=7)
    server = standin_factory([source, make_photometric(200, seed=3)], row_cap=250)
    conf = _conf(conf_for, server, source, page_rows=250, tasks=3)  # full pages of the cap 250: maybe cut → split
    result = extract_catalog(spark, conf)
    got = _compare_one_to_one(spark, conf.lake.table("catalog"), source)
    assert max(got["specobjid"]) > 2**63
    assert result.rows_written == 3000 and result.ranges == 3 and result.splits > 0
    # One histogram query plans the ranges, then one request per page (no faults here).
    assert result.requests == result.pages + 1 == server.stats()["sqlsearch"]["requests"]
    assert result.class_counts == source["class"].value_counts().to_dict()
    quality = pd.Series(_expected_quality(source)).value_counts().to_dict()
    assert result.flagged == {k: v for k, v in quality.items() if k != "ok"}
    assert "3,000 rows written" in str(result)
    schema = spark.read.parquet(conf.lake.table("catalog")).schema
    assert schema["specobjid"].dataType.simpleString() == "decimal(20,0)"
    assert [f.name for f in schema] == lake.CATALOG.names


@pytest.mark.slow
def test_extract_catalog_survives_timeouts_5xx_and_429(spark, conf_for, standin_factory):
    source = make_labelled(1200, seed=12)
    server = standin_factory([source])
    conf = conf_for(skyserver={"url": server.url, "max_queries_per_s": 500, "retries": 12, "backoff_s": 0.05,
                               "max_backoff_s": 0.3, "timeout_s": 0.3},
                    extract={"min_specobjid": min(_ids(source)), "max_specobjid": max(_ids(source)), "tasks": 2,
                             "page_rows": 200})
    # First every answer is later than the client's timeout; then 5xx, 429 and error pages at random.
    server.faults = Faults(latency_ms=600)
    flaky = Faults(error_rate=0.2, throttle_rate=0.2, retry_after_s=0.05, error_body_rate=0.1, seed=4)
    switch = threading.Timer(1.5, lambda: setattr(server, "faults", flaky))
    switch.start()
    try:
        result = extract_catalog(spark, conf)
    finally:
        switch.cancel()
    _compare_one_to_one(spark, conf.lake.table("catalog"), source)
    stats = server.stats()["sqlsearch"]
    assert stats.get("500", 0) + stats.get("503", 0) > 0 and stats.get("429", 0) > 0
    assert result.requests > result.pages


def test_sql_error_names_the_query(spark, conf_for, standin):
    conf = conf_for(skyserver={"url": standin.url, "max_queries_per_s": 500},
                    extract={"photo_columns": ["ra", "dec", "petroR90_r"], "tasks": 2, "balance_ranges": False})
    with pytest.raises(ExtractError, match=r"(?i)no such column: p.petroR90_r.*query: SELECT TOP \d+ p.objID"):
        extract_catalog(spark, conf)
    assert standin.stats()["sqlsearch"]["requests"] == 2  # one per range, no retries of a bad query


def test_resume_skips_completed_ranges(spark, conf_for, standin_factory):
    source = make_labelled(1500, seed=13)
    server = standin_factory([source])
    conf = _conf(conf_for, server, source, tasks=4, page_rows=200, run_date="2026-01-01")
    plan = catalog_plan(conf)
    columns, extra = photo_columns(conf)
    # An earlier attempt of this run (the same night) that completed ranges 0 and 1 before it was interrupted.
    prepare_staging(plan, "2026-01-01")
    with SkyServerClient(server.url, max_requests_per_s=1000) as client:
        for rng in plan.ranges[:2]:
            frame, stats = fetch_catalog_range(client, rng, columns, 200, server.row_cap)
            write_range(f"{plan.folder}/{rng.range_id}", frame_to_arrow(frame, raw_schema("catalog", extra), "t"),
                        stats)
    server.reset_stats()
    result = extract_catalog(spark, conf)
    assert result.ranges_resumed == 2
    lower_bounds = [int(m) for q in server.queries() for m in re.findall(r"s\.specObjID > (\d+)", q)]
    assert lower_bounds and min(lower_bounds) >= plan.ranges[2].after  # nothing of ranges 0-1 fetched again
    _compare_one_to_one(spark, conf.lake.table("catalog"), source)
    # A finished run leaves no staging, so the next run fetches everything again (and replaces the table).
    assert not (tmp_lake_root(conf) / "catalog.ranges").exists()


def _interrupted_run(spark, conf_for, server, source, run_date):
    """A real extraction of ``run_date`` that dies half-way: of its two ranges (one page each) one fails.

    Faults seed 1 with error_rate 0.5 fails the first request to arrive and answers the second (whichever range
    each belongs to); no retries."""
    conf = _conf(conf_for, server, source, skyserver={"retries": 0}, tasks=2, page_rows=5000, balance_ranges=False,
                 run_date=run_date)
    server.faults = Faults(error_rate=0.5, seed=1)
    with pytest.raises(ExtractError, match="1 of 2 catalog ranges failed"):
        extract_catalog(spark, conf)
    server.faults = Faults()
    plan = catalog_plan(conf)
    done = [r.range_id for r in plan.ranges if read_done_marker(f"{plan.folder}/{r.range_id}") is not None]
    assert len(done) == 1, done
    server.reset_stats()
    return plan


def test_a_resumed_run_reuses_its_own_ranges_and_a_later_night_fetches_afresh(spark, conf_for, standin_factory,
                                                                              caplog):
    source = make_labelled(600, seed=16)
    server = standin_factory([source])
    _interrupted_run(spark, conf_for, server, source, "2026-01-01")
    # The same night again: only the range that failed is fetched.
    same_night = _conf(conf_for, server, source, tasks=2, page_rows=5000, balance_ranges=False, run_date="2026-01-01")
    result = extract_catalog(spark, same_night)
    assert result.ranges_resumed == 1 and server.stats()["sqlsearch"]["requests"] == 1 == result.requests
    _compare_one_to_one(spark, same_night.lake.table("catalog"), source)

    # The next night finds the interrupted staging of an earlier night: it discards it and fetches both ranges.
    _interrupted_run(spark, conf_for, server, source, "2026-01-01")
    next_night = _conf(conf_for, server, source, tasks=2, page_rows=5000, balance_ranges=False, run_date="2026-01-02")
    with caplog.at_level("INFO", logger="skyclass.extract"):
        result = extract_catalog(spark, next_night)
    assert result.ranges_resumed == 0 and server.stats()["sqlsearch"]["requests"] == 2 == result.requests
    assert "discarding 1 ranges staged by run 2026-01-01" in caplog.text and "--resume" in caplog.text
    _compare_one_to_one(spark, next_night.lake.table("catalog"), source)

    # --resume adopts another night's staging on purpose.
    _interrupted_run(spark, conf_for, server, source, "2026-01-02")
    resumed = _conf(conf_for, server, source, tasks=2, page_rows=5000, balance_ranges=False, run_date="2026-01-03",
                    resume=True)
    result = extract_catalog(spark, resumed)
    assert result.ranges_resumed == 1 and server.stats()["sqlsearch"]["requests"] == 1
    _compare_one_to_one(spark, resumed.lake.table("catalog"), source)


def test_bad_run_date_is_refused_at_start_up(conf_for):
    with pytest.raises(ConfigError, match="extract.run_date must be a date written YYYY-MM-DD"):
        conf_for(extract={"run_date": "yesterday"})


def test_failed_ranges_keep_completed_ones_and_say_how_to_resume(spark, conf_for, standin_factory):
    source = make_labelled(300, seed=14)
    server = standin_factory([source], faults=Faults(error_rate=1.0))
    conf = _conf(conf_for, server, source, skyserver={"retries": 0}, tasks=2, balance_ranges=False)
    with pytest.raises(ExtractError, match="2 of 2 catalog ranges failed.*HTTP 50.*rerunning the same command resumes"):
        extract_catalog(spark, conf)

    # Now one range completes and the other fails: each range is one page (~150 rows < page_rows); the first page
    # request is answered, the second is held by the server until the client's timeout gives up on it.
    server.faults = Faults()
    server.reset_stats()
    gate = server.hold("sqlsearch", after=1)
    conf = _conf(conf_for, server, source, skyserver={"retries": 0, "timeout_s": 1}, tasks=2, balance_ranges=False)
    try:
        with pytest.raises(ExtractError, match="1 of 2 catalog ranges failed.*rerunning the same command resumes"):
            extract_catalog(spark, conf)
    finally:
        gate.release()
    assert not storage_exists(conf.lake.table("catalog"))  # no half catalog is published

    # The rerun fetches only the range that failed, and the catalog holds every object once.
    server.faults = Faults()
    server.reset_stats()
    result = extract_catalog(spark, conf)
    assert len(server.queries()) == 1  # the completed range is not fetched again
    assert result.rows_written == 300
    _compare_one_to_one(spark, conf.lake.table("catalog"), source)


def test_from_csv_skyserver_names_table_line_and_two_z_columns(spark, conf_for, tmp_path):
    source = make_labelled(500, seed=15, zwarning=True, sentinels=3)
    export = source.rename(columns={"objid": "objID", "specobjid": "specObjID", "zwarning": "zWarning"})
    # A CasJobs-style export: p.z then s.z, both called z; no redshift column.
    export = export[["objID", "specObjID", "ra", "dec", "u", "g", "r", "i", "z", "class", "redshift", "zWarning"]]
    path = tmp_path / "export.csv"
    path.write_text("#Table1\n" + export.to_csv(index=False).replace(",redshift,", ",z,", 1))
    conf = conf_for()
    result = extract_catalog(spark, conf, from_csv=str(path))
    _compare_one_to_one(spark, conf.lake.table("catalog"), source)
    assert result.rows_written == 500 and result.pages == 0
    # A rerun replaces the table: still 500 rows, not 1,000.
    extract_catalog(spark, conf, from_csv=str(path))
    assert spark.read.parquet(conf.lake.table("catalog")).count() == 500


def test_from_csv_lowercase_export_without_zwarning_and_drop(spark, conf_for, tmp_path):
    source = make_labelled(400, seed=16, sentinels=9)
    path = write_csv(source, tmp_path / "labelled.csv")  # the layout of ../shared/data/sdss/labelled.csv
    conf = conf_for(extract={"bad_rows": "drop"})
    result = extract_catalog(spark, conf, from_csv=path)
    got = spark.read.parquet(conf.lake.table("catalog")).toPandas()
    ok = _expected_quality(source) == "ok"
    assert result.dropped == {"bad_photometry": int((~ok).sum())} and (~ok).sum() == 9
    assert sorted(int(v) for v in got["specobjid"]) == sorted(_ids(source[ok]))
    assert set(got["quality"]) == {"ok"} and set(got["zwarning"]) == {0}
    assert all(isinstance(v, Decimal) for v in got["specobjid"])


def test_from_csv_errors_name_the_file_and_column(spark, conf_for, tmp_path):
    source = make_labelled(20, seed=17)
    missing = write_csv(source.drop(columns=["redshift"]), tmp_path / "no_redshift.csv")
    with pytest.raises(ExtractError, match=r"no_redshift.csv: missing column 'redshift'"):
        extract_catalog(spark, conf_for(), from_csv=missing)
    floaty = source.assign(specobjid=[f"{float(v):.15g}" for v in source["specobjid"]])
    path = write_csv(floaty, tmp_path / "floaty.csv")
    with pytest.raises(ExtractError, match=r"floaty.csv: specobjid value .* not an integer"):
        extract_catalog(spark, conf_for(), from_csv=path)
    with pytest.raises(ExtractError, match="nope.csv"):
        extract_catalog(spark, conf_for(), from_csv=str(tmp_path / "nope.csv"))


def test_extract_photometric_from_standin_and_csv(spark, conf_for, standin_factory, tmp_path):
    labelled = make_labelled(300, seed=18)
    photometric = make_photometric(900, seed=19)
    photometric.loc[photometric.index[:4], "g"] = -9999.0
    # A labelled object inside the box must not come back as unlabelled.
    labelled.loc[labelled.index[:5], ["ra", "dec"]] = [230.6, 27.7]
    server = standin_factory([labelled, photometric], row_cap=250)
    conf = conf_for(skyserver={"url": server.url, "max_queries_per_s": 500, "row_cap": 250},
                    extract={**BOX, "tasks": 3, "page_rows": 250})
    result = extract_photometric(spark, conf)
    got = spark.read.parquet(conf.lake.table("photometric")).toPandas().sort_values("objid")
    assert got["objid"].tolist() == sorted(photometric["objid"].tolist())
    assert result.splits > 0 and result.flagged == {"bad_photometry": 4}
    assert [f.name for f in spark.read.parquet(conf.lake.table("photometric")).schema] == lake.PHOTOMETRIC.names
    path = write_csv(photometric, tmp_path / "unlabelled.csv")
    again = extract_photometric(spark, conf_for(extract={"bad_rows": "drop"}), from_csv=path)
    assert again.rows_written == 896 and again.dropped == {"bad_photometry": 4}
