"""Code rows back to audio or `.dac` bytes, as DAC's `decompress` would: what `export`
writes, and how `prompts` hears an example clip given as codes."""

from __future__ import annotations

import math

import numpy as np

from codecsep_core.dac_codec import DAC_VERSION, NORMALIZE_DB, apply_gain_db, fit_length, loudness_db, resample
from storage.dacfile import dac_from_rows, write_dac


def with_dac_defaults(row: dict, n_frames: int) -> dict:
    """A row without DAC metadata (a code shard from elsewhere): one mono, continuous
    clip at the codec rate, of unknown input loudness."""
    if row.get("dac_channels") is not None:
        return row
    return {
        **row,
        "dac_version": DAC_VERSION,
        "dac_chunk_length": n_frames,
        "dac_padding": True,
        "dac_input_db": None,
        "dac_channels": 1,
        "dac_channel": 0,
        "dac_original_length": row["n_samples"],
        "dac_sample_rate": row["sample_rate"],
    }


def dac_bytes(rows: list[dict]) -> bytes:
    rows = [{**r, "dac_input_db": NORMALIZE_DB if r["dac_input_db"] is None else r["dac_input_db"]} for r in rows]
    return write_dac(dac_from_rows(rows))


def decode_rows(codec, rows: list[dict], separated: bool):
    """Channel rows of one file -> float32 [channels, original_length] at the original rate."""
    first = rows[0]
    rate, original_rate, original_length = first["sample_rate"], first["dac_sample_rate"], first["dac_original_length"]
    n = math.ceil(original_length * rate / original_rate) + 1  # a sample of slack before the resample
    channels = []
    for row in rows:
        if row["dac_padding"]:
            channels.append(codec.decode(row["codes"], n))
        else:
            channels.append(codec.decode_chunks(row["codes"], int(row["dac_chunk_length"]), n))
    audio = np.stack(channels)
    input_db = first["dac_input_db"]
    if input_db is not None:
        gain = input_db - (NORMALIZE_DB if separated else loudness_db(audio, rate))
        audio = apply_gain_db(audio, gain)
    return fit_length(resample(audio, rate, original_rate), original_length)
