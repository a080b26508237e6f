"""`xincept-client check`: what a site's data folder holds and what is wrong with it."""

from __future__ import annotations

from typing import Annotated

import typer

from xincept.common.cli import (AllowOutsideOpt, ClassesOpt, DataOpt, FormatOpt, GroupBlockOpt, ManifestOpt, check_format,
                                friendly_errors, setup_logging, split_names, stdout_json)


@friendly_errors
def check(
    data: DataOpt,
    classes: ClassesOpt = None,
    manifest: ManifestOpt = None,
    allow_outside_paths: AllowOutsideOpt = False,
    group_block: GroupBlockOpt = 25,
    fmt: FormatOpt = "text",
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when anything is listed (duplicates and odd sizes "
                                         "too).")] = False,
) -> None:
    """Count images per class and list unreadable files, duplicates, odd sizes or modes and class mismatches."""
    check_format(fmt)
    setup_logging()
    from xincept.common.data import scan_site

    site = scan_site(data, split_names(classes), manifest, group_block, show_progress=fmt == "text",
                     allow_outside=allow_outside_paths)
    report = site.report
    sections = _sections(report)
    if fmt == "json":
        stdout_json({**report.to_dict(), "findings": {title: len(lines) for title, lines in sections if lines}})
    else:
        _print_report(report, sections)
    if strict and any(lines for _, lines in sections):  # --strict: anything listed is a failure, as the README says
        raise typer.Exit(1)


def _sections(report) -> list[tuple[str, list[str]]]:
    """Everything ``check`` lists, by title (empty lists: nothing found)."""
    present = [name for name, n in report.counts.items() if n]
    return [
        ("skipped files", [f"{s['path']}: {s['reason']}" for s in report.skipped]),
        ("too few classes to train a classifier (at least two need images)",
         [f"images of {len(present)} class(es): {', '.join(present) or 'none'}"] if len(present) < 2 else []),
        ("exact duplicates (kept together in splits)", [" = ".join(d) for d in report.duplicates]),
        ("duplicates with different labels", [" = ".join(d) for d in report.label_conflicts]),
        ("unexpected size or mode", [f"{u['path']}: {u['reason']}" for u in report.unexpected]),
        ("empty class folders", report.empty_classes),
        ("expected classes not found", report.missing_classes),
        ("class folders not in the class list (skipped)", report.unknown_classes),
    ]


def _print_report(report, sections: list[tuple[str, list[str]]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{report.root}: {report.n_images} usable images, {report.n_groups} patient groups")
    table.add_column("class")
    table.add_column("images", justify="right")
    for name, n in report.counts.items():
        table.add_row(name, str(n))
    console.print(table)
    for title, lines in sections:
        if lines:
            console.print(f"[bold yellow]{title}[/] ({len(lines)})")
            for line in lines[:50]:
                console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
            if len(lines) > 50:
                console.print(f"  … and {len(lines) - 50} more (use --format json for all)")
    if not any(lines for _, lines in sections):
        console.print("[green]no problems found[/]")
