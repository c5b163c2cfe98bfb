"""Safetensors bytes with a JSON config in the metadata: the one format for model files.

codecsep_core does no storage I/O of its own: callers pass a local path or the file's
bytes (jobs fetch bytes from any URI through `storage`). Nothing here unpickles.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

Source = str | Path | bytes


def read_source(src: Source) -> bytes:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    return Path(src).read_bytes()


def pack(tensors: dict[str, torch.Tensor], fmt: str, config: dict, **extra: str) -> bytes:
    """`extra`: more string metadata (e.g. the prompt encoder a masker was trained with)."""
    from safetensors.torch import save

    meta = {"format": fmt, "config": json.dumps(config), **extra}
    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)


def metadata(src: Source) -> dict[str, str]:
    """The file's string metadata, without loading its tensors."""
    data = read_source(src)
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]).get("__metadata__") or {}


def unpack(src: Source, fmt: str) -> tuple[dict[str, torch.Tensor], dict]:
    """-> (tensors, config); ValueError naming the file and what is wrong."""
    from safetensors.torch import load

    name = "<bytes>" if isinstance(src, (bytes, bytearray, memoryview)) else str(src)
    data = read_source(src)
    try:
        (n,) = struct.unpack("<Q", data[:8])
        meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
        tensors = load(data)
    except Exception as e:  # noqa: BLE001 - any parse failure means "not this format"
        raise ValueError(f"{name}: not a safetensors file ({type(e).__name__}: {e})") from e
    if meta.get("format") != fmt:
        raise ValueError(f"{name}: expected a {fmt!r} file, found format {meta.get('format')!r}")
    return tensors, json.loads(meta["config"])


def content_digest(src: Source) -> str:
    """A digest of what a model file holds (its tensors and string metadata), not of its
    bytes: safetensors orders the header's metadata differently from one save to the next,
    so the same model saved twice has other bytes but the same digest."""
    import hashlib

    from safetensors.torch import load

    data = read_source(src)
    tensors = load(data)
    h = hashlib.sha256(json.dumps(metadata(data), sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def write(path: str | Path, data: bytes) -> None:
    """Local write that never leaves a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
