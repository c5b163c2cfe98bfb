"""Training the masker in code space: batch collation, losses, one optimiser step, the latent
SNR metric, and checkpoints (safetensors + JSON metadata, never a pickle).

The default loss needs neither the codec's encoder nor its decoder: mixture and target
codes become latents by codebook lookup (`CodecTables.lookup`), and the loss is the
negative SNR of M * Z_mix against Z_target. The published loss, negative SI-SDR on
waveforms through the frozen DAC decoder, is `sisdr_loss` with a decoder passed in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from codecsep_core import model_io
from codecsep_core.codec_tables import CodecTables
from codecsep_core.masker import Masker, MaskerConfig

CHECKPOINT_FORMAT = "codecsep.train_checkpoint.v1"
EPS = 1e-8


@dataclass
class Batch:
    """A training batch: codes [B, n_q, L] of mixtures and targets, `valid` [B, L] marks real
    frames (short clips are zero-padded), `cond` [B, cond_dim] the targets' prompt vectors,
    and optionally the target stems' audio [B, L * hop] for the waveform loss."""

    mix_codes: torch.Tensor
    target_codes: torch.Tensor
    valid: torch.Tensor
    cond: torch.Tensor
    target_audio: torch.Tensor | None = None


def collate(
    mix_codes: Sequence[np.ndarray],
    target_codes: Sequence[np.ndarray],
    cond: np.ndarray,
    segment_frames: int,
    rng: np.random.Generator,
    target_audio: Sequence[np.ndarray] | None = None,
    hop: int = 1,
) -> Batch:
    """Random crops of `segment_frames` (the masker's training window), the same crop for a
    row's mixture, target and audio; clips shorter than the window are padded and masked."""
    n = len(mix_codes)
    n_q = mix_codes[0].shape[0]
    mix = torch.zeros(n, n_q, segment_frames, dtype=torch.long)
    tgt = torch.zeros_like(mix)
    valid = torch.zeros(n, segment_frames, dtype=torch.bool)
    audio = torch.zeros(n, segment_frames * hop) if target_audio is not None else None
    for i, (m, t) in enumerate(zip(mix_codes, target_codes)):
        frames = min(m.shape[1], t.shape[1])
        start = int(rng.integers(0, frames - segment_frames + 1)) if frames > segment_frames else 0
        length = min(segment_frames, frames)
        mix[i, :, :length] = torch.from_numpy(np.asarray(m[:, start : start + length], dtype=np.int64))
        tgt[i, :, :length] = torch.from_numpy(np.asarray(t[:, start : start + length], dtype=np.int64))
        valid[i, :length] = True
        if audio is not None and target_audio is not None:
            a = np.asarray(target_audio[i], dtype=np.float32)[start * hop : (start + length) * hop]
            audio[i, : a.shape[0]] = torch.from_numpy(a)
    return Batch(mix, tgt, valid, torch.as_tensor(np.asarray(cond), dtype=torch.float32), audio)


def latent_snr(estimate: torch.Tensor, reference: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """SNR in dB per example of latents [B, D, T] over the valid frames: how close the
    separated latent is to the target's, the code-space stand-in for waveform SNR."""
    w = torch.ones_like(reference[:, :1]) if valid is None else valid[:, None].to(reference.dtype)
    signal = (reference.pow(2) * w).sum((1, 2))
    noise = ((estimate - reference).pow(2) * w).sum((1, 2))
    return 10 * torch.log10((signal + EPS) / (noise + EPS))


def sisdr(estimate: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SDR in dB per example of waveforms [B, n] (zero-mean, as usual)."""
    estimate = estimate - estimate.mean(-1, keepdim=True)
    reference = reference - reference.mean(-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / (reference.pow(2).sum(-1, keepdim=True) + EPS)
    target = scale * reference
    return 10 * torch.log10((target.pow(2).sum(-1) + EPS) / ((estimate - target).pow(2).sum(-1) + EPS))


def separate_latent(masker: Masker, tables: CodecTables, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (M * Z_mix, Z_target), both [B, D, L]; padded frames are zeroed."""
    z_mix = tables.lookup(batch.mix_codes)
    z_target = tables.lookup(batch.target_codes)
    keep = batch.valid[:, None].to(z_mix.dtype)
    mask = masker(z_mix, batch.cond, batch.valid)
    return mask * z_mix * keep, z_target * keep


def latent_loss(masker: Masker, tables: CodecTables, batch: Batch) -> torch.Tensor:
    """The default loss: negative latent SNR of M * Z_mix against Z_target (no codec nets)."""
    z_hat, z_target = separate_latent(masker, tables, batch)
    return -latent_snr(z_hat, z_target, batch.valid).mean()


def sisdr_loss(
    masker: Masker, tables: CodecTables, batch: Batch, decode: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """The published loss: negative SI-SDR of the decoded separated latent against the target
    stem's audio (`batch.target_audio`), or, without it, the target codes' own decode (the
    oracle codec reconstruction). `decode`: the frozen DAC decoder, latent [B, D, L] -> [B, 1, n]."""
    z_hat, z_target = separate_latent(masker, tables, batch)
    estimate = decode(z_hat)[:, 0]
    if batch.target_audio is not None:
        reference = batch.target_audio.to(estimate.device)
    else:
        with torch.no_grad():
            reference = decode(z_target)[:, 0]
    n = min(estimate.shape[-1], reference.shape[-1])
    return -sisdr(estimate[:, :n], reference[:, :n]).mean()


def make_optimizer(masker: Masker, lr: float = 1.5e-4, betas=(0.8, 0.99), weight_decay: float = 0.01):
    """AdamW with the published settings."""
    return torch.optim.AdamW(masker.parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def train_step(
    masker: Masker,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[], torch.Tensor],
    grad_clip: float | None = 10.0,
) -> dict[str, float]:
    """One optimiser step on `loss_fn()`; gradients clipped by global norm (published: 10)."""
    masker.train()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    params = [p for p in masker.parameters() if p.grad is not None]
    norm = (
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if grad_clip
        else torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
    )
    optimizer.step()
    return {"loss": float(loss.detach()), "grad_norm": float(norm)}


def fixed_prompt_vectors(prompts: Sequence[str], dim: int = 512) -> np.ndarray:
    """Deterministic unit vectors, one per prompt string (seeded by its SHA-256): a stand-in
    for CLAP where CLAP's weights are unavailable. They carry no meaning: a masker trained
    on them only knows the exact prompt strings it was trained with."""
    out = np.empty((len(prompts), dim), dtype=np.float32)
    for i, p in enumerate(prompts):
        seed = int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(dim)
        out[i] = v / np.linalg.norm(v)
    return out


# ---------------------------------------------------------------- checkpoints


def checkpoint_to_bytes(
    masker: Masker, optimizer: torch.optim.Optimizer, step: int, extra: dict | None = None
) -> bytes:
    """Masker and optimiser state as one safetensors file: tensors `masker.<name>` and
    `optim.<param index>.<key>`; step, masker config, param groups and `extra` as JSON."""
    tensors = {f"masker.{k}": v for k, v in masker.state_dict().items()}
    state = optimizer.state_dict()
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
    meta = {
        "step": int(step),
        "masker": masker.config.to_dict(),
        "param_groups": state["param_groups"],
        "extra": extra or {},
    }
    return model_io.pack(tensors, CHECKPOINT_FORMAT, meta)


@dataclass
class Checkpoint:
    step: int
    masker: Masker
    optimizer_state: dict
    extra: dict


def checkpoint_from_bytes(data: bytes) -> Checkpoint:
    """Inverse of `checkpoint_to_bytes`; `optimizer_state` loads with `load_state_dict`."""
    tensors, meta = model_io.unpack(data, CHECKPOINT_FORMAT)
    masker = Masker(MaskerConfig.from_dict(meta["masker"]))
    masker.load_state_dict({k[len("masker.") :]: v for k, v in tensors.items() if k.startswith("masker.")})
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return Checkpoint(meta["step"], masker, {"state": state, "param_groups": groups}, meta["extra"])
