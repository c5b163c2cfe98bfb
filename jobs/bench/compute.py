"""Compute figures: MACs per audio second of the real modules, and this machine's matmul peak."""

from __future__ import annotations

from dataclasses import replace

import torch

from codecsep_core import Separator
from codecsep_core.flops import count_macs
from codecsep_core.separator import PRECISIONS
from jobs.bench.config import BenchConfig
from jobs.bench.models import Models, best_time


def measure_macs(cfg: BenchConfig, m: Models) -> dict:
    """MACs per second of audio of the separator and of each codec part, counted on the real
    modules (attention included)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n = m.frames(cfg.clip_seconds)
    seconds = m.seconds(n)
    codes = m.random_codes(1, n, gen)
    prompt = m.prompts[:1]
    sep = Separator(m.tables, m.masker, replace(cfg.separator, precision="fp32"))
    sep.separate(codes, prompt)  # builds the folded tail outside the count
    separator, sep_ops = count_macs(lambda: sep.separate(codes, prompt))
    z = m.tables.lookup(codes[0][None])
    lookup, _ = count_macs(lambda: m.tables.lookup(codes[0][None]))
    quantize, _ = count_macs(lambda: m.tables.quantize(z))
    masker_fast, _ = count_macs(lambda: m.masker(z, prompt))
    m.masker.fold_tail = False
    try:
        published, _ = count_macs(lambda: m.masker(z, prompt))
    finally:
        m.masker.fold_tail = True
    info = m.tables.info
    audio = torch.zeros(1, 1, info.sample_rate)  # one second
    encoder, _ = count_macs(lambda: m.dac.encoder(audio))
    decoder, _ = count_macs(lambda: m.dac.decoder(torch.zeros(1, info.latent_dim, m.frames(1.0))))
    g = 1e9
    return {
        "separator_gmacs_per_audio_second": separator / seconds / g,
        "separator_macs_by_op": {k: v / seconds / g for k, v in sep_ops.items()},
        "masker_gmacs_per_audio_second": masker_fast / seconds / g,
        "published_masker_gmacs_per_audio_second": published / seconds / g,
        "lookup_gmacs_per_audio_second": lookup / seconds / g,
        "requantize_gmacs_per_audio_second": quantize / seconds / g,
        "dac_encoder_gmacs_per_audio_second": encoder / g,
        "dac_decoder_gmacs_per_audio_second": decoder / g,
        "waveform_route_gmacs_per_audio_second": (decoder + encoder) / g + separator / seconds / g,
    }


def machine_peak(cfg: BenchConfig, device: torch.device, precisions: list[str]) -> dict:
    """GFLOP/s of a large square matmul, per dtype: the ceiling the separator is held to."""
    peaks = {}
    n = cfg.matmul_size
    for name in precisions:
        a = torch.randn(n, n, device=device).to(PRECISIONS[name])
        t = best_time(lambda: torch.mm(a, a), 3, device)
        peaks[name] = 2 * n**3 / t / 1e9
    return peaks
