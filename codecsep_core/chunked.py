"""Separating rows whose codes are chunks on no common frame grid.

A DAC file written in chunked mode (`padding=False`) holds consecutive windows encoded
independently from overlapping slices of audio: they must not be masked as one sequence.
Each chunk is separated on its own, the codes are put back in the same layout, and the
row's scores are the frame-weighted means over its chunks.
"""

from __future__ import annotations

import torch

from codecsep_core.separator import ClipResult, Separator


def separate_chunked(
    separator: Separator,
    codes: list[torch.Tensor],
    spans: list[list[tuple[int, int]]],
    embeddings: torch.Tensor,
    **options,
) -> list[ClipResult]:
    """codes[i] [n_codebooks, T_i] with its frame spans [(start, stop), ...] (one span covering
    the clip for a continuous row) -> one result per row, codes [P, n_codebooks, T_i].
    `options` go to `Separator.separate` (residual, exclude, latents)."""
    pieces = [c[:, a:b] for c, row_spans in zip(codes, spans) for a, b in row_spans]
    results = iter(separator.separate(pieces, embeddings, **options))
    merged = []
    for row_spans in spans:
        parts = [next(results) for _ in row_spans]
        merged.append(parts[0] if len(parts) == 1 else _merge(parts, [b - a for a, b in row_spans]))
    return merged


def _merge(parts: list[ClipResult], frames: list[int]) -> ClipResult:
    """Chunks of one row back into one result: tensors joined along time, scores weighted by frames."""
    weights = (torch.tensor(frames, dtype=torch.float64) / sum(frames))[:, None]

    def mean(key: str) -> dict[str, torch.Tensor]:
        first = getattr(parts[0], key)
        return {k: (torch.stack([getattr(r, key)[k].double() for r in parts]) * weights).sum(0).float() for k in first}

    def cat(key: str, dim: int) -> torch.Tensor | None:
        return None if getattr(parts[0], key) is None else torch.cat([getattr(r, key) for r in parts], dim=dim)

    return ClipResult(
        codes=torch.cat([r.codes for r in parts], dim=2),
        scores=mean("scores"),
        frame_energy=cat("frame_energy", 0),
        frame_kept=cat("frame_kept", 1),
        residual=cat("residual", 2),
        residual_scores=mean("residual_scores"),
        latent=cat("latent", 2),
    )
