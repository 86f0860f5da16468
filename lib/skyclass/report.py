"""The evaluation report as Markdown: a pure rendering of the ``report.json`` document that
:func:`skyclass.evaluate.evaluate` writes, so the two can never disagree and the text can be tested without Spark.

The document (``report``) holds:

* ``title``, ``created_at``, ``headline`` (key of the headline result), ``class_names``, ``test_rows``,
  ``test_class_counts``;
* ``results``: a list of entries ``{"key", "kind": "network"|"baseline", "title", "feature_set", "mode" (networks),
  "version" (networks), "simulated": bool, "metrics": {...}}`` where ``metrics`` is a dict of
  :mod:`skyclass.metrics`;
* ``figures``: a list of ``{"file", "caption", "simulated"}`` (files relative to the report folder);
* ``sky_maps`` (optional): a list of ``{"file", "caption", "simulated"}``, sky maps of scored nights added by the
  nightly run (:func:`skyclass.skymap.attach_to_report`);
* ``notes``: a list of sentences printed under "Notes".
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

SIMULATED_BANNER = ("> **SIMULATED DATA.** Results, tables and figures marked *SIMULATED* were trained or evaluated "
                    "on simulated data, as the lake records it: cutouts rendered by the SkyServer stand-in or by "
                    "`skyclass simulate` (the cutouts' `source`), or a catalog made by `skyclass simulate`. They are "
                    "not results on real SDSS data: they test the machinery, not the science.")
CLASS_MIX_NOTE = ("The labelled objects were selected per class (SkyServer queries of the form `TOP N ... WHERE "
                  "class = 'X'`), so the class mix of every table and figure here is that selection's, not the "
                  "sky's; QSOs in particular are over-represented compared with a random spectroscopic sample.")
SUMMARY_COLUMNS = ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "f1_macro", "GALAXY_f1",
                   "STAR_f1", "QSO_f1", "roc_auc_ovr_macro")


def result_label(entry: Mapping) -> str:
    """Row name of a result in the tables: its title, with the feature set, and SIMULATED when it is."""
    label = f"{entry['title']} [{entry['feature_set']}]" if entry.get("feature_set") else entry["title"]
    return f"{label} (SIMULATED)" if entry.get("simulated") else label


def render_markdown(report: Mapping) -> str:
    """Render the evaluation report document as Markdown.

    Parameters
    ----------
    report : mapping
        The ``report.json`` document (see the module docstring).

    Returns
    -------
    str
        Markdown text ending in a newline.

    Raises
    ------
    KeyError
        The document lacks ``results`` or the headline result named by ``headline``.
    """
    results = list(report["results"])
    by_key = {entry["key"]: entry for entry in results}
    headline = by_key[report["headline"]]
    names = list(report.get("class_names") or headline["metrics"]["class_names"])
    any_simulated = any(entry.get("simulated") for entry in results)

    lines = [f"# {report.get('title', 'skyclass evaluation')}", ""]
    if any_simulated:
        lines += [SIMULATED_BANNER, ""]
    lines += [f"> {CLASS_MIX_NOTE}", ""]
    lines += [f"- created: {report.get('created_at', '?')}",
              f"- test split: {report.get('test_rows', headline['metrics']['n'])} objects "
              + _counts(report.get("test_class_counts")),
              f"- headline model: {result_label(headline)}", ""]

    lines += [f"## Headline: {result_label(headline)}", ""]
    lines += _headline_section(headline, names)
    lines += trust_section(headline.get("trust"), names)

    comparisons = report.get("comparisons") or []
    if comparisons:
        lines += ["## Our networks against the best classical baseline", "",
                  "The best MLlib baseline (by accuracy) of each feature set beside each of our networks on the same "
                  "feature set and the same test objects.", ""]
        for comparison in comparisons:
            rows = {result_label(by_key[k]): by_key[k]["metrics"] for k in comparison["keys"] if k in by_key}
            if rows:
                lines += [f"### {comparison['title']}", "", comparison_table(rows, _columns(rows)), ""]
                lines += _interval_table(rows, names)
                lines += _paired_lines(comparison, by_key)

    feature_sets = []
    for entry in results:
        if entry.get("feature_set") not in feature_sets:
            feature_sets.append(entry.get("feature_set"))
    for feature_set in feature_sets:
        in_set = [e for e in results if e.get("feature_set") == feature_set]
        networks = [e for e in in_set if e["kind"] == "network"]
        baselines = [e for e in in_set if e["kind"] == "baseline"]
        lines += [f"## Feature set `{feature_set}`", ""]
        if baselines:
            lines += ["### Classical baselines (Spark MLlib; the paper's Table 4)", ""]
            rows = {result_label(e): e["metrics"] for e in baselines}
            lines += [comparison_table(rows, _columns(rows)), ""]
        if networks:
            simulated = any(e.get("simulated") for e in networks)
            suffix = " — contains SIMULATED results" if simulated else ""
            lines += [f"### Networks (tabular, image, multimodal; the paper's Tables 5–8){suffix}", ""]
            rows = {result_label(e): e["metrics"] for e in networks}
            lines += [comparison_table(rows, _columns(rows)), ""]
            for entry in networks:
                extra = entry.get("rows_without_cutout")
                if entry.get("mode") in ("image", "multimodal") and extra:
                    lines.append(f"- {result_label(entry)}: {extra} test objects had no usable cutout and were "
                                 "scored by the package's tabular model, as `skyclass score` does.")
            lines.append("")

    lines += _figure_section("Figures", report.get("figures"))
    lines += _figure_section("Sky maps of scored nights", report.get("sky_maps"))

    notes = list(report.get("notes") or [])
    if notes:
        lines += ["## Notes", ""]
        lines += [f"- {note}" for note in notes]
    return "\n".join(lines).rstrip("\n") + "\n"


def _headline_section(entry: Mapping, names: Sequence[str]) -> list[str]:
    metrics = entry["metrics"]
    auc = metrics.get("roc_auc_ovr_macro")
    lines = [f"accuracy **{metrics['accuracy']:.4f}** · weighted precision {metrics['precision_weighted']:.4f} · "
             f"weighted recall {metrics['recall_weighted']:.4f} · weighted F1 {metrics['f1_weighted']:.4f} · "
             f"macro F1 {metrics['f1_macro']:.4f}"
             + (f" · one-vs-rest ROC AUC (macro) {auc:.4f}" if isinstance(auc, float) else ""), ""]
    lines += ["| class | precision | recall | F1 | ROC AUC (one-vs-rest) | support |", "|---|---:|---:|---:|---:|---:|"]
    for name in names:
        c = metrics["per_class"][name]
        auc_text = f"{c['roc_auc']:.4f}" if isinstance(c.get("roc_auc"), float) else "n/a"
        lines.append(f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {auc_text} | "
                     f"{c['support']} |")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted class):", ""]
    lines += ["| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for name, row in zip(names, metrics["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |")
    bins = entry.get("accuracy_by_r_mag") or []
    if bins:
        from skyclass.plots import magnitude_bin_label

        lines += ["", "Accuracy by r magnitude (95% intervals in the figure):", "",
                  "| r | test objects | accuracy |", "|---|---:|---:|"]
        lines += [f"| {magnitude_bin_label(b['min'], b['max'])} | {b['n']} | {b['accuracy']:.4f} |" for b in bins]
    return lines + [""]


def _interval_table(rows: Mapping[str, Mapping], names: Sequence[str]) -> list[str]:
    """95% bootstrap intervals beside each other: where they overlap, this test split cannot rank the models."""
    with_intervals = {label: m["ci95"] for label, m in rows.items() if m.get("ci95")}
    if not with_intervals:
        return []

    def cell(value: float, interval) -> str:
        return f"{value:.4f} ({interval[0]:.4f}–{interval[1]:.4f})"

    header = ["model", "accuracy", "macro F1", *(f"{name} F1" for name in names)]
    lines = ["95% intervals of each model on its own (bootstrap of the test objects); the paired test below compares "
             "two models on the same objects.", "", "| " + " | ".join(header) + " |",
             "|---|" + "---:|" * (len(header) - 1)]
    for label, ci in with_intervals.items():
        m = rows[label]
        cells = [cell(m["accuracy"], ci["accuracy"]), cell(m["f1_macro"], ci["f1_macro"])]
        cells += [cell(m["per_class"][name]["f1"], ci["per_class"][name]["f1"]) for name in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def _paired_lines(comparison: Mapping, by_key: Mapping[str, Mapping]) -> list[str]:
    """One line per network: where it and the best baseline disagree on who is right, and McNemar's p."""
    best = by_key.get(comparison["best_baseline"])
    lines = []
    for key, paired in (comparison.get("paired") or {}).items():
        if key not in by_key or best is None:
            continue
        verdict = ("a significant difference at the 5% level" if paired["p_value"] < 0.05
                   else "no significant difference at the 5% level")
        lines.append(f"- Paired on the same {paired['objects']} test objects: only {result_label(by_key[key])} right "
                     f"on {paired['only_first_right']}, only {result_label(best)} right on "
                     f"{paired['only_second_right']} (both right {paired['both_right']}, both wrong "
                     f"{paired['both_wrong']}); exact McNemar p = {paired['p_value']:.3g}: {verdict}.")
    return lines + [""] if lines else []


def _columns(rows: Mapping[str, Mapping]) -> list[str]:
    # AUC is left out when no model of the table has it, rather than a column of dashes.
    return [c for c in SUMMARY_COLUMNS if c != "roc_auc_ovr_macro"
            or any(m.get("roc_auc_ovr_macro") is not None for m in rows.values())]


def _figure_section(title: str, entries) -> list[str]:
    """Markdown of a report's figure entries (``file``, ``caption``, ``simulated``) under ``## title``."""
    if not entries:
        return []
    lines = [f"## {title}", ""]
    for entry in entries:
        caption = entry["caption"] + (" (SIMULATED)" if entry.get("simulated") else "")
        lines += [f"### {caption}", "", f"![{caption}]({entry['file']})", ""]
    return lines


def _counts(counts) -> str:
    if not counts:
        return ""
    return "(" + ", ".join(f"{name} {n}" for name, n in counts.items()) + ")"


def _column_value(metrics: Mapping, column: str):
    """Look up a table column: a top-level metric, or ``<CLASS>_<metric>`` from ``per_class``."""
    if column in metrics:
        return metrics[column]
    per_class = metrics.get("per_class", {})
    # Class names may contain underscores, so try every split point rather than the first.
    for split_at in range(len(column) - 1, 0, -1):
        if column[split_at] != "_":
            continue
        class_name, metric_name = column[:split_at], column[split_at + 1:]
        if class_name in per_class and metric_name in per_class[class_name]:
            return per_class[class_name][metric_name]
    raise KeyError(column)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(value)


def comparison_table(
    results: Mapping[str, dict],
    columns: Sequence[str] = ("accuracy", "f1_weighted", "f1_macro", "QSO_f1"),
    *,
    decimals: int = 4,
) -> str:
    """Markdown table comparing models, with the best value of each column in bold.

    Parameters
    ----------
    results : mapping of str to dict
        Model name -> metrics dict from :func:`skyclass.metrics.metrics_from_confusion`. Row
        order follows the mapping's order.
    columns : sequence of str
        Top-level metric keys, or ``<CLASS>_<metric>`` for a per-class value (``"QSO_f1"`` is
        ``per_class["QSO"]["f1"]``). All columns are treated as higher-is-better.
    decimals : int
        Digits after the decimal point. Values that tie at this precision are all bold.

    Returns
    -------
    str
        The table, ending in a newline. A metric a model lacks shows as ``—``; an undefined one (``None``) as
        ``n/a``.

    Raises
    ------
    ValueError
        If ``results`` or ``columns`` is empty.
    KeyError
        If a column exists in none of the models (most likely a typo).
    """
    if not results:
        raise ValueError("comparison_table needs at least one model in results")
    if not columns:
        raise ValueError("comparison_table needs at least one column")

    cells: dict[str, list] = {}
    for column in columns:
        values = []
        for model_metrics in results.values():
            try:
                values.append(_column_value(model_metrics, column))
            except KeyError:
                values.append(KeyError)
        if all(value is KeyError for value in values):
            raise KeyError(
                f"column {column!r} is in none of the results; use a top-level metric such as 'accuracy' or "
                "'<CLASS>_<metric>' such as 'QSO_f1'"
            )
        cells[column] = values

    def escape(text: str) -> str:
        return str(text).replace("|", "\\|")

    lines = [
        "| " + " | ".join(["model", *map(escape, columns)]) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|",
    ]
    rendered_columns = []
    for column in columns:
        values = cells[column]
        numeric = [round(float(v), decimals) for v in values if _is_number(v)]
        best = max(numeric) if numeric else None
        rendered = []
        for value in values:
            if value is KeyError:
                rendered.append("—")
            elif not _is_number(value):
                rendered.append("n/a")
            else:
                text = f"{float(value):.{decimals}f}"
                rendered.append(f"**{text}**" if round(float(value), decimals) == best else text)
        rendered_columns.append(rendered)
    for row_index, model_name in enumerate(results):
        row = [escape(model_name)] + [rendered[row_index] for rendered in rendered_columns]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
def _number(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and value == value else "n/a"


def trust_section(trust, names: Sequence[str]) -> list[str]:
    """Markdown of a result's ``trust`` entry (calibration, in-domain flags, prior shift); empty without one."""
    if not trust:
        return []
    before, after = trust["before"], trust["after"]
    calibration = trust.get("calibration") or {}
    lines = ["### Calibration (test split)", "",
             f"Fitted on the validation split: {calibration.get('method', 'none')} scaling"
             + (f", T = {calibration['temperature']:.4f}" if calibration.get("method") == "temperature" else "")
             + ". ECE over 15 equal-width bins of the top probability; Brier score summed over classes.", "",
             "| | ECE | Brier | log-loss | accuracy |", "|---|---:|---:|---:|---:|"]
    for name, m in (("before calibration", before), ("after calibration", after)):
        lines.append(f"| {name} | {_number(m['ece'])} | {_number(m['brier'])} | {_number(m['log_loss'])} | "
                     f"{_number(m['accuracy'])} |")
    lines += ["", "Objects predicted as each class with p above 0.9 / 0.99 (share of that class's predictions, "
              "precision of those), after calibration:", "",
              "| class | predicted | p>0.9 share | p>0.9 precision | p>0.99 share | p>0.99 precision |",
              "|---|---:|---:|---:|---:|---:|"]
    for name in names:
        row = after["confidence"].get(name) or {}
        a, b = row.get("p>0.9") or {}, row.get("p>0.99") or {}
        lines.append(f"| {name} | {row.get('predicted', 0)} | {_number(a.get('share'), 3)} | "
                     f"{_number(a.get('precision'), 4)} | {_number(b.get('share'), 3)} | "
                     f"{_number(b.get('precision'), 4)} |")
    domain = trust.get("domain")
    if domain:
        settings = trust.get("domain_settings") or {}
        lines += ["", "### In-domain flags", "",
                  f"`domain = in`: every magnitude inside the training split's "
                  f"{settings.get('magnitude_quantiles', '?')} quantiles and the {settings.get('k', '?')}-th "
                  f"nearest training neighbour closer than the {settings.get('quantile', '?')} quantile of training "
                  "objects' own distances.", "",
                  "| slice | objects | kept in domain | accuracy in | accuracy out | outside magnitudes | "
                  "far from training |", "|---|---:|---:|---:|---:|---:|---:|"]
        for label, d in (("whole test split", domain["all"]), (f"r > {domain['faint'].get('r_min', 20):g}",
                                                               domain["faint"])):
            lines.append(f"| {label} | {d['rows']} | {_number(d['in_share'], 3)} | {_number(d['in_accuracy'])} | "
                         f"{_number(d['out_accuracy'])} | {d['reasons'].get('outside_magnitudes', 0)} | "
                         f"{d['reasons'].get('far_from_training', 0)} |")
    priors = trust.get("priors")
    if priors:
        mix = ", ".join(f"{k} {v:.2f}" for k, v in priors["mix"].items())
        estimate = ", ".join(f"{k} {v:.3f}" for k, v in priors["estimate"].items())
        lines += ["", "### Class priors", "",
                  f"The test split resampled to {mix} ({priors['rows']} objects); the calibrated probabilities "
                  f"assume the validation mix. EM estimate of the resampled mix (Saerens et al. 2002): {estimate} "
                  f"({priors['em_iterations']} iterations).", "",
                  "| probabilities | accuracy | log-loss | Brier |", "|---|---:|---:|---:|"]
        for label, key in (("as calibrated (validation mix)", "unweighted"), ("re-weighted to the true mix",
                                                                                "true_mix"),
                           ("re-weighted to the EM estimate", "estimated")):
            m = priors[key]
            lines.append(f"| {label} | {_number(m['accuracy'])} | {_number(m['log_loss'])} | "
                         f"{_number(m['brier'])} |")
    return lines + [""]
