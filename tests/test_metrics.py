from __future__ import annotations

import numpy as np
import pytest

from xincept.common.metrics import bootstrap_ci, classification_metrics, expected_calibration_error

CLASSES = ["A", "B", "C"]


def _onehot(pred: list[int], k: int = 3, conf: float = 1.0) -> np.ndarray:
    p = np.full((len(pred), k), (1 - conf) / (k - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def test_metrics_from_a_known_confusion_matrix() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    pred = [0, 0, 0, 1, 1, 1, 1, 1, 2, 0]
    m = classification_metrics(y, _onehot(pred, conf=0.8), CLASSES)
    assert m["confusion"] == [[3, 1, 0], [0, 4, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(0.8)
    a = m["per_class"]["A"]
    assert a["sensitivity"] == pytest.approx(0.75) and a["specificity"] == pytest.approx(5 / 6)
    assert a["precision"] == pytest.approx(0.75) and a["f1"] == pytest.approx(0.75)
    assert m["per_class"]["C"]["sensitivity"] == pytest.approx(0.5)
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 1 + 0.5) / 3)
    assert 0 < m["kappa"] < 1 and 0 <= m["auc_ovr"] <= 1


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    y = np.array([0, 1, 2, 0])
    assert expected_calibration_error(y, _onehot([0, 1, 2, 0])) == pytest.approx(0.0)
    assert expected_calibration_error(y, _onehot([1, 2, 0, 1])) == pytest.approx(1.0)


def test_bootstrap_interval_brackets_the_estimate_and_widens_with_groups() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    pred = np.where(rng.random(300) < 0.8, y, (y + 1) % 3)
    proba = _onehot(list(pred), conf=0.7)
    acc = float((pred == y).mean())
    ci = bootstrap_ci(y, proba, CLASSES, n_boot=300)
    assert ci["accuracy"][0] < acc < ci["accuracy"][1]
    groups = [f"g{i // 30}" for i in range(300)]  # 10 clusters
    gci = bootstrap_ci(y, proba, CLASSES, groups=groups, n_boot=300)
    assert set(gci) >= {"accuracy", "balanced_accuracy", "macro_f1", "auc_ovr", "kappa"}


def test_strict_json_never_writes_nan_or_infinity(tmp_path) -> None:
    import json
    import math

    import numpy as np

    from xincept.common.atomic import write_json_atomic
    from xincept.common.strict_json import dumps, loads_strict

    doc = {"a": float("nan"), "b": [1.0, float("inf"), np.float32("nan")], "c": np.array([0.5, -np.inf]), "d": np.int64(3)}
    text = dumps(doc)
    assert loads_strict(text) == {"a": None, "b": [1.0, None, None], "c": [0.5, None], "d": 3}
    write_json_atomic(tmp_path / "m.json", doc)
    loads_strict((tmp_path / "m.json").read_text())
    with pytest.raises(ValueError, match="NaN"):
        loads_strict(json.dumps({"x": math.nan}))


def test_metrics_with_no_images_of_a_class_are_undefined_not_zero() -> None:
    y = np.array([0, 0, 1, 1])
    p = _onehot([0, 0, 1, 0], k=3)
    m = classification_metrics(y, p, ["a", "b", "c"])
    c = m["per_class"]["c"]
    assert c["sensitivity"] is None and "no c images" in c["undefined"]["sensitivity"]
    assert c["precision"] is None and "predicted c" in c["undefined"]["precision"]
    assert m["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)  # over the classes with images, as scikit-learn
