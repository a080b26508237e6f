"""Rounds through secure aggregation (xincept.common.secagg): the server learns the sum of the sites' vectors and
nothing about any one of them. A head round's vectors are the sites' weighted updates (their sum is the FedAvg
step); whole-model DP's are the sites' noisy sums (xincept.server.dp_model).

Four messages per round instead of one: ``query.secagg_keys`` (public keys), ``query.secagg_shares`` (shares of
each site's secrets, encrypted for the other sites; relayed unread), the round's own message (``train.head``,
``query.dp_stats`` or ``train.dp_step``: its request, every encrypted share, and back the masked vector),
``query.secagg_unmask`` (the shares that remove the masks). A site lost before
its masked update is left out of the sum (its pair masks are rebuilt from its shared key); one lost after it still
counts; below the threshold the round stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from flwr.app import ConfigRecord, Message, RecordDict

from xincept.common.errors import XinceptError
from xincept.common.secagg import SecAggError, ServerSecAgg
from xincept.server.context import Federation

log = logging.getLogger(__name__)


def _nbytes(msg: Message) -> int:
    total = 0
    for record in msg.content.values():
        for value in record.values():
            total += value.numpy().nbytes if hasattr(value, "numpy") else len(value) if isinstance(value, (bytes, str)) else 8
    return total


@dataclass
class SecureSum:
    total: np.ndarray  # the sum of the survivors' vectors (dequantised), and nothing about any one of them
    replies: dict[int, Message]  # the replies that carried a masked vector (their metrics; no vector in the clear)
    survivors: list[str]
    dropped: list[str]
    bytes_up: dict[str, int]
    seconds: float
    site_of: dict[int, str]  # the round's node ids and site names (a site lost later is no longer in the federation)


def secure_sum(fed: Federation, message_type: str, content: RecordDict, extra: dict[str, Any],
               masked_extra: dict[str, Any] | Callable[[dict[int, Message]], dict[str, Any]] | None = None) -> SecureSum:
    """The sum of one vector per site through secure aggregation, four messages: keys, shares, ``message_type`` (with
    ``content``, the shares addressed to each site, and back a masked vector, record ``masked`` key ``update``),
    unmasking. ``extra``: the config keys of the round (``server-round``, ``member``: they name it at the sites);
    ``masked_extra``: config keys of the third message only (or a function of the shares' replies that gives them).
    Stops below the threshold."""
    t0 = time.perf_counter()
    order = sorted(fed.nodes)
    everyone = dict(fed.nodes)  # names of the round's sites, also of those lost during it
    index = {n: i for i, n in enumerate(order, start=1)}
    server = ServerSecAgg(fed.settings.secagg_config(len(order)), list(index.values()))
    base = {"server-round": extra["server-round"], "member": extra.get("member", 0), "secagg-nodes": ",".join(map(str, order))}
    sent: dict[str, int] = {}

    def count(replies: dict[int, Message]) -> None:
        for n, m in replies.items():
            sent[everyone[n]] = sent.get(everyone[n], 0) + _nbytes(m)

    try:
        keys = fed.ask("query.secagg_keys", RecordDict({"config": fed.config(**base)}))
        count(keys)
        server.collect_keys({index[n]: (bytes(m.content["keys"]["c"]), bytes(m.content["keys"]["s"])) for n, m in keys.items()})
        publics = ConfigRecord({f"{n}.{k}": bytes(m.content["keys"][k]) for n, m in keys.items() for k in ("c", "s")})
        shares = fed.ask("query.secagg_shares", RecordDict({"config": fed.config(**base), "publics": publics}))
        count(shares)
        server.route_shares({index[n]: {index[int(d)]: bytes(ct) for d, ct in m.content["shares"].items()}
                             for n, m in shares.items()})  # who shared: the sites every mask is made with
        inbox = ConfigRecord({f"{n}>{d}": bytes(ct) for n, m in shares.items() for d, ct in m.content["shares"].items()})
        extra_cfg = masked_extra(shares) if callable(masked_extra) else (masked_extra or {})
        request = RecordDict({**dict(content.items()), "inbox": inbox,
                              "config": fed.config(**{**extra, **base, **extra_cfg})})
        masked = fed.ask(message_type, request)
        count(masked)
        names = {n: fed.nodes[n] for n in masked}  # who sent a masked vector (a later loss does not take it out)
        survivors, dropped = server.collect_masked({index[n]: m.content["masked"]["update"].numpy() for n, m in masked.items()})
        node_of = {i: n for n, i in index.items()}
        unmask_cfg = fed.config(**base, **{"secagg-survivors": ",".join(str(node_of[i]) for i in sorted(survivors)),
                                           "secagg-dropped": ",".join(str(node_of[i]) for i in sorted(dropped))})
        unmasking = fed.ask("query.secagg_unmask", RecordDict({"config": unmask_cfg}))
        count(unmasking)
        total, _ = server.unmask({index[n]: {index[int(k)]: bytes(v) for k, v in m.content["shares"].items()}
                                  for n, m in unmasking.items()})
    except SecAggError as exc:
        raise XinceptError(f"secure round {extra['server-round']}: {exc}") from None
    if dropped:
        log.warning("secure round %s: site(s) %s dropped before their masked input; the sum is the others'",
                    extra["server-round"], sorted(everyone[node_of[i]] for i in dropped))
    return SecureSum(total, masked, sorted(names[node_of[i]] for i in survivors),
                     sorted(everyone[node_of[i]] for i in dropped), sent, time.perf_counter() - t0, everyone)


def secure_round(fed: Federation, head_request: RecordDict, extra: dict[str, Any], n_train: dict[str, int]) -> SecureSum:
    """Run one secure head round among ``fed``'s sites. ``head_request`` is the train.head content without its config;
    ``extra`` the round's config keys (server-round, member, evaluate-split). Its ``total`` is the FedAvg step: the sum
    over the survivors of n_k / n (trained - sent), renormalised to them; its replies hold no update, only their val
    counts and metrics."""
    totals: dict[str, int] = {}

    def total_of(shares: dict[int, Message]) -> dict[str, Any]:  # the sites that shared are the round's sites
        totals["n"] = sum(n_train[fed.nodes[n]] for n in shares)
        return {"secagg-total": int(totals["n"])}

    result = secure_sum(fed, "train.head", head_request, extra, total_of)
    weight = sum(n_train[s] for s in result.survivors) / totals["n"]
    return replace(result, total=result.total / max(weight, 1e-12))
