"""Cutting clips into overlapping windows, and the weights that cross-fade them back.

The masker attends within a window, so clips of any length are cut into windows of
`window` frames that overlap by `overlap` frames. Window k starts at k * (window - overlap);
the last one is shorter. In each overlap the earlier window fades out linearly while the
later one fades in, and the two weights sum to exactly 1.

Windows shorter than the masker's window (short clips, last windows) are packed several
to a masker row (`pack_windows`), so a batch of 1 s clips costs what a batch of 10 s
clips costs per frame, not ten times as much padding or as many masker calls.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
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
    return [Window(clip, k, k * hop, min(k * hop + window, n_frames), k == n - 1) for k in range(n)]


@dataclass(frozen=True)
class Slot:
    """Where a window sits in a packed masker batch: row `row`, frames [offset, offset + length)."""

    window: Window
    row: int
    offset: int


def pack_windows(windows: Iterable[Window], row_frames: int, rows_per_batch: int) -> Iterator[list[Slot]]:
    """Batches of at most `rows_per_batch` rows of `row_frames` frames, each window placed
    in the first row of the open batch with room for it (first fit). Windows keep their
    order: a batch holds only windows that come after every window of earlier batches, so
    a clip's windows still arrive in order and stream."""
    batch: list[Slot] = []
    free: list[int] = []  # frames left in each row of the open batch
    for w in windows:
        if w.length > row_frames:
            raise ValueError(f"window of {w.length} frames does not fit a row of {row_frames}")
        row = next((r for r, n in enumerate(free) if n >= w.length), None)
        if row is None:
            if len(free) == rows_per_batch:
                yield batch
                batch, free = [], []
            row = len(free)
            free.append(row_frames)
        batch.append(Slot(w, row, row_frames - free[row]))
        free[row] -= w.length
    if batch:
        yield batch


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
