"""Shared pieces of both CLIs: option aliases, logging, and error handling. Imports no torch."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

DataOpt = Annotated[Path, typer.Option("--data", "-d", help="Site data folder: DIR/<class>/<image> (jpg, png, bmp, tif).")]
ManifestOpt = Annotated[Path | None, typer.Option("--manifest", help="Optional CSV with columns path,label[,group][,split].")]
AllowOutsideOpt = Annotated[bool, typer.Option("--allow-outside-paths", help="Accept manifest paths outside the data folder "
                                                "(absolute, or climbing out with ..); refused by default.")]
ClassesOpt = Annotated[str | None, typer.Option("--classes", help="Expected classes in label order, comma-separated (default: the class folders found).")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
NoPretrainedOpt = Annotated[bool, typer.Option("--no-pretrained", help="Random backbone weights (no download). Recorded as a warning in every output; not for clinical use.")]
RandomBackbonesOpt = Annotated[str | None, typer.Option("--random-backbones", help="Comma-separated backbones that get random "
                                                      "weights while the others load staged ImageNet weights (labelled in "
                                                      "every output), e.g. inception_v3.")]
WeightsDirOpt = Annotated[Path | None, typer.Option("--weights-dir", envvar="XINCEPT_WEIGHTS_DIR", help="Folder of staged backbone weights (<name>.safetensors) for offline sites.")]
CacheDirOpt = Annotated[Path | None, typer.Option("--cache-dir", envvar="XINCEPT_CACHE_DIR", help="Embedding cache folder (default ~/.cache/xincept).")]
InputSizeOpt = Annotated[int, typer.Option("--input-size", help="Backbone input size in pixels (thesis: 224).")]
BackbonesOpt = Annotated[str, typer.Option("--backbones", help="Comma-separated timm backbone names.")]
GroupBlockOpt = Annotated[int, typer.Option("--group-block", help="Consecutive file numbers per patient group (used when no manifest group column).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="Embedding numerics: auto (bf16 on CPUs with AVX-512 BF16, fp16 on CUDA) or fp32.")]
FormatOpt = Annotated[str, typer.Option("--format", help="Output format: text or json.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]


THIRD_PARTY = ("timm", "urllib3", "matplotlib", "PIL", "httpx", "filelock", "alembic", "sqlalchemy", "ray", "flwr")
NOISY_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


class _QuietFlower(logging.Filter):
    """On Flower's logger itself (Flower resets its levels and handlers when a simulation starts): its warnings and
    errors pass, its INFO lines and its deprecation notices (``DEPRECATED FEATURE``) do not."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and "DEPRECATED" not in str(record.msg)


def setup_logging(verbose: bool = False) -> None:
    """xincept's INFO lines on stderr, each once; third-party INFO and deprecation noise only with --verbose.

    Flower's logger keeps its own handler and no longer reaches the root one too (every Flower line appeared twice);
    warnings filters go to child processes (Ray's workers) through PYTHONWARNINGS.
    """
    import warnings

    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.INFO
    handler = RichHandler(show_path=False, rich_tracebacks=False, console=_err_console())
    handler.setLevel(level)
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]", handlers=[handler], force=True)
    flwr_log = logging.getLogger("flwr")
    flwr_log.propagate = False
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose and not any(isinstance(f, _QuietFlower) for f in flwr_log.filters):
        flwr_log.addFilter(_QuietFlower())
    if not verbose:
        for category in NOISY_WARNINGS:
            warnings.filterwarnings("ignore", category=category)
        os.environ["PYTHONWARNINGS"] = ",".join(f"ignore::{c.__name__}" for c in NOISY_WARNINGS)


def warn_random_weights(backbones: str | tuple[str, ...], pretrained: bool, random_backbones: str | tuple[str, ...] = ()) -> None:
    """The random-weights warning, once per command (not once per backbone load in every process)."""
    names = [n for n in (backbones.split(",") if isinstance(backbones, str) else backbones) if n]
    chosen = set(random_backbones.split(",") if isinstance(random_backbones, str) else random_backbones)
    random = names if not pretrained else [n for n in names if n in chosen]
    if random:
        from xincept.common.backbones import random_warning

        logging.getLogger("xincept").warning("%s", random_warning(random))


def log_xincept_to_stderr() -> None:
    """xincept's INFO messages to stderr, in a process that Flower started (a SuperNode, a deployed ServerApp).

    Only the ``xincept`` logger gets the handler, not the root logger, which Flower's logger also reaches (each of
    its lines would appear twice). A deployed ServerApp's stderr is streamed to `xincept-server start`'s output.
    """
    xlog = logging.getLogger("xincept")
    if any(getattr(h, "_xincept_stderr", False) for h in xlog.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._xincept_stderr = True  # type: ignore[attr-defined]
    xlog.addHandler(handler)
    xlog.setLevel(logging.INFO)
    xlog.propagate = False


def _err_console():
    from rich.console import Console

    return Console(stderr=True)


def split_names(value: str | None) -> list[str] | None:
    if not value:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    return names or None


def friendly_errors(fn: F) -> F:
    """Turn user-fixable errors into one clear message and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from xincept.common.errors import XinceptError

        try:
            return fn(*args, **kwargs)
        except XinceptError as exc:
            _err_console().print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _err_console().print("[yellow]interrupted[/]: finished work is kept (embedding cache, checkpoints); rerun the same command to resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def check_format(fmt: str) -> str:
    if fmt not in ("text", "json"):
        raise typer.BadParameter(f"--format {fmt!r}: choose text or json")
    return fmt


def stdout_json(obj: Any) -> None:
    from xincept.common.strict_json import dumps

    sys.stdout.write(dumps(obj, indent=2) + "\n")


def version_text() -> str:
    """``xincept-all X (flwr Y, torch Z, timm W, xgboost V)`` from the installed distributions, without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    def v(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    return f"xincept-all {v('xincept-all')} (flwr {v('flwr')}, torch {v('torch')}, timm {v('timm')}, xgboost {v('xgboost')})"


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


def make_app(name: str, help_text: str, commands: dict[str, Callable[..., Any]]) -> typer.Typer:
    """A typer app with one sub-command per entry (always a command group, even with one command).

    Help is click's plain format: it wraps to the terminal's width and never cuts an option's text short.
    """
    import typer.core

    # typer formats help with rich whenever rich is installed: its fixed-width table cuts paths and words with "…" at
    # 80 columns, and even plain help gets "\\[default: ...]" escapes; typer reads this flag at format time
    typer.core.HAS_RICH = False
    app = typer.Typer(name=name, help=help_text, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                      rich_markup_mode=None)
    for command_name, fn in commands.items():
        app.command(command_name)(fn)

    def root(version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                                   help="Print the versions of xincept and its engines, and exit.")] = False) -> None:
        """XIncept-ALL."""

    app.callback()(root)
    return app


def restore_interrupt() -> None:
    """Ctrl-C (SIGINT) raises KeyboardInterrupt even where the command was started with SIGINT ignored (a shell's
    background job, a service), and the processes it starts inherit the default disposition again: Flower's parent
    monitors stop an orphaned child with SIGINT."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)


def setting_option(name: str, *flags: str, help: str, **kwargs: Any) -> Any:
    """A ``typer.Option`` for the federation setting ``name``: its default is "unset" (None, so a ``--config`` file or
    the settings object decides) and its help ends with the default runs really use, read from FedSettings."""
    from dataclasses import fields

    from xincept.common.fedconfig import FedSettings

    default = {f.name: f.default for f in fields(FedSettings)}[name]
    shown = str(default).lower() if isinstance(default, bool) else default
    return typer.Option(*flags, help=f"{help} [default: {shown}]", show_default=False, **kwargs)


def given_options(values: dict[str, Any], always: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings whose options were given on the command line (or in the environment).

    Options left at their defaults do not override a ``--config`` file; ``always`` keeps some anyway.
    Keys are the command's parameter names (the same as the settings' names).
    """
    import click
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return {k: v for k, v in values.items() if v is not None}
    keep = {}
    for key, value in values.items():
        if value is None:  # unset: the --config file or the settings' default decides
            continue
        source = ctx.get_parameter_source(key)
        if key in always or source not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            keep[key] = value
    return keep
