"""SDSS PhotoObj ``objID`` bit layout: where an object was observed (run, rerun, camcol, field), read from its id.

The 64-bit objID packs, from the most significant bit down (SkyServer's ``fObjidFromSDSS``/``fSDSSfromObjID``;
checked here against the run, rerun, camcol and field columns of every object of the shared real cutouts file)::

    bit  63      unused (0)
    bits 59-62   skyVersion   (4 bits; 2 for DR8 and later)
    bits 48-58   rerun        (11 bits)
    bits 32-47   run          (16 bits)
    bits 29-31   camcol       (3 bits, 1..6)
    bit  28      firstField   (1 bit)
    bits 16-27   field        (12 bits)
    bits  0-15   obj          (16 bits, the object's number within its field)

Objects of one field share sky, seeing and calibration: :func:`field_columns` gives the Spark columns a field-grouped
split hashes (see ``split.group_by``).
"""
from __future__ import annotations

from typing import NamedTuple

# (shift, width) of each part, least significant bit first.
_PARTS = {
    "obj": (0, 16),
    "field": (16, 12),
    "first_field": (28, 1),
    "camcol": (29, 3),
    "run": (32, 16),
    "rerun": (48, 11),
    "sky_version": (59, 4),
}
FIELD_KEY_PARTS = ("run", "camcol", "field")


class ObjIdParts(NamedTuple):
    sky_version: int
    rerun: int
    run: int
    camcol: int
    first_field: int
    field: int
    obj: int


def decode_objid(objid: int) -> ObjIdParts:
    """Split an SDSS objID into its parts.

    Parameters
    ----------
    objid : int
        The objID, as a non-negative 64-bit integer (it never sets bit 63).

    Returns
    -------
    ObjIdParts

    Raises
    ------
    ValueError
        A negative id or one beyond 63 bits (not an SDSS objID).

    Examples
    --------
    >>> decode_objid(1237645879562862699)[:6]
    (2, 301, 94, 6, 0, 274)
    """
    value = int(objid)
    if value < 0 or value >= 1 << 63:
        raise ValueError(f"objID {objid} is not a 63-bit SDSS objID")
    return ObjIdParts(**{name: (value >> shift) & ((1 << width) - 1) for name, (shift, width) in _PARTS.items()})


def encode_objid(*, run: int, camcol: int, field: int, obj: int, rerun: int = 301, sky_version: int = 2,
                 first_field: int = 0) -> int:
    """The objID of the given parts (the inverse of :func:`decode_objid`; used by tests and fixtures).

    Raises
    ------
    ValueError
        A part does not fit its bits.
    """
    parts = dict(obj=obj, field=field, first_field=first_field, camcol=camcol, run=run, rerun=rerun,
                 sky_version=sky_version)
    value = 0
    for name, (shift, width) in _PARTS.items():
        part = int(parts[name])
        if not 0 <= part < 1 << width:
            raise ValueError(f"{name}={part} does not fit the {width} bits objID gives it")
        value |= part << shift
    return value


def part_column(name: str, objid="objid"):
    """Spark Column: one part of the objID column ``objid`` (a long), e.g. ``part_column("run")``.

    Raises
    ------
    ValueError
        An unknown part name.
    """
    from pyspark.sql import functions as F

    if name not in _PARTS:
        raise ValueError(f"unknown objID part {name!r}; one of {', '.join(_PARTS)}")
    shift, width = _PARTS[name]
    column = F.col(objid) if isinstance(objid, str) else objid
    return F.shiftright(column, shift).bitwiseAND((1 << width) - 1).cast("int")


def with_field_columns(frame):
    """``frame`` with ``run``, ``rerun``, ``camcol`` and ``field`` columns, decoded from ``objid`` where absent or
    null (a DataFrame transform).

    Parameters
    ----------
    frame : pyspark.sql.DataFrame
        With an ``objid`` column.

    Returns
    -------
    pyspark.sql.DataFrame
    """
    from pyspark.sql import functions as F

    for name in ("run", "rerun", "camcol", "field"):
        decoded = part_column(name)
        frame = frame.withColumn(name, F.coalesce(F.col(name).cast("int"), decoded) if name in frame.columns
                                 else decoded)
    return frame
