"""Fixtures for job tests: one embedded Ray for the session; the random-weight DAC
fixtures live in tests/conftest.py."""
import pytest


@pytest.fixture(scope="session")
def ray_session():
    from jobs.runtime import RayOptions, init_ray

    ray = init_ray(RayOptions())  # the jobs' own embedded set-up (logical CPU headroom included)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def dac_weights(dac16_checkpoint):
    """Path of a DAC checkpoint that `dac.DAC.load` and `--weights_path` accept."""
    return dac16_checkpoint
