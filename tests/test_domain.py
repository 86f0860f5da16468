"""In-domain flags: nearest-neighbour distances against brute force, fixture objects placed inside and outside the
stored coverage, the reference travelling in the package under its fingerprint, and a scored night whose rows carry
calibrated probabilities, domain flags and provenance (with the night's _provenance.json)."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from skyclass import lake
from skyclass.config import CLASSES, load_config
from skyclass.domain import (FAR_FROM_TRAINING, MIXED_NEIGHBOURHOOD, OUTSIDE_MAGNITUDES, REFERENCE_FILE, DomainError,
                             DomainReference, build_domain_reference, domain_reference_from_training,
                             kth_neighbour_distance)

BANDS = lake.MAGNITUDES


def brute_kth(x, reference, k, skip_self=False):
    out = []
    for i, row in enumerate(x):
        distances = sorted(float(np.sqrt(((row - other) ** 2).sum())) for j, other in enumerate(reference)
                           if not (skip_self and i == j))
        out.append(distances[k - 1])
    return np.array(out)


def test_kth_neighbour_distance_matches_brute_force():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(300, 4))
    x = rng.normal(size=(40, 4)) * 2
    np.testing.assert_allclose(kth_neighbour_distance(x, reference, 5), brute_kth(x, reference, 5), rtol=1e-4)
    np.testing.assert_allclose(kth_neighbour_distance(reference, reference, 3, leave_one_out=True),
                               brute_kth(reference, reference, 3, skip_self=True), rtol=1e-4, atol=1e-5)
    with pytest.raises(DomainError, match="lower domain.k"):
        kth_neighbour_distance(x, reference[:3], 3, leave_one_out=True)


def _reference(k=4, quantile=0.9):
    """Training objects on a regular grid of two standardised features; magnitudes r in [16, 20] on every band."""
    grid = np.array([[a, b] for a in np.linspace(-1, 1, 11) for b in np.linspace(-1, 1, 11)], dtype=np.float32)
    own = brute_kth(grid, grid, k, skip_self=True)
    reference = build_domain_reference(None, grid, ("f1", "f2"), bands=BANDS, magnitude_low=[16.0] * 5,
                                       magnitude_high=[20.0] * 5, magnitude_quantiles=(0.0, 1.0), k=k,
                                       quantile=quantile, reference_rows=10_000)
    return reference, float(np.quantile(own, quantile))


def test_threshold_is_the_quantile_of_training_objects_own_distances():
    reference, expected = _reference()
    assert reference.threshold == pytest.approx(expected, rel=1e-5)


def test_fixture_objects_inside_and_outside_the_stored_coverage():
    reference, threshold = _reference()
    frame = pd.DataFrame({b: [18.0, 21.5, 18.0, -9999.0, 15.9, 21.5] for b in BANDS})
    frame.loc[4, "r"] = 18.0  # only the u..z other than r at 15.9: still outside
    x = np.array([[0.05, 0.05],   # in the middle of the grid
                  [0.0, 0.0],     # r = 21.5: fainter than any training object
                  [3.0, 3.0],     # magnitudes fine, features far from every training object
                  [0.0, 0.0],     # a sentinel magnitude
                  [0.0, 0.0],
                  [3.0, 3.0]],    # both outside and far: the first reason, magnitudes, is named
                 dtype=np.float32)
    domain, score = reference.assess(frame, x)
    assert domain.tolist() == ["in", OUTSIDE_MAGNITUDES, FAR_FROM_TRAINING, OUTSIDE_MAGNITUDES, OUTSIDE_MAGNITUDES,
                               OUTSIDE_MAGNITUDES]
    grid = reference.reference
    np.testing.assert_allclose(score, brute_kth(x, grid, 4) / threshold, rtol=1e-4)
    assert score[0] < 1 < score[2]
    with pytest.raises(DomainError, match="features"):
        reference.assess(frame, x[:, :1])


def brute_purity(x, reference, labels, k):
    """Share of the most common label among the k nearest reference rows, by sorting every distance."""
    out = []
    for row in x:
        order = np.argsort(np.sqrt(((reference - row) ** 2).sum(axis=1)), kind="stable")[:k]
        out.append(np.bincount(labels[order]).max() / k)
    return np.array(out)


def _labelled_reference(k=10, min_purity=0.7):
    """Training objects uniform on [-1, 1]^2: class 0 left of x = -0.3, class 1 right of x = 0.3, and in the strip
    between a random mix of the three classes (a region the training labels do not resolve)."""
    rng = np.random.default_rng(3)
    points = rng.uniform(-1, 1, size=(1500, 2)).astype(np.float32)
    labels = np.where(points[:, 0] < -0.3, 0, np.where(points[:, 0] > 0.3, 1, rng.integers(0, 3, len(points))))
    reference = build_domain_reference(None, points, ("f1", "f2"), bands=BANDS, magnitude_low=[16.0] * 5,
                                       magnitude_high=[20.0] * 5, magnitude_quantiles=(0.0, 1.0), k=k,
                                       quantile=0.99, reference_rows=10_000, labels=labels, min_purity=min_purity)
    return reference, points, labels


def test_mixed_neighbourhood_flags_objects_whose_nearest_training_objects_disagree():
    reference, points, labels = _labelled_reference()
    rng = np.random.default_rng(4)
    x = np.concatenate([np.array([[-0.8, 0.0],    # deep in class 0: all 10 neighbours agree
                                  [0.8, 0.5],     # deep in class 1
                                  [0.0, 0.0],     # in the mixed strip
                                  [0.0, 0.6],     # in the mixed strip
                                  [9.0, 9.0]]),   # far from everything (and its neighbours, on the edge, are pure)
                        rng.uniform(-1, 1, size=(200, 2))]).astype(np.float32)
    frame = pd.DataFrame({b: [18.0] * len(x) for b in BANDS})
    domain, score = reference.assess(frame, x)
    purity = brute_purity(x, points, labels, 10)
    distance = brute_kth(x, points, 10)
    np.testing.assert_allclose(reference.neighbourhood(x)[1], purity, atol=1e-6)
    expected = np.where(distance / reference.threshold > 1, FAR_FROM_TRAINING,
                        np.where(purity < 0.7 - 1e-9, MIXED_NEIGHBOURHOOD, "in"))
    assert domain.tolist() == expected.tolist()
    assert domain[:5].tolist() == ["in", "in", MIXED_NEIGHBOURHOOD, MIXED_NEIGHBOURHOOD, FAR_FROM_TRAINING]
    # domain_score stays the k-th neighbour distance over the threshold, whatever the labels say.
    np.testing.assert_allclose(score, distance / reference.threshold, rtol=1e-4)
    # An exact 7 of 10 is enough: only fewer than min_purity of the neighbours is mixed.
    assert {MIXED_NEIGHBOURHOOD, "in"} <= set(domain[5:][(purity[5:] >= 0.6) & (purity[5:] <= 0.7)])
    assert (domain[5:][np.isclose(purity[5:], 0.7)] == "in").all()
    # min_purity 0 switches the test off.
    off, _ = _labelled_reference(min_purity=0.0)[0].assess(frame, x)
    assert MIXED_NEIGHBOURHOOD not in set(off)


def test_labels_travel_with_the_reference_and_old_references_skip_the_mixed_test():
    reference, points, labels = _labelled_reference()
    stored = DomainReference.from_stored(reference.metadata(), reference.reference_bytes())
    np.testing.assert_array_equal(stored.labels, labels)
    assert stored.min_purity == 0.7 and stored.metadata()["labelled"] is True
    x = np.array([[0.0, 0.0], [-0.8, 0.0]], dtype=np.float32)
    frame = pd.DataFrame({b: [18.0, 18.0] for b in BANDS})
    assert stored.assess(frame, x)[0].tolist() == [MIXED_NEIGHBOURHOOD, "in"]
    # A package from before labelled references: its npz has no labels, its metadata no min_purity.
    import io
    buffer = io.BytesIO()
    np.savez(buffer, reference=points)
    old_metadata = {k: v for k, v in reference.metadata().items() if k not in ("min_purity", "labelled")}
    old = DomainReference.from_stored(old_metadata, buffer.getvalue())
    assert old.labels is None and old.assess(frame, x)[0].tolist() == ["in", "in"]
    buffer = io.BytesIO()
    np.savez(buffer, reference=points, labels=labels[:-1])
    with pytest.raises(DomainError, match="labels"):
        DomainReference.from_stored(reference.metadata(), buffer.getvalue())


def test_min_purity_is_checked_at_load():
    from skyclass.config import ConfigError

    assert load_config(None, []).domain.min_purity == 0.7
    with pytest.raises(ConfigError, match="domain.min_purity"):
        load_config(None, ["domain.min_purity=1.5"])


def test_the_reference_travels_in_the_package_under_its_fingerprint(tmp_path):
    from skyclass.package import ModelPackage, PackageError, write_package

    reference, _ = _reference()
    path = write_package(str(tmp_path), "v1", model_keras=b"m", tabular_keras=b"t",
                         metadata={"mode": "tabular", "domain": reference.metadata(), "classes": list(CLASSES)},
                         extra_files={REFERENCE_FILE: reference.reference_bytes()})
    loaded = ModelPackage.load(path).domain_reference()
    np.testing.assert_array_equal(loaded.reference, reference.reference)
    assert (loaded.threshold, loaded.k, loaded.bands) == (reference.threshold, 4, BANDS)
    with open(os.path.join(path, REFERENCE_FILE), "r+b") as fh:
        fh.seek(-8, os.SEEK_END)
        fh.write(b"XXXXXXXX")
    with pytest.raises(PackageError, match="fingerprint"):
        ModelPackage.load(path)
    with pytest.raises(PackageError, match="only"):
        write_package(str(tmp_path), "v2", model_keras=b"m", tabular_keras=b"t", metadata={},
                      extra_files={"notes.txt": b"x"})


def test_reference_from_a_training_split(spark, tmp_path):
    from skyclass.input_pipeline import InputSpec

    rng = np.random.default_rng(5)
    n = 3000
    frame = pd.DataFrame({b: rng.uniform(14, 22, n) for b in BANDS})
    frame.loc[:9, "g"] = -9999.0  # sentinels are left out of the coverage
    frame["u_g"] = frame["u"] - frame["g"]
    frame["label"] = (frame["r"] > 18).astype("int32")  # a label the test can recompute from the sampled row
    train = tmp_path / "train"
    spark.createDataFrame(frame).write.parquet(str(train))
    spec = InputSpec("tabular", ("r", "u_g"), {"r": {"mean": 18.0, "std": 2.0}, "u_g": {"mean": 0.0, "std": 3.0}}, 0)
    conf = load_config(None, ["domain.reference_rows=500", "domain.k=5", "domain.magnitude_quantiles=[0.01, 0.99]"])
    reference = domain_reference_from_training(spark, str(train), spec, conf.domain)
    clean = frame[(frame[list(BANDS)] > 0).all(axis=1)]
    for band, lo, hi in zip(reference.bands, reference.magnitude_low, reference.magnitude_high):
        assert lo == pytest.approx(np.quantile(clean[band], 0.01), abs=0.02)
        assert hi == pytest.approx(np.quantile(clean[band], 0.99), abs=0.02)
    assert 400 <= len(reference.reference) <= 500 and reference.k == 5
    # The reference rows are standardised with the package's normalisation: r spans (14 - 18) / 2 .. (22 - 18) / 2.
    assert reference.reference[:, 0].min() >= -2.0 - 1e-6 and reference.reference[:, 0].max() <= 2.0 + 1e-6
    # Each reference row keeps its own training label: r > 18 is a standardised r above 0.
    np.testing.assert_array_equal(reference.labels, (reference.reference[:, 0] > 0).astype(np.int32))
    assert reference.min_purity == conf.domain.min_purity


# ---------------------------------------------------------------------------------------------------------------
# A scored night: calibrated, flagged, re-weighted, with provenance.

N_OBJECTS = 400


@pytest.fixture(scope="module")
def scored_lake(spark, tmp_path_factory):
    from skyclass.simulate import simulate_lake

    root = tmp_path_factory.mktemp("lake")
    simulate_lake(spark, load_config(None, [f"lake.root={root}"]), n_objects=N_OBJECTS, seed=7,
                  rows_per_partition=200, sentinel_fraction=0.03, cutouts=False)
    return root


def _trusted_package(models_dir, catalog: pd.DataFrame):
    """A small untrained tabular package with a hand-set calibration (T = 2) and a domain reference made from half
    of the catalog's clean rows (standardised by hand, independently of skyclass.features)."""
    import tensorflow as tf

    from skyclass.calibration import Calibration
    from skyclass.models import build_model
    from skyclass.package import keras_model_bytes, write_package
    from test_score import FEATURES, NORMALISATION, hand_features

    tf.keras.utils.set_random_seed(0)
    model = build_model("tabular", n_features=len(FEATURES), tabular_units=(16,), dropout=0.0)
    clean = catalog[(catalog[list(BANDS)] > 0).all(axis=1)]
    reference = build_domain_reference(None, hand_features(clean.iloc[::2]), FEATURES, bands=BANDS,
                                       magnitude_low=[float(clean[b].quantile(0.05)) for b in BANDS],
                                       magnitude_high=[float(clean[b].quantile(0.95)) for b in BANDS],
                                       magnitude_quantiles=(0.05, 0.95), k=3, quantile=0.9, reference_rows=10_000)
    calibration = Calibration("temperature", 2.0, source_priors=(0.5, 0.3, 0.2)).to_dict()
    metadata = {"mode": "tabular", "backbone": None, "feature_set": "photometric", "features": list(FEATURES),
                "classes": list(CLASSES), "normalisation": NORMALISATION, "image_size_px": None,
                "calibration": {"main": calibration, "tabular": calibration}, "domain": reference.metadata()}
    path = write_package(str(models_dir), "trusted", model_keras=keras_model_bytes(model),
                         tabular_keras=keras_model_bytes(model), metadata=metadata,
                         extra_files={REFERENCE_FILE: reference.reference_bytes()})
    return path, model, reference


@pytest.mark.slow  # two scoring runs and a simulated lake: 1-3 minutes on the shared machine
def test_a_scored_night_carries_calibration_domain_priors_and_provenance(spark, scored_lake, tmp_path):
    from skyclass.package import code_version
    from skyclass.priors import em_priors, reweight
    from skyclass.score import score_catalog
    from test_score import hand_features

    catalog = spark.read.parquet(os.path.join(scored_lake, "photometric")).toPandas().set_index("objid")
    package_path, model, reference = _trusted_package(tmp_path / "models", catalog)
    base = [f"lake.root={scored_lake}", f"lake.predictions={tmp_path / 'predictions'}", f"score.model={package_path}",
            "score.batch_rows=64"]
    before = datetime.now(timezone.utc)
    score_catalog(spark, load_config(None, base + ["score.run_date=2024-03-01",
                                                  "score.class_priors={GALAXY: 0.6, STAR: 0.2, QSO: 0.2}"]))
    after = datetime.now(timezone.utc)
    night = os.path.join(tmp_path, "predictions", "run_date=2024-03-01")
    rows = spark.read.parquet(night).toPandas().set_index("objid").loc[catalog.index]

    # Independently: the model's raw output, divided in log space by T = 2, then Bayes from (.5, .3, .2) to (.6, .2, .2).
    x = hand_features(catalog)
    raw = model.predict({"features": x}, verbose=0).astype(np.float64)
    tempered = np.exp(np.log(np.clip(raw, 1e-7, 1)) / 2)
    tempered /= tempered.sum(axis=1, keepdims=True)
    expected = reweight(tempered, (0.5, 0.3, 0.2), (0.6, 0.2, 0.2))
    np.testing.assert_allclose(rows[["p_galaxy", "p_star", "p_qso"]].to_numpy(), expected, atol=2e-5)

    # Domain: brute-force k-th neighbour distances and the stored magnitude coverage, computed here.
    inside = np.ones(len(catalog), bool)
    for band, lo, hi in zip(BANDS, reference.magnitude_low, reference.magnitude_high):
        inside &= (catalog[band] >= lo).to_numpy() & (catalog[band] <= hi).to_numpy()
    score = brute_kth(x, reference.reference, 3) / reference.threshold
    expected_domain = np.where(~inside, OUTSIDE_MAGNITUDES, np.where(score > 1, FAR_FROM_TRAINING, "in"))
    assert rows["domain"].tolist() == expected_domain.tolist()
    np.testing.assert_allclose(rows["domain_score"].to_numpy(), score, rtol=1e-3)
    assert {"in", OUTSIDE_MAGNITUDES}.issubset(set(rows["domain"]))

    # Provenance on every row, and beside the night.
    assert (rows["skyclass_version"] == code_version()).all()
    assert (rows["data_release"] == "dr17").all()  # the release of the default skyserver.url
    stamps = pd.to_datetime(rows["scored_at"], utc=True)
    assert stamps.nunique() == 1 and before <= stamps.iloc[0].to_pydatetime() <= after
    provenance = json.loads(open(os.path.join(night, "_provenance.json"), encoding="utf-8").read())
    assert provenance["inputs"]["model_package"]["path"] == package_path
    assert provenance["inputs"]["catalog"]["provenance"]["simulated"] is True
    assert provenance["class_priors"]["applied"] == pytest.approx({"GALAXY": 0.6, "STAR": 0.2, "QSO": 0.2})
    assert provenance["config"]["score"]["run_date"] == "2024-03-01"

    # estimate: the EM estimate over the night's in-domain rows with usable photometry, recorded and applied.
    score_catalog(spark, load_config(None, base + ["score.run_date=2024-03-02", "score.class_priors=estimate",
                                                  "score.rescore=true"]))
    night = os.path.join(tmp_path, "predictions", "run_date=2024-03-02")
    estimated = spark.read.parquet(night).toPandas().set_index("objid").loc[catalog.index]
    usable = (expected_domain == "in") & (catalog[list(BANDS)] > 0).all(axis=1).to_numpy()
    em, _ = em_priors(tempered[usable], (0.5, 0.3, 0.2))
    recorded = json.loads(open(os.path.join(night, "_provenance.json"), encoding="utf-8").read())
    estimate = recorded["class_priors"]["estimate"]
    assert estimate["rows"] == int(usable.sum()) and estimate["converged"]
    assert [estimate["priors"][c] for c in CLASSES] == pytest.approx(list(em), abs=1e-4)
    np.testing.assert_allclose(estimated[["p_galaxy", "p_star", "p_qso"]].to_numpy(),
                               reweight(tempered, (0.5, 0.3, 0.2), em), atol=1e-4)
    assert (estimated["predicted_class"].to_numpy()
            == np.asarray(CLASSES)[reweight(tempered, (0.5, 0.3, 0.2), em).argmax(axis=1)]).all()


def test_demo_counts_classes_over_all_and_in_domain_objects(spark, tmp_path):
    from skyclass.demo import domain_class_counts, format_domain_counts

    rows = pd.DataFrame({"objid": np.arange(7, dtype=np.int64),
                         "predicted_class": ["QSO", "QSO", "QSO", "STAR", "GALAXY", "GALAXY", None],
                         "domain": ["in", OUTSIDE_MAGNITUDES, OUTSIDE_MAGNITUDES, "in", FAR_FROM_TRAINING, "in",
                                    None]})
    for column in lake.PREDICTIONS.names:
        if column not in rows:
            rows[column] = "x" if column in ("model_version", "status") else None
    path = tmp_path / "run_date=2024-01-01"
    spark.createDataFrame(rows[lake.PREDICTIONS.names], schema=lake.PREDICTIONS.spark_schema()).write.parquet(
        str(path))
    counts = domain_class_counts(spark, str(path))
    assert counts == {"all": {"QSO": 3, "STAR": 1, "GALAXY": 2, "none": 1},
                      "in_domain": {"QSO": 1, "STAR": 1, "GALAXY": 1, "none": 0}}
    text = format_domain_counts(counts)
    assert "3 of 7 objects" in text and "QSO     all       3" in text
