"""skyclass export: the HATS layout and properties, every prediction in exactly one partition and in the HEALPix
pixel its position falls in (checked with cdshealpix directly, not through skyclass.export), the partition cap,
atomic replacement, and the CSV and FITS files. The LSDB round trip is tests/test_hats_lsdb.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import astropy.units as u
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from astropy.coordinates import Latitude, Longitude
from cdshealpix.nested import lonlat_to_healpix

from export_fixture import make_night_lake
from skyclass import export
from skyclass.config import REPO_ROOT, load_config

RUN_DATE = "2026-01-02"
CAP = 400
HIGHEST_ORDER = 10
LEAF = re.compile(r"Norder=(\d+)/Dir=(\d+)/Npix=(\d+)\.parquet$")


def _conf(tmp, **export_keys):
    items = [f"lake.root={tmp}/lake", f"lake.predictions={tmp}/predictions", f"export.output={tmp}/exports",
             f"export.max_rows_per_partition={CAP}", f"export.highest_order={HIGHEST_ORDER}"]
    items += [f"export.{k}={v}" for k, v in export_keys.items()]
    return load_config(None, items)


def _healpix(ra, dec, order):
    """The library's own answer, independent of skyclass.export."""
    return lonlat_to_healpix(Longitude(np.asarray(ra), u.deg), Latitude(np.asarray(dec), u.deg), order).astype(
        np.int64)


def _leaves(catalog):
    found = []
    for folder, _, files in os.walk(os.path.join(catalog, "dataset")):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), os.path.join(catalog, "dataset"))
            match = LEAF.search(rel)
            if match:
                found.append((rel, int(match[1]), int(match[2]), int(match[3])))
    return sorted(found)


@pytest.fixture(scope="module")
def exported(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    truth = make_night_lake(f"{tmp}/lake", f"{tmp}/predictions", RUN_DATE)
    result = export.export_predictions(spark, _conf(tmp))
    return tmp, truth, result


# --- the partition plan, without Spark --------------------------------------------------------------------------

def test_plan_splits_only_pixels_over_the_cap():
    # Order-2 pixels: 0..15 lie in order-0 pixel 0, 16..31 in pixel 1. Pixel 0 holds 9 rows (over the cap of 5),
    # pixel 1 holds 3.
    pixels = [0, 1, 2, 3, 4, 8, 17, 30]
    counts = [3, 1, 1, 1, 1, 2, 2, 1]
    plan = export.plan_partitions(pixels, counts, fine_order=2, max_rows=5)
    # Order-1 pixel 0 (order-2 pixels 0..3) holds 6 rows: split again; order-1 pixels 1 and 2 fit.
    expected = [(2, 0, 3), (2, 1, 1), (2, 2, 1), (2, 3, 1), (1, 1, 1), (1, 2, 2), (0, 1, 3)]
    assert [(p.order, p.pixel, p.rows) for p in plan] == expected
    assert [p.first_index for p in plan] == sorted(p.first_index for p in plan)


def test_plan_refuses_a_pixel_that_cannot_be_split_below_the_cap():
    with pytest.raises(export.ExportError, match="export.max_rows_per_partition"):
        export.plan_partitions([5, 6], [10, 1], fine_order=3, max_rows=9)


# --- the HATS catalog ---------------------------------------------------------------------------------------------

def test_layout_and_properties(exported):
    tmp, truth, result = exported
    catalog = export.export_path(_conf(tmp), RUN_DATE)
    assert result.path == catalog and catalog.endswith(f"skyclass_{RUN_DATE}")
    props = export.read_hats_properties(catalog)
    assert props["obs_collection"] == f"skyclass_{RUN_DATE}"
    assert props["dataproduct_type"] == "object"
    assert int(props["hats_nrows"]) == len(truth)
    assert (props["hats_col_ra"], props["hats_col_dec"]) == ("ra", "dec")
    assert (props["hats_col_healpix"], props["hats_col_healpix_order"]) == ("_healpix_29", "29")
    assert props["hats_npix_suffix"] == ".parquet" and int(props["hats_max_rows"]) == CAP
    assert props["hats_builder"].startswith("skyclass v") and props["skyclass_run_date"] == RUN_DATE
    leaves = _leaves(catalog)
    assert int(props["hats_order"]) == max(order for _, order, _, _ in leaves)
    for rel, order, directory, pixel in leaves:
        assert directory == pixel // 10_000 * 10_000, rel
    # partition_info.csv lists exactly the leaves on disk.
    info = pd.read_csv(os.path.join(catalog, "partition_info.csv"))
    assert list(info.columns) == ["Norder", "Npix"]
    assert sorted(zip(info.Norder, info.Npix)) == sorted((o, p) for _, o, _, p in leaves)
    # _common_metadata: the leaves' schema; _metadata: every leaf's row groups with its relative path, in
    # breadth-first order (by the first order-29 index of each pixel).
    schema = pq.read_schema(os.path.join(catalog, "dataset", "_common_metadata"))
    assert schema.names[0] == "_healpix_29" and {"ra", "dec", "predicted_class", "p_qso", "r", "quality"} <= set(
        schema.names)
    meta = pq.read_metadata(os.path.join(catalog, "dataset", "_metadata"))
    assert meta.num_rows == len(truth)
    paths = [meta.row_group(i).column(0).file_path for i in range(meta.num_row_groups)]
    assert sorted(set(paths)) == sorted(rel for rel, _, _, _ in leaves)
    firsts = [int(m[3]) << (2 * (29 - int(m[1]))) for m in map(LEAF.search, dict.fromkeys(paths))]
    assert firsts == sorted(firsts)
    for rel, *_ in leaves:
        assert pq.read_schema(os.path.join(catalog, "dataset", rel)).equals(schema, check_metadata=False)
    assert not [n for n in os.listdir(os.path.dirname(catalog)) if n.startswith(("_", "."))]


def test_every_prediction_is_in_exactly_one_partition_and_in_its_pixel(exported):
    tmp, truth, _ = exported
    catalog = export.export_path(_conf(tmp), RUN_DATE)
    frames = []
    for rel, order, _, pixel in _leaves(catalog):
        leaf = pq.read_table(os.path.join(catalog, "dataset", rel)).to_pandas()
        assert (_healpix(leaf.ra, leaf.dec, order) == pixel).all(), rel
        assert (leaf["_healpix_29"].to_numpy() == _healpix(leaf.ra, leaf.dec, 29)).all(), rel
        assert leaf["_healpix_29"].is_monotonic_increasing, rel
        frames.append(leaf)
    rows = pd.concat(frames, ignore_index=True)
    assert len(rows) == len(truth) and rows.objid.is_unique
    merged = truth.merge(rows, on="objid", suffixes=("", "_export"), validate="one_to_one")
    assert len(merged) == len(truth)
    for column in ("ra", "dec", "predicted_class", "p_qso", "status", "r", "quality"):
        assert (merged[column] == merged[f"{column}_export"]).all(), column


def test_partitions_respect_the_cap_and_are_as_coarse_as_it_allows(exported):
    tmp, truth, result = exported
    leaves = _leaves(export.export_path(_conf(tmp), RUN_DATE))
    rows = {(o, p): pq.read_metadata(os.path.join(export.export_path(_conf(tmp), RUN_DATE), "dataset", rel)).num_rows
            for rel, o, _, p in leaves}
    assert max(rows.values()) <= CAP and result.largest_partition_rows == max(rows.values())
    assert result.files == len(leaves)
    orders = {o for o, _ in rows}
    assert min(orders) <= 1 and max(orders) >= 5  # sparse sky in big pixels, the dense field split deep
    # A partition's parent pixel must have held more than the cap (else the parent would be the partition),
    # counted from the truth with the HEALPix library.
    for (order, pixel) in rows:
        if order > 0:
            parent_rows = int((_healpix(truth.ra, truth.dec, order - 1) == pixel >> 2).sum())
            assert parent_rows > CAP, (order, pixel, parent_rows)


def test_rerun_replaces_the_export_whole_and_a_failed_one_leaves_it(spark, exported, monkeypatch):
    tmp, truth, first = exported
    catalog = export.export_path(_conf(tmp), RUN_DATE)
    before = _leaves(catalog)

    def broken(*args, **kwargs):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(export, "write_hats_metadata", broken)
    with pytest.raises(OSError, match="injected"):
        export.export_predictions(spark, _conf(tmp, max_rows_per_partition=2000))
    assert _leaves(catalog) == before
    assert not [n for n in os.listdir(os.path.dirname(catalog)) if n.startswith(("_", "."))]
    monkeypatch.undo()

    second = export.export_predictions(spark, _conf(tmp, max_rows_per_partition=2000))
    after = _leaves(catalog)
    assert after != before and len(after) == second.files < first.files
    assert sum(pq.read_metadata(os.path.join(catalog, "dataset", rel)).num_rows for rel, *_ in after) == len(truth)
    assert int(export.read_hats_properties(catalog)["hats_max_rows"]) == 2000
    export.export_predictions(spark, _conf(tmp))  # back to the module's layout for the other tests
    assert _leaves(catalog) == before


# --- CSV and FITS ---------------------------------------------------------------------------------------------

def test_csv_and_fits_hold_every_prediction_with_its_position(spark, exported):
    from astropy.table import Table

    tmp, truth, _ = exported
    csv = export.export_predictions(spark, _conf(tmp, format="csv"))
    fits = export.export_predictions(spark, _conf(tmp, format="fits"))
    assert csv.path.endswith(f"skyclass_{RUN_DATE}.csv") and fits.path.endswith(f"skyclass_{RUN_DATE}.fits")
    for frame in (pd.read_csv(csv.path), Table.read(fits.path).to_pandas()):
        assert len(frame) == len(truth) and frame.objid.is_unique
        merged = truth.merge(frame, on="objid", suffixes=("", "_file"), validate="one_to_one")
        assert np.allclose(merged.ra, merged.ra_file, rtol=0, atol=1e-9)
        assert np.allclose(merged.p_qso, merged.p_qso_file, atol=1e-6)
        assert (merged.predicted_class == merged.predicted_class_file.astype(str)).all()
    assert str(Table.read(fits.path)["ra"].unit) == "deg"
    assert not [n for n in os.listdir(os.path.dirname(csv.path)) if n.startswith(("_", "."))]


# --- bad input --------------------------------------------------------------------------------------------------

def test_a_missing_night_is_named_with_the_nights_there(spark, exported):
    tmp, _, _ = exported
    with pytest.raises(export.ExportError, match=f"no predictions for night 2025-12-31.*{RUN_DATE}"):
        export.export_predictions(spark, _conf(tmp, run_date="2025-12-31"))


def test_predictions_without_a_position_stop_the_export(spark, exported):
    import pyarrow as pa

    from skyclass import lake

    tmp, _, _ = exported
    # A labelled catalog holding none of the night's objects: every prediction lacks a position there.
    os.makedirs(f"{tmp}/lake/catalog", exist_ok=True)
    pq.write_table(pa.Table.from_pylist([], schema=lake.CATALOG.arrow_schema()), f"{tmp}/lake/catalog/part-0.parquet")
    with pytest.raises(export.ExportError, match="5,005 predictions of night .* have no ra/dec in the catalog table"):
        export.export_predictions(spark, _conf(tmp, catalog="catalog"))


def test_cli_export_writes_the_file(exported):
    tmp, truth, _ = exported
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "lib"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "skyclass.cli", "export", "--format", "csv", "--run-date", RUN_DATE,
         "--output", f"{tmp}/cli", "--set", f"lake.root={tmp}/lake", "--set", f"lake.predictions={tmp}/predictions",
         "--set", "spark.master=local[1]", "--set", "spark.extra={spark.ui.enabled: 'false'}"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"exported {len(truth):,} predictions of night {RUN_DATE} as CSV" in done.stdout
    assert len(pd.read_csv(f"{tmp}/cli/skyclass_{RUN_DATE}.csv")) == len(truth)


# --- sky maps -----------------------------------------------------------------------------------------------------

def test_sky_map_statistics_match_the_healpix_library_and_the_projection_fits_the_footprint(spark, exported,
                                                                                            tmp_path):
    import json

    from skyclass import skymap
    from skyclass.evaluate import write_report

    tmp, truth, _ = exported
    conf = _conf(tmp)
    frame = export.labelled_night(spark, conf, RUN_DATE)
    whole = skymap.footprint(frame)
    assert whole.all_sky and whole.order() == 4
    field = frame.filter("ra between 229 and 232 and dec between 27 and 28.5")
    local = skymap.footprint(field)
    assert not local.all_sky and abs(local.ra_centre_deg - 230.62) < 0.2 and local.order() == 11

    order = local.order()
    stats = skymap.pixel_statistics(field, order).set_index(["predicted_class", "pixel"]).sort_index()
    subset = truth[truth.ra.between(229, 232) & truth.dec.between(27, 28.5)].assign(
        pixel=lambda d: _healpix(d.ra, d.dec, order))
    expected = subset.groupby(["predicted_class", "pixel"]).agg(objects=("objid", "size"),
                                                                 mean_p_qso=("p_qso", "mean")).sort_index()
    assert (stats.objects.to_numpy() == expected.objects.to_numpy()).all()
    assert np.allclose(stats.mean_p_qso.to_numpy(), expected.mean_p_qso.to_numpy(), atol=1e-6)

    # A report to attach the night's map to, as the nightly run does.
    from skyclass.config import CLASSES
    from skyclass.metrics import metrics_from_confusion

    metrics = metrics_from_confusion(np.array([[5, 1, 0], [0, 4, 1], [1, 0, 3]]), CLASSES)
    write_report({"title": "t", "headline": "k", "class_names": list(CLASSES), "test_rows": 15,
                  "results": [{"key": "k", "kind": "network", "title": "net", "metrics": metrics}]}, str(tmp_path))
    result = skymap.write_night_sky_map(spark, conf, RUN_DATE, str(tmp_path), simulated=True)
    assert result.projection == "mollweide" and result.rows == len(truth)
    assert os.path.getsize(result.path) > 10_000 and result.path.endswith(f"sky_map_{RUN_DATE}.png")
    skymap.attach_to_report(str(tmp_path), result, caption=f"Labels of night {RUN_DATE}", simulated=True)
    text = (tmp_path / "report.md").read_text()
    assert f"![Labels of night {RUN_DATE} (SIMULATED)](sky_map_{RUN_DATE}.png)" in text
    assert json.loads((tmp_path / "report.json").read_text())["sky_maps"][0]["order"] == 4
    field_map = skymap.write_sky_map(spark, field, tmp_path / "field.png", title="field", simulated=False)
    assert field_map.projection == "local" and field_map.order == order


def test_the_nightly_run_exports_when_score_export_hats_is_set(tmp_path, monkeypatch, conf_for):
    import sys
    import textwrap

    from skyclass import pipeline

    (tmp_path / "fake_export_stages.py").write_text(textwrap.dedent('''
        CALLS = []

        class Result:
            run_date, path = "2026-01-05", None

        def _stage(name):
            def run(spark, conf):
                CALLS.append((name, conf))
                return Result()
            return run

        extract_catalog, extract_photometric = _stage("extract"), _stage("extract_photometric")
        download_cutouts, build_training_table = _stage("cutouts"), _stage("training_table")
        train_model, score_catalog, evaluate = _stage("train"), _stage("score"), _stage("evaluate")
        export_predictions = _stage("export")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(pipeline, "STAGE_FUNCTIONS", {n: ("fake_export_stages", f) for n, (_, f) in
                                                      pipeline.STAGE_FUNCTIONS.items()})
    import fake_export_stages

    pipeline.run_nightly(None, conf_for(score={"export_hats": True}), retrain=True)
    names = [n for n, _ in fake_export_stages.CALLS]
    assert names[-3:] == ["score", "export", "evaluate"]
    export_conf = fake_export_stages.CALLS[-2][1]
    assert export_conf.export.format == "hats" and export_conf.export.run_date == "2026-01-05"
    fake_export_stages.CALLS.clear()
    pipeline.run_nightly(None, conf_for(), retrain=True)
    assert "export" not in [n for n, _ in fake_export_stages.CALLS]
    sys.modules.pop("fake_export_stages", None)
