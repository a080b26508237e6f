"""One head round through secure aggregation (xincept.common.secagg): the server learns the FedAvg step, the sum of
the sites' weighted updates, and nothing about any one site's update.

Four messages per round instead of one: ``query.secagg_keys`` (public keys), ``query.secagg_shares`` (shares of
each site's secrets, encrypted for the other sites; relayed unread), ``train.head`` (the head, every encrypted share,
and back the masked weighted update), ``query.secagg_unmask`` (the shares that remove the masks). A site lost before
its masked update is left out of the sum (its pair masks are rebuilt from its shared key); one lost after it still
counts; below the threshold the round stops.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from flwr.app import ConfigRecord, Message, RecordDict

from xincept.common.errors import XinceptError
from xincept.common.secagg import SecAggError, ServerSecAgg
from xincept.server.context import Federation

log = logging.getLogger(__name__)


@dataclass
class SecureRound:
    step: np.ndarray  # the FedAvg step: sum over the survivors of n_k / n (trained - sent), renormalised to them
    replies: dict[int, Message]  # the train.head replies (their val counts and DP metrics; no update in them)
    survivors: list[str]
    dropped: list[str]
    bytes_up: dict[str, int]  # per site: what it sent in the four messages (keys, shares, masked update, unmasking)
    seconds: float


def _nbytes(msg: Message) -> int:
    total = 0
    for record in msg.content.values():
        for value in record.values():
            total += value.numpy().nbytes if hasattr(value, "numpy") else len(value) if isinstance(value, (bytes, str)) else 8
    return total


def secure_round(fed: Federation, head_request: RecordDict, extra: dict[str, Any], n_train: dict[str, int]) -> SecureRound:
    """Run one secure round among ``fed``'s sites. ``head_request`` is the train.head content without its config;
    ``extra`` the round's config keys (server-round, member, evaluate-split)."""
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
        total = sum(n_train[fed.nodes[n]] for n in shares)
        request = RecordDict({**dict(head_request.items()), "inbox": inbox,
                              "config": fed.config(**{**extra, **base, "secagg-total": int(total)})})
        trained = fed.ask("train.head", request)
        count(trained)
        names = {n: fed.nodes[n] for n in trained}  # who sent a masked update (a later loss does not take it out)
        survivors, dropped = server.collect_masked({index[n]: m.content["masked"]["update"].numpy() for n, m in trained.items()})
        node_of = {i: n for n, i in index.items()}
        unmask_cfg = fed.config(**base, **{"secagg-survivors": ",".join(str(node_of[i]) for i in sorted(survivors)),
                                           "secagg-dropped": ",".join(str(node_of[i]) for i in sorted(dropped))})
        unmasking = fed.ask("query.secagg_unmask", RecordDict({"config": unmask_cfg}))
        count(unmasking)
        step, _ = server.unmask({index[n]: {index[int(k)]: bytes(v) for k, v in m.content["shares"].items()}
                                 for n, m in unmasking.items()})
    except SecAggError as exc:
        raise XinceptError(f"secure round {extra['server-round']}: {exc}") from None
    weight = sum(n_train[names[node_of[i]]] for i in survivors) / total
    if dropped:
        log.warning("secure round %s: site(s) %s dropped before their masked update; the step is the others' FedAvg",
                    extra["server-round"], sorted(everyone[node_of[i]] for i in dropped))
    return SecureRound(step / max(weight, 1e-12), trained, sorted(names[node_of[i]] for i in survivors),
                       sorted(everyone[node_of[i]] for i in dropped), sent, time.perf_counter() - t0)
