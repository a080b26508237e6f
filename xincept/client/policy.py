"""The site's policy: what this hospital lets leave it, whatever the server asks.

The policy is set only at the site (``xincept-client join`` options and an optional ``--policy`` TOML
file) and reaches the ClientApp through the node config. Every message the server sends is checked
against it before any local computation runs (:mod:`xincept.client.guard`); a violation is refused with
a reply naming the rule. Defaults are safe: a server cannot turn DP off at a site that requires it,
cannot lower the suppression floor (5), cannot re-draw the site's split, and cannot ask more than a
bounded number of queries of each kind per run and over the site's lifetime.

No Flower import here: the CLI validates a policy file without loading the runtime.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from xincept.common.site_names import SITE_NAME, valid_site_name  # noqa: F401 (re-exported)
from xincept.common.errors import SettingError

DISCLOSURE_MODES = ("suppress", "laplace", "none")
SPLIT_KEYS = ("seed", "test-fold", "group-block", "test-fraction", "val-fraction")

# Query kinds a run is made of, with the default cap per run and over the site's lifetime. The per-run
# defaults fit the default federation with leave-one-site-out among up to 8 sites (3 heads x 150 rounds per
# training); a site that joins larger runs raises them in its policy file.
QUERY_KINDS = {
    "join": "query.join: versions, fingerprints, class counts",
    "embed": "query.embed: per-feature sums over the training split (answered once per run)",
    "train-head": "train.head: one head update (weights) per message",
    "val-release": "aggregate counts of a model on the validation split (evaluate.head split=val, or riding on train.head)",
    "test-release": "aggregate counts of a model on the test split (evaluate.head split=test)",
    "xgb": "train.xgb: one federated histogram XGBoost training",
    "xgb-bagging": "train.xgb_bagging: one local boosting round (trees)",
    "local": "train.local: counts of a model trained on this site's images alone",
}
DEFAULT_PER_RUN = {"join": 5, "embed": 1, "train-head": 5000, "val-release": 6000, "test-release": 40, "xgb": 10,
                   "xgb-bagging": 2000, "local": 2}
DEFAULT_LIFETIME = {"join": 2000, "embed": 500, "train-head": 500_000, "val-release": 600_000, "test-release": 4000, "xgb": 1000,
                    "xgb-bagging": 200_000, "local": 500}


class PolicyViolation(Exception):
    """A message breaks the site's policy; ``rule`` names the policy field (sent back to the server)."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"rule {rule}: {detail}")
        self.rule = rule
        self.detail = detail


@dataclass(frozen=True)
class SitePolicy:
    """What this site allows. Field names are the TOML keys with dashes (``require-dp``)."""

    require_dp: bool = False  # every training message must carry DP-SGD (dp-epsilon > 0)
    require_secure_aggregation: bool = False  # every run must sum the head updates by secure aggregation
    require_whole_model_dp: bool = False  # every run must be whole-model DP: everything that leaves under one epsilon
    max_epsilon: float = 10.0  # the largest per-run DP epsilon this site accepts
    delta: float = 1e-5  # the largest DP delta this site accepts
    lifetime_epsilon: float = 10.0  # all DP trainings on this site's data set together (the ledger), whatever the settings
    min_cell_count: int = 5  # floor: the server may ask for a higher suppression threshold, never a lower one
    disclosure_modes: tuple[str, ...] = ("suppress", "laplace")  # "none" (exact counts) only if listed here
    max_disclosure_epsilon: float = 1.0  # laplace disclosure: the largest epsilon per release
    allow_fedsgd_without_dp: bool = True  # exact full-batch gradients without DP (see deploy/README.md, threat model)
    max_standardisations: int = 9  # distinct input standardisations a run's training heads may carry
    allow_outside_paths: bool = False  # manifest paths outside the data folder (absolute or with ..)
    split_seed: int | None = None  # the site's split; unset fields are fixed from the first run's request, then kept
    test_fold: int | None = None
    group_block: int | None = None
    test_fraction: float | None = None
    val_fraction: float | None = None
    queries_per_run: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PER_RUN))
    queries_lifetime: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIFETIME))

    def __post_init__(self) -> None:
        object.__setattr__(self, "disclosure_modes", tuple(self.disclosure_modes))
        bad = [m for m in self.disclosure_modes if m not in DISCLOSURE_MODES]
        if bad or not self.disclosure_modes:
            raise SettingError(f"policy disclosure-modes {list(self.disclosure_modes)}: choose one or more of {DISCLOSURE_MODES}")
        if self.min_cell_count < 1:
            raise SettingError("policy min-cell-count must be at least 1")
        if not 0 < self.delta < 1 or self.max_epsilon <= 0 or self.lifetime_epsilon <= 0 or self.max_disclosure_epsilon <= 0:
            raise SettingError("policy max-epsilon, lifetime-epsilon and max-disclosure-epsilon must be positive, delta in (0, 1)")
        if self.max_standardisations < 1:
            raise SettingError("policy max-standardisations must be at least 1")
        for name, table, defaults in (("per-run", self.queries_per_run, DEFAULT_PER_RUN),
                                      ("lifetime", self.queries_lifetime, DEFAULT_LIFETIME)):
            unknown = sorted(set(table) - set(QUERY_KINDS))
            if unknown:
                raise SettingError(f"policy [queries.{name}]: unknown kind(s) {unknown}; known: {sorted(QUERY_KINDS)}")
            if any(int(v) < 0 for v in table.values()):
                raise SettingError(f"policy [queries.{name}]: limits must be 0 or more")
            object.__setattr__(self, f"queries_{name.replace('-', '_')}", {**defaults, **{k: int(v) for k, v in table.items()}})

    def pinned_split(self) -> dict[str, Any]:
        """The split fields this policy sets itself (TOML key -> value)."""
        values = {"seed": self.split_seed, "test-fold": self.test_fold, "group-block": self.group_block,
                  "test-fraction": self.test_fraction, "val-fraction": self.val_fraction}
        return {k: v for k, v in values.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        out = {k.replace("_", "-"): v for k, v in asdict(self).items() if v is not None}
        out["disclosure-modes"] = list(self.disclosure_modes)
        out["queries"] = {"per-run": out.pop("queries-per-run"), "lifetime": out.pop("queries-lifetime")}
        return out

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "policy") -> "SitePolicy":
        doc = dict(doc)
        queries = doc.pop("queries", {}) or {}
        if not isinstance(queries, dict) or set(queries) - {"per-run", "lifetime"}:
            raise SettingError(f"{source}: [queries] holds the tables per-run and lifetime only")
        names = {f.name for f in fields(cls)} - {"queries_per_run", "queries_lifetime"}
        kwargs: dict[str, Any] = {}
        for key, value in doc.items():
            name = key.replace("-", "_")
            if name not in names:
                raise SettingError(f"{source}: unknown policy field {key!r}; known: {sorted(n.replace('_', '-') for n in names)}")
            kwargs[name] = value
        kwargs["queries_per_run"] = dict(queries.get("per-run", {}))
        kwargs["queries_lifetime"] = dict(queries.get("lifetime", {}))
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise SettingError(f"{source}: {exc}") from exc


def load_policy_file(path: Path) -> SitePolicy:
    """A policy from a TOML file (see deploy/README.md for every field)."""
    from xincept.common.fedconfig import read_toml

    doc = read_toml(path, "--policy", ": write a TOML file of policy fields (see deploy/README.md)")
    return SitePolicy.from_dict(doc, f"--policy {path}")


def read_policy(path: str | Path | None) -> SitePolicy:
    """The policy the ClientApp enforces: the JSON that ``join`` resolved, or the safe defaults."""
    if not path:
        return SitePolicy()
    p = Path(path)
    if p.suffix == ".toml":
        return load_policy_file(p)
    return SitePolicy.from_dict(json.loads(p.read_text()), str(p))


def default_state_dir(site: str) -> Path:
    """Where a site keeps its policy state (split, query counts, privacy ledger, audit log):
    ``$XINCEPT_STATE_DIR`` (the folder itself, like ``--state-dir``) or ``$XDG_STATE_HOME/xincept/<site>``
    (``~/.local/state``)."""
    import os

    env = os.environ.get("XINCEPT_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "xincept" / site


def describe_fields() -> list[tuple[str, str, str]]:
    """(field, default, meaning) for --help and the operator guide."""
    d = SitePolicy()
    return [
        ("require-dp", str(d.require_dp).lower(), "refuse every run without DP-SGD (dp-epsilon > 0)"),
        ("require-secure-aggregation", str(d.require_secure_aggregation).lower(),
         "refuse every run whose head updates are not summed by secure aggregation (no unmasked update leaves)"),
        ("require-whole-model-dp", str(d.require_whole_model_dp).lower(),
         "refuse every run that is not whole-model DP (dp-mode whole-model: every release of the site under its epsilon)"),
        ("max-epsilon", f"{d.max_epsilon:g}", "largest per-run DP epsilon accepted"),
        ("delta", f"{d.delta:g}", "largest DP delta accepted"),
        ("lifetime-epsilon", f"{d.lifetime_epsilon:g}", "cap on epsilon over all runs on this data set (privacy ledger)"),
        ("min-cell-count", str(d.min_cell_count), "suppression floor: a server asking for less is refused"),
        ("disclosure-modes", "suppress, laplace", "disclosure modes accepted (add none for exact counts)"),
        ("max-disclosure-epsilon", f"{d.max_disclosure_epsilon:g}", "largest Laplace disclosure epsilon per release"),
        ("allow-fedsgd-without-dp", str(d.allow_fedsgd_without_dp).lower(), "exact full-batch gradient uploads without DP"),
        ("max-standardisations", str(d.max_standardisations), "distinct input standardisations per run in training heads"),
        ("allow-outside-paths", "false", "manifest paths outside the data folder"),
        ("split-seed, test-fold, group-block, test-fraction, val-fraction", "fixed at first join",
         "the site's split; never re-drawn by a server"),
        ("[queries.per-run], [queries.lifetime]", "see deploy/README.md", "cap per query kind"),
    ]
