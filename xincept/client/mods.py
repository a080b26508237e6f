"""The ClientApp's two gatekeepers, as Flower mods around every message handler.

- :func:`make_audit_mod` (outermost): sees each reply as it would leave; a reply that departs from the exact
  schema of its message type is replaced by an error reply and never sent; every message (answered, refused
  or blocked) is appended to the site's audit log, on by default.
- :func:`make_policy_mod`: checks each incoming message against the site's policy
  (:mod:`xincept.client.guard`) before any handler runs, and turns every failure into an error reply with a
  sanitised reason (the rule broken, never a file path or a traceback).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Callable

from flwr.app import Context, Error, Message

from xincept.client.audit import append_entry, describe, reply_problems
from xincept.client.guard import check_request
from xincept.client.policy import PolicyViolation
from xincept.client.site_facts import site_facts
from xincept.client.site_state import SiteState
from xincept.common.dp import BudgetSpent
from xincept.head_message import request_layout, state_from

log = logging.getLogger(__name__)

REFUSED, BLOCKED, FAILED = 4101, 4102, 4103  # error codes of this site's own error replies
_PATH = re.compile(r"(?<![\w.<])(?:/[^\s'\"`:;,()<>\[\]]+)+/?")

Handler = Callable[[Message, Context], Message]


def sanitise(text: str, limit: int = 400) -> str:
    """An error text fit to leave the site: file paths replaced by <path>, one line, bounded length."""
    one_line = " ".join(_PATH.sub("<path>", str(text)).split())
    return one_line[:limit]


def _error(msg: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=msg)


def standardisation_digest(msg: Message) -> str | None:
    """A digest of the input standardisation buffers a training head carries (None: no head)."""
    if msg.content.array_records.get("arrays") is None:
        return None
    state = state_from(msg.content)  # the packed head, read with the layout it came with
    digest = hashlib.sha256()
    for key in sorted(state):
        if key.startswith("norms.") or ".norms." in key:
            digest.update(key.encode() + state[key].numpy().tobytes())
    return digest.hexdigest()[:16]


def make_policy_mod(partition_dir: Path | None) -> Callable[[Message, Context, Handler], Message]:
    def policy_mod(msg: Message, context: Context, call_next: Handler) -> Message:
        kind = msg.metadata.message_type
        name = "this site"
        try:
            facts = site_facts(context, partition_dir)
            name = facts.name
            cfg = msg.content.config_records.get("config")
            std = standardisation_digest(msg) if kind == "train.head" else None
            check_request(facts.policy, SiteState(facts.state_dir), kind, dict(cfg) if cfg is not None else {},
                          msg.metadata.run_id, std)
        except PolicyViolation as exc:
            log.error("site %s refuses %s: %s", name, kind, exc)
            return _error(msg, REFUSED, sanitise(f"site {name} refuses {kind}: {exc}"))
        except Exception as exc:  # noqa: BLE001 (a bad setting or an unreadable policy: refuse, say why)
            log.exception("site %s cannot check %s against its policy", name, kind)
            return _error(msg, REFUSED, sanitise(f"site {name} refuses {kind}: {type(exc).__name__}: {exc}"))
        try:
            return call_next(msg, context)
        except PolicyViolation as exc:  # a rule only the handler can check (the site's own TLS material)
            log.error("site %s refuses %s: %s", name, kind, exc)
            return _error(msg, REFUSED, sanitise(f"site {name} refuses {kind}: {exc}"))
        except BudgetSpent as exc:
            rule = "lifetime-epsilon" if "lifetime" in str(exc) else "max-epsilon"
            log.error("site %s refuses %s: %s", name, kind, exc)
            return _error(msg, REFUSED, sanitise(f"site {name} refuses {kind}: rule {rule}: {exc}"))
        except Exception as exc:  # noqa: BLE001 (the full traceback stays in the site's log)
            log.exception("site %s failed %s", name, kind)
            return _error(msg, FAILED, sanitise(f"site {name} failed {kind}: {type(exc).__name__}: {exc}"))

    return policy_mod


def make_audit_mod(partition_dir: Path | None) -> Callable[[Message, Context, Handler], Message]:
    def audit_mod(msg: Message, context: Context, call_next: Handler) -> Message:
        reply = call_next(msg, context)
        try:
            facts = site_facts(context, partition_dir)
        except Exception:  # noqa: BLE001 (no valid site: nothing may leave but an error)
            return reply if reply.has_error() else _error(msg, BLOCKED, "reply blocked: the site's facts are invalid")
        kind = msg.metadata.message_type
        if reply.has_error():
            entry = {"time": time.time(), "message_type": kind, "records": {}, "error": reply.error.reason}
        else:
            problems = reply_problems(msg, reply)
            entry = describe(reply)
            entry["message_type"] = kind
            if "arrays" in entry["records"] and "layout" in msg.content:  # the packed head's parameters, by name and shape
                entry["records"]["arrays"]["layout"] = request_layout(msg.content)
            if problems:
                log.error("site %s blocked its own reply to %s: %s", facts.name, kind, problems)
                entry["blocked"] = problems
                reply = _error(msg, BLOCKED, sanitise(f"site {facts.name} blocked its reply to {kind}: the reply did not "
                                                      f"match the allowed schema ({problems[0]})"))
        entry.update(node_id=context.node_id, run_id=msg.metadata.run_id, site=facts.name)
        append_entry(facts.audit_log, entry)
        return reply

    return audit_mod
