"""An audit of every message this site sends: what it holds, checked against what may leave.

``reply_problems`` checks a reply against the exact schema of its message type (records, keys, list
lengths, array names, dtypes and shapes); the ClientApp's audit mod (:mod:`xincept.client.mods`) runs it
on every reply and blocks one that fails. The audit log (on by default, in the site's state folder) holds
one JSON line per message: the message type and, per record, every key with its kind, dtype and shape
(never the values), or the rule a refused message broke. ``check_entry`` compares a logged entry with the
allow-list below, so a site (or its ethics board) can prove from the log that only head weights, XGBoost
models, feature sums over many images and aggregate counts left.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Callable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from xincept.common.strict_json import dumps

COUNT_KEYS = {"confusion", "n", "correct", "suppressed", "class-total", "pred-total", "loss-sum", "roc-pos", "roc-neg",
              "rel-count", "rel-correct", "rel-conf-sum", "bins"}
ALLOWED: dict[str, dict[str, set[str] | None]] = {  # message type -> record name -> allowed keys (None: checked apart)
    "query.join": {"info": None, "metrics": {"counts", "n-train", "n-val", "n-test", "n-groups", "backbone_bytes"}},
    "query.embed": {"sums": None, "metrics": {"embedded-now", "seconds", "num-examples"}},
    "train.head": {"arrays": None, "metrics": {"num-examples", "train-loss", "dp-epsilon", "dp-delta", "dp-noise_multiplier",
                                               "dp-max_grad_norm", "dp-steps"},
                   "val": COUNT_KEYS,  # the received head's validation counts, as evaluate.head sends them
                   "masked": {"update"}},  # secure aggregation: the weighted update, masked (uniform uint32)
    # secure aggregation (xincept.common.secagg): public keys, shares encrypted for other sites, unmasking shares
    "query.secagg_keys": {"keys": {"c", "s"}},
    "query.secagg_shares": {"shares": None},
    "query.secagg_unmask": {"shares": None},
    "train.xgb": {"metrics": {"num-examples"}, "booster": {"json"}},
    "train.xgb_bagging": {"metrics": {"num-examples"}, "booster": {"json"}},
    "evaluate.head": {"metrics": COUNT_KEYS | {"dp-epsilon", "dp-delta"}},
    # whole-model DP (xincept.client.whole_model_dp): a noisy feature sum and class counts once, a noisy gradient sum per step
    # (under secure aggregation the sum leaves masked instead: record masked, key update)
    "query.dp_stats": {"stats": {"sums"}, "metrics": {"dp-epsilon", "dp-delta"}, "masked": {"update"}},
    "train.dp_step": {"gradient": {"sum"}, "metrics": {"dp-epsilon", "dp-delta"}, "masked": {"update"}},
    "train.local": {"metrics": COUNT_KEYS},
}
INFO_KEYS = {"site", "version", "fingerprints", "classes", "backbones", "weights", "input-size", "embedding-path", "xgb-cert"}
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


REQUIRED: dict[str, set[str]] = {  # records every reply of a type must hold
    "query.join": {"info", "metrics"}, "query.embed": {"sums", "metrics"}, "train.head": {"arrays", "metrics"},
    "train.xgb": {"metrics"}, "train.xgb_bagging": {"booster", "metrics"}, "evaluate.head": {"metrics"},
    "train.local": {"metrics"}, "query.secagg_keys": {"keys"}, "query.secagg_shares": {"shares"},
    "query.secagg_unmask": {"shares"}, "query.dp_stats": {"stats", "metrics"}, "train.dp_step": {"gradient", "metrics"},
}
MASKED_INSTEAD_OF = {"train.head": "arrays", "query.dp_stats": "stats", "train.dp_step": "gradient"}
WHOLE_MODEL_COUNTS = {"confusion", "n", "correct", "suppressed", "class-total", "pred-total", "dp-epsilon", "dp-delta"}
MAX_BINS = 100


def _list_length(key: str, k: int | None, bins: int | None) -> int | None:
    """The exact length a metric list must have (None: the key must be a single number)."""
    if k is None:
        return None
    lengths = {"counts": k, "confusion": k * k, "class-total": k, "pred-total": k}
    if bins is not None:
        lengths.update({"roc-pos": k * bins, "roc-neg": k * bins, "rel-count": bins, "rel-correct": bins, "rel-conf-sum": bins})
    return lengths.get(key)


def _classes(request: Message, reply: Message) -> int | None:
    cfg = request.content.config_records.get("config")
    if cfg is not None and cfg.get("classes"):
        return len(list(cfg["classes"]))
    info = reply.content.config_records.get("info")
    if info is not None and isinstance(info.get("classes"), list):
        return len(info["classes"])
    return None


def reply_problems(request: Message, reply: Message) -> list[str]:
    """Where ``reply`` departs from the exact schema of a reply to ``request``: message type, records, keys,
    list lengths (k classes, bins), array names, dtypes and shapes. Empty: the reply may leave."""
    kind = request.metadata.message_type
    entry = describe(reply)
    entry["message_type"] = kind
    problems = check_entry(entry)
    if problems or kind not in REQUIRED:
        return problems or [f"{kind}: a message type outside the allow-list"]
    present = set(reply.content.keys())
    wants_val = kind == "train.head" and bool(request.content.config_records["config"].get("evaluate-split"))
    clear = MASKED_INSTEAD_OF.get(kind)  # the record a secure reply holds masked instead
    secure = clear is not None and bool(request.content.config_records["config"].get("secure-aggregation"))
    required = (REQUIRED[kind] - {clear}) | {"masked"} if secure else REQUIRED[kind]
    missing = required - present
    if secure and clear in present:
        problems.append(f"{kind}: an unmasked update under secure aggregation")
    if not secure and "masked" in present:
        problems.append(f"{kind}: a masked update the server did not ask for")
    if missing:
        problems.append(f"{kind}: record(s) {sorted(missing)} missing")
    if kind == "train.head" and ("val" in present) != wants_val:
        problems.append(f"{kind}: a val record only when the server asked for the received head's counts")
    k = _classes(request, reply)
    for name, rec in reply.content.metric_records.items():
        bins = rec.get("bins")
        if bins is not None and (isinstance(bins, list) or not 1 <= int(bins) <= MAX_BINS):
            problems.append(f"{kind}/{name}: bins must be one number from 1 to {MAX_BINS}")
            bins = None
        for key, value in rec.items():
            want = _list_length(key, k, None if bins is None else int(bins))
            if want is None and isinstance(value, list):
                problems.append(f"{kind}/{name}: {key} must be a single number, not a list of {len(value)}")
            elif want is not None and (not isinstance(value, list) or len(value) != want):
                problems.append(f"{kind}/{name}: {key} must be a list of {want} numbers")
    if "masked" in present:
        arr = reply.content.array_records["masked"].get("update")
        if arr is None or arr.dtype != "uint32" or len(arr.shape) != 1:
            problems.append(f"{kind}/masked: update must be one uint32 vector")
    for name, rec in reply.content.config_records.items():
        for key, value in rec.items():
            if name in ("keys", "shares") and not (isinstance(value, bytes) and len(value) <= 4096):
                problems.append(f"{kind}/{name}: {key} must be a key, share or ciphertext (bytes, at most 4 KiB)")
            if name == "shares" and not re.fullmatch(r"\d+", key):
                problems.append(f"{kind}/shares: keys must be node ids")
            if name == "booster" and not isinstance(value, bytes):
                problems.append(f"{kind}/booster: json must be bytes (a serialised XGBoost model)")
            if name == "info" and not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
                problems.append(f"{kind}/info: {key} must be text or a list of text")
    if kind == "train.head" and "arrays" in present:
        sent = {key: (a.dtype, tuple(a.shape)) for key, a in request.content.array_records["arrays"].items()}
        back = {key: (a.dtype, tuple(a.shape)) for key, a in reply.content.array_records["arrays"].items()}
        if back != sent:
            extra, lost = sorted(set(back) - set(sent)), sorted(set(sent) - set(back))
            changed = sorted(key for key in set(back) & set(sent) if back[key] != sent[key])
            problems.append(f"{kind}/arrays: must mirror the received head (extra {extra}, missing {lost}, other dtype or "
                            f"shape {changed})")
    cfg = request.content.config_records.get("config")
    if cfg is not None and cfg.get("dp-mode") == "whole-model":
        problems += _whole_model_problems(kind, request, reply, k)
    if kind == "query.embed" and "sums" in present:
        shapes = {key: tuple(a.shape) for key, a in reply.content.array_records["sums"].items()}
        for branch in {key.split(".")[0] for key in shapes}:
            n, s1, s2 = (shapes.get(f"{branch}.{stat}") for stat in ("n", "sum", "sumsq"))
            if n not in ((1,), ()) or s1 is None or len(s1) != 1 or s2 != s1:
                problems.append(f"{kind}/sums: branch {branch} must hold n (one number), sum and sumsq (one vector each)")
    return problems


def _whole_model_problems(kind: str, request: Message, reply: Message, k: int | None) -> list[str]:
    """In a whole-model DP run only the planned releases leave: no count at join or embed, no feature sums, the
    confusion matrix alone at evaluation, and the noisy sums and gradients in the shapes of the linear head."""
    problems = []
    if kind == "query.join":
        m = reply.content["metrics"]
        counts = [m.get(key) for key in ("n-train", "n-val", "n-test", "n-groups")] + list(m.get("counts", []))
        if any(c != -1 for c in counts):
            problems.append(f"{kind}: counts must be withheld (-1) in a whole-model DP run")
    if kind == "query.embed" and (len(reply.content["sums"]) or any(
            reply.content["metrics"].get(key) != -1 for key in ("embedded-now", "num-examples"))):
        problems.append(f"{kind}: no feature sums or counts leave in a whole-model DP run")
    if kind == "evaluate.head" and not set(reply.content["metrics"].keys()) <= WHOLE_MODEL_COUNTS:
        problems.append(f"{kind}: only the noisy confusion matrix leaves in a whole-model DP run")
    if "stats" in reply.content:  # (features + classes,): the noisy feature sum, then per class its count
        arr = reply.content.array_records["stats"].get("sums")
        if arr is None or arr.dtype != "float64" or len(arr.shape) != 1 or (k is not None and arr.shape[0] <= k):
            problems.append(f"{kind}/stats: sums must be one float64 vector: the feature sum, then one count per class")
    if "gradient" in reply.content:  # the shape of the weights the server sent, without their (fixed) bias row
        arr, w = reply.content.array_records["gradient"].get("sum"), request.content.array_records["arrays"].get("w")
        if arr is None or w is None or arr.dtype != "float64" or tuple(arr.shape) != (w.shape[0] - 1, *w.shape[1:]):
            problems.append(f"{kind}/gradient: sum must be one float64 matrix shaped like the weights sent, less their bias row")
    return problems


def append_entry(path: Path, entry: dict[str, Any]) -> None:
    """Append one JSON line to the audit log (private to the site's user)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as fh:  # one short line per message; appends are atomic enough for one writer per site
        fh.write(dumps(entry) + "\n")
