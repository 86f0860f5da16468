"""What the model sees: the photometric features a model declares (catalog columns and features derived from
them), standardisation with stored statistics, and cutout decoding. Shared by the training table, training, the
baselines and scoring so they can never disagree.

Features are declared by name (``train.features`` in config, or a preset of :data:`FEATURE_SETS`); a name says how
the feature is made, so a model package's list of feature names is all scoring needs to compute them again. Names
are case-insensitive and kept lower-case, as the lake keeps catalog columns:

catalog columns
    ``u`` … ``z`` (modelMag), ``redshift`` (SpecObj.z, labelled objects only) and any ``<family>_<band>`` PhotoObj
    column of :data:`skyclass.lake.PER_BAND_FAMILIES`: ``psfmag_r``, ``cmodelmag_g``, ``psfmagerr_i``,
    ``extinction_u``, ``petrorad_r``, …
``<band>_<band>``, ``<magnitude>_<band>_<band>``
    a colour of two different bands: ``g_r`` = g − r (modelMag), ``psfmag_u_g`` = psfMag_u − psfMag_g.
``dered_<band>``, ``dered_<magnitude>_<band>``, ``dered_[<magnitude>_]<band>_<band>``
    extinction-corrected: ``dered_cmodelmag_r`` = cModelMag_r − extinction_r; a dereddened colour subtracts
    both bands' extinction.
``psf_minus_cmodel_<band>``
    psfMag − cModelMag of one band: about 0 for point sources (stars, QSOs), positive for extended galaxies.
``redshift_asinh``, ``redshift_zero``
    the redshift encodings (see :func:`add_redshift_encodings`).

Every derived feature is null when any catalog value it is made of is unusable (missing, a -9999 sentinel, a
magnitude outside the plausible range: :func:`skyclass.lake.column_ok`); standardisation then gives it the
training mean.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from skyclass.lake import (BANDS, MAG_MAX, MAG_MIN, MAGNITUDE_FAMILIES, MAGNITUDES, PER_BAND_FAMILIES,  # noqa: F401
                           column_ok, column_ok_values, is_photo_column, photometry_ok_column, photometry_ok_pandas)

COLOURS = ("u_g", "g_r", "r_i", "i_z")  # u-g, g-r, r-i, i-z
# Photometry of an object without a spectrum as the shared labelled.csv has it: a set that can score the
# photometric catalog.
PHOTOMETRIC_FEATURES = MAGNITUDES + COLOURS
# The literature's tables add the spectroscopic redshift, which only labelled objects have. A network sees it
# three ways (see add_redshift_encodings): the raw value, asinh(z / 0.001) -- which spreads stars (|z| < 0.005)
# apart from nearby galaxies, a difference standardisation alone squeezes into 1% of one sigma -- and a flag for
# the exact 0.0 that only galaxies carry.
REDSHIFT_ENCODINGS = ("redshift_asinh", "redshift_zero")
PAPER_FEATURES = PHOTOMETRIC_FEATURES + ("redshift",) + REDSHIFT_ENCODINGS
# Features of the presets computed from catalog columns, never read from a catalog.
DERIVED_FEATURES = COLOURS + REDSHIFT_ENCODINGS
# Named presets (train.feature_set); any other set is declared in train.features.
FEATURE_SETS = {"photometric": PHOTOMETRIC_FEATURES, "paper": PAPER_FEATURES}

# Redshift at which asinh(z / REDSHIFT_SCALE) turns from linear to logarithmic: stars' measured redshifts scatter
# within +-0.005 (velocities of a few hundred km/s), the nearest galaxies start near 0.005, QSOs reach 7.
REDSHIFT_SCALE = 0.001

KIND_COLUMN = "column"
KIND_COLOUR = "colour"
KIND_DEREDDENED = "dereddened"
KIND_PSF_MINUS_CMODEL = "psf_minus_cmodel"
KIND_REDSHIFT_ASINH = "redshift_asinh"
KIND_REDSHIFT_ZERO = "redshift_zero"
_GRAMMAR = ("a catalog column (u..z, redshift, or <family>_<band> with family one of "
            f"{', '.join(PER_BAND_FAMILIES)} and band one of {', '.join(BANDS)}), or a derived feature: "
            "<band>_<band> or <magnitude>_<band>_<band> (a colour), dered_[<magnitude>_]<band>[_<band>] "
            "(extinction-corrected), psf_minus_cmodel_<band>, redshift_asinh, redshift_zero "
            f"(<magnitude>: {', '.join(MAGNITUDE_FAMILIES)})")


class FeatureError(ValueError):
    """A feature name that is neither a catalog column nor a derived feature (the message says what is allowed)."""


@dataclass(frozen=True)
class Feature:
    """One declared feature: its (lower-case) name, its kind, and the catalog columns it is made of.

    Columns, colours, dereddened magnitudes and psf − cModel differences are linear combinations of catalog
    columns (``terms``: ``(column, coefficient)`` pairs); the redshift encodings are functions of ``redshift``.
    """

    name: str
    kind: str
    terms: tuple[tuple[str, float], ...]

    @property
    def inputs(self) -> tuple[str, ...]:
        """Catalog columns the feature reads."""
        return tuple(column for column, _ in self.terms)


_BAND = "([a-z])"
_FAMILY = "(?:(" + "|".join(MAGNITUDE_FAMILIES) + ")_)?"
_COLOUR_RE = re.compile(rf"^(dered_)?{_FAMILY}{_BAND}_{_BAND}$")
_DERED_RE = re.compile(rf"^dered_{_FAMILY}{_BAND}$")
_PSF_RE = re.compile(rf"^psf_minus_cmodel_{_BAND}$")


def _magnitude(family, band: str) -> str:
    return f"{family}_{band}" if family else band


def _band(band: str, name: str) -> str:
    if band not in BANDS:
        raise FeatureError(f"feature {name!r}: unknown band {band!r} (bands: {', '.join(BANDS)})")
    return band


def parse_feature(name: str) -> Feature:
    """What a feature name means (see the module docstring for the names).

    Parameters
    ----------
    name : str
        Any case.

    Returns
    -------
    Feature

    Raises
    ------
    FeatureError
        Not a catalog column nor a derived feature, an unknown band, or a colour of one band with itself.
    """
    if not isinstance(name, str) or not name.strip():
        raise FeatureError(f"feature {name!r}: expected a name, {_GRAMMAR}")
    lower = name.strip().lower()
    if lower in (KIND_REDSHIFT_ASINH, KIND_REDSHIFT_ZERO):
        return Feature(lower, lower, (("redshift", 1.0),))
    if lower == "redshift" or is_photo_column(lower):
        return Feature(lower, KIND_COLUMN, ((lower, 1.0),))
    match = _PSF_RE.match(lower)
    if match:
        band = _band(match.group(1), name)
        return Feature(lower, KIND_PSF_MINUS_CMODEL, ((f"psfmag_{band}", 1.0), (f"cmodelmag_{band}", -1.0)))
    match = _COLOUR_RE.match(lower)
    if match:
        dered, family = match.group(1), match.group(2)
        blue, red = _band(match.group(3), name), _band(match.group(4), name)
        if blue == red:
            raise FeatureError(f"feature {name!r}: a colour needs two different bands")
        terms = [(_magnitude(family, blue), 1.0), (_magnitude(family, red), -1.0)]
        if dered:
            terms += [(f"extinction_{blue}", -1.0), (f"extinction_{red}", 1.0)]
        return Feature(lower, KIND_COLOUR, tuple(terms))
    match = _DERED_RE.match(lower)
    if match:
        band = _band(match.group(2), name)
        return Feature(lower, KIND_DEREDDENED, ((_magnitude(match.group(1), band), 1.0), (f"extinction_{band}", -1.0)))
    family, sep, band = lower.rpartition("_")
    if sep and family in PER_BAND_FAMILIES:
        _band(band, name)
    raise FeatureError(f"unknown feature {name!r}: expected {_GRAMMAR}")


def parse_features(names: Sequence[str]) -> tuple[Feature, ...]:
    """:func:`parse_feature` of each name.

    Raises
    ------
    FeatureError
        A bad name (the message gives its position), or a name given twice.
    """
    parsed = []
    for k, name in enumerate(names):
        try:
            parsed.append(parse_feature(name))
        except FeatureError as err:
            raise FeatureError(f"[{k}]: {err}") from None
    seen = [f.name for f in parsed]
    twice = sorted({n for n in seen if seen.count(n) > 1})
    if twice:
        raise FeatureError(f"feature {twice[0]!r} is declared more than once")
    return tuple(parsed)


def normalise_names(names: Sequence[str]) -> tuple[str, ...]:
    """The canonical (lower-case) names of declared features; raises :class:`FeatureError` for a bad one."""
    return tuple(f.name for f in parse_features(names))


def feature_names(feature_set: str) -> tuple[str, ...]:
    """Feature columns of a named preset (``photometric`` or ``paper``)."""
    try:
        return FEATURE_SETS[feature_set]
    except KeyError:
        raise ValueError(f"unknown feature set {feature_set!r}; expected one of {', '.join(FEATURE_SETS)}") from None


def declared_features(train_conf) -> tuple[str, ...]:
    """The features a model is trained with: ``train.features`` when given, else the preset ``train.feature_set``.

    Parameters
    ----------
    train_conf : skyclass.config.TrainConfig

    Returns
    -------
    tuple of str
        Canonical names, in the declared order (the order of the network's input vector).
    """
    if train_conf.features:
        return normalise_names(train_conf.features)
    return feature_names(train_conf.feature_set)


def features_of_set(conf, feature_set: str) -> tuple[str, ...]:
    """Features of a set named in ``evaluate.feature_sets``: a preset, or the set ``train.features`` declares
    under the name ``train.feature_set``.

    Raises
    ------
    ValueError
        Neither a preset nor the configured declaration's name.
    """
    if conf.train.features and feature_set == conf.train.feature_set:
        return declared_features(conf.train)
    return feature_names(feature_set)


def table_features(conf) -> tuple[str, ...]:
    """Features the training table holds: every preset's (``paper`` includes ``photometric``), then the declared
    ones, so that training, the fallback and the baselines of every configured set read one table."""
    return tuple(dict.fromkeys((*PAPER_FEATURES, *declared_features(conf.train))))


def source_columns(names: Sequence[str]) -> tuple[str, ...]:
    """Catalog columns needed to compute the features ``names``, in first-use order (colours need magnitudes,
    encodings redshift, psf − cModel both magnitudes).

    Raises
    ------
    FeatureError
        A name that is not a feature.
    """
    # Each name on its own: a caller may list a feature twice (u..z for the quality status, and as a feature).
    needed = [column for name in names for column in parse_feature(name).inputs]
    return tuple(dict.fromkeys(needed))


catalog_columns = source_columns


def photo_columns_needed(names: Sequence[str]) -> tuple[str, ...]:
    """PhotoObj columns (everything but SpecObj's ``redshift``) the features ``names`` read."""
    return tuple(c for c in source_columns(names) if c != "redshift")


def colour_pairs() -> list[tuple[str, str, str]]:
    """(colour column, bluer band, redder band) for u-g, g-r, r-i, i-z."""
    return [(c, MAGNITUDES[k], MAGNITUDES[k + 1]) for k, c in enumerate(COLOURS)]


def add_features(df, names: Sequence[str]):
    """Spark DataFrame of catalog rows → the same with a column per feature in ``names`` (derived ones computed;
    catalog columns with unusable values (sentinels) set to null; ``redshift`` passed through as it is).

    Raises
    ------
    FeatureError
        A bad name, or a catalog column a feature needs is missing (the message names both).
    """
    from pyspark.sql import functions as F

    parsed = parse_features(names)
    have = {c.lower(): c for c in df.columns}
    for feature in parsed:
        missing = [c for c in feature.inputs if c not in have]
        if missing:
            raise FeatureError(f"feature {feature.name!r} needs catalog column {missing[0]!r}, which the table lacks")
    raw = {c: F.col(have[c]) for feature in parsed for c in feature.inputs}
    derived = {}
    for feature in parsed:
        if feature.kind == KIND_REDSHIFT_ASINH:
            derived[feature.name] = F.asinh(raw["redshift"] / F.lit(REDSHIFT_SCALE))
        elif feature.kind == KIND_REDSHIFT_ZERO:
            z = raw["redshift"]
            derived[feature.name] = F.when(z.isNotNull(), (z == 0.0).cast("double"))
        elif feature.name == "redshift":
            derived[feature.name] = raw["redshift"]
        else:
            ok = F.lit(True)
            for column, _ in feature.terms:
                ok = ok & column_ok(raw[column], column)
            value = sum((raw[c] * F.lit(k) for c, k in feature.terms[1:]), raw[feature.terms[0][0]]
                        * F.lit(feature.terms[0][1])) if len(feature.terms) > 1 else raw[feature.terms[0][0]]
            derived[feature.name] = F.when(ok, value)
    # All at once, against the catalog's own columns: a column feature replaces its catalog column (sentinels
    # become null), and no other feature may read the replaced one.
    return df.withColumns(derived)


def add_features_pandas(frame: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """pandas twin of :func:`add_features` (scoring works on Arrow batches): returns a copy with the features.

    Raises
    ------
    FeatureError
        A bad name, or a column a feature needs is missing.
    """
    parsed = parse_features(names)
    have = {c.lower(): c for c in frame.columns}
    out = frame.copy()
    derived = {}
    for feature in parsed:
        missing = [c for c in feature.inputs if c not in have]
        if missing:
            raise FeatureError(f"feature {feature.name!r} needs catalog column {missing[0]!r}, which the batch lacks")
        if feature.kind in (KIND_REDSHIFT_ASINH, KIND_REDSHIFT_ZERO) or feature.name == "redshift":
            z = pd.to_numeric(frame[have["redshift"]], errors="coerce").to_numpy(dtype=np.float64)
            derived[feature.name] = (np.arcsinh(z / REDSHIFT_SCALE) if feature.kind == KIND_REDSHIFT_ASINH else
                                     np.where(np.isnan(z), np.nan, (z == 0.0).astype(np.float64))
                                     if feature.kind == KIND_REDSHIFT_ZERO else z)
            continue
        ok = np.ones(len(frame), dtype=bool)
        value = np.zeros(len(frame), dtype=np.float64)
        for column, coefficient in feature.terms:
            x = pd.to_numeric(frame[have[column]], errors="coerce").to_numpy(dtype=np.float64)
            ok &= column_ok_values(x, column)
            value = value + coefficient * x
        derived[feature.name] = np.where(ok, value, np.nan)
    for name, values in derived.items():
        out[name] = values
    return out


def add_colours(df):
    """Spark DataFrame → the same with colour columns ``u_g, g_r, r_i, i_z`` (null when a band is unusable)."""
    return add_features(df, COLOURS)


def add_redshift_encodings(df):
    """Spark DataFrame with ``redshift`` → the same with ``redshift_asinh`` and ``redshift_zero`` (null with it).

    ``redshift_zero`` is 1.0 for a redshift of exactly 0.0: in SDSS exports only galaxies carry it (stars' fitted
    redshifts scatter around zero but are never exactly zero), so it is a sentinel rather than a measurement, and a
    network cannot tell it from a star's 1e-5 after standardisation; a tree can split on it for free.
    """
    return add_features(df, REDSHIFT_ENCODINGS)


def add_redshift_encodings_pandas(frame: pd.DataFrame) -> pd.DataFrame:
    """pandas twin of :func:`add_redshift_encodings`: returns a copy with the encodings."""
    return add_features_pandas(frame, REDSHIFT_ENCODINGS)


def add_colours_pandas(frame: pd.DataFrame) -> pd.DataFrame:
    """pandas twin of :func:`add_colours` (scoring works on Arrow batches): returns a copy with colour columns."""
    return add_features_pandas(frame, COLOURS)


def inputs_ok_pandas(frame: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """Boolean array: every catalog value the features ``names`` read (and u..z) is usable."""
    columns = tuple(dict.fromkeys((*MAGNITUDES, *(c for c in source_columns(names) if c != "redshift"))))
    return photometry_ok_pandas(frame, columns)


def standardise(frame: pd.DataFrame, features: Sequence[str], stats: Mapping[str, Mapping[str, float]]) -> np.ndarray:
    """Feature matrix (float32, rows × features) standardised with the training split's mean and std.

    Missing values become 0 after standardisation (the training mean), so one bad value does not poison a row;
    rows with bad photometry are flagged separately by the caller.

    Raises
    ------
    KeyError
        A feature has no statistics (the model package and the training table disagree).
    """
    columns = []
    for name in features:
        if name not in stats:
            raise KeyError(f"no mean/std stored for feature {name!r}; rebuild the training table")
        mean, std = float(stats[name]["mean"]), float(stats[name]["std"]) or 1.0
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
        columns.append(np.nan_to_num((values - mean) / std, nan=0.0, posinf=0.0, neginf=0.0))
    return np.stack(columns, axis=1).astype(np.float32) if columns else np.zeros((len(frame), 0), np.float32)


class CutoutDecodeError(ValueError):
    """A stored cutout is not a decodable JPEG."""


def decode_jpeg_pixels(data: bytes, size_px: int) -> np.ndarray:
    """One JPEG → uint8 (size, size, 3) RGB pixels, resized if it is not already ``size_px``."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            if img.size != (size_px, size_px):
                img = img.resize((size_px, size_px), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as err:
        raise CutoutDecodeError(f"cutout is not a decodable JPEG ({err})") from err


def decode_jpeg(data: bytes, size_px: int) -> np.ndarray:
    """One JPEG → float32 (size, size, 3) array scaled to [0, 1], resized if it is not already ``size_px``."""
    return pixels_to_unit(decode_jpeg_pixels(data, size_px))


def pixels_to_unit(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels → float32 in [0, 1]: ``pixels / 255`` in float32, the scaling the models are trained with (the
    training pipeline applies the same division in TensorFlow, with the same result to the bit)."""
    return np.asarray(pixels, dtype=np.float32) / np.float32(255.0)


def decode_jpegs(blobs: Sequence[bytes | None], size_px: int, *, as_uint8: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Many JPEGs → (batch (n, size, size, 3), boolean ``ok`` mask); missing or broken ones are zeros.

    The batch is float32 in [0, 1], or with ``as_uint8`` the uint8 pixels (a quarter of the bytes: the training
    reader hands those over and scales them in TensorFlow, see :func:`pixels_to_unit`)."""
    pixels = np.zeros((len(blobs), size_px, size_px, 3), dtype=np.uint8)
    ok = np.zeros(len(blobs), dtype=bool)
    for k, blob in enumerate(blobs):
        if blob is None or len(blob) == 0:
            continue
        try:
            pixels[k] = decode_jpeg_pixels(bytes(blob), size_px)
            ok[k] = True
        except CutoutDecodeError:
            pass
    return (pixels if as_uint8 else pixels_to_unit(pixels)), ok
