"""The SkyServer stand-in, spoken to over real HTTP on 127.0.0.1 with plain requests (not the project's client)."""
from __future__ import annotations

import io
import json
import time

import pandas as pd
import pytest
import requests
from PIL import Image

from catalog_fixture import make_labelled, make_photometric, write_csv
from skyclass.standin.server import Faults, StandinError, StandinServer
from skyclass.standin.sqlite_catalog import pad_specobjid, translate_sql

SQL_PATH = "/SkyServerWS/SearchTools/SqlSearch"
JPEG_PATH = "/SkyServerWS/ImgCutout/getjpeg"


def _sql(server, sql, fmt="csv"):
    return requests.get(server.url + SQL_PATH, params={"cmd": sql, "format": fmt}, timeout=10)


def _csv_rows(text):
    lines = text.splitlines()
    assert lines[0] == "#Table1"
    return lines[1], lines[2:]


def test_translate_sql_top_dbo_and_specobjid_literals():
    sql = "SELECT TOP 10 s.specObjID FROM dbo.SpecObj AS s WHERE s.specObjID > 5 AND 12 >= specobjid ORDER BY 1;"
    assert translate_sql(sql) == ("SELECT s.specObjID FROM SpecObj AS s WHERE s.specObjID > '00000000000000000005' "
                                  "AND '00000000000000000012' >= specobjid ORDER BY 1\nLIMIT 10")
    assert "BETWEEN '00000000000000000001' AND '18446744073709551615'" in translate_sql(
        "SELECT * FROM SpecObj WHERE specObjID BETWEEN 1 AND 18446744073709551615")
    assert "IN ('00000000000000000001', '00000000000000000002')" in translate_sql(
        "SELECT * FROM SpecObj WHERE specObjID IN (1,2)")
    assert pad_specobjid(2**64 - 1) == "18446744073709551615"


def test_csv_and_json_formats_with_ids_above_2_63(standin_factory):
    frame = make_labelled(50, seed=3)
    server = standin_factory([frame])
    ids = sorted(int(v) for v in frame["specobjid"])
    above = [v for v in ids if v >= 2**63]
    assert above, "the fixture must straddle 2**63"
    threshold = above[0] - 1  # a literal above 2**63 - 1: SQLite could not hold it as an integer
    resp = _sql(server, f"SELECT TOP 5 s.specObjID, s.class FROM SpecObj AS s WHERE s.specObjID > {threshold} "
                        "ORDER BY s.specObjID")
    assert resp.status_code == 200
    header, rows = _csv_rows(resp.text)
    assert header == "specObjID,class"
    assert [int(r.split(",")[0]) for r in rows] == above[:5]
    resp = _sql(server, f"SELECT TOP 2 s.specObjID FROM SpecObj s WHERE s.specObjID > {threshold} "
                        "ORDER BY s.specObjID", fmt="json")
    data = json.loads(resp.text)
    assert data[0]["TableName"] == "Table1"
    assert [row["specObjID"] for row in data[0]["Rows"]] == above[:2]


def test_join_values_match_the_source_and_zwarning_defaults_to_zero(standin_factory):
    frame = make_labelled(30, seed=4)
    server = standin_factory([frame])
    resp = _sql(server, "SELECT p.objID, p.z, s.z AS redshift, s.zWarning, s.class FROM SpecObj s "
                        "JOIN PhotoObj p ON s.bestObjID = p.objID ORDER BY p.objID")
    _, rows = _csv_rows(resp.text)
    got = pd.DataFrame([r.split(",") for r in rows], columns=["objid", "z", "redshift", "zwarning", "class"])
    want = frame.sort_values("objid")
    assert got["objid"].astype("int64").tolist() == want["objid"].tolist()
    assert got["z"].astype(float).tolist() == want["z"].tolist()
    assert got["redshift"].astype(float).tolist() == want["redshift"].tolist()
    assert set(got["zwarning"]) == {"0"}
    assert got["class"].tolist() == want["class"].tolist()


def test_unlabelled_rows_are_photoobj_only(standin_factory):
    server = standin_factory([make_labelled(20, seed=1), make_photometric(7, seed=2)])
    count = lambda sql: int(_csv_rows(_sql(server, sql).text)[1][0])  # noqa: E731
    assert count("SELECT COUNT(*) FROM PhotoObj") == 27
    assert count("SELECT COUNT(*) FROM SpecObj") == 20
    assert count("SELECT COUNT(*) FROM PhotoObj p LEFT JOIN SpecObj s ON s.bestObjID = p.objID "
                 "WHERE s.specObjID IS NULL") == 7


def test_row_cap_truncates(standin_factory):
    server = standin_factory([make_labelled(40, seed=1)], row_cap=15)
    _, rows = _csv_rows(_sql(server, "SELECT objID FROM PhotoObj").text)
    assert len(rows) == 15


def test_sql_errors_are_http_500_with_the_error_text(standin):
    resp = _sql(standin, "SELECT TOP 3 nosuchcolumn FROM SpecObj")
    assert resp.status_code == 500
    assert "nosuchcolumn" in resp.text and resp.text.startswith("ERROR")
    resp = _sql(standin, "DROP TABLE SpecObj")
    assert resp.status_code == 500
    resp = _sql(standin, "SELECT COUNT(*) FROM SpecObj; DELETE FROM SpecObj")
    assert resp.status_code == 500
    assert int(_csv_rows(_sql(standin, "SELECT COUNT(*) FROM SpecObj").text)[1][0]) == 2000


def test_getjpeg_renders_and_clamps(standin):
    resp = requests.get(standin.url + JPEG_PATH, params={"ra": 230.5, "dec": 27.7, "scale": 0.4, "width": 10,
                                                         "height": 5000}, timeout=30)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(resp.content)).size == (64, 2048)


def test_faults_throttle_error_and_error_body(standin):
    standin.faults = Faults(throttle_rate=1.0, retry_after_s=2.5)
    resp = _sql(standin, "SELECT TOP 1 objID FROM PhotoObj")
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "2.5"
    standin.faults = Faults(error_rate=1.0)
    assert _sql(standin, "SELECT TOP 1 objID FROM PhotoObj").status_code in (500, 503)
    standin.faults = Faults(error_body_rate=1.0)
    resp = _sql(standin, "SELECT TOP 1 objID FROM PhotoObj")
    assert resp.status_code == 200 and not resp.text.startswith("#Table1")
    standin.faults = Faults(latency_ms=300)
    started = time.monotonic()
    assert _sql(standin, "SELECT TOP 1 objID FROM PhotoObj").status_code == 200
    assert time.monotonic() - started >= 0.3
    stats = standin.stats()["sqlsearch"]
    assert stats["requests"] == 4 and stats["429"] == 1 and stats["error_body"] == 1
    assert len(standin.request_times("sqlsearch")) == 4


def test_corrupt_jpegs_differ_from_the_clean_render(standin):
    params = {"ra": 230.5, "dec": 27.7}
    clean = requests.get(standin.url + JPEG_PATH, params=params, timeout=30).content
    Image.open(io.BytesIO(clean)).convert("RGB")  # the clean one decodes
    standin.faults = Faults(corrupt_rate=1.0, seed=5)
    for _ in range(4):
        resp = requests.get(standin.url + JPEG_PATH, params=params, timeout=30)
        assert resp.status_code == 200
        assert resp.content != clean and len(resp.content) <= len(clean)
    assert standin.stats()["getjpeg"]["corrupt"] == 4


def test_refuses_non_loopback_address():
    with pytest.raises(StandinError, match="127.0.0.1"):
        StandinServer([make_photometric(5)], host="0.0.0.0")


def test_loads_csv_files_with_table_line(tmp_path):
    frame = make_labelled(10, seed=9)
    path = tmp_path / "export.csv"
    path.write_text("#Table1\n" + frame.to_csv(index=False))
    with StandinServer([str(path)]) as server:
        _, rows = _csv_rows(_sql(server, "SELECT specObjID FROM SpecObj ORDER BY specObjID").text)
    assert [int(r) for r in rows] == sorted(int(v) for v in frame["specobjid"])


def test_load_error_names_the_file(tmp_path):
    frame = make_labelled(5, seed=9)
    frame["specobjid"] = [f"{float(v):.6e}" for v in frame["specobjid"]]  # an export that went through float
    path = write_csv(frame, tmp_path / "floaty.csv")
    with pytest.raises(StandinError, match="floaty.csv.*specobjid"):
        StandinServer([path])


def test_cli_missing_catalog_says_where_the_data_is_expected(tmp_path, capsys):
    import argparse

    from skyclass.standin.server import add_cli_arguments, run_from_args

    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    args = parser.parse_args(["--catalog", str(tmp_path / "missing.csv"), "--port", "0"])
    assert run_from_args(args) == 2
    err = capsys.readouterr().err
    assert "missing.csv does not exist" in err and "../shared/data/sdss" in err and "--catalog" in err


def test_hold_answers_the_first_requests_then_holds_the_rest_until_released(standin):
    from concurrent.futures import ThreadPoolExecutor

    gate = standin.hold("getjpeg", after=2)
    params = {"ra": 230.5, "dec": 27.7, "width": 64, "height": 64}
    for _ in range(2):
        assert requests.get(standin.url + JPEG_PATH, params=params, timeout=10).status_code == 200
    assert not gate.reached.is_set()
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(requests.get, standin.url + JPEG_PATH, params=params, timeout=30) for _ in range(2)]
        assert gate.reached.wait(10)
        assert not any(f.done() for f in held) and standin.stats()["getjpeg"].get("200", 0) == 2
        gate.release()
        assert [f.result().status_code for f in held] == [200, 200]
    assert gate.passed == 4
    with pytest.raises(StandinError, match="hold"):
        standin.hold("other", after=1)
