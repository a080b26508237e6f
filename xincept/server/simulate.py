"""A whole federation on one machine: partition the data into sites and run Flower's simulation engine."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from xincept.common.atomic import write_json_atomic
from xincept.common.data import scan_site
from xincept.common.config import HeadConfig
from xincept.common.errors import SettingError
from xincept.common.fedconfig import FedSettings
from xincept.common.partition import parse_scheme, partition_groups, write_manifest

log = logging.getLogger(__name__)


def make_partitions(data: Path, n_sites: int, scheme: str, out: Path, settings: FedSettings,
                    classes: list[str] | None = None, site_policy: Any = None) -> tuple[list[str], list[str]]:
    """Write one manifest per simulated site (``out/site-N.csv``) and the policy every simulated site enforces
    (``out/policy.json``: ``site_policy``, or one made from ``settings``); returns (site names, class list)."""
    from xincept.common.learnable import require_site_splits, require_sites, require_two_classes

    kind, _ = parse_scheme(scheme)
    if kind == "folders":
        folders = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise SettingError(f"--partition folders: {data} holds no site folders (expected DIR/<site>/<class>/...)")
        scans = [scan_site(f, classes, group_block=settings.group_block, show_progress=False) for f in folders]
        classes = classes or sorted({c for s in scans for c in s.classes})
        scans = [scan_site(f, classes, group_block=settings.group_block, show_progress=False) for f in folders]
        from xincept.client.policy import valid_site_name

        names = [valid_site_name(f.name) for f in folders]
        require_two_classes([r for s in scans for r in s.records], classes, str(data))
        out.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(scans):
            write_manifest(out / f"site-{i}.csv", s.records, classes)
    else:
        site = scan_site(data, classes, group_block=settings.group_block, show_progress=True)
        classes = site.classes
        require_two_classes(site.records, classes, str(data))
        require_sites(n_sites, site.records, settings.group_block)
        parts = partition_groups(site.records, n_sites, scheme, len(classes), settings.seed)
        require_site_splits(parts, site.records, scheme, settings.test_fraction, settings.val_fraction, settings.seed,
                            settings.test_fold, settings.min_cell_count if settings.disclosure == "suppress" else 1)
        out.mkdir(parents=True, exist_ok=True)  # nothing is written for a refused run
        for i, idx in enumerate(parts):
            write_manifest(out / f"site-{i}.csv", [site.records[j] for j in idx], classes)
        names = [f"site-{i}" for i in range(n_sites)]
    write_json_atomic(out / "sites.json", {"names": names, "classes": classes, "scheme": scheme})
    write_json_atomic(out / "policy.json", (site_policy or simulated_policy(settings)).to_dict(), mode=0o600)
    return names, list(classes)


def simulated_policy(settings: FedSettings):
    """The policy every simulated site enforces: the simulation's own settings, so a simulated server that departs
    from them is refused exactly as a deployed site would refuse it (the operator owns both sides here)."""
    from xincept.client.policy import DEFAULT_LIFETIME, DEFAULT_PER_RUN, SitePolicy

    default = SitePolicy()
    return SitePolicy(require_dp=settings.dp_epsilon > 0, max_epsilon=max(settings.dp_epsilon, default.max_epsilon),
                      delta=max(settings.dp_delta, default.delta), lifetime_epsilon=max(settings.dp_epsilon, default.lifetime_epsilon),
                      min_cell_count=settings.min_cell_count, disclosure_modes=(settings.disclosure,),
                      max_disclosure_epsilon=max(settings.disclosure_epsilon, default.max_disclosure_epsilon),
                      allow_outside_paths=True,  # the partition manifests point into the original data folder
                      split_seed=settings.seed, test_fold=settings.test_fold, group_block=settings.group_block,
                      test_fraction=settings.test_fraction, val_fraction=settings.val_fraction,
                      queries_per_run=dict(DEFAULT_PER_RUN), queries_lifetime=dict(DEFAULT_LIFETIME))


def run_simulated_federation(data: Path | None, n_sites: int, scheme: str, settings: FedSettings, demo: bool = False,
                             cache_dir: Path | None = None, weights_dir: Path | None = None,
                             reference: bool = True, client_mods: list | None = None, site_policy: Any = None) -> dict[str, Any]:
    """Partition, simulate every site with Flower's simulation engine, and add a centralized reference.

    ``site_policy`` (a :class:`~xincept.client.policy.SitePolicy`) replaces the policy simulated sites derive
    from ``settings``: a rehearsal of a federation whose server departs from what some site allows.
    """
    from flwr.simulation import run_simulation

    from xincept.client.app import make_client_app
    from xincept.server.app import make_server_app

    out = Path(settings.out_dir)
    if demo:
        from xincept.common.synthetic import write_image_folder

        data = write_image_folder(out / "demo-data", per_class=24 * n_sites, size=96, ext=".png")
        settings = replace(settings, synthetic=True, group_block=1)
        log.warning("--demo: SYNTHETIC images generated in %s (not patient data)", data)
    if data is None:
        raise SettingError("give --data DIR (or --demo for a generated synthetic set)")
    part_dir = out / "partitions"
    if not settings.resume:  # new simulated hospitals: no split, query counts or privacy ledger from an earlier run here
        shutil.rmtree(part_dir / "state", ignore_errors=True)
        for ledger in part_dir.glob("privacy-*.json"):
            ledger.unlink()
    names, classes = make_partitions(Path(data), n_sites, scheme, part_dir, settings, site_policy=site_policy)
    n_sites = len(names)
    if cache_dir is not None:
        os.environ["XINCEPT_CACHE_DIR"] = str(cache_dir)
    if weights_dir is not None:
        os.environ["XINCEPT_WEIGHTS_DIR"] = str(weights_dir)
    settings = replace(settings, min_sites=n_sites)
    errors: list[BaseException] = []
    server_app = make_server_app(settings, classes=classes, errors=errors)
    client_app = make_client_app(part_dir, client_mods)
    cpus = os.cpu_count() or 1
    # histogram XGBoost needs every site in the communicator at once: one Ray actor per site (up to 8)
    per_site = cpus / min(n_sites, 8) if settings.xgb_mode == "histogram" else 1
    if settings.xgb_mode == "histogram" and n_sites > 8:
        raise SettingError(f"--sites {n_sites} with xgb-mode histogram: a simulation holds at most 8 sites online together; "
                           "use xgb-mode bagging for more")
    backend = {"client_resources": {"num_cpus": per_site, "num_gpus": 0.0},
               "init_args": {"num_cpus": cpus, "include_dashboard": False}}
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n_sites, backend_config=backend)
    if errors:
        raise errors[0]
    metrics_path = out / "metrics.json"
    if not metrics_path.is_file():
        raise RuntimeError(f"the simulation ended without writing {metrics_path}; see the log above")
    metrics = json.loads(metrics_path.read_text())
    metrics["partition"] = {"scheme": scheme, "sites": n_sites, "names": names, "seed": settings.seed}
    if reference:
        t0 = time.perf_counter()
        metrics["centralized_reference"] = centralized_reference(part_dir, names, classes, settings, cache_dir, weights_dir)
        metrics["centralized_reference"]["seconds"] = round(time.perf_counter() - t0, 2)
    write_json_atomic(metrics_path, metrics)
    return metrics


def centralized_reference(part_dir: Path, names: list[str], classes: list[str], settings: FedSettings,
                          cache_dir: Path | None, weights_dir: Path | None) -> dict[str, Any]:
    """The same protocol without federation: pool every site's train/val splits, score on every site's test split."""
    from xincept.client.task import load_local_site
    from xincept.common.metrics import classification_metrics, wilson_interval
    from xincept.common.model import fit_model, validation_choice

    locals_ = [load_local_site(names[i], str(part_dir), str(part_dir / f"site-{i}.csv"), tuple(classes), settings,
                               str(cache_dir) if cache_dir else None, str(weights_dir) if weights_dir else None, True)
               for i in range(len(names))]
    feats = [np.concatenate([loc.site.feats[b] for loc in locals_]) for b in range(len(locals_[0].site.feats))]
    y = np.concatenate([loc.site.y for loc in locals_])
    offsets = np.cumsum([0] + [len(loc.site.y) for loc in locals_])
    idx = {k: np.concatenate([loc.split[k] + off for loc, off in zip(locals_, offsets)]) for k in ("train", "val", "test")}
    cfg = settings.run_config(cache_dir, weights_dir)
    cfg = replace(cfg, head=replace(cfg.head, lr=HeadConfig().lr))  # exactly what `xincept-server centralized` trains
    model = fit_model(feats, None, y, idx["train"], idx["val"], classes, cfg)
    test_feats, val_feats = [f[idx["test"]] for f in feats], [f[idx["val"]] for f in feats]
    out = {}
    for name, proba in (("head_softmax", model.head_proba(test_feats)), ("xgboost", model.predict_proba(test_feats))):
        m = classification_metrics(y[idx["test"]], proba, classes)
        m["ci95"] = {"accuracy": wilson_interval(int(np.trace(np.asarray(m["confusion"]))), m["n"])}
        out[name] = m
    if settings.select_classifier == "best-val":  # the federation's rule: the better validation accuracy, ties XGBoost
        chosen, val_acc = validation_choice(model, val_feats, y[idx["val"]])
        out["selected"] = {**out[chosen], "classifier": chosen, "val_accuracy": val_acc}
    fed_model = Path(settings.out_dir) / "model"
    if (fed_model / "xgb.json").is_file():  # centralized XGBoost on the federated head's own embeddings
        from xincept.common.bundle import read_bundle
        from xincept.common.classifiers import fit_xgb, xgb_predict_proba
        fed, _ = read_bundle(fed_model)
        emb = fed.xgb_inputs(feats)
        booster = fit_xgb(emb[idx["train"]], y[idx["train"]], emb[idx["val"]], y[idx["val"]], len(classes), settings.xgb_config())
        proba = xgb_predict_proba(booster, emb[idx["test"]])
        m = classification_metrics(y[idx["test"]], proba, classes)
        m["ci95"] = {"accuracy": wilson_interval(int(np.trace(np.asarray(m["confusion"]))), m["n"])}
        m["agreement_with_federated"] = float((proba.argmax(1) == fed.predict_proba(test_feats).argmax(1)).mean())
        out["xgboost_on_federated_embeddings"] = m
    out["protocol"] = "pooled site train/val splits, scored on the union of the sites' test splits (same splits as the federation)"
    return out
