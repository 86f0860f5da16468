"""objID bit decoding (lib/skyclass/objid.py)."""
import doctest

import pytest

from skyclass import objid


# Real objIDs with the run/rerun/camcol/field SkyServer lists for them (rows of the shared real cutouts file).
REAL = [
    (1237645879562862699, 94, 301, 6, 274),
    (1237648704041648426, 752, 301, 3, 288),
    (1237648721766908093, 756, 301, 4, 418),
]


@pytest.mark.parametrize("value, run, rerun, camcol, field", REAL)
def test_decode_matches_skyserver_columns(value, run, rerun, camcol, field):
    parts = objid.decode_objid(value)
    assert (parts.run, parts.rerun, parts.camcol, parts.field, parts.sky_version) == (run, rerun, camcol, field, 2)


def test_encode_is_the_inverse_of_decode():
    value = objid.encode_objid(run=756, camcol=3, field=812, obj=4095, first_field=1)
    parts = objid.decode_objid(value)
    assert parts == objid.ObjIdParts(2, 301, 756, 3, 1, 812, 4095)
    assert objid.encode_objid(**{k: v for k, v in parts._asdict().items()}) == value


def test_bad_ids_and_parts_are_refused():
    with pytest.raises(ValueError, match="not a 63-bit"):
        objid.decode_objid(-1)
    with pytest.raises(ValueError, match="camcol=8 does not fit"):
        objid.encode_objid(run=1, camcol=8, field=1, obj=1)


def test_spark_columns_agree_with_python(spark):
    values = [v for v, *_ in REAL] + [objid.encode_objid(run=65535, camcol=7, field=4095, obj=65535, rerun=2047)]
    frame = spark.createDataFrame([(v,) for v in values], "objid long")
    rows = objid.with_field_columns(frame).collect()
    for row in rows:
        parts = objid.decode_objid(row["objid"])
        assert (row["run"], row["rerun"], row["camcol"], row["field"]) == (parts.run, parts.rerun, parts.camcol,
                                                                            parts.field)


def test_present_columns_are_kept_and_nulls_filled(spark):
    value = REAL[0][0]
    frame = spark.createDataFrame([(value, 7, None, None, 9)], "objid long, run long, rerun long, camcol long, "
                                                              "field long")
    row = objid.with_field_columns(frame).collect()[0]
    assert (row["run"], row["rerun"], row["camcol"], row["field"]) == (7, 301, 6, 9)


def test_docstring_examples_run():
    assert doctest.testmod(objid).failed == 0
