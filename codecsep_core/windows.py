"""Cutting clips into overlapping windows, and the weights that cross-fade them back.

The masker attends within a window, so clips of any length are cut into windows of
`window` frames that overlap by `overlap` frames. Window k starts at k * (window - overlap);
the last one is shorter. In each overlap the earlier window fades out linearly while the
later one fades in, and the two weights sum to exactly 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Window:
    clip: int  # index of the clip in the batch
    index: int  # window number within the clip
    start: int
    stop: int
    last: bool  # no later window of this clip

    @property
    def length(self) -> int:
        return self.stop - self.start


def plan_windows(n_frames: int, window: int, overlap: int, clip: int = 0) -> list[Window]:
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window): window={window}, overlap={overlap}")
    hop = window - overlap
    n = 1 if n_frames <= window else math.ceil((n_frames - overlap) / hop)
    return [
        Window(clip, k, k * hop, min(k * hop + window, n_frames), k == n - 1)
        for k in range(n)
    ]


def crossfade_weights(w: Window, overlap: int, device=None) -> torch.Tensor:
    """Weights [length] for window `w`: ramps up over its first `overlap` frames unless it is
    the clip's first window, and down over its last `overlap` frames unless it is the last."""
    weights = torch.ones(w.length, device=device)
    if overlap == 0:
        return weights
    ramp = (torch.arange(overlap, device=device, dtype=torch.float32) + 0.5) / overlap
    if w.index > 0:
        weights[:overlap] = ramp
    if not w.last:
        weights[-overlap:] = ramp.flip(0)
    return weights
