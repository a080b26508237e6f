"""An audit of every message this site sends: what it holds, checked against what may leave.

`audit_mod` is a Flower ClientApp mod: it sees each reply before it leaves the site and appends one
JSON line per message to the audit log (node config ``audit-log`` or ``XINCEPT_AUDIT_LOG``): the message
type and, per record, every key with its kind, dtype and shape (never the values). ``check_entry``
compares an entry with the allow-list below, so a site (or its ethics board) can prove from the log
that only head weights, XGBoost models, feature sums over many images and aggregate counts left.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord

COUNT_KEYS = {"confusion", "n", "correct", "suppressed", "loss-sum", "roc-pos", "roc-neg", "rel-count",
              "rel-correct", "rel-conf-sum", "bins"}
ALLOWED: dict[str, dict[str, set[str] | None]] = {  # message type -> record name -> allowed keys (None: checked apart)
    "query.join": {"info": None, "metrics": {"counts", "n-train", "n-val", "n-test", "n-groups", "backbone_bytes"}},
    "query.embed": {"sums": None, "metrics": {"embedded-now", "seconds", "num-examples"}},
    "train.head": {"arrays": None, "metrics": {"num-examples", "train-loss", "dp-epsilon", "dp-delta", "dp-noise_multiplier",
                                               "dp-max_grad_norm", "dp-steps"},
                   "val": COUNT_KEYS},  # the received head's validation counts, as evaluate.head sends them
    "train.xgb": {"metrics": {"num-examples"}, "booster": {"json"}},
    "train.xgb_bagging": {"metrics": {"num-examples"}, "booster": {"json"}},
    "evaluate.head": {"metrics": COUNT_KEYS},
    "train.local": {"metrics": COUNT_KEYS},
}
INFO_KEYS = {"site", "version", "fingerprints", "classes", "backbones", "weights", "input-size", "embedding-path"}
IMAGE_NAME = re.compile(r"\.(jpe?g|png|bmp|tiff?|dcm)\b", re.IGNORECASE)
MAX_METRIC_LIST = 256  # k*k confusion or k*bins histograms; never one value per image


def describe(msg: Message) -> dict[str, Any]:
    """Every record and key of a message, with kinds and shapes (no values, except short strings of ConfigRecords)."""
    records: dict[str, Any] = {}
    for name, record in msg.content.items():
        if isinstance(record, ArrayRecord):
            records[name] = {"kind": "arrays", "keys": {k: {"dtype": a.dtype, "shape": list(a.shape)} for k, a in record.items()}}
        elif isinstance(record, MetricRecord):
            records[name] = {"kind": "metrics", "keys": {k: {"len": len(v) if isinstance(v, list) else None} for k, v in record.items()}}
        elif isinstance(record, ConfigRecord):
            keys = {}
            for k, v in record.items():
                keys[k] = {"type": type(v).__name__, "len": len(v) if isinstance(v, (list, str, bytes)) else None,
                           "image_names": bool(IMAGE_NAME.search(v if isinstance(v, str) else str(v))) if not isinstance(v, bytes) else False}
            records[name] = {"kind": "config", "keys": keys}
    return {"time": time.time(), "message_type": msg.metadata.message_type, "records": records}


def check_entry(entry: dict[str, Any], head_keys: set[str] | None = None) -> list[str]:
    """What in one audit entry is not allowed to leave a site (empty: all allowed)."""
    problems: list[str] = []
    kind = entry["message_type"]
    allowed = ALLOWED.get(kind)
    if allowed is None:
        return [f"{kind}: a message type outside the allow-list"]
    for name, rec in entry["records"].items():
        if name not in allowed:
            problems.append(f"{kind}: record {name!r} is not allowed")
            continue
        keys = set(rec["keys"])
        ok = allowed[name]
        if ok is not None and not keys <= ok:
            problems.append(f"{kind}/{name}: keys {sorted(keys - ok)} are not allowed")
        if rec["kind"] == "metrics":
            long = [k for k, v in rec["keys"].items() if (v["len"] or 0) > MAX_METRIC_LIST]
            if long:
                problems.append(f"{kind}/{name}: lists {long} are long enough to be per-image values")
        if rec["kind"] == "config":
            named = [k for k, v in rec["keys"].items() if v.get("image_names")]
            if named:
                problems.append(f"{kind}/{name}: {named} mention image file names")
            if name == "info" and not keys <= INFO_KEYS:
                problems.append(f"{kind}/info: keys {sorted(keys - INFO_KEYS)} are not allowed")
        if name == "arrays" and head_keys is not None and keys != head_keys:
            problems.append(f"{kind}/arrays: keys differ from the fused head's parameters")
        if name == "sums" and not all(re.fullmatch(r"\d+\.(n|sum|sumsq)", k) for k in keys):
            problems.append(f"{kind}/sums: only per-feature counts, sums and sums of squares are allowed")
    return problems


def _log_path(context: Context) -> Path | None:
    value = context.node_config.get("audit-log") or os.environ.get("XINCEPT_AUDIT_LOG")
    return Path(str(value)) if value else None


def audit_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Record what each reply holds before it leaves this site."""
    reply = call_next(msg, context)
    path = _log_path(context)
    if path is not None and not reply.has_error():
        entry = describe(reply)
        entry["node_id"] = context.node_id
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:  # one short line per message; appends are atomic enough for one writer per site
            fh.write(json.dumps(entry) + "\n")
    return reply
