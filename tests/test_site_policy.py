"""The site is the authority over what leaves it: a server (simulated here by the test) that departs from the
site's policy is refused with the rule named, and nothing else leaves the site (the audit log shows it)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xincept.client.policy import SitePolicy
from xincept.common.fedconfig import FedSettings

TINY = dict(backbones="test_resnet,test_efficientnet", input_size=80, pretrained=False, group_block=2, local_epochs=1,
            head_members=1)
POLICY = SitePolicy(require_dp=True, allow_outside_paths=True)  # the partition manifest points into the data folder


class Site:
    """One site's real ClientApp, called the way a SuperNode calls it, by a test playing the server."""

    def __init__(self, root: Path, policy: SitePolicy = POLICY, extra_mods: list | None = None, **settings: Any) -> None:
        from xincept.client.app import make_client_app
        from xincept.common.synthetic import write_image_folder
        from xincept.server.simulate import make_partitions

        data = write_image_folder(root / "data", per_class=10, size=64)
        self.part = root / "partitions"
        self.settings = FedSettings(out_dir=str(root / "out"), **{"dp_epsilon": 5.0, **TINY, **settings})
        make_partitions(data, 1, "iid", self.part, self.settings, site_policy=policy)
        self.app = make_client_app(self.part, extra_mods)
        self.audit = self.part / "state" / "site-0" / "audit.jsonl"
        self.run_id = 11

    def send(self, kind: str, arrays: dict | None = None, **changes: Any) -> Any:
        from flwr.supercore.task_identity import TaskIdentity

        saved = TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, self.run_id, 0
        try:
            return self._send(kind, arrays, changes)
        finally:
            TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved

    def _send(self, kind: str, arrays: dict | None, changes: dict[str, Any]) -> Any:
        from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

        from xincept import __version__
        from xincept.common.versions import code_hash

        flat = {**self.settings.client_flat(), "xincept-version": __version__, "code-hash": code_hash(),
                "classes": ["Benign", "Early", "Pre", "Pro"]}
        flat.update(changes)
        config = ConfigRecord({k: v for k, v in flat.items() if v is not None})
        if arrays is not None:  # a head travels packed, with its layout (xincept.head_message)
            from xincept.head_message import head_content

            content = head_content(arrays, config=config)
        else:
            content = RecordDict({"config": config})
        msg = Message(content, dst_node_id=1, message_type=kind)
        ctx = Context(run_id=self.run_id, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
        return self.app(msg, ctx)

    def entries(self) -> list[dict]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]


def _refused(reply: Any, rule: str) -> str:
    assert reply.has_error(), "the site answered a message its policy forbids"
    reason = reply.error.reason
    assert f"rule {rule}" in reason and "refuses" in reason, reason
    assert "/" not in reason.replace("<path>", ""), f"a file path left the site: {reason}"
    return reason


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    s = Site(tmp_path_factory.mktemp("policy"))
    assert not s.send("query.join").has_error()  # the first join fixes the split (seed 0, test fold 0)
    return s


def test_a_server_cannot_turn_dp_off_at_a_site_that_requires_it(site: Site) -> None:
    _refused(site.send("query.join", **{"dp-epsilon": 0.0, "strategy": "fedsgd"}), "require-dp")


def test_a_server_cannot_lower_the_suppression_floor(site: Site) -> None:
    _refused(site.send("query.join", **{"min-cell-count": 1}), "min-cell-count")


def test_a_server_cannot_redraw_the_sites_split(site: Site) -> None:
    _refused(site.send("query.join", seed=1), "split")
    _refused(site.send("query.embed", **{"test-fold": 1}), "split")
    fixed = json.loads((site.part / "state" / "site-0" / "split.json").read_text())
    assert (fixed["seed"], fixed["test-fold"]) == (0, 0)


def test_feature_sums_are_answered_once_per_run(site: Site) -> None:
    first = site.send("query.embed")
    assert not first.has_error()
    again = site.send("query.embed")  # the same question: the same answer, nothing new
    assert all(np.array_equal(first.content["sums"][k].numpy(), again.content["sums"][k].numpy()) for k in first.content["sums"])
    _refused(site.send("query.embed", **{"input-size": 64}), "queries.embed")  # other features: refused
    _refused(site.send("query.embed", **{"val-fraction": 0.3}), "split")  # another subset: refused


def test_unknown_and_server_only_keys_are_refused(site: Site) -> None:
    _refused(site.send("query.join", **{"out-dir": "/tmp/elsewhere"}), "allow-list")
    _refused(site.send("query.join", **{"exfiltrate": 1}), "allow-list")
    _refused(site.send("evaluate.head", split="train"), "evaluate-split")


def test_privacy_settings_cannot_change_within_a_run(site: Site) -> None:
    _refused(site.send("query.join", **{"dp-epsilon": 8.0}), "privacy-fixed-per-run")


def test_the_audit_log_shows_only_answers_and_refusals(site: Site) -> None:
    """Its own answers and refusals (the test passes alone or after the others)."""
    from xincept.client.audit import check_entry

    before = len(site.entries())
    assert not site.send("query.join").has_error() and not site.send("query.embed").has_error()
    _refused(site.send("query.join", **{"exfiltrate": 1}), "allow-list")
    _refused(site.send("query.join", **{"min-cell-count": 1}), "min-cell-count")
    _refused(site.send("evaluate.head", split="train"), "evaluate-split")
    entries = site.entries()[before:]
    refused = [e for e in entries if "error" in e]
    answered = [e for e in entries if "error" not in e]
    assert len(refused) == 3 and all(e["records"] == {} and "rule " in e["error"] for e in refused)
    assert [e["message_type"] for e in answered] == ["query.join", "query.embed"]
    assert all(not check_entry(e) for e in answered)
    assert oct(site.audit.stat().st_mode & 0o777) == oct(0o600)


def test_a_refused_run_ends_with_a_clear_message_naming_site_and_rule(tmp_path: Path) -> None:
    """The whole federation, with a site whose policy requires DP and a server that does not use it."""
    from xincept.common.synthetic import write_image_folder
    from xincept.server.federation import FederationError
    from xincept.server.simulate import run_simulated_federation

    data = write_image_folder(tmp_path / "data", per_class=30, size=64)  # validation splits of min-cell-count images
    settings = FedSettings(out_dir=str(tmp_path / "out"), rounds=1, **TINY)
    with pytest.raises(FederationError, match=r"site site-\d refuses query.join: rule require-dp"):
        run_simulated_federation(data, 2, "iid", settings, cache_dir=tmp_path / "cache", reference=False,
                                 site_policy=replace(POLICY, split_seed=0))
    assert not (tmp_path / "out" / "model").exists()


test_a_refused_run_ends_with_a_clear_message_naming_site_and_rule = pytest.mark.integration(
    test_a_refused_run_ends_with_a_clear_message_naming_site_and_rule)


def _extra_array(msg, context, call_next):
    from flwr.app import Array

    reply = call_next(msg, context)
    if not reply.has_error() and "arrays" in reply.content:
        reply.content["arrays"]["features"] = Array(np.zeros((40, 512), dtype=np.float32))  # a smuggled feature matrix
    return reply


def _per_image_list(msg, context, call_next):
    reply = call_next(msg, context)
    if not reply.has_error() and msg.metadata.message_type == "evaluate.head":
        reply.content["metrics"]["loss-sum"] = [0.1] * 8  # one loss per test image
    return reply


@pytest.mark.parametrize("mod", [_extra_array, _per_image_list])
def test_a_reply_outside_the_schema_is_blocked_by_the_clientapp(tmp_path: Path, mod) -> None:
    from xincept.common.head import new_head_for

    s = Site(tmp_path, policy=replace(POLICY, require_dp=False, min_cell_count=2), extra_mods=[mod], dp_epsilon=0.0,
             min_cell_count=2)
    embed = s.send("query.embed")
    assert not embed.has_error(), embed.error.reason if embed.has_error() else ""
    dims = [int(embed.content["sums"][f"{b}.sum"].numpy().shape[0]) for b in (0, 1)]
    state = new_head_for(dims, 4, s.settings.run_config().head).trainable_state()
    if mod is _extra_array:
        reply = s.send("train.head", arrays=state, **{"server-round": 1})
    else:
        reply = s.send("evaluate.head", arrays=state, split="test")
    assert reply.has_error() and "blocked its reply" in reply.error.reason
    assert not reply.has_content()  # nothing of the reply left
    blocked = [e for e in s.entries() if e.get("blocked")]
    assert len(blocked) == 1 and blocked[0]["message_type"] in ("train.head", "evaluate.head")


def test_a_changed_seed_opens_no_new_privacy_budget(tmp_path: Path) -> None:
    """The ledger is keyed by the site's data set; the lifetime cap composes every run, whatever its settings."""
    from types import SimpleNamespace

    from xincept.client.task import local_train
    from xincept.common.head import new_head_for
    from xincept.common.dp import BudgetSpent, PrivacyLedger

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    feats = [rng.normal(size=(200, 16)).astype(np.float32) + y[:, None] * 0.5 for _ in range(2)]
    ledger = tmp_path / "state" / "privacy-ledger.json"

    def site(seed: int) -> SimpleNamespace:
        s = FedSettings(pretrained=False, local_epochs=1, rounds=2, dp_epsilon=3.0, seed=seed)
        return SimpleNamespace(name="site-a", settings=s, site=SimpleNamespace(feats=feats, y=y), classes=list("abcd"),
                               split={"train": np.arange(200)})

    first = site(0)
    state = new_head_for([16, 16], 4, first.settings.run_config().head).trainable_state()
    for r in (1, 2):
        state, _ = local_train(first, state, r, ledger, lifetime_epsilon=3.3)
    spent = PrivacyLedger(ledger, "site-a").lifetime_epsilon(1e-5)
    assert 2.9 < spent <= 3.0 + 1e-6  # the first run spent its whole budget
    with pytest.raises(BudgetSpent, match="lifetime privacy budget"):  # a new seed is a new run plan, not a new budget
        local_train(site(1), state, 1, ledger, lifetime_epsilon=3.3)
    assert PrivacyLedger(ledger, "site-a").lifetime_epsilon(1e-5) == pytest.approx(spent)  # read back: nothing reset
    assert oct(ledger.stat().st_mode & 0o777) == oct(0o600)


@pytest.mark.parametrize("name", ["../x", "<script>alert(1)</script>", "a" * 65, "hospital a"])
def test_a_bad_site_name_is_refused_at_join_and_reaches_no_path_or_report(tmp_path: Path, name: str) -> None:
    from typer.testing import CliRunner

    from xincept.client.cli import app
    from xincept.common.synthetic import write_image_folder

    data = write_image_folder(tmp_path / "data", per_class=2, size=32)
    state = tmp_path / "state"
    res = CliRunner().invoke(app, ["join", "--site", name, "--data", str(data), "--insecure", "--state-dir", str(state)])
    assert res.exit_code != 0 and "is not allowed" in res.output
    assert not state.exists() and not (tmp_path / "x").exists()


def test_the_clientapp_and_the_server_refuse_bad_names_and_reports_escape_text(tmp_path: Path) -> None:
    from flwr.app import Context, RecordDict

    from xincept.client.site_facts import site_facts
    from xincept.common.errors import SettingError
    from xincept.common.report import render_html

    ctx = Context(run_id=1, node_id=1, node_config={"site": "../../etc", "data-dir": str(tmp_path)}, state=RecordDict(),
                  run_config={})
    with pytest.raises(SettingError, match="not allowed"):
        site_facts(ctx, None)
    page = render_html("# Report\n\nsite <script>alert(1)</script> | <img src=x onerror=alert(1)>\n", tmp_path, "<b>t</b>")
    assert "<script>" not in page and "<img src=x" not in page and "&lt;script&gt;" in page
    assert "<title>&lt;b&gt;t&lt;/b&gt;</title>" in page


def test_manifest_paths_outside_the_data_folder_are_refused(tmp_path: Path) -> None:
    from xincept.common.data import scan_site
    from xincept.common.errors import DataError
    from xincept.common.synthetic import write_image_folder

    data = write_image_folder(tmp_path / "data", per_class=2, size=32)
    outside = write_image_folder(tmp_path / "other", per_class=1, size=32)
    img = next((outside / "Benign").iterdir())
    for path in (str(img), f"../other/Benign/{img.name}"):
        man = tmp_path / "m.csv"
        man.write_text(f"path,label\nBenign/{next((data / 'Benign').iterdir()).name},Benign\n{path},Benign\n")
        with pytest.raises(DataError, match="outside the data folder.*--allow-outside-paths"):
            scan_site(data, manifest=man, show_progress=False)
        assert len(scan_site(data, manifest=man, show_progress=False, allow_outside=True).records) == 2


def test_key_files_are_never_readable_by_others_even_under_umask_022(tmp_path: Path) -> None:
    """Private keys are created 0600 (mkstemp) and renamed into place: no moment where group/other may read them.
    A watcher thread lists the folders while the keys are written and checks every file it sees."""
    import os
    import stat
    import threading

    from xincept.common.tls import make_certificates, make_node_keys, make_site_certificates

    seen: list[tuple[str, int]] = []
    done = threading.Event()

    def watch() -> None:
        while True:
            finished = done.is_set()  # one last look after the writers finished
            for path in tmp_path.rglob("*"):
                try:
                    mode = path.stat().st_mode
                except FileNotFoundError:
                    continue
                # private keys and their temporary files (.NAME.key.RANDOM.tmp); not public keys (.NAME.key.pub.RANDOM.tmp)
                if stat.S_ISREG(mode) and (path.name.endswith(".key") or ".key." in path.name) and ".key.pub" not in path.name:
                    seen.append((path.name, mode & 0o777))
            if finished:
                return

    old = os.umask(0o022)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        files = make_certificates(tmp_path, ["127.0.0.1"])
        make_node_keys(tmp_path / "nodes", ["hospital-a", "hospital-b"])
        make_site_certificates(tmp_path, ["hospital-a", "hospital-b"])
    finally:
        done.set()
        watcher.join()
        os.umask(old)
    keys = [files["key"], files["ca_key"], *(tmp_path / "nodes").glob("*.key"), *(tmp_path / "sites").glob("*/client.key")]
    assert len(keys) == 6 and all(k.stat().st_mode & 0o077 == 0 for k in keys)
    assert seen and all(mode & 0o077 == 0 for _, mode in seen), [s for s in seen if s[1] & 0o077]
    assert files["ca_key"].parent.name == "ca" and not (tmp_path / "ca.key").exists()  # the CA key has its own folder
    assert not (tmp_path / "client.key").exists()  # no shared client key: one per site


def test_the_site_runs_its_installed_code_never_a_bundle_from_the_server(tmp_path: Path) -> None:
    """The site's runner reads the server's app bundle as data: code in it, or other components, are refused."""
    from tests.bundles import our_bundle_files, zip_bundle
    from xincept.client.runner import FabRefused, check_fab

    ours = our_bundle_files(tmp_path)
    assert check_fab(zip_bundle(ours))["components"]["clientapp"] == "xincept.client.app:app"  # what `xincept-server start` sends
    with pytest.raises(FabRefused, match="evil.py"):
        check_fab(zip_bundle({**ours, "xincept/client/evil.py": "import os"}))
    with pytest.raises(FabRefused, match="components"):
        check_fab(zip_bundle({**ours, "pyproject.toml": ours["pyproject.toml"].replace("xincept.client.app:app", "evil:app")}))
    with pytest.raises(FabRefused, match="not a readable"):
        check_fab(b"not a zip")


def test_join_starts_the_supernode_without_flowers_own_clientapp_processes() -> None:
    from xincept.client.supernode import NodeOptions, node_config, supernode_command

    opts = NodeOptions(site="hospital-a", data=Path("/data"), server="s:9092", insecure=True, state_dir=Path("/state"),
                       policy_file=Path("/state/policy.json"))
    cmd = supernode_command(opts, Path("/private/secret"))
    assert cmd[cmd.index("--isolation") + 1] == "process" and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[1:4] == ["-m", "xincept.flower_compat", "flower-supernode"]  # Flower's own SuperNode entry point
    assert cmd[cmd.index("--superexec-auth-secret-file") + 1] == "/private/secret"  # tasks only for join's runner
    assert 'policy-file="/state/policy.json"' in node_config(opts) and 'state-dir="/state"' in node_config(opts)


@pytest.mark.integration
def test_training_heads_keep_one_standardisation_for_the_whole_run(tmp_path: Path) -> None:
    """The server never aggregates the input standardisation, so a site pinning it to one value takes part in every
    round (a drift in its last bits would look like a server probing with new standardisations)."""
    from xincept.common.synthetic import write_image_folder
    from xincept.server.simulate import run_simulated_federation, simulated_policy

    data = write_image_folder(tmp_path / "data", per_class=16, size=64)
    settings = FedSettings(out_dir=str(tmp_path / "out"), rounds=4, min_cell_count=2, xgb_mode="none", **TINY)
    # 3 sites of unequal sizes: a weighted mean of equal buffers need not give back their exact bits
    metrics = run_simulated_federation(data, 3, "dirichlet:1.0", settings, cache_dir=tmp_path / "cache", reference=False,
                                       site_policy=replace(simulated_policy(settings), max_standardisations=1))
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3, 4]
    queries = json.loads((tmp_path / "out" / "partitions" / "state" / "site-0" / "queries.json").read_text())
    assert [len(r["standardisations"]) for r in queries["runs"].values()] == [1]
