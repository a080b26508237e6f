"""Package versions recorded in every model bundle."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

TRACKED = ("xincept-all", "torch", "torchvision", "timm", "xgboost", "flwr", "opacus", "scikit-learn", "numpy", "pillow")


def package_versions() -> dict[str, str]:
    out = {}
    for name in TRACKED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
