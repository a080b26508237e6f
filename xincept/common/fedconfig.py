"""Federation settings: one frozen dataclass, exchanged as a flat dict (Flower run config / ConfigRecord)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from xincept.common.config import (THESIS_BACKBONES, AugmentConfig, BackboneConfig, HeadConfig, RunConfig,
                                   SplitConfig, XGBConfig, default_cache_dir)
from xincept.common.disclosure import DisclosurePolicy
from xincept.common.errors import SettingError

STRATEGIES = ("fedsgd", "fedavg", "fedprox", "fedadam", "trimmed-mean", "krum")
# What "auto" settles to. fedsgd takes one step per round, so it needs many more rounds than local-epoch rules.
# The default (fedavg, 10 rounds x 3 local epochs: the centralized recipe's 30 epochs) is measured beside fedsgd's
# 3 x 150 rounds in bench/results/fed_*_cv.json; every round is a synchronous trip to every hospital.
AUTO_ROUNDS = {"fedsgd": 150}
AUTO_SERVER_LR = {"fedsgd": 0.02}
# fedsgd's outcome hinges on few full-batch steps: heads from other initialisations and dropout masks differ by
# points on the same split, and their average is steadier (bench/results/fed_*members*).
AUTO_HEAD_MEMBERS = {"fedsgd": 3}
DEFAULT_ROUNDS, DEFAULT_SERVER_LR = 10, 0.05
DP_MODES = ("head", "whole-model")
# whole-model DP through secure aggregation: each coordinate of a site's noisy sum in [-R, R] at 24 bits (a step of
# 0.002, far below the noise); a site's sums stay inside unless one class holds more than R of its training images
DP_SECAGG_RANGE = 16384.0


def auto_dp_steps(epsilon: float, distributed: bool = False) -> int:
    """Whole-model DP's full-batch steps when --dp-steps is not given: more noise per step wants fewer steps, so fewer
    at a smaller epsilon, and more with ``distributed`` noise (--secure-aggregation: the sum carries about 1/sqrt(3)
    of the local noise of 4 sites). Chosen on the sites' validation splits (bench/dp_end_to_end.py --tune, IID,
    ImageNet Xception at 299 px, 3 draws x 5 folds), never on a test fold. Local noise: epsilon 3: 80 steps 94.4%,
    120 93.9%; epsilon 8: 160 96.3%, 240 96.1%. Distributed: epsilon 1: 80 91.4%, 120 90.1%; epsilon 3: 80 95.6%,
    120 96.2%, 160 95.6%; epsilon 8: 160 97.1%, 240 97.1%."""
    if epsilon >= 5:
        return 160
    return 120 if distributed and epsilon >= 2 else 80


THESIS_INPUT_SIZE = 224  # the thesis' input size, and the ALL images' own
WHOLE_MODEL_DP_INPUT_SIZE = 299  # Xception's ImageNet training size


def auto_input_size(dp_mode: str) -> int:
    """The backbones' input size when --input-size is not given: the thesis' 224 px, and 299 px in whole-model DP,
    where the linear head on frozen features gains most from better features (sites' validation splits, IID,
    distributed noise, 3 draws x 5 folds, ImageNet Xception: epsilon 3, 80 steps: 94.2% at 224 px, 95.6% at 299 px;
    bench/dp_end_to_end.py --tune). The embedding takes about twice as long at 299 px; it is cached per size."""
    return WHOLE_MODEL_DP_INPUT_SIZE if dp_mode == "whole-model" else THESIS_INPUT_SIZE


# The server's own paths, addresses and run control: never sent to the sites (everything else is, whole).
SERVER_ONLY = frozenset({"out_dir", "resume", "stop_after_round", "join_timeout", "round_timeout", "min_sites", "expect_sites",
                         "xgb_tls_dir", "public_host", "insecure"})


@dataclass(frozen=True)
class FedSettings:
    """Everything the server decides; sites receive the science part with every message."""

    out_dir: str = "runs/federated"
    rounds: int = 0  # 0: the strategy's default (10 for the local-epoch rules, 150 for fedsgd)
    local_epochs: int = 3  # local-epoch rules only; fedsgd takes one full-batch gradient step per round
    strategy: str = "auto"  # auto: fedavg (local epochs of the centralized recipe; DP-SGD with dp-epsilon)
    proximal_mu: float = 0.01
    server_lr_schedule: str = "constant"  # fedsgd: constant | cosine (decay of the server step over the rounds)
    server_lr: float = 0.0  # server Adam step (fedsgd, fedadam); 0: 0.02 for fedsgd, 0.05 for fedadam
    head_members: int = 0  # heads trained one after another (own init and dropout) and averaged; 0: 3 for fedsgd, else 1
    min_sites: int = 2
    expect_sites: int = 0  # sites to wait for (up to join-timeout) before starting; 0: min-sites. The run goes on above min-sites
    max_update_norm: float = 0.0  # updates farther than this from the global head are rejected (0: no bound)
    max_norm_ratio: float = 10.0  # ... or farther than this many times the round's median distance (3+ sites)
    trim_beta: float = 0.2  # trimmed-mean: fraction cut at each end
    krum_malicious: int = 0  # krum: sites assumed malicious
    join_timeout: float = 600.0
    round_timeout: float = 3600.0
    resume: bool = False
    select_round: str = "best-val"  # best-val: the round with the best aggregated validation accuracy | last
    stop_after_round: int = 0  # testing aid: stop (as if killed) after this round
    backbones: str = ",".join(THESIS_BACKBONES)
    input_size: int = 0  # backbone input in pixels; 0: auto_input_size (224, or 299 in whole-model DP)
    pretrained: bool = True
    random_backbones: str = ""  # comma-separated: these backbones random (labelled), the others pretrained
    precision: str = "auto"
    group_block: int = 25
    test_fraction: float = 0.2
    val_fraction: float = 0.15
    test_fold: int = 0  # which grouped fold of test-fraction is the test split: runs with 0..k-1 make a k-fold CV
    lr: float = 1e-3  # local Adam learning rate at each site (the centralized recipe's)
    batch_size: int = 32
    dropout: float = 0.0
    activation: str = "relu"
    seed: int = 0
    synthetic: bool = False
    xgb_mode: str = "histogram"  # histogram | bagging | none (the head's softmax is the classifier)
    select_classifier: str = "xgboost"  # xgboost: XGBoost ships (the thesis) | best-val: XGBoost or the softmax, the better pooled val accuracy
    xgb_rounds: int = 300
    xgb_eta: float = 0.1
    xgb_max_depth: int = 4
    xgb_subsample: float = 1.0
    xgb_max_bin: int = 256
    xgb_features: str = "branches"  # XGBoost's input: branches (64-wide activations of each backbone branch), embedding, logits
    xgb_margin: str = "head"  # head: XGBoost boosts from the global head's logits (trees correct the head) | none
    xgb_early_stopping: int = 30
    xgb_bagging_rounds: int = 150  # at most; early stopping on the pooled validation loss
    xgb_timeout: float = 600.0
    xgb_tls_dir: str = ""  # server side: ca.crt, server.pem, server.key for the tracker ("" and not insecure: generated)
    public_host: str = "127.0.0.1"  # where sites reach the XGBoost tracker
    insecure: bool = False
    disclosure: str = "suppress"  # what validation counts may leave a site: suppress | laplace | none
    min_cell_count: int = 5
    disclosure_epsilon: float = 1.0
    dp_epsilon: float = 0.0  # DP-SGD target epsilon per site for the whole run (0: off)
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0
    dp_mode: str = "head"  # head: DP-SGD on the fused head | whole-model: every release of a site under one accounting
    dp_unit: str = "image"  # whole-model: the privacy unit, image or patient (the site's patient groups)
    dp_steps: int = 0  # whole-model: full-batch DP gradient steps of the linear head; 0: auto_dp_steps(dp_epsilon, secure_aggregation)
    dp_lr: float = 1.0  # whole-model: the server's step on the noisy mean gradient (momentum 0.9)
    central_dp_noise: float = 0.0  # central DP (Flower's server-side fixed clipping wrapper): noise multiplier; 0 = off
    central_dp_clip: float = 1.0  # central DP: clipping norm of each site's update
    dp_trainings: int = 1  # trainings that share each site's budget (set by the server: 1 + leave-one-site-out runs)
    loso: bool = False  # leave-one-site-out models in the validate phase (simulate turns it on)
    secure_aggregation: bool = False  # the head rounds' updates are summed by secure aggregation (xincept.common.secagg)
    secagg_threshold: int = 0  # sites that must survive a round (and whose shares unmask it); 0: a majority, at least 2
    secagg_clip: float = 1.0  # each coordinate of a site's weighted update is clipped to this before quantisation
    secagg_bits: int = 24  # quantisation levels per coordinate: 2^bits (the sum of the sites must fit in 2^32)
    local_only: bool = True  # each site's local-only model, scored at that site only

    def __post_init__(self) -> None:
        if self.strategy == "auto":  # settle the automatic choices once, so every log and bundle names the real ones
            object.__setattr__(self, "strategy", "fedavg")
        if self.strategy not in STRATEGIES:
            raise SettingError(f"strategy={self.strategy!r}: choose auto or one of {STRATEGIES}")
        if self.rounds == 0:
            object.__setattr__(self, "rounds", AUTO_ROUNDS.get(self.strategy, DEFAULT_ROUNDS))
        if self.server_lr == 0:
            object.__setattr__(self, "server_lr", AUTO_SERVER_LR.get(self.strategy, DEFAULT_SERVER_LR))
        if self.dp_mode not in DP_MODES:
            raise SettingError(f"dp-mode={self.dp_mode!r}: choose head (DP-SGD on the fused head) or whole-model")
        if self.input_size == 0:
            object.__setattr__(self, "input_size", auto_input_size(self.dp_mode))
        if self.input_size < 32:
            raise SettingError(f"input-size={self.input_size}: give the backbones' input in pixels (at least 32), or 0 for "
                               f"the default ({THESIS_INPUT_SIZE}; {WHOLE_MODEL_DP_INPUT_SIZE} with --dp-mode whole-model)")
        if self.dp_mode == "whole-model":
            self._settle_whole_model_dp()
        if self.head_members == 0:
            object.__setattr__(self, "head_members", 1 if self.dp_epsilon > 0 else AUTO_HEAD_MEMBERS.get(self.strategy, 1))
        if self.head_members < 1:
            raise SettingError(f"head-members={self.head_members}: give 1 or more heads (0 for the strategy's default)")
        if self.head_members > 1 and self.dp_epsilon > 0:
            raise SettingError(f"head-members={self.head_members} with dp-epsilon: every head would spend the sites' privacy "
                               "budget again; use --head-members 1 with DP-SGD")
        if self.rounds < 1 or self.local_epochs < 1:
            raise SettingError("rounds and local-epochs must be at least 1")
        from xincept.common.splits import holdout_folds

        if not 0 <= self.test_fold < holdout_folds(self.test_fraction):
            raise SettingError(f"test-fold={self.test_fold}: a test-fraction of {self.test_fraction} has folds 0 to "
                               f"{holdout_folds(self.test_fraction) - 1}")
        if self.server_lr < 0:
            raise SettingError(f"server-lr={self.server_lr}: give a positive step (or 0 for the strategy's default)")
        if self.strategy == "fedsgd" and self.dp_epsilon > 0:
            raise SettingError("strategy fedsgd with dp-epsilon: DP-SGD runs in local epochs; use --strategy fedavg "
                               "(or leave --strategy out: auto picks fedavg when dp-epsilon is set)")
        if self.min_sites < 1:
            raise SettingError("min-sites must be at least 1")
        if self.expect_sites and self.expect_sites < self.min_sites:
            raise SettingError(f"expect-sites {self.expect_sites} is below min-sites {self.min_sites}: expect at least as "
                               "many sites as the run needs (or 0: wait for min-sites only)")
        self.disclosure_policy()  # validates the disclosure settings
        if self.select_round not in ("best-val", "last"):
            raise SettingError(f"select-round={self.select_round!r}: choose best-val or last")
        if self.server_lr_schedule not in ("cosine", "constant"):
            raise SettingError(f"server-lr-schedule={self.server_lr_schedule!r}: choose cosine or constant")
        self.xgb_config()  # checks select-classifier, xgb-features and xgb-margin
        if self.xgb_features == "fused":
            raise SettingError("xgb-features fused: federated XGBoost on the raw 4,096 pooled features would send histograms "
                               "of every one of them every tree level; choose branches, embedding or logits")
        unknown = set(self.random_backbones.split(",")) - set(self.backbones.split(",")) - {""}
        if unknown:
            raise SettingError(f"random-backbones {','.join(sorted(unknown))}: not among the backbones ({self.backbones}); "
                               "name only backbones the run uses")
        if self.xgb_mode not in ("histogram", "bagging", "none"):
            raise SettingError(f"xgb-mode={self.xgb_mode!r}: choose histogram, bagging or none")
        if self.secure_aggregation:
            self._check_secure_aggregation()

    def _settle_whole_model_dp(self) -> None:
        """Whole-model DP (xincept.common.dp_linear): a linear head by full-batch DP gradient descent, and nothing
        released outside the site's one (epsilon, delta): no XGBoost, no per-feature sums, no validation counts, the
        test split's two counts under the plan's noise (``disclosure`` does not apply), no leave-one-site-out or
        local-only models (each would be another release)."""
        if self.dp_epsilon <= 0:
            raise SettingError("dp-mode whole-model needs a budget: give --dp-epsilon (per site, for everything it releases)")
        if self.dp_unit not in ("image", "patient"):
            raise SettingError(f"dp-unit={self.dp_unit!r}: choose image or patient")
        if self.dp_steps == 0:
            object.__setattr__(self, "dp_steps", auto_dp_steps(self.dp_epsilon, self.secure_aggregation))
        if self.dp_steps < 1 or self.dp_lr <= 0:
            raise SettingError(f"dp-steps {self.dp_steps} / dp-lr {self.dp_lr}: give at least one step and a positive rate")
        if self.secure_aggregation:  # the sums are large (up to the site's images per coordinate): their own range
            object.__setattr__(self, "secagg_clip", DP_SECAGG_RANGE)
        if self.resume:
            raise SettingError("dp-mode whole-model cannot --resume: the steps already taken were released and spent; "
                               "start a new run (the sites' ledgers count both)")
        for name, value in (("xgb_mode", "none"), ("loso", False), ("local_only", False), ("head_members", 1)):
            object.__setattr__(self, name, value)

    def _check_secure_aggregation(self) -> None:
        """Secure aggregation gives the server the sum of the updates only: what needs each site's own update is out."""
        if self.strategy not in ("fedavg", "fedprox"):
            raise SettingError(f"secure-aggregation with strategy {self.strategy}: the server sees only the sum of the "
                               "updates, which FedAvg and FedProx need; choose --strategy fedavg or fedprox")
        if self.max_update_norm > 0 or self.central_dp_noise > 0:
            raise SettingError("secure-aggregation with max-update-norm or central-dp-noise: both need each site's update "
                               "on its own, which secure aggregation hides; turn them off")
        if not 8 <= self.secagg_bits <= 28 or self.secagg_clip <= 0:
            raise SettingError(f"secagg-bits {self.secagg_bits} / secagg-clip {self.secagg_clip}: give 8 to 28 bits and a "
                               "positive clip")

    def secagg_threshold_for(self, n_sites: int) -> int:
        """Sites that must take part to the end of a secure round: the setting, or a majority (at least 2)."""
        from xincept.common.secagg import majority

        return self.secagg_threshold or majority(n_sites)

    def secagg_config(self, n_sites: int):  # -> xincept.common.secagg.SecAggConfig
        """The secure round's parameters among ``n_sites`` sites, checked (the server's and every site's)."""
        from xincept.common.secagg import SecAggConfig

        cfg = SecAggConfig(threshold=self.secagg_threshold_for(n_sites), clip=self.secagg_clip, bits=self.secagg_bits)
        cfg.check(n_sites)
        return cfg

    def disclosure_policy(self) -> "DisclosurePolicy":
        return DisclosurePolicy(self.disclosure, self.min_cell_count, self.disclosure_epsilon)

    def to_flat(self) -> dict[str, Any]:
        """Flat keys with dashes, as in Flower's run config."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    def client_flat(self) -> dict[str, Any]:
        """What every site receives with every message: the whole settings object but the server's own paths,
        addresses and run control (:data:`SERVER_ONLY`)."""
        return {k: v for k, v in self.to_flat().items() if k.replace("-", "_") not in SERVER_ONLY}

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> "FedSettings":
        names = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, value in flat.items():
            name = key.replace("-", "_")
            if name in names:
                kind = type(getattr(cls(), name))
                kwargs[name] = kind(value) if kind is not bool else value in (True, "true", "True", 1, "1")
        return cls(**kwargs)

    def xgb_config(self) -> XGBConfig:
        return XGBConfig(n_estimators=self.xgb_rounds, learning_rate=self.xgb_eta, max_depth=self.xgb_max_depth,
                         subsample=self.xgb_subsample, max_bin=self.xgb_max_bin,
                         early_stopping_rounds=self.xgb_early_stopping, features=self.xgb_features, margin=self.xgb_margin, seed=self.seed,
                         select=self.select_classifier)

    def run_config(self, cache_dir: Path | None = None, weights_dir: Path | None = None) -> RunConfig:
        return RunConfig(
            backbone=BackboneConfig(names=tuple(n for n in self.backbones.split(",") if n), input_size=self.input_size,
                                    pretrained=self.pretrained, weights_dir=weights_dir, precision=self.precision,
                                    random_backbones=tuple(n for n in self.random_backbones.split(",") if n)),
            head=HeadConfig(activation=self.activation, lr=self.lr, batch_size=self.batch_size, dropout=self.dropout, seed=self.seed),
            xgb=self.xgb_config(),
            split=SplitConfig(seed=self.seed, val_fraction=self.val_fraction, test_fraction=self.test_fraction, group_block=self.group_block),
            augment=AugmentConfig(),
            cache_dir=cache_dir or default_cache_dir(),
        )


def read_toml(path: Path, option: str, what: str = "") -> dict[str, Any]:
    """A TOML file given as ``option``; a clear error naming the option and file when it is missing or invalid."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise SettingError(f"{option} {path} does not exist{what}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SettingError(f"{option} {path} is not valid TOML ({exc})") from exc


def load_settings_file(path: Path) -> dict[str, Any]:
    """Settings from a TOML file: top-level keys, or a [tool.flwr.app.config] table."""
    doc = read_toml(path, "--config")
    table = doc.get("tool", {}).get("flwr", {}).get("app", {}).get("config", doc)
    known = {f.name for f in fields(FedSettings)}
    unknown = [k for k in table if k.replace("-", "_") not in known]
    if unknown:
        raise SettingError(f"--config {path}: unknown setting(s) {unknown}; known: {sorted(known)}")
    return dict(table)
