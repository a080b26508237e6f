"""docs/RESULTS.md and its plots are regenerated from bench/results/ by `python bench/make_results.py`."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_results_page_references_at_least_four_plots_it_draws_itself(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_results", ROOT / "bench" / "make_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.DOCS = tmp_path  # the same script, writing into a scratch folder
    module.main()
    page = (tmp_path / "RESULTS.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", page)
    assert len(images) >= 4 and {"partition.png", "dp.png", "scale.png", "embed.png"} <= set(images)
    assert all((tmp_path / name).stat().st_size > 1000 for name in images)  # each one drawn by this run
    assert page == (ROOT / "docs" / "RESULTS.md").read_text()  # the committed page is what the script writes
