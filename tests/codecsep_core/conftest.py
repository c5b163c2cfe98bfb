"""Shared fixtures for codecsep_core tests: a random-weight DAC 16 kHz of the real
architecture (no weights can be downloaded here) and the codec tables exported from it."""
import pytest
import torch

DAC16_KWARGS = dict(
    encoder_dim=64, encoder_rates=[2, 4, 5, 8], decoder_dim=1536, decoder_rates=[8, 5, 4, 2],
    sample_rate=16000, n_codebooks=12, codebook_size=1024, codebook_dim=8,
)


@pytest.fixture(scope="session")
def dac16():
    import dac

    torch.manual_seed(0)
    return dac.DAC(**DAC16_KWARGS).eval()


@pytest.fixture(scope="session")
def dac16_checkpoint(dac16, tmp_path_factory):
    path = tmp_path_factory.mktemp("dac") / "dac16_random.pth"
    dac16.save(str(path), package=False)
    return path


@pytest.fixture(scope="session")
def tables(dac16_checkpoint):
    from codecsep_core import CodecTables

    return CodecTables.from_dac_checkpoint(dac16_checkpoint)
