"""What users bring, read the same way by every job: audio files and DAC weights."""
from __future__ import annotations

import hashlib
import io
import logging
import re

import numpy as np
import soundfile as sf

from codecsep_core import CodecTables
from codecsep_core.dac_codec import official_weights
from storage import fs as sfs

log = logging.getLogger("codecsep.inputs")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class BadInput(ValueError):
    """An input that becomes an error row: the message is the row's reason."""


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
            if declared and int(declared.group(1)) not in _PLACEHOLDER_SIZES and int(declared.group(1)) > int(declared.group(2)):
                raise BadInput(f"truncated audio file: data chunk declares {declared.group(1)} bytes, file holds {declared.group(2)}")
            audio = f.read(dtype="float32", always_2d=True)
            sample_rate = f.samplerate
    except sf.SoundFileError as e:
        raise BadInput(f"unreadable audio file: {getattr(e, 'error_string', e)}") from None
    if audio.shape[0] == 0:
        raise BadInput("empty audio file (0 samples)")
    return np.ascontiguousarray(audio.T), int(sample_rate)


def batch_prefix(ids: list[str]) -> str:
    """Shard-name prefix of a call: a digest of the ids it processed."""
    return hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def read_codec_weights(codec_weights: str | None, model_type: str, s3: sfs.S3Options) -> bytes:
    """The DAC checkpoint's bytes: a user's URI, or DAC's official (cached) download."""
    if codec_weights:
        return sfs.read_bytes(codec_weights, s3)
    log.info("no --codec-weights: using DAC's official %s model", model_type)
    return official_weights(model_type).read_bytes()


def check_weights_codec(weights: bytes, codec: str) -> None:
    """Refuse weights of another codec before any actor starts."""
    info = CodecTables.from_dac_checkpoint(weights).info
    if info.name != codec:
        raise ValueError(f"codec weights are a {info.name} model, but codec={codec}")
