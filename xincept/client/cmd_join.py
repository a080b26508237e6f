"""`xincept-client join`: check the site's data, then serve it to the federation through a SuperNode."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xincept.common.cli import (AllowOutsideOpt, CacheDirOpt, ClassesOpt, DataOpt, ManifestOpt, WeightsDirOpt, friendly_errors,
                                setup_logging, split_names)



@friendly_errors
def join(
    site: Annotated[str, typer.Option("--site", help="This hospital's name in the federation (unique).")],
    data: DataOpt,
    server: Annotated[str, typer.Option("--server", help="The SuperLink's HOST:PORT.")] = "127.0.0.1:9092",
    root_cert: Annotated[Path | None, typer.Option("--root-cert", help="CA certificate that signed the server's TLS certificate.")] = None,
    auth_key: Annotated[Path | None, typer.Option("--auth-key", help="This site's private node key (public key beside it as <key>.pub), registered at the server.")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Connect without TLS (testing only).")] = False,
    tls_dir: Annotated[Path | None, typer.Option("--tls-dir", help="This site's ca.crt, client.pem, client.key for XGBoost's mutual TLS (from `xincept-server keys`).")] = None,
    cache_dir: CacheDirOpt = None,
    weights_dir: WeightsDirOpt = None,
    manifest: ManifestOpt = None,
    classes: ClassesOpt = None,
    clientapp_port: Annotated[int, typer.Option("--clientapp-port", help="Local port of the SuperNode's ClientApp API (distinct per SuperNode on one machine).")] = 9094,
    max_retries: Annotated[int | None, typer.Option("--max-retries", help="Reconnection attempts before giving up (default: unlimited).")] = None,
    max_wait_time: Annotated[float | None, typer.Option("--max-wait-time", help="Seconds to keep trying to reconnect (default: unlimited).")] = None,
    policy: Annotated[Path | None, typer.Option("--policy", help="Site policy TOML: what this site lets leave, whatever the server "
                                                "asks. Its fields and defaults: deploy/README.md (Site policy).")] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", envvar="XINCEPT_STATE_DIR", help="This site's state: its fixed split, query counts, privacy ledger, audit log (default ~/.local/state/xincept/SITE; keep it for the site's lifetime).")] = None,
    require_dp: Annotated[bool | None, typer.Option("--require-dp/--no-require-dp", help="Refuse every run without DP-SGD (policy require-dp; default: no).")] = None,
    require_whole_model_dp: Annotated[bool | None, typer.Option("--require-whole-model-dp/--no-require-whole-model-dp", help="Refuse every run that is not whole-model DP, where everything this site sends is under its one epsilon (policy require-whole-model-dp; default: no).")] = None,
    require_secure_aggregation: Annotated[bool | None, typer.Option("--require-secure-aggregation/--no-require-secure-aggregation", help="Refuse every run whose head updates are not summed by secure aggregation (policy require-secure-aggregation; default: no).")] = None,
    max_epsilon: Annotated[float | None, typer.Option("--max-epsilon", help="Largest per-run DP epsilon accepted (policy max-epsilon; default 10).")] = None,
    lifetime_epsilon: Annotated[float | None, typer.Option("--lifetime-epsilon", help="Cap on epsilon over every DP training on this data set (policy lifetime-epsilon; default 10).")] = None,
    min_cell_count: Annotated[int | None, typer.Option("--min-cell-count", help="Suppression floor: smaller counts never leave; a server asking for less is refused (policy min-cell-count; default 5).")] = None,
    allow_fedsgd_without_dp: Annotated[bool | None, typer.Option("--allow-fedsgd-without-dp/--no-fedsgd-without-dp", help="Upload exact full-batch gradients (fedsgd) without DP (policy allow-fedsgd-without-dp; default: allowed).")] = None,
    allow_outside_paths: AllowOutsideOpt = False,
    privacy_ledger: Annotated[Path | None, typer.Option("--privacy-ledger", help="This site's privacy ledger (default STATE_DIR/privacy-ledger.json; never inside the cache).")] = None,
    audit_log: Annotated[Path | None, typer.Option("--audit-log", help="Audit log of every message this site sends (default STATE_DIR/audit.jsonl; always on).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads for this site's training and scoring (default: one per core; lower it on a machine shared with other work or other sites).")] = None,
    separate_runner: Annotated[bool, typer.Option("--separate-runner", hidden=True, help="Accepted for old scripts: the site's runner is always a separate process beside Flower's SuperNode.")] = False,
) -> None:
    """Check DATA like `xincept-client check`, then join the federation at SERVER as SITE (Ctrl-C leaves).

    The site's policy (--policy FILE and the options above, which override the file) holds whatever the server
    sends: every message is checked against it and a violation is refused with the rule named. Defaults are safe.
    """
    setup_logging()
    import logging

    from dataclasses import replace

    from xincept.client.policy import SitePolicy, default_state_dir, load_policy_file, valid_site_name
    from xincept.client.site_state import SiteState
    from xincept.client.supernode import NodeOptions, run_supernode
    from xincept.common.atomic import write_json_atomic
    from xincept.common.data import require_usable, scan_site
    from xincept.common.errors import SettingError

    log = logging.getLogger("xincept.join")
    valid_site_name(site)
    rules = load_policy_file(policy) if policy else SitePolicy()
    overrides = {"require_dp": require_dp, "require_secure_aggregation": require_secure_aggregation,
                 "require_whole_model_dp": require_whole_model_dp,
                 "max_epsilon": max_epsilon, "lifetime_epsilon": lifetime_epsilon, "min_cell_count": min_cell_count, "allow_fedsgd_without_dp": allow_fedsgd_without_dp,
                 "allow_outside_paths": allow_outside_paths or None}
    rules = replace(rules, **{k: v for k, v in overrides.items() if v is not None})
    from xincept.common.atomic import require_writable
    from xincept.common.config import default_cache_dir

    require_writable(state_dir or default_state_dir(site), "--state-dir")
    require_writable(cache_dir or default_cache_dir(), "--cache-dir")
    state = SiteState(state_dir or default_state_dir(site))
    fixed = state.split()
    if fixed is not None:
        changed = {k: (fixed[k], v) for k, v in rules.pinned_split().items() if fixed[k] != v}
        if changed:
            raise SettingError(f"the policy's split {changed} differs from the split this site fixed at its first join "
                               f"({state.split_path}); delete that file only if your data protection officer agrees to a new split")
    policy_file = state.dir / "policy.json"
    write_json_atomic(policy_file, rules.to_dict(), mode=0o600)
    if not insecure and root_cert is None:
        raise SettingError("--root-cert FILE is required for TLS (the CA certificate from the coordinating team), or pass --insecure for a test")
    if root_cert is not None and not root_cert.is_file():
        raise SettingError(f"--root-cert {root_cert} does not exist")
    if auth_key is not None and not (auth_key.is_file() and Path(f"{auth_key}.pub").is_file()):
        raise SettingError(f"--auth-key {auth_key}: the private key and {auth_key}.pub must both exist (create them with `xincept-server keys`)")
    site_data = scan_site(data, split_names(classes), manifest, allow_outside=rules.allow_outside_paths)
    require_usable(site_data)
    r = site_data.report
    log.info("site %s: %d images in %d classes, %d groups, %d skipped; only weights and aggregate counts leave this site",
             site, r.n_images, len(r.classes), r.n_groups, len(r.skipped))
    log.info("site %s: policy %s (state %s); require-dp %s, require-secure-aggregation %s, min-cell-count %d, lifetime "
             "epsilon %g", site, policy_file, state.dir, rules.require_dp, rules.require_secure_aggregation,
             rules.min_cell_count, rules.lifetime_epsilon)
    if tls_dir is not None:
        lacking = [n for n in ("ca.crt", "client.pem", "client.key") if not (tls_dir / n).is_file()]
        if lacking:
            raise SettingError(f"--tls-dir {tls_dir} lacks {lacking}: use this site's folder from `xincept-server keys --site {site}`")
    code = run_supernode(NodeOptions(site=site, data=data, server=server, root_cert=root_cert, insecure=insecure, auth_key=auth_key,
                                     cache_dir=cache_dir, weights_dir=weights_dir, manifest=manifest, clientapp_port=clientapp_port, tls_dir=tls_dir,
                                     max_retries=max_retries, max_wait_time=max_wait_time, state_dir=state.dir,
                                     policy_file=policy_file, audit_log=audit_log, privacy_ledger=privacy_ledger,
                                     threads=threads, classes=split_names(classes)))
    raise typer.Exit(code)
