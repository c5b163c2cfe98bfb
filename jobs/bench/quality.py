"""The quality rule for reduced precision: separation quality on held-out mixtures.

Re-quantization is a nearest-neighbour search over residual stages, so any change of
rounding (bf16, another kernel, a GPU) flips the codes of near-tie frames, and a near-tie
flip changes the decoded latent by almost nothing. So a precision is judged by what users
get: on held-out synthetic mixtures, with a codec fitted to audio (`codec_fit`) and a
briefly trained masker, the latent SNR of its output codes against the target source. It
is "at equal quality" when that SNR is within `EQUAL_QUALITY_DB` of fp32's. The SNR of
its output latent against fp32's and code agreement are reported beside it.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codecsep_core import CodecTables, Masker, MaskerConfig, Separator, SeparatorConfig, training
from jobs import synthetic
from jobs.bench.config import EQUAL_QUALITY_DB, QualityConfig
from jobs.bench.models import code_agreement

log = logging.getLogger("codecsep.bench")


@dataclass
class QualitySet:
    """A trained masker, its codec tables, and held-out rows: mixture codes, the target
    source's codes and the target's prompt index, per row."""

    tables: CodecTables
    masker: Masker
    prompts: torch.Tensor  # [n_kinds, cond_dim]: the fixed prompt vector of each kind
    mixtures: list[torch.Tensor]  # [n_q, T] per held-out mixture
    targets: list[torch.Tensor]  # [n_kinds, n_q, T] per held-out mixture: each kind's source
    train_loss: list[float]


def _mixtures(n: int, seconds: float, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n mixtures of one source of every kind at equal loudness -> (mixtures [n, samples],
    sources [n, n_kinds, samples])."""
    sources = np.stack([[synthetic.source(k, seconds, rate, rng) for k in synthetic.KINDS] for _ in range(n)])
    return sources.sum(1), sources


def _encode(codec, audio: np.ndarray) -> torch.Tensor:
    """[N, samples] -> codes [N, n_q, T] (clips encoded together as channels)."""
    return torch.from_numpy(codec.encode(audio, codec.info.sample_rate).astype(np.int64))


def build_quality_set(cfg: QualityConfig, seed: int = 0) -> QualitySet:
    """Fit a codec, encode training and held-out mixtures and their sources, train the
    masker (`cfg.preset`) for `cfg.steps` on the latent-SNR loss."""
    from codecsep_core.dac_codec import DacCodec, load_dac

    with tempfile.TemporaryDirectory(prefix="codecsep-quality-") as tmp:
        weights = synthetic.fitted_random_codec(
            Path(tmp) / "codec.pth", seed=seed, per_kind=cfg.codec_fit_per_kind, seconds=cfg.clip_seconds
        )
        codec = DacCodec(load_dac(weights))
    tables = CodecTables.from_dac_model(codec.model)
    rate = codec.info.sample_rate
    rng = np.random.default_rng([seed, 1])
    sets = {}
    for name, n in (("train", cfg.train_mixtures), ("heldout", cfg.heldout_mixtures)):
        mix, sources = _mixtures(n, cfg.clip_seconds, rate, rng)
        codes = _encode(codec, np.concatenate([mix, sources.reshape(-1, sources.shape[-1])]))
        sets[name] = (codes[:n], codes[n:].view(n, len(synthetic.KINDS), *codes.shape[1:]))
    prompts = torch.from_numpy(training.fixed_prompt_vectors(synthetic.KINDS))
    torch.manual_seed(seed)
    masker = Masker(MaskerConfig.preset(cfg.preset, dropout=0.0))
    losses = train_masker(masker, tables, prompts, *sets["train"], cfg, seed)
    mixtures, targets = sets["heldout"]
    return QualitySet(tables, masker.eval(), prompts, list(mixtures), list(targets), losses)


def train_masker(
    masker: Masker,
    tables: CodecTables,
    prompts: torch.Tensor,
    mix: torch.Tensor,
    targets: torch.Tensor,
    cfg: QualityConfig,
    seed: int,
) -> list[float]:
    """`cfg.steps` optimiser steps on random (mixture, target) rows of the training set (deterministic
    for a seed: no Ray, no data loader)."""
    optimizer = training.make_optimizer(masker, lr=cfg.lr)
    rng = np.random.default_rng(seed)
    n_mix, n_kinds = targets.shape[:2]
    losses = []
    for _ in range(cfg.steps):
        rows = rng.integers(0, n_mix * n_kinds, cfg.batch_rows)
        m, k = rows // n_kinds, rows % n_kinds
        z_mix, z_target = tables.lookup(mix[m]), tables.lookup(targets[m, k])
        cond = prompts[k]

        def loss(z_mix=z_mix, z_target=z_target, cond=cond):
            return -training.latent_snr(masker(z_mix, cond) * z_mix, z_target).mean()

        losses.append(training.train_step(masker, optimizer, loss)["loss"])
    log.info(
        "quality masker (%d layers): loss %.2f -> %.2f over %d steps",
        masker.config.n_layers,
        losses[0],
        losses[-1],
        cfg.steps,
    )
    return losses


def measure_quality(
    q: QualitySet, precisions: list[str], separator: SeparatorConfig, device: torch.device | None = None
) -> dict:
    """Per precision: latent SNR of the output codes vs the target source (mean over held-out
    rows, every kind's prompt on every mixture), SNR of its output latent vs fp32's, code
    agreement with fp32, and whether it is at equal quality. Also the identity mask's SNR,
    the floor a trained masker must beat for the rule to mean anything."""
    from dataclasses import replace

    n_kinds = q.prompts.shape[0]
    targets = torch.cat(list(q.targets), dim=-1)  # [n_kinds, n_q, sum T]
    z_target = q.tables.lookup(targets)
    outputs = {}
    for precision in precisions:
        sep = Separator(q.tables, q.masker.to(device or "cpu"), replace(separator, precision=precision))
        results = sep.separate(q.mixtures, q.prompts)
        outputs[precision] = torch.cat([r.codes.long() for r in results], dim=-1)
    q.masker.to("cpu")
    identity = q.tables.lookup(torch.cat(q.mixtures, dim=-1))[None].expand(n_kinds, -1, -1)
    out = {"identity_snr_db": training.latent_snr(identity, z_target).mean().item(), "precisions": {}}
    reference = outputs["fp32"]
    for precision, codes in outputs.items():
        snr = training.latent_snr(q.tables.lookup(codes), z_target).mean().item()
        out["precisions"][precision] = {"snr_vs_target_db": snr, **_vs_fp32(codes, reference, q.tables)}
    fp32 = out["precisions"]["fp32"]["snr_vs_target_db"]
    for row in out["precisions"].values():
        row["equal_quality"] = row["snr_vs_target_db"] >= fp32 - EQUAL_QUALITY_DB
    return out


def _vs_fp32(codes: torch.Tensor, reference: torch.Tensor, tables: CodecTables) -> dict:
    agree = code_agreement([codes], [reference], tables)
    return {
        "snr_vs_fp32_db": agree["latent_snr_db"],
        "code_agreement": agree["code_agreement"],
        "frame_agreement": agree["frame_agreement"],
    }
