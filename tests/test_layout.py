"""README's Layout lists every module of the package, and no module that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_layout_lists_every_module_once() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("## Tests")]
    listed = re.findall(r"^\| `(xincept/[\w/]+\.py)` \| .+ \|$", layout, re.M)
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "xincept").rglob("*.py") if p.name != "__init__.py")
    assert sorted(listed) == modules
    assert "client/app.py" in layout and "flower-supernode" in layout  # how a deployed message reaches the ClientApp
