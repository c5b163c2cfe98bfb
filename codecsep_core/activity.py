"""Where in a clip the prompted source sounds, from the mask the separator already computed.

The separator keeps, per frame, the share of the frame's latent energy that the mask lets
through (`ClipResult.frame_share`, |M * Z|^2 / |Z|^2 summed over latent channels). Where
the source is silent a trained masker closes, so that share drops; the spans where it
stays above a threshold are where the source sounds. Nothing here runs the masker again:
this is a few vector operations per clip on [P, T] numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ActivityConfig:
    threshold: float = 0.3  # frame share of latent energy kept, above which the source sounds
    smooth_s: float = 0.1  # moving-average window over the frame shares, in seconds (0: none)
    min_span_s: float = 0.2  # shorter active spans are dropped
    min_gap_s: float = 0.1  # shorter silent gaps between active spans are closed

    def __post_init__(self):
        if min(self.threshold, self.smooth_s, self.min_span_s, self.min_gap_s) < 0:
            raise ValueError(f"activity settings must be non-negative: {self}")


@dataclass(frozen=True)
class Activity:
    """`fraction`: share of the clip's frames inside `spans`; `spans`: [start_s, end_s] pairs."""

    fraction: float
    spans: list[list[float]]


def smooth(share: np.ndarray, frames: int) -> np.ndarray:
    """Centred moving average over `frames` frames along the last axis (edges averaged over
    the frames that exist)."""
    if frames <= 1 or share.shape[-1] == 0:
        return share
    kernel = np.ones(frames)
    pad = ((0, 0),) * (share.ndim - 1) + ((frames // 2, frames - 1 - frames // 2),)
    total = np.apply_along_axis(np.convolve, -1, np.pad(share, pad), kernel, "valid")
    count = np.convolve(np.pad(np.ones(share.shape[-1]), pad[-1]), kernel, "valid")
    return total / count


def runs(active: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) frame ranges of the True runs of a boolean vector."""
    edges = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def active_frames(share: np.ndarray, frame_rate: float, cfg: ActivityConfig) -> np.ndarray:
    """Boolean [T]: smoothed share above the threshold, gaps under `min_gap_s` closed, spans
    under `min_span_s` dropped."""
    active = smooth(np.asarray(share, np.float64), round(cfg.smooth_s * frame_rate)) > cfg.threshold
    gap, shortest = round(cfg.min_gap_s * frame_rate), round(cfg.min_span_s * frame_rate)
    for start, stop in runs(~active):
        if 0 < start and stop < len(active) and stop - start < gap:
            active[start:stop] = True
    for start, stop in runs(active):
        if stop - start < shortest:
            active[start:stop] = False
    return active


def find_activity(share: np.ndarray, frame_rate: float, cfg: ActivityConfig = ActivityConfig()) -> Activity:
    """One prompt's frame shares [T] -> where its source sounds."""
    active = active_frames(share, frame_rate, cfg)
    spans = [[start / frame_rate, stop / frame_rate] for start, stop in runs(active)]
    return Activity(float(active.mean()) if len(active) else 0.0, spans)


def clip_activity(frame_share, frame_rate: float, cfg: ActivityConfig = ActivityConfig()) -> list[Activity]:
    """`ClipResult.frame_share` [P, T] -> one `Activity` per prompt."""
    return [find_activity(np.asarray(row), frame_rate, cfg) for row in np.asarray(frame_share)]


def span_iou(spans_a: list[list[float]], spans_b: list[list[float]], duration: float, frame_rate: float) -> float:
    """Intersection over union of two span lists on a frame grid (1.0 when both are empty)."""
    n = max(1, round(duration * frame_rate))

    def grid(spans):
        mask = np.zeros(n, bool)
        for start, stop in spans:
            mask[round(start * frame_rate) : round(stop * frame_rate)] = True
        return mask

    a, b = grid(spans_a), grid(spans_b)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0
