"""Masker checkpoints: safetensors with the MaskerConfig in the metadata (never a pickle)."""

from __future__ import annotations

from pathlib import Path

from codecsep_core import model_io
from codecsep_core.masker import Masker, MaskerConfig

FORMAT = "codecsep.masker.v1"


ENCODER_KEY = "prompt_encoder"  # metadata: the encoder of the prompt vectors it was trained on


def masker_to_bytes(masker: Masker, prompt_encoder: str | None = None) -> bytes:
    extra = {ENCODER_KEY: prompt_encoder} if prompt_encoder else {}
    return model_io.pack(masker.state_dict(), FORMAT, masker.config.to_dict(), **extra)


def save_masker(masker: Masker, path: str | Path, prompt_encoder: str | None = None) -> None:
    model_io.write(path, masker_to_bytes(masker, prompt_encoder))


def masker_config(src: model_io.Source) -> MaskerConfig:
    """The masker's config, without building it."""
    import json

    return MaskerConfig.from_dict(json.loads(model_io.metadata(src)["config"]))


def masker_prompt_encoder(src: model_io.Source) -> str | None:
    """The prompt encoder the masker was trained with, when its file records one: prompt
    vectors of any other encoder mean nothing to it."""
    return model_io.metadata(src).get(ENCODER_KEY)


def load_masker(src: model_io.Source) -> Masker:
    """From a local path or the file's bytes."""
    tensors, config = model_io.unpack(src, FORMAT)
    cfg = MaskerConfig.from_dict(config)
    masker = Masker(cfg)
    own = masker.state_dict()
    missing, unexpected = own.keys() - tensors.keys(), tensors.keys() - own.keys()
    wrong = [k for k in own.keys() & tensors.keys() if own[k].shape != tensors[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {sorted(keys)[:5]}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise ValueError(f"masker file does not match its config {cfg}: {detail}")
    masker.load_state_dict(tensors)
    return masker.eval()
