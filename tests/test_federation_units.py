"""Unit tests of federation pieces (stubs stand in for Flower's Grid here only)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from xincept.common.data import ImageRecord
from xincept.common.errors import SettingError
from xincept.common.fedconfig import FedSettings, load_settings_file
from xincept.common.partition import partition_groups


def _records(n_groups: int = 40, per_group: int = 3, k: int = 4) -> list[ImageRecord]:
    return [ImageRecord(Path(f"{g}-{i}.png"), g % k, f"{g}-{i}", f"g{g}") for g in range(n_groups) for i in range(per_group)]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet:0.5", "label-skew:2"])
def test_partitions_keep_groups_whole_and_cover_everything(scheme: str) -> None:
    recs = _records()
    parts = partition_groups(recs, 4, scheme, 4, seed=0)
    assert sorted(i for p in parts for i in p) == list(range(len(recs)))
    owner = {}
    for s, p in enumerate(parts):
        for i in p:
            assert owner.setdefault(recs[i].group, s) == s


def test_label_skew_gives_each_site_k_classes_and_iid_is_balanced() -> None:
    recs = _records()
    for p in partition_groups(recs, 4, "label-skew:2", 4):
        assert len({recs[i].label for i in p}) == 2
    sizes = [len(p) for p in partition_groups(recs, 4, "iid", 4)]
    assert max(sizes) - min(sizes) <= 3


def test_bad_partition_schemes_are_clear() -> None:
    with pytest.raises(SettingError, match="choose iid"):
        partition_groups(_records(), 2, "random", 4)
    with pytest.raises(SettingError, match="give a number"):
        partition_groups(_records(), 2, "dirichlet:x", 4)


def test_settings_round_trip_and_config_file(tmp_path: Path) -> None:
    s = FedSettings(rounds=3, strategy="fedprox", pretrained=False)
    assert FedSettings.from_flat(s.to_flat()) == s
    cfg = tmp_path / "fed.toml"
    cfg.write_text('rounds = 7\nlocal-epochs = 3\nstrategy = "fedadam"\n')
    assert FedSettings.from_flat(load_settings_file(cfg)).rounds == 7
    cfg.write_text("roundz = 7\n")
    with pytest.raises(SettingError, match="unknown setting"):
        load_settings_file(cfg)
    with pytest.raises(SettingError, match="strategy"):
        FedSettings(strategy="fedsgdd")


def test_auto_strategy_settles_on_fedavg_and_picks_its_rounds() -> None:
    s = FedSettings()
    assert (s.strategy, s.rounds, s.local_epochs, s.head_members) == ("fedavg", 10, 3, 1)
    dp = FedSettings(dp_epsilon=8.0)
    assert (dp.strategy, dp.rounds, dp.server_lr) == ("fedavg", 10, 0.05)
    sgd = FedSettings(strategy="fedsgd")
    assert (sgd.rounds, sgd.server_lr, sgd.head_members) == (150, 0.02, 3)
    assert FedSettings(strategy="fedavg", rounds=7).rounds == 7
    assert FedSettings.from_flat(s.to_flat()) == s  # sites receive the settled choice
    with pytest.raises(SettingError, match="--strategy fedavg"):
        FedSettings(strategy="fedsgd", dp_epsilon=3.0)


def test_head_members_default_to_three_for_fedsgd_and_refuse_dp() -> None:
    assert FedSettings(strategy="fedsgd").head_members == 3
    assert FedSettings().head_members == 1
    assert FedSettings(strategy="fedavg").head_members == 1
    assert FedSettings(dp_epsilon=8.0).head_members == 1
    assert FedSettings(head_members=2).head_members == 2
    with pytest.raises(SettingError, match="head-members=3 with dp-epsilon"):
        FedSettings(strategy="fedavg", dp_epsilon=8.0, head_members=3)
    with pytest.raises(SettingError, match="head-members=-1"):
        FedSettings(head_members=-1)


def test_fedsgd_site_steps_average_to_the_pooled_gradient_step() -> None:
    """Example-weighted FedAvg of the sites' w - g_i is w - g over the union: centralized full-batch, exactly."""
    import numpy as np
    import torch

    from xincept.common.config import HeadConfig
    from xincept.common.train_head import gradient_step, new_head

    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(50, 12)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)]
    y = rng.integers(0, 3, 50)
    cfg = HeadConfig(dropout=0.0)
    start = new_head(feats, 3, cfg).trainable_state()

    def step(rows: slice) -> dict[str, torch.Tensor]:
        head = new_head(feats, 3, cfg)
        head.load_state_dict(start)
        gradient_step(head, [f[rows] for f in feats], y[rows])
        return head.trainable_state()

    pooled, a, b = step(slice(0, 50)), step(slice(0, 20)), step(slice(20, 50))
    for k, v in pooled.items():
        torch.testing.assert_close(0.4 * a[k] + 0.6 * b[k], v, atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(pooled[k], start[k]) for k in start)  # the step moved the weights


def test_site_mismatch_names_the_site_and_the_difference() -> None:
    from xincept.server.federation import FederationError, Site, check_sites

    base = {"version": "0.1.0", "fingerprints": ["a:1", "b:2"], "classes": ["A", "B"]}
    sites = [Site(1, "alpha", dict(base)), Site(2, "beta", {**base, "fingerprints": ["a:1", "b:9"]})]
    with pytest.raises(FederationError, match=r"site beta differs from site alpha in backbone weights"):
        check_sites(sites)
    assert check_sites([Site(1, "alpha", dict(base)), Site(2, "beta", dict(base))]) == ["A", "B"]


class _Grid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def test_waiting_for_sites_is_bounded() -> None:
    from xincept.server.federation import FederationError, wait_for_sites

    assert wait_for_sites(_Grid([3, 1]), 2, timeout=1) == [1, 3]
    with pytest.raises(FederationError, match="only 1 of the required 3"):
        wait_for_sites(_Grid([1]), 3, timeout=1.5)


def test_expected_sites_are_waited_for_then_the_run_starts_with_min_sites(caplog: pytest.LogCaptureFixture) -> None:
    from xincept.common.errors import SettingError
    from xincept.common.fedconfig import FedSettings
    from xincept.server.federation import FederationError, wait_for_sites

    grid = _Grid([1, 2])
    t0 = time.monotonic()
    assert wait_for_sites(grid, 2, timeout=1.0, expect=3) == [1, 2]  # waited the timeout for the third, then went on
    assert time.monotonic() - t0 >= 1.0 and "2 of the 3 expected site(s) joined" in caplog.text
    assert wait_for_sites(_Grid([5, 4, 6]), 2, timeout=60, expect=3) == [4, 5, 6]  # all there: no wait
    with pytest.raises(FederationError, match="only 1 of the required 2"):
        wait_for_sites(_Grid([1]), 2, timeout=1.0, expect=3)
    with pytest.raises(SettingError, match="expect-sites 2 is below min-sites 3"):
        FedSettings(min_sites=3, expect_sites=2)


def test_node_config_and_supernode_command(tmp_path: Path) -> None:
    from xincept.client.supernode import NodeOptions, node_config, supernode_command

    opts = NodeOptions(site='st "mary"', data=tmp_path, server="h:9092", root_cert=tmp_path / "ca.crt", clientapp_port=9300)
    nc = node_config(opts)
    assert 'site="st \\"mary\\""' in nc and f'data-dir="{tmp_path.resolve()}"' in nc
    cmd = supernode_command(opts, tmp_path / "secret")
    assert cmd[cmd.index("--root-certificates") + 1].endswith("ca.crt") and "--insecure" not in cmd


def test_certificates_chain_to_the_ca(tmp_path: Path) -> None:
    from cryptography import x509

    from xincept.common.tls import make_certificates, tls_files

    files = make_certificates(tmp_path, ["127.0.0.1", "server.example"])
    ca = x509.load_pem_x509_certificate(files["ca"].read_bytes())
    cert = x509.load_pem_x509_certificate(files["cert"].read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "server.example" in san.get_values_for_type(x509.DNSName)
    assert set(tls_files(tmp_path)) == {"ca", "cert", "key"}
    with pytest.raises(SettingError, match="xincept-server keys"):
        tls_files(tmp_path / "missing")


def test_head_rounds_metrics_from_counts_only() -> None:
    from xincept.common.metrics import metrics_from_confusion, wilson_interval

    m = metrics_from_confusion(np.array([[8, 2], [1, 9]]), ["A", "B"])
    assert m["accuracy"] == pytest.approx(0.85) and m["per_class"]["B"]["sensitivity"] == pytest.approx(0.9)
    lo, hi = wilson_interval(17, 20)
    assert lo < 0.85 < hi


def test_fedsgd_server_step_can_decay_on_a_cosine_over_the_rounds() -> None:
    from xincept.server.strategies import inner, make_strategy, set_round

    s = FedSettings(strategy="fedsgd", rounds=100, server_lr_schedule="cosine")
    strategy = make_strategy(s, 4)
    set_round(strategy, s, 1)
    assert inner(strategy).eta == pytest.approx(0.02) and inner(strategy).tau == pytest.approx(1e-8)
    set_round(strategy, s, 51)
    assert inner(strategy).eta == pytest.approx(0.01)
    set_round(strategy, s, 100)
    assert 0 < inner(strategy).eta < 1e-4
    flat = FedSettings(strategy="fedsgd", rounds=100, server_lr_schedule="constant")
    constant = make_strategy(flat, 4)
    set_round(constant, flat, 51)
    assert inner(constant).eta == pytest.approx(0.02)  # a constant schedule keeps server-lr


def test_sites_receive_the_whole_science_settings_including_xgb_mode() -> None:
    """Everything but the server's own paths, addresses and run control reaches the sites (xgb-mode, select-classifier
    and head-members were once left out, so sites used their defaults)."""
    from dataclasses import fields

    from xincept.common.fedconfig import SERVER_ONLY

    server = FedSettings(xgb_mode="none", select_classifier="best-val", head_members=2, out_dir="/srv/out", resume=True)
    flat = server.client_flat()
    assert flat["xgb-mode"] == "none" and flat["select-classifier"] == "best-val" and flat["head-members"] == 2
    assert not {k.replace("-", "_") for k in flat} & SERVER_ONLY and "out-dir" not in flat
    site = FedSettings.from_flat(flat)
    for f in fields(FedSettings):
        if f.name not in SERVER_ONLY:
            assert getattr(site, f.name) == getattr(server, f.name), f.name


def test_local_only_model_follows_xgb_mode_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """A site's local-only baseline uses the run's classifier: under xgb-mode none, the head's softmax, no XGBoost."""
    import types

    from xincept.client.task import LocalSite, local_only_counts
    from xincept.common import model as model_module

    fitted = []

    class Model:
        booster = "an XGBoost booster"

        def predict_proba(self, feats):
            fitted.append(self.booster)
            return np.full((len(feats[0]), 4), 0.25)

    monkeypatch.setattr(model_module, "fit_model", lambda *a, **k: Model())
    y = np.arange(40) % 4
    site = types.SimpleNamespace(feats=[np.zeros((40, 3), np.float32)], y=y, classes=["A", "B", "C", "D"])
    split = {"train": np.arange(0, 24), "val": np.arange(24, 32), "test": np.arange(32, 40)}
    for mode, expect in (("none", None), ("histogram", "an XGBoost booster")):
        received = FedSettings.from_flat(FedSettings(xgb_mode=mode, min_cell_count=1).client_flat())  # what the site gets
        local_only_counts(LocalSite(name="s", site=site, split=split, settings=received))  # type: ignore[arg-type]
        assert fitted[-1] == expect, mode
