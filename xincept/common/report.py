"""``report.md``: a clinician-readable summary of a training run's evidence."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def metric_text(m: dict[str, Any], key: str) -> str:
    """A metric as a percentage, or why it is missing (withheld by disclosure control, or undefined), never 0 or NaN."""
    value = m.get(key)
    if value is not None:
        return _pct(value)
    if key in (m.get("withheld") or {}):
        return "withheld"
    why = (m.get("undefined") or {}).get(key)
    return f"n/a ({why})" if why else "n/a"


def _missing_notes(m: dict[str, Any]) -> list[str]:
    """One line per headline metric that is missing, with its reason."""
    return [f"- {key.replace('_', ' ')}: {kind} ({why})" for kind in ("withheld", "undefined")
            for key, why in (m.get(kind) or {}).items()]


def _ci(ci: dict[str, list[float]], key: str) -> str:
    if key not in ci or ci[key][0] is None:
        return ""
    lo, hi = ci[key]
    return f" (95% CI {_pct(lo)} to {_pct(hi)})"


def confusion_table(confusion: list[list[int]], classes: list[str]) -> str:
    lines = ["| true \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for name, row in zip(classes, confusion):
        lines.append(f"| **{name}** | " + " | ".join("withheld" if v is None else str(v) for v in row) + " |")
    return "\n".join(lines)


def per_class_table(per_class: dict[str, dict[str, float]]) -> str:
    lines = ["| class | sensitivity | specificity | precision | F1 | images |", "|---|---|---|---|---|---|"]
    for name, m in per_class.items():
        cells = " | ".join(metric_text(m, k) for k in ("sensitivity", "specificity", "precision", "f1"))
        lines.append(f"| {name} | {cells} | {'withheld' if m['support'] is None else m['support']} |")
    return "\n".join(lines)


def cross_site_table(cross: dict[str, dict[str, Any]]) -> str:
    models = [k for k in ("global", "leave-one-site-out", "local-only") if any(k in v for v in cross.values())]
    lines = ["| site (data) | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for site, row in sorted(cross.items()):
        cells = [f"{_pct(row[k]['accuracy'])} (n={row[k]['n']})" if k in row else "n/a" for k in models]
        lines.append(f"| {site} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def federation_sections(metrics: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if metrics.get("cross_site"):
        out += ["## Generalisation across hospitals", "",
                "Accuracy on each site's held-out test split: the global model; the model trained without that site "
                "(leave-one-site-out, how the federation would serve a new hospital); and a model trained on that site's "
                "images alone (local-only: the value of joining). Local models never leave their site.", "",
                cross_site_table(metrics["cross_site"]), ""]
    if metrics.get("disclosure"):
        d = metrics["disclosure"]
        out += ["## What left each site", "",
                f"- Validation counts: {d['description']}; {d['withheld_cells']} cell(s) of the pooled test matrices were withheld. "
                "Every metric comes from released counts only: one whose inputs were withheld is shown as withheld, never "
                "computed as if they were zero (accuracy uses the exact totals, which are always released).",
                ("- Training (whole-model DP): a noisy feature sum and class counts once, a noisy clipped gradient sum per "
                 "step, and no count at join; nothing else. No image, feature, embedding, per-image label or prediction, "
                 "or file name." if metrics.get("whole_model_dp") else
                 "- Training: fused-head weights and per-feature sums; XGBoost: gradient histograms or trees. No image, "
                 "feature, embedding, per-image label or prediction, or file name."), ""]
        sa = metrics.get("secure_aggregation")
        if sa:
            out[-1:-1] = [f"- Secure aggregation: every head round's updates were summed so that the server saw only their "
                          f"sum (threshold {sa['threshold']} of the round's sites; {sa['rounds_with_dropouts']} round(s) "
                          "completed without a site that dropped out). Each site sent masked updates, never its own."]
    if metrics.get("whole_model_dp") and metrics.get("privacy"):
        out += whole_model_section(metrics)
    elif metrics.get("privacy"):
        out += ["## Differential privacy (DP-SGD at each site, unit: one image)", "",
                "| site | epsilon spent | delta | noise multiplier | clipping norm |", "|---|---|---|---|---|"]
        for site, p in sorted(metrics["privacy"].items()):
            out.append(f"| {site} | {p['epsilon']:.3f} | {p['delta']:g} | {p['noise_multiplier']:.3f} | {p['max_grad_norm']:g} |")
        out.append("")
        if metrics.get("privacy_scope"):
            out += [f"**What the epsilon covers.** {metrics['privacy_scope']}", ""]
    if metrics.get("lost_sites"):
        out += ["## Sites lost during the run", "",
                "The run went on without them (at least `--min-sites` sites remained); `metrics.json` → `rounds[].sites` "
                "lists who contributed to each head round.", ""]
        out += [f"- {s}: {why}" for s, why in sorted(metrics["lost_sites"].items())] + [""]
    if metrics.get("rejected_updates"):
        out += ["## Rejected updates", ""] + [f"- {s}: {'; '.join(r)}" for s, r in sorted(metrics["rejected_updates"].items())] + [""]
    return out


def whole_model_section(metrics: dict[str, Any]) -> list[str]:
    """Whole-model DP: one (epsilon, delta) per site over everything it released, and what those releases were."""
    wm = metrics["whole_model_dp"]
    privacy = metrics["privacy"]
    unit = next(iter(privacy.values()))["unit"]
    out = [f"## Differential privacy of the whole model (unit: one {unit})", "",
           f"Each site's epsilon below covers every release that left it in this run (the exact composition of its Gaussian "
           f"releases, the same accounting at the site, whose ledger refuses anything beyond its budget). Linear head, {wm['steps']} "
           f"full-batch gradient steps, noise multiplier {wm['noise_multiplier']:.2f} on clipping norm "
           f"{wm['config']['clip']:g}.", "",
           "| site | epsilon | delta | budget | gradient steps released |", "|---|---|---|---|---|"]
    for site, p in sorted(privacy.items()):
        steps = next((r["count"] for r in p["releases"] if r["kind"] == "gaussian" and "gradient" in r["what"]), 0)
        out.append(f"| {site} | {p['epsilon']:.3f} | {p['delta']:g} | {p['planned_epsilon']:g} | {steps} |")
    out += ["", "Releases of each site (the same at every site): "
            + "; ".join(f"{r['what']}: {r['kind']}, {'noise multiplier' if r['kind'] == 'gaussian' else 'epsilon'} "
                        f"{r['noise']:.3g}, {r['count']} time(s)" for r in next(iter(privacy.values()))["releases"]) + ".", ""]
    noise = metrics.get("global", {}).get("dp_noise")
    if noise and noise.get("accuracy_sd") is not None:
        out += [f"**Measured accuracy.** The federation measured its accuracy from each site's noisy numbers of correct "
                f"predictions and of images (noise of standard deviation {noise['per_count_sd_per_site']:.2g} on each): that "
                f"noise alone moves it by about {100 * noise['accuracy_sd']:.1f} points (one standard deviation), beside the "
                "sampling error of the interval above. No per-class figure left any site.", ""]
    if metrics.get("privacy_scope"):
        out += [f"**What the epsilon covers.** {metrics['privacy_scope']}", ""]
    return out


def plots_section(plots: dict[str, str]) -> list[str]:
    out = ["## Plots", ""] if plots else []
    for caption, name in plots.items():
        out += [f"### {caption}", "", f"![{caption}](plots/{name})", ""]
    return out


def render_html(markdown_text: str, folder: Path, title: str) -> str:
    """A self-contained HTML page: the report's Markdown with its PNG plots embedded."""
    import base64
    import re

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)  # raw HTML in text is escaped

    def embed(match: re.Match) -> str:
        path = folder / match.group(1)
        if not path.is_file():
            return match.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"'

    body = re.sub(r'src="(plots/[^"]+\.png)"', embed, body)
    style = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left}"
             "th{background:#f0f0f0}blockquote{border-left:4px solid #c00;margin:1em 0;padding:.2em 1em;background:#fff4f4}"
             "img{max-width:100%;border:1px solid #ddd}")
    import html

    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n{body}</body></html>\n")


def _backbone_line(b: dict[str, Any]) -> str:
    """``legacy_xception (weights: imagenet (keras), converted from F, sha256 abcd…)`` or ``inception_v3 (weights: random)``."""
    src = b.get("weights_source") or {}
    origin = (f", converted from {src['converted_from']}, sha256 {src['source_sha256'][:16]}…"
              if src.get("source_sha256") else "")
    return f"{b['name']} (weights: **{b['weights']}**{origin})"


def render_report(title: str, metrics: dict[str, Any], model_meta: dict[str, Any], plots: dict[str, str] | None = None) -> str:
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
        "- Backbones (frozen): " + ", ".join(_backbone_line(b) for b in model_meta["backbones"])
        + f", input {model_meta['input_size']} px.",
        f"- Classifier: {metrics.get('classifier', 'fused head + XGBoost')}"
        + ("; the model in the bundle is refitted on all images." if metrics.get("folds") else "."),
        "",
        "## Headline results",
        "",
        f"- Accuracy: **{metric_text(g, 'accuracy')}**{_ci(ci, 'accuracy')} over {g['n']} images",
        f"- Balanced accuracy: {metric_text(g, 'balanced_accuracy')}{_ci(ci, 'balanced_accuracy')}",
        f"- Macro F1: {metric_text(g, 'macro_f1')}{_ci(ci, 'macro_f1')}",
        f"- ROC-AUC (one-vs-rest, macro): {metric_text(g, 'auc_ovr')}{_ci(ci, 'auc_ovr')}",
        "- Cohen's kappa: " + ("withheld" if g.get("kappa") is None and "kappa" in (g.get("withheld") or {}) else
                              "n/a" if g.get("kappa") is None else f"{g['kappa']:.3f}")
        + (f"; expected calibration error: {g['ece']:.3f}" + (f" (over the {g['ece_over_images']} of {g['n']} images in "
                                                              "released reliability bins)"
                                                              if g.get("ece_over_images", g["n"]) < g["n"] else "")
           if g.get("ece") is not None else ""),
        "",
        *((["Missing figures and why:", "", *_missing_notes(g), ""]) if _missing_notes(g) else []),
        "Sensitivity is the share of a class's images that the model recognised; specificity the share "
        "of other images it correctly did not assign to that class.",
        "",
        "## Per-class results",
        "",
        per_class_table(g["per_class"]),
        "",
        *([f"_{g['withheld_cells']} cell(s) of the sites' matrices were withheld by disclosure control: the matrix below "
           "shows them as withheld, and a per-class figure that needs one is withheld too; accuracy above is exact._", ""]
          if g.get("withheld_cells") else []),
        "## Confusion matrix (held-out predictions, counts of images)",
        "",
        confusion_table(g["confusion"], classes),
        "",
    ]
    if metrics.get("folds"):
        out += ["## Per-fold accuracy", "", "| fold | test images | chosen classifier | accuracy | XGBoost | head softmax |",
                "|---|---|---|---|---|---|"]
        for f in metrics["folds"]:
            out.append(f"| {f['fold'] + 1} | {f['n_test']} | {f['classifier_chosen']} | {_pct(f['accuracy'])} | "
                       f"{_pct(f['xgboost']['accuracy'])} | {_pct(f['head_softmax']['accuracy'])} |")
        out.append("")
    if metrics.get("sites"):
        out += ["## Results at each site (held-out test split)", "",
                "| site | test images | accuracy | balanced accuracy | macro F1 | withheld cells |", "|---|---|---|---|---|---|"]
        for site, m in metrics["sites"].items():
            w = int(m.get("withheld_cells") or 0)
            out.append(f"| {site} | {m['n']} | {metric_text(m, 'accuracy')} | {metric_text(m, 'balanced_accuracy')} | "
                       f"{metric_text(m, 'macro_f1')} | {w} |")
        out += ["", "Accuracy uses each site's exact totals. Balanced accuracy and F1 need every class's released totals "
                "and correct counts: where disclosure control withheld one, they are shown as withheld.", ""]
    if metrics.get("comparison"):
        out += ["## Classifier comparison on the same embeddings and folds", "", "| classifier | accuracy | macro F1 | AUC |", "|---|---|---|---|"]
        for name, m in metrics["comparison"].items():
            out.append(f"| {name} | {metric_text(m, 'accuracy')} | {metric_text(m, 'macro_f1')} | {metric_text(m, 'auc_ovr')} |")
        out.append("")
    out += federation_sections(metrics)
    out += plots_section(plots or {})
    out += [
        "## Limits",
        "",
        "- Images are grouped by runs of consecutive file numbers (a proxy for patient or slide); no patient IDs exist, "
        "so some leakage between neighbouring groups cannot be ruled out.",
        ("- Intervals come from a bootstrap over patient groups of the out-of-fold predictions." if metrics.get("folds") else
         "- The accuracy interval is a Wilson interval over held-out images (images of one patient are not independent, "
         "so it is somewhat too narrow); per-site figures come from released counts only."),
        "- This model supports research; it is not a diagnostic device.",
        "",
    ]
    return "\n".join(out)


def write_reports(out: Path, title: str, metrics: dict[str, Any], model_meta: dict[str, Any]) -> None:
    """OUT/plots/*.png, OUT/report.md and the self-contained OUT/report.html (each written atomically)."""
    from xincept.common.atomic import write_text_atomic
    from xincept.common.plots import make_plots

    from xincept.common.marks import marks_for

    plots = make_plots(metrics, list(model_meta["classes"]), out / "plots", marks_for(model_meta))
    text = render_report(title, metrics, model_meta, plots)
    write_text_atomic(out / "report.md", text)
    write_text_atomic(out / "report.html", render_html(text, out, title))
