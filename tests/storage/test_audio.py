"""Audio files in and out: what ingest reads and export writes."""

import numpy as np
import pytest

from storage.audio import UnreadableAudio, encode_audio, read_audio


def test_a_written_file_reads_back_with_its_rate_channels_and_samples():
    t = np.arange(8000) / 16000
    audio = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 220 * t)]).astype(np.float32)
    for fmt in ("wav", "flac"):
        back, rate = read_audio(encode_audio(audio, 16000, fmt, "PCM_16"))
        assert (back.shape, rate) == (audio.shape, 16000)
        np.testing.assert_allclose(back, audio, atol=1 / 2**15)


def test_out_of_range_samples_are_clipped_not_wrapped():
    back, _ = read_audio(encode_audio(np.array([[2.0, -2.0, 0.5]], np.float32), 8000, "wav", "PCM_16"))
    np.testing.assert_allclose(back[0], [1.0, -1.0, 0.5], atol=1 / 2**14)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"RIFF not really a wave file", "unreadable audio file"),
        (None, "truncated audio file"),
    ],
)
def test_files_that_are_not_usable_audio_say_why(data, reason):
    if data is None:
        whole = encode_audio(np.zeros((1, 4000), np.float32), 16000, "wav", "PCM_16")
        data = whole[: len(whole) // 2]
    with pytest.raises(UnreadableAudio, match=reason):
        read_audio(data)


@pytest.mark.parametrize("declared", [0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000])
def test_a_wav_written_to_a_pipe_reads_whole(declared):
    """A writer to a pipe (SoX, espeak-ng --stdout) cannot know the length and puts a
    placeholder in the data chunk's size: every sample is there, nothing is truncated."""
    import struct

    audio = np.linspace(-0.5, 0.5, 4000, dtype=np.float32)[None]
    whole = encode_audio(audio, 16000, "wav", "PCM_16")
    at = whole.index(b"data") + 4
    streamed = whole[:at] + struct.pack("<I", declared) + whole[at + 4 :]
    out, rate = read_audio(streamed)
    assert rate == 16000 and out.shape == (1, 4000)
    np.testing.assert_allclose(out, audio, atol=1 / 32768)
