"""The evaluation stage: report rendering, the choice of comparisons, routing of rows without cutouts, and
evaluate() end to end on a tiny lake with two tiny model packages."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from metrics_reference import classification_metrics
from PIL import Image
from skyclass.config import CLASSES
from skyclass.evaluate import EvaluationError, best_baseline_comparisons, evaluate, predict_proba
from skyclass.features import PHOTOMETRIC_FEATURES, feature_names
from skyclass.lake import SPLITS, training_split_path
from skyclass.metrics import metrics_from_confusion
from skyclass.report import SIMULATED_BANNER, render_markdown
from test_baselines import make_training_frame, to_spark

BANNER_RGB = (0xCC, 0x00, 0x00)  # plots.SIMULATED_LABEL_COLOR


def _entry(key, kind, feature_set, cm, simulated=False, title=None):
    return {"key": key, "kind": kind, "title": title or key, "feature_set": feature_set, "simulated": simulated,
            "mode": key.split("-")[0] if kind == "network" else None,
            "metrics": metrics_from_confusion(np.array(cm), CLASSES)}


def _report(results):
    return {"title": "t", "headline": results[0]["key"], "class_names": list(CLASSES), "test_rows": 10,
            "results": results, "comparisons": best_baseline_comparisons(results), "figures": [], "notes": []}


def test_best_baseline_is_the_most_accurate_per_feature_set_and_only_where_networks_exist():
    results = [
        _entry("tabular-photometric", "network", "photometric", [[5, 0, 0], [0, 4, 1], [0, 0, 5]]),
        _entry("gbt-photometric", "baseline", "photometric", [[5, 0, 0], [1, 3, 1], [0, 0, 5]]),       # 13/15
        _entry("random_forest-photometric", "baseline", "photometric", [[5, 0, 0], [0, 4, 1], [0, 0, 5]]),  # 14/15
        _entry("gbt-paper", "baseline", "paper", [[5, 0, 0], [0, 5, 0], [0, 0, 5]]),  # no network on paper
    ]
    comparisons = best_baseline_comparisons(results)
    assert comparisons == [{"feature_set": "photometric", "best_baseline": "random_forest-photometric",
                            "keys": ["tabular-photometric", "random_forest-photometric"],
                            "title": "Feature set `photometric`: networks vs random_forest-photometric"}]


def test_markdown_labels_simulated_results_and_says_the_class_mix_is_not_the_skys():
    cm = [[8, 1, 1], [0, 9, 1], [1, 0, 9]]
    real = [_entry("tabular-photometric", "network", "photometric", cm, title="Tabular network"),
            _entry("gbt-photometric", "baseline", "photometric", cm, title="GBT")]
    text = render_markdown(_report(real))
    assert SIMULATED_BANNER not in text and "SIMULATED" not in text
    assert "not the sky's" in text
    # Headline confusion matrix, row by row as given.
    assert "| GALAXY | 8 | 1 | 1 |" in text and "| QSO | 1 | 0 | 9 |" in text
    # Accuracy 26/30, QSO recall 9/10 and precision 9/11.
    assert "accuracy **0.8667**" in text
    assert f"| QSO | {9 / 11:.4f} | 0.9000 |" in text
    real[0]["accuracy_by_r_mag"] = [{"min": None, "max": 18.0, "n": 20, "accuracy": 0.95},
                                    {"min": 18.0, "max": None, "n": 10, "accuracy": 0.7}]
    text = render_markdown(_report(real))
    assert "| <18 | 20 | 0.9500 |" in text and "| ≥18 | 10 | 0.7000 |" in text
    # The comparison shows each model's interval around its accuracy (26/30 = 0.8667).
    ci = real[0]["metrics"]["ci95"]["accuracy"]
    assert f"| Tabular network [photometric] | 0.8667 ({ci[0]:.4f}–{ci[1]:.4f}) |" in text
    assert ci[0] < 26 / 30 < ci[1]
    report = _report(real)
    report["comparisons"][0]["paired"] = {"tabular-photometric": {
        "objects": 30, "both_right": 24, "only_first_right": 2, "only_second_right": 2, "both_wrong": 2,
        "p_value": 1.0}}
    text = render_markdown(report)
    assert ("Paired on the same 30 test objects: only Tabular network [photometric] right on 2, only GBT "
            "[photometric] right on 2") in text
    assert "exact McNemar p = 1: no significant difference at the 5% level." in text

    with_image = real + [_entry("multimodal-photometric", "network", "photometric", cm, simulated=True,
                                title="Multimodal network")]
    text = render_markdown(_report(with_image))
    assert text.count(SIMULATED_BANNER) == 1
    assert "| Multimodal network [photometric] (SIMULATED) |" in text
    assert "| Tabular network [photometric] |" in text  # real results stay unlabelled


def test_accuracy_by_magnitude_bins_hand_counted(spark):
    from skyclass.evaluate import accuracy_by_magnitude

    rows = [(0, 0, 14.2), (1, 1, 14.9),           # r < 15: 2 of 2 right
            (2, 2, 15.0), (2, 0, 15.5), (1, 1, 15.99),  # 15-16: 2 of 3 (15.0 belongs to this bin)
            (0, 1, 22.0), (0, 2, 23.4),           # >= 22: 0 of 2
            (1, 1, None), (2, 2, float("nan"))]   # no r: left out
    scored = spark.createDataFrame(rows, "label int, prediction int, r double")
    assert accuracy_by_magnitude(scored, (15.0, 16.0, 22.0)) == [
        {"min": None, "max": 15.0, "n": 2, "accuracy": 1.0},
        {"min": 15.0, "max": 16.0, "n": 3, "accuracy": 2 / 3},
        {"min": 22.0, "max": None, "n": 2, "accuracy": 0.0}]


def test_paired_comparison_counts_agreements_object_by_object(spark, tmp_path):
    from skyclass.evaluate import paired_comparison

    # objid: label, first model's prediction, second model's prediction.
    table = {1: (0, 0, 0), 2: (1, 1, 0), 3: (2, 2, 1), 4: (2, 0, 2), 5: (1, 0, 0), 6: (0, 0, 0), 7: (1, 1, 1)}
    for index, name in ((1, "first"), (2, "second")):
        rows = [(objid, values[0], values[index]) for objid, values in table.items()]
        spark.createDataFrame(rows, "objid long, label int, prediction int").write.parquet(str(tmp_path / name))
    got = paired_comparison(spark, str(tmp_path / "first"), str(tmp_path / "second"))
    # Both right: 1, 6, 7; only the first: 2, 3; only the second: 4; neither: 5. p = 2 * (1 + 3) / 2^3 = 1.
    assert got == {"objects": 7, "both_right": 3, "only_first_right": 2, "only_second_right": 1, "both_wrong": 1,
                   "p_value": 1.0}


@pytest.fixture(scope="module")
def tiny_models():
    from skyclass.models import build_model

    tabular = build_model("tabular", n_features=len(PHOTOMETRIC_FEATURES), tabular_units=(4,))
    multimodal = build_model("multimodal", n_features=len(PHOTOMETRIC_FEATURES), image_size_px=64,
                             tabular_units=(4,), fusion_units=(4,), cnn_filters=(2, 2))
    return tabular, multimodal


class _Package:
    """The attributes of skyclass.package.ModelPackage that predict_proba reads."""

    def __init__(self, mode, features, normalisation):
        self.mode, self.features, self.normalisation = mode, tuple(features), normalisation
        self.image_size_px, self.classes = 64, CLASSES


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_rows_without_a_usable_cutout_are_scored_by_the_tabular_model(tiny_models):
    tabular, multimodal = tiny_models
    frame = make_training_frame(6, seed=4)
    frame["jpeg"] = [_jpeg(0), None, b"not a jpeg", _jpeg(1), b"", _jpeg(2)]
    normalisation = {f: {"mean": float(frame[f].mean()), "std": 2.0} for f in PHOTOMETRIC_FEATURES}
    package = _Package("multimodal", PHOTOMETRIC_FEATURES, normalisation)

    proba, cutout_used = predict_proba(package, multimodal, tabular, frame)

    np.testing.assert_array_equal(cutout_used, [True, False, False, True, False, True])
    x = np.stack([(frame[f].to_numpy() - normalisation[f]["mean"]) / 2.0 for f in PHOTOMETRIC_FEATURES], 1)
    expected_tabular = tabular.predict({"features": x.astype(np.float32)}, verbose=0)
    np.testing.assert_allclose(proba[~cutout_used], expected_tabular[~cutout_used], rtol=1e-5, atol=1e-6)
    images = np.stack([np.asarray(Image.open(io.BytesIO(frame["jpeg"][k])).convert("RGB"), np.float32) / 255
                       for k in (0, 3, 5)])
    expected_main = multimodal.predict({"features": x[cutout_used].astype(np.float32), "image": images}, verbose=0)
    np.testing.assert_allclose(proba[cutout_used], expected_main, rtol=1e-5, atol=1e-6)


def test_evaluate_without_a_training_table_says_to_build_it(spark, conf_for, tiny_models, tmp_path):
    from skyclass.package import PackageError

    conf = conf_for()
    with pytest.raises(PackageError, match="skyclass train"):
        evaluate(spark, conf)
    _write_package(conf, "v1", "tabular", "photometric", tiny_models[0], tiny_models[0], make_training_frame(50))
    with pytest.raises(EvaluationError, match="skyclass table"):
        evaluate(spark, conf)


def _write_table(spark, conf, frame):
    root = conf.lake.path("root")
    for split in SPLITS:
        part = frame[frame["split"] == split]
        to_spark(spark, part).coalesce(1).write.parquet(training_split_path(root, split))


def _write_stats(conf, frame, cutout_sources, catalog_simulated=False):
    """A stats.json for the table ``_write_table`` wrote, recording ``cutout_sources`` (as the table job does)."""
    train = frame[frame["split"] == "train"]
    stats = {"classes": list(CLASSES), "label_counts": {c: int((train["class"] == c).sum()) for c in CLASSES},
             "features": {f: {"mean": float(train[f].mean()), "std": float(train[f].std())}
                          for f in feature_names("paper")},
             "rows": {s: int((frame["split"] == s).sum()) for s in SPLITS}, "image_size_px": 64,
             "cutout_sources": cutout_sources, "catalog_simulated": catalog_simulated}
    with open(os.path.join(conf.lake.path("root"), "training", "stats.json"), "w", encoding="utf-8") as fh:
        json.dump(stats, fh)


def _write_package(conf, version, mode, feature_set, main_model, tabular_model, frame, history=None, **meta):
    from skyclass.package import keras_model_bytes, write_package

    features = list(feature_names(feature_set))
    train = frame[frame["split"] == "train"]
    normalisation = {f: {"mean": float(train[f].mean()), "std": float(train[f].std())} for f in features}
    metadata = {"mode": mode, "backbone": "small_cnn", "feature_set": feature_set, "features": features,
                "classes": list(CLASSES), "normalisation": normalisation, "image_size_px": 64,
                "config": conf.to_dict(), "history": history or {}, "tabular_history": history or {}, **meta}
    return write_package(conf.lake.path("models"), version, model_keras=keras_model_bytes(main_model),
                         tabular_keras=keras_model_bytes(tabular_model), metadata=metadata,
                         simulated=mode != "tabular")


def _banner_pixels(path) -> int:
    with Image.open(path) as image:
        assert image.format == "PNG"
        rgb = np.asarray(image.convert("RGB"))
    return int(np.all(rgb == BANNER_RGB, axis=-1).sum())


@pytest.mark.slow
def test_evaluate_end_to_end_on_a_tiny_lake(spark, conf_for, tmp_path):
    import tensorflow as tf
    from skyclass.models import build_model, compile_model

    conf = conf_for(evaluate={"baselines": ["naive_bayes", "logistic_regression"]})
    frame = make_training_frame(700, seed=5)
    has_cutout = np.random.default_rng(5).random(len(frame)) < 0.5
    frame["jpeg"] = [_jpeg(k) if has_cutout[k] else None for k in range(len(frame))]
    _write_table(spark, conf, frame)
    # The table says its cutouts were rendered by the stand-in: that, not a config flag, labels image results.
    _write_stats(conf, frame, {"standin-simulated": int(has_cutout.sum())})

    # Headline: a tabular network trained a little on the photometric features (the newest package).
    tf.keras.utils.set_random_seed(0)
    train = frame[frame["split"] == "train"]
    stats = {f: (train[f].mean(), train[f].std()) for f in PHOTOMETRIC_FEATURES}

    def x_of(part):
        return np.stack([(part[f].to_numpy() - stats[f][0]) / stats[f][1] for f in PHOTOMETRIC_FEATURES],
                        1).astype(np.float32)

    tabular = compile_model(build_model("tabular", n_features=9, tabular_units=(16,)), "adam")
    history = tabular.fit({"features": x_of(train)}, train["label"].to_numpy(), epochs=15, batch_size=32,
                          verbose=0, validation_split=0.1).history
    # Another (mode, feature set): an untrained multimodal package on the paper features, older version name.
    n_paper = len(feature_names("paper"))
    multimodal = build_model("multimodal", n_features=n_paper, tabular_units=(4,), fusion_units=(4,),
                             cnn_filters=(2, 2))
    paper_tabular = build_model("tabular", n_features=n_paper, tabular_units=(4,))
    other = _write_package(conf, "20240101-000000", "multimodal", "paper", multimodal, paper_tabular, frame, history)
    headline = _write_package(conf, "20240202-000000", "tabular", "photometric", tabular, tabular, frame, history)

    result = evaluate(spark, conf)

    assert result.path == os.path.join(conf.lake.path("reports"), "20240202-000000")
    with open(os.path.join(result.path, "report.json"), encoding="utf-8") as fh:
        report = json.load(fh)
    with open(os.path.join(result.path, "report.md"), encoding="utf-8") as fh:
        markdown = fh.read()
    by_key = {r["key"]: r for r in report["results"]}
    assert report["headline"] == "tabular-photometric" and by_key["tabular-photometric"]["package"] == headline
    assert by_key["multimodal-paper"]["package"] == other
    assert sorted(by_key) == sorted(["tabular-photometric", "multimodal-paper", "naive_bayes-photometric",
                                     "logistic_regression-photometric", "naive_bayes-paper",
                                     "logistic_regression-paper"])

    # The headline's metrics equal metrics of predictions made here, on the driver, from the collected test split.
    test = frame[frame["split"] == "test"]
    proba = tabular.predict({"features": x_of(test)}, verbose=0)
    expected = classification_metrics(test["label"].to_numpy(), proba.argmax(1), proba, CLASSES)
    got = by_key["tabular-photometric"]["metrics"]
    assert got["confusion_matrix"] == expected["confusion_matrix"]
    assert got["accuracy"] == pytest.approx(expected["accuracy"]) and got["accuracy"] > 0.9
    for cls in CLASSES:
        assert got["per_class"][cls]["roc_auc"] == pytest.approx(expected["per_class"][cls]["roc_auc"], abs=1e-6)
    assert report["test_rows"] == len(test) == got["n"]
    assert result.accuracy == got["accuracy"] and result.test_rows == len(test)
    # Per-object predictions of the network and of every baseline, and the paired comparison built from them.
    written = spark.read.parquet(os.path.join(result.path, by_key["tabular-photometric"]["predictions"])).toPandas()
    assert sorted(written["objid"]) == sorted(test["objid"])
    by_objid = written.set_index("objid").loc[test["objid"]]
    np.testing.assert_array_equal(by_objid["prediction"].to_numpy(), proba.argmax(1))
    comparison = report["comparisons"][0]
    paired = comparison["paired"]["tabular-photometric"]
    best_metrics = by_key[comparison["best_baseline"]]["metrics"]
    assert paired["objects"] == len(test)
    assert paired["only_first_right"] - paired["only_second_right"] == round(
        (got["accuracy"] - best_metrics["accuracy"]) * len(test))
    assert "exact McNemar p =" in markdown
    # Accuracy by r magnitude: every test object in exactly one bin, the bins' right answers adding up.
    bins = by_key["tabular-photometric"]["accuracy_by_r_mag"]
    assert sum(b["n"] for b in bins) == len(test)
    right = (proba.argmax(1) == test["label"].to_numpy()).sum()
    assert sum(round(b["n"] * b["accuracy"]) for b in bins) == right

    # Simulated labelling: the multimodal result, its figures and the Markdown; the tabular ones stay clean.
    assert report["simulated_results"] == ["multimodal-paper"] and result.simulated
    assert by_key["multimodal-paper"]["rows_without_cutout"] == int(test["jpeg"].isna().sum())
    assert markdown.count(SIMULATED_BANNER) == 1 and "(SIMULATED)" in markdown
    assert "not the sky's" in markdown
    figures = {f["file"]: f for f in report["figures"]}
    for name in ("confusion_tabular-photometric.png", "roc_tabular-photometric.png",
                 "curves_tabular-photometric.png", "accuracy_by_r_tabular-photometric.png",
                 "confusion_multimodal-paper.png", "roc_multimodal-paper.png",
                 "curves_multimodal-paper_tabular.png", "per_class_f1_photometric.png", "per_class_f1_paper.png"):
        assert name in figures, name
        assert f"]({name})" in markdown
    assert _banner_pixels(os.path.join(result.path, "confusion_multimodal-paper.png")) > 2000
    assert figures["confusion_multimodal-paper.png"]["simulated"]
    assert _banner_pixels(os.path.join(result.path, "confusion_tabular-photometric.png")) == 0
    assert _banner_pixels(os.path.join(result.path, "curves_multimodal-paper_tabular.png")) == 0
    assert [c["feature_set"] for c in report["comparisons"]] == ["photometric", "paper"]  # headline first
    best = report["comparisons"][1]["best_baseline"]
    assert best in ("naive_bayes-paper", "logistic_regression-paper")
    assert os.path.isfile(os.path.join(result.path, f"confusion_{best}.png"))
    assert "SIMULATED" in str(result)


@pytest.mark.parametrize("stats, mode, meta, expected", [
    ({"cutout_sources": {"skyserver": 10}}, "multimodal", {}, False),
    ({"cutout_sources": {"skyserver": 9, "standin-simulated": 1}}, "multimodal", {}, True),
    ({"cutout_sources": {"simulate": 5}}, "image", {}, True),
    ({"cutout_sources": {"simulate": 5}}, "tabular", {}, False),  # never looks at a cutout
    ({"cutout_sources": {"standin-simulated": 0, "skyserver": 3}}, "image", {}, False),  # a zero count is none
    ({"cutout_sources": {"unknown": 10}}, "multimodal", {}, False),  # cannot tell: a note says so, no label
    ({}, "multimodal", {}, False),  # a table from before sources were recorded
    ({"cutout_sources": {"skyserver": 10}}, "multimodal", {"simulated_images": True}, True),  # trained on them
    ({"cutout_sources": {"skyserver": 10}}, "tabular", {"simulated_images": True}, False),
    ({"cutout_sources": {"skyserver": 10}, "catalog_simulated": True}, "tabular", {}, True),  # baselines too
    ({"cutout_sources": {"skyserver": 10}}, "tabular", {"simulated_catalog": True}, True),
])
def test_a_result_is_simulated_when_its_data_say_so(stats, mode, meta, expected):
    from skyclass.evaluate import simulated_result

    assert simulated_result(stats, mode, meta) is expected


@pytest.mark.slow
def test_evaluate_labels_simulated_iff_a_simulated_source_is_present(spark, conf_for, tiny_models):
    conf = conf_for(evaluate={"baselines": ["naive_bayes"], "feature_sets": ["photometric"]})
    frame = make_training_frame(150, seed=7)
    frame["jpeg"] = [_jpeg(k) for k in range(len(frame))]
    _write_table(spark, conf, frame)
    tabular, multimodal = tiny_models
    _write_package(conf, "v1", "multimodal", "photometric", multimodal, tabular, frame)

    def run(sources):
        _write_stats(conf, frame, sources)
        result = evaluate(spark, conf)
        with open(os.path.join(result.path, "report.json"), encoding="utf-8") as fh:
            report = json.load(fh)
        with open(os.path.join(result.path, "report.md"), encoding="utf-8") as fh:
            return result, report, fh.read()

    result, report, markdown = run({"skyserver": len(frame)})
    assert not result.simulated and report["simulated_results"] == [] and "SIMULATED" not in markdown
    assert report["training_table"]["cutout_sources"] == {"skyserver": len(frame)}
    assert report["model_fingerprint"].startswith("sha256:")
    assert report["results"][0]["fingerprint"] == report["model_fingerprint"]

    result, report, markdown = run({"skyserver": len(frame) - 1, "standin-simulated": 1})
    assert result.simulated and report["simulated_results"] == ["multimodal-photometric"]
    assert markdown.count(SIMULATED_BANNER) == 1 and "(SIMULATED)" in markdown

    result, report, markdown = run({"unknown": len(frame)})
    assert not result.simulated and SIMULATED_BANNER not in markdown and "(SIMULATED)" not in markdown
    assert any("unknown source" in note for note in report["notes"])
