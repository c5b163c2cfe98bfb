"""The CodecSep masker: a FiLM-conditioned Transformer that predicts a mask on the DAC latent.

Architecture as published (DESIGN.md §3): pointwise down-projection, sinusoidal positions,
Post-LN Transformer encoder layers whose two LayerNorm outputs each get an additive FiLM
shift from the prompt embedding, pointwise up-projection + shift, weight-normed pointwise
conv + shift, pointwise conv + Snake. No sigmoid: the mask is unbounded, as published.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

PRESETS = {
    # The published masker (about 20.5 M parameters).
    "paper": dict(latent_dim=1024, width=256, n_layers=16, n_heads=8, ffn_dim=1024, dropout=0.1),
    # Same code, small numbers: tests and the offline demo.
    "tiny": dict(latent_dim=1024, width=32, n_layers=2, n_heads=4, ffn_dim=64, dropout=0.1),
}


@dataclass(frozen=True)
class MaskerConfig:
    latent_dim: int = 1024
    width: int = 256
    n_layers: int = 16
    n_heads: int = 8
    ffn_dim: int = 1024
    dropout: float = 0.1
    cond_dim: int = 512

    @classmethod
    def preset(cls, name: str, **overrides) -> "MaskerConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown masker preset {name!r}; known: {', '.join(PRESETS)}")
        return replace(cls(**PRESETS[name]), **overrides)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: dict) -> "MaskerConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown masker config keys: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def __post_init__(self):
        if self.width % self.n_heads:
            raise ValueError(f"width {self.width} is not divisible by n_heads {self.n_heads}")
        if self.width % 2:
            raise ValueError("width must be even for sinusoidal positions")


class Snake1d(nn.Module):
    """DAC's periodic activation: x + sin^2(alpha x) / alpha, per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x):
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class FiLMShift(nn.Linear):
    """Additive FiLM (scale fixed at 1): beta = Linear(cond). Xavier weight, zero bias."""

    def __init__(self, cond_dim: int, features: int):
        super().__init__(cond_dim, features)
        nn.init.xavier_uniform_(self.weight)
        nn.init.zeros_(self.bias)


def sinusoidal_positions(n: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(n, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe.to(dtype or torch.float32)


def segment_positions(segments: torch.Tensor) -> torch.Tensor:
    """[B, T] frame positions counted from the first frame of each frame's segment."""
    t = torch.arange(segments.shape[1], device=segments.device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    return t - torch.where(starts, t, torch.zeros_like(t)).cummax(dim=1).values


def attention_mask(valid: torch.Tensor | None, segments: torch.Tensor | None) -> torch.Tensor | None:
    """SDPA's boolean mask (True: may attend), the cheapest form that serves: none when every
    frame is real and rows hold one clip (full windows, the common case), a key padding mask
    [B, 1, 1, T] when rows hold one clip each, else a block-diagonal mask [B, 1, T, T]
    (padding attends to padding, so no query row is fully masked)."""
    if segments is not None:
        if bool(((segments == segments[:, :1]) | (segments < 0)).all()) and bool((segments[:, 0] >= 0).all()):
            valid = segments >= 0
        else:
            return (segments[:, :, None] == segments[:, None, :])[:, None]
    return None if valid is None or bool(valid.all()) else valid[:, None, None, :]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a linear layer's output has here: autocast's, when it is on."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as SDPA converts it: 0 where attending is allowed, -inf elsewhere."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


class SelfAttention(nn.Module):
    """Multi-head self-attention on SDPA (fused kernels), with a key padding mask.
    Parameter layout as nn.MultiheadAttention (packed in_proj, out_proj)."""

    def __init__(self, width: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x, attn_mask=None):
        b, t, w = x.shape
        q, k, v = self.in_proj(x).view(b, t, 3, self.n_heads, w // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(y.transpose(1, 2).reshape(b, t, w))


class FiLMEncoderLayer(nn.Module):
    """Post-LN Transformer encoder layer; a FiLM shift follows each LayerNorm."""

    def __init__(self, cfg: MaskerConfig):
        super().__init__()
        self.attn = SelfAttention(cfg.width, cfg.n_heads, cfg.dropout)
        self.norm1 = nn.LayerNorm(cfg.width)
        self.norm2 = nn.LayerNorm(cfg.width)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.width, cfg.ffn_dim), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.ffn_dim, cfg.width)
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.film1 = FiLMShift(cfg.cond_dim, cfg.width)
        self.film2 = FiLMShift(cfg.cond_dim, cfg.width)

    def forward(self, x, cond, attn_mask=None):
        x = self.norm1(x + self.dropout(self.attn(x, attn_mask))) + self.film1(cond)[:, None]
        return self.norm2(x + self.dropout(self.ffn(x))) + self.film2(cond)[:, None]


class Masker(nn.Module):
    """latent Z [B, latent_dim, T] + prompt embedding [B, cond_dim] -> mask M [B, latent_dim, T]."""

    def __init__(self, config: MaskerConfig | None = None):
        super().__init__()
        cfg = self.config = config or MaskerConfig()
        d = cfg.latent_dim
        self.ch_down = nn.Conv1d(d, cfg.width, 1, bias=False)
        self.layers = nn.ModuleList(FiLMEncoderLayer(cfg) for _ in range(cfg.n_layers))
        self.ch_up = nn.Conv1d(cfg.width, d, 1, bias=False)
        self.film_up = FiLMShift(cfg.cond_dim, d)
        self.mask_conv = weight_norm(nn.Conv1d(d, d, 1, bias=False))
        self.film_mask = FiLMShift(cfg.cond_dim, d)
        self.out_conv = nn.Conv1d(d, d, 1)
        self.out_act = Snake1d(d)
        # Inference folds the linear tail (see _folded_tail); False runs the published layer
        # order, to measure what the fold saves.
        self.fold_tail = True

    def forward(
        self,
        z: torch.Tensor,
        cond: torch.Tensor,
        valid: torch.Tensor | None = None,
        all_prompts: bool = False,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`valid` [B, T] bool marks real frames; padded frames are never attended to, so a
        window's mask does not depend on what else shares its batch.

        `segments` [B, T] int (instead of `valid`) packs several clips into one row: frames
        attend only to frames of their own segment id, positions restart at each segment's
        first frame, and -1 marks padding. A packed clip's mask is the one it gets alone.

        all_prompts=False: one prompt per window, cond [B, C] -> [B, D, T].
        all_prompts=True: every window under every prompt, cond [P, C] -> [B * P, D, T],
        window-major. The input projection is linear and prompt-independent, so it then runs
        once per window, not once per pair."""
        x = self._down(z, segments)
        attn_mask = attention_mask(valid, segments)
        if all_prompts:
            n_w, n_p = z.shape[0], cond.shape[0]
            x, cond = x.repeat_interleave(n_p, dim=0), cond.repeat(n_w, 1)
            attn_mask = None if attn_mask is None else attn_mask.repeat_interleave(n_p, dim=0)
        return self._from_width(x, cond, attn_mask)

    def _down(self, z: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        """ch_down as one matmul straight into the [B, T, W] layout the Transformer reads."""
        x = torch.matmul(z.transpose(1, 2), self.ch_down.weight[:, :, 0].t())
        pe = sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype)
        return x + (pe if segments is None else pe[segment_positions(segments)])

    def _from_width(self, x: torch.Tensor, cond: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        if attn_mask is not None:  # SDPA would turn a boolean mask into this in every layer
            attn_mask = additive_mask(attn_mask, compute_dtype(x))
        for layer in self.layers:
            x = layer(x, cond, attn_mask)
        if self.training or torch.is_grad_enabled() or not self.fold_tail:
            x = self.ch_up(x.transpose(1, 2)) + self.film_up(cond)[:, :, None]
            x = self.mask_conv(x) + self.film_mask(cond)[:, :, None]
            return self.out_act(self.out_conv(x))
        weight, bias = self._folded_tail(cond)
        return self.out_act(torch.baddbmm(bias[:, :, None], weight.expand(x.shape[0], -1, -1), x.transpose(1, 2)))

    def _folded_tail(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference only: ch_up -> +beta -> weight-normed conv -> +beta -> out_conv has no
        non-linearity, so it folds into one [D, W] matrix and a per-prompt bias. That drops
        two 1024x1024 convs per frame (~1 GMAC per 10 s window) and folds weight norm once.
        Cached until any of the tail's parameters changes (in place or by a move)."""
        params = [self.ch_up.weight, self.out_conv.weight, self.out_conv.bias, *self.mask_conv.parameters()]
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        if getattr(self, "_tail_cache", (None,))[0] != key:
            # In the weights' own dtype even under autocast: the cache then serves every precision.
            with torch.autocast(cond.device.type, enabled=False):
                w_out, w_mask = self.out_conv.weight[:, :, 0], self.mask_conv.weight[:, :, 0]
                w_chain = w_out @ w_mask
                self._tail_cache = (key, w_chain @ self.ch_up.weight[:, :, 0], w_chain, w_out)
        _, weight, w_chain, w_out = self._tail_cache
        bias = self.film_up(cond) @ w_chain.t() + self.film_mask(cond) @ w_out.t() + self.out_conv.bias
        return weight, bias

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
