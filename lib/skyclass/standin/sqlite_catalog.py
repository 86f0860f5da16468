"""The stand-in's database: catalog CSVs loaded into an in-memory SQLite database with SkyServer's table names,
and a translator from SkyServer's SQL dialect (SQL Server) to SQLite.

Tables (names and columns are case-insensitive, as on SkyServer):

- ``PhotoObj``: objID, ra, dec, u, g, r, i, z, run, rerun, camcol, field, mode (1 = primary) and any further
  columns of the CSVs (for example ``type``); every loaded row, labelled or not. ``PhotoPrimary`` is a view of
  the rows with mode = 1. psf/cModel/model magnitudes with errors, extinction and Petrosian radii per band that a
  CSV lacks are derived from its u..z and class (SIMULATED values, :mod:`skyclass.standin.photometry`).
- ``SpecObj``: specObjID, bestObjID, class, z (the redshift), zWarning, plate, mjd, fiberID; labelled rows only.

specObjID exceeds SQLite's signed 64-bit integers (real values reach ~1.3e19), so it is stored as 20-digit
zero-padded TEXT: text order then equals numeric order, so comparisons and ORDER BY stay exact. The translator
rewrites numeric literals compared with specObjID into padded strings, and results are unpadded on output.
"""
from __future__ import annotations

import logging
import math
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from skyclass.standin.photometry import derive_photometry

log = logging.getLogger(__name__)

SPECOBJID_DIGITS = 20  # 2**64 - 1 has 20 decimal digits
_SPEC_COLUMNS = {  # lower-case CSV name -> SpecObj column
    "specobjid": "specObjID", "class": "class", "redshift": "z", "zwarning": "zWarning",
    "plate": "plate", "mjd": "mjd", "fiberid": "fiberID",
}
_SDSS_CLASSES = ("GALAXY", "STAR", "QSO")


class CatalogLoadError(ValueError):
    """A catalog CSV or frame cannot be loaded (the message names the file and the column)."""


class StandinSQLError(ValueError):
    """The SQL is not valid for the stand-in (syntax error, unknown table or column, not a SELECT)."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple]
    truncated: bool


@dataclass(frozen=True)
class SkyIndex:
    """Photometric objects sorted by dec, for the cutout renderer's "what is in this field" look-ups."""

    objid: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    cls: np.ndarray
    g: np.ndarray
    r: np.ndarray
    i: np.ndarray

    def within(self, ra_deg: float, dec_deg: float, radius_deg: float) -> np.ndarray:
        """Indices of objects within a box of half-size ``radius_deg`` (on the sky) around (ra, dec)."""
        lo, hi = np.searchsorted(self.dec, [dec_deg - radius_deg, dec_deg + radius_deg])
        if hi <= lo:
            return np.empty(0, dtype=np.int64)
        # RA degrees shrink by cos(dec); use the widest point of the window so nothing at its edge is missed.
        cos_dec = max(math.cos(math.radians(min(90.0, abs(dec_deg) + radius_deg))), 1e-6)
        d_ra = np.abs((self.ra[lo:hi] - ra_deg + 180.0) % 360.0 - 180.0)
        return lo + np.nonzero(d_ra <= radius_deg / cos_dec)[0]


def pad_specobjid(value: int | str) -> str:
    """specObjID as the stand-in stores it: 20-digit zero-padded text (raises ValueError if not 0..2**64-1)."""
    number = int(value)
    if not 0 <= number < 2**64:
        raise ValueError(f"specObjID {value!r} is outside the unsigned 64-bit range")
    return f"{number:0{SPECOBJID_DIGITS}d}"


_PADDED_RE = re.compile(r"^\d{%d}$" % SPECOBJID_DIGITS)


def unpad_value(value):
    """Output form of a stored value: padded specObjIDs back to plain decimal integers (as Python int)."""
    if isinstance(value, str) and len(value) == SPECOBJID_DIGITS and _PADDED_RE.match(value):
        return int(value)
    return value


# --- SQL translation ---------------------------------------------------------------------------------------------

_TOP_RE = re.compile(r"^\s*SELECT\s+(DISTINCT\s+)?TOP\s*\(?\s*(\d+)\s*\)?\s+", re.IGNORECASE)
_DBO_RE = re.compile(r"\b(?:\w+\.)?dbo\.", re.IGNORECASE)  # BestDR17.dbo.PhotoObj and dbo.PhotoObj
_SPEC = r"\b(?:\w+\.)?specobjid\b"
_OP = r"(?:<=|>=|<>|!=|=|<|>)"
_COL_OP_NUM_RE = re.compile(rf"({_SPEC}\s*{_OP}\s*)(\d+)\b", re.IGNORECASE)
_NUM_OP_COL_RE = re.compile(rf"\b(\d+)(\s*{_OP}\s*{_SPEC})", re.IGNORECASE)
_BETWEEN_RE = re.compile(rf"({_SPEC}\s+(?:NOT\s+)?BETWEEN\s+)(\d+)(\s+AND\s+)(\d+)\b", re.IGNORECASE)
_IN_RE = re.compile(rf"({_SPEC}\s+(?:NOT\s+)?IN\s*\()([\d\s,]+)(\))", re.IGNORECASE)


def translate_sql(sql: str) -> str:
    """SkyServer (SQL Server) dialect → SQLite for the queries the project and its tests send.

    Handles ``SELECT [DISTINCT] TOP n`` (→ ``LIMIT n``), ``dbo.``/``BestDRnn.dbo.`` prefixes, and numeric
    literals compared with specObjID (→ padded strings, see the module docstring). Anything else is passed to
    SQLite unchanged, so unsupported SQL Server syntax fails as an SQL error, like a typo would on SkyServer.

    Raises
    ------
    StandinSQLError
        A specObjID literal outside the unsigned 64-bit range.
    """
    text = sql.strip().rstrip(";").strip()
    text = _DBO_RE.sub("", text)
    limit = None
    top = _TOP_RE.match(text)
    if top:
        limit = int(top.group(2))
        text = "SELECT " + (top.group(1) or "") + text[top.end():]

    def pad(number: str) -> str:
        try:
            return f"'{pad_specobjid(number)}'"
        except ValueError as err:
            raise StandinSQLError(str(err)) from None

    text = _BETWEEN_RE.sub(lambda m: m.group(1) + pad(m.group(2)) + m.group(3) + pad(m.group(4)), text)
    text = _IN_RE.sub(lambda m: m.group(1) + ", ".join(pad(n) for n in re.findall(r"\d+", m.group(2)))
                      + m.group(3), text)
    text = _COL_OP_NUM_RE.sub(lambda m: m.group(1) + pad(m.group(2)), text)
    text = _NUM_OP_COL_RE.sub(lambda m: pad(m.group(1)) + m.group(2), text)
    if limit is not None:
        text = f"{text}\nLIMIT {limit}"
    return text


# --- loading -----------------------------------------------------------------------------------------------------

def read_catalog_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a SkyServer/CasJobs CSV export with lower-case column names and specobjid as exact Python ints.

    A leading ``#Table1`` line (SkyServer's CSV format) is skipped.

    Raises
    ------
    CatalogLoadError
        The file is missing, has no objid column, or ids are not written as integers.
    """
    path = Path(path)
    if not path.is_file():
        raise CatalogLoadError(f"catalog file {path} does not exist")
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
    skip = 1 if first.startswith("#") else 0
    header = pd.read_csv(path, nrows=0, skiprows=skip).columns
    ids_as_text = {c: str for c in header if c.lower() in ("objid", "specobjid", "bestobjid")}
    frame = pd.read_csv(path, skiprows=skip, dtype=ids_as_text, keep_default_na=True)
    return normalise_catalog(frame, str(path))


def normalise_catalog(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Lower-case column names, exact integer ids, upper-case classes; raises CatalogLoadError naming ``name``."""
    frame = frame.rename(columns={c: str(c).strip().lower() for c in frame.columns})
    if frame.columns.duplicated().any():
        dupes = sorted(set(frame.columns[frame.columns.duplicated()]))
        raise CatalogLoadError(f"catalog {name}: duplicate columns {dupes} (names are case-insensitive)")
    for needed in ("objid", "ra", "dec"):
        if needed not in frame.columns:
            raise CatalogLoadError(f"catalog {name}: missing column {needed!r}; expected SkyServer export "
                                   f"columns objid, ra, dec, u, g, r, i, z[, specobjid, class, redshift]")
    frame = frame.copy()
    frame["objid"] = _exact_ints(frame["objid"], "objid", name, signed=True)
    if "specobjid" in frame.columns:
        frame["specobjid"] = _exact_ints(frame["specobjid"], "specobjid", name, signed=False)
        if "class" not in frame.columns:
            raise CatalogLoadError(f"catalog {name}: has specobjid but no 'class' column")
        frame["class"] = frame["class"].astype(str).str.strip().str.upper()
    return frame


def _exact_ints(values: pd.Series, column: str, name: str, *, signed: bool) -> pd.Series:
    out = []
    for k, v in enumerate(values.tolist()):
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out.append(int(v))
            continue
        text = str(v).strip()
        if not text.isdigit():
            raise CatalogLoadError(f"catalog {name}: {column} of row {k + 1} is {v!r}, not an integer written in "
                                   "full (ids must never pass through float; re-export the file)")
        out.append(int(text))
    bound = 2**63 if signed else 2**64
    if out and (max(out) >= bound or min(out) < 0):
        raise CatalogLoadError(f"catalog {name}: {column} outside the {'signed' if signed else 'unsigned'} "
                               "64-bit range")
    return pd.Series(out, index=values.index, dtype=object)


class SqliteCatalog:
    """Catalog frames loaded into SQLite with SkyServer's table names, queried by one thread at a time.

    Parameters
    ----------
    catalogs : sequence of path or DataFrame
        SkyServer exports (see ``../shared/data/sdss/README.md``). Frames/files with ``specobjid`` and ``class``
        fill PhotoObj and SpecObj; others fill PhotoObj only.

    Raises
    ------
    CatalogLoadError
        A file is missing or malformed.
    """

    def __init__(self, catalogs: Sequence[str | os.PathLike | pd.DataFrame]):
        started = time.monotonic()
        frames = []
        for k, item in enumerate(catalogs):
            if isinstance(item, pd.DataFrame):
                frames.append((f"<frame {k}>", normalise_catalog(item, f"<frame {k}>")))
            else:
                frames.append((str(item), read_catalog_csv(item)))
        if not frames:
            raise CatalogLoadError("the stand-in needs at least one catalog (CSV file or DataFrame)")
        photo, spec = _split_tables(frames)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(":memory:", check_same_thread=False)
        _create_tables(self._conn, photo, spec)
        self._conn.set_authorizer(_read_only_authorizer)
        self.photo_rows = len(photo)
        self.spec_rows = len(spec)
        self.sky_index = _sky_index(photo, spec)
        log.info("stand-in catalog: %d PhotoObj rows, %d SpecObj rows loaded in %.1f s", self.photo_rows,
                 self.spec_rows, time.monotonic() - started)

    def query(self, sql: str, row_cap: int) -> QueryResult:
        """Run SkyServer-dialect SQL; at most ``row_cap`` rows are returned (``truncated`` tells if more existed).

        Raises
        ------
        StandinSQLError
            Bad SQL, unknown names, or anything but a read-only SELECT.
        """
        if not re.match(r"^\s*(SELECT|WITH)\b", sql, re.IGNORECASE):
            raise StandinSQLError("only SELECT queries are allowed")
        translated = translate_sql(sql)
        with self._lock:
            try:
                cursor = self._conn.execute(translated)
                rows = cursor.fetchmany(row_cap + 1)
            except (sqlite3.Error, OverflowError) as err:
                raise StandinSQLError(str(err)) from None
            columns = [d[0] for d in cursor.description or ()]
            cursor.close()
        truncated = len(rows) > row_cap
        rows = rows[:row_cap]
        padded = _padded_columns(rows, len(columns))
        if padded:
            rows = [tuple(unpad_value(v) if j in padded else v for j, v in enumerate(row)) for row in rows]
        return QueryResult(columns, rows, truncated)


def _padded_columns(rows: Sequence[tuple], n_columns: int) -> set[int]:
    """Indices of columns holding padded specObjIDs (judged by their first non-NULL value)."""
    found = set()
    for j in range(n_columns):
        for row in rows:
            if row[j] is not None:
                if unpad_value(row[j]) is not row[j]:
                    found.add(j)
                break
    return found


def _split_tables(frames: Iterable[tuple[str, pd.DataFrame]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    photo_parts, spec_parts = [], []
    for name, frame in frames:
        spec_cols = [c for c in frame.columns if c in _SPEC_COLUMNS]
        photo_cols = [c for c in frame.columns if c not in _SPEC_COLUMNS]
        # Per catalog, before the catalogs are stacked: a column one file has and another lacks is derived for the
        # other's rows, not left null.
        classes = frame["class"] if "class" in frame.columns else pd.Series(None, index=frame.index, dtype=object)
        photo_parts.append(derive_photometry(frame[photo_cols], classes))
        if "specobjid" in frame.columns:
            bad = sorted(set(frame["class"]) - set(_SDSS_CLASSES))
            if bad:
                raise CatalogLoadError(f"catalog {name}: unknown class values {bad[:5]}; expected "
                                       f"{', '.join(_SDSS_CLASSES)}")
            spec = frame[spec_cols].rename(columns=_SPEC_COLUMNS)
            spec["bestObjID"] = frame["objid"]
            spec_parts.append(spec)
    photo = pd.concat(photo_parts, ignore_index=True, sort=False)
    dupes = photo["objid"].duplicated()
    if dupes.any():
        log.warning("stand-in: %d objects appear in more than one catalog; the first copy is kept", int(dupes.sum()))
        photo = photo[~dupes]
    photo = photo.rename(columns={"objid": "objID"})
    if "mode" not in photo.columns:
        photo["mode"] = 1
    spec = pd.concat(spec_parts, ignore_index=True, sort=False) if spec_parts else pd.DataFrame(
        {"specObjID": pd.Series(dtype=object), "bestObjID": pd.Series(dtype=object), "class": pd.Series(dtype=str)})
    for column, default in (("z", np.nan), ("zWarning", 0)):
        if column not in spec.columns:
            spec[column] = default
    spec["zWarning"] = spec["zWarning"].fillna(0)
    if spec["specObjID"].duplicated().any():
        raise CatalogLoadError("stand-in catalogs repeat specobjid values; each spectrum must appear once")
    spec["specObjID"] = [pad_specobjid(v) for v in spec["specObjID"].tolist()]
    return photo.reset_index(drop=True), spec.reset_index(drop=True)


def _sql_type(series: pd.Series) -> str:
    if series.dtype == object and len(series) and isinstance(series.iloc[0], int):
        return "INTEGER"
    if pd.api.types.is_integer_dtype(series) or pd.api.types.is_bool_dtype(series):
        return "INTEGER"
    if pd.api.types.is_float_dtype(series):
        return "REAL"
    return "TEXT"


def _insert(conn: sqlite3.Connection, table: str, frame: pd.DataFrame, types: dict[str, str],
            primary_key: str) -> None:
    columns = ", ".join(f'"{c}" {types[c]}{" PRIMARY KEY" if c == primary_key else ""}' for c in frame.columns)
    conn.execute(f'CREATE TABLE "{table}" ({columns})')
    # Python objects, NaN → NULL: sqlite3 cannot bind numpy scalars.
    values = frame.astype(object).where(frame.notna(), None).to_numpy().tolist()
    placeholders = ", ".join("?" for _ in frame.columns)
    conn.executemany(f'INSERT INTO "{table}" VALUES ({placeholders})', values)


def _create_tables(conn: sqlite3.Connection, photo: pd.DataFrame, spec: pd.DataFrame) -> None:
    photo_types = {c: _sql_type(photo[c]) for c in photo.columns}
    photo_types["objID"] = "INTEGER"
    _insert(conn, "PhotoObj", photo, photo_types, "objID")
    spec_types = {c: _sql_type(spec[c]) for c in spec.columns}
    spec_types.update({"specObjID": "TEXT", "bestObjID": "INTEGER", "class": "TEXT", "z": "REAL",
                       "zWarning": "INTEGER"})
    _insert(conn, "SpecObj", spec, spec_types, "specObjID")
    conn.execute('CREATE INDEX specobj_best ON SpecObj (bestObjID)')
    conn.execute('CREATE INDEX photoobj_ra ON PhotoObj (ra)')
    conn.execute('CREATE VIEW PhotoPrimary AS SELECT * FROM PhotoObj WHERE mode = 1')
    conn.commit()


_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                    getattr(sqlite3, "SQLITE_RECURSIVE", 33)}


def _read_only_authorizer(action, arg1, arg2, db_name, trigger):
    # SqlSearch is read-only; the stand-in is reachable from any local process, so refuse writes and PRAGMAs.
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


def _sky_index(photo: pd.DataFrame, spec: pd.DataFrame) -> SkyIndex:
    cls_by_objid = dict(zip(spec["bestObjID"].tolist(), spec["class"].tolist())) if len(spec) else {}
    order = np.argsort(photo["dec"].to_numpy(dtype=np.float64), kind="stable")
    objids = [int(v) for v in photo["objID"].to_numpy(dtype=object)[order]]

    def mags(band: str) -> np.ndarray:
        if band not in photo.columns:
            return np.full(len(photo), np.nan)
        return pd.to_numeric(photo[band], errors="coerce").to_numpy(dtype=np.float64)[order]

    return SkyIndex(
        objid=np.array(objids, dtype=np.int64),
        ra=photo["ra"].to_numpy(dtype=np.float64)[order],
        dec=photo["dec"].to_numpy(dtype=np.float64)[order],
        cls=np.array([cls_by_objid.get(o, "") for o in objids], dtype=object),
        g=mags("g"), r=mags("r"), i=mags("i"),
    )
