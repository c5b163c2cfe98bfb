"""Synthetic labelled sources of clearly different kinds, for the offline demo and tests.

"tone" (harmonic stacks with a slow envelope), "noise" (band-limited noise bursts) and
"clicks" (decaying impulse trains) differ in pitch, spectrum and time structure, so a
separator has something real to learn even with a random-weight codec.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

KINDS = ("tone", "noise", "clicks")


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
    """float32 [n] at peak 0.5."""
    x = GENERATORS[kind](int(seconds * rate), rate, rng)
    return (0.5 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


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
