"""The federation a ServerApp run talks to: its grid, its sites, its settings and class list, and how it asks them.

Every phase (join, embed, head rounds, xgb, validate) takes a :class:`Federation` instead of threading the grid,
the node map, the settings, the classes and a config builder through its parameters.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from xincept import __version__
from xincept.common.errors import XinceptError
from xincept.common.fedconfig import FedSettings
from xincept.common.versions import code_hash


class FederationError(XinceptError):
    """The federation cannot go on (a site missing, mismatched or failing)."""


class SitesLost(FederationError):
    """Sites whose SuperNode went away before answering; ``replies`` holds the other sites' answers."""

    def __init__(self, message: str, lost: list[int], replies: dict[int, Message]) -> None:
        super().__init__(message)
        self.lost, self.replies = lost, replies


log = logging.getLogger(__name__)

POLL_FIRST_S, POLL_MAX_S = 0.005, 0.05
NODE_UNAVAILABLE = 5  # flwr.common.constant.ErrorCode.NODE_UNAVAILABLE: Flower's reply for a site that went offline
MESSAGE_UNAVAILABLE = 3  # flwr.common.constant.ErrorCode.MESSAGE_UNAVAILABLE: a reply whose arrays never arrived
LIVENESS_EVERY_S = 2.0  # how often a wait checks that the sites it waits for are still connected


@dataclass(frozen=True)
class Federation:
    """The run's grid, the sites taking part (node id -> site name), the settings and the class list."""

    grid: Grid
    nodes: dict[int, str]
    settings: FedSettings
    classes: list[str] | None = None
    lost: dict[str, str] = field(default_factory=dict)  # site name -> when and why it left the run (quorum)

    def config(self, **extra: Any) -> ConfigRecord:
        """The settings every site receives (whole, less the server's own), the code they must run, the classes,
        and ``extra`` keys of one message type."""
        flat = self.settings.client_flat()
        flat.update({"xincept-version": __version__, "code-hash": code_hash()})  # sites refuse a run built for other code
        if self.classes:
            flat["classes"] = list(self.classes)
        flat.update(extra)
        return ConfigRecord(flat)

    def ask(self, message_type: str, content: RecordDict | dict[int, RecordDict],
            timeout: float | None = None) -> dict[int, Message]:
        """One message per site (the same content, or one per node id) and every reply, by node id.

        The first failed reply stops the run at once, naming the site and its reason; a site that does not answer
        within ``timeout`` (default: the settings' round timeout) is named too.
        """
        timeout = self.settings.round_timeout if timeout is None else timeout
        msgs = {n: Message(content=content[n] if isinstance(content, dict) else content, message_type=message_type,
                           dst_node_id=n) for n in self.nodes}
        try:
            return collect_replies(self.grid, msgs, self.nodes, message_type, timeout)
        except SitesLost as exc:
            remaining = len(self.nodes) - len(exc.lost)
            if remaining < self.settings.min_sites:
                raise FederationError(f"{exc} ({remaining} site(s) left, fewer than --min-sites "
                                      f"{self.settings.min_sites})") from None
            for node in exc.lost:  # the run goes on without them (quorum): every later phase asks the others
                name = self.nodes.pop(node)
                self.lost[name] = f"disconnected during {message_type}"
                log.warning("%s: site %s disconnected; going on with %d site(s) (--min-sites %d)", message_type, name,
                            remaining, self.settings.min_sites)
            return exc.replies

    def among(self, nodes: dict[int, str]) -> "Federation":
        """The same federation restricted to ``nodes`` (leave-one-site-out); a site lost there is lost here too."""
        return replace(self, nodes=dict(nodes))

    def with_settings(self, settings: FedSettings) -> "Federation":
        return replace(self, settings=settings)

    def with_classes(self, classes: list[str]) -> "Federation":
        return replace(self, classes=list(classes))


def collect_replies(grid: Grid, msgs: dict[int, Message], nodes: dict[int, str], message_type: str,
                    timeout: float) -> dict[int, Message]:
    """Push ``msgs`` (node id -> message) and pull their replies with a short, growing interval.

    Replies are matched by the message they answer (Flower's own error replies, for a site that went away, do not
    carry the site's node id). Flower's grids pull every 0.1 s (simulation) or 3 s (deployment); here the interval
    starts at 5 ms and grows to 50 ms while the sites compute.
    """
    ids = grid.push_messages(list(msgs.values()))
    node_of = dict(zip(ids, msgs))
    pending, replies, lost = set(node_of), {}, []
    deadline, pause = time.monotonic() + timeout, POLL_FIRST_S
    next_check = time.monotonic() + LIVENESS_EVERY_S
    while pending:
        for m in grid.pull_messages(pending):
            answered = m.metadata.reply_to_message_id
            if answered not in pending:
                continue
            pending.discard(answered)
            node = node_of[answered]
            if m.has_error():
                if node in lost:
                    continue  # Flower's own error reply for a site already known to be gone
                if m.error.code in (NODE_UNAVAILABLE, MESSAGE_UNAVAILABLE):  # Flower's: the site stopped sending
                    lost.append(node)  # heartbeats, or its reply's arrays never arrived (it died while uploading them)
                    continue
                raise FederationError(f"{message_type}: site {nodes[node]} failed: {short_reason(m.error.reason)}")
            replies[node] = m
        if not pending:
            break
        if time.monotonic() > deadline:
            missing = sorted(nodes[node_of[i]] for i in pending)
            raise FederationError(f"{message_type}: no reply from site(s) {missing} within {timeout:.0f} s")
        if time.monotonic() > next_check:  # a site whose SuperNode went away is named now, not at the timeout
            connected = set(grid.get_node_ids())
            gone = {i for i in pending if node_of[i] not in connected}
            lost += sorted((node_of[i] for i in gone), key=lambda n: nodes[n])
            pending -= gone
            next_check = time.monotonic() + LIVENESS_EVERY_S
            continue
        time.sleep(pause)
        pause = min(pause * 1.5, POLL_MAX_S)
    if lost:
        raise SitesLost(f"{message_type}: site(s) {[nodes[n] for n in lost]} disconnected (their SuperNode stopped sending "
                        "heartbeats) before answering", lost, replies)
    return replies


def short_reason(reason: str) -> str:
    """The last meaningful line of a remote traceback (the site's own error message)."""
    marker = "Message: "
    if marker in reason:
        reason = reason.rsplit(marker, 1)[1]
    lines = [ln.strip() for ln in reason.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else reason).rstrip("'>")


def wait_for_sites(grid: Grid, min_sites: int, timeout: float, expect: int = 0) -> list[int]:
    """Node ids once ``expect`` sites (at least ``min_sites``) have connected, or once ``timeout`` seconds have passed
    with ``min_sites`` of them; a clear error after ``timeout`` seconds with fewer, never a hang."""
    deadline = time.monotonic() + timeout
    want = max(expect, min_sites)
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= want:
            return nodes
        if time.monotonic() > deadline and len(nodes) >= min_sites:
            log.warning("%d of the %d expected site(s) joined within %.0f s: starting with them (--min-sites %d)",
                        len(nodes), want, timeout, min_sites)
            return nodes
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(nodes)} of the required {min_sites} site(s) joined within {timeout:.0f} s: check that each "
                "site ran `xincept-client join` against this server, or lower --min-sites / raise --join-timeout"
            )
        time.sleep(1.0)
