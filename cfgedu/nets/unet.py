"""The ADM U-Net (Dhariwal & Nichol 2021) as a class-conditional ε-prediction network ε_θ(z_λ, λ, c).

What CFG changes from ADM (SPEC 7.2): ε output only (no learned σ), a continuous λ input (embeddings.py)
and a null class row. Residual blocks use AdaGN scale-shift conditioning, self-attention uses
F.scaled_dot_product_attention with a fixed head width, and resolution changes can be BigGAN-style
residual blocks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checks import check_batch, check_labels
from .embeddings import ClassEmbedding, LogSNREmbedding


@dataclass(frozen=True)
class UNetConfig:
    """Hyperparameters of the U-Net. attention_resolutions are feature-map sizes (e.g. 32, 16, 8)."""

    image_size: int = 16
    in_channels: int = 1
    num_classes: int = 10
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (8,)
    head_channels: int = 32
    dropout: float = 0.0
    resblock_updown: bool = True
    norm_groups: int = 32
    embed_mult: int = 4  # the λ/class embedding has embed_mult · model_channels dimensions

    def __post_init__(self):
        for name in ("channel_mult", "attention_resolutions"):  # JSON gives lists back
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        self._validate()

    def _validate(self):
        for name in ("image_size", "in_channels", "num_classes", "model_channels", "num_res_blocks",
                     "head_channels", "norm_groups", "embed_mult"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"UNet {name} must be >= 1, got {getattr(self, name)}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"UNet channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult}")
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^{len(self.channel_mult) - 1} "
                             f"for channel_mult {self.channel_mult}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"UNet dropout must be in [0, 1), got {self.dropout}")
        widths = {self.model_channels * m for m in self.channel_mult}
        if any(w % self.norm_groups for w in widths):
            raise ValueError(f"every width {sorted(widths)} must be divisible by norm_groups={self.norm_groups}")
        if any(w % self.head_channels for w in widths if self.attention_resolutions):
            raise ValueError(f"every width {sorted(widths)} must be divisible by head_channels={self.head_channels}")

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias so that its residual branch starts as the identity (ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def resample(x: torch.Tensor, direction: str | None) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling ('up'), 2x average pooling ('down') or nothing (None)."""
    if direction == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    return F.avg_pool2d(x, 2) if direction == "down" else x


class ResBlock(nn.Module):
    """GN-SiLU-conv, then AdaGN: GN(h)·(1 + scale) + shift from the embedding, SiLU, dropout, zero-init conv.

    direction 'up'/'down' makes it a BigGAN-style resampling block (resample inside the residual branch and skip).
    """

    def __init__(self, channels: int, out_channels: int, embed_dim: int, dropout: float, groups: int,
                 direction: str | None = None):
        super().__init__()
        self.direction = direction
        self.in_norm = nn.GroupNorm(groups, channels)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.embed = nn.Linear(embed_dim, 2 * out_channels)
        self.out_norm = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = resample(F.silu(self.in_norm(x)), self.direction)
        h = self.in_conv(h)
        scale, shift = self.embed(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        h = self.out_norm(h) * (1 + scale) + shift
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(resample(x, self.direction)) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H·W positions with head_channels per head, via SDPA."""

    def __init__(self, channels: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = channels // head_channels
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_init(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, L, C), L = H·W
        q, k, v = self.qkv(tokens).reshape(b, -1, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, C/heads)
        out = self.proj(out.transpose(1, 2).reshape(b, -1, c))  # (B, L, C)
        return x + out.transpose(1, 2).reshape(b, c, hgt, wid)


class ConvResample(nn.Module):
    """Plain resampling (resblock_updown=False): nearest-upsample + 3x3 conv, or a stride-2 3x3 conv."""

    def __init__(self, channels: int, direction: str):
        super().__init__()
        self.direction = direction
        self.conv = nn.Conv2d(channels, channels, 3, stride=2 if direction == "down" else 1, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(resample(x, "up") if self.direction == "up" else x)

class Stage(nn.ModuleList):
    """A sequence of blocks that all receive the conditioning embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = block(x, emb)
        return x


class UNet(nn.Module):
    """ε_θ(z, λ, c): z (B, C, H, W), λ (B,), c (B,) long with the null label ∅ = num_classes -> ε (B, C, H, W)."""

    Config = UNetConfig

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        emb = config.embed_mult * config.model_channels
        self.lam_embed = LogSNREmbedding(config.model_channels, emb)
        self.class_embed = ClassEmbedding(config.num_classes, emb)
        outer = config.model_channels * config.channel_mult[0]  # the stem's and the head's width, as in ADM
        self.stem = nn.Conv2d(config.in_channels, outer, 3, padding=1)
        self.down, skips, ch, size = self._build_down(outer, emb)
        self.middle = Stage([self._res(ch, ch, emb), Attention(ch, config.head_channels, config.norm_groups),
                             self._res(ch, ch, emb)])
        self.up = self._build_up(ch, emb, skips, size)
        self.head = nn.Sequential(nn.GroupNorm(config.norm_groups, outer), nn.SiLU(),
                                  zero_init(nn.Conv2d(outer, config.in_channels, 3, padding=1)))

    def _res(self, channels: int, out_channels: int, emb: int, direction: str | None = None) -> ResBlock:
        return ResBlock(channels, out_channels, emb, self.config.dropout, self.config.norm_groups, direction)

    def _level_stage(self, channels: int, out_channels: int, emb: int, size: int) -> Stage:
        """One residual block, followed by attention when the feature map is `size` in attention_resolutions."""
        blocks = [self._res(channels, out_channels, emb)]
        if size in self.config.attention_resolutions:
            blocks.append(Attention(out_channels, self.config.head_channels, self.config.norm_groups))
        return Stage(blocks)

    def _resampler(self, ch: int, emb: int, direction: str) -> nn.Module:
        if self.config.resblock_updown:
            return Stage([self._res(ch, ch, emb, direction)])
        return ConvResample(ch, direction)

    def _build_down(self, ch: int, emb: int):
        """Encoder stages; returns them, the channels of every skip connection, the final width and size."""
        cfg, size, stages, skips = self.config, self.config.image_size, nn.ModuleList(), [ch]
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                stages.append(self._level_stage(ch, cfg.model_channels * mult, emb, size))
                ch = cfg.model_channels * mult
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                stages.append(self._resampler(ch, emb, "down"))
                skips.append(ch)
                size //= 2
        return stages, skips, ch, size

    def _build_up(self, ch: int, emb: int, skips: list[int], size: int) -> nn.ModuleList:
        """Decoder stages: num_res_blocks + 1 blocks per level, each eating one skip, then an upsampler."""
        cfg, stages, skips = self.config, nn.ModuleList(), list(skips)
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                stage = self._level_stage(ch + skips.pop(), cfg.model_channels * mult, emb, size)
                ch = cfg.model_channels * mult
                if level and i == cfg.num_res_blocks:
                    stage.append(self._resampler(ch, emb, "up"))
                    size *= 2
                stages.append(stage)
        return stages

    def check_inputs(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> None:
        """Shapes must match the config; labels (checked on CPU only, to avoid a device sync) in 0..num_classes."""
        check_batch(z, lam)
        if tuple(z.shape[1:]) != self.config.data_shape:
            raise ValueError(f"this U-Net takes images of shape (B, {', '.join(map(str, self.config.data_shape))}), "
                             f"got {tuple(z.shape)}")
        if c.device.type == "cpu":
            check_labels(c, self.num_classes, batch=z.shape[0])
        elif c.shape != (z.shape[0],):
            raise ValueError(f"labels must have shape ({z.shape[0]},), got {tuple(c.shape)}")

    def forward(self, z: torch.Tensor, lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        self.check_inputs(z, lam, c)
        emb = self.lam_embed(lam) + self.class_embed(c)  # (B, E)
        h = self.stem(z)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        return self.head(h)

