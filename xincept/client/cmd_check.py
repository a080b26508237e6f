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
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when any problem is found.")] = False,
) -> None:
    """Count images per class and list unreadable files, duplicates, odd sizes or modes and class mismatches."""
    check_format(fmt)
    setup_logging()
    from xincept.common.data import scan_site

    site = scan_site(data, split_names(classes), manifest, group_block, show_progress=fmt == "text",
                     allow_outside=allow_outside_paths)
    report = site.report
    if fmt == "json":
        stdout_json(report.to_dict())
    else:
        _print_report(report)
    problems = report.skipped or report.empty_classes or report.missing_classes or report.unknown_classes or report.label_conflicts
    if strict and problems:
        raise typer.Exit(1)


def _print_report(report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{report.root}: {report.n_images} usable images, {report.n_groups} patient groups")
    table.add_column("class")
    table.add_column("images", justify="right")
    for name, n in report.counts.items():
        table.add_row(name, str(n))
    console.print(table)
    sections = [
        ("skipped files", [f"{s['path']}: {s['reason']}" for s in report.skipped]),
        ("exact duplicates (kept together in splits)", [" = ".join(d) for d in report.duplicates]),
        ("duplicates with different labels", [" = ".join(d) for d in report.label_conflicts]),
        ("unexpected size or mode", [f"{u['path']}: {u['reason']}" for u in report.unexpected]),
        ("empty class folders", report.empty_classes),
        ("expected classes not found", report.missing_classes),
        ("class folders not in the class list (skipped)", report.unknown_classes),
    ]
    for title, lines in sections:
        if lines:
            console.print(f"[bold yellow]{title}[/] ({len(lines)})")
            for line in lines[:50]:
                console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
            if len(lines) > 50:
                console.print(f"  … and {len(lines) - 50} more (use --format json for all)")
    if not any(lines for _, lines in sections):
        console.print("[green]no problems found[/]")
