"""PNG plots for the report, drawn from metrics.json content only (aggregate numbers, never images)."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _num(v: Any) -> float:
    """A metric for plotting: None (withheld or undefined) becomes NaN, which matplotlib leaves out."""
    return float("nan") if v is None else float(v)


def _figure(width: float = 6.4, height: float = 4.0):  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=110)


def _png(plt, fig) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def rounds_plot(rounds: list[dict[str, Any]], selected: int | list[int] | None) -> bytes:
    if len({x.get("member", 0) for x in rounds}) > 1:
        return members_rounds_plot(rounds, selected if isinstance(selected, list) else [])
    plt, fig = _figure(9, 3.6)
    r = [x["round"] for x in rounds]
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(r, [_num(x["val"]["global"]["accuracy"]) for x in rounds], "k-o", lw=2, ms=3, label="all sites")
    for site in sorted(rounds[0]["val"]["sites"]):
        ax1.plot(r, [_num(x["val"]["sites"].get(site, {}).get("accuracy")) for x in rounds], lw=1, alpha=0.8, label=site)
        ax2.plot(r, [x["train_loss"].get(site, np.nan) for x in rounds], lw=1, label=site)
    if selected:
        ax1.axvline(selected, color="grey", ls="--", lw=1, label=f"selected round {selected}")
    ax1.set(xlabel="round", ylabel="validation accuracy", title="Validation accuracy per round")
    ax2.set(xlabel="round", ylabel="local training loss", title="Training loss at each site")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    return _png(plt, fig)


def members_rounds_plot(rounds: list[dict[str, Any]], selected: list[int]) -> bytes:
    """Several heads (``head-members``): each head's pooled validation accuracy and mean site loss per round."""
    plt, fig = _figure(9, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    for m in sorted({x.get("member", 0) for x in rounds}):
        mine = [x for x in rounds if x.get("member", 0) == m]
        r = [x["round"] for x in mine]
        line, = ax1.plot(r, [_num(x["val"]["global"]["accuracy"]) for x in mine], lw=1.5, label=f"head {m + 1}")
        ax2.plot(r, [np.mean(list(x["train_loss"].values())) for x in mine], lw=1.5, color=line.get_color(), label=f"head {m + 1}")
        if m < len(selected):
            ax1.axvline(selected[m], color=line.get_color(), ls="--", lw=1)
    ax1.set(xlabel="round", ylabel="validation accuracy (all sites)", title="Validation accuracy per round (dashed: kept round)")
    ax2.set(xlabel="round", ylabel="mean local training loss", title="Training loss, mean over sites")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    return _png(plt, fig)


def confusion_plot(sites: dict[str, dict[str, Any]], classes: list[str], threshold: int) -> bytes:
    n = len(sites)
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    plt, fig = _figure(3.2 * cols, 3.0 * rows)
    for i, (site, m) in enumerate(sorted(sites.items())):
        ax = fig.add_subplot(rows, cols, i + 1)
        released = np.asarray(m.get("confusion_released", m["confusion"]))
        shown = np.where(released < 0, 0, released)
        ax.imshow(shown, cmap="Blues")
        for (a, b), v in np.ndenumerate(released):
            ax.text(b, a, f"<{threshold}" if v < 0 else str(v), ha="center", va="center", fontsize=8,
                    color="white" if v > shown.max() / 2 else "black")
        ax.set_xticks(range(len(classes)), classes, fontsize=7, rotation=45)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_title(f"{site} (n={m['n']})", fontsize=9)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    return _png(plt, fig)


def _roc_axes(ax, m: dict[str, Any], title: str) -> None:  # noqa: ANN001
    """Curves only from classes whose histogram bins were all released; the others are named with the reason."""
    for name, c in m["roc"].items():
        ax.plot(c["fpr"], c["tpr"], lw=1.5, label=f"{name} (AUC {c['auc']:.3f})")
    for name, why in (m.get("roc_missing") or {}).items():
        ax.plot([], [], " ", label=f"{name}: no curve ({why.split(' (')[0]})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02))
    withheld = m.get("roc_withheld_bins")
    ax.set_title(title + (f"\n{withheld} histogram bin(s) withheld (< min-cell-count): classes with one are not drawn"
                          if withheld else ""), fontsize=8)
    ax.legend(fontsize=6, loc="lower right")


def roc_plot(m: dict[str, Any], exact: bool = False) -> bytes:
    plt, fig = _figure(4.6, 4.2)
    _roc_axes(fig.gca(), m, "One-vs-rest ROC per class, out-of-fold predictions" if exact else
              "One-vs-rest ROC per class, all sites (10-bin score histograms\nreleased by the sites)")
    return _png(plt, fig)


def _reliability_axes(ax, m: dict[str, Any], title: str) -> None:  # noqa: ANN001
    rel = m["reliability"]
    bins = len(rel["count"])
    centres = (np.arange(bins) + 0.5) / bins
    acc = np.array([_num(a) for a in rel["accuracy"]])
    withheld = np.asarray(rel.get("withheld", [False] * bins), dtype=bool)
    shown = ~withheld & np.isfinite(acc)
    ax.bar(centres[shown], acc[shown], width=1 / bins, edgecolor="k", alpha=0.7, label="observed accuracy (released bins)")
    if withheld.any():  # marked on the axis, never drawn as a value
        ax.plot(centres[withheld], np.zeros(withheld.sum()), "x", color="grey", ms=6,
                label=f"{int(withheld.sum())} bin(s) withheld (< min-cell-count)")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfect calibration")
    ax.set(xlabel="confidence (top-class probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
    ece, over, n = m.get("ece"), m.get("ece_over_images"), m.get("n")
    ece_text = ("ECE withheld" if ece is None else f"ECE {ece:.3f}" + (f" over {over} of {n} images" if over is not None
                                                                        and n is not None and over < n else ""))
    ax.set_title(f"{title} ({ece_text})", fontsize=8)
    ax.legend(fontsize=6, loc="upper left")


def reliability_plot(m: dict[str, Any], title: str = "Reliability, all sites") -> bytes:
    plt, fig = _figure(4.6, 4.2)
    _reliability_axes(fig.gca(), m, title)
    return _png(plt, fig)


def _site_grid(sites: dict[str, dict[str, Any]], key: str, draw) -> bytes:  # noqa: ANN001
    """One panel per site that released ``key`` (ROC or reliability), drawn by ``draw(ax, metrics, title)``."""
    shown = {s: m for s, m in sorted(sites.items()) if key in m}  # a panel that shows what was withheld counts too
    if not shown:
        raise ValueError(f"no site released {key} counts")
    cols = min(len(shown), 4)
    rows = int(np.ceil(len(shown) / cols))
    plt, fig = _figure(3.4 * cols, 3.2 * rows)
    for i, (site, m) in enumerate(shown.items()):
        draw(fig.add_subplot(rows, cols, i + 1), m, f"{site} (n={m['n']})")
    return _png(plt, fig)


def roc_sites_plot(sites: dict[str, dict[str, Any]]) -> bytes:
    return _site_grid(sites, "roc", _roc_axes)


def reliability_sites_plot(sites: dict[str, dict[str, Any]]) -> bytes:
    return _site_grid(sites, "reliability", _reliability_axes)


def global_confusion_plot(m: dict[str, Any], classes: list[str]) -> bytes:
    cm = np.asarray(m["confusion"])
    plt, fig = _figure(4.4, 4.0)
    ax = fig.gca()
    ax.imshow(cm, cmap="Blues")
    for (a, b), v in np.ndenumerate(cm):
        ax.text(b, a, str(v), ha="center", va="center", fontsize=9, color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, fontsize=8, rotation=45)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix, out-of-fold (n={m['n']})")
    return _png(plt, fig)


def per_class_plot(m: dict[str, Any]) -> bytes:
    names = list(m["per_class"])
    x = np.arange(len(names))
    plt, fig = _figure(5.6, 3.6)
    ax = fig.gca()
    missing = False
    for i, key in enumerate(("sensitivity", "specificity", "precision", "f1")):
        vals = [_num(m["per_class"][n].get(key)) for n in names]
        ax.bar(x + (i - 1.5) * 0.2, vals, width=0.2, label=key)
        for j, v in enumerate(vals):
            if np.isnan(v):  # withheld or undefined: a mark, never a bar of 0
                missing = True
                ax.text(x[j] + (i - 1.5) * 0.2, 0.02, "–", ha="center", fontsize=9, color="grey")
    ax.set_xticks(x, names)
    ax.set(ylim=(0, 1.05), ylabel="score", title="Per-class sensitivity, specificity, precision and F1"
           + ("\n(–: withheld by disclosure control or undefined; see the report)" if missing else ""))
    ax.legend(fontsize=7, loc="lower right")
    return _png(plt, fig)


def folds_plot(folds: list[dict[str, Any]]) -> bytes:
    x = np.arange(len(folds))
    plt, fig = _figure(5.6, 3.4)
    ax = fig.gca()
    for i, (key, label) in enumerate(((None, "chosen classifier"), ("xgboost", "XGBoost"), ("head_softmax", "head softmax"))):
        vals = [f["accuracy"] if key is None else f.get(key, {}).get("accuracy", np.nan) for f in folds]
        ax.bar(x + (i - 1) * 0.27, vals, width=0.27, label=label)
    ax.set_xticks(x, [f"fold {f['fold'] + 1}" for f in folds])
    low = min(f["accuracy"] for f in folds)
    ax.set(ylim=(max(0.0, low - 0.15), 1.0), ylabel="test accuracy", title="Accuracy per cross-validation fold")
    ax.legend(fontsize=7, loc="lower right")
    return _png(plt, fig)


def cross_site_plot(cross: dict[str, dict[str, Any]]) -> bytes:
    sites = sorted(cross)
    models = [k for k in ("global", "leave-one-site-out", "local-only") if any(k in cross[s] for s in sites)]
    grid = np.array([[cross[s].get(k, {}).get("accuracy", np.nan) for k in models] for s in sites], dtype=float)
    plt, fig = _figure(1.8 * len(models) + 2, 0.5 * len(sites) + 1.8)
    ax = fig.gca()
    im = ax.imshow(grid, cmap="viridis", vmin=np.nanmin(grid) if np.isfinite(grid).any() else 0, vmax=1, aspect="auto")
    for (a, b), v in np.ndenumerate(grid):
        ax.text(b, a, "n/a" if np.isnan(v) else f"{100 * v:.1f}%", ha="center", va="center", fontsize=8, color="w")
    ax.set_xticks(range(len(models)), models, fontsize=8)
    ax.set_yticks(range(len(sites)), sites, fontsize=8)
    ax.set_title("Accuracy at each site (rows) of each model (columns)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    return _png(plt, fig)


def privacy_plot(privacy: dict[str, dict[str, float]], target: float) -> bytes:
    sites = sorted(privacy)
    plt, fig = _figure(1.0 * len(sites) + 3, 3.4)
    ax = fig.gca()
    ax.bar(sites, [privacy[s]["epsilon"] for s in sites], color="tab:purple")
    if target:
        ax.axhline(target, color="red", ls="--", lw=1, label=f"budget {target:g}")
        ax.legend(fontsize=7)
    first = next(iter(privacy.values()))
    ax.set(ylabel="epsilon spent", title="Differential privacy budget spent per site (delta "
           f"{first['delta']:g}, unit: {first.get('unit', 'image')})")
    return _png(plt, fig)


def make_plots(metrics: dict[str, Any], classes: list[str], folder: Path, marks: list[str] | None = None) -> dict[str, str]:
    """Write every plot the metrics allow into ``folder``; returns {caption: file name}.

    ``marks`` (random weights, synthetic data: xincept.common.marks) are stamped into every PNG.
    """
    from xincept.common.marks import stamp_png

    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    settings = metrics.get("settings", {})
    jobs = []
    if metrics.get("rounds"):
        jobs.append(("Per-round curves", "rounds.png", lambda: rounds_plot(metrics["rounds"], metrics.get("selected_rounds", metrics.get("selected_round")))))
    if metrics.get("sites"):
        jobs.append(("Confusion matrix at each site (test split; withheld cells shown as <N)", "confusion_sites.png",
                     lambda: confusion_plot(metrics["sites"], classes, int(settings.get("min-cell-count", 5)))))
    federated = bool(metrics.get("sites"))
    glob = metrics.get("global", {})
    if "roc" in glob:  # drawn even when every class's curve was withheld: the legend says which and why
        jobs.append(("One-vs-rest ROC curves per class" + (", all sites (from released histograms)" if federated else
                                                            ", out-of-fold predictions"),
                     "roc.png", lambda: roc_plot(glob, exact=not federated)))
    if glob.get("reliability"):
        jobs.append(("Reliability diagram" + (", all sites (hatched: bins withheld)" if federated else ", out-of-fold"),
                     "reliability.png", lambda: reliability_plot(glob, "Reliability, all sites" if federated else
                                                                 "Reliability, out-of-fold")))
    if federated and any("roc" in m for m in metrics["sites"].values()):
        jobs.append(("ROC curves per class at each site (test split, released histograms)", "roc_sites.png",
                     lambda: roc_sites_plot(metrics["sites"])))
    if federated and any(m.get("reliability") for m in metrics["sites"].values()):
        jobs.append(("Reliability diagram at each site (hatched: bins withheld)", "reliability_sites.png",
                     lambda: reliability_sites_plot(metrics["sites"])))
    if not federated and glob.get("confusion"):
        jobs.append(("Confusion matrix, out-of-fold predictions", "confusion.png", lambda: global_confusion_plot(glob, classes)))
    if glob.get("per_class"):
        jobs.append(("Per-class sensitivity, specificity, precision and F1", "per_class.png", lambda: per_class_plot(glob)))
    if metrics.get("folds"):
        jobs.append(("Accuracy per cross-validation fold", "folds.png", lambda: folds_plot(metrics["folds"])))
    if metrics.get("cross_site"):
        jobs.append(("Cross-site accuracy", "cross_site.png", lambda: cross_site_plot(metrics["cross_site"])))
    if metrics.get("privacy"):
        jobs.append(("Privacy budget per site", "privacy.png",
                     lambda: privacy_plot(metrics["privacy"], float(settings.get("dp-epsilon", 0)))))
    for caption, name, draw in jobs:
        try:
            (folder / name).write_bytes(stamp_png(draw(), marks or []))
            made[caption] = name
        except (ValueError, KeyError, TypeError) as exc:  # a plot must never cost the run its outputs
            log.warning("could not draw %s: %s", name, exc)
    return made
