"""A site's part of a secure head round (xincept.common.secagg), between the four messages that make it.

The server numbers the round's sites by their node ids (``secagg-nodes``, in order; a site's Shamir index is its
position + 1). What a site must remember from one message to the next (its private keys, its self-mask seed, the
other sites' public keys, the shares it holds and which it has revealed) lives in its own node context, never in a
message. The update a site masks is its FedAvg share: (trained head - received head) x n_train / total n_train
(``secagg-total``), so the unmasked sum is the FedAvg step.
"""

from __future__ import annotations

import logging

import numpy as np

from xincept.client.policy import PolicyViolation
from xincept.common.fedconfig import FedSettings
from xincept.common.secagg import SiteSecAgg

log = logging.getLogger(__name__)


def nodes_of(text: str) -> list[int]:
    return [int(n) for n in str(text).split(",") if n]


def index_of(nodes: list[int], me: int) -> int:
    if me not in nodes:
        raise PolicyViolation("secure-aggregation", f"this site (node {me}) is not among the round's sites {nodes}")
    return nodes.index(me) + 1


def start(settings: FedSettings, nodes: list[int], me: int) -> tuple[SiteSecAgg, dict[str, bytes]]:
    """Step 1: fresh keys and seed for this round; returns the site's part and its public keys."""
    site = SiteSecAgg(index_of(nodes, me), settings.secagg_config(len(nodes)))
    c, s = site.public_keys()
    return site, {"c": c, "s": s}


def share(site: SiteSecAgg, nodes: list[int], publics: dict[str, bytes]) -> dict[str, bytes]:
    """Step 2: encrypted shares for every other site, by node id."""
    by_index = {}
    for pos, node in enumerate(nodes, start=1):
        if f"{node}.c" in publics and f"{node}.s" in publics:
            by_index[pos] = (bytes(publics[f"{node}.c"]), bytes(publics[f"{node}.s"]))
    return {str(nodes[j - 1]): ct for j, ct in site.share_keys(by_index).items()}


def receive(site: SiteSecAgg, nodes: list[int], me: int, inbox: dict[str, bytes]) -> None:
    """The shares addressed to this site (``"<from>><to>"``) among everything the server relayed."""
    mine = {}
    for key, ct in inbox.items():
        src, _, dst = key.partition(">")
        if int(dst) == me:
            mine[index_of(nodes, int(src))] = bytes(ct)
    site.receive_shares(mine)


def masked_vector(site: SiteSecAgg, nodes: list[int], me: int, inbox: dict[str, bytes], vector: np.ndarray) -> np.ndarray:
    """Step 3 for any vector (whole-model DP's noisy sums): read this site's shares, then mask ``vector``."""
    receive(site, nodes, me, inbox)
    over = int(np.count_nonzero(np.abs(vector) > site.cfg.clip))
    if over:
        log.warning("secure aggregation: %d coordinate(s) exceed the range %g and are clipped", over, site.cfg.clip)
    return site.masked(np.ravel(vector))


def masked_update(site: SiteSecAgg, nodes: list[int], me: int, inbox: dict[str, bytes], sent: np.ndarray,
                  trained: np.ndarray, n_train: int, total: int) -> np.ndarray:
    """Step 3: read the shares addressed to this site (``"<from>><to>"``), then mask the weighted update."""
    receive(site, nodes, me, inbox)
    if total <= 0:
        raise PolicyViolation("secure-aggregation", f"secagg-total {total}: the sites' training images must be counted")
    update = (np.asarray(trained, dtype=np.float64) - np.asarray(sent, dtype=np.float64)) * (n_train / total)
    over = int(np.count_nonzero(np.abs(update) > site.cfg.clip))
    if over:  # the sum would then differ from FedAvg's: say so where the operator of the site can see it
        log.warning("secure aggregation: %d coordinate(s) of this site's update exceed secagg-clip %g and are clipped; "
                    "the coordinating team should raise secagg-clip", over, site.cfg.clip)
    return site.masked(update)


def unmask(site: SiteSecAgg, nodes: list[int], survivors: list[int], dropped: list[int]) -> dict[str, bytes]:
    """Step 4: this site's shares for the survivors' self masks and the dropped sites' keys, by node id."""
    shares = site.unmask_shares({index_of(nodes, n) for n in survivors}, {index_of(nodes, n) for n in dropped})
    return {str(nodes[j - 1]): s for j, s in shares.items()}
