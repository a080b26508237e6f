"""Refuse, before any embedding or Ray start, what cannot be learned or evaluated, naming the setting and the fix."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from xincept.common.data import ImageRecord, SiteData
from xincept.common.errors import DataError, SettingError


def classes_with_images(records: list[ImageRecord], classes: list[str]) -> dict[str, int]:
    counts = Counter(r.label for r in records)
    return {classes[k]: n for k, n in sorted(counts.items()) if n}


def require_two_classes(records: list[ImageRecord], classes: list[str], where: str) -> None:
    present = classes_with_images(records, classes)
    if len(present) < 2:
        raise DataError(f"{where} holds images of {len(present)} class(es) ({', '.join(present) or 'none'}): a classifier "
                        "needs at least two; add the other classes' folders (DIR/<class>/<image>) or check --classes")


def require_cv_folds(site: SiteData, folds: int) -> None:
    """Every class with images needs at least ``folds`` patient groups for grouped stratified k-fold CV."""
    require_two_classes(site.records, site.classes, str(site.report.root))
    groups: dict[int, set[str]] = defaultdict(set)
    for r in site.records:
        groups[r.label].add(r.group)
    thin = {site.classes[k]: len(g) for k, g in sorted(groups.items()) if len(g) < folds}
    if thin:
        detail = ", ".join(f"{c}: {n} group(s)" for c, n in thin.items())
        raise DataError(f"{folds}-fold grouped cross-validation needs every class in at least {folds} patient groups "
                        f"({detail}): lower --folds (to {max(2, min(thin.values()))} or less), lower --group-block, or add images")


def require_sites(n_sites: int, records: list[ImageRecord], group_block: int) -> None:
    n_groups = len({r.group for r in records})
    if n_sites < 1:
        raise SettingError(f"--sites {n_sites}: give 1 or more simulated sites")
    if n_sites > n_groups:
        raise SettingError(f"--sites {n_sites}: the data set has {n_groups} patient groups (runs of {group_block} file "
                           "numbers) and a site holds whole groups; use at most "
                           f"{n_groups} sites, or a smaller --group-block")


def require_site_splits(parts: list[list[int]], records: list[ImageRecord], scheme: str, test_fraction: float,
                        val_fraction: float, seed: int, test_fold: int, floor: int) -> None:
    """Each simulated site must get a test and a validation split of at least ``floor`` images (smaller ones release
    nothing under disclosure control) and training images, as the site itself would split them."""
    from xincept.common.splits import site_split

    problems = []
    for i, idx in enumerate(parts):
        if not idx:
            problems.append(f"site-{i} gets no images")
            continue
        y = np.array([records[j].label for j in idx])
        groups = [records[j].group for j in idx]
        try:
            split = site_split(y, groups, test_fraction, val_fraction, seed, test_fold)
        except (DataError, ValueError) as exc:
            problems.append(f"site-{i} ({len(idx)} images, {len(set(groups))} groups) cannot be split ({exc})")
            continue
        sizes = {k: len(v) for k, v in split.items()}
        if sizes["train"] < 1 or sizes["test"] < floor or sizes["val"] < floor:
            problems.append(f"site-{i} ({len(idx)} images, {len(set(groups))} groups) would test on {sizes['test']}, "
                            f"validate on {sizes['val']} and train on {sizes['train']}")
    if problems:
        raise SettingError(f"--partition {scheme}: " + "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
                           + f". Each site needs test and validation splits of at least min-cell-count ({floor}) images: use "
                           "fewer --sites, a larger Dirichlet alpha or iid, a smaller --group-block, or more images")
