"""Split one data set into simulated hospital sites, whole patient groups at a time.

Schemes: ``iid``, ``dirichlet:ALPHA`` (per-class site shares drawn from Dirichlet(alpha)),
``label-skew:K`` (each site holds K classes) and ``folders`` (DIR/<site>/<class>/...).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from xincept.common.atomic import write_with_atomic
from xincept.common.data import ImageRecord
from xincept.common.errors import SettingError


def parse_scheme(scheme: str) -> tuple[str, float]:
    kind, _, arg = scheme.partition(":")
    if kind == "iid" or kind == "folders":
        return kind, 0.0
    if kind in ("dirichlet", "label-skew"):
        try:
            value = float(arg)
        except ValueError:
            raise SettingError(f"--partition {scheme!r}: give a number, e.g. dirichlet:0.5 or label-skew:2") from None
        if value <= 0:
            raise SettingError(f"--partition {scheme!r}: the value must be positive")
        return kind, value
    raise SettingError(f"--partition {scheme!r}: choose iid, dirichlet:ALPHA, label-skew:K or folders")


def partition_groups(records: list[ImageRecord], n_sites: int, scheme: str, n_classes: int, seed: int = 0) -> list[list[int]]:
    """Record indices per site; every group goes to exactly one site."""
    kind, value = parse_scheme(scheme)
    if n_sites < 1:
        raise SettingError("--sites must be at least 1")
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_group[r.group].append(i)
    groups = sorted(by_group)
    label = {g: records[by_group[g][0]].label for g in groups}  # duplicates may mix labels; first wins for assignment
    sites: list[list[int]] = [[] for _ in range(n_sites)]
    if kind == "iid":
        for c in range(n_classes):
            gs = [g for g in groups if label[g] == c]
            rng.shuffle(gs)
            for j, g in enumerate(gs):
                sites[(j + c) % n_sites].extend(by_group[g])
    elif kind == "dirichlet":
        for c in range(n_classes):
            gs = [g for g in groups if label[g] == c]
            rng.shuffle(gs)
            shares = rng.dirichlet(np.full(n_sites, value))
            cuts = (np.cumsum(shares)[:-1] * len(gs)).round().astype(int)
            for s, chunk in enumerate(np.split(np.array(gs, dtype=object), cuts)):
                for g in chunk:
                    sites[s].extend(by_group[g])
    elif kind == "label-skew":
        k = int(value)
        if not 1 <= k <= n_classes:
            raise SettingError(f"label-skew:{k}: K must be between 1 and the number of classes ({n_classes})")
        owners: dict[int, list[int]] = defaultdict(list)
        for s in range(n_sites):
            for j in range(k):
                owners[(s + j) % n_classes].append(s)
        for c in range(n_classes):
            gs = [g for g in groups if label[g] == c]
            rng.shuffle(gs)
            holders = owners.get(c) or [c % n_sites]
            for j, g in enumerate(gs):
                sites[holders[j % len(holders)]].extend(by_group[g])
    else:
        raise SettingError("the folders scheme reads sites from DIR/<site>/<class>/...; no partitioning is done")
    return [sorted(s) for s in sites]


def write_manifest(path: Path, records: list[ImageRecord], classes: list[str]) -> None:
    """A manifest CSV (path,label,group) for one site."""

    def writer(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "group"])
            for r in records:
                w.writerow([str(Path(r.path).resolve()), classes[r.label], r.group])

    write_with_atomic(path, writer)
