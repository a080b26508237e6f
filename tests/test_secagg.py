"""Secure aggregation: the server's view of a round is only the sum. Each site's masked vector looks uniformly random,
the unmasked sum equals the plain sum within quantisation error, and the round completes with a site that dropped
after sending its masked input (and with one that dropped before)."""

from __future__ import annotations

import numpy as np
import pytest

from xincept.common.secagg import MODULUS, SecAggConfig, SecAggError, ServerSecAgg, SiteSecAgg, prg


def _round(vectors: dict[int, np.ndarray], cfg: SecAggConfig, drop_before_masking: set[int] = frozenset(),
           drop_after_masking: set[int] = frozenset(), drop_before_sharing: set[int] = frozenset()):
    """One aggregation, in the order messages would travel; returns (server, masked vectors, sum, survivors)."""
    sites = {i: SiteSecAgg(i, cfg) for i in vectors}
    server = ServerSecAgg(cfg, list(vectors))
    publics = server.collect_keys({i: s.public_keys() for i, s in sites.items()})
    inbox = server.route_shares({i: s.share_keys(publics) for i, s in sites.items() if i not in drop_before_sharing})
    for i, s in sites.items():
        if i in inbox:
            s.receive_shares(inbox[i])
    masked = {i: s.masked(vectors[i], np.random.default_rng(i)) for i, s in sites.items()
              if i not in drop_before_masking | set(drop_before_sharing)}
    survivors, dropped = server.collect_masked(masked)
    answering = survivors - set(drop_after_masking)  # these sent their input, then went silent
    # the server only learns who answers the unmasking; it still counts the late drop-outs' inputs (they arrived)
    shares = {j: sites[j].unmask_shares(survivors, dropped) for j in answering}
    total, count = server.unmask(shares)
    return server, masked, total, count


def test_the_server_sees_uniform_masked_vectors_and_recovers_only_the_sum() -> None:
    rng = np.random.default_rng(0)
    vectors = {i: rng.normal(0, 0.3, 5000) for i in (1, 2, 3, 4)}
    cfg = SecAggConfig(threshold=3, clip=2.0, bits=20)
    _, masked, total, count = _round(vectors, cfg)
    plain = sum(vectors.values())
    step = 2 * cfg.clip / ((1 << cfg.bits) - 1)
    assert count == 4
    assert np.max(np.abs(total - plain)) <= 4 * step + 1e-12  # each site's rounding is below one level
    for y in masked.values():
        # uniform over [0, 2^32): mean, spread, and a chi-square test over 64 bins
        u = y.astype(np.float64) / MODULUS
        assert abs(u.mean() - 0.5) < 0.02 and abs(u.std() - (1 / 12) ** 0.5) < 0.02
        counts = np.bincount((u * 64).astype(int), minlength=64)
        chi2 = ((counts - len(u) / 64) ** 2 / (len(u) / 64)).sum()
        assert chi2 < 120  # 63 degrees of freedom: p ~ 1e-5 at 120
        # and unrelated to the vector it hides
        assert abs(np.corrcoef(u, vectors[1])[0, 1]) < 0.05


@pytest.mark.parametrize("sharing,before,after,counted", [(set(), set(), {2}, {1, 2, 3, 4}), (set(), {3}, set(), {1, 2, 4}),
                                                          ({4}, set(), set(), {1, 2, 3})])
def test_drop_outs_after_the_masked_input_count_and_before_it_do_not(sharing: set, before: set, after: set,
                                                                     counted: set) -> None:
    """A site silent after sending its masked input is still in the sum (its self mask comes from the others' shares);
    one silent before it is left out (its pairwise masks are rebuilt from its shared key); one silent before it sent
    its shares is in no mask at all."""
    rng = np.random.default_rng(1)
    vectors = {i: rng.uniform(-1, 1, 300) for i in (1, 2, 3, 4)}
    cfg = SecAggConfig(threshold=3, clip=1.0, bits=16)
    _, _, total, count = _round(vectors, cfg, drop_before_masking=before, drop_after_masking=after,
                                drop_before_sharing=sharing)
    assert count == len(counted)
    assert np.allclose(total, sum(vectors[i] for i in counted), atol=len(counted) * 2 / ((1 << 16) - 1))


def test_below_the_threshold_the_round_stops_and_nothing_is_unmasked() -> None:
    vectors = {i: np.zeros(10) for i in (1, 2, 3, 4)}
    with pytest.raises(SecAggError, match="needs 3"):
        _round(vectors, SecAggConfig(threshold=3, clip=1.0, bits=16), drop_before_masking={1, 2})


def test_a_site_refuses_to_reveal_both_secrets_of_one_site() -> None:
    cfg = SecAggConfig(threshold=2, clip=1.0, bits=16)
    sites = {i: SiteSecAgg(i, cfg) for i in (1, 2, 3)}
    publics = {i: s.public_keys() for i, s in sites.items()}
    sent = {i: s.share_keys(publics) for i, s in sites.items()}
    for j, s in sites.items():
        s.receive_shares({i: cts[j] for i, cts in sent.items() if j in cts})
    sites[1].unmask_shares({1, 2}, {3})
    with pytest.raises(SecAggError, match="both secrets of site [23]"):
        sites[1].unmask_shares({1, 3}, {2})  # a lying server: site 3 "survived" after all
    with pytest.raises(SecAggError, match="both survivor and dropped"):
        sites[2].unmask_shares({1, 2, 3}, {3})


def test_the_mask_generator_is_a_keyed_stream() -> None:
    a, b = prg(b"k" * 32, 1000, b"self"), prg(b"k" * 32, 1000, b"self")
    assert np.array_equal(a, b) and not np.array_equal(a, prg(b"j" * 32, 1000, b"self"))
    assert not np.array_equal(a, prg(b"k" * 32, 1000, b"pair"))


def test_too_many_levels_for_the_modulus_is_refused() -> None:
    with pytest.raises(SecAggError, match="overflow"):
        SecAggConfig(threshold=2, clip=1.0, bits=31).check(4)


def test_science_code_loads_no_flower() -> None:
    import subprocess
    import sys

    code = ("import sys, numpy as np, xincept.common.secagg as s; s.combine_shares(s.create_shares(b'k' * 32, 2, 3)); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'flwr'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_shares_reconstruct_from_any_threshold_subset() -> None:
    from itertools import combinations

    from xincept.common.secagg import combine_shares, create_shares

    secret = bytes(range(32))
    shares = create_shares(secret, 3, 5)
    assert all(combine_shares(list(sub)) == secret for sub in combinations(shares, 3))
    assert combine_shares(shares[:2]) != secret  # below the threshold: another value


def test_a_site_resumes_its_part_from_what_it_keeps_between_messages() -> None:
    """Each step is a separate message: the site keeps its keys and shares between them (Flower's node context)."""
    rng = np.random.default_rng(5)
    vectors = {i: rng.uniform(-1, 1, 50) for i in (1, 2, 3)}
    cfg = SecAggConfig(threshold=2, clip=1.0, bits=16)

    def reload(s: SiteSecAgg) -> SiteSecAgg:
        return SiteSecAgg.from_flat(s.to_flat(), cfg)

    sites = {i: SiteSecAgg(i, cfg) for i in vectors}
    server = ServerSecAgg(cfg, list(vectors))
    publics = server.collect_keys({i: s.public_keys() for i, s in sites.items()})
    sent = {}
    for i in sites:
        sites[i] = reload(sites[i])
        sent[i] = sites[i].share_keys(publics)
    inbox = server.route_shares(sent)
    masked = {}
    for i in sites:
        sites[i] = reload(sites[i])
        sites[i].receive_shares(inbox[i])
        sites[i] = reload(sites[i])
        masked[i] = sites[i].masked(vectors[i], np.random.default_rng(i))
    survivors, dropped = server.collect_masked(masked)
    shares = {j: reload(sites[j]).unmask_shares(survivors, dropped) for j in survivors}
    total, count = server.unmask(shares)
    assert count == 3 and np.allclose(total, sum(vectors.values()), atol=3 * 2 / ((1 << 16) - 1))


def test_a_site_says_when_its_update_is_clipped_and_refuses_a_round_it_is_not_in(caplog: pytest.LogCaptureFixture) -> None:
    from xincept.client import secure_round
    from xincept.client.policy import PolicyViolation
    from xincept.common.fedconfig import FedSettings

    settings = FedSettings(secure_aggregation=True, secagg_clip=0.5, secagg_bits=16)
    nodes = [11, 22, 33]
    parts = {n: secure_round.start(settings, nodes, n) for n in nodes}
    publics = {f"{n}.{k}": v for n, (_, keys) in parts.items() for k, v in keys.items()}
    sent = {n: secure_round.share(site, nodes, publics) for n, (site, _) in parts.items()}
    inbox = {f"{src}>{dst}": ct for src, cts in sent.items() for dst, ct in cts.items()}
    with caplog.at_level("WARNING"):
        secure_round.masked_update(parts[11][0], nodes, 11, inbox, np.zeros(4), np.array([0.1, 2.0, -3.0, 0.0]), 10, 10)
    assert "2 coordinate(s)" in caplog.text and "secagg-clip" in caplog.text
    with pytest.raises(PolicyViolation, match="not among"):
        secure_round.start(settings, nodes, 44)
