"""One resolver each for what several jobs need: codec weights and tables, and prompt
vectors (the device is the engine's: `jobs.engine.cluster`). Each turns what the user gave into the thing itself, or stops the job with
a message that says what is wrong and what to pass instead (docs/architecture.md)."""

from __future__ import annotations

import logging

import numpy as np

from codecsep_core import DAC_CODECS, CodecInfo, CodecTables
from jobs.engine import UsageError
from storage import fs as sfs

log = logging.getLogger("codecsep.resolve")

DEFAULT_CODEC = "dac_16khz"


# --------------------------------------------------------------------------- codec


def check_codec_name(codec: str | None) -> None:
    if codec is not None and codec not in DAC_CODECS:
        raise UsageError(f"codec must be one of {sorted(DAC_CODECS)}, got {codec!r}")


def codec_weights(uri: str | None, codec: str | None, s3: sfs.S3Options | None = None) -> tuple[bytes, CodecInfo]:
    """(DAC checkpoint bytes, the codec they are): the user's checkpoint, whose codec it
    names (a given `codec` must agree), else DAC's official download for `codec`."""
    from codecsep_core.dac_codec import official_weights

    check_codec_name(codec)
    if uri:
        data = sfs.read_bytes(uri, s3)
    else:
        name = codec or DEFAULT_CODEC
        log.info("no codec weights given: using DAC's official %s model", name)
        data = official_weights(name.split("_", 1)[1]).read_bytes()
    info = CodecTables.from_dac_checkpoint(data).info
    if codec is not None and info.name != codec:
        raise UsageError(
            f"the codec weights are a {info.name} model, but codec={codec}: drop codec= or pass {codec} weights"
        )
    return data, info


def codec_tables(tables_uri: str | None, weights_uri: str | None, s3: sfs.S3Options | None = None) -> bytes:
    """Codec tables file bytes: a tables file, else exported from DAC weights (the user's,
    else the official 16 kHz download)."""
    if tables_uri:
        return sfs.read_bytes(tables_uri, s3)
    weights, _ = codec_weights(weights_uri, None, s3)
    return CodecTables.from_dac_checkpoint(weights).to_bytes()


# --------------------------------------------------------------------------- prompts


FIXED_ENCODER = "fixed-random-unit-vectors:sha256"


def prompt_vectors(
    prompts: list[str],
    table_uri: str | None,
    clap_checkpoint: str | None,
    dim: int,
    encoder: str | None = None,
    fixed_if_offline: bool = False,
) -> tuple[np.ndarray, str | None]:
    """([P, dim] float32 vectors of `prompts`, the encoder that made them): from the prompt
    table where it has them, the rest embedded once with CLAP (or, with `fixed_if_offline`
    and no CLAP weights, fixed per-prompt vectors, said loudly). Vectors of two encoders
    never mix: a table made by another encoder than `encoder` (the one the masker was
    trained with, when its file says) or than CLAP's, or of another size, is refused."""
    from storage.prompt_table import read_prompt_table

    found: dict[str, np.ndarray] = {}
    if table_uri:
        table = read_prompt_table(table_uri)
        if table.embeddings.shape[1] != dim:
            raise UsageError(
                f"prompt table {table_uri} holds {table.embeddings.shape[1]}-d vectors; the masker takes {dim}-d ones"
            )
        _same_encoder(
            table.encoder,
            encoder,
            f"prompt table {table_uri} was made by {table.encoder!r}, the masker was trained on {encoder!r} vectors",
        )
        encoder = table.encoder or encoder
        known = [p for p in prompts if p in table.prompts]
        found = dict(zip(known, table.vectors(known)))
    missing = [p for p in prompts if p not in found]
    if missing:
        vectors, new_encoder = _embed(missing, clap_checkpoint, fixed_if_offline)
        _same_encoder(
            encoder,
            new_encoder,
            f"prompt vectors come from {encoder!r}, but prompts missing from the table would be embedded by {new_encoder!r}",
        )
        found.update(zip(missing, vectors))
        encoder = new_encoder
    return np.stack([np.asarray(found[p], np.float32) for p in prompts]), encoder


def _embed(prompts: list[str], clap_checkpoint: str | None, fixed_if_offline: bool) -> tuple[np.ndarray, str]:
    from codecsep_core.prompt_encoder import PromptEncoder, PromptEncoderUnavailable
    from codecsep_core.training import fixed_prompt_vectors

    log.info("embedding %d prompt(s) with CLAP: %s", len(prompts), prompts)
    try:
        clap = PromptEncoder(clap_checkpoint)
    except PromptEncoderUnavailable as e:
        if not fixed_if_offline:
            raise
        log.warning(
            "CLAP unavailable: prompts get FIXED RANDOM VECTORS, not CLAP embeddings; the masker "
            "will only understand the exact training prompts (%s)",
            e,
        )
        return fixed_prompt_vectors(prompts), FIXED_ENCODER
    return clap.encode(prompts).numpy(), clap.name


def _same_encoder(have: str | None, want: str | None, message: str) -> None:
    if have is not None and want is not None and have != want:
        raise UsageError(
            f"{message}: vectors of two encoders do not compare; embed every prompt with one encoder (codecsep prompts)"
        )
