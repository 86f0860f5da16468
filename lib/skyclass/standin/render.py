"""SIMULATED SDSS-like gri colour cutouts for the SkyServer stand-in (tests, demos and offline runs only).

Nothing here is real imaging: every pixel is synthesised from catalogue rows (position, class, g/r/i magnitudes).
The images only look like SkyServer's ImgCutout JPEGs closely enough for pipelines and models to be exercised
end to end; never train a model meant for real data on them.

The model, in brief:

- Fluxes in nanomaggies, ``flux = 10**(-0.4 * (mag - 22.5))`` (SDSS's zero point), per band g, r, i.
- STAR and QSO are point sources: a Moffat PSF (beta = 3, FWHM = the seeing, broadened by one pixel in
  quadrature to stand in for the pixel response).
- GALAXY is an exponential (Sérsic n = 1) or de Vaucouleurs (n = 4) profile whose centre is softened by a core
  of the PSF's size, a cheap stand-in for the PSF convolution. Half-light radius (about 1–4 arcsec, fainter is
  smaller), axis ratio, position angle and n are drawn from ``numpy.random.default_rng(objid)``, so an object looks
  the same in every cutout that shows it.
- A class of ``""`` (photometric-only object) is decided per object from the same generator: 60 % galaxy.
- Gaussian sky noise per band, and in about one field in four one or two faint random neighbours; both are drawn
  from a generator seeded by the rounded field centre, scale and size, so the same request gives the same bytes.
- Colour composite as SDSS makes them (Lupton et al. 2004, PASP 116, 133): i to red, r to green, g to blue, one
  asinh stretch computed from the mean of the three channels and applied to all, so colours survive saturation.
- Geometry: gnomonic (tangent-plane) projection about the field centre, north up and east left; the field centre
  falls on pixel (row ``height_px // 2``, column ``width_px // 2``).
"""
from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass
from io import BytesIO
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

OBJECT_CLASSES = ("GALAXY", "STAR", "QSO", "")
MAX_SIZE_PX = 2048  # SkyServer's ImgCutout clamps width and height to 64..2048

_ZERO_POINT_MAG = 22.5  # SDSS magnitudes are AB; 22.5 mag is one nanomaggy
# Magnitudes outside (0, 30] are sentinels (-9999, 0, 99...) or too faint to show, so the band is treated as missing.
_BRIGHTEST_VALID_MAG = 0.0
_FAINTEST_VALID_MAG = 30.0

_SDSS_SCALE_ARCSEC_PER_PX = 0.396
# Sky noise in nanomaggies per 0.396" pixel, channel order (i, r, g): chosen so that the 5-sigma point-source
# depths come out near SDSS's (i ~ 21.3, r ~ 22.2, g ~ 22.2).
_SKY_SIGMA_NMGY_PER_SDSS_PX = np.array([0.11, 0.055, 0.045])
# Per-channel display weights (i, r, g): SDSS composites boost the bluer bands so that ordinary stars and galaxies
# come out white to yellow rather than red.
_CHANNEL_WEIGHTS = np.array([1.0, 1.1, 1.35])
# Lupton asinh stretch: linear slope _ASINH_ALPHA for faint light (noise stays dark grey), logarithmic above
# about 1/(alpha*Q) nanomaggies per pixel so that 14th-magnitude objects still show structure before they saturate.
_ASINH_ALPHA = 0.6
_ASINH_Q = 10.0

_UNKNOWN_IS_GALAXY_PROBABILITY = 0.6
_DE_VAUCOULEURS_PROBABILITY = 0.35
# Light fainter than this fraction of the quietest band's sky sigma is invisible, so sources are only evaluated
# on the stamp where they are brighter than that (this is what keeps 2048-px cutouts tractable).
_TRUNCATION_FRACTION_OF_SKY_SIGMA = 0.01

_NEIGHBOUR_PROBABILITY = 0.25
_NEIGHBOUR_R_MAG_RANGE = (20.5, 22.5)
# Neighbours stay this far from the centre so that they never sit on top of the requested target.
_NEIGHBOUR_MIN_DISTANCE_ARCSEC = 4.0
# Field seeds use the centre rounded to a micro-degree (3.6 mas): repeated requests for the "same" position that
# differ only by float noise must give identical bytes.
_SEED_ROUNDING = 1e6


@dataclass(frozen=True)
class SkyObject:
    """One catalogue object the renderer can draw.

    Parameters
    ----------
    objid : int
        SDSS objID (any integer; it seeds the object's shape, so equal ids look alike).
    ra, dec : float
        Position in degrees (J2000).
    cls : str
        ``"GALAXY"``, ``"STAR"``, ``"QSO"`` or ``""`` for a photometric-only object of unknown class.
    g, r, i : float
        Magnitudes. NaN, sentinels such as -9999 and anything fainter than 30 count as a missing band.

    Raises
    ------
    TypeError
        If ``objid`` is not an integer.
    ValueError
        If ``cls`` is not one of the values above, or the position is not finite or ``dec`` is outside [-90, 90].
    """

    objid: int
    ra: float
    dec: float
    cls: str
    g: float
    r: float
    i: float

    def __post_init__(self) -> None:
        try:
            operator.index(self.objid)
        except TypeError:
            raise TypeError(f"SkyObject.objid must be an integer, got {self.objid!r} "
                            f"({type(self.objid).__name__}); read objIDs as int64, never as float") from None
        if self.cls not in OBJECT_CLASSES:
            raise ValueError(f"SkyObject {self.objid}: cls must be one of {OBJECT_CLASSES}, got {self.cls!r} "
                             "(upper-case the class, or pass '' when it is unknown)")
        if not (math.isfinite(self.ra) and math.isfinite(self.dec) and -90.0 <= self.dec <= 90.0):
            raise ValueError(f"SkyObject {self.objid}: need finite ra and dec with -90 <= dec <= 90 degrees, "
                             f"got ra={self.ra!r}, dec={self.dec!r}")


@dataclass(frozen=True)
class _Shape:
    is_galaxy: bool
    sersic_n: int
    half_light_radius_arcsec: float
    axis_ratio: float
    position_angle_rad: float  # of the major axis, from north through east


@dataclass(frozen=True)
class _Source:
    x_px: float  # column, increasing to the right (west)
    y_px: float  # row, increasing downwards (south)
    flux_nmgy: np.ndarray  # (3,) in channel order i, r, g
    shape: _Shape


def render_array(center_ra_deg: float, center_dec_deg: float, objects: Sequence[SkyObject], *,
                 scale_arcsec_per_px: float = _SDSS_SCALE_ARCSEC_PER_PX, width_px: int = 64, height_px: int = 64,
                 seeing_arcsec: float = 1.4) -> np.ndarray:
    """Render a simulated gri colour cutout as an RGB array.

    Parameters
    ----------
    center_ra_deg, center_dec_deg : float
        Field centre in degrees; it falls on pixel (row ``height_px // 2``, column ``width_px // 2``).
    objects : sequence of SkyObject
        The target and its neighbours; objects whose light does not reach the field are ignored.
    scale_arcsec_per_px : float
        Pixel scale (SDSS native: 0.396).
    width_px, height_px : int
        Image size, 1 to 2048 pixels each.
    seeing_arcsec : float
        FWHM of the point-spread function.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(height_px, width_px, 3)``, channels R, G, B = i, r, g; north up, east left.

    Raises
    ------
    ValueError
        If a parameter is out of range (the message names it and the accepted range).
    """
    width_px, height_px = _validate_field(center_ra_deg, center_dec_deg, scale_arcsec_per_px, width_px,
                                          height_px, seeing_arcsec)
    fwhm_px = math.hypot(seeing_arcsec / scale_arcsec_per_px, 1.0)
    sky_sigma_nmgy = _SKY_SIGMA_NMGY_PER_SDSS_PX * (scale_arcsec_per_px / _SDSS_SCALE_ARCSEC_PER_PX)
    # Fainter than this a source adds nothing visible; see _TRUNCATION_FRACTION_OF_SKY_SIGMA.
    threshold_nmgy = _TRUNCATION_FRACTION_OF_SKY_SIGMA * float(sky_sigma_nmgy.min())

    noise_seed, neighbour_seed = _field_seed(center_ra_deg, center_dec_deg, scale_arcsec_per_px, width_px,
                                             height_px).spawn(2)
    # float32 halves the memory of 2048-px cutouts; the 8-bit output cannot show the lost precision anyway.
    image_nmgy = np.random.default_rng(noise_seed).standard_normal((3, height_px, width_px), dtype=np.float32)
    image_nmgy *= sky_sigma_nmgy.astype(np.float32)[:, None, None]

    sources = list(_catalog_sources(center_ra_deg, center_dec_deg, objects, scale_arcsec_per_px,
                                    width_px, height_px))
    sources += _random_neighbours(np.random.default_rng(neighbour_seed), scale_arcsec_per_px, width_px, height_px)
    for source in sources:
        if source.shape.is_galaxy:
            _add_sersic(image_nmgy, source, scale_arcsec_per_px, fwhm_px, threshold_nmgy)
        else:
            _add_moffat(image_nmgy, source, fwhm_px, threshold_nmgy)
    return _asinh_composite(image_nmgy)


def render_cutout(center_ra_deg: float, center_dec_deg: float, objects: Sequence[SkyObject], *,
                  scale_arcsec_per_px: float = _SDSS_SCALE_ARCSEC_PER_PX, width_px: int = 64, height_px: int = 64,
                  seeing_arcsec: float = 1.4, jpeg_quality: int = 90) -> bytes:
    """Render a simulated gri colour cutout as JPEG bytes, like SkyServer's ImgCutout ``getjpeg``.

    Parameters
    ----------
    center_ra_deg, center_dec_deg, objects, scale_arcsec_per_px, width_px, height_px, seeing_arcsec
        As for :func:`render_array`.
    jpeg_quality : int
        JPEG quality, 1 to 100.

    Returns
    -------
    bytes
        A baseline RGB JPEG of ``width_px`` x ``height_px``; identical inputs give identical bytes.

    Raises
    ------
    ValueError
        If a parameter is out of range (the message names it and the accepted range).
    """
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, (int, np.integer)) \
            or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be an integer from 1 to 100, got {jpeg_quality!r}")
    rgb = render_array(center_ra_deg, center_dec_deg, objects, scale_arcsec_per_px=scale_arcsec_per_px,
                       width_px=width_px, height_px=height_px, seeing_arcsec=seeing_arcsec)
    buffer = BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="JPEG", quality=int(jpeg_quality))
    return buffer.getvalue()


def _validate_field(center_ra_deg: float, center_dec_deg: float, scale_arcsec_per_px: float, width_px: int,
                    height_px: int, seeing_arcsec: float) -> tuple[int, int]:
    if not math.isfinite(center_ra_deg):
        raise ValueError(f"center_ra_deg must be a finite number of degrees, got {center_ra_deg!r}")
    if not (math.isfinite(center_dec_deg) and -90.0 <= center_dec_deg <= 90.0):
        raise ValueError(f"center_dec_deg must be within [-90, 90] degrees, got {center_dec_deg!r}")
    for name, value in (("scale_arcsec_per_px", scale_arcsec_per_px), ("seeing_arcsec", seeing_arcsec)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    sizes = []
    for name, value in (("width_px", width_px), ("height_px", height_px)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_SIZE_PX:
            raise ValueError(f"{name} must be an integer from 1 to {MAX_SIZE_PX} (SkyServer clamps cutouts to "
                             f"64..{MAX_SIZE_PX}; clamp before rendering), got {value!r}")
        sizes.append(int(value))
    return sizes[0], sizes[1]


def _field_seed(center_ra_deg: float, center_dec_deg: float, scale_arcsec_per_px: float, width_px: int,
                height_px: int) -> np.random.SeedSequence:
    # SeedSequence wants non-negative integers: RA is wrapped into [0, 360) and Dec shifted by 90 degrees.
    return np.random.SeedSequence([
        round((center_ra_deg % 360.0) * _SEED_ROUNDING),
        round((center_dec_deg + 90.0) * _SEED_ROUNDING),
        round(scale_arcsec_per_px * _SEED_ROUNDING),
        width_px,
        height_px,
    ])


def _fluxes_nmgy(mags_irg: Sequence[float]) -> Optional[np.ndarray]:
    """Fluxes in channel order (i, r, g); a missing band takes the mean of the others (grey, not a colour cast)."""
    mags = np.asarray(mags_irg, dtype=float)
    valid = np.isfinite(mags) & (mags > _BRIGHTEST_VALID_MAG) & (mags <= _FAINTEST_VALID_MAG)
    if not valid.any():
        return None
    flux = np.zeros(3)
    flux[valid] = 10.0 ** (-0.4 * (mags[valid] - _ZERO_POINT_MAG))
    flux[~valid] = flux[valid].mean()
    return flux


def _shape_for(objid: int, cls: str, r_flux_nmgy: float) -> _Shape:
    # The draws happen in a fixed order whatever the class, so that an object's shape does not depend on whether
    # its class is known.
    rng = np.random.default_rng(int(objid) % 2**64)
    unknown_is_galaxy = rng.random() < _UNKNOWN_IS_GALAXY_PROBABILITY
    sersic_n = 4 if rng.random() < _DE_VAUCOULEURS_PROBABILITY else 1
    size_scatter = math.exp(rng.normal(0.0, 0.2))
    axis_ratio = rng.uniform(0.55, 1.0) if sersic_n == 4 else rng.uniform(0.3, 1.0)
    position_angle_rad = rng.uniform(0.0, math.pi)

    r_mag = _ZERO_POINT_MAG - 2.5 * math.log10(r_flux_nmgy)
    # About 4" at r = 15 falling to about 1" at r = 19, like SDSS galaxies' r-band half-light radii.
    half_light_radius_arcsec = min(max(4.0 * 10.0 ** (-0.15 * (r_mag - 15.0)) * size_scatter, 1.0), 5.0)
    is_galaxy = cls == "GALAXY" or (cls == "" and unknown_is_galaxy)
    return _Shape(is_galaxy, sersic_n, half_light_radius_arcsec, axis_ratio, position_angle_rad)


def _catalog_sources(center_ra_deg: float, center_dec_deg: float, objects: Iterable[SkyObject],
                     scale_arcsec_per_px: float, width_px: int, height_px: int) -> Iterable[_Source]:
    ra0, dec0 = math.radians(center_ra_deg), math.radians(center_dec_deg)
    sin_dec0, cos_dec0 = math.sin(dec0), math.cos(dec0)
    px_per_rad = math.degrees(1.0) * 3600.0 / scale_arcsec_per_px
    for obj in objects:
        dra = math.radians(obj.ra) - ra0
        dec = math.radians(obj.dec)
        cos_c = sin_dec0 * math.sin(dec) + cos_dec0 * math.cos(dec) * math.cos(dra)
        if cos_c <= 1e-6:  # on the far side of the sky from the tangent point: cannot be in the field
            continue
        # Gnomonic projection; to first order xi = dRA cos(dec0) and eta = dDec.
        xi = math.cos(dec) * math.sin(dra) / cos_c
        eta = (cos_dec0 * math.sin(dec) - sin_dec0 * math.cos(dec) * math.cos(dra)) / cos_c
        flux = _fluxes_nmgy((obj.i, obj.r, obj.g))
        if flux is None:
            logger.debug("object %s has no usable g/r/i magnitude; not drawn", obj.objid)
            continue
        yield _Source(x_px=width_px // 2 - xi * px_per_rad,  # east (increasing RA) is to the left
                      y_px=height_px // 2 - eta * px_per_rad,  # north is up, rows count downwards
                      flux_nmgy=flux, shape=_shape_for(obj.objid, obj.cls, flux[1]))


def _random_neighbours(rng: np.random.Generator, scale_arcsec_per_px: float, width_px: int,
                       height_px: int) -> list[_Source]:
    if rng.random() >= _NEIGHBOUR_PROBABILITY:
        return []
    min_distance_px = _NEIGHBOUR_MIN_DISTANCE_ARCSEC / scale_arcsec_per_px
    neighbours = []
    for _ in range(int(rng.integers(1, 3))):
        x_px, y_px = rng.uniform(0, width_px), rng.uniform(0, height_px)
        r_mag = rng.uniform(*_NEIGHBOUR_R_MAG_RANGE)
        g_minus_r, r_minus_i = rng.uniform(0.2, 1.2), rng.uniform(0.1, 0.5)
        cls = "GALAXY" if rng.random() < _UNKNOWN_IS_GALAXY_PROBABILITY else "STAR"
        objid = int(rng.integers(0, 2**63))
        if math.hypot(x_px - width_px // 2, y_px - height_px // 2) < min_distance_px:
            continue
        flux = _fluxes_nmgy((r_mag - r_minus_i, r_mag, r_mag + g_minus_r))
        neighbours.append(_Source(x_px, y_px, flux, _shape_for(objid, cls, flux[1])))
    return neighbours


def _stamp(image: np.ndarray, x_px: float, y_px: float, radius_px: float):
    """Pixel offsets from the source of the part of ``image`` within ``radius_px``, or None if it is empty."""
    _, height_px, width_px = image.shape
    col0, col1 = max(0, math.floor(x_px - radius_px)), min(width_px, math.ceil(x_px + radius_px) + 1)
    row0, row1 = max(0, math.floor(y_px - radius_px)), min(height_px, math.ceil(y_px + radius_px) + 1)
    if col0 >= col1 or row0 >= row1:
        return None
    dx = np.arange(col0, col1, dtype=float)[None, :] - x_px
    dy = np.arange(row0, row1, dtype=float)[:, None] - y_px
    return (slice(row0, row1), slice(col0, col1)), dx, dy


def _add_moffat(image: np.ndarray, source: _Source, fwhm_px: float, threshold_nmgy: float) -> None:
    beta = 3.0  # fixed: the profile below is written out for beta = 3
    alpha_px = fwhm_px / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    peak_per_nmgy = (beta - 1.0) / (math.pi * alpha_px**2)  # the Moffat profile integrates to one
    brightest = float(source.flux_nmgy.max())
    # Radius where the brightest band drops below the visibility threshold (the r**(-2 beta) wing).
    radius_px = alpha_px * max(brightest * peak_per_nmgy / threshold_nmgy, 1.0) ** (1.0 / (2.0 * beta))
    stamp = _stamp(image, source.x_px, source.y_px, max(radius_px, 2.0 * fwhm_px))
    if stamp is None:
        return
    where, dx, dy = stamp
    base = 1.0 + (dx * dx + dy * dy) / alpha_px**2
    profile = peak_per_nmgy / (base * base * base)  # base ** -beta for beta = 3, without the slow general pow
    image[(slice(None), *where)] += source.flux_nmgy[:, None, None] * profile


def _sersic_b(n: int) -> float:
    # Ciotti & Bertin (1999) expansion: half the light falls inside the half-light radius.
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def _upper_incomplete_gamma_int(a: int, x: float) -> float:
    """Gamma(a, x) for a positive integer a: (a-1)! e^-x sum_{k<a} x^k / k!."""
    term, total = 1.0, 1.0
    for k in range(1, a):
        term *= x / k
        total += term
    return math.factorial(a - 1) * math.exp(-x) * total


def _add_sersic(image: np.ndarray, source: _Source, scale_arcsec_per_px: float, fwhm_px: float,
                threshold_nmgy: float) -> None:
    shape = source.shape
    n = shape.sersic_n
    b = _sersic_b(n)
    half_light_px = shape.half_light_radius_arcsec / scale_arcsec_per_px
    core_px = 0.6 * fwhm_px
    # Blurring rounds small galaxies: the minor and major axes grow in quadrature with the PSF core.
    axis_ratio = math.sqrt((shape.axis_ratio * half_light_px) ** 2 + core_px**2) / math.hypot(half_light_px,
                                                                                                core_px)
    # Profile exp(-b (s/Re)^(1/n)) with s = sqrt(rho^2 + core^2) and rho the elliptical radius; over the plane it
    # integrates to 2 pi q n Re^2 b^(-2n) Gamma(2n, b (core/Re)^(1/n)), which normalises it to unit flux exactly.
    norm = (2.0 * math.pi * axis_ratio * n * half_light_px**2 * b ** (-2.0 * n)
            * _upper_incomplete_gamma_int(2 * n, b * (core_px / half_light_px) ** (1.0 / n)))
    brightest = float(source.flux_nmgy.max())
    log_ratio = math.log(max(brightest / (norm * threshold_nmgy), 1.0))
    radius_px = half_light_px * (log_ratio / b) ** n  # along the major axis, where the light becomes invisible
    stamp = _stamp(image, source.x_px, source.y_px, max(radius_px, 2.0 * fwhm_px))
    if stamp is None:
        return
    where, dx, dy = stamp
    # Position angle from north (up, -y) through east (left, -x).
    sin_pa, cos_pa = math.sin(shape.position_angle_rad), math.cos(shape.position_angle_rad)
    along_major = -dx * sin_pa - dy * cos_pa
    along_minor = dx * cos_pa - dy * sin_pa
    scaled_radius = np.sqrt((along_major * along_major + (along_minor / axis_ratio) ** 2 + core_px**2)
                            / half_light_px**2)
    if n == 4:  # x ** 0.25 as two square roots: several times faster than the general pow
        scaled_radius = np.sqrt(np.sqrt(scaled_radius))
    profile = np.exp(-b * scaled_radius) / norm
    image[(slice(None), *where)] += source.flux_nmgy[:, None, None] * profile


def _asinh_composite(image_nmgy: np.ndarray) -> np.ndarray:
    """Lupton et al. (2004) colour composite of an (i, r, g) image: uint8 (H, W, 3) RGB. Overwrites the input."""
    channels = image_nmgy
    channels *= _CHANNEL_WEIGHTS.astype(channels.dtype)[:, None, None]
    intensity = channels.mean(axis=0)
    # asinh(alpha Q I) / (Q I) tends to alpha as I -> 0; patch those pixels instead of dividing by zero.
    near_zero = np.abs(intensity) <= 1e-12
    intensity[near_zero] = 1.0
    factor = np.arcsinh(intensity * (_ASINH_ALPHA * _ASINH_Q))
    factor /= intensity * _ASINH_Q
    factor[near_zero] = _ASINH_ALPHA
    channels *= factor
    # Where a channel saturates, scale all three down together so the hue survives (the paper's key point).
    peak = channels.max(axis=0)
    np.maximum(peak, 1.0, out=peak)
    channels /= peak
    np.clip(channels, 0.0, 1.0, out=channels)
    channels *= 255.0
    np.rint(channels, out=channels)
    rgb = np.empty(channels.shape[1:] + (3,), dtype=np.uint8)
    rgb[...] = channels.transpose(1, 2, 0)
    return rgb
