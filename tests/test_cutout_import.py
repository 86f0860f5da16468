"""`skyclass cutouts --import`: existing cutouts (Parquet or a folder of images) into lake/cutouts."""
import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, JpegImagePlugin

from skyclass import cutout_import, lake, objid
from skyclass.cutout_import import CutoutImportError, import_cutouts


def _image(seed: int, size: int = 128) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    blob = 200 * np.exp(-((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (2 * (size / 10) ** 2))
    pixels = np.clip(blob[..., None] + rng.normal(20, 5, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _jpeg(seed: int, size: int = 128) -> bytes:
    out = io.BytesIO()
    _image(seed, size).save(out, format="JPEG", quality=95)
    return out.getvalue()


def _png(seed: int, size: int = 128) -> bytes:
    out = io.BytesIO()
    _image(seed, size).save(out, format="PNG")
    return out.getvalue()


def _blank_jpeg(size: int = 128) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (0, 0, 0)).save(out, format="JPEG")
    return out.getvalue()


IDS = [objid.encode_objid(run=752, camcol=c, field=f, obj=k) for k, (c, f) in
       enumerate([(1, 10), (1, 10), (2, 11), (3, 12), (3, 13)], start=1)]


def _stored(spark, conf):
    return {r["objid"]: r for r in lake.read_cutouts(spark, conf.lake.table("cutouts")).collect()}


def test_parquet_import_validates_fits_dedupes_and_reruns_add_nothing(spark, conf_for, tmp_path):
    conf = conf_for(cutouts={"import_fit": "resize"})
    good = [_jpeg(1), _jpeg(2), _jpeg(3)]
    truncated = _jpeg(4)[:-300]
    table = pa.table({
        "objid": pa.array([IDS[0], IDS[1], IDS[2], IDS[3], IDS[4], IDS[0]], pa.int64()),
        "class": ["GALAXY", "STAR", "QSO", "STAR", "QSO", "GALAXY"],
        "jpeg": [good[0], good[1], good[2], truncated, _blank_jpeg(), _jpeg(9)],
    })
    path = str(tmp_path / "mine.parquet")
    pq.write_table(table, path)

    result = import_cutouts(spark, conf, path)
    assert result.read == 6 and result.stored == 3
    assert result.already_present == 1  # the repeated IDS[0] row
    reasons = dict(result.failed)
    assert set(reasons) == {f"mine.parquet objid {IDS[3]}", f"mine.parquet objid {IDS[4]}"}
    assert reasons[f"mine.parquet objid {IDS[3]}"].startswith("corrupt_jpeg")
    assert reasons[f"mine.parquet objid {IDS[4]}"].startswith("blank")
    stored = _stored(spark, conf)
    assert set(stored) == {IDS[0], IDS[1], IDS[2]}
    for row in stored.values():
        assert row["source"] == "import:mine"
        assert row["size_px"] == 64 and row["scale_arcsec_per_px"] == pytest.approx(0.8)
        with Image.open(io.BytesIO(row["jpeg"])) as image:
            assert image.format == "JPEG" and image.size == (64, 64)
    # The first row of a repeated objid wins (the later row's image is another one).
    first = np.asarray(Image.open(io.BytesIO(stored[IDS[0]]["jpeg"])), dtype=float)
    expected = np.asarray(_image(1).resize((64, 64), Image.LANCZOS), dtype=float)
    assert np.abs(first - expected).mean() < 4

    labels = {r["objid"]: r for r in spark.read.parquet(conf.lake.table("labels")).collect()}
    assert set(labels) == {IDS[0], IDS[1], IDS[2]}
    assert (labels[IDS[2]]["class"], labels[IDS[2]]["run"], labels[IDS[2]]["camcol"],
            labels[IDS[2]]["field"]) == ("QSO", 752, 2, 11)

    again = import_cutouts(spark, conf, path)
    assert again.stored == 0 and again.labels_stored == 0 and again.already_present == 4
    assert spark.read.parquet(conf.lake.table("cutouts")).count() == 3
    assert spark.read.parquet(conf.lake.table("labels")).count() == 3


def test_folder_import_sniffs_bytes_and_reports_bad_files_by_name(spark, conf_for, tmp_path):
    conf = conf_for()
    folder = tmp_path / "downloads"
    (folder / "qso").mkdir(parents=True)
    (folder / f"{IDS[0]}.png").write_bytes(_jpeg(1))  # JPEG bytes under a .png name
    (folder / f"{IDS[1]}.jpg").write_bytes(_png(2))  # and a PNG under .jpg
    (folder / "qso" / f"{IDS[2]}.png").write_bytes(_jpeg(3))
    (folder / f"{IDS[3]}.jpg").write_bytes(_jpeg(4)[:500])  # truncated
    (folder / f"{IDS[4]}.png").write_bytes(_blank_jpeg())
    (folder / "notes.txt").write_bytes(b"not an image")

    result = import_cutouts(spark, conf, str(folder), name="downloads")
    assert result.stored == 3 and result.read == 6
    bad = {os.path.basename(name): reason for name, reason in result.failed}
    assert set(bad) == {f"{IDS[3]}.jpg", f"{IDS[4]}.png", "notes.txt"}
    assert bad[f"{IDS[3]}.jpg"].startswith("corrupt_jpeg")
    assert bad[f"{IDS[4]}.png"].startswith("blank")
    assert bad["notes.txt"].startswith("bad_name")
    stored = _stored(spark, conf)
    assert set(stored) == {IDS[0], IDS[1], IDS[2]}
    assert {r["source"] for r in stored.values()} == {"import:downloads"}
    with Image.open(io.BytesIO(stored[IDS[1]]["jpeg"])) as image:
        assert image.format == "JPEG" and image.size == (64, 64)
    labels = spark.read.parquet(conf.lake.table("labels")).collect()
    assert [(r["objid"], r["class"]) for r in labels] == [(IDS[2], "QSO")]

    assert import_cutouts(spark, conf, str(folder), name="downloads").stored == 0
    assert spark.read.parquet(conf.lake.table("cutouts")).count() == 3


def test_crop_keeps_native_scale_and_the_central_pixels(spark, conf_for, tmp_path):
    conf = conf_for()  # crop is the default fit
    folder = tmp_path / "crop"
    folder.mkdir()
    (folder / f"{IDS[0]}.png").write_bytes(_png(7))
    result = import_cutouts(spark, conf, str(folder))
    assert result.stored == 1 and result.scale_arcsec_per_px == pytest.approx(0.4)
    row = _stored(spark, conf)[IDS[0]]
    assert row["scale_arcsec_per_px"] == pytest.approx(0.4)
    got = np.asarray(Image.open(io.BytesIO(row["jpeg"])), dtype=float)
    expected = np.asarray(_image(7), dtype=float)[32:96, 32:96]
    assert np.abs(got - expected).mean() < 4


def _getjpeg_like(seed: int, size: int = 128) -> bytes:
    """A colourful field saved as SkyServer's getjpeg does: quality 75, chroma subsampled 4:2:0."""
    rng = np.random.default_rng(seed)
    pixels = np.asarray(_image(seed, size), dtype=float) * rng.uniform(0.6, 1.0, 3) + rng.normal(0, 12, (size, size, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=75, subsampling=2)
    return out.getvalue()


def _decoded(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=float)


def test_a_crop_on_the_block_grid_keeps_the_source_pixels_and_an_off_grid_crop_stays_close():
    """128 -> 64 px crops at offset 32, on the 16 px grid of a 4:2:0 JPEG: stored with the source's own tables,
    the crop decodes to the source's central pixels to within rounding (a quality-90 re-encode is off by ~1 level
    on such a field). A 120 px source (offset 28, off the grid) is re-encoded, and still close."""
    for seed in range(3):
        body = _getjpeg_like(seed)
        stored, width = cutout_import.fit_cutout(body, 64, "crop")
        assert width == 128
        error = np.abs(_decoded(stored) - _decoded(body)[32:96, 32:96]).mean()
        assert error < 0.25
        with Image.open(io.BytesIO(stored)) as image:
            assert image.size == (64, 64) and JpegImagePlugin.get_sampling(image) == 2
    off_grid = _getjpeg_like(5, size=120)
    stored, _ = cutout_import.fit_cutout(off_grid, 64, "crop")
    assert np.abs(_decoded(stored) - _decoded(off_grid)[28:92, 28:92]).mean() < 3


def test_bad_inputs_are_clear_errors(spark, conf_for, tmp_path):
    conf = conf_for()
    with pytest.raises(CutoutImportError, match="no such file"):
        import_cutouts(spark, conf, str(tmp_path / "nothing"))
    text = tmp_path / "x.csv"
    text.write_text("objid,jpeg\n")
    with pytest.raises(CutoutImportError, match="not Parquet"):
        import_cutouts(spark, conf, str(text))
    no_jpeg = str(tmp_path / "nojpeg.parquet")
    pq.write_table(pa.table({"objid": pa.array([1], pa.int64())}), no_jpeg)
    with pytest.raises(CutoutImportError, match="without column.*jpeg"):
        import_cutouts(spark, conf, no_jpeg)
    # Spark skips files named _x or .x as hidden: say so instead of its "Unable to infer schema".
    hidden = str(tmp_path / "_sample.parquet")
    pq.write_table(pa.table({"objid": pa.array([1], pa.int64()), "jpeg": pa.array([_jpeg(1)], pa.binary())}), hidden)
    with pytest.raises(CutoutImportError, match="names start with '_'.*rename"):
        import_cutouts(spark, conf, hidden)


def test_sniffing_is_by_bytes():
    assert cutout_import.sniff_image_format(_jpeg(1)) == "jpeg"
    assert cutout_import.sniff_image_format(_png(1)) == "png"
    assert cutout_import.sniff_image_format(b"<html>") is None


def test_cli_import_smoke(tmp_path):
    from skyclass.cli import main

    folder = tmp_path / "cli"
    folder.mkdir()
    (folder / f"{IDS[0]}.jpg").write_bytes(_jpeg(5))
    code = main(["cutouts", "--import", str(folder), "--set", f"lake.root={tmp_path / 'lake'}",
                 "--set", "spark.master=local[1]"])
    assert code == 0
    files = [f for f in os.listdir(tmp_path / "lake" / "cutouts") if f.endswith(".parquet")]
    assert pq.read_table(tmp_path / "lake" / "cutouts" / files[0]).column("objid").to_pylist() == [IDS[0]]
