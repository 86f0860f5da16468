"""Evaluation figures: confusion matrix, training curves, per-class F1 bars, one-vs-rest ROC curves, accuracy by
magnitude.

Figures are built on :class:`matplotlib.figure.Figure` with an explicit Agg canvas, never through
``matplotlib.pyplot``: pyplot keeps global figure state and picks a GUI backend, neither of which is wanted in a
Spark driver or a test run. Such figures are not registered anywhere, so there is nothing to close; they are
freed when the function returns.

Every function takes ``simulated``: when the cutouts came from the stand-in renderer rather than real SDSS images,
the figure carries :data:`SIMULATED_LABEL` in a red box so it cannot be mistaken for a real result.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from skyclass.metrics import roc_auc, roc_curve, wilson_interval

__all__ = [
    "SIMULATED_LABEL",
    "plot_confusion_matrix",
    "plot_training_curves",
    "plot_per_class_f1",
    "plot_roc_curves",
    "plot_accuracy_by_magnitude",
    "plot_reliability",
]

logger = logging.getLogger(__name__)

SIMULATED_LABEL = "SIMULATED data (stand-in or skyclass simulate) — not a result on real SDSS data"
# A pure red that none of the data colours below use, so the banner stands out (and tests can find it).
SIMULATED_LABEL_COLOR = "#cc0000"
DPI = 110
# Keras/Horovod histories may carry the learning-rate schedule; it is not a training curve.
_LEARNING_RATE_KEYS = frozenset({"lr", "learning_rate"})


def _new_figure(width_in: float, height_in: float) -> Figure:
    figure = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(figure)
    return figure


def _finish(figure: Figure, path, *, title: str, simulated: bool) -> Path:
    """Add title and (if simulated) the warning banner, lay out, and write a PNG, creating parent dirs."""
    # Wrap long titles (model names, versions, the SIMULATED tag) to the figure's width instead of clipping them.
    chars_per_line = max(30, int(figure.get_figwidth() * 9))
    figure.suptitle(textwrap.fill(title, chars_per_line), fontsize=12, fontweight="bold")
    bottom = 0.0
    if simulated:
        banner = figure.text(
            0.5, 0.01, SIMULATED_LABEL, ha="center", va="bottom", fontsize=9, fontweight="bold", color="white",
            bbox={"boxstyle": "round,pad=0.4", "facecolor": SIMULATED_LABEL_COLOR, "edgecolor": SIMULATED_LABEL_COLOR},
        )
        # Reserve the banner's height (plus padding) below the axes so tight_layout does not draw over it.
        renderer = figure.canvas.get_renderer()
        banner_height = banner.get_window_extent(renderer).height / (figure.get_figheight() * figure.dpi)
        bottom = 0.01 + banner_height + 0.03
    figure.tight_layout(rect=(0.0, bottom, 1.0, 1.0))
    out_path = Path(path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=DPI, format="png")
    logger.info("wrote figure %s", out_path)
    return out_path


def plot_confusion_matrix(cm, class_names: Sequence[str], path, *, title: str, normalize: bool = True,
                          simulated: bool = False) -> Path:
    """Heat map of a confusion matrix, each cell annotated with its count and row percentage.

    Parameters
    ----------
    cm : array-like of int, shape (k, k)
        Rows are true classes, columns predicted classes.
    class_names : sequence of str
        ``k`` names in class-index order.
    path : str or os.PathLike
        Output PNG; parent directories are created.
    title : str
    normalize : bool
        Colour by the fraction of each true class (row-normalised, i.e. recall on the diagonal) rather than by
        raw count. The annotations always show both.
    simulated : bool
        Add the simulated-data banner.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ValueError
        If ``cm`` is not square, does not match ``class_names``, or holds negative counts.
    """
    matrix = np.asarray(cm, dtype=np.float64)
    names = [str(name) for name in class_names]
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(names):
        raise ValueError(
            f"confusion matrix must be {len(names)}x{len(names)} to match class_names {names}, got shape {matrix.shape}"
        )
    if np.any(matrix < 0) or not np.all(np.isfinite(matrix)):
        raise ValueError("confusion matrix must hold non-negative finite counts")
    row_totals = matrix.sum(axis=1, keepdims=True)
    # An absent true class has an all-zero row; show 0 % rather than dividing by zero.
    row_fraction = np.divide(matrix, row_totals, out=np.zeros_like(matrix), where=row_totals != 0)
    shown = row_fraction if normalize else matrix

    k = len(names)
    size_in = max(5.5, 1.2 * k + 3.0)
    figure = _new_figure(size_in + 1.0, size_in)
    axes = figure.add_subplot()
    vmax = 1.0 if normalize else max(float(matrix.max()), 1.0)
    image = axes.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax)
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of true class" if normalize else "count")
    for i in range(k):
        for j in range(k):
            # Dark cells need light text to stay readable.
            color = "white" if shown[i, j] > 0.5 * vmax else "black"
            axes.text(j, i, f"{int(round(matrix[i, j])):,}\n({100.0 * row_fraction[i, j]:.1f}%)",
                      ha="center", va="center", color=color, fontsize=10)
    axes.set_xticks(range(k), labels=names)
    axes.set_yticks(range(k), labels=names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    return _finish(figure, path, title=title, simulated=simulated)


def plot_training_curves(history: Mapping[str, Sequence[float]], path, *, title: str,
                         simulated: bool = False) -> Path:
    """Per-epoch training curves: a loss panel and a metrics panel, validation dashed.

    Parameters
    ----------
    history : mapping of str to sequence of float
        Like Keras's ``History.history``: ``loss``, ``val_loss``, ``accuracy``, ``val_accuracy`` or any other
        metric, one value per epoch. Keys containing ``loss`` go to the loss panel, the rest to the metrics
        panel; ``lr``/``learning_rate`` are ignored. A panel with no keys is left out.
    path : str or os.PathLike
    title : str
    simulated : bool

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        If ``history`` has no curves, or a curve is empty, not 1-D, or non-numeric.
    """
    curves: dict[str, np.ndarray] = {}
    for key, values in history.items():
        if key in _LEARNING_RATE_KEYS:
            continue
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"history[{key!r}] must be a sequence of numbers, one per epoch") from error
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"history[{key!r}] must be a non-empty 1-D sequence, got shape {array.shape}")
        curves[key] = array
    if not curves:
        raise ValueError(
            f"history has no curves to plot (keys: {sorted(history)}); pass e.g. the Keras History.history dict"
        )

    loss_keys = [key for key in curves if "loss" in key]
    metric_keys = [key for key in curves if "loss" not in key]
    panels = [(keys, ylabel) for keys, ylabel in ((loss_keys, "loss"), (metric_keys, "metric")) if keys]
    figure = _new_figure(5.0 * len(panels) + 1.5, 4.5)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"]
    for panel_index, (keys, ylabel) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), panel_index + 1)
        # Pair "x" with "val_x" so both share a colour and differ only in line style.
        base_names = list(dict.fromkeys(key.removeprefix("val_") for key in keys))
        for color_index, base in enumerate(base_names):
            color = palette[color_index % len(palette)]
            for key, style, split in ((base, "-", "train"), (f"val_{base}", "--", "validation")):
                if key in curves:
                    epochs = np.arange(1, curves[key].size + 1)
                    axes.plot(epochs, curves[key], style, color=color, marker="o", markersize=3,
                              label=f"{base} ({split})")
        axes.set_xlabel("epoch")
        axes.set_ylabel(ylabel)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    return _finish(figure, path, title=title, simulated=simulated)


def plot_per_class_f1(results: Mapping[str, dict], path, *, title: str, simulated: bool = False) -> Path:
    """Grouped bar chart of per-class F1: one group per class, one bar per model.

    Parameters
    ----------
    results : mapping of str to dict
        Model name -> metrics dict from :mod:`skyclass.metrics` (needs ``per_class[name]["f1"]``). Classes are
        taken in the order of the first model's ``class_names`` (or ``per_class``).
    path : str or os.PathLike
    title : str
    simulated : bool

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        If ``results`` is empty or a model lacks the F1 of one of the classes.
    """
    if not results:
        raise ValueError("plot_per_class_f1 needs at least one model in results")
    first = next(iter(results.values()))
    class_names = list(first.get("class_names") or first.get("per_class", {}))
    if not class_names:
        raise ValueError("the first model's metrics have neither 'class_names' nor 'per_class'")
    f1 = np.zeros((len(results), len(class_names)))
    for model_index, (model_name, metrics) in enumerate(results.items()):
        for class_index, class_name in enumerate(class_names):
            try:
                f1[model_index, class_index] = float(metrics["per_class"][class_name]["f1"])
            except (KeyError, TypeError) as error:
                raise ValueError(
                    f"model {model_name!r} has no per_class[{class_name!r}]['f1']; all models must be evaluated on "
                    "the same classes"
                ) from error

    n_models, n_classes = f1.shape
    figure = _new_figure(min(11.0, max(7.0, 2.5 + n_classes * (0.35 * n_models + 0.6))), 4.8)
    axes = figure.add_subplot()
    group_width = 0.8
    bar_width = group_width / n_models
    centers = np.arange(n_classes)
    colors = ["#4c72b0", "#dd8452", "#55a868", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"]
    for model_index, model_name in enumerate(results):
        offsets = centers - group_width / 2 + (model_index + 0.5) * bar_width
        bars = axes.bar(offsets, f1[model_index], width=bar_width * 0.95, label=str(model_name),
                        color=colors[model_index % len(colors)])
        axes.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90 if n_models > 3 else 0, padding=2)
    axes.set_xticks(centers, labels=class_names)
    axes.set_ylim(0.0, 1.15)
    axes.set_ylabel("F1")
    axes.grid(True, axis="y", alpha=0.3)
    # Outside the axes: inside, it would hide the bars of the last class.
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="model")
    return _finish(figure, path, title=title, simulated=simulated)


def plot_roc_curves(y_true, proba, class_names: Sequence[str], path, *, title: str,
                    simulated: bool = False) -> Path:
    """One-vs-rest ROC curve per class, with its AUC in the legend.

    Parameters
    ----------
    y_true : array-like of int
        True class indices.
    proba : array-like of float, shape (n_samples, n_classes)
        Class scores in class-index order.
    class_names : sequence of str
    path : str or os.PathLike
    title : str
    simulated : bool

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        If shapes disagree or labels are outside ``[0, n_classes)``. A class absent from ``y_true`` (curve
        undefined) is listed in the legend as such instead of raising.
    """
    labels = np.asarray(y_true)
    scores = np.asarray(proba, dtype=np.float64)
    names = [str(name) for name in class_names]
    if labels.ndim != 1 or scores.shape != (labels.size, len(names)):
        raise ValueError(
            f"need y_true of shape (n,) and proba of shape (n, {len(names)}); got {labels.shape} and {scores.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(names) or np.any(labels != np.round(labels))):
        raise ValueError(f"y_true must hold class indices 0..{len(names) - 1}")

    figure = _new_figure(6.5, 6.0)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], ":", color="#999999", label="chance (AUC = 0.5)")
    for class_index, name in enumerate(names):
        is_class = labels == class_index
        if is_class.all() or not is_class.any():
            axes.plot([], [], " ", label=f"{name}: undefined (one-sided test set)")
            continue
        fpr, tpr, _ = roc_curve(is_class, scores[:, class_index])
        auc = roc_auc(is_class, scores[:, class_index])
        axes.plot(fpr, tpr, linewidth=1.8, label=f"{name} vs rest (AUC = {auc:.4f})")
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_aspect("equal")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize=9)
    return _finish(figure, path, title=title, simulated=simulated)


def magnitude_bin_label(low, high) -> str:
    """``"<15"``, ``"15–16"``, ``"≥22"`` for a bin with open (None) or closed ends."""
    if low is None:
        return f"<{high:g}"
    if high is None:
        return f"≥{low:g}"
    return f"{low:g}–{high:g}"


def plot_accuracy_by_magnitude(bins: Sequence[Mapping], path, *, title: str, band: str = "r",
                               simulated: bool = False) -> Path:
    """Accuracy per magnitude bin with 95% Wilson error bars, over the number of test objects per bin.

    Parameters
    ----------
    bins : sequence of mapping
        In magnitude order, each with ``min`` and ``max`` (None for an open end), ``n`` and ``accuracy``.
    path : str or os.PathLike
    title : str
    band : str
        Magnitude band, for the axis label.
    simulated : bool

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        If ``bins`` is empty.
    """
    if not bins:
        raise ValueError("plot_accuracy_by_magnitude needs at least one magnitude bin")
    labels = [magnitude_bin_label(b["min"], b["max"]) for b in bins]
    n = np.array([int(b["n"]) for b in bins], dtype=np.float64)
    accuracy = np.array([float(b["accuracy"]) for b in bins])
    low, high = wilson_interval(accuracy * n, n)
    low_error, high_error = np.clip(accuracy - low, 0.0, None), np.clip(high - accuracy, 0.0, None)
    x = np.arange(len(bins))

    figure = _new_figure(max(6.5, 0.8 * len(bins) + 2.5), 4.6)
    counts_axes = figure.add_subplot()
    counts_axes.bar(x, n, color="#d9d9d9", width=0.8, label="test objects")
    counts_axes.set_ylabel("test objects per bin", color="#7f7f7f")
    counts_axes.set_xticks(x, labels=labels)
    counts_axes.set_xlabel(f"{band} magnitude (modelMag)")
    accuracy_axes = counts_axes.twinx()
    # The accuracy is the point of the figure: its axis goes on the left, the counts' on the right.
    accuracy_axes.yaxis.tick_left()
    accuracy_axes.yaxis.set_label_position("left")
    counts_axes.yaxis.tick_right()
    counts_axes.yaxis.set_label_position("right")
    accuracy_axes.errorbar(x, accuracy, yerr=np.vstack([low_error, high_error]), color="#4c72b0", marker="o",
                           capsize=3, label="accuracy (95% interval)")
    low = float(np.min(low))
    accuracy_axes.set_ylim(max(0.0, min(low, 0.9) - 0.02), 1.0)
    accuracy_axes.set_ylabel("accuracy")
    accuracy_axes.grid(True, axis="y", alpha=0.3)
    accuracy_axes.legend(fontsize=8, loc="lower left")
    return _finish(figure, path, title=title, simulated=simulated)


def plot_reliability(before: Mapping[str, Sequence[Mapping]], after: Mapping[str, Sequence[Mapping]], path, *,
                     title: str, simulated: bool = False) -> Path:
    """Reliability diagrams, one panel per class: observed frequency of the class against the mean predicted
    probability per bin, before and after calibration, with the diagonal of perfect calibration.

    Parameters
    ----------
    before, after : mapping
        Class name → bins of :func:`skyclass.calibration.reliability_curve` (``mean_p``, ``frequency``, ``n``).
    path : str or os.PathLike
    title : str
    simulated : bool

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        No class to draw.
    """
    names = list(before)
    if not names:
        raise ValueError("plot_reliability needs at least one class")
    figure = _new_figure(4.2 * len(names), 4.4)
    for k, name in enumerate(names):
        axes = figure.add_subplot(1, len(names), k + 1)
        axes.plot([0, 1], [0, 1], color="#7f7f7f", linestyle=":", linewidth=1, label="perfect")
        for curves, colour, label in ((before, "#ff7f0e", "before"), (after, "#1f77b4", "after calibration")):
            bins = curves.get(name) or []
            if bins:
                axes.plot([b["mean_p"] for b in bins], [b["frequency"] for b in bins], marker="o", markersize=3,
                          color=colour, label=label)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel(f"mean predicted p({name})")
        if k == 0:
            axes.set_ylabel("observed frequency")
        axes.set_title(name)
        axes.legend(loc="upper left", fontsize=8)
    return _finish(figure, path, title=title, simulated=simulated)
