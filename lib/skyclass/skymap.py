"""Sky maps of a night's labels: per predicted class, the objects per HEALPix pixel and the mean p(QSO) per pixel.

The pixel statistics are aggregated in Spark (the driver receives one row per class and pixel, never the objects);
the HEALPix order is chosen from the footprint so that it spans a few dozen pixels. A footprint wider than
:data:`ALL_SKY_SPAN_DEG` is drawn in a Mollweide projection (pixel centres), a field in a local projection
(pixel outlines from cdshealpix, east to the left, ra scaled by cos dec). Figures go through
:mod:`skyclass.plots`' canvas and banner: a map of labels from a model that saw SIMULATED cutouts says so.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from skyclass.config import CLASSES

log = logging.getLogger(__name__)

ALL_SKY_SPAN_DEG = 60.0
PIXELS_ACROSS = 24  # pixels the footprint's larger side spans in a local map (Abell 2065: ~90 objects each)
SKY_MAP_FILE = "sky_map_{run_date}.png"
# Pixel side at order 0 is about 58.6 deg and halves with each order.
_ORDER0_SIDE_DEG = 58.6


@dataclass(frozen=True)
class Footprint:
    """The sky a night covers: centre and extents in degrees (ra extent measured across the ra = 0/360 seam
    when that is shorter)."""

    ra_centre_deg: float
    dec_centre_deg: float
    ra_span_deg: float
    dec_span_deg: float

    @property
    def all_sky(self) -> bool:
        return max(self.ra_span_deg * math.cos(math.radians(self.dec_centre_deg)), self.dec_span_deg) \
            > ALL_SKY_SPAN_DEG

    def order(self) -> int:
        """HEALPix order whose pixels tile the footprint about :data:`PIXELS_ACROSS` times (4 for the whole sky)."""
        if self.all_sky:
            return 4
        side = max(self.ra_span_deg * math.cos(math.radians(self.dec_centre_deg)), self.dec_span_deg, 1e-3)
        return int(np.clip(round(math.log2(_ORDER0_SIDE_DEG * PIXELS_ACROSS / side)), 0, 13))


@dataclass(frozen=True)
class SkyMapResult:
    path: str
    order: int
    projection: str
    rows: int
    pixels: int

    def __str__(self) -> str:
        return (f"sky map of {self.rows:,} objects in {self.pixels} HEALPix pixels (order {self.order}, "
                f"{self.projection}) at {self.path}")


def footprint(frame) -> Footprint:
    """The footprint of a DataFrame with ``ra``/``dec`` (degrees), from one Spark aggregation.

    Raises
    ------
    ValueError
        ``frame`` has no rows.
    """
    from pyspark.sql import functions as F

    shifted = (F.col("ra") + 180.0) % 360.0
    row = frame.agg(F.min("ra").alias("a0"), F.max("ra").alias("a1"), F.min(shifted).alias("s0"),
                    F.max(shifted).alias("s1"), F.min("dec").alias("d0"), F.max("dec").alias("d1")).collect()[0]
    if row["a0"] is None:
        raise ValueError("no objects to map")
    direct, across_seam = row["a1"] - row["a0"], row["s1"] - row["s0"]
    if direct <= across_seam:
        ra_centre, span = (row["a0"] + row["a1"]) / 2, direct
    else:
        ra_centre, span = ((row["s0"] + row["s1"]) / 2 - 180.0) % 360.0, across_seam
    return Footprint(ra_centre, (row["d0"] + row["d1"]) / 2, span, row["d1"] - row["d0"])


def pixel_statistics(frame, order: int) -> pd.DataFrame:
    """Objects and mean p(QSO) per (predicted class, HEALPix pixel of ``order``), aggregated in Spark.

    Parameters
    ----------
    frame : pyspark.sql.DataFrame
        With ``ra``, ``dec`` (degrees), ``predicted_class`` and ``p_qso``.
    order : int

    Returns
    -------
    pandas.DataFrame
        Columns ``predicted_class``, ``pixel``, ``objects``, ``mean_p_qso``.
    """
    import functools

    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField("predicted_class", T.StringType()), T.StructField("pixel", T.LongType()),
                           T.StructField("p_qso", T.DoubleType())])
    pixels = frame.select("ra", "dec", "predicted_class", "p_qso").mapInPandas(
        functools.partial(_pixels, order=order), schema)
    return (pixels.groupBy("predicted_class", "pixel")
            .agg(F.count(F.lit(1)).alias("objects"), F.avg("p_qso").alias("mean_p_qso")).toPandas())


def _pixels(batches, order: int):
    from skyclass.export import healpix_index

    for frame in batches:
        yield pd.DataFrame({"predicted_class": frame["predicted_class"],
                            "pixel": healpix_index(frame["ra"].to_numpy(), frame["dec"].to_numpy(), order),
                            "p_qso": frame["p_qso"].astype("float64")})


def plot_sky_map(stats: pd.DataFrame, order: int, where: Footprint, path, *, title: str,
                 simulated: bool) -> Path:
    """Draw per-class maps of objects per pixel (top row) and mean p(QSO) per pixel (bottom row) as a PNG.

    Parameters
    ----------
    stats : pandas.DataFrame
        :func:`pixel_statistics`' output.
    order : int
        The pixels' HEALPix order.
    where : Footprint
        Chooses the projection and the local frame's centre.
    path : path-like
        PNG to write (parents created).
    title : str
    simulated : bool
        Add the SIMULATED banner.

    Returns
    -------
    pathlib.Path
    """
    import astropy.units as u  # noqa: F401  (cdshealpix returns astropy angles)
    from cdshealpix.nested import healpix_to_lonlat, vertices
    from matplotlib.collections import PolyCollection

    from skyclass.plots import _finish, _new_figure

    figure = _new_figure(13.0, 8.0)
    all_sky = where.all_sky
    classes = [c for c in CLASSES if c in set(stats.predicted_class)] or list(CLASSES)
    max_count = max(int(stats.objects.max()) if len(stats) else 1, 1)
    for column, cls in enumerate(classes):
        part = stats[stats.predicted_class == cls]
        pix = part.pixel.to_numpy(dtype=np.uint64)
        for row, (value, label, cmap, vmin, vmax) in enumerate((
                (part.objects.to_numpy(), "objects per pixel", "viridis", 0, max_count),
                (part.mean_p_qso.to_numpy(), "mean p(QSO)", "magma", 0.0, 1.0))):
            index = row * len(classes) + column + 1
            if all_sky:
                axes = figure.add_subplot(2, len(classes), index, projection="mollweide")
                if len(pix):
                    lon, lat = healpix_to_lonlat(pix, order)
                    x = -np.radians(((lon.deg + 180.0) % 360.0) - 180.0)  # east to the left, as on the sky
                    art = axes.scatter(x, lat.rad, c=value, s=6, cmap=cmap, vmin=vmin, vmax=vmax, marker="s")
                    figure.colorbar(art, ax=axes, orientation="horizontal", pad=0.05, shrink=0.8, label=label)
                axes.set_xticklabels([])
                axes.grid(True, alpha=0.3)
            else:
                axes = figure.add_subplot(2, len(classes), index)
                if len(pix):
                    lon, lat = vertices(pix, order)
                    dra = ((lon.deg - where.ra_centre_deg + 180.0) % 360.0) - 180.0
                    polygons = np.stack([dra, lat.deg], axis=-1)
                    art = PolyCollection(polygons, array=value, cmap=cmap, edgecolors="none")
                    art.set_clim(vmin, vmax)
                    axes.add_collection(art)
                    axes.autoscale_view()
                    figure.colorbar(art, ax=axes, label=label)
                axes.invert_xaxis()  # east to the left
                axes.set_aspect(1.0 / max(math.cos(math.radians(where.dec_centre_deg)), 0.05))
                axes.set_xlabel(f"ra - {where.ra_centre_deg:.2f} (deg)")
                axes.set_ylabel("dec (deg)")
            axes.set_title(f"{cls}: {label} ({int(part.objects.sum()):,} objects)", fontsize=9)
    return _finish(figure, path, title=title, simulated=simulated)


def write_sky_map(spark, frame, path, *, title: str, simulated: bool) -> SkyMapResult:
    """Aggregate a DataFrame of labelled positions and draw its sky map (see :func:`plot_sky_map`).

    Parameters
    ----------
    spark : SparkSession
    frame : pyspark.sql.DataFrame
        ``ra``, ``dec``, ``predicted_class``, ``p_qso``.
    path : path-like
        The PNG (a local or mounted path: matplotlib writes it).
    title : str
    simulated : bool

    Returns
    -------
    SkyMapResult
    """
    where = footprint(frame)
    order = where.order()
    stats = pixel_statistics(frame, order)
    out = plot_sky_map(stats, order, where, path, title=f"{title} (HEALPix order {order})", simulated=simulated)
    result = SkyMapResult(str(out), order, "mollweide" if where.all_sky else "local", int(stats.objects.sum()),
                          int(stats.pixel.nunique()))
    log.info("%s", result)
    return result


def write_night_sky_map(spark, conf, run_date: Optional[str], out_dir: str, *, simulated: bool) -> SkyMapResult:
    """The sky map of one night of predictions (positions from the scored catalog), written into ``out_dir`` as
    ``sky_map_<run_date>.png``.

    Parameters
    ----------
    spark : SparkSession
    conf : Config
        ``lake``, ``score.catalog`` / ``export.catalog`` (where positions come from).
    run_date : str or None
        The night (None: the newest).
    out_dir : str
        A local or mounted folder (the evaluation report's).
    simulated : bool
        The labels come from a model that saw simulated data.

    Returns
    -------
    SkyMapResult

    Raises
    ------
    skyclass.export.ExportError
        No such night, or predictions without a position.
    """
    import dataclasses

    from skyclass.export import labelled_night, resolve_export_night

    night = resolve_export_night(conf.replace(export=dataclasses.replace(conf.export, run_date=run_date)))
    frame = labelled_night(spark, conf, night)
    path = Path(out_dir) / SKY_MAP_FILE.format(run_date=night)
    return write_sky_map(spark, frame, path, title=f"skyclass labels of night {night}", simulated=simulated)


def attach_to_report(report_dir: str, sky_map: SkyMapResult, *, caption: str, simulated: bool) -> None:
    """Add a sky map (a PNG inside ``report_dir``) to the evaluation report there and render report.md again.

    Raises
    ------
    FileNotFoundError
        ``report_dir`` holds no report.json.
    """
    import json
    import os

    from skyclass.evaluate import write_report

    with open(os.path.join(report_dir, "report.json"), encoding="utf-8") as fh:
        report = json.load(fh)
    name = os.path.basename(sky_map.path)
    entries = [m for m in report.get("sky_maps", []) if m.get("file") != name]
    entries.append({"file": name, "caption": caption, "simulated": bool(simulated), "order": sky_map.order,
                    "projection": sky_map.projection, "objects": sky_map.rows})
    report["sky_maps"] = entries
    write_report(report, report_dir)
