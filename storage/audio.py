"""Audio files as users bring them (wav, flac, ogg), read and written the same way by every job."""

from __future__ import annotations

import io
import re

import numpy as np
import soundfile as sf

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")

_TRUNCATED = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Data sizes that writers to a pipe put in the header, never knowing the length (0x7FFFF000:
# SoX, espeak-ng --stdout); such a file is read to its end, not called truncated.
_PLACEHOLDER_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000}


class UnreadableAudio(ValueError):
    """A file that is not audio a job can use; the message says why, in words a user acts on."""


def read_audio(data: bytes) -> tuple[np.ndarray, int]:
    """File bytes -> (float32 [channels, n], sample_rate). libsndfile reads a truncated WAV
    silently (to the end of what is there); its header log gives the truncation away."""
    if not data:
        raise UnreadableAudio("empty file (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            declared = _TRUNCATED.search(f.extra_info)
            if (
                declared
                and int(declared.group(1)) not in _PLACEHOLDER_SIZES
                and int(declared.group(1)) > int(declared.group(2))
            ):
                raise UnreadableAudio(
                    f"truncated audio file: data chunk declares {declared.group(1)} bytes, file holds {declared.group(2)}"
                )
            audio = f.read(dtype="float32", always_2d=True)
            sample_rate = f.samplerate
    except sf.SoundFileError as e:
        raise UnreadableAudio(f"unreadable audio file: {getattr(e, 'error_string', e)}") from None
    if audio.shape[0] == 0:
        raise UnreadableAudio("empty audio file (0 samples)")
    return np.ascontiguousarray(audio.T), int(sample_rate)


def encode_audio(audio: np.ndarray, sample_rate: int, fmt: str, subtype: str) -> bytes:
    """float [channels, n] -> the bytes of a `fmt` file (wav, flac), clipped to [-1, 1]."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio.T, -1.0, 1.0), sample_rate, format=fmt.upper(), subtype=subtype)
    return buf.getvalue()
