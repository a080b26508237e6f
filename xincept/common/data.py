"""Site data: find images, read an optional manifest, and check everything before use.

A site folder is ``DIR/<class>/<image>`` (jpg, png, bmp, tif), or any layout described by a
manifest CSV with columns ``path,label[,group][,split]``. Problems are reported, never raised
as tracebacks: unreadable files are listed and skipped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from xincept.common.errors import DataError
from xincept.common.progress import track

log = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
IGNORED_NAMES = frozenset({"readme.md", "sha256sums.txt", ".ds_store", "thumbs.db"})
MANIFEST_REQUIRED = ("path", "label")
MANIFEST_OPTIONAL = ("group", "split")
SPLITS = frozenset({"train", "val", "test"})


@dataclass(frozen=True)
class ImageRecord:
    """One usable image. ``group`` keeps images of one patient or slide together."""

    path: Path
    label: int
    sha256: str
    group: str
    split: str | None = None


@dataclass
class ScanReport:
    """What a check of a site folder found."""

    root: str
    classes: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)  # unreadable / corrupt / non-image
    duplicates: list[list[str]] = field(default_factory=list)
    label_conflicts: list[list[str]] = field(default_factory=list)
    unexpected: list[dict[str, str]] = field(default_factory=list)  # size or mode differs
    empty_classes: list[str] = field(default_factory=list)
    missing_classes: list[str] = field(default_factory=list)
    unknown_classes: list[str] = field(default_factory=list)
    common_size: list[int] | None = None
    n_groups: int = 0

    @property
    def n_images(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "classes": self.classes,
            "counts": self.counts,
            "n_images": self.n_images,
            "n_groups": self.n_groups,
            "common_size": self.common_size,
            "skipped": self.skipped,
            "duplicates": self.duplicates,
            "label_conflicts": self.label_conflicts,
            "unexpected": self.unexpected,
            "empty_classes": self.empty_classes,
            "missing_classes": self.missing_classes,
            "unknown_classes": self.unknown_classes,
        }

    def summary(self) -> dict:
        """Numbers only: what may leave a site."""
        return {
            "classes": self.classes,
            "counts": self.counts,
            "n_images": self.n_images,
            "n_groups": self.n_groups,
            "n_skipped": len(self.skipped),
            "n_duplicate_sets": len(self.duplicates),
        }


@dataclass
class SiteData:
    records: list[ImageRecord]
    report: ScanReport

    @property
    def classes(self) -> list[str]:
        return self.report.classes


def _group_key(path: Path, label: str, block: int) -> str:
    """Runs of ``block`` consecutive file numbers form one group (neighbours share a patient)."""
    match = re.search(r"(\d+)$", path.stem)
    if not match:
        return f"{label}/{path.stem}"
    prefix = path.stem[: match.start()]
    return f"{label}/{prefix}#{int(match.group(1)) // max(block, 1)}"


def read_image(path: Path) -> tuple[bytes, tuple[int, int], str]:
    """Read and fully decode an image; raise OSError/ValueError when it is unusable."""
    from PIL import Image, UnidentifiedImageError

    data = path.read_bytes()
    if not data:
        raise ValueError("empty file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decodes every pixel: truncated files fail here
            return data, img.size, img.mode
    except UnidentifiedImageError:
        raise ValueError("not a recognised image format") from None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _read_manifest(manifest: Path, root: Path, allow_outside: bool = False) -> list[tuple[Path, str, str | None, str | None]]:
    if not manifest.is_file():
        raise DataError(f"manifest {manifest} does not exist: give a CSV with columns path,label[,group][,split]")
    with manifest.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        missing = [c for c in MANIFEST_REQUIRED if c not in header]
        extra = [c for c in header if c not in MANIFEST_REQUIRED + MANIFEST_OPTIONAL]
        if missing or extra:
            raise DataError(
                f"manifest {manifest} has columns {header}: expected path,label[,group][,split]"
                + (f" (missing {missing})" if missing else "")
                + (f" (unknown {extra})" if extra else "")
                + ". Fix the header line of the CSV."
            )
        rows = []
        for lineno, raw in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            if not row.get("path") or not row.get("label"):
                raise DataError(f"manifest {manifest} line {lineno}: 'path' and 'label' must not be empty")
            split = row.get("split") or None
            if split is not None and split not in SPLITS:
                raise DataError(f"manifest {manifest} line {lineno}: split {split!r} is not one of {sorted(SPLITS)}")
            p = Path(row["path"])
            full = p if p.is_absolute() else root / p
            if not allow_outside and (p.is_absolute() or not _inside(full, root)):
                raise DataError(f"manifest {manifest} line {lineno}: path {row['path']!r} lies outside the data folder {root}; "
                                "give paths relative to the data folder, or pass --allow-outside-paths if the site means it")
            rows.append((full, row["label"], row.get("group") or None, split))
    return rows


def _list_folder(root: Path, report: ScanReport) -> list[tuple[Path, str, str | None, str | None]]:
    entries = []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
        for p in files:
            if p.suffix.lower() not in IMAGE_EXTS and p.name.lower() not in IGNORED_NAMES:
                report.skipped.append({"path": str(p), "reason": f"not an image ({p.suffix or 'no extension'})"})
        if not images:
            report.empty_classes.append(folder.name)
        entries.extend((p, folder.name, None, None) for p in images)
    return entries


def scan_site(
    root: Path,
    expected_classes: list[str] | None = None,
    manifest: Path | None = None,
    group_block: int = 25,
    show_progress: bool = True,
    allow_outside: bool = False,
) -> SiteData:
    """Find, decode and hash every image of a site; group neighbours and duplicates.

    Args:
        root: the site's data folder.
        expected_classes: class names in label order; folders outside it are reported and skipped.
        manifest: optional CSV ``path,label[,group][,split]``; paths are relative to ``root``.
        group_block: consecutive file numbers per group when no group column is given.
        allow_outside: accept manifest paths outside ``root`` (absolute, or climbing out with ``..``).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder: pass --data DIR with DIR/<class>/<image> files")
    report = ScanReport(root=str(root), classes=[])
    entries = _read_manifest(manifest, root, allow_outside) if manifest else _list_folder(root, report)

    found = sorted({label for _, label, _, _ in entries})
    if expected_classes:
        classes = list(expected_classes)
        report.unknown_classes = [c for c in found if c not in classes]
        report.missing_classes = [c for c in classes if c not in found and c not in report.empty_classes]
    else:
        classes = found
    if not classes:
        raise DataError(f"no images found under {root}: expected DIR/<class>/<image> with extensions {sorted(IMAGE_EXTS)}")
    report.classes = classes
    index = {c: i for i, c in enumerate(classes)}

    raw: list[tuple[Path, int, str, str | None, str | None]] = []
    sizes: Counter[tuple[int, int]] = Counter()
    shapes: dict[Path, tuple[tuple[int, int], str]] = {}
    for path, label, group, split in track(entries, f"checking {root.name}", total=len(entries)) if show_progress else entries:
        if label not in index:
            report.skipped.append({"path": str(path), "reason": f"class {label!r} is not in the class list {classes}"})
            continue
        try:
            data, size, mode = read_image(path)
        except FileNotFoundError:
            report.skipped.append({"path": str(path), "reason": "file not found"})
            continue
        except Exception as exc:  # PIL raises many types for corrupt data
            report.skipped.append({"path": str(path), "reason": f"unreadable or corrupt image: {exc}"})
            continue
        sizes[size] += 1
        shapes[path] = (size, mode)
        raw.append((path, index[label], hashlib.sha256(data).hexdigest(), group, split))

    if sizes:
        common = sizes.most_common(1)[0][0]
        report.common_size = list(common)
        for path, (size, mode) in shapes.items():
            if size != common:
                report.unexpected.append({"path": str(path), "reason": f"size {size[0]}x{size[1]} differs from the common {common[0]}x{common[1]} (resized at embedding)"})
            if mode != "RGB":
                report.unexpected.append({"path": str(path), "reason": f"mode {mode} (converted to RGB)"})

    records = _group(raw, classes, group_block, report)
    for c in classes:
        report.counts[c] = sum(1 for r in records if r.label == index[c])
    for msg in _warnings(report):
        log.warning(msg)
    return SiteData(records=records, report=report)


def _group(raw: list, classes: list[str], block: int, report: ScanReport) -> list[ImageRecord]:
    """Assign groups and merge the groups of exact duplicates (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    groups = [g if g else _group_key(p, classes[y], block) for p, y, _, g, _ in raw]
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, (_, _, h, _, _) in enumerate(raw):
        by_hash[h].append(i)
        find(groups[i])
    for idx in by_hash.values():
        if len(idx) > 1:
            report.duplicates.append([str(raw[i][0]) for i in idx])
            if len({raw[i][1] for i in idx}) > 1:
                report.label_conflicts.append([f"{raw[i][0]} ({classes[raw[i][1]]})" for i in idx])
            for i in idx[1:]:
                parent[find(groups[i])] = find(groups[idx[0]])
    records = [ImageRecord(path=p, label=y, sha256=h, group=find(groups[i]), split=s) for i, (p, y, h, _, s) in enumerate(raw)]
    report.n_groups = len({r.group for r in records})
    return records


def _warnings(report: ScanReport) -> list[str]:
    out = []
    if report.skipped:
        out.append(f"{len(report.skipped)} file(s) skipped (unreadable, corrupt, non-image or unknown class); run `xincept-client check` to list them")
    if report.empty_classes:
        out.append(f"empty class folder(s): {report.empty_classes}")
    if report.missing_classes:
        out.append(f"expected class(es) with no images: {report.missing_classes}")
    if report.unknown_classes:
        out.append(f"class folder(s) not in the class list, skipped: {report.unknown_classes}")
    if report.label_conflicts:
        out.append(f"{len(report.label_conflicts)} identical image(s) carry different labels")
    return out


def require_usable(site: SiteData, min_per_class: int = 1) -> None:
    """Raise a DataError when a site cannot be trained on.

    Absent classes are fine (non-IID sites); a class with a single image is allowed with a warning (in a
    federation the other sites carry it), unless ``min_per_class`` asks for more.
    """
    report = site.report
    if not site.records:
        raise DataError(f"no readable images under {report.root}: run `xincept-client check --data {report.root}` for details")
    single = {c: n for c, n in report.counts.items() if n == 1}
    if single:
        log.warning("class(es) %s under %s have a single image: it lands in one split only; results for that class "
                    "at this site rest on one image", sorted(single), report.root)
    thin = {c: n for c, n in report.counts.items() if 0 < n < min_per_class}
    if thin:
        raise DataError(
            f"class(es) {thin} under {report.root} have fewer than {min_per_class} readable images: "
            "add images, or remove the class folder and pass a class list without it"
        )
