"""Fixtures for job tests: one embedded Ray for the session, and a way to crash a job run
in a subprocess like a lost machine. The random-weight DAC fixtures live in tests/conftest.py."""

import pytest


@pytest.fixture(scope="session")
def ray_session():
    from jobs.engine import RayOptions, init_ray

    ray = init_ray(RayOptions())  # the jobs' own embedded set-up (logical CPU headroom included)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def dac_weights(dac16_checkpoint):
    """Path of a DAC checkpoint that `dac.DAC.load` and `--weights_path` accept."""
    return dac16_checkpoint


@pytest.fixture
def lost_machine():
    from jobs.bench.lost_machine import LostMachine

    return LostMachine()


@pytest.fixture(scope="session")
def tiny_quality():
    """Bench overrides: the quality rule's held-out set in a size for tests."""
    return [
        "quality.preset=tiny",
        "quality.train_mixtures=10",
        "quality.heldout_mixtures=2",
        "quality.clip_seconds=1.0",
        "quality.codec_fit_per_kind=4",
        "quality.lr=0.002",
    ]


@pytest.fixture(scope="session")
def quality_set(tiny_quality):
    """The `tiny` masker trained on synthetic mixtures with a fitted codec, and held-out
    mixtures (cached for the session: the codec fit and the encoding dominate)."""
    from jobs.bench.config import BenchConfig
    from jobs.bench.quality import build_quality_set
    from jobs.engine import load_config

    cfg = load_config(BenchConfig, None, [*tiny_quality, "quality.steps=150"])
    return build_quality_set(cfg.quality)
