"""Site data checks: every kind of bad input gets a reported skip or a clear DataError."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xincept.common.data import scan_site
from xincept.common.errors import DataError
from xincept.common.synthetic import write_image_folder


def test_counts_classes_and_hashes(image_dir: Path) -> None:
    site = scan_site(image_dir, show_progress=False)
    assert site.classes == ["Benign", "Early", "Pre", "Pro"]
    assert site.report.counts == {c: 10 for c in site.classes}
    assert len({r.sha256 for r in site.records}) == 40
    assert not site.report.skipped


def test_corrupt_jpeg_truncated_png_and_non_image_are_skipped_with_reasons(image_dir: Path) -> None:
    (image_dir / "Benign" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    png = (image_dir / "Early" / "Early-001.png").read_bytes()
    (image_dir / "Early" / "truncated.png").write_bytes(png[: len(png) // 2])
    (image_dir / "Pre" / "notes.txt").write_text("hello")
    (image_dir / "Pro" / "empty.jpg").write_bytes(b"")
    site = scan_site(image_dir, show_progress=False)
    reasons = {Path(s["path"]).name: s["reason"] for s in site.report.skipped}
    assert set(reasons) == {"broken.jpg", "truncated.png", "notes.txt", "empty.jpg"}
    assert "corrupt" in reasons["broken.jpg"] and "corrupt" in reasons["truncated.png"]
    assert "not an image" in reasons["notes.txt"]
    assert site.report.counts == {c: 10 for c in site.classes}


def test_empty_class_folder_is_reported_and_not_a_class(image_dir: Path) -> None:
    (image_dir / "Empty").mkdir()
    site = scan_site(image_dir, show_progress=False)
    assert site.report.empty_classes == ["Empty"]
    assert "Empty" not in site.classes


def test_unknown_and_missing_classes_against_expected_list(image_dir: Path) -> None:
    site = scan_site(image_dir, expected_classes=["Benign", "Early", "Pre", "Pro", "L3"], show_progress=False)
    assert site.report.missing_classes == ["L3"]
    site = scan_site(image_dir, expected_classes=["Benign", "Early", "Pre"], show_progress=False)
    assert site.report.unknown_classes == ["Pro"]
    assert all(r.label < 3 for r in site.records)
    assert sum("not in the class list" in s["reason"] for s in site.report.skipped) == 10


def test_grayscale_and_odd_size_are_reported_and_kept(image_dir: Path) -> None:
    Image.fromarray(np.full((64, 64), 128, np.uint8), mode="L").save(image_dir / "Pre" / "gray.png")
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(image_dir / "Pre" / "small.png")
    site = scan_site(image_dir, show_progress=False)
    reasons = " ".join(u["reason"] for u in site.report.unexpected)
    assert "mode L" in reasons and "30" in reasons and "differs" in reasons
    assert site.report.counts["Pre"] == 12


def test_missing_folder_and_no_images_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan_site(tmp_path / "nope", show_progress=False)
    (tmp_path / "empty" / "A").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        scan_site(tmp_path / "empty", show_progress=False)


def test_manifest_with_wrong_columns_names_file_and_fix(image_dir: Path) -> None:
    bad = image_dir / "manifest.csv"
    bad.write_text("file,class\nBenign/Benign-001.png,Benign\n")
    with pytest.raises(DataError, match=r"manifest .*manifest.csv.*expected path,label"):
        scan_site(image_dir, manifest=bad, show_progress=False)


def test_manifest_groups_and_splits_are_used(image_dir: Path) -> None:
    rows = ["path,label,group,split"]
    for cls in ("Benign", "Pro"):
        for i in range(1, 11):
            rows.append(f"{cls}/{cls}-{i:03d}.png,{cls},p{cls}{i % 3},{'test' if i <= 3 else 'train'}")
    man = image_dir / "m.csv"
    man.write_text("\n".join(rows) + "\n")
    site = scan_site(image_dir, manifest=man, show_progress=False)
    assert site.classes == ["Benign", "Pro"]
    assert site.report.n_groups == 6
    assert sum(r.split == "test" for r in site.records) == 6


def test_duplicates_share_a_group_and_are_reported(image_dir: Path) -> None:
    shutil.copy(image_dir / "Benign" / "Benign-001.png", image_dir / "Benign" / "Benign-009.png")
    site = scan_site(image_dir, group_block=2, show_progress=False)
    assert len(site.report.duplicates) == 1
    g = {r.path.name: r.group for r in site.records}
    assert g["Benign-001.png"] == g["Benign-009.png"]


def test_consecutive_numbers_form_groups(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "s", per_class=10, classes=("A", "B"))
    site = scan_site(root, group_block=5, show_progress=False)
    # numbers 1..10 in blocks of 5: {1-4}, {5-9}, {10} per class
    assert site.report.n_groups == 6
