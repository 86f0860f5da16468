"""Small SDSS-like catalogs made in code, in the exact column layout of SkyServer exports
(``../shared/data/sdss/README.md``), so tests pass on a fresh clone without the shared data."""
from __future__ import annotations

import numpy as np
import pandas as pd

LABELLED_COLUMNS = ["objid", "ra", "dec", "u", "g", "r", "i", "z", "run", "rerun", "camcol", "field",
                    "specobjid", "class", "redshift", "plate", "mjd", "fiberid"]
PHOTOMETRIC_COLUMNS = ["objid", "ra", "dec", "u", "g", "r", "i", "z"]
CLASS_MIX = {"GALAXY": 0.45, "STAR": 0.32, "QSO": 0.23}


def make_labelled(n: int, seed: int = 0, *, zwarning: bool = False, sentinels: int = 0) -> pd.DataFrame:
    """``n`` labelled objects with class-dependent colours and redshifts.

    ``specobjid`` is a Python int column (object dtype) whose values straddle 2**63, as real DR16+ IDs do.
    ``zwarning=True`` adds a ``zwarning`` column (nonzero for ~5% of rows); ``sentinels`` rows get u=-9999.
    """
    rng = np.random.default_rng(seed)
    classes = rng.choice(list(CLASS_MIX), size=n, p=list(CLASS_MIX.values()))
    r = rng.uniform(14.5, 19.5, n)
    # Class-dependent colours, roughly like the real loci: stars blue-to-red, QSOs blue in u-g, galaxies red.
    ug = np.select([classes == "GALAXY", classes == "STAR", classes == "QSO"],
                   [rng.normal(1.8, 0.3, n), rng.normal(1.2, 0.5, n), rng.normal(0.3, 0.2, n)])
    gr = np.select([classes == "GALAXY", classes == "STAR", classes == "QSO"],
                   [rng.normal(0.8, 0.15, n), rng.normal(0.5, 0.3, n), rng.normal(0.2, 0.15, n)])
    ri = rng.normal(0.35, 0.1, n)
    iz = rng.normal(0.2, 0.1, n)
    redshift = np.select([classes == "GALAXY", classes == "STAR", classes == "QSO"],
                         [rng.uniform(0.01, 0.4, n), rng.normal(0.0, 0.0003, n), rng.uniform(0.3, 3.5, n)])
    g = r + gr
    u = g + ug
    i = r - ri
    z = i - iz
    if sentinels:
        u[rng.choice(n, sentinels, replace=False)] = -9999.0
    # specObjIDs: a base below 2**63 plus strides, so about half of them lie above 2**63 (exact ints only).
    base = 2**63 - 1000 * (n // 2) * 4096
    specobjid = [base + 4096 * 1000 * k + int(rng.integers(0, 1000)) for k in range(n)]
    frame = pd.DataFrame({
        "objid": 1237645000000000000 + np.arange(n, dtype=np.int64) * 7919 + seed,
        "ra": rng.uniform(0, 360, n).round(7),
        "dec": rng.uniform(-10, 70, n).round(7),
        "u": u.round(5), "g": g.round(5), "r": r.round(5), "i": i.round(5), "z": z.round(5),
        "run": rng.integers(94, 8062, n), "rerun": 301, "camcol": rng.integers(1, 7, n),
        "field": rng.integers(11, 832, n),
        "specobjid": pd.Series(specobjid, dtype=object),
        "class": classes,
        "redshift": redshift.round(7),
        "plate": rng.integers(266, 11654, n), "mjd": rng.integers(51578, 58543, n),
        "fiberid": rng.integers(1, 1001, n),
    })
    if zwarning:
        frame["zwarning"] = np.where(rng.random(n) < 0.05, 4, 0)
    return frame


def make_photometric(n: int, seed: int = 0, *, ra0: float = 230.1, dec0: float = 27.2) -> pd.DataFrame:
    """``n`` unlabelled photometric objects in a 1x1 degree field, like ``unlabelled_abell2065.csv``."""
    lab = make_labelled(n, seed)
    rng = np.random.default_rng(seed + 1)
    lab["ra"] = (ra0 + rng.uniform(0, 1, n)).round(9)
    lab["dec"] = (dec0 + rng.uniform(0, 1, n)).round(9)
    lab["objid"] = 1237645472596754432 + np.arange(1, n + 1, dtype=np.int64)
    return lab[PHOTOMETRIC_COLUMNS]


def write_csv(frame: pd.DataFrame, path) -> str:
    """Write as SkyServer's CSV export does (plain CSV, header line, integers unformatted)."""
    frame.to_csv(path, index=False)
    return str(path)
