"""``report.md``: a clinician-readable summary of a training run's evidence."""

from __future__ import annotations

from typing import Any


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _ci(ci: dict[str, list[float]], key: str) -> str:
    if key not in ci:
        return ""
    lo, hi = ci[key]
    return f" (95% CI {_pct(lo)} to {_pct(hi)})"


def confusion_table(confusion: list[list[int]], classes: list[str]) -> str:
    lines = ["| true \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for name, row in zip(classes, confusion):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def per_class_table(per_class: dict[str, dict[str, float]]) -> str:
    lines = ["| class | sensitivity | specificity | precision | F1 | images |", "|---|---|---|---|---|---|"]
    for name, m in per_class.items():
        lines.append(f"| {name} | {_pct(m['sensitivity'])} | {_pct(m['specificity'])} | {_pct(m['precision'])} | {_pct(m['f1'])} | {m['support']} |")
    return "\n".join(lines)


def render_report(title: str, metrics: dict[str, Any], model_meta: dict[str, Any]) -> str:
    """Markdown report from ``metrics.json`` content and ``model.json`` content."""
    g, p = metrics["global"], metrics["protocol"]
    classes = model_meta["classes"]
    ci = g.get("ci95", {})
    out = [f"# {title}", ""]
    if model_meta.get("warning"):
        out += [f"> **Warning: {model_meta['warning']}**", ""]
    if model_meta.get("data_summary", {}).get("synthetic"):
        out += ["> **Synthetic data**: these images are generated, not patients' blood smears.", ""]
    out += [
        "## What was measured",
        "",
        f"- Images: {model_meta['data_summary']['n_images']} in {len(classes)} classes ({', '.join(classes)}), "
        f"{model_meta['data_summary']['n_groups']} patient groups.",
        f"- Protocol: {p['description']}",
        "- Backbones (frozen): " + ", ".join(f"{b['name']} ({b['weights']})" for b in model_meta["backbones"])
        + f", input {model_meta['input_size']} px.",
        f"- Classifier: {metrics.get('classifier', 'fused head + XGBoost')}"
        + ("; the model in the bundle is refitted on all images." if metrics.get("folds") else "."),
        "",
        "## Headline results",
        "",
        f"- Accuracy: **{_pct(g['accuracy'])}**{_ci(ci, 'accuracy')}",
        f"- Balanced accuracy: {_pct(g['balanced_accuracy'])}{_ci(ci, 'balanced_accuracy')}",
        f"- Macro F1: {_pct(g['macro_f1'])}{_ci(ci, 'macro_f1')}",
        f"- ROC-AUC (one-vs-rest, macro): {_pct(g['auc_ovr'])}{_ci(ci, 'auc_ovr')}",
        f"- Cohen's kappa: {g['kappa']:.3f}" + (f"; expected calibration error: {g['ece']:.3f}" if "ece" in g else ""),
        "",
        "Sensitivity is the share of a class's images that the model recognised; specificity the share "
        "of other images it correctly did not assign to that class.",
        "",
        "## Per-class results",
        "",
        per_class_table(g["per_class"]),
        "",
        "## Confusion matrix (held-out predictions, counts of images)",
        "",
        confusion_table(g["confusion"], classes),
        "",
    ]
    if metrics.get("folds"):
        out += ["## Per-fold accuracy", "", "| fold | test images | XGBoost | head softmax |", "|---|---|---|---|"]
        for f in metrics["folds"]:
            out.append(f"| {f['fold'] + 1} | {f['n_test']} | {_pct(f['accuracy'])} | {_pct(f['head_softmax']['accuracy'])} |")
        out.append("")
    if metrics.get("sites"):
        out += ["## Results at each site (held-out test split)", "", "| site | test images | accuracy | balanced accuracy | macro F1 |", "|---|---|---|---|---|"]
        for site, m in metrics["sites"].items():
            out.append(f"| {site} | {m['n']} | {_pct(m['accuracy'])} | {_pct(m['balanced_accuracy'])} | {_pct(m['macro_f1'])} |")
        out.append("")
    if metrics.get("comparison"):
        out += ["## Classifier comparison on the same embeddings and folds", "", "| classifier | accuracy | macro F1 | AUC |", "|---|---|---|---|"]
        for name, m in metrics["comparison"].items():
            out.append(f"| {name} | {_pct(m['accuracy'])} | {_pct(m['macro_f1'])} | {_pct(m['auc_ovr'])} |")
        out.append("")
    out += [
        "## Limits",
        "",
        "- Images are grouped by runs of consecutive file numbers (a proxy for patient or slide); no patient IDs exist, "
        "so some leakage between neighbouring groups cannot be ruled out.",
        "- Intervals come from a bootstrap over patient groups of the out-of-fold predictions.",
        "- This model supports research; it is not a diagnostic device.",
        "",
    ]
    return "\n".join(out)
