"""Masker checkpoints: safetensors with the MaskerConfig in the metadata (never a pickle)."""
from __future__ import annotations

from pathlib import Path

from codecsep_core import model_io
from codecsep_core.masker import Masker, MaskerConfig

FORMAT = "codecsep.masker.v1"


def masker_to_bytes(masker: Masker) -> bytes:
    return model_io.pack(masker.state_dict(), FORMAT, masker.config.to_dict())


def save_masker(masker: Masker, path: str | Path) -> None:
    model_io.write(path, masker_to_bytes(masker))


def load_masker(src: model_io.Source, expect: MaskerConfig | None = None) -> Masker:
    """From a local path or the file's bytes. `expect`: refuse a file of another config."""
    tensors, config = model_io.unpack(src, FORMAT)
    cfg = MaskerConfig.from_dict(config)
    if expect is not None and cfg != expect:
        diff = {k: (v, getattr(cfg, k)) for k, v in expect.to_dict().items() if getattr(cfg, k) != v}
        raise ValueError(f"masker file has a different config (expected, found): {diff}")
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
