"""Synthetic labelled sources of clearly different kinds, for the offline demo and tests.

"tone" (harmonic stacks with a slow envelope), "noise" (band-limited noise bursts) and
"clicks" (decaying impulse trains) differ in pitch, spectrum and time structure, so a
separator has something real to learn. Where no DAC weights can be downloaded,
`fitted_random_codec` makes the codec these sources are encoded with.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

KINDS = ("tone", "noise", "clicks")
CODEC_FIT_STREAM = 7919  # keeps the codec's fitting sources apart from write_sources' seeds
# prepare-train overrides: every mixture one source of each kind, at equal loudness.
EVERY_KIND_MIXING = ["mixing.sources_per_mix=[3,3]", "mixing.gain_db=[0,0]"]


def tone(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / rate
    f0 = rng.uniform(150, 400)
    x = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
    return x * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))


def noise(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    lo = rng.uniform(2000, 3500)
    spec[(freqs < lo) | (freqs > lo + 2000)] = 0
    x = np.fft.irfft(spec, n)
    burst = int(rng.uniform(0.1, 0.3) * rate)
    gate = (np.arange(n) // burst) % 2 == int(rng.integers(2))
    return x / (np.abs(x).max() + 1e-9) * gate


def clicks(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    x = np.zeros(n)
    period = int(rate / rng.uniform(8, 20))
    decay = np.exp(-np.arange(int(0.005 * rate)) / (0.001 * rate))
    for start in range(int(rng.integers(period)), n - len(decay), period):
        x[start : start + len(decay)] += decay * rng.choice([-1, 1])
    return x


GENERATORS = {"tone": tone, "noise": noise, "clicks": clicks}


def source(kind: str, seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [n] at RMS 0.1 (peaks at most 0.9): kinds of equal loudness, so none is
    buried in a mixture."""
    x = GENERATORS[kind](int(seconds * rate), rate, rng)
    x = 0.1 * x / (np.sqrt(np.mean(x**2)) + 1e-9)
    return (x / max(1.0, np.abs(x).max() / 0.9)).astype(np.float32)


def write_sources(folder: str | Path, per_kind: int, seconds: float, rate: int = 16000, seed: int = 0) -> Path:
    """`folder/<kind>/<k>.wav` for every kind, plus `folder/captions.csv` (file,caption):
    the generic layout of `prepare-train`."""
    import soundfile as sf

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file", "caption"])
    for kind in KINDS:
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for k in range(per_kind):
            sf.write(str(folder / kind / f"{k:03d}.wav"), source(kind, seconds, rate, rng), rate)
            writer.writerow([f"{kind}/{k:03d}.wav", kind])
    (folder / "captions.csv").write_text(buf.getvalue())
    return folder


def fitted_random_codec(
    path: str | Path, seed: int = 0, per_kind: int = 20, seconds: float = 1.0, rate: int = 16000
) -> Path:
    """A fixed-seed random DAC 16 kHz fitted (`codecsep_core.codec_fit`) to sources of every
    kind and to their mixtures, saved at `path` as DAC saves a checkpoint: the stand-in for
    trained DAC weights. Its sources are drawn apart from any that `write_sources` makes
    (as a real codec is trained on other audio than the separator's): fitted on the
    separator's own training sources, it would represent held-out ones worse."""
    from codecsep_core.codec_fit import save_fitted_random_dac

    rng = np.random.default_rng([seed, CODEC_FIT_STREAM])
    by_kind = [[source(kind, seconds, rate, rng) for _ in range(per_kind)] for kind in KINDS]
    mixtures = [sum(group) for group in zip(*by_kind)]
    return save_fitted_random_dac([x for clips in by_kind for x in clips] + mixtures, path, seed)
