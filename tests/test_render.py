"""Behaviour of the stand-in's simulated cutouts: format, determinism, geometry, morphology, colour and noise."""
from __future__ import annotations

import math
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from skyclass.standin.render import (SkyObject, _add_moffat, _add_sersic, _random_neighbours, _Shape, _Source,
                                     render_array, render_cutout)

RA0, DEC0 = 150.1234567, 30.0  # a mid-declination field, so that the cos(dec) factor of RA offsets matters
SDSS_SCALE = 0.396


def star(ra=RA0, dec=DEC0, mag=16.0, objid=7, cls="STAR"):
    return SkyObject(objid, ra, dec, cls, g=mag + 0.3, r=mag, i=mag - 0.1)


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(float).sum(axis=2)


def second_moment_px2(rgb: np.ndarray, radius_px: float = 14.0) -> float:
    """Light-weighted mean squared distance from the image centre, sky level removed."""
    light = luminance(rgb)
    light -= np.median(light)
    height, width = light.shape
    rows, cols = np.mgrid[:height, :width]
    d2 = (rows - height // 2) ** 2 + (cols - width // 2) ** 2
    weight = np.clip(light, 0.0, None) * (d2 <= radius_px**2)
    return float((weight * d2).sum() / weight.sum())


def centroid_px(rgb: np.ndarray, box_px: int = 4) -> tuple[float, float]:
    """(row, column) centroid of the sky-subtracted light in a box around the brightest pixel."""
    light = luminance(rgb)
    light -= np.median(light)
    row, col = np.unravel_index(np.argmax(light), light.shape)
    box = np.clip(light[row - box_px:row + box_px + 1, col - box_px:col + box_px + 1], 0.0, None)
    rows, cols = np.mgrid[row - box_px:row + box_px + 1, col - box_px:col + box_px + 1]
    return float((box * rows).sum() / box.sum()), float((box * cols).sum() / box.sum())


def central_sum(rgb: np.ndarray, half_px: int = 2) -> np.ndarray:
    """Per-channel sum over the (2*half+1)^2 pixels at the image centre."""
    row, col = rgb.shape[0] // 2, rgb.shape[1] // 2
    return rgb[row - half_px:row + half_px + 1, col - half_px:col + half_px + 1].astype(float).sum(axis=(0, 1))


def test_cutout_is_a_jpeg_of_the_requested_size_showing_the_rendered_array():
    jpeg = render_cutout(RA0, DEC0, [star()], width_px=80, height_px=48)
    image = Image.open(BytesIO(jpeg))
    assert image.format == "JPEG"
    assert image.mode == "RGB"
    assert image.size == (80, 48)  # Pillow reports (width, height)
    decoded = np.asarray(image).astype(float)
    expected = render_array(RA0, DEC0, [star()], width_px=80, height_px=48).astype(float)
    # JPEG smears the pixel noise (and subsamples colour), but 4x4-pixel block means must survive.
    blocks = lambda rgb: rgb.reshape(12, 4, 20, 4, 3).mean(axis=(1, 3))  # noqa: E731
    assert np.abs(blocks(decoded) - blocks(expected)).max() < 10.0
    assert np.abs(blocks(decoded) - blocks(expected)).mean() < 2.0


def test_same_request_gives_identical_bytes_and_a_different_field_does_not():
    objects = [star(), SkyObject(11, RA0 + 0.002, DEC0 - 0.001, "GALAXY", 18.0, 17.2, 16.8)]
    first = render_cutout(RA0, DEC0, objects)
    assert render_cutout(RA0, DEC0, objects) == first
    # Float noise far below the seed's micro-degree rounding must not change the picture.
    assert render_cutout(RA0 + 1e-10, DEC0, objects) == first
    moved_by_one_arcsec = render_cutout(RA0, DEC0 + 1.0 / 3600, objects)
    assert moved_by_one_arcsec != first


def test_blank_field_is_dark_noise():
    rgb = render_array(RA0, DEC0, [])
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    for channel in range(3):
        values = rgb[..., channel].astype(float)
        assert np.median(values) < 25  # dark sky...
        assert values.std() > 1.0  # ...with visible noise, not a flat fill
    assert rgb.max() < 128  # nothing bright anywhere


def test_objects_that_cannot_be_drawn_leave_the_blank_field_unchanged():
    blank = render_array(RA0, DEC0, [])
    far_away = star(ra=RA0 + 1.0)
    opposite_side_of_the_sky = star(ra=RA0 + 180.0, dec=-DEC0)
    sentinel_magnitudes = SkyObject(3, RA0, DEC0, "STAR", g=-9999.0, r=float("nan"), i=99.0)
    np.testing.assert_array_equal(
        render_array(RA0, DEC0, [far_away, opposite_side_of_the_sky, sentinel_magnitudes]), blank)


def test_a_band_with_a_sentinel_magnitude_still_shows_the_object():
    blank = render_array(RA0, DEC0, [])
    rgb = render_array(RA0, DEC0, [SkyObject(3, RA0, DEC0, "STAR", g=17.0, r=17.0, i=-9999.0)])
    # The missing i band (red) takes the other bands' flux instead of leaving a cyan hole.
    assert central_sum(rgb)[0] > central_sum(blank)[0] + 25 * 40


@pytest.mark.parametrize("scale", [SDSS_SCALE, 0.8])
def test_north_is_up(scale):
    offset_px = 10
    above = star(dec=DEC0 + offset_px * scale / 3600)
    rgb = render_array(RA0, DEC0, [above], scale_arcsec_per_px=scale, width_px=80, height_px=48)
    row, col = centroid_px(rgb)
    assert row == pytest.approx(48 // 2 - offset_px, abs=0.3)
    assert col == pytest.approx(80 // 2, abs=0.3)


def test_east_is_left_with_ra_offsets_shrunk_by_cos_dec():
    offset_px = 12
    # At dec 30 an RA step covers cos(30 deg) = 0.866 of its size on the sky, so a larger step is needed.
    east = star(ra=RA0 + offset_px * SDSS_SCALE / 3600 / math.cos(math.radians(DEC0)))
    row, col = centroid_px(render_array(RA0, DEC0, [east], width_px=80, height_px=48))
    assert row == pytest.approx(48 // 2, abs=0.3)
    assert col == pytest.approx(80 // 2 - offset_px, abs=0.3)


def test_positions_hold_across_the_ra_wrap_and_in_a_large_cutout():
    ra0 = 359.99
    offset_px = 400  # far out in a large field, where only the source's stamp is evaluated
    west = SkyObject(5, (ra0 - offset_px * SDSS_SCALE / 3600) % 360, 0.0, "STAR", 15.3, 15.0, 14.9)
    across_wrap = SkyObject(6, (ra0 + 200 * SDSS_SCALE / 3600) % 360, 0.0, "STAR", 15.3, 15.0, 14.9)
    assert across_wrap.ra < 1.0  # really on the other side of RA = 0
    rgb = render_array(ra0, 0.0, [west, across_wrap], width_px=1024, height_px=600)
    assert rgb.shape == (600, 1024, 3)
    row, col = centroid_px(rgb[:, 512 + 300:])
    assert (row, col + 812) == (pytest.approx(300, abs=0.3), pytest.approx(512 + offset_px, abs=0.3))
    row, col = centroid_px(rgb[:, :512 - 100])
    assert (row, col) == (pytest.approx(300, abs=0.3), pytest.approx(512 - 200, abs=0.3))


@pytest.mark.parametrize("objid", [1, 2, 3, 4, 5, 1237648720142401538])
def test_a_galaxy_is_more_extended_than_a_star_of_the_same_magnitude(objid):
    galaxy = render_array(RA0, DEC0, [star(objid=objid, cls="GALAXY")])
    point = render_array(RA0, DEC0, [star(objid=objid, cls="STAR")])
    assert second_moment_px2(galaxy) > 1.4 * second_moment_px2(point)


@pytest.mark.parametrize("cls", ["STAR", "QSO"])
def test_point_sources_have_the_seeing_disc(cls):
    sharp = render_array(RA0, DEC0, [star(cls=cls)], seeing_arcsec=1.0)
    blurred = render_array(RA0, DEC0, [star(cls=cls)], seeing_arcsec=2.5)
    assert second_moment_px2(blurred) > 1.5 * second_moment_px2(sharp)


def test_a_red_object_is_red_and_a_blue_object_is_blue_in_the_centre():
    red = SkyObject(8, RA0, DEC0, "STAR", g=20.0, r=18.5, i=17.0)
    blue = SkyObject(8, RA0, DEC0, "QSO", g=17.0, r=18.0, i=19.0)
    red_r, _, red_b = central_sum(render_array(RA0, DEC0, [red]))
    blue_r, _, blue_b = central_sum(render_array(RA0, DEC0, [blue]))
    assert red_r > 1.5 * red_b
    assert blue_b > 1.5 * blue_r


@pytest.mark.parametrize("cls", ["STAR", "GALAXY"])
def test_a_brighter_magnitude_puts_more_light_in_the_centre(cls):
    sums = [central_sum(render_array(RA0, DEC0, [star(mag=mag, cls=cls)])).sum() for mag in (19.0, 17.5, 16.0)]
    assert sums[0] < sums[1] < sums[2]


def test_an_unknown_class_is_drawn_as_a_galaxy_or_a_star_decided_by_objid_mostly_galaxy():
    galaxies = 0
    for objid in range(1, 121):
        unknown = render_array(RA0, DEC0, [star(objid=objid, cls="")])
        as_galaxy = np.array_equal(unknown, render_array(RA0, DEC0, [star(objid=objid, cls="GALAXY")]))
        as_star = np.array_equal(unknown, render_array(RA0, DEC0, [star(objid=objid, cls="STAR")]))
        assert as_galaxy != as_star, f"objid {objid}: unknown class must look exactly like one of the two"
        galaxies += as_galaxy
    assert 0.45 <= galaxies / 120 <= 0.75  # 60 % expected; 120 draws give a standard error of 4.5 %


def test_about_one_field_in_four_has_faint_neighbours_never_on_the_target():
    with_neighbours = 0
    for seed in range(400):
        neighbours = _random_neighbours(np.random.default_rng(seed), SDSS_SCALE, 64, 64)
        with_neighbours += bool(neighbours)
        for neighbour in neighbours:
            assert math.hypot(neighbour.x_px - 32, neighbour.y_px - 32) * SDSS_SCALE >= 4.0
            assert neighbour.flux_nmgy[1] < 10 ** (-0.4 * (20.5 - 22.5))  # fainter than r = 20.5
    assert 0.18 <= with_neighbours / 400 <= 0.32


@pytest.mark.parametrize("shape", [
    _Shape(is_galaxy=True, sersic_n=1, half_light_radius_arcsec=3.0, axis_ratio=0.3, position_angle_rad=0.7),
    _Shape(is_galaxy=True, sersic_n=4, half_light_radius_arcsec=1.0, axis_ratio=1.0, position_angle_rad=0.0),
    _Shape(is_galaxy=False, sersic_n=1, half_light_radius_arcsec=1.0, axis_ratio=1.0, position_angle_rad=0.0),
])
def test_profiles_hold_the_catalogue_flux(shape):
    """Summing the pixels checks the analytic normalisations (incomplete gamma, Moffat) independently."""
    flux_nmgy = np.array([100.0, 50.0, 20.0])
    image = np.zeros((3, 400, 400))
    source = _Source(x_px=200.3, y_px=199.8, flux_nmgy=flux_nmgy, shape=shape)
    if shape.is_galaxy:
        _add_sersic(image, source, SDSS_SCALE, fwhm_px=3.6, threshold_nmgy=1e-7)
    else:
        _add_moffat(image, source, fwhm_px=3.6, threshold_nmgy=1e-7)
    np.testing.assert_allclose(image.sum(axis=(1, 2)), flux_nmgy, rtol=0.005)


@pytest.mark.parametrize("kwargs", [
    {"width_px": 0}, {"height_px": 2049}, {"width_px": 64.0}, {"scale_arcsec_per_px": 0.0},
    {"seeing_arcsec": float("nan")}, {"jpeg_quality": 0}, {"jpeg_quality": 101},
])
def test_out_of_range_parameters_are_rejected_by_name(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        render_cutout(RA0, DEC0, [], **kwargs)


def test_out_of_range_centre_is_rejected():
    with pytest.raises(ValueError, match="center_dec_deg"):
        render_array(RA0, 91.0, [])


def test_bad_catalogue_rows_are_rejected_with_the_objid():
    with pytest.raises(ValueError, match="cls"):
        SkyObject(42, RA0, DEC0, "galaxy", 17.0, 17.0, 17.0)
    with pytest.raises(ValueError, match="42"):
        SkyObject(42, RA0, 95.0, "STAR", 17.0, 17.0, 17.0)
    with pytest.raises(TypeError, match="objid"):
        SkyObject(1.237648720142401e18, RA0, DEC0, "STAR", 17.0, 17.0, 17.0)
    SkyObject(np.int64(1237648720142401538), RA0, DEC0, "STAR", 17.0, 17.0, 17.0)  # numpy ints are fine
