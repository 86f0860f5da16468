"""What the model sees: photometric features (magnitudes and colours), the bad-photometry rule, standardisation
with stored statistics, and cutout decoding. Shared by the training table, training and scoring so the three can
never disagree."""
from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from skyclass.lake import COLOURS, FEATURE_SETS, MAGNITUDES, REDSHIFT_ENCODINGS

# SDSS writes -9999 (and sometimes other large negatives) for a magnitude it could not measure; real magnitudes
# of SDSS objects lie well inside this range (the shared data goes from ~7 to ~32).
MAG_MIN = 0.0
MAG_MAX = 40.0


def feature_names(feature_set: str) -> tuple[str, ...]:
    """Feature columns of a named feature set (``photometric`` or ``paper``)."""
    try:
        return FEATURE_SETS[feature_set]
    except KeyError:
        raise ValueError(f"unknown feature set {feature_set!r}; expected one of {', '.join(FEATURE_SETS)}") from None


# Redshift at which asinh(z / REDSHIFT_SCALE) turns from linear to logarithmic: stars' measured redshifts scatter
# within +-0.005 (velocities of a few hundred km/s), the nearest galaxies start near 0.005, QSOs reach 7.
REDSHIFT_SCALE = 0.001


def source_columns(names: Sequence[str]) -> tuple[str, ...]:
    """Catalog columns needed to compute the features ``names`` (colours need magnitudes, encodings redshift)."""
    pairs = {colour: (blue, red) for colour, blue, red in colour_pairs()}
    needed = []
    for name in names:
        if name in pairs:
            needed += pairs[name]
        elif name in REDSHIFT_ENCODINGS:
            needed.append("redshift")
        else:
            needed.append(name)
    return tuple(dict.fromkeys(needed))


def colour_pairs() -> list[tuple[str, str, str]]:
    """(colour column, bluer band, redder band) for u-g, g-r, r-i, i-z."""
    return [(c, MAGNITUDES[k], MAGNITUDES[k + 1]) for k, c in enumerate(COLOURS)]


def add_colours(df):
    """Spark DataFrame → the same with colour columns ``u_g, g_r, r_i, i_z`` (null when a band is unusable)."""
    from pyspark.sql import functions as F

    for colour, blue, red in colour_pairs():
        ok = _spark_mag_ok(F.col(blue)) & _spark_mag_ok(F.col(red))
        df = df.withColumn(colour, F.when(ok, F.col(blue) - F.col(red)))
    return df


def add_redshift_encodings(df):
    """Spark DataFrame with ``redshift`` → the same with ``redshift_asinh`` and ``redshift_zero`` (null with it).

    ``redshift_zero`` is 1.0 for a redshift of exactly 0.0: in SDSS exports only galaxies carry it (stars' fitted
    redshifts scatter around zero but are never exactly zero), so it is a sentinel rather than a measurement, and a
    network cannot tell it from a star's 1e-5 after standardisation; a tree can split on it for free.
    """
    from pyspark.sql import functions as F

    z = F.col("redshift")
    return (df.withColumn("redshift_asinh", F.asinh(z / F.lit(REDSHIFT_SCALE)))
              .withColumn("redshift_zero", F.when(z.isNotNull(), (z == 0.0).cast("double"))))


def add_redshift_encodings_pandas(frame: pd.DataFrame) -> pd.DataFrame:
    """pandas twin of :func:`add_redshift_encodings`: returns a copy with the encodings."""
    out = frame.copy()
    z = pd.to_numeric(out["redshift"], errors="coerce").to_numpy(dtype=np.float64)
    out["redshift_asinh"] = np.arcsinh(z / REDSHIFT_SCALE)
    out["redshift_zero"] = np.where(np.isnan(z), np.nan, (z == 0.0).astype(np.float64))
    return out


def photometry_ok_column():
    """Spark boolean Column: every magnitude is present and inside the plausible range (no -9999 sentinel)."""
    from pyspark.sql import functions as F

    cond = F.lit(True)
    for m in MAGNITUDES:
        cond = cond & _spark_mag_ok(F.col(m))
    return cond


def _spark_mag_ok(col):
    from pyspark.sql import functions as F

    return col.isNotNull() & ~F.isnan(col) & (col > MAG_MIN) & (col < MAG_MAX)


def add_colours_pandas(frame: pd.DataFrame) -> pd.DataFrame:
    """pandas twin of :func:`add_colours` (scoring works on Arrow batches): returns a copy with colour columns."""
    out = frame.copy()
    for colour, blue, red in colour_pairs():
        ok = photometry_ok_pandas(out, (blue, red))
        out[colour] = np.where(ok, out[blue] - out[red], np.nan)
    return out


def photometry_ok_pandas(frame: pd.DataFrame, bands: Sequence[str] = MAGNITUDES) -> np.ndarray:
    """Boolean array: the given magnitudes are all finite and within the plausible range."""
    ok = np.ones(len(frame), dtype=bool)
    for band in bands:
        values = pd.to_numeric(frame[band], errors="coerce").to_numpy(dtype=np.float64)
        ok &= np.isfinite(values) & (values > MAG_MIN) & (values < MAG_MAX)
    return ok


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


def decode_jpeg(data: bytes, size_px: int) -> np.ndarray:
    """One JPEG → float32 (size, size, 3) array scaled to [0, 1], resized if it is not already ``size_px``."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            if img.size != (size_px, size_px):
                img = img.resize((size_px, size_px), Image.BILINEAR)
            return np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError) as err:
        raise CutoutDecodeError(f"cutout is not a decodable JPEG ({err})") from err


def decode_jpegs(blobs: Sequence[bytes | None], size_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Many JPEGs → (float32 batch (n, size, size, 3), boolean ``ok`` mask); missing or broken ones are zeros."""
    images = np.zeros((len(blobs), size_px, size_px, 3), dtype=np.float32)
    ok = np.zeros(len(blobs), dtype=bool)
    for k, blob in enumerate(blobs):
        if blob is None or len(blob) == 0:
            continue
        try:
            images[k] = decode_jpeg(bytes(blob), size_px)
            ok[k] = True
        except CutoutDecodeError:
            pass
    return images, ok
