"""Package versions recorded in every model bundle."""

from __future__ import annotations

import functools
import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

TRACKED = ("xincept-all", "torch", "torchvision", "timm", "xgboost", "flwr", "opacus", "scikit-learn", "numpy", "pillow")


def package_versions() -> dict[str, str]:
    out = {}
    for name in TRACKED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """sha256 over the installed xincept package's Python sources (path and content): what this machine runs."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def check_pushed_app(version_wanted: str | None, hash_wanted: str | None, site: str) -> None:
    """A site runs only the app it has installed: refuse a run built for another version or other code."""
    from xincept import __version__
    from xincept.common.errors import SettingError

    if not version_wanted or not hash_wanted:
        raise SettingError(f"site {site}: the server's run does not say which xincept version and code it was built for: "
                           "refusing (upgrade the server to this release)")
    if version_wanted != __version__:
        raise SettingError(f"site {site} runs xincept {__version__} but the server's run is for {version_wanted}: refusing. "
                           "Install the same version at every site and at the server")
    if hash_wanted != code_hash():
        raise SettingError(f"site {site}: the server's xincept code (hash {hash_wanted[:12]}…) differs from the code installed "
                           f"here ({code_hash()[:12]}…): refusing a modified or different app. Install the same release everywhere")
