"""Fit a random-weight DAC to some audio, so it stands in for a trained one where no
weights can be downloaded (tests, the offline demo).

A random DAC's latent spreads over all 1024 channels (its top 96 principal directions
hold about half the energy) and its random quantizer ignores that latent: the codes of a
mixture then say nothing about its sources, and no mask on the code latent can separate
them (measured: the best per-prompt mask is no better than a global gain). A trained
DAC's latent is low-dimensional and its residual quantizer tracks it. `fit_to_audio`
gives a random DAC both properties, without changing its architecture or shapes (DAC's
own CLI and `CodecTables` read the result like any checkpoint):

1. the encoder's output convolution is projected onto the top `rank` principal
   directions of its output on the audio;
2. each quantizer stage gets the top principal directions of the remaining residual as
   its in/out projections, and a codebook fitted by k-means under the stage's own
   (cosine) code choice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def _set_weight_norm(conv: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Set a weight-normed conv (DAC's WNConv1d: weight_g, weight_v) to `weight`, `bias`."""
    v, g, b = (getattr(conv, name) for name in ("weight_v", "weight_g", "bias"))
    v.copy_(weight)
    g.copy_(weight.flatten(1).norm(dim=1).clamp(min=1e-12).view_as(g))
    b.copy_(bias)


def _principal(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], top-k principal directions [k, D]) of frames x [N, D]."""
    mean = x.mean(0)
    return mean, torch.linalg.svd(x - mean, full_matrices=False)[2][:k]


def _nearest(e: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of each point's code under DAC's rule: the highest cosine similarity."""
    return (F.normalize(e) @ F.normalize(codebook).T).argmax(1)


def _cosine_kmeans(e: torch.Tensor, n_codes: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """Codebook [n_codes, k] for points e [N, k], where a point picks its code by `_nearest`
    and a code is the mean of the points that pick it."""
    codebook = e[torch.randint(len(e), (n_codes,), generator=gen)]
    codebook = codebook * (1 + 0.01 * torch.randn(codebook.shape, generator=gen))  # break ties between repeats
    for _ in range(iters):
        idx = _nearest(e, codebook)
        sums = torch.zeros_like(codebook).index_add_(0, idx, e)
        counts = torch.bincount(idx, minlength=n_codes)[:, None]
        codebook = torch.where(counts > 0, sums / counts.clamp(min=1), codebook)
    return codebook


@torch.no_grad()
def encoder_frames(model, clips: Sequence[np.ndarray]) -> torch.Tensor:
    """The encoder's output frames [N, latent_dim] for mono float32 clips at the codec rate."""
    out = []
    for clip in clips:
        x = model.preprocess(torch.as_tensor(clip, dtype=torch.float32)[None, None], model.sample_rate)
        out.append(model.encoder(x)[0].T)
    return torch.cat(out)


@torch.no_grad()
def fit_to_audio(model, clips: Sequence[np.ndarray], rank: int = 24, kmeans_iters: int = 8, seed: int = 0):
    """Fit `model` (a `dac.DAC`) in place to `clips` (see the module docstring); -> model.

    `rank` should be well under n_codebooks x codebook_dim (96 for 16 kHz) so the
    quantizer can track the latent."""
    gen = torch.Generator().manual_seed(seed)
    frames = encoder_frames(model, clips)
    mean, basis = _principal(frames, rank)
    project = basis.T @ basis  # [D, D]
    out_conv = model.encoder.block[-1]
    weight = out_conv.weight.detach().clone()
    _set_weight_norm(out_conv, torch.einsum("de,eck->dck", project, weight), project @ (out_conv.bias - mean) + mean)
    residual = (frames - mean) @ project + mean
    energy = residual.pow(2).sum()
    for stage in model.quantizer.quantizers:
        n_codes, dim = stage.codebook.weight.shape
        stage_mean, directions = _principal(residual, dim)
        e = (residual - stage_mean) @ directions.T
        codebook = _cosine_kmeans(e, n_codes, kmeans_iters, gen)
        _set_weight_norm(stage.in_proj, directions[:, :, None], -(directions @ stage_mean))
        _set_weight_norm(stage.out_proj, directions.T.contiguous()[:, :, None], stage_mean)
        stage.codebook.weight.copy_(codebook)
        idx = _nearest(e, codebook)
        residual = residual - (codebook[idx] @ directions + stage_mean)
    log.info(
        "fitted DAC to %d frames: quantizer leaves %.1f%% of the latent's energy",
        len(frames),
        100 * float(residual.pow(2).sum() / energy),
    )
    return model.eval()


def save_fitted_random_dac(clips: Sequence[np.ndarray], path: str | Path, seed: int = 0) -> Path:
    """A seeded random DAC 16 kHz fitted to `clips` and saved at `path` as DAC saves a
    checkpoint: the stand-in for trained weights where none can be downloaded."""
    from codecsep_core.dac_codec import random_dac

    model = fit_to_audio(random_dac(seed), clips, seed=seed)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path), package=False)
    return Path(path)
