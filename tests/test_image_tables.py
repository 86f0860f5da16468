"""Real-image training tables: labels-only catalogs from an import, field-grouped splits, image mode without
photometry, the refusal of tabular/multimodal on such rows, and SIMULATED labelling read from the cutouts' source."""
import hashlib
import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from catalog_fixture import make_labelled, write_csv
from skyclass import input_pipeline, lake, objid
from skyclass.cutout_import import import_cutouts
from skyclass.evaluate import simulated_result
from skyclass.training_table import TrainingTableError, build_training_table

SALT = "field-salt"
CLASSES = ("GALAXY", "STAR", "QSO")


def _jpeg(seed: int, size: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _objects(n_fields: int = 40, per_field: int = 4):
    ids, classes = [], []
    for f in range(n_fields):
        for k in range(per_field):
            ids.append(objid.encode_objid(run=752 + f % 3, camcol=1 + f % 6, field=100 + f, obj=k + 1))
            classes.append(CLASSES[(f + k) % 3])
    return ids, classes


def _import_labelled(spark, conf, tmp_path, ids, classes, name="real"):
    path = str(tmp_path / f"{name}.parquet")
    pq.write_table(pa.table({"objid": pa.array(ids, pa.int64()), "class": classes,
                             "jpeg": [_jpeg(i) for i in range(len(ids))]}), path)
    return import_cutouts(spark, conf, path)


def _table_rows(conf):
    root = conf.lake.path("root")
    return {split: pq.read_table(lake.training_split_path(root, split), columns=["objid", "split", "u"]).to_pandas()
            for split in lake.SPLITS}


def _field_split(value: int, train: float, validation: float) -> str:
    p = objid.decode_objid(value)
    fraction = int(hashlib.sha256(f"{SALT}:{p.run}-{p.camcol}-{p.field}".encode()).hexdigest()[:13], 16) / 16 ** 13
    return "train" if fraction < train else "validation" if fraction < train + validation else "test"


def test_image_table_from_a_labels_only_import_with_a_field_grouped_split(spark, conf_for, tmp_path):
    conf = conf_for(train={"mode": "image"}, split={"group_by": "field", "salt": SALT, "train": 0.6,
                                                   "validation": 0.2, "test": 0.2})
    ids, classes = _objects()
    _import_labelled(spark, conf, tmp_path, ids, classes)
    result = build_training_table(spark, conf)   # no catalog at all: labels and cutouts only

    rows = _table_rows(conf)
    assert sum(len(r) for r in rows.values()) == len(ids)
    field_of = {}
    for split, frame in rows.items():
        assert len(frame) > 0
        assert frame["u"].isna().all()  # no photometry
        for value in frame["objid"]:
            p = objid.decode_objid(int(value))
            key = (p.run, p.camcol, p.field)
            assert field_of.setdefault(key, split) == split, f"field {key} in two splits"
            assert _field_split(int(value), 0.6, 0.2) == split
    assert len(field_of) == 40
    stats = input_pipeline.load_training_stats(lake.training_stats_path(conf.lake.path("root")))
    assert stats.raw["rows_without_photometry"] == len(ids)
    assert stats.raw["split_group_by"] == "field"
    assert stats.raw["cutout_sources"] == {"import:real": len(ids)}
    # Real pixels: the data say so, and no SIMULATED label follows.
    assert result.simulated is False and stats.raw["simulated"] is False
    assert simulated_result(stats.raw, "image", {}) is False
    assert simulated_result(dict(stats.raw, cutout_sources={"import:real": 3, "standin-simulated": 1}), "image",
                            {}) is True


def test_an_object_split_puts_one_field_in_several_splits(spark, conf_for, tmp_path):
    conf = conf_for(train={"mode": "image"}, split={"salt": SALT, "train": 0.5, "validation": 0.25, "test": 0.25})
    ids, classes = _objects(n_fields=10, per_field=8)
    _import_labelled(spark, conf, tmp_path, ids, classes)
    build_training_table(spark, conf)
    splits_per_field = {}
    for split, frame in _table_rows(conf).items():
        for value in frame["objid"]:
            p = objid.decode_objid(int(value))
            splits_per_field.setdefault((p.run, p.camcol, p.field), set()).add(split)
    assert any(len(s) > 1 for s in splits_per_field.values())


def test_tabular_and_multimodal_refuse_rows_without_photometry(spark, conf_for, tmp_path, caplog):
    from skyclass.train import TrainingError, build_plan

    ids, classes = _objects(n_fields=12)
    image_conf = conf_for(train={"mode": "image", "batch_size": 4, "num_proc": 1})
    _import_labelled(spark, image_conf, tmp_path, ids, classes)
    multimodal = conf_for(train={"mode": "multimodal"})
    with pytest.raises(TrainingTableError, match="train.mode=multimodal needs ugriz photometry"):
        build_training_table(spark, multimodal)

    build_training_table(spark, image_conf)
    stats = input_pipeline.load_training_stats(lake.training_stats_path(image_conf.lake.path("root")))
    for mode in ("tabular", "multimodal"):
        conf = conf_for(train={"mode": mode, "batch_size": 4, "num_proc": 1})
        with pytest.raises(TrainingError, match=f"{len(ids)} rows without photometry.*train.mode={mode}"):
            build_plan(conf, stats, "v1")
    with caplog.at_level("WARNING", logger="skyclass.train"):
        main, fallback = build_plan(image_conf, stats, "v1").phases
    assert main.spec.mode == "image"
    # No row has photometry: the fallback cannot be trained on such rows alone, and the log says what it becomes.
    assert not fallback.spec.require_features
    assert "tabular fallback: the train split has 0 rows with photometry" in caplog.text


def test_the_tabular_fallback_of_an_image_table_reads_only_the_rows_with_photometry(spark, conf_for, tmp_path):
    """An image table of 160 labels-only objects and 80 with photometry: the image model reads every row, the
    tabular fallback only the 80 (not 240 rows of which two thirds would have all-zero features)."""
    from skyclass.extract import extract_catalog
    from skyclass.train import build_plan

    conf = conf_for(train={"mode": "image", "batch_size": 4, "num_proc": 2}, cutouts={"rows_per_row_group": 20},
                    split={"train": 0.6, "validation": 0.2, "test": 0.2})
    catalog = make_labelled(80, seed=41)
    extract_catalog(spark, conf, from_csv=write_csv(catalog, tmp_path / "catalog.csv"))
    ids, classes = _objects(n_fields=40, per_field=4)
    _import_labelled(spark, conf, tmp_path, ids + [int(v) for v in catalog.objid],
                     classes + list(catalog["class"]))
    build_training_table(spark, conf)
    stats = input_pipeline.load_training_stats(lake.training_stats_path(conf.lake.path("root")))
    assert stats.raw["rows_without_photometry"] == len(ids)

    main, fallback = build_plan(conf, stats, "v1").phases
    assert not main.spec.require_features and fallback.spec.require_features
    train_path = lake.training_split_path(conf.lake.path("root"), "train")
    train = _table_rows(conf)["train"]
    with_photometry = int(train["u"].notna().sum())
    assert 0 < with_photometry < len(train)
    groups = input_pipeline.list_row_groups(train_path, fallback.spec.features)
    assert sum(g.rows_with_features for g in groups) == with_photometry
    assert fallback.rows_per_epoch <= with_photometry < main.rows_per_epoch
    # What the fallback's reader delivers: the rows with photometry, every one of them, and nothing else.
    with input_pipeline.open_reader(train_path, fallback.spec, num_epochs=1, shuffle=False) as reader:
        delivered = sum(len(batch.label) for batch in reader)
    assert delivered == with_photometry
    with input_pipeline.open_reader(train_path, main.spec, num_epochs=1, shuffle=False) as reader:
        assert sum(len(batch.label) for batch in reader) == len(train)


@pytest.mark.slow
def test_image_training_without_photometry_exports_weights_and_evaluates_unlabelled(spark, conf_for, tmp_path):
    """The real jobs on a labels-only import: Horovod image training, the exported image branch loading into a
    multimodal model, and an evaluation without the SIMULATED label (the cutouts' source says import)."""
    from skyclass.evaluate import evaluate
    from skyclass.models import build_model, image_weights_info
    from skyclass.package import ModelPackage
    from skyclass.train import train_model

    conf = conf_for(train={"mode": "image", "batch_size": 16, "image_size_px": 32, "num_proc": 2, "epochs": 2,
                           "fusion_units": [8], "batch_norm": False, "dropout": 0.0, "warmup_epochs": 0,
                           "augment": True, "version": "real-img", "image_crop_px": 16, "cnn_filters": [8, 16]},
                    split={"group_by": "field", "salt": SALT}, evaluate={"baselines": []},
                    cutouts={"rows_per_row_group": 20})
    ids, classes = _objects(n_fields=40, per_field=4)
    _import_labelled(spark, conf, tmp_path, ids, classes)
    build_training_table(spark, conf)
    result = train_model(spark, conf)
    assert result.image_weights and os.path.isfile(result.image_weights)
    package = ModelPackage.load(result.path)
    assert package.metadata["simulated_images"] is False
    assert package.domain_reference() is None  # no photometry: no in-domain reference, no domain flags

    model = package.load_model()
    assert model.get_layer("small_cnn").input_shape == (None, 16, 16, 3)  # the central 16 px of 32
    trained = model.get_layer("small_cnn").get_weights()
    assert image_weights_info(result.image_weights) == {"backbone": "small_cnn", "image_size_px": 16,
                                                       "cnn_filters": (8, 16)}
    fused = build_model("multimodal", n_features=5, image_size_px=32, image_crop_px=16, cnn_filters=(8, 16),
                        weights=result.image_weights, batch_norm=False)
    for a, b in zip(fused.get_layer("small_cnn").get_weights(), trained):
        np.testing.assert_array_equal(a, b)

    report = evaluate(spark, conf)
    assert report.simulated is False and report.report["simulated_results"] == []
    with open(os.path.join(report.path, "report.md"), encoding="utf-8") as fh:
        assert "SIMULATED" not in fh.read()


def test_augmentation_gives_the_eight_orientations_of_the_square():
    import tensorflow as tf

    from skyclass.input_pipeline import augment_image

    image = np.arange(4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3)
    symmetries = [np.rot90(m, k) for m in (image, image[:, ::-1]) for k in range(4)]
    tf.random.set_seed(0)
    seen = set()
    for _ in range(80):
        out = augment_image(tf.constant(image)).numpy()
        matches = [i for i, s in enumerate(symmetries) if np.array_equal(out, s)]
        assert len(matches) == 1, "not a flip/rotation of the input"
        seen.add(matches[0])
    assert seen == set(range(8))
