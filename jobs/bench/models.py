"""What every measurement shares: random-weight models of the real architectures, random
clips, timing. Frame counts come from the codec's own info, never from constants."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from codecsep_core import CodecTables, Masker, MaskerConfig
from jobs.bench.config import BenchConfig


@dataclass
class Models:
    """A random-weight DAC, its tables, the masker, prompt vectors."""

    dac: torch.nn.Module
    tables: CodecTables
    masker: Masker
    prompts: torch.Tensor  # [n, cond_dim], L2-normalised like CLAP's

    def frames(self, seconds: float) -> int:
        return max(1, round(seconds * self.tables.info.frame_rate))

    def seconds(self, n_frames: int) -> float:
        return n_frames / self.tables.info.frame_rate

    def code_shard(self, ids: list[str], clips: list[np.ndarray]):
        """A code shard (the input schema) of `clips` ([n_q, T] uint16 codes) under `ids`."""
        from storage.schema import CODE_SHARD_SCHEMA, codes_to_arrow, table_from_columns

        info = self.tables.info
        return table_from_columns(
            {
                "id": ids,
                "codes": codes_to_arrow(clips),
                "codec": [info.name] * len(ids),
                "sample_rate": [info.sample_rate] * len(ids),
                "n_samples": [c.shape[1] * info.hop_length for c in clips],
            },
            CODE_SHARD_SCHEMA,
        )

    def random_shard(self, ids: list[str], n_frames: int, gen: torch.Generator):
        """A code shard of random clips of `n_frames` frames."""
        return self.code_shard(ids, [c.numpy().astype(np.uint16) for c in self.random_codes(len(ids), n_frames, gen)])

    def random_codes(self, n_clips: int, n_frames: int, gen: torch.Generator) -> list[torch.Tensor]:
        info = self.tables.info
        return [
            torch.randint(0, info.codebook_size, (info.n_codebooks, n_frames), generator=gen) for _ in range(n_clips)
        ]


def build_models(cfg: BenchConfig) -> Models:
    from codecsep_core.dac_codec import random_dac

    codec = random_dac(cfg.seed)
    masker = Masker(MaskerConfig.preset(cfg.masker_preset)).eval()
    prompts = torch.randn(max(cfg.n_prompts, cfg.ablation_prompts), masker.config.cond_dim)
    return Models(codec, CodecTables.from_dac_model(codec), masker, torch.nn.functional.normalize(prompts, dim=-1))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, repeats: int, device: torch.device | None = None, warmup: bool = True) -> float:
    """Minimum wall time of `repeats` calls after one warm-up: on a shared machine the
    minimum is the least disturbed estimate."""
    device = device or torch.device("cpu")
    if warmup:
        fn()
        sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def code_agreement(codes: list[torch.Tensor], reference: list[torch.Tensor], tables: CodecTables) -> dict:
    """Fraction of codes and of whole frames (all codebooks) equal to the reference, and the
    SNR of the latent the codes stand for against the reference's. Codes [..., n_q, T]."""
    a, b = torch.cat([c.long() for c in codes], -1), torch.cat([c.long() for c in reference], -1)
    za, zb = tables.lookup(a), tables.lookup(b)
    noise = (za - zb).pow(2).sum().item()
    signal = zb.pow(2).sum().item()
    return {
        "code_agreement": (a == b).float().mean().item(),
        "frame_agreement": (a == b).all(-2).float().mean().item(),
        "latent_snr_db": 10 * torch.log10(torch.tensor(signal / noise)).item() if noise > 0 else float("inf"),
    }
