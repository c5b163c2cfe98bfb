"""Audio files as users bring them, read the same way by every job."""

from __future__ import annotations

import io
import re

import numpy as np
import soundfile as sf

from jobs.stage import BadInput

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


_TRUNCATED = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_PLACEHOLDER_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}  # streaming writers that never knew the length


def read_audio(data: bytes) -> tuple[np.ndarray, int]:
    """File bytes -> (float32 [channels, n], sample_rate). libsndfile reads a truncated WAV
    silently (to the end of what is there); its header log gives the truncation away."""
    if not data:
        raise BadInput("empty file (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            declared = _TRUNCATED.search(f.extra_info)
            if (
                declared
                and int(declared.group(1)) not in _PLACEHOLDER_SIZES
                and int(declared.group(1)) > int(declared.group(2))
            ):
                raise BadInput(
                    f"truncated audio file: data chunk declares {declared.group(1)} bytes, file holds {declared.group(2)}"
                )
            audio = f.read(dtype="float32", always_2d=True)
            sample_rate = f.samplerate
    except sf.SoundFileError as e:
        raise BadInput(f"unreadable audio file: {getattr(e, 'error_string', e)}") from None
    if audio.shape[0] == 0:
        raise BadInput("empty audio file (0 samples)")
    return np.ascontiguousarray(audio.T), int(sample_rate)
