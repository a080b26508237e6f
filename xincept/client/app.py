"""The Flower ClientApp: converts records and calls the site's local computations (xincept.client.task)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from xincept.client import secure_round
from xincept.client.mods import make_audit_mod, make_policy_mod
from xincept.client.policy import PolicyViolation
from xincept.client.site_facts import SiteFacts, site_facts
from xincept.client.task import (LocalSite, join_info, joining_site, load_local_site, local_evaluate, local_only_counts, local_train,
                                 train_feature_sums, xgb_bagging_round, xgb_histogram)
from xincept.common.errors import SettingError
from xincept.common.fedconfig import FedSettings
from xincept.common.versions import check_pushed_app
from xincept.head_message import head_arrays, packed_vector, state_from

log = logging.getLogger(__name__)


def _local(msg: Message, context: Context, partition_dir: Path | None, load=None) -> tuple[LocalSite, SiteFacts]:
    """The site's data and split, loaded with the settings the policy mod has already checked (``load``: the site's
    embedded data, :func:`load_local_site`, or its facts alone, :func:`joining_site`)."""
    cfg = msg.content["config"]
    settings = FedSettings.from_flat(dict(cfg))
    classes = tuple(cfg["classes"]) if "classes" in cfg and cfg["classes"] else None
    facts = site_facts(context, partition_dir)
    check_pushed_app(str(cfg["xincept-version"]) if "xincept-version" in cfg else None,
                     str(cfg["code-hash"]) if "code-hash" in cfg else None, facts.name)
    nc = context.node_config
    if nc.get("classes"):  # the site's own class order (`join --classes`): the server's must be the same
        own = tuple(c for c in str(nc["classes"]).split(",") if c)
        if classes is not None and classes != own:
            raise PolicyViolation("classes", f"the server's class order {list(classes)} differs from this site's --classes "
                                  f"{list(own)}: every site and the server must use one order (labels are class indices)")
        classes = own
    local = (load or load_local_site)(facts.name, facts.data_dir, facts.manifest, classes, settings,
                            str(nc["cache-dir"]) if nc.get("cache-dir") else None,
                            str(nc["weights-dir"]) if nc.get("weights-dir") else None, facts.allow_outside_paths)
    return local, facts


def _xgb_tls_dir(cfg, context: Context, facts: SiteFacts) -> Path | None:
    """Certificates for XGBoost's mutual TLS: always the site's own (node config tls-dir).

    Only a simulated site (whose certificates the simulation generated) takes the folder the message names.
    A deployed site without its own TLS material refuses the histogram phase.
    """
    if context.node_config.get("tls-dir"):
        folder = Path(str(context.node_config["tls-dir"]))
    elif facts.simulated and cfg.get("xgb-tls-dir"):
        folder = Path(str(cfg["xgb-tls-dir"])) / "sites" / facts.name
    elif facts.simulated:
        return None  # an insecure simulation (the server ran without TLS)
    else:
        raise PolicyViolation("xgb-tls", "this site joins the histogram phase only over mutual TLS with its own certificate: "
                              "restart `xincept-client join` with --tls-dir DIR holding ca.crt, client.pem and client.key "
                              "(from `xincept-server keys --site NAME`)")
    if not (folder / "client.pem").is_file():
        raise PolicyViolation("xgb-tls", "the federated XGBoost phase needs this site's client certificate (client.pem, "
                              "client.key, ca.crt in its --tls-dir)")
    return folder


SECAGG_RECORD = "secagg"  # in the site's node context: its part of the current secure round


def _secagg_part(context: Context, cfg, settings: FedSettings):
    """This site's part of the secure round ``cfg`` names, from its node context (refused for another round)."""
    from xincept.common.secagg import SiteSecAgg

    kept = context.state.config_records.get(SECAGG_RECORD)
    round_id = _secagg_round(cfg)
    if kept is None or kept.get("round") != round_id:
        raise PolicyViolation("secure-aggregation", f"no keys of secure round {round_id} at this site: the round must start "
                              "with its key exchange")
    nodes = secure_round.nodes_of(cfg["secagg-nodes"])
    return SiteSecAgg.from_flat({k: v for k, v in kept.items() if k != "round"}, settings.secagg_config(len(nodes)))


def _secagg_round(cfg) -> str:
    return f"{cfg['server-round']}.{cfg.get('member', 0)}"


def _keep_secagg(context: Context, cfg, site) -> None:
    context.state[SECAGG_RECORD] = ConfigRecord({**site.to_flat(), "round": _secagg_round(cfg)})


def _secagg_step(msg: Message, context: Context, step) -> Message:
    """A step of a secure round that answers with shares: this site's part from its context, ``step(site, nodes,
    cfg)``, the part kept again (which secrets it has revealed), the shares sent."""
    cfg = msg.content["config"]
    site = _secagg_part(context, cfg, FedSettings.from_flat(dict(cfg)))
    shares = step(site, secure_round.nodes_of(cfg["secagg-nodes"]), cfg)
    _keep_secagg(context, cfg, site)
    return Message(RecordDict({"shares": ConfigRecord(shares)}), reply_to=msg)


def make_client_app(partition_dir: Path | None = None, extra_mods: list | None = None) -> ClientApp:
    """A ClientApp; ``partition_dir`` holds simulated sites' manifests (site-N.csv) in simulation.

    The audit mod runs outermost, so it checks and records each reply exactly as it leaves (after
    ``extra_mods``); the policy mod runs innermost, so no handler sees a message the site's policy refuses.
    """
    app = ClientApp(mods=[make_audit_mod(partition_dir), *(extra_mods or []), make_policy_mod(partition_dir)])

    @app.query("join")
    def join(msg: Message, context: Context) -> Message:
        info = join_info(_local(msg, context, partition_dir, load=joining_site)[0])  # nothing embedded yet
        tls_dir = context.node_config.get("tls-dir")
        if tls_dir and (Path(str(tls_dir)) / "client.pem").is_file():  # which certificate it will present (public)
            from xincept.common.tls import cert_fingerprint

            info["xgb-cert"] = cert_fingerprint(Path(str(tls_dir)) / "client.pem")
        counts = MetricRecord({"counts": info.pop("counts"), "n-train": info.pop("n_train"), "n-val": info.pop("n_val"),
                               "n-test": info.pop("n_test"), "n-groups": info.pop("n_groups"),
                               "backbone_bytes": info.pop("backbone_bytes")})
        return Message(RecordDict({"info": ConfigRecord(info), "metrics": counts}), reply_to=msg)

    @app.query("embed")
    def embed(msg: Message, context: Context) -> Message:
        local, _ = _local(msg, context, partition_dir)
        if local.settings.dp_mode == "whole-model":  # embedded here, nothing about the images leaves: no sums, no counts
            return Message(RecordDict({"sums": ArrayRecord(), "metrics": MetricRecord(
                {"embedded-now": -1, "seconds": float(local.site.embed_seconds), "num-examples": -1})}), reply_to=msg)
        sums = train_feature_sums(local)
        arrays = ArrayRecord({f"{i}.{k}": Array(np.ascontiguousarray(v)) for i, s in enumerate(sums) for k, v in s.items()})
        metrics = MetricRecord({"embedded-now": int(local.site.embeddings.computed), "seconds": float(local.site.embed_seconds),
                                "num-examples": int(len(local.split["train"]))})
        return Message(RecordDict({"sums": arrays, "metrics": metrics}), reply_to=msg)

    def _dp_reply(msg: Message, context: Context, name: str, key: str, release) -> Message:
        """Whole-model DP: ``release(local, facts, share)`` gives this site's noisy sum and spent budget; it leaves in the
        clear (record ``name``), or masked for secure aggregation with this site's share of the noise."""
        from xincept.client import whole_model_dp

        local, facts = _local(msg, context, partition_dir)
        cfg = msg.content["config"]
        if not local.settings.secure_aggregation:
            value, spent = release(local, facts, 1.0)
            return Message(RecordDict({name: ArrayRecord({key: Array(value)}), "metrics": MetricRecord(spent)}), reply_to=msg)
        nodes = secure_round.nodes_of(cfg["secagg-nodes"])
        site = _secagg_part(context, cfg, local.settings)
        value, spent = release(local, facts, whole_model_dp.noise_share(local.settings, len(nodes)))
        masked = secure_round.masked_vector(site, nodes, context.node_id, dict(msg.content["inbox"]), value)
        _keep_secagg(context, cfg, site)
        return Message(RecordDict({"masked": ArrayRecord({"update": Array(masked)}), "metrics": MetricRecord(spent)}),
                       reply_to=msg)

    @app.query("dp_stats")
    def dp_stats(msg: Message, context: Context) -> Message:
        """Whole-model DP, once: the noisy feature sum and class counts of the scaled training features."""
        from xincept.client import whole_model_dp

        return _dp_reply(msg, context, "stats", "sums", lambda local, facts, share: whole_model_dp.feature_stats(
            local, facts.ledger, facts.policy.lifetime_epsilon, share))

    @app.train("dp_step")
    def dp_step(msg: Message, context: Context) -> Message:
        """Whole-model DP, every step: the noisy clipped gradient sum of the linear head at the server's weights."""
        from xincept.client import whole_model_dp

        arrays = msg.content["arrays"]
        return _dp_reply(msg, context, "gradient", "sum", lambda local, facts, share: whole_model_dp.gradient(
            local, arrays["w"].numpy(), arrays["mean"].numpy(), facts.ledger, facts.policy.lifetime_epsilon, share))

    @app.train("head")
    def train(msg: Message, context: Context) -> Message:
        local, facts = _local(msg, context, partition_dir)
        state = state_from(msg.content)
        cfg = msg.content["config"]
        content = RecordDict()
        if cfg.get("evaluate-split"):  # the received head's counts on a split first: saves the server a message per round
            content["val"] = MetricRecord(local_evaluate(local, state, str(cfg["evaluate-split"])))
        new_state, metrics = local_train(local, state, int(cfg["server-round"]), facts.ledger, member=int(cfg.get("member", 0)),
                                         lifetime_epsilon=facts.policy.lifetime_epsilon)
        # packed in the order the server sent: the reply mirrors the request (xincept.head_message)
        trained = head_arrays(new_state, list(state))
        if local.settings.secure_aggregation:  # only the masked weighted update leaves, never the head itself
            site = _secagg_part(context, cfg, local.settings)
            masked = secure_round.masked_update(site, secure_round.nodes_of(cfg["secagg-nodes"]), context.node_id,
                                                dict(msg.content["inbox"]), packed_vector(msg.content["arrays"]),
                                                packed_vector(trained), int(metrics["num-examples"]), int(cfg["secagg-total"]))
            _keep_secagg(context, cfg, site)
            content["masked"] = ArrayRecord({"update": Array(masked)})
            content["metrics"] = MetricRecord({k: v for k, v in metrics.items() if k != "train-loss"})  # a per-site number
            return Message(content, reply_to=msg)
        content["arrays"], content["metrics"] = trained, MetricRecord(metrics)
        return Message(content, reply_to=msg)

    @app.query("secagg_keys")
    def secagg_keys(msg: Message, context: Context) -> Message:
        """Secure round, step 1: this round's public keys (the private ones stay in the site's node context)."""
        cfg = msg.content["config"]
        site, keys = secure_round.start(FedSettings.from_flat(dict(cfg)), secure_round.nodes_of(cfg["secagg-nodes"]),
                                        context.node_id)
        _keep_secagg(context, cfg, site)
        return Message(RecordDict({"keys": ConfigRecord(keys)}), reply_to=msg)

    @app.query("secagg_shares")
    def secagg_shares(msg: Message, context: Context) -> Message:
        """Secure round, step 2: Shamir shares of this site's secrets, each encrypted for the site it is meant for."""
        return _secagg_step(msg, context, lambda site, nodes, cfg: secure_round.share(site, nodes, dict(msg.content["publics"])))

    @app.query("secagg_unmask")
    def secagg_unmask(msg: Message, context: Context) -> Message:
        """Secure round, step 4: shares that remove the survivors' self masks and the dropped sites' pair masks."""
        return _secagg_step(msg, context, lambda site, nodes, cfg: secure_round.unmask(
            site, nodes, secure_round.nodes_of(cfg.get("secagg-survivors", "")),
            secure_round.nodes_of(cfg.get("secagg-dropped", ""))))

    @app.train("xgb")
    def train_xgb(msg: Message, context: Context) -> Message:
        """Histogram mode: join XGBoost's federated communicator; every site ends with the same booster."""
        local, facts = _local(msg, context, partition_dir)
        cfg = msg.content["config"]
        tls = _xgb_tls_dir(cfg, context, facts)
        raw = xgb_histogram(local, state_from(msg.content), str(cfg["xgb-address"]), int(cfg["xgb-rank"]),
                            int(cfg["xgb-world"]), tls)
        reply = {"num-examples": int(len(local.split["train"]))}
        content = RecordDict({"metrics": MetricRecord(reply)})
        if int(cfg["xgb-rank"]) == 0:  # one copy of the (identical) booster is enough
            content["booster"] = ConfigRecord({"json": raw})
        return Message(content, reply_to=msg)

    @app.train("xgb_bagging")
    def train_xgb_bag(msg: Message, context: Context) -> Message:
        """Bagging mode: one local boosting round on top of the global booster."""
        local, _ = _local(msg, context, partition_dir)
        cfg = msg.content["config"]
        global_raw = bytes(cfg["booster"]) if "booster" in cfg and cfg["booster"] else None
        raw = xgb_bagging_round(local, state_from(msg.content), global_raw)
        return Message(RecordDict({"booster": ConfigRecord({"json": raw}),
                                   "metrics": MetricRecord({"num-examples": int(len(local.split["train"]))})}), reply_to=msg)

    @app.evaluate("head")
    def evaluate(msg: Message, context: Context) -> Message:
        local, _ = _local(msg, context, partition_dir)
        state = state_from(msg.content)
        cfg = msg.content["config"]
        split = str(cfg.get("split", "val"))
        if local.settings.dp_mode == "whole-model":  # two noisy counts, in the site's ledger
            from xincept.client import whole_model_dp

            facts = site_facts(context, partition_dir)
            counts = whole_model_dp.test_counts(local, state, split, facts.ledger, facts.policy.lifetime_epsilon)
            return Message(RecordDict({"metrics": MetricRecord(counts)}), reply_to=msg)
        booster = bytes(cfg["booster"]) if "booster" in cfg and cfg["booster"] else None
        return Message(RecordDict({"metrics": MetricRecord(local_evaluate(local, state, split, booster))}), reply_to=msg)

    @app.train("local")
    def train_local(msg: Message, context: Context) -> Message:
        """A model from this site's images alone, scored here; only its counts leave."""
        return Message(RecordDict({"metrics": MetricRecord(local_only_counts(_local(msg, context, partition_dir)[0]))}), reply_to=msg)

    return app


app = make_client_app()
