"""DacCodec must give what DAC's own encode/compress/decompress give, window by window,
on a random-weight DAC 16 kHz of the real architecture (fixtures in conftest.py)."""

import numpy as np
import pytest
import torch

from codecsep_core import CodecTables
from codecsep_core.dac_codec import (
    DacCodec,
    DacWeightsUnavailable,
    apply_gain_db,
    load_dac,
    loudness_db,
)


def tone(seconds: float, sample_rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """[channels, n] float32."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    noise = 0.02 * np.random.default_rng(seed).standard_normal((channels, len(t)))
    return (0.2 * np.sin(2 * np.pi * 330 * t)[None] + noise).astype(np.float32)


@pytest.fixture(scope="module")
def codec(dac16):
    return DacCodec(dac16, window_seconds=0.4)  # windows far shorter than the clips below


@pytest.fixture(scope="module")
def one_pass(dac16):
    return DacCodec(dac16, window_seconds=1000.0)


def test_info_and_tables_come_from_the_model(codec, dac16_checkpoint):
    assert (codec.info.name, codec.info.sample_rate, codec.info.hop_length, codec.info.n_codebooks) == (
        "dac_16khz",
        16000,
        320,
        12,
    )
    expected = CodecTables.from_dac_checkpoint(dac16_checkpoint)
    assert codec.tables().info == expected.info
    torch.testing.assert_close(codec.tables().codebooks, expected.codebooks)


def test_windowed_encode_equals_one_pass_and_needs_its_context(codec, one_pass):
    audio = tone(1.2, 16000)  # three 0.4 s windows
    codes = codec.encode(audio, 16000)
    assert codes.dtype == np.uint16 and codes.shape[:2] == (1, 12)
    np.testing.assert_array_equal(codes, one_pass.encode(audio, 16000))
    no_context = DacCodec(codec.model, window_seconds=0.4)
    no_context.encode_context = 0  # plain non-overlapping chunks: seams differ
    assert (no_context.encode(audio, 16000) != codes).any()


def test_its_snakes_give_the_bits_of_dacs_own(dac16):
    """The DAC models we build compute DAC's snake activation in one buffer
    (`use_one_buffer_snakes`): a DAC model left as DAC builds it must give the same codes
    and the same samples."""
    import dac

    from codecsep_core.dac_codec import DAC_ARCHITECTURES, random_dac

    torch.manual_seed(0)
    reference = dac.DAC(**DAC_ARCHITECTURES["16khz"]).eval()  # dac16's weights, DAC's own snakes
    ours = DacCodec(random_dac(0), window_seconds=1000.0)
    audio = torch.from_numpy(tone(1.0, 16000))[None]
    with torch.inference_mode():
        z, codes = reference.encode(audio)[:2]
        assert torch.equal(ours.model.encode(audio)[1], codes)
        assert torch.equal(ours.model.decode(z), reference.decode(z))
    with torch.enable_grad():  # training keeps DAC's own (in-place ops would break autograd)
        x = torch.randn(1, 64, 50, requires_grad=True)
        snake = next(m for m in ours.model.modules() if type(m).__name__ == "Snake1d")
        snake(x).sum().backward()
        assert x.grad is not None


def test_windowed_decode_equals_one_pass(codec, one_pass):
    codes = np.random.default_rng(0).integers(0, 1024, (12, 60)).astype(np.uint16)
    out = codec.decode(codes, 60 * 320)
    assert out.dtype == np.float32 and out.shape == (60 * 320,)
    np.testing.assert_allclose(out, one_pass.decode(codes, 60 * 320), atol=1e-5)


def test_compress_gives_dac_compress_codes_and_loudness(codec, dac16):
    from audiotools import AudioSignal

    audio = tone(1.5, 22050, channels=2)
    ours = codec.compress(audio, 22050)
    theirs = dac16.compress(AudioSignal(torch.from_numpy(audio)[None], 22050), win_duration=None)
    assert ours.input_db == pytest.approx(float(theirs.input_db), abs=1e-4)
    assert ours.n_samples == audio.shape[1] * 16000 // 22050
    n = theirs.codes.shape[-1]
    assert ours.codes.shape[:2] == (2, 12) and ours.codes.shape[2] >= n
    # Equal but for the last frames: ours encode a little more trailing padding (below).
    np.testing.assert_array_equal(ours.codes[..., : n - 2], theirs.codes.numpy()[..., : n - 2])


@pytest.mark.parametrize("n_samples", [16000, 16000 - 3, 4 * 320])
def test_codes_always_decode_to_the_full_length_with_dacs_decompress(codec, dac16, n_samples):
    """DAC's decoder yields 8 samples short of frames * hop: DAC's own `decompress` then
    fails on clips whose length is (nearly) a multiple of the hop. Our codes carry slack."""
    from dac import DACFile

    audio = tone(n_samples / 16000, 16000)
    c = codec.compress(audio, 16000)
    dac_file = DACFile(
        codes=torch.from_numpy(c.codes.astype(np.int64)),
        chunk_length=c.codes.shape[-1],
        original_length=n_samples,
        input_db=torch.tensor([c.input_db]),
        channels=1,
        sample_rate=16000,
        padding=True,
        dac_version="1.0.0",
    )
    assert dac16.decompress(dac_file).audio_data.shape[-1] == n_samples
    assert codec.decode(c.codes[0], n_samples).shape == (n_samples,)


def test_decode_chunks_matches_dac_decompress_of_a_chunked_file(codec, dac16):
    from audiotools import AudioSignal

    audio = tone(1.6, 16000)
    dac_file = dac16.compress(AudioSignal(torch.from_numpy(audio)[None], 16000), win_duration=1.0)
    assert not dac_file.padding and dac_file.codes.shape[-1] > dac_file.chunk_length
    expected = dac16.decompress(dac_file).audio_data[0].numpy()
    decoded = codec.decode_chunks(dac_file.codes[0].numpy(), dac_file.chunk_length, audio.shape[1])[None]
    decoded = apply_gain_db(decoded, float(dac_file.input_db) - loudness_db(decoded, 16000))
    # DAC measures loudness before trimming to the original length, we after: gains differ a hair.
    gain = float((decoded * expected).sum() / (decoded**2).sum())
    assert gain == pytest.approx(1.0, abs=0.01)
    np.testing.assert_allclose(gain * decoded, expected, atol=1e-4)
    assert dac16.padding  # the model is left in its padded mode


def test_encode_refuses_empty_and_non_finite_audio(codec):
    with pytest.raises(ValueError, match="empty audio"):
        codec.encode(np.zeros((1, 0), np.float32), 16000)
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(np.full((1, 800), np.nan, np.float32), 16000)


def test_compress_normalises_loudness_so_codes_do_not_depend_on_input_gain(codec):
    audio = tone(1.0, 16000)
    quiet, loud = codec.compress(0.01 * audio, 16000), codec.compress(audio, 16000)
    assert quiet.input_db == pytest.approx(loud.input_db - 40, abs=0.01)
    np.testing.assert_array_equal(quiet.codes, loud.codes)
    assert (codec.encode(0.01 * audio, 16000) != codec.encode(audio, 16000)).any()  # plain encode does not


def test_load_dac_from_path_or_bytes_matches_dac_load(dac16, dac16_checkpoint):
    import dac

    reference = dac.DAC.load(str(dac16_checkpoint)).state_dict()
    for source in (dac16_checkpoint, dac16_checkpoint.read_bytes()):
        model = load_dac(source)
        assert not model.training
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, reference[k])


class Payload:
    """Not a tensor: a checkpoint holding it would need unpickling arbitrary classes."""


def test_load_dac_refuses_checkpoints_that_need_code_or_lack_weights(dac16, tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": dac16.state_dict(), "metadata": {"kwargs": {}, "x": Payload()}}, path)
    with pytest.raises(ValueError, match="not a readable DAC checkpoint"):
        load_dac(path)
    state = {k: v for k, v in dac16.state_dict().items() if not k.startswith("decoder.")}
    torch.save(
        {
            "state_dict": state,
            "metadata": {
                "kwargs": {
                    "sample_rate": 16000,
                    "encoder_rates": [2, 4, 5, 8],
                    "decoder_rates": [8, 5, 4, 2],
                    "n_codebooks": 12,
                }
            },
        },
        path,
    )
    with pytest.raises(ValueError, match="lacks .* tensors"):
        load_dac(path)


def test_official_weights_without_cache_or_network_name_the_flag(monkeypatch, tmp_path):
    import requests

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("no network")

    monkeypatch.setenv("HOME", str(tmp_path))  # an empty ~/.cache/descript/dac
    monkeypatch.setattr(requests, "get", offline)
    with pytest.raises(DacWeightsUnavailable, match="not cached and no network.*--codec-weights PATH"):
        load_dac(None, model_type="16khz")
