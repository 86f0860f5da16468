"""Tests for skyclass.plots: real PNGs are written, are not blank, and carry the simulated-data banner on request."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skyclass import plots
from metrics_reference import classification_metrics

CLASS_NAMES = ("GALAXY", "STAR", "QSO")
# The banner's fill colour, as RGB; no data colour in plots.py uses it.
BANNER_RGB = (0xCC, 0x00, 0x00)


@pytest.fixture(scope="module")
def scored_test_set():
    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 3, size=120)
    logits = rng.normal(size=(120, 3)) + 2.0 * np.eye(3)[y_true]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, proba


@pytest.fixture(scope="module")
def results(scored_test_set):
    y_true, proba = scored_test_set
    noisy = np.where(np.arange(y_true.size) % 4 == 0, (y_true + 1) % 3, y_true)
    return {
        "random_forest": classification_metrics(y_true, noisy),
        "multimodal": classification_metrics(y_true, proba.argmax(axis=1), proba),
    }


def _draw(kind, path, simulated, scored_test_set, results):
    y_true, proba = scored_test_set
    if kind == "confusion":
        cm = results["multimodal"]["confusion_matrix"]
        return plots.plot_confusion_matrix(cm, CLASS_NAMES, path, title="multimodal", simulated=simulated)
    if kind == "curves":
        history = {"loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.7, 0.6],
                   "accuracy": [0.6, 0.8, 0.9], "val_accuracy": [0.55, 0.75, 0.8]}
        return plots.plot_training_curves(history, path, title="training", simulated=simulated)
    if kind == "f1":
        return plots.plot_per_class_f1(results, path, title="per-class F1", simulated=simulated)
    if kind == "roc":
        return plots.plot_roc_curves(y_true, proba, CLASS_NAMES, path, title="ROC", simulated=simulated)
    if kind == "magnitude":
        bins = [{"min": None, "max": 16.0, "n": 800, "accuracy": 0.97}, {"min": 16.0, "max": 20.0, "n": 3000,
                                                                          "accuracy": 0.95},
                {"min": 20.0, "max": None, "n": 400, "accuracy": 0.8}]
        return plots.plot_accuracy_by_magnitude(bins, path, title="by magnitude", simulated=simulated)
    raise AssertionError(kind)


def _load_rgb(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def _banner_pixel_count(rgb):
    return int(np.all(rgb == BANNER_RGB, axis=-1).sum())


@pytest.mark.parametrize("kind", ["confusion", "curves", "f1", "roc", "magnitude"])
def test_plot_writes_valid_nonblank_png_and_simulated_banner_changes_it(kind, tmp_path, scored_test_set, results):
    plain_path = tmp_path / "new" / "dirs" / f"{kind}.png"  # parents do not exist yet
    simulated_path = tmp_path / f"{kind}_simulated.png"

    returned = _draw(kind, plain_path, False, scored_test_set, results)
    assert Path(returned) == plain_path and plain_path.is_file()
    with Image.open(plain_path) as image:
        image.verify()  # raises on a truncated or corrupt PNG
    plain = _load_rgb(plain_path)
    assert plain.shape[0] > 300 and plain.shape[1] > 300
    # Nonblank: a good share of pixels differ from the white background, in more than a couple of colours.
    assert (plain.min(axis=-1) < 200).mean() > 0.01
    assert len(np.unique(plain.reshape(-1, 3), axis=0)) > 50

    _draw(kind, simulated_path, True, scored_test_set, results)
    simulated = _load_rgb(simulated_path)
    assert plain.shape != simulated.shape or np.any(plain != simulated)
    # The banner is a visible red box: absent without the flag, a sizeable area with it.
    assert _banner_pixel_count(plain) == 0
    assert _banner_pixel_count(simulated) > 2000


def test_plotting_does_not_touch_pyplot_global_state(tmp_path):
    # Run in a fresh interpreter: pyplot may already be imported by other tests in this process.
    lib_dir = Path(__file__).resolve().parents[1] / "lib"
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(lib_dir)!r})\n"
        "import skyclass.plots as plots\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'import pulled in pyplot'\n"
        f"plots.plot_training_curves({{'loss': [1.0, 0.5]}}, {str(tmp_path / 'c.png')!r}, title='t')\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'plotting pulled in pyplot'\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "c.png").is_file()


def test_training_curves_accept_any_subset_and_ignore_learning_rate(tmp_path):
    only_val = plots.plot_training_curves({"val_accuracy": [0.5, 0.6, 0.7], "lr": [1e-3] * 3},
                                          tmp_path / "v.png", title="t")
    assert _load_rgb(only_val).shape[0] > 0
    with pytest.raises(ValueError, match="no curves"):
        plots.plot_training_curves({"lr": [1e-3]}, tmp_path / "x.png", title="t")
    with pytest.raises(ValueError, match="non-empty"):
        plots.plot_training_curves({"loss": []}, tmp_path / "x.png", title="t")


def test_confusion_matrix_plot_handles_empty_row_and_rejects_bad_shapes(tmp_path):
    # QSO absent from the test set: its row is all zero and must not divide by zero.
    path = plots.plot_confusion_matrix([[3, 1, 0], [0, 2, 0], [0, 0, 0]], CLASS_NAMES, tmp_path / "cm.png",
                                       title="t", normalize=False)
    assert path.is_file()
    with pytest.raises(ValueError, match="3x3"):
        plots.plot_confusion_matrix([[1, 0], [0, 1]], CLASS_NAMES, tmp_path / "bad.png", title="t")


def test_roc_plot_tolerates_absent_class_and_rejects_bad_shapes(tmp_path):
    y_true = np.array([0, 0, 1, 1])
    proba = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    assert plots.plot_roc_curves(y_true, proba, CLASS_NAMES, tmp_path / "roc.png", title="t").is_file()
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        plots.plot_roc_curves(y_true, proba[:, :2], CLASS_NAMES, tmp_path / "bad.png", title="t")


def test_per_class_f1_requires_same_classes(tmp_path, results):
    broken = {"a": results["multimodal"], "b": {"per_class": {"GALAXY": {"f1": 0.5}}}}
    with pytest.raises(ValueError, match="'b' has no per_class\\['STAR'\\]"):
        plots.plot_per_class_f1(broken, tmp_path / "f1.png", title="t")


def test_magnitude_bin_labels_show_open_ends():
    assert [plots.magnitude_bin_label(lo, hi) for lo, hi in [(None, 15.0), (15.0, 16.0), (22.0, None)]] == \
        ["<15", "15–16", "≥22"]
