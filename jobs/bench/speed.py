"""Speed of the separator in-process: codes route vs waveform route, short vs long clips,
the fast path step by step, time vs clip length."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from codecsep_core import Separator
from codecsep_core.separator import PRECISIONS
from jobs.bench.config import BenchConfig
from jobs.bench.models import Models, best_time, code_agreement, sync

log = logging.getLogger("codecsep.bench")


def waveform_route(m: Models, codes: list[torch.Tensor], prompts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What separation costs without code-space masking: DAC decode -> DAC encode -> the same
    masker -> re-quantize (the waveform separator itself is left out, in its favour)."""
    z_in = m.tables.lookup(torch.stack(codes))
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        audio = m.dac.decoder(z_in)
        z = m.dac.encoder(audio).float()
        masks = m.masker(z, prompts, all_prompts=True).float()
    z = z.repeat_interleave(prompts.shape[0], dim=0)
    return m.tables.quantize(masks * z)


def speed_row(route: str, device: str, precision: str, batch: int, seconds: float, audio_s: float, **extra) -> dict:
    return {
        "route": route,
        "device": device,
        "precision": precision,
        "batch": batch,
        "seconds": seconds,
        "s_per_clip": seconds / batch,
        "x_realtime": audio_s / seconds,
        **extra,
    }


def measure_speed(cfg: BenchConfig, m: Models) -> list[dict]:
    """Codes route (via Separator) per precision and batch of `clip_seconds` clips, and the
    waveform route at batches up to `waveform_max_batch` (CPU)."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    prompts = m.prompts[: cfg.n_prompts]
    n = m.frames(cfg.clip_seconds)
    clips = m.random_codes(max(cfg.batch_sizes), n, gen)
    rows = []
    for precision in cfg.precisions:
        for batch in cfg.batch_sizes:
            sep = Separator(m.tables, m.masker, replace(cfg.separator, precision=precision, batch_windows=batch))
            audio_s = batch * m.seconds(n) * cfg.n_prompts
            t = best_time(lambda: sep.separate(clips[:batch], prompts), cfg.repeats)
            rows.append(speed_row("codes", "cpu", precision, batch, t, audio_s))
            log.info("speed: %s", rows[-1])
            if batch <= cfg.waveform_max_batch and precision != "int8":  # the DAC has no int8 path
                with torch.inference_mode():
                    # Only the smallest batch warms up: a warm-up at batch 8 would cost ~40 s.
                    t = best_time(
                        lambda: waveform_route(m, clips[:batch], prompts, PRECISIONS[precision]),
                        cfg.waveform_repeats,
                        warmup=batch == min(cfg.batch_sizes),
                    )
                rows.append(speed_row("waveform", "cpu", precision, batch, t, audio_s))
                log.info("speed: %s", rows[-1])
    return rows


def measure_short_clips(cfg: BenchConfig, m: Models, precision: str) -> dict:
    """Throughput of a batch of `short_clip_seconds` clips against a batch of `clip_seconds`
    clips of the same total audio, timed alternately so that a noisy spell hits both."""
    gen = torch.Generator().manual_seed(cfg.seed + 6)
    batch = max(cfg.batch_sizes)
    long_n, short_n = m.frames(cfg.clip_seconds), m.frames(cfg.short_clip_seconds)
    long_clips = m.random_codes(batch, long_n, gen)
    short_clips = m.random_codes(max(1, batch * long_n // short_n), short_n, gen)
    sep = Separator(m.tables, m.masker, replace(cfg.separator, precision=precision, batch_windows=batch))
    prompts = m.prompts[: cfg.n_prompts]
    times: dict[str, list[float]] = {"long": [], "short": []}
    for name, clips in [("long", long_clips), ("short", short_clips)]:
        sep.separate(clips, prompts)  # warm-up
    for _ in range(max(1, cfg.repeats)):
        for name, clips in [("long", long_clips), ("short", short_clips)]:
            t0 = time.perf_counter()
            sep.separate(clips, prompts)
            times[name].append(time.perf_counter() - t0)
    audio = {"long": m.seconds(long_n * len(long_clips)), "short": m.seconds(short_n * len(short_clips))}
    x_rt = {k: audio[k] * cfg.n_prompts / min(v) for k, v in times.items()}
    out = {
        "precision": precision,
        "long_clip_seconds": m.seconds(long_n),
        "short_clip_seconds": m.seconds(short_n),
        "long_clips": len(long_clips),
        "short_clips": len(short_clips),
        "long_x_realtime": x_rt["long"],
        "short_x_realtime": x_rt["short"],
        "short_vs_long": x_rt["short"] / x_rt["long"],
    }
    log.info("short clips: %s", out)
    return out


def measure_ablation(cfg: BenchConfig, m: Models) -> list[dict]:
    """The fast path step by step on one batch of windows x prompts, masker only (the
    published layer order first), with each step's codes against the published order's."""
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    n = m.frames(cfg.clip_seconds)
    codes = torch.stack(m.random_codes(cfg.speedup_batch, n, gen))
    prompts = m.prompts[: cfg.ablation_prompts]
    n_w, n_p = codes.shape[0], prompts.shape[0]
    z = m.tables.lookup(codes)
    z_rep, cond_rep = z.repeat_interleave(n_p, dim=0), prompts.repeat(n_w, 1)

    def per_pair():
        return m.masker(z_rep, cond_rep)

    def once_per_window():
        return m.masker(z, prompts, all_prompts=True)

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m.masker(z, prompts, all_prompts=True).float()

    steps = [
        ("published layer order, ch_down per (window, prompt)", False, per_pair),
        ("+ folded linear tail (weight norm folded once)", True, per_pair),
        ("+ ch_down once per window", True, once_per_window),
    ]
    if "bf16" in cfg.precisions:
        steps.append(("+ bf16 autocast", True, bf16))
    rows, reference = [], None
    audio = m.seconds(n_w * n_p * n)
    with torch.inference_mode():
        for name, fold, fn in steps:
            m.masker.fold_tail = fold
            t = best_time(fn, cfg.repeats)
            out = m.tables.quantize(fn() * z_rep)
            reference = out if reference is None else reference
            rows.append(
                {"step": name, "seconds": t, "x_realtime": audio / t, **code_agreement([out], [reference], m.tables)}
            )
            log.info("ablation: %s", rows[-1])
    m.masker.fold_tail = True
    return rows


def measure_lengths(cfg: BenchConfig, m: Models) -> list[dict]:
    """Time of one clip against its length, in-process (windows stream; cost should be linear)."""
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    sep = Separator(m.tables, m.masker, cfg.separator)
    rows = []
    for seconds in cfg.length_seconds:
        n = m.frames(seconds)
        clip = m.random_codes(1, n, gen)
        t = best_time(lambda: sep.separate(clip, m.prompts[:1]), 1 if seconds > 60 else cfg.repeats)
        rows.append({"seconds_audio": m.seconds(n), "seconds": t, "x_realtime": m.seconds(n) / t})
        log.info("length: %s", rows[-1])
    return rows


def measure_gpu(cfg: BenchConfig, m: Models, device: torch.device) -> list[dict]:
    """Separator x-realtime on one GPU per precision and batch of windows (up to a few
    hundred), eager and with the masker compiled (CUDA graphs via mode="reduce-overhead")."""
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    n = m.frames(cfg.clip_seconds)
    clips = m.random_codes(max(cfg.gpu_batch_windows), n, gen)
    prompts = m.prompts[: cfg.n_prompts]
    masker = m.masker.to(device)
    rows = []
    for compiled in (False, True):
        if compiled:
            masker._from_width = torch.compile(masker._from_width, mode="reduce-overhead", dynamic=False)
        for precision in ("fp32", "bf16", "fp16"):
            # Compiled: the largest batch only (each shape and dtype compiles anew).
            for batch in cfg.gpu_batch_windows[-1:] if compiled else cfg.gpu_batch_windows:
                sep = Separator(m.tables, masker, replace(cfg.separator, precision=precision, batch_windows=batch))
                t = best_time(lambda: sep.separate(clips[:batch], prompts), cfg.repeats, device)
                rows.append(
                    speed_row(
                        "codes", "cuda", precision, batch, t, batch * m.seconds(n) * cfg.n_prompts, compiled=compiled
                    )
                )
                log.info("gpu: %s", rows[-1])
    del masker._from_width
    m.masker.to("cpu")
    sync(device)
    return rows
