"""DP-SGD for the fused head at one site (Opacus), with a per-site budget for the whole federated run.

Unit of privacy: one image. The site plans its noise once: for R rounds x E local epochs of Poisson-
sampled batches (rate q = batch / n_train), Opacus finds the noise multiplier that spends exactly the
target (epsilon, delta) under the RDP accountant. After every round the spent epsilon is recomputed
from the steps actually taken, which a ledger on the site's disk records (a repeated round counts
again: its update was released). A round that would overspend is refused.

Clipping uses Opacus' fast gradient clipping ("ghost" mode): per-sample gradient norms of each
Linear layer come from its activations and output gradients, and a second backward pass of the
per-sample-weighted loss gives the clipped sum, so no per-sample gradient tensor is built
(bench/dp.py: about 2x a plain epoch; materialised per-sample gradients cost about 7x). Algorithm 1's L2 penalty is a function of the weights only, so it moves into the
optimizer's weight decay (2 x 0.01 on the K-wide layers): it costs no privacy and is not clipped.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xincept.common.atomic import write_json_atomic
from xincept.common.config import HeadConfig
from xincept.common.errors import XinceptError
from xincept.common.head import FusedHead

log = logging.getLogger(__name__)


class BudgetSpent(XinceptError):
    """This site's privacy budget would be exceeded by another round."""


@dataclass(frozen=True)
class DPPlan:
    epsilon: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int


def make_plan(n_train: int, batch_size: int, local_epochs: int, rounds: int, epsilon: float, delta: float,
              max_grad_norm: float) -> DPPlan:
    """The noise that spends (epsilon, delta) over the whole run's planned steps."""
    from opacus.accountants.utils import get_noise_multiplier

    if n_train < 2:
        raise XinceptError("DP-SGD needs at least two training images at a site")
    q = min(1.0, batch_size / n_train)
    steps_per_round = local_epochs * math.ceil(1 / q)
    sigma = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=q, steps=steps_per_round * rounds,
                                 accountant="rdp")
    return DPPlan(epsilon, delta, max_grad_norm, float(sigma), q, steps_per_round, rounds)


def spent_epsilon(plan: DPPlan, steps: int) -> float:
    from opacus.accountants import RDPAccountant

    if steps <= 0:
        return 0.0
    acc = RDPAccountant()
    acc.history = [(plan.noise_multiplier, plan.sample_rate, steps)]
    return float(acc.get_epsilon(plan.delta))


def composed_epsilon(histories: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of several DP trainings on the same images together: RDP composition of (noise, rate, steps)."""
    from opacus.accountants import RDPAccountant

    histories = [h for h in histories if h[2] > 0]
    if not histories:
        return 0.0
    acc = RDPAccountant()
    acc.history = list(histories)
    return float(acc.get_epsilon(delta))


class PrivacyLedger:
    """Every DP-SGD step a site has released, in one JSON file on its own disk (mode 0600).

    Keyed by the site's data set (a digest of its images' content), then by run plan. The lifetime
    epsilon composes every entry of every data set in the file, so a new seed, new settings or a new run
    never open a new budget: only the site can, by moving its ledger, and that is its decision.
    The file lives in the site's state folder (not the embedding cache, which operators clear).
    """

    def __init__(self, path: Path, dataset: str = "unknown") -> None:
        self.path = Path(path)
        self.dataset = dataset

    def _read(self) -> dict:
        doc = json.loads(self.path.read_text()) if self.path.is_file() else {}
        if doc and "datasets" not in doc:  # a ledger written before data-set keys: keep every step it counted
            doc = {"datasets": {"unknown": doc}}
        doc.setdefault("datasets", {})
        return doc

    def steps(self, key: str) -> int:
        return int(self._read()["datasets"].get(self.dataset, {}).get(key, {}).get("steps", 0))

    def histories(self) -> list[tuple[float, float, int]]:
        """(noise multiplier, sample rate, steps) of every entry, every data set."""
        return [(float(e["plan"]["noise_multiplier"]), float(e["plan"]["sample_rate"]), int(e["steps"]))
                for entries in self._read()["datasets"].values() for e in entries.values()]

    def lifetime_epsilon(self, delta: float, extra: tuple[float, float, int] | None = None) -> float:
        """Epsilon spent over the site's lifetime (plus ``extra`` steps about to be taken)."""
        return composed_epsilon(self.histories() + ([extra] if extra else []), delta)

    def releases(self, key: str) -> list:
        """Whole-model DP: what this data set released in the run ``key`` (xincept.common.privacy_accounting)."""
        from xincept.common.privacy_accounting import Release

        entry = self._read().get("releases", {}).get(self.dataset, {}).get(key, {})
        return [Release(**r) for r in entry.values()]

    def lifetime_rdp(self, orders: np.ndarray) -> np.ndarray:
        """RDP at ``orders`` of everything in the file: every DP-SGD entry (Opacus' sampled Gaussian) and every
        whole-model release, of every data set (the conservative lifetime: one patient may be in several)."""
        from opacus.accountants.analysis.rdp import compute_rdp

        total = np.zeros(len(orders))
        for sigma, q, steps in self.histories():
            if steps > 0:
                total += np.asarray(compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(orders)))
        for r in self.whole_model_releases():
            total += r.rdp(orders)
        return total

    def whole_model_releases(self) -> list:
        """Every whole-model DP release in the file, of every data set and run."""
        from xincept.common.privacy_accounting import Release

        return [Release(**r) for runs in self._read().get("releases", {}).values() for entry in runs.values()
                for r in entry.values()]

    def lifetime_epsilon_with(self, release, delta: float) -> float:
        """The lifetime epsilon once ``release`` is made: everything in :meth:`lifetime_rdp` and it; exact where every
        one is a whole-model Gaussian release (xincept.common.privacy_accounting.epsilon_of), else by RDP."""
        from xincept.common.privacy_accounting import ORDERS, epsilon_of, gaussian_mu, rdp_to_dp

        made = self.whole_model_releases() + [release]
        if not any(steps > 0 for _, _, steps in self.histories()) and gaussian_mu(made) is not None:
            return epsilon_of(made, delta)
        return rdp_to_dp(self.lifetime_rdp(ORDERS) + release.rdp(ORDERS), delta)[0]

    def add_release(self, key: str, release) -> list:
        """Record ``release`` (counts add up per kind, noise and purpose) in run ``key``; returns the run's releases."""
        doc = self._read()
        entry = doc.setdefault("releases", {}).setdefault(self.dataset, {}).setdefault(key, {})
        name = f"{release.kind}:{release.noise:.12g}:{release.what}"
        old = entry.get(name, {**asdict(release), "count": 0})
        entry[name] = {**old, "count": int(old["count"]) + int(release.count)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, doc, mode=0o600)
        return self.releases(key)

    def add(self, key: str, steps: int, plan: DPPlan, server_round: int) -> int:
        doc = self._read()
        entry = doc["datasets"].setdefault(self.dataset, {}).setdefault(key, {"steps": 0, "rounds": [], "plan": asdict(plan)})
        entry["steps"] += steps
        entry["rounds"].append(server_round)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, doc, mode=0o600)
        return int(entry["steps"])


def _param_groups(head: FusedHead, cfg: HeadConfig) -> list[dict]:
    l2 = {id(p) for layer in [b[-1] for b in head.branches] + [head.classifier] for p in [layer.weight]}
    decayed = [p for p in head.parameters() if id(p) in l2]
    rest = [p for p in head.parameters() if id(p) not in l2]
    return [{"params": decayed, "weight_decay": 2 * cfg.l2 + cfg.weight_decay}, {"params": rest, "weight_decay": cfg.weight_decay}]


def dp_train_epochs(head: FusedHead, feats: list[np.ndarray], y: np.ndarray, epochs: int, cfg: HeadConfig, plan: DPPlan,
                    seed: int = 0, mode: str = "ghost") -> tuple[float, int]:
    """``epochs`` epochs of DP-SGD (Adam on clipped, noised per-sample gradients): (last epoch's mean loss, steps)."""
    torch.manual_seed(seed)
    data = torch.utils.data.TensorDataset(*[torch.as_tensor(f, dtype=torch.float32) for f in feats],
                                          torch.as_tensor(y, dtype=torch.long))
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(_param_groups(head, cfg), lr=cfg.lr)
    head.train()
    with warnings.catch_warnings():
        # Opacus warns that secure_mode (a cryptographic RNG, torchcsprng) is off, and about full backward hooks
        warnings.filterwarnings("ignore", category=UserWarning)
        return _dp_loop(head, opt, loader, plan, epochs, mode)


def _dp_loop(head: FusedHead, opt: torch.optim.Optimizer, loader: torch.utils.data.DataLoader, plan: DPPlan,
             epochs: int, mode: str = "ghost") -> tuple[float, int]:
    """DP-SGD epochs. ``ghost``: Opacus' fast gradient clipping (per-sample gradient norms from activations and
    output gradients, then a second backward of the clipped loss; no per-sample gradient tensors). ``hooks``:
    per-sample gradients materialised by hooks (B x out x in per Linear layer)."""
    from opacus import PrivacyEngine

    engine = PrivacyEngine(accountant="rdp", secure_mode=False)
    common = dict(module=head, optimizer=opt, data_loader=loader, noise_multiplier=plan.noise_multiplier,
                  max_grad_norm=plan.max_grad_norm, poisson_sampling=True, grad_sample_mode=mode)
    if mode == "ghost":
        module, opt, loss_fn, loader = engine.make_private(criterion=nn.CrossEntropyLoss(label_smoothing=head.cfg.label_smoothing), **common)
    else:
        module, opt, loader = engine.make_private(**common)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=head.cfg.label_smoothing)
    module.train()
    last = float("nan")
    steps = 0
    for _ in range(epochs):
        total, count = 0.0, 0
        for *xs, yb in loader:
            if len(yb) == 0:  # Poisson sampling can draw an empty batch; it still counts as a step
                opt.zero_grad()
                steps += 1
                continue
            opt.zero_grad()
            loss = loss_fn(module(list(xs)), yb)
            loss.backward()
            opt.step()
            steps += 1
            total, count = total + float(loss.item()) * len(yb), count + len(yb)
        last = total / max(count, 1)
    if hasattr(module, "remove_hooks"):
        module.remove_hooks()
    head.eval()
    return last, steps
