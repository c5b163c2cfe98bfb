"""Training mixtures from stems: an excerpt of each at its gain, summed, then one gain for
the mixture and its stems alike, so that a target's codes are of the stem as heard in the
mixture (what `prepare-train` writes)."""

from __future__ import annotations

import numpy as np

from codecsep_core.dac_codec import NORMALIZE_DB, loudness_db


def excerpt(audio: np.ndarray, n: int, offset_fraction: float) -> np.ndarray:
    """n samples of mono audio from `offset_fraction` of the way in; zero-padded when shorter."""
    start = int(offset_fraction * max(0, audio.shape[0] - n))
    out = np.zeros(n, np.float32)
    part = audio[start : start + n]
    out[: part.shape[0]] = part
    return out


def normalise(mix: np.ndarray, stems: list[np.ndarray], rate: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """One gain for all: the mixture to -16 LUFS (DAC's `compress`), then its peaks to <= 1."""
    gain = 10.0 ** ((NORMALIZE_DB - loudness_db(mix[None], rate)) / 20.0)
    gain /= max(1.0, float(np.abs(mix).max()) * gain)
    return (mix * gain).astype(np.float32), [(s * gain).astype(np.float32) for s in stems]
