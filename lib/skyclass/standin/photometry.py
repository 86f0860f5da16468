"""PhotoObj columns the stand-in's catalogs lack, derived from what they have: psf and cModel magnitudes, their
errors, Galactic extinction and the Petrosian radius in r (SIMULATED values).

The shared exports (``../shared/data/sdss/labelled.csv``) carry only u g r i z (modelMag), but features such as
``psf_minus_cmodel_r`` or ``dered_cmodelmag_r`` (:mod:`skyclass.features`) need more PhotoObj columns. So that
extraction, training and scoring can run offline and in tests with the real client code, the stand-in serves
plausible values for every column of :data:`DERIVED_COLUMNS` a catalog does not carry itself:

* ``cmodelmag_<b>`` = modelMag + N(0, 0.01).
* ``psfmag_<b>`` = cModelMag + ~N(0, 0.03) for point sources (stars, QSOs) and + 0.4 + 0.9 ln(petroRad_r / 1.35")
  for extended ones (galaxies): the classic star/galaxy separator behaves as on the sky.
* ``petrorad_r``: ~1.35" (the seeing) for point sources, log-normal around 3" for galaxies.
* ``extinction_<b>`` = R_b E(B-V) with the SDSS coefficients of Schlafly & Finkbeiner (2011) and a smooth
  E(B-V) of 0.02-0.08 over the sky.
* ``<family>err_<b>`` = 0.003 + 0.2 x 10^(0.4 (m - m_lim,b)), m_lim the survey's 5-sigma depth in that band.

Which objects are extended: labelled ones by their class (GALAXY); unlabelled ones by PhotoObj ``type`` (3) when
the catalog has it, else with a probability that grows towards faint r (where galaxies dominate). The noise of
each value is a hash of the objID, so an object gets the same values in every catalog and every run.

A magnitude the catalog marks unusable (a -9999 sentinel) gives -9999 in every column derived from it, as
SkyServer does. Columns a catalog carries are served as they are: tests that need exact values give them.
These values are not real SDSS measurements; results that depend on them are on SIMULATED photometry.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

BANDS = ("u", "g", "r", "i", "z")
# A_b / E(B-V) for SDSS bands (Schlafly & Finkbeiner 2011, Table 6, R_V = 3.1).
EXTINCTION_COEFFICIENTS = {"u": 4.239, "g": 3.303, "r": 2.285, "i": 1.698, "z": 1.263}
# Magnitudes at which the error reaches ~0.2 (SDSS 95% completeness for point sources, roughly).
LIMITING_MAG = {"u": 22.0, "g": 22.2, "r": 22.2, "i": 21.3, "z": 20.5}
# Per band; petroRad only in r (the band sizes are quoted in). Every column costs load time (SQLite inserts), so
# only what features commonly read: modelMag is u..z itself.
DERIVED_FAMILIES = ("psfmag", "psfmagerr", "cmodelmag", "cmodelmagerr", "extinction")
DERIVED_COLUMNS = tuple(f"{f}_{b}" for f in DERIVED_FAMILIES for b in ("u", "g", "r", "i", "z")) + ("petrorad_r",)
SENTINEL = -9999.0
SEEING_ARCSEC = 1.35


def _uniform(objid: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) numbers fixed by (objid, salt): splitmix64 of the id, so no RNG state is shared."""
    with np.errstate(over="ignore"):
        x = objid.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(salt + 1)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


def _normal(objid: np.ndarray, salt: int) -> np.ndarray:
    u1 = np.maximum(_uniform(objid, 2 * salt), 1e-12)
    u2 = _uniform(objid, 2 * salt + 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _extended(photo: pd.DataFrame, classes: pd.Series, objid: np.ndarray) -> np.ndarray:
    labelled = classes.notna().to_numpy()
    extended = (classes == "GALAXY").to_numpy()
    if "type" in photo.columns:
        typed = pd.to_numeric(photo["type"], errors="coerce").to_numpy()
        guess = typed == 3
    else:
        r = pd.to_numeric(photo["r"], errors="coerce").to_numpy(dtype=np.float64) if "r" in photo else np.full(
            len(photo), 20.0)
        probability = 0.4 + 0.5 * np.clip((np.nan_to_num(r, nan=20.0) - 17.0) / 5.0, 0.0, 1.0)
        guess = _uniform(objid, 99) < probability
    return np.where(labelled, extended, guess)


def derive_photometry(photo: pd.DataFrame, classes: pd.Series) -> pd.DataFrame:
    """``photo`` with every column of :data:`DERIVED_COLUMNS` it lacks added (SIMULATED).

    Parameters
    ----------
    photo : pandas.DataFrame
        PhotoObj rows with lower-case columns: ``objid`` (or ``objID``), ra, dec and any of u..z.
    classes : pandas.Series
        SpecObj class of each row (same index), NaN for objects without a spectrum.

    Returns
    -------
    pandas.DataFrame
        A copy; columns the frame had are untouched. Without u..z nothing is derived.
    """
    have = {c.lower() for c in photo.columns}
    if not all(b in have for b in BANDS) or len(photo) == 0:
        return photo
    id_column = "objID" if "objID" in photo.columns else "objid"
    objid = np.array([int(v) for v in photo[id_column].tolist()], dtype=np.int64).view(np.uint64)
    ra = pd.to_numeric(photo["ra"], errors="coerce").to_numpy(dtype=np.float64)
    dec = pd.to_numeric(photo["dec"], errors="coerce").to_numpy(dtype=np.float64)
    extended = _extended(photo, classes, objid)
    ebv = 0.05 + 0.03 * np.sin(np.radians(dec) * 3.0) * np.cos(np.radians(ra) * 2.0)
    petro_r = np.where(extended, np.exp(np.log(3.0) + 0.45 * _normal(objid, 1)),
                       SEEING_ARCSEC + 0.12 * _normal(objid, 2))
    petro_r = np.where(extended, np.clip(petro_r, 1.6, 30.0), np.clip(petro_r, 0.8, 2.5))
    new = {}
    for k, band in enumerate(BANDS):
        model = pd.to_numeric(photo[band], errors="coerce").to_numpy(dtype=np.float64)
        usable = np.isfinite(model) & (model > 0.0) & (model < 40.0)
        cmodel = model + 0.01 * _normal(objid, 10 + k)
        spread = np.where(extended, 0.4 + 0.9 * np.log(petro_r / SEEING_ARCSEC) + 0.1 * _normal(objid, 20 + k),
                          0.03 * _normal(objid, 20 + k))
        psf = cmodel + np.where(extended, np.maximum(spread, 0.05), spread)

        def error(mag):
            return 0.003 + 0.2 * 10.0 ** (0.4 * (mag - LIMITING_MAG[band]))

        values = {"cmodelmag": cmodel, "cmodelmagerr": error(cmodel), "psfmag": psf, "psfmagerr": error(psf)}
        for family, column in values.items():
            new[f"{family}_{band}"] = np.where(usable, np.round(column, 5), SENTINEL)
        new[f"extinction_{band}"] = np.round(EXTINCTION_COEFFICIENTS[band] * ebv, 5)
    new["petrorad_r"] = np.round(petro_r, 5)
    out = photo.copy()
    for name, column in new.items():
        if name not in have:
            out[name] = column
    return out
