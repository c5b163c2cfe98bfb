"""codec_fit: a random-weight DAC 16 kHz (real architecture) fitted to generated audio, the
stand-in for trained DAC weights in the train/eval tests and the offline demo."""

import numpy as np
import pytest
import torch

from codecsep_core.codec_fit import encoder_frames, fit_to_audio
from codecsep_core.dac_codec import load_dac, random_dac

RATE = 16000


def clips(seed: int, n: int = 8, seconds: float = 0.5) -> list[np.ndarray]:
    """Harmonic tones and noise bursts of random pitch and band."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    out = []
    for _ in range(n):
        f0 = rng.uniform(150, 400)
        out.append(sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 5)))
        out.append(rng.standard_normal(len(t)) * (np.sin(2 * np.pi * rng.uniform(1, 4) * t) > 0))
    return [(0.1 * x / np.sqrt(np.mean(x**2))).astype(np.float32) for x in out]


def quantizer_loss(model, audio: list[np.ndarray]) -> float:
    """Share of the encoder latent's energy the residual quantizer leaves out."""
    z = encoder_frames(model, audio).T[None]
    with torch.no_grad():
        zq = model.quantizer(z)[0]
    return float((z - zq).pow(2).sum() / z.pow(2).sum())


@pytest.fixture(scope="module")
def fitted():
    return fit_to_audio(random_dac(0), clips(seed=0, n=20, seconds=1.0))  # 2000 frames: k-means on fewer overfits


def test_fitted_quantizer_tracks_the_latent_of_unseen_audio(fitted):
    heldout = clips(seed=1, n=3)
    assert quantizer_loss(fitted, heldout) < 0.3  # measured 0.19
    assert quantizer_loss(random_dac(0), heldout) > 1  # unfitted: codes ignore the latent


def test_fitted_codec_saves_as_a_dac_checkpoint_with_unchanged_shapes(fitted, tmp_path):
    path = tmp_path / "fitted.pth"
    fitted.save(str(path), package=False)
    loaded = load_dac(path)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {
        k: v.shape for k, v in random_dac(0).state_dict().items()
    }
    x = torch.as_tensor(clips(seed=2, n=1)[0])[None, None]
    with torch.no_grad():
        assert torch.equal(loaded.encode(x)[1], fitted.encode(x)[1])
