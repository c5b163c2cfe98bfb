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
    separator: Separator, codes: list[torch.Tensor], spans: list[list[tuple[int, int]]], embeddings: torch.Tensor
) -> list[ClipResult]:
    """codes[i] [n_codebooks, T_i] with its frame spans [(start, stop), ...] (one span covering
    the clip for a continuous row) -> one result per row, codes [P, n_codebooks, T_i]."""
    pieces = [c[:, a:b] for c, row_spans in zip(codes, spans) for a, b in row_spans]
    results = iter(separator.separate(pieces, embeddings))
    merged = []
    for row_spans in spans:
        parts = [next(results) for _ in row_spans]
        if len(parts) == 1:
            merged.append(parts[0])
            continue
        frames = torch.tensor([b - a for a, b in row_spans], dtype=torch.float64)
        weights = (frames / frames.sum())[:, None]
        scores = {k: (torch.stack([r.scores[k].double() for r in parts]) * weights).sum(0).float() for k in parts[0].scores}
        merged.append(ClipResult(codes=torch.cat([r.codes for r in parts], dim=2), scores=scores))
    return merged
