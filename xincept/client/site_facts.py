"""Where a site's facts come from: the SuperNode's node config (deployment) or a simulated partition.

Everything here is set at the site, never by the server: its name, data, cache, policy, state folder
(split, query counts), privacy ledger and audit log.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context

from xincept.client.policy import SitePolicy, default_state_dir, read_policy, valid_site_name
from xincept.common.errors import SettingError


@dataclass(frozen=True)
class SiteFacts:
    name: str
    data_dir: str
    manifest: str | None
    state_dir: Path
    policy: SitePolicy
    ledger: Path
    audit_log: Path
    simulated: bool

    @property
    def allow_outside_paths(self) -> bool:
        return self.policy.allow_outside_paths


def site_facts(context: Context, partition_dir: Path | None) -> SiteFacts:
    """This site's facts; a site name outside ``^[A-Za-z0-9_-]{1,64}$`` is refused before it reaches any path."""
    nc = context.node_config
    if partition_dir is not None and "partition-id" in nc:
        pid = int(nc["partition-id"])
        names = json.loads((partition_dir / "sites.json").read_text())["names"]
        name = valid_site_name(str(names[pid]))
        state = partition_dir / "state" / name
        policy_path = partition_dir / "policy.json"
        return SiteFacts(name, str(partition_dir), str(partition_dir / f"site-{pid}.csv"), state,
                         read_policy(policy_path if policy_path.is_file() else None), partition_dir / f"privacy-{name}.json",
                         Path(os.environ.get("XINCEPT_AUDIT_LOG") or state / "audit.jsonl"), simulated=True)
    if "data-dir" not in nc:
        raise SettingError("node config lacks data-dir: start the SuperNode with `xincept-client join --site NAME --data DIR`")
    if "site" not in nc:
        raise SettingError("node config lacks site: start the SuperNode with `xincept-client join --site NAME`")
    name = valid_site_name(str(nc["site"]))
    state = Path(str(nc["state-dir"])) if nc.get("state-dir") else default_state_dir(name)
    ledger = Path(str(nc["privacy-ledger"])) if nc.get("privacy-ledger") else state / "privacy-ledger.json"
    audit = nc.get("audit-log") or os.environ.get("XINCEPT_AUDIT_LOG") or str(state / "audit.jsonl")
    return SiteFacts(name, str(nc["data-dir"]), str(nc["manifest"]) if nc.get("manifest") else None, state,
                     read_policy(str(nc["policy-file"]) if nc.get("policy-file") else None), ledger, Path(str(audit)),
                     simulated=False)
