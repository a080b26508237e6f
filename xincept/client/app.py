"""The Flower ClientApp: converts records and calls the site's local computations (xincept.client.task)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from xincept.client.audit import audit_mod
from xincept.client.task import (LocalSite, join_info, load_local_site, local_evaluate, local_only_counts, local_train,
                                 train_feature_sums, xgb_bagging_round, xgb_histogram)
from xincept.common.errors import SettingError
from xincept.common.fedconfig import FedSettings
from xincept.common.versions import check_pushed_app

log = logging.getLogger(__name__)


def _site_of(context: Context, partition_dir: Path | None) -> tuple[str, str, str | None]:
    """(site name, data folder, manifest) from the SuperNode's node config, or from a simulated partition."""
    nc = context.node_config
    if partition_dir is not None and "partition-id" in nc:
        pid = int(nc["partition-id"])
        names = json.loads((partition_dir / "sites.json").read_text())["names"]
        return names[pid], str(partition_dir), str(partition_dir / f"site-{pid}.csv")
    if "data-dir" not in nc:
        raise SettingError("node config lacks data-dir: start the SuperNode with `xincept-client join --site NAME --data DIR`")
    return str(nc.get("site", f"node-{context.node_id}")), str(nc["data-dir"]), (str(nc["manifest"]) if nc.get("manifest") else None)


def _local(msg: Message, context: Context, partition_dir: Path | None) -> LocalSite:
    cfg = msg.content["config"]
    settings = FedSettings.from_flat(dict(cfg))
    classes = tuple(cfg["classes"]) if "classes" in cfg and cfg["classes"] else None
    name, data_dir, manifest = _site_of(context, partition_dir)
    check_pushed_app(str(cfg["xincept-version"]) if "xincept-version" in cfg else None,
                     str(cfg["code-hash"]) if "code-hash" in cfg else None, name)
    nc = context.node_config
    return load_local_site(name, data_dir, manifest, classes, settings,
                           str(nc["cache-dir"]) if nc.get("cache-dir") else None,
                           str(nc["weights-dir"]) if nc.get("weights-dir") else None)


def _xgb_tls_dir(cfg, context: Context) -> Path | None:
    """Certificates for XGBoost's mutual TLS: the site's own (node config tls-dir), or the simulation's."""
    if context.node_config.get("tls-dir"):
        return Path(str(context.node_config["tls-dir"]))
    if cfg.get("xgb-tls-dir"):
        folder = Path(str(cfg["xgb-tls-dir"]))  # a simulation, or a site on the server's machine
        if not (folder / "client.pem").is_file():
            raise SettingError("the federated XGBoost phase needs this site's client certificate: restart "
                               "`xincept-client join` with --tls-dir DIR holding ca.crt, client.pem and client.key")
        return folder
    return None


def _ledger(context: Context, local: LocalSite, partition_dir: Path | None) -> Path | None:
    """This site's privacy ledger: node config privacy-ledger, OUT/partitions/privacy-<site>.json in simulation,
    or privacy-ledger.json in the site's cache folder (None: the default cache folder)."""
    nc = context.node_config
    if nc.get("privacy-ledger"):
        return Path(str(nc["privacy-ledger"]))
    if partition_dir is not None and "partition-id" in nc:
        return partition_dir / f"privacy-{local.name}.json"
    if nc.get("cache-dir"):
        return Path(str(nc["cache-dir"])) / "privacy-ledger.json"
    return None


def make_client_app(partition_dir: Path | None = None, extra_mods: list | None = None) -> ClientApp:
    """A ClientApp; ``partition_dir`` holds simulated sites' manifests (site-N.csv) in simulation.

    The audit mod runs outermost, so it records each reply exactly as it leaves (after ``extra_mods``).
    """
    app = ClientApp(mods=[audit_mod, *(extra_mods or [])])

    @app.query("join")
    def join(msg: Message, context: Context) -> Message:
        info = join_info(_local(msg, context, partition_dir))
        counts = MetricRecord({"counts": info.pop("counts"), "n-train": info.pop("n_train"), "n-val": info.pop("n_val"),
                               "n-test": info.pop("n_test"), "n-groups": info.pop("n_groups"),
                               "backbone_bytes": info.pop("backbone_bytes")})
        return Message(RecordDict({"info": ConfigRecord(info), "metrics": counts}), reply_to=msg)

    @app.query("embed")
    def embed(msg: Message, context: Context) -> Message:
        local = _local(msg, context, partition_dir)
        sums = train_feature_sums(local)
        arrays = ArrayRecord({f"{i}.{k}": Array(np.ascontiguousarray(v)) for i, s in enumerate(sums) for k, v in s.items()})
        metrics = MetricRecord({"embedded-now": int(local.site.embeddings.computed), "seconds": float(local.site.embed_seconds),
                                "num-examples": int(len(local.split["train"]))})
        return Message(RecordDict({"sums": arrays, "metrics": metrics}), reply_to=msg)

    @app.train("head")
    def train(msg: Message, context: Context) -> Message:
        local = _local(msg, context, partition_dir)
        state = msg.content["arrays"].to_torch_state_dict()
        cfg = msg.content["config"]
        content = RecordDict()
        if cfg.get("evaluate-split"):  # the received head's counts on a split first: saves the server a message per round
            content["val"] = MetricRecord(local_evaluate(local, state, str(cfg["evaluate-split"])))
        new_state, metrics = local_train(local, state, int(cfg["server-round"]), _ledger(context, local, partition_dir),
                                         member=int(cfg.get("member", 0)))
        content["arrays"], content["metrics"] = ArrayRecord(new_state), MetricRecord(metrics)
        return Message(content, reply_to=msg)

    @app.train("xgb")
    def train_xgb(msg: Message, context: Context) -> Message:
        """Histogram mode: join XGBoost's federated communicator; every site ends with the same booster."""
        local = _local(msg, context, partition_dir)
        cfg = msg.content["config"]
        tls = _xgb_tls_dir(cfg, context)
        raw = xgb_histogram(local, msg.content["arrays"].to_torch_state_dict(), str(cfg["xgb-address"]), int(cfg["xgb-rank"]),
                            int(cfg["xgb-world"]), tls)
        reply = {"num-examples": int(len(local.split["train"]))}
        content = RecordDict({"metrics": MetricRecord(reply)})
        if int(cfg["xgb-rank"]) == 0:  # one copy of the (identical) booster is enough
            content["booster"] = ConfigRecord({"json": raw})
        return Message(content, reply_to=msg)

    @app.train("xgb_bagging")
    def train_xgb_bag(msg: Message, context: Context) -> Message:
        """Bagging mode: one local boosting round on top of the global booster."""
        local = _local(msg, context, partition_dir)
        cfg = msg.content["config"]
        global_raw = bytes(cfg["booster"]) if "booster" in cfg and cfg["booster"] else None
        raw = xgb_bagging_round(local, msg.content["arrays"].to_torch_state_dict(), global_raw)
        return Message(RecordDict({"booster": ConfigRecord({"json": raw}),
                                   "metrics": MetricRecord({"num-examples": int(len(local.split["train"]))})}), reply_to=msg)

    @app.evaluate("head")
    def evaluate(msg: Message, context: Context) -> Message:
        local = _local(msg, context, partition_dir)
        state = msg.content["arrays"].to_torch_state_dict()
        cfg = msg.content["config"]
        split = str(cfg.get("split", "val"))
        booster = bytes(cfg["booster"]) if "booster" in cfg and cfg["booster"] else None
        return Message(RecordDict({"metrics": MetricRecord(local_evaluate(local, state, split, booster))}), reply_to=msg)

    @app.train("local")
    def train_local(msg: Message, context: Context) -> Message:
        """A model from this site's images alone, scored here; only its counts leave."""
        return Message(RecordDict({"metrics": MetricRecord(local_only_counts(_local(msg, context, partition_dir)))}), reply_to=msg)

    return app


app = make_client_app()
