"""How images go through the frozen backbones: device, precision, layout and graph fusion.

The fastest correct path is chosen automatically and recorded in model.json:
- CPU with AVX-512 BF16 or AMX: bfloat16 autocast, channels-last, conv+batch-norm folding;
- CUDA: float16 autocast, channels-last, pinned-memory transfers;
- otherwise, or with ``precision="fp32"``: float32, channels-last (the reference numerics).
Decoding and resizing run in a prefetch thread so they overlap with the backbone compute.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xincept.common.backbones import resolve_device
from xincept.common.config import BackboneConfig

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bfloat16 arithmetic (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class EmbedPath:
    device: str
    dtype: str  # float32 | bfloat16 | float16
    memory_format: str = "channels_last"
    fuse_conv_bn: bool = False
    prefetch: bool = True
    batch_size: int = 32

    @property
    def cache_tag(self) -> str:
        """Suffix of the cache key: features from different numerics are never mixed.

        The reference path (float32, unfused) has no suffix.
        """
        if self.dtype == "float32" and not self.fuse_conv_bn:
            return ""
        return f"-{_SHORT[self.dtype]}{'-fused' if self.fuse_conv_bn else ''}"

    def describe(self) -> dict:
        return asdict(self)

    def autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if self.dtype == "float32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.dtype == "bfloat16" else torch.float16
        return torch.autocast(self.device.split(":")[0], dtype=dtype)

    def prepare(self, model: "torch.nn.Module") -> "torch.nn.Module":
        """The module that embeds: moved, laid out channels-last and, where chosen, conv+BN folded."""
        import torch

        model = model.to(self.device)
        if self.memory_format == "channels_last":
            model = model.to(memory_format=torch.channels_last)
        if self.fuse_conv_bn:
            try:
                from torch.fx.experimental.optimization import fuse

                model = fuse(model)
            except Exception as exc:  # some architectures do not trace; fall back to eager
                log.debug("conv+BN folding skipped (%s)", exc)
        return model

    def to_input(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch

        x = x.to(self.device, non_blocking=True)
        if self.memory_format == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def choose_path(cfg: BackboneConfig) -> EmbedPath:
    """The fastest correct path for this machine, unless ``cfg.precision`` forces float32."""
    device = resolve_device(cfg.device)
    if cfg.precision == "fp32":
        return EmbedPath(device=device, dtype="float32", batch_size=cfg.batch_size)
    if device.startswith("cuda"):
        return EmbedPath(device=device, dtype="float16", fuse_conv_bn=True, batch_size=max(cfg.batch_size, 64))
    if cpu_supports_bf16():
        return EmbedPath(device=device, dtype="bfloat16", fuse_conv_bn=True, batch_size=cfg.batch_size)
    return EmbedPath(device=device, dtype="float32", fuse_conv_bn=False, batch_size=cfg.batch_size)
