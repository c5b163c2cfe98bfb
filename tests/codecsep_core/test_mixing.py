"""Training mixtures: a target's stem is the stem as heard in its mixture."""

import numpy as np
import pytest

from codecsep_core.dac_codec import NORMALIZE_DB, loudness_db
from codecsep_core.mixing import excerpt, normalise

RATE = 16000


def tone(freq: float, amplitude: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_one_gain_brings_the_mixture_to_dacs_loudness_and_keeps_the_stems_summing_to_it():
    stems = [tone(220, 0.02), tone(660, 0.01)]
    mix, out = normalise(np.sum(stems, axis=0), stems, RATE)
    assert loudness_db(mix[None], RATE) == pytest.approx(NORMALIZE_DB, abs=0.1)
    np.testing.assert_allclose(out[0] + out[1], mix, atol=1e-6)
    assert out[0].max() / out[1].max() == pytest.approx(2.0, rel=1e-3)  # the stems' balance is kept


def test_a_mixture_that_would_clip_at_that_loudness_is_limited_to_full_scale():
    stems = [np.zeros(RATE, np.float32), np.zeros(RATE, np.float32)]
    stems[0][::400] = 0.05  # sparse clicks: quiet by loudness, peaky
    mix, out = normalise(stems[0] + stems[1], stems, RATE)
    assert np.abs(mix).max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(out[0], mix, atol=1e-6)


def test_an_excerpt_is_cut_where_asked_and_padded_when_the_source_is_short():
    audio = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(excerpt(audio, 4, 0.0), [0, 1, 2, 3])
    np.testing.assert_array_equal(excerpt(audio, 4, 1.0), [6, 7, 8, 9])
    np.testing.assert_array_equal(excerpt(audio, 12, 0.5), list(range(10)) + [0, 0])
