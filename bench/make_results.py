"""Write docs/RESULTS.md and its PNG plots from the JSON files of bench/run_all.sh (bench/results/)."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
LEGACY = "fedavg (earlier release, before fedsgd)"  # JSON written before bench/federation.py recorded the strategy


def load(name: str) -> dict | None:
    path = RES / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def ci(pair: list[float] | None) -> str:
    return "" if not pair else f"{100 * pair[0]:.1f}-{100 * pair[1]:.1f}"


def _eps(privacy: dict) -> float | None:
    """Largest epsilon spent at any site (CV runs: over every fold)."""
    flat = [p for v in privacy.values() for p in (v.values() if "epsilon" not in v else [v])]
    return max((p["epsilon"] for p in flat if "epsilon" in p), default=None)


def first_run(r: dict) -> dict:
    """A result's run: itself for a single run, its fold 0 for a cross-validation (the folds share settings)."""
    return r["fold_runs"][0] if "fold_runs" in r else r


def classifier(r: dict) -> str:
    mode = r.get("xgb_mode") or r.get("xgb", {}).get("mode")
    if mode == "none":
        return "head softmax"
    chosen = r.get("classifier_chosen")
    chosen = [c for c in (chosen if isinstance(chosen, list) else [chosen]) if c]
    first = first_run(r)
    margin = ", boosting from its logits" if "boosting from the head's logits" in str(first.get("classifier", "")) else ""
    if not chosen:
        return f"{mode} XGBoost on the federated head{margin}"
    n_xgb = sum(c == "xgboost" for c in chosen)
    return (f"{mode} XGBoost or head softmax, by validation accuracy (XGBoost in {n_xgb} of {len(chosen)})" if len(chosen) > 1
            else f"{'XGBoost (' + mode + ')' if n_xgb else 'head softmax'}, chosen by validation accuracy")


def head_strategy(r: dict) -> str:
    """The head rounds' rule and how many heads were trained (``head-members``; runs before it had one head)."""
    one = first_run(r)
    found = re.match(r"ensemble of (\d+) fused heads", one.get("classifier", ""))
    heads = int(one.get("head_members") or (found.group(1) if found else 1))
    strategy = one.get("strategy") or r.get("strategy") or LEGACY
    return f"{strategy}, {heads} heads averaged" if heads > 1 else (f"{strategy}, 1 head" if strategy == "fedsgd" else strategy)


def is_imagenet(r: dict) -> bool:
    """A result with at least one ImageNet backbone (its per-backbone weights are recorded)."""
    return r.get("weights") in ("pretrained", "mixed") or any(
        w != "random" for w in (first_run(r).get("backbone_weights") or {}).values())


def weights_cell(r: dict) -> str:
    """Each backbone and its weights, short: ``Xception: ImageNet (Keras)``; ``random`` for all-random rows."""
    per = first_run(r).get("backbone_weights") or r.get("backbone_weights")
    if not per:
        return str(r.get("weights", "random"))
    short = {"legacy_xception": "Xception", "inception_v3": "InceptionV3"}
    label = {"imagenet (keras)": "ImageNet (Keras)", "imagenet (timm)": "ImageNet (timm)", "random": "random"}
    return " + ".join(f"{short.get(n, n)}: {label.get(w, w)}" for n, w in per.items())


def run_table(columns: list[str], runs: dict[str, dict], row) -> list[str]:
    """A markdown table with one row per run; a failed run gets its error in the column after the name."""
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, r in runs.items():
        cells = [name, f"failed: {r['error']}"] + [""] * (len(columns) - 2) if "error" in r else [name, *row(r)]
        out.append("| " + " | ".join(cells) + " |")
    return out


def cv_table(runs: dict[str, dict]) -> list[str]:
    def row(r: dict) -> list[str]:
        cv, eps = r["cv"], _eps(r.get("privacy", {}))
        fed = cv["federated"]
        head, xgb, sel = (cv.get(f"centralized_{k}", {}) for k in ("head_softmax", "xgboost", "selected"))
        gap = cv.get("gap_points", {}).get("pooled")
        comm = first_run(r).get("communication", {})
        rounds = comm.get("rounds", 0) * (comm.get("head_members") or 1)
        return [weights_cell(r), r["partition"]["scheme"], head_strategy(r), str(rounds or "?"), classifier(r), pct(fed["accuracy"]), ci(fed["accuracy_ci95"]),
                f"{pct(fed['fold_mean'])} ± {100 * fed['fold_sd']:.1f}",
                f"{pct(head.get('accuracy'))} / {pct(xgb.get('accuracy'))} / {pct(sel.get('accuracy'))}",
                "-" if gap is None else f"{gap:+.1f}", "-" if eps is None else f"{eps:.2f}", f"{r['wall_s']:.0f} s"]

    return run_table(["run", "backbones: weights", "partition", "head strategy", "synchronous head rounds (per fold)", "classifier", "accuracy (pooled over 5 folds)", "95% CI (Wilson)", "fold mean ± sd",
                      "centralized, same folds: head / XGBoost / chosen by validation",
                      "gap to centralized, same classifier rule (points)", "DP epsilon spent (max)", "wall time (5 runs)"], runs, row)


def federated_table(runs: dict[str, dict]) -> list[str]:
    def row(r: dict) -> list[str]:
        ref, eps = r["centralized_reference"], _eps(r["privacy"])
        return [weights_cell(r), r["partition"]["scheme"], str(r["seed"]), head_strategy(r), classifier(r), pct(r["accuracy"]),
                ci(r["accuracy_ci95"]),
                " / ".join(pct(ref.get(k, {}).get("accuracy")) for k in ("head_softmax", "xgboost", "selected")),
                "-" if eps is None else f"{eps:.2f}", f"{r['wall_s']:.0f} s"]

    return run_table(["run", "backbones: weights", "partition", "seed", "head strategy", "classifier", "accuracy", "95% CI (Wilson)",
                      "centralized, same splits: head / XGBoost / chosen by validation", "DP epsilon spent (max over sites)",
                      "wall time"], runs, row)


def plot_scale(scale: dict) -> str:
    rows = sorted((r for r in scale["runs"] if r.get("exit_code") == 0), key=lambda r: r["sites"])
    fig, ax1 = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax1.plot([r["sites"] for r in rows], [r["wall_s"] for r in rows], "o-", label="wall time (s)")
    ax1.set(xscale="log", xlabel="simulated sites", ylabel="wall time (s)", title="Scale on this machine (2 cores)")
    ax1.set_xticks([r["sites"] for r in rows], [str(r["sites"]) for r in rows])
    ax2 = ax1.twinx()
    ax2.plot([r["sites"] for r in rows], [r["peak_rss_mb"] / 1000 for r in rows], "s--", color="tab:red", label="peak memory (GB)")
    ax2.set_ylabel("peak memory (GB)")
    fig.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / "scale.png")
    plt.close(fig)
    return "scale.png"


def portable(command: str) -> str:
    """A recorded command with this machine's data and cache paths replaced by the README's."""
    command = re.sub(r"--data \S*all4", "--data ../shared/datasets/all4", command)
    return re.sub(r"--cache-dir \S+", "--cache-dir CACHE", command)


ORDER = ("iid", "dirichlet", "labelskew", "bagging_iid", "bagging_dirichlet", "dp8", "dp3", "dp1")  # partitions, XGBoost mode, DP


def display_order(path: Path) -> tuple[int, str]:
    """Rows in reading order: the partitions, then bagging, then DP from the weakest to the strongest privacy."""
    name = path.stem.removeprefix("fed_").removeprefix("imagenet_").removesuffix("_cv")
    base = next((i for i, k in enumerate(ORDER) if name == k or name.startswith(k + "_")), len(ORDER))
    return base, path.stem


def plot_accuracy(runs: dict[str, dict], central: dict | None) -> str:
    names, vals, lows, highs = [], [], [], []
    if central:
        f = central["variants"].get("fusion", {})
        if "accuracy" in f:
            names.append("centralized 5-fold")
            vals.append(f["accuracy"])
            lo, hi = f["ci95"]["accuracy"]
            lows.append(f["accuracy"] - lo)
            highs.append(hi - f["accuracy"])
    for name, r in runs.items():
        if "accuracy" in r:
            names.append(name)
            vals.append(r["accuracy"])
            lows.append(r["accuracy"] - r["accuracy_ci95"][0])
            highs.append(r["accuracy_ci95"][1] - r["accuracy"])
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    ax.bar(range(len(vals)), vals, yerr=[lows, highs], capsize=3, color="tab:blue")
    ax.set_xticks(range(len(vals)), names, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="accuracy", ylim=(0.5, 1.0), title="Accuracy with 95% intervals (random weights, 224 px)")
    fig.tight_layout()
    fig.savefig(DOCS / "accuracy.png")
    plt.close(fig)
    return "accuracy.png"


def _save(fig, name: str) -> str:  # noqa: ANN001
    fig.tight_layout()
    fig.savefig(DOCS / name)
    plt.close(fig)
    return name


def plot_partitions(cv_runs: dict[str, dict], weights: str = "random weights", png: str = "partition.png",
                    ylim: tuple[float, float] = (0.7, 0.95)) -> str | None:
    """Federated vs centralized (same folds, same classifier rule) for each partition of the non-DP, histogram CV runs."""
    rows = [(r["partition"]["scheme"], r) for name, r in cv_runs.items()
            if "cv" in r and not r.get("privacy") and r.get("xgb_mode", "histogram") != "bagging"]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    x = range(len(rows))
    for i, (label, key) in enumerate((("federated", "federated"), ("centralized, same folds", "centralized_selected"))):
        vals = [r["cv"][key if key in r["cv"] else "centralized_xgboost"]["accuracy"] for _, r in rows]
        errs = None
        if key == "federated":
            errs = [[v - r["cv"][key]["accuracy_ci95"][0] for v, (_, r) in zip(vals, rows)],
                    [r["cv"][key]["accuracy_ci95"][1] - v for v, (_, r) in zip(vals, rows)]]
        ax.bar([j + (i - 0.5) * 0.38 for j in x], vals, width=0.38, yerr=errs, capsize=3, label=label)
    ax.set_xticks(list(x), [scheme for scheme, _ in rows])
    ax.set(ylim=ylim, ylabel="accuracy (pooled over 5 folds)", xlabel="partition of the images over 4 sites",
           title=f"Accuracy vs partition ({weights}): federated and centralized, same folds")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, png)


def plot_dp(cv_runs: dict[str, dict], weights: str = "random weights", png: str = "dp.png", no_dp: str = "iid_cv") -> str | None:
    """Accuracy against the DP budget (grouped 5-fold CV), with the non-DP IID run as the epsilon = infinity reference."""
    dp = sorted(((_eps(r["privacy"]), r) for r in cv_runs.values() if r.get("privacy") and "cv" in r), key=lambda t: t[0])
    if not dp:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    eps = [e for e, _ in dp]
    ax.plot(eps, [r["cv"]["federated"]["accuracy"] for _, r in dp], "o-", label="federated model (XGBoost or softmax)")
    soft = [(e, r["cv"]["federated_head_softmax"]["accuracy"]) for e, r in dp if "federated_head_softmax" in r["cv"]]
    if soft:
        ax.plot([e for e, _ in soft], [a for _, a in soft], "s--", label="DP-trained head softmax alone")
    iid = cv_runs.get(no_dp)
    if iid and "cv" in iid:
        ax.axhline(iid["cv"]["federated"]["accuracy"], color="grey", ls=":", label="no DP (IID, same folds)")
    ax.set(xscale="log", xlabel="epsilon spent per site (max over sites, delta 1e-5)", ylabel="accuracy (pooled over 5 folds)",
           title=f"Accuracy vs DP budget (IID, 4 sites, {weights})")
    ax.title.set_fontsize(9)
    ax.set_xticks(eps, [f"{e:.1f}" for e in eps])
    ax.minorticks_off()
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, png)


def dp_run_mode_section(d: dict) -> list[str]:
    """The run mode itself (`simulate --dp-mode whole-model`), plain and with secure aggregation, on one fold."""
    lines = ["### The run mode: `xincept-server simulate --dp-mode whole-model`", "",
             f"Command: `{portable(d['command'])}`. Protocol: {d['protocol']} (the noise's standard deviation beside it: "
             "one fold, one run, so these move by a few points from run to run; the five-fold table above is the "
             "measurement). Epsilon is each site's over everything it released, from metrics.json.", "",
             "| epsilon (delta) | noise | measured accuracy | +- from the counts' noise | epsilon per site | steps | training | weights |",
             "|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        eps = sorted(r["epsilon_per_site"].values())
        lines.append(f"| {r['epsilon']:g} ({r['delta']:g}) | {'distributed (secure aggregation)' if r['secure_aggregation'] else 'local'} "
                     f"| {pct(r['measured_accuracy'])} | {100 * r['accuracy_noise_sd']:.1f} | {eps[0]:.2f}-{eps[-1]:.2f} "
                     f"| {r['steps']} | {r['training_s']:.0f} s | {r['weights']} |")
    return lines + ["", "Secure aggregation costs four messages per step instead of one (keys, shares, masked sum, "
                    "unmasking): the training's wall time above, on one machine; over a WAN each message is a round trip.", ""]


def dp_end_to_end_section(d: dict) -> list[str]:
    """Whole-model DP (every release covered) beside the non-private federated model, per partition, unit and noise."""
    rows = d["rows"]
    lines = ["## Whole-model DP: every release of a site under one epsilon", "",
             f"Command: `{portable(d['command'])}`", "",
             f"Protocol: {d['protocol']} ({d['seeds']} noise draws per fold). Accounting: {d['accounting']}. "
             f"{d.get('trust', '')} Non-private: the shipped federated model (fused head and XGBoost) on the same folds, and "
             "the same linear head trained without noise. The protocol is `--dp-mode whole-model` of `simulate` and "
             "`start` (below: the run mode itself on one fold).", "",
             "| partition | unit | noise | epsilon (delta) | DP accuracy | non-private federated | non-private linear head | weights |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        noise = "distributed (secure aggregation)" if r["secure_aggregation"] else "local (each site all)"
        lines.append(f"| {r['partition']} | {r['unit']} | {noise} | {r['epsilon']:g} ({r['delta']:g}) | **{pct(r['accuracy'])}** | "
                     f"{pct(r['non_private_accuracy'])} | {pct(r['non_private_linear_accuracy'])} | {r['weights']} |")
    missing = sorted({r["partition"] for r in rows if r["non_private_accuracy"] is None})
    if missing:
        lines += ["", f"n/a: the non-private federated model was not measured at {rows[0].get('input_size', 224)} px for "
                  f"{', '.join(missing)} (bench/federation.py at that input size); the non-private linear head stands beside."]
    best = {e: max((r["accuracy"] for r in rows if r["epsilon"] == e and r["unit"] == "image" and r["partition"] == "iid"),
                   default=None) for e in (3.0, 8.0)}
    if all(v is not None for v in best.values()):
        met = best[3.0] >= 0.94 and best[8.0] >= 0.955
        local = {e: next((r["accuracy"] for r in rows if r["epsilon"] == e and r["unit"] == "image" and r["partition"] == "iid"
                          and not r["secure_aggregation"]), None) for e in (3.0, 8.0)}
        lines += ["", f"Targets (IID, image level: at least 94% at epsilon 3 and 95.5% at epsilon 8): "
                  f"{'met' if met else 'not met'}; the best rows give {pct(best[3.0])} and {pct(best[8.0])} "
                  f"(distributed noise through secure aggregation). With local noise (each site adds all of it, no secure "
                  f"aggregation): {pct(local[3.0])} and {pct(local[8.0])}."]
    if any(r["unit"] == "patient" for r in rows):
        lines += ["", "Patient level: the unit is a patient group (runs of 25 file numbers, as the splits group them), so "
                  "a site's training data holds a few dozen units, not hundreds of images: each unit's whole contribution is "
                  "clipped to the norm one image gets, and the noise needed for the same epsilon costs most of the accuracy the "
                  "image level keeps."]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for part in dict.fromkeys(r["partition"] for r in rows):
        color = None
        for secure, style in ((False, "o-"), (True, "^--")):
            pts = sorted((r["epsilon"], r["accuracy"]) for r in rows
                         if r["partition"] == part and r["unit"] == "image" and r["secure_aggregation"] == secure)
            if pts:
                line, = ax.plot([e for e, _ in pts], [a for _, a in pts], style, color=color,
                                label=f"{part}, {'distributed noise, secure aggregation' if secure else 'local noise'}")
                color = line.get_color()
        ref = next((r["non_private_accuracy"] for r in rows if r["partition"] == part and r["non_private_accuracy"]), None)
        if ref:
            ax.axhline(ref, color=color, ls=":", label=f"{part}, non-private federated")
        pat = [(r["epsilon"], r["accuracy"]) for r in rows if r["partition"] == part and r["unit"] == "patient"]
        if pat:
            ax.plot([e for e, _ in pat], [a for _, a in pat], "s", color=color, label=f"{part}, patient-level DP")
    ax.set(xscale="log", xlabel="epsilon per site (delta 1e-5), every release", ylabel="accuracy (pooled over 5 folds)",
           title=f"Whole-model DP vs budget (4 sites, {rows[0]['weights']})")
    ax.title.set_fontsize(9)
    eps = sorted({r["epsilon"] for r in rows})
    ax.set_xticks(eps, [f"{e:g}" for e in eps])
    ax.minorticks_off()
    ax.legend(fontsize=6, loc="center right")
    return lines + ["", f"![whole-model DP]({_save(fig, 'dp_end_to_end.png')})", ""]


def plot_embed(embed: dict) -> str:
    """Images per second of each backbone and both together: the naive path against the default one."""
    names = [*embed["per_backbone"], "both (fused)"]
    naive = [embed["per_backbone"][n]["naive_images_per_s"] for n in embed["per_backbone"]] + [embed["naive_images_per_s"]]
    fast = [embed["per_backbone"][n]["default_images_per_s"] for n in embed["per_backbone"]] + [embed["default_images_per_s"]]
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=110)
    x = range(len(names))
    ax.bar([j - 0.2 for j in x], naive, width=0.4, label="naive (fp32, eager, 299 px, batch 16)")
    ax.bar([j + 0.2 for j in x], fast, width=0.4, label="default (bf16, channels-last, folded BN, 224 px)")
    ax.set_xticks(list(x), names)
    ax.set(ylabel="images per second (CPU, 2 cores)", title="Embedding throughput")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, "embed.png")


def ablation_section(ab: dict) -> list[str]:
    """One change at a time against the defaults (bench/ablation.py), centralized grouped 5-fold CV."""
    variants = ab["variants"]
    base = variants.get("defaults", {}).get("head_softmax", {}).get("accuracy")
    lines = ["## Head ablation: what costs the fused head its accuracy (centralized, grouped 5-fold CV)", "",
             f"Command: `{ab['command']}`. Protocol: {ab['protocol']}; the same folds and inner validation split as "
             "`xincept-server centralized`. Random weights, 224 px. Each row changes the current defaults as listed "
             "(`recipe=algorithm1`: the thesis' L2 0.01, input dropout 0.5, batch 64, early stopping; `absolute_eps`: "
             "the input standardisation before the fix). Accuracy of the head's softmax pooled over the folds' test images "
             "(Wilson 95% interval), each fold's accuracy and their standard deviation. `wide_fusion`: the fusion layers "
             "read each branch's 64-wide activations instead of its K-wide output (not Algorithm 1's structure); "
             "`deep_supervision`: each branch's K-wide output is also trained on the labels; `members`: heads from "
             "consecutive seeds, their softmax averaged." + (f" {ab['note'][0].upper()}{ab['note'][1:]}." if ab.get("note") else ""),
             "",
             "| variant | changes | head softmax | 95% CI | per fold (sd) | vs defaults (points) |",
             "|---|---|---|---|---|---|"]
    for name, v in variants.items():
        h = v["head_softmax"]
        change = ", ".join(f"{k}={val}" for k, val in v["changes"].items()) or "none"
        delta = "" if base is None else f"{100 * (h['accuracy'] - base):+.1f}"
        folds = " / ".join(f"{100 * a:.1f}" for a in h["fold_accuracy"])
        lines.append(f"| {name} | {change} | {pct(h['accuracy'])} | {ci(h['accuracy_ci95'])} | {folds} ({100 * h['fold_sd']:.1f}) "
                     f"| {delta} |")
    xgb = {k.removeprefix("xgboost_on_"): v for k, v in variants.get("defaults", {}).items() if k.startswith("xgboost_on_")}
    if xgb and base is not None:
        lines += ["", "XGBoost beside the default head, on each candidate input (same folds; fitted on the training part's "
                  "inputs, early stopping on the inner validation split):", "",
                  "| XGBoost input | accuracy | 95% CI | per fold (sd) | vs head softmax (points) |", "|---|---|---|---|---|"]
        for kind, x in xgb.items():
            folds = " / ".join(f"{100 * a:.1f}" for a in x["fold_accuracy"])
            label = kind.replace("+margin", ", boosting from the head's logits (base margin)")
            lines.append(f"| {label} | {pct(x['accuracy'])} | {ci(x['accuracy_ci95'])} | {folds} ({100 * x['fold_sd']:.1f}) "
                         f"| {100 * (x['accuracy'] - base):+.1f} |")
    return lines + [""]


def deployment_section(deps: list[dict], fvc: dict | None) -> list[str]:
    """The stock deployed path at each measured RTT beside the simulation (one table per run of bench/deployed.py),
    and federated vs centralized wall time."""
    lines = ["## Deployment: stock Flower processes, as a WAN sees them, against the simulation", ""]
    for dep in deps:
        lines += [f"Command: `{dep['command']}`. {dep['sites']} sites on 127.0.0.1 (`xincept-server start` with TLS and node "
                  f"authentication, `xincept-client join` each; {dep.get('path', '')}), {dep['images']} images of all4 (whole "
                  f"25-file groups dealt to the sites), {dep['rounds']} rounds of the default federation, beside `xincept-server "
                  f"simulate --partition folders` on the same site folders and settings. Each site reaches the SuperLink through "
                  f"a userspace latency proxy (`bench/latency_proxy.py`, RTT/2 each way) that counts its requests (each a round "
                  f"trip). The sites share the machine's cores: each deployed site runs with {dep.get('threads_per_site', 'all')} "
                  f"thread(s) (`join --threads`), as Ray runs each simulated site with OMP_NUM_THREADS=1. Random weights. "
                  f"Protocol: {dep['protocol']}. Seconds per head round: the head phase's time over its rounds (the first round "
                  "also pays each site's set-up; the median of the later rounds is beside it); requests per site per round: "
                  "over rounds 2 to the last.", "",
                  "| path | RTT | seconds per head round | requests per site per round | first round | median later round "
                  "| embed | head rounds | xgb | validate | wall | peak RSS | accuracy |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        rows = [(f"deployed", f"{rtt} ms", r) for rtt, r in dep.get("rtt_ms", {}).items()] + [("simulated", "-", dep.get("simulated", {}))]
        for name, rtt, r in rows:
            if "phases_s" not in r:
                lines.append(f"| {name} | {rtt} | failed: {r.get('error', '?')} |||||||||||")
                continue
            ph = r["phases_s"]
            requests = r.get("requests_per_site_per_round")
            lines.append(f"| {name} | {rtt} | {r['seconds_per_head_round']:.2f} s | {requests if requests is not None else '-'} | "
                         f"{r['first_round_s']:.2f} s | {r['median_later_round_s']:.2f} s | {ph['embed']:.1f} s | "
                         f"{ph['head_rounds']:.1f} s | {ph['xgb']:.1f} s | {ph['validate']:.1f} s | {r['wall_s']:.0f} s | "
                         f"{r['peak_rss_mb'] / 1000:.1f} GB | {pct(r['accuracy'])} |")
        ratios = dep.get("ratio_seconds_per_head_round", {})
        if ratios:
            if "SQLite" in dep.get("path", ""):
                lines += ["", "The SuperLink keeps its state in Flower's SQLite file so that node registrations survive a "
                          "restart (issue 31); Flower keeps every message object in that file too, and that is where most of "
                          "a deployed round's time beyond the simulation's goes: the same benchmark with Flower's in-memory "
                          "state gave 0.86 s per head round at 0 ms and 1.14 s at 50 ms (2026-12-06, before the change)."]
            sec = dep.get("secure_aggregation")
            if sec:
                lines += ["", "**Secure aggregation**: " + sec["what"] + ". Requests per site per round: " + ", ".join(
                          f"{r.get('requests_per_site_per_round', 'n/a')} at {rtt} ms" for rtt, r in sec["rtt_ms"].items()) + ".", "",
                          "| RTT | seconds per head round | plain FedAvg | ratio | bytes a site sends per round | plain update |",
                          "|---|---|---|---|---|---|"]
                for rtt, r in sec["rtt_ms"].items():
                    plain = dep["rtt_ms"].get(rtt, {})
                    if "error" in r or "error" in plain:
                        lines.append(f"| {rtt} ms | failed: {r.get('error') or plain.get('error')} |||||")
                        continue
                    lines.append(f"| {rtt} ms | {r['seconds_per_head_round']:.2f} s | {plain['seconds_per_head_round']:.2f} s | "
                                 f"{sec['ratio_seconds_per_head_round'].get(rtt, 'n/a')}x | "
                                 f"{r['secure_bytes_up_per_site_per_round'] / 1e6:.2f} MB | "
                                 f"{r['plain_update_bytes_per_site_per_round'] / 1e6:.2f} MB |")
            lines += ["", "Deployed / simulated seconds per head round: "
                      + ", ".join(f"{x}x at {rtt} ms RTT" for rtt, x in ratios.items()) + ".", ""]
    if fvc:
        lines += ["### Federated default against centralized training (one run of `python bench/fed_vs_central.py`)", "",
                  "| run | command | wall | peak RSS | peak PSS | accuracy | rounds |", "|---|---|---|---|---|---|---|"]
        for name, r in fvc["runs"].items():
            lines.append(f"| {name} | `{r['command']}` | {r['wall_s']:.0f} s | {r['peak_rss_mb'] / 1000:.1f} GB | "
                         f"{r.get('peak_pss_mb', 0) / 1000:.1f} GB | {pct(r.get('accuracy'))} | {r.get('rounds', '-')} |")
        lines += ["", f"Federated / centralized wall time: {fvc['ratio_federated_to_centralized']}x (federated model alone), "
                  f"{fvc['ratio_with_loso_and_reference']}x with leave-one-site-out models and the centralized reference.", ""]
    return lines


def fold_gap_lines(runs: dict[str, dict]) -> list[str]:
    """One line per CV run: each fold's federated accuracy and its gap to centralized on the same folds."""
    out = []
    for name, r in runs.items():
        gap = r.get("cv", {}).get("gap_points")
        if gap:
            fed = r["cv"]["federated"]["fold_accuracy"]
            out.append(f"- {name}: " + ", ".join(f"fold {k}: {100 * a:.1f}% ({g:+.1f})" for k, (a, g) in enumerate(zip(fed, gap["fold"]))))
    return out


def cross_site_table(d: dict, title: str) -> list[str]:
    cols = list(next(iter(d["cross_site"].values())))
    out = [title, "", "| site | " + " | ".join(cols) + " |", "|---" * (1 + len(cols)) + "|"]
    for site, row in d["cross_site"].items():
        out.append(f"| {site} | " + " | ".join(pct(v) for v in row.values()) + " |")
    return out + [""]


def imagenet_section(runs: dict[str, dict], central: dict | None) -> list[str]:
    """The product's numbers: Keras' ImageNet Xception (stage-weights --from-keras), InceptionV3 random where fused."""
    variants = {k: v for k, v in ((central or {}).get("variants") or {}).items() if is_imagenet(v) and "accuracy" in v}
    cv = {k: v for k, v in runs.items() if "cv" in v or ("error" in v and k.endswith("_cv"))}
    single = {k: v for k, v in runs.items() if k not in cv}
    lines = ["## ImageNet Xception (Keras' ImageNet weights, converted offline)", "",
             "Weights: Keras' ImageNet Xception from `../shared/weights/keras/` (a Keras 3 model file shipped in a public PyPI "
             "package; its Xception variables are Keras' ImageNet weights, unchanged), converted with `xincept-client "
             "stage-weights --from-keras FILE --out W`. No ImageNet InceptionV3 exists on this machine: where a row fuses "
             "InceptionV3, that backbone has seeded random weights (`--random-backbones inception_v3`) and says so.", ""]
    if variants:
        lines += ["Centralized, grouped stratified 5-fold CV pooled over all images (`python bench/centralized.py "
                  "--weights-dir W`; details in the centralized table below):", "",
                  "| variant | backbones: weights | input | accuracy | 95% CI | head softmax |", "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {weights_cell(v)} | {v.get('input_size', 224)} px | **{pct(v['accuracy'])}** | {ci(v['ci95'].get('accuracy'))} | "
                  f"{pct(v['head_softmax'])} |" for k, v in variants.items()]
        lines.append("")
    if cv:
        lines += ["Federated, grouped 5-fold CV inside every site, 4 simulated sites (protocol as in the random-weight section "
                  "below; the centralized reference trains on each fold's pooled training splits and is scored on the same "
                  "images). Command: `XINCEPT_BENCH_WEIGHTS=W bash bench/run_all.sh CACHE` (rows `fed_imagenet_*`).", ""]
        lines += cv_table(cv)
        lines += ["", "Per-fold accuracy, federated (points of gap, centralized minus federated):", ""]
        lines += fold_gap_lines(cv) + [""]
        png = plot_partitions(cv, "ImageNet Xception", "partition_imagenet.png", ylim=(0.85, 1.0))
        if png:
            lines += [f"![accuracy vs partition, ImageNet Xception]({png})", ""]
        dp_rows = [r for r in cv.values() if r.get("privacy") and "cv" in r]
        if dp_rows:
            lines += ["DP rows: DP-SGD on the head rounds at each site (the epsilon each site spent, delta 1e-5); the XGBoost "
                      "phase learns without DP noise (`privacy_scope` in `metrics.json`). The DP-trained head's softmax alone: "
                      + ", ".join(f"{k} {pct(r['cv']['federated_head_softmax']['accuracy'])}" for k, r in cv.items()
                                  if r.get("privacy") and "federated_head_softmax" in r.get("cv", {})) + ".", ""]
            png = plot_dp(cv, "ImageNet Xception", "dp_imagenet.png", no_dp="imagenet_iid_cv")
            if png:
                lines += [f"![accuracy vs epsilon, ImageNet Xception]({png})", ""]
    if single:
        lines += ["Single split (fold 0), with leave-one-site-out models:", ""] + federated_table(single) + [""]
        for name, r in single.items():
            if r.get("cross_site"):
                lines += cross_site_table(r, f"Cross-site validation ({name}: each column a model, each row the site that "
                                                "scored it; only aggregate counts left the sites)")
    return lines


def result_dates() -> list[str]:
    """When each result file was last written: its last commit's date, or "this regeneration" where it is uncommitted."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=RES, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = {Path(line[3:]).name for line in git("status", "--porcelain", "--", ".").splitlines()}
    rows = []
    for path in sorted(RES.glob("*.json")):
        when = "this regeneration (uncommitted)" if path.name in changed else (git("log", "-1", "--format=%cs", "--", path.name) or "unknown")
        rows.append(f"| `{path.name}` | {when} |")
    return ["## When each result was measured", "",
            "Rows measured before 2026-12-03 ran before XGBoost boosted from the head's logits (`xgb-margin`, now the default) "
            "and, before 2026-12-02, on an earlier embedding cache of the same images; their accuracies can differ from a rerun by "
            "a few tenths of a point to a point. Rerun `bash bench/run_all.sh CACHE` to bring every row to the current code.", "",
            "| result file | last written (git) |", "|---|---|", *rows, ""]


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    every = {p.stem.removeprefix("fed_"): json.loads(p.read_text()) for p in sorted(RES.glob("fed_*.json"), key=display_order)}
    imagenet_runs = {k: v for k, v in every.items() if k.startswith("imagenet_") or is_imagenet(v)}
    runs = {k: v for k, v in every.items() if k not in imagenet_runs}  # the random-weight sections
    central, dp, scale, embed = load("centralized"), load("dp"), load("scale"), load("embed")
    ablation = load("ablation")
    scale32 = load("scale_32")
    if scale and scale32:  # 32 sites need finer groups: add that row beside the failed one
        scale = {**scale, "runs": scale["runs"] + scale32["runs"]}
    lines = ["# Results", "",
             "Every number below comes from the JSON files in `bench/results/`, written by `bash bench/run_all.sh` "
             "(one command per table is given with each table) and turned into this page by `python bench/make_results.py`.",
             "", "> **Weights.** Every row names its backbones' weights. ImageNet rows use Keras' ImageNet Xception converted "
             "offline (`stage-weights --from-keras`); InceptionV3 is random wherever it appears (no ImageNet InceptionV3 on this "
             "machine). Rows labelled random have seeded random weights (`--no-pretrained`): they measure the pipeline and the "
             "protocols, not a clinical model. Input 224 px unless a row says otherwise.", "",
             "Data: `../shared/datasets/all4` (2,572 images, 2,535 unique; Benign, Early, Pre, Pro). Seed 0 unless a table says otherwise. "
             "Machine: x86_64, 2 cores, 24 GB, no GPU.", ""]
    lines += ["## Literature (not comparable with our columns)", "",
              "| source | accuracy | protocol |", "|---|---|---|",
              "| Khan 2024 (thesis), XIncept-ALL | 99.0% | ImageNet-pretrained backbones, image-level random split (images of one patient on both sides), 10-fold CV |", ""]
    if imagenet_runs or any(is_imagenet(v) for v in ((central or {}).get("variants") or {}).values()):
        lines += imagenet_section(imagenet_runs, central)
    if central:
        lines += ["## Centralized: fusion vs each backbone, random and ImageNet weights, and the classifier comparison", "",
                  "Protocol: grouped stratified 5-fold CV (groups: runs of 25 consecutive file numbers + exact duplicates; "
                  "103 groups); metrics pooled over out-of-fold predictions; 95% intervals from a bootstrap over groups.", "",
                  "Command: `python bench/centralized.py --cache-dir CACHE [--weights-dir W]` (W: `xincept-client stage-weights "
                  "--from-keras FILE --out W`; the `imagenet_*` rows; InceptionV3 random in them, labelled)", "",
                  "The shipped classifier is XGBoost on the head branches' 64-wide activations, boosting from the head's "
                  "logits (`--select-classifier xgboost --xgb-features branches --xgb-margin head`, the defaults); the head's "
                  "softmax beside it. Same recipe and settings for every row, only `--backbones` "
                  "differs. Peak memory: RSS of the process tree.", "",
                  "| variant | weights | input | accuracy (shipped classifier) | 95% CI | macro F1 | AUC | XGBoost | head softmax | chosen | wall time | peak memory |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, v in central["variants"].items():
            if "accuracy" in v:
                chosen = ", ".join(f"{n} x {c}" for c, n in sorted(Counter(v["classifier_chosen"]).items()))
                lines.append(f"| {name} | {weights_cell(v)} | {v.get('input_size', 224)} px | {pct(v['accuracy'])} | {ci(v['ci95'].get('accuracy'))} | {pct(v['macro_f1'])} | {pct(v['auc_ovr'])} | "
                             f"{pct(v['xgboost'])} | {pct(v['head_softmax'])} | {chosen} | {v['wall_s']:.0f} s | "
                             f"{v['peak_rss_mb'] / 1000:.1f} GB |")
        comp = central["variants"].get("fusion", {}).get("comparison", {})
        if comp:
            lines += ["", "Classifiers on the same fused embeddings and folds (thesis Table 5.1, our protocol):", "",
                      "| classifier | accuracy |", "|---|---|"] + [f"| {k} | {pct(v)} |" for k, v in comp.items()]
        lines.append("")
    cv_runs = {k: v for k, v in runs.items() if "cv" in v or ("error" in v and k.endswith("_cv"))}
    split_runs = {k: v for k, v in runs.items() if k not in cv_runs}
    if cv_runs:
        lines += ["## Federated, grouped 5-fold cross-validation (4 simulated sites, Flower simulation engine; random weights)", "",
                  "Protocol: inside every site, the images are split into 5 grouped stratified folds (groups: runs of 25 consecutive "
                  "file numbers + exact duplicates); run K holds out every site's fold K for testing and a grouped 15% of the rest "
                  "for validation (round and XGBoost early stopping), and trains on the remainder. Accuracy is pooled over the five "
                  "runs' test images (each image tested once); the centralized reference trains the same model on each run's pooled "
                  "training splits and is scored on the same images. Intervals: Wilson over images. Seed 0 (partition and folds).", "",
                  "Command: `python bench/federation.py --folds 5 --name NAME --sites 4 --partition P [simulate options]` "
                  "(each row's options in `bench/run_all.sh`)", "",
                  "Wall times of the accuracy runs are indicative only: some ran while other jobs shared the machine's 2 cores. "
                  "The timing comparison further down uses runs made alone, one after the other.", ""]
        lines += cv_table(cv_runs)
        if any(r.get("privacy") for r in cv_runs.values()):
            lines += ["", "DP rows: each site's epsilon covers the head rounds (DP-SGD, FedAvg, 20 rounds of local epochs); the "
                      "XGBoost phase learns from the DP head's embeddings without DP noise, so a row whose classifier is XGBoost "
                      "is not a model trained under DP alone (`privacy_scope` in `metrics.json`; `--xgb-mode none` keeps the "
                      "whole classifier under DP). The head's softmax alone, trained under DP: "
                      + ", ".join(f"{k} {pct(r['cv']['federated_head_softmax']['accuracy'])}" for k, r in cv_runs.items()
                                  if r.get("privacy") and "federated_head_softmax" in r.get("cv", {})) + "."]
        lines += ["", "Per-fold accuracy, federated vs centralized with the same classifier rule (points of gap, centralized minus federated):", ""]
        lines += fold_gap_lines(cv_runs)
        lines += ["", f"![accuracy]({plot_accuracy(cv_runs, central)})", ""]
        partition_png = plot_partitions(cv_runs)
        if partition_png:
            lines += ["Accuracy vs partition (federated with 95% Wilson interval; centralized on the same folds and classifier "
                      "rule):", "", f"![accuracy vs partition]({partition_png})", ""]
        dp_png = plot_dp(cv_runs)
        if dp_png:
            lines += ["Accuracy vs DP budget (the epsilon each site spent; the dotted line is the same federation without DP):", "",
                      f"![accuracy vs epsilon]({dp_png})", ""]
    if split_runs:
        lines += ["## Federated, single split (fold 0), other seeds and timing runs", "",
                  "Protocol: each site holds out a grouped 20% test split (fold 0 of the CV above for seed 0) and a grouped 15% "
                  "validation split of the rest; the federated model is scored on the union of the sites' test splits; the centralized "
                  "reference trains the same model on the pooled training splits and scores it on the same images. Intervals: Wilson "
                  "over images. The seed sets partition and splits.", "",
                  "Command: `python bench/federation.py --name NAME --sites 4 --partition P [simulate options]` (see `bench/run_all.sh`)", ""]
        lines += federated_table(split_runs)
        lines.append("")
    if runs:
        lines += ["### Time and communication (one run; CV rows: fold 0)", "",
                  "| run | head strategy | embed | head rounds | rounds | per round | xgb | validate | total (in the run) | process wall time | peak memory | bytes per site per round | per run (both ways) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in runs.items():
            one = first_run(r)
            if "timing_s" in one:
                t, c = one["timing_s"], one["communication"]
                strategy = head_strategy(one)
                lines.append(f"| {name} | {strategy} | {t['embed']:.0f} s | {t['head_rounds']:.0f} s | {c['rounds']} | {one['seconds_per_round']:.2f} s | "
                             f"{t['xgb']:.0f} s | {t.get('validate', 0):.0f} s | {t['total']:.0f} s | {one['wall_s']:.0f} s | "
                             f"{one['peak_rss_mb'] / 1000:.1f} GB | {c['bytes_per_site_per_round']:,} | {c['bytes_per_site_per_run']:,} |")
        widened = sorted(name for name, r in runs.items()
                         if first_run(r).get("communication", {}).get("bytes_per_site_per_round", 0) > 1.2e6)
        if widened:
            lines += ["", f"Rows {', '.join(widened)} were measured before a fix in head rounds: Flower's FedAdam (inside fedsgd) "
                      "returned float64 arrays, so the head went out at twice its float32 size. Since the fix every tensor keeps its "
                      "dtype and a round sends the float32 head (tests/test_simulation.py checks bytes = 4 x parameters)."]
        slow = sorted(name for name, r in runs.items()
                      if "3 heads" in head_strategy(r) and first_run(r).get("seconds_per_round", 0) > 1.0)
        if slow:
            lines += ["", f"Rows {', '.join(slow)} ran before two speed-ups of the head rounds that leave every result bit-identical "
                      "(the received head's validation counts ride on the training message; the server polls for replies from 5 ms "
                      "instead of every 0.1 s), and beside another benchmark on the 2 cores: their times are not today's."]
        first = next(first_run(r) for r in runs.values() if "error" not in r)
        lines += ["", "Process wall time includes Ray start-up, partitioning and (except `iid_timing`, `--no-reference`) the centralized "
                  "reference fit; `dirichlet` also trains the four leave-one-site-out federations (validate phase). Full model "
                  f"(backbones + head): {first.get('communication', {}).get('full_model_bytes', 0):,} bytes.", ""]
        timing, fusion = runs.get("iid_timing"), (central or {}).get("variants", {}).get("fusion")
        one_head = runs.get("iid_timing_1head")
        cold = bool(fusion and fusion.get("timing_s", {}).get("images_embedded_now"))
        if cold and timing:
            lines += [f"The centralized benchmark embedded {fusion['timing_s']['images_embedded_now']:,} images (a cold cache), so its "
                      "wall time is not comparable with a warm-cache federation: the back-to-back measurement "
                      "(`bench/fed_vs_central.py`, under Deployment below) gives the ratio.", ""]
        if timing and fusion and "wall_s" in fusion and "wall_s" in timing and not cold:
            lines += ["### Federated vs centralized wall time (same data, warm embedding cache)", "",
                      "| run | command | wall time | ratio to centralized |", "|---|---|---|---|",
                      f"| federated, 4 simulated sites ({head_strategy(timing)}) | `{portable(timing['command'])}` | {timing['wall_s']:.0f} s | "
                      f"**{timing['wall_s'] / fusion['wall_s']:.2f}** |"]
            if one_head and "wall_s" in one_head:
                lines.append(f"| federated, 4 simulated sites ({head_strategy(one_head)}) | `{portable(one_head['command'])}` | "
                             f"{one_head['wall_s']:.0f} s | **{one_head['wall_s'] / fusion['wall_s']:.2f}** |")
            lines += [f"| centralized | `{portable(fusion['command'])}` | {fusion['wall_s']:.0f} s | 1 |", "",
                      "The centralized command runs grouped 5-fold CV, 5 fits plus the scikit-learn comparison and a refit on all "
                      f"images; the federation trains one model ({timing['communication']['rounds']} rounds), federated XGBoost and the "
                      "local-only models." + (" Each round costs about the same whatever the number of heads, so three heads "
                                              "take about three times the head-round time of one." if "3 heads" in head_strategy(timing) else ""),
                      ""]
        d = runs.get("dirichlet")
        if d and d.get("cross_site"):
            lines += cross_site_table(d, "### Cross-site validation (Dirichlet 0.5, fold 0, random weights)")
    if dp:
        lines += ["## Cost of DP-SGD per epoch", "", "Command: `python bench/dp.py`", "",
                  f"Plain epoch {dp['plain_epoch_s']:.3f} s, DP epoch {dp['dp_epoch_s']:.3f} s: **{dp['dp_over_plain']}x** "
                  f"({dp['images']} images, batch {dp['batch_size']}, median of {dp['repeats']}; Opacus fast gradient clipping). "
                  f"Materialised per-sample gradients (Opacus hooks) cost {dp.get('hooks_over_plain', 'n/a')}x, a naive per-image "
                  f"backward loop {dp['naive_over_plain']}x.", ""]
    dp_e2e = load("dp_end_to_end")
    if dp_e2e:
        lines += dp_end_to_end_section(dp_e2e)
    dp_run = load("dp_run_mode")
    if dp_run:
        lines += dp_run_mode_section(dp_run)
    if ablation:
        lines += ablation_section(ablation)
    deployed, fed_vs_central = [d for d in (load("deployed"),) if d], load("walltime")
    if deployed or fed_vs_central:
        lines += deployment_section(deployed, fed_vs_central)
    if embed:
        lines += ["## Embedding throughput (the speed issue)", "", "Command: `python bench/embed.py --cache-dir CACHE_WITH_FP32_FEATURES`", "",
                  f"_{embed.get('provenance', '')}_", "",
                  "| path | images/s (pair, decode included) |", "|---|---|",
                  f"| naive: {embed['naive']} | {embed['naive_images_per_s']} |",
                  f"| default: bf16, channels-last, conv+BN folded, prefetch, batch 32, 224 px | {embed['default_images_per_s']} |", "",
                  f"Speedup {embed['speedup']}x; whole data set ({embed['full_dataset_images']} images) {embed['full_dataset_default_s']:.0f} s, "
                  f"peak {embed['peak_rss_mb']:.0f} MB; feature cosine vs fp32 >= {embed['feature_cosine_min']}; accuracy delta "
                  f"{embed['accuracy_delta']} points ({embed['accuracy_protocol']}).", "",
                  f"![embedding throughput]({plot_embed(embed)})", ""]
    if scale:
        lines += ["## Scale: simulated sites on this machine", "", "Command: `python bench/scale.py --cache-dir CACHE` "
                  f"({scale['rounds']} rounds of {scale.get('strategy', LEGACY)}, IID, classifier: {'head softmax (--xgb-mode none)' if scale['xgb_mode'] == 'none' else scale['xgb_mode'] + ' XGBoost'}, no reference, no LOSO)", "",
                  "| sites | group block | wall time | head seconds per round | peak memory (process tree) | accuracy | outcome |",
                  "|---|---|---|---|---|---|---|"]
        for r in scale["runs"]:
            outcome = "completed" if r["exit_code"] == 0 else f"refused: {r.get('error', 'exit ' + str(r['exit_code']))}"
            lines.append(f"| {r['sites']} | {r.get('group_block', 25)} | {r['wall_s']:.0f} s | {r.get('seconds_per_round', 'n/a')} | "
                         f"{r['peak_rss_mb'] / 1000:.1f} GB | {pct(r.get('accuracy'))} | {outcome} |")
        lines += ["", "With 25-file groups, 32 sites leave some sites fewer than 5 training images, and those sites refuse to send "
                  "feature sums (disclosure control); the 32-site row with 5-file groups shows the machinery at that scale.", ""]
        lines += ["", f"![scale]({plot_scale(scale)})", ""]
    lines += result_dates()
    (DOCS / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {DOCS / 'RESULTS.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
