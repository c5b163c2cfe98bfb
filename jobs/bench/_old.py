"""`codecsep bench`: speed and compute figures of codes-in/codes-out separation.

Every ratio is measured within one run (the machines are shared and noisy, so figures from
different runs do not compare): the codes route against the waveform route with the same
masker, reduced precision against fp32, the Ray job against the bare in-process loop, and
the separator's FLOP/s against this machine's own matmul peak. No weights can be
downloaded here, so the models are random-weight instances of the real architectures
(DAC 16 kHz, the `paper` masker); speed and MACs do not depend on the weights, but code
agreement under reduced precision is measured on random weights and may differ on trained ones.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from codecsep_core import CodecTables, Masker, MaskerConfig, Separator, SeparatorConfig, save_masker
from codecsep_core.flops import count_macs
from jobs import config as job_config
from jobs.runtime import RayOptions, init_ray, setup_logging

log = logging.getLogger("codecsep.bench")

# --quick: the same measurements on less data, in a few minutes.
QUICK = ["batch_sizes=[1,8]", "repeats=2", "job_seconds=120", "job_actors=[1]", "job_repeats=1", "length_seconds=[1,10,60]", "ingest_seconds=40",
         "matmul_size=1536"]
TARGETS = {"x_realtime": 250.0, "codes_vs_waveform_speedup": 100.0, "agreement": 0.99, "job_vs_bare_loop": 0.9}


@dataclass(frozen=True)
class BenchConfig:
    masker_preset: str = "paper"
    clip_seconds: float = 10.0
    n_prompts: int = 1
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    speedup_batch: int = 8
    waveform_max_batch: int = 8
    precisions: list[str] = field(default_factory=lambda: ["fp32", "bf16"])
    repeats: int = 3
    waveform_repeats: int = 1
    ablation_prompts: int = 4
    job_seconds: float = 3600.0
    job_shards: int = 4
    job_actors: list[int] = field(default_factory=lambda: [1, 2])
    job_cpus: float = 2.0
    job_batch_size: int = 16
    job_repeats: int = 2
    length_seconds: list[float] = field(default_factory=lambda: [1.0, 10.0, 60.0, 600.0])
    ingest_seconds: float = 120.0  # generated wav audio (clips of clip_seconds) for the ingest job
    matmul_size: int = 2048
    threads: int = 0
    seed: int = 0
    docs: str | None = "docs/benchmarks.md"
    separator: SeparatorConfig = field(default_factory=SeparatorConfig)

    def check(self) -> None:
        if self.speedup_batch not in self.batch_sizes or self.speedup_batch > self.waveform_max_batch:
            raise ValueError("speedup_batch must be one of batch_sizes and at most waveform_max_batch")
        if "fp32" not in self.precisions:
            raise ValueError("precisions must include fp32 (the reference of code agreement)")


@dataclass
class Models:
    """What every measurement shares: a random-weight DAC, its tables, the masker, prompts."""

    dac: torch.nn.Module
    tables: CodecTables
    masker: Masker
    prompts: torch.Tensor  # [n_prompts, 512], L2-normalised like CLAP's


# --------------------------------------------------------------------------- helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, repeats: int, device: torch.device = torch.device("cpu"), warmup: bool = True) -> float:
    """Minimum wall time of `repeats` calls after one warm-up: on a shared machine the
    minimum is the least disturbed estimate."""
    if warmup:
        fn()
        _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def random_codes(n_clips: int, n_frames: int, gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.randint(0, 1024, (12, n_frames), generator=gen) for _ in range(n_clips)]


def build_models(cfg: BenchConfig) -> Models:
    from codecsep_core.dac_codec import random_dac

    codec = random_dac(cfg.seed)
    masker = Masker(MaskerConfig.preset(cfg.masker_preset)).eval()
    prompts = torch.nn.functional.normalize(torch.randn(max(cfg.n_prompts, cfg.ablation_prompts), 512), dim=-1)
    return Models(codec, CodecTables.from_dac_model(codec), masker, prompts)


def frames(cfg: BenchConfig, seconds: float | None = None) -> int:
    return max(1, round((cfg.clip_seconds if seconds is None else seconds) * 50))


def code_agreement(codes: list[torch.Tensor], reference: list[torch.Tensor], tables: CodecTables) -> dict:
    """Fraction of codes and of whole frames (all codebooks) equal to the reference, and the
    SNR of the latent the codes stand for (their lookup) against the reference's.
    Codes are [..., n_codebooks, T] tensors."""
    a, b = torch.cat([c.long() for c in codes], -1), torch.cat([c.long() for c in reference], -1)
    za, zb = tables.lookup(a), tables.lookup(b)
    noise = (za - zb).pow(2).sum().item()
    return {
        "code_agreement": (a == b).float().mean().item(),
        "frame_agreement": (a == b).all(1).float().mean().item(),
        "latent_snr_db": 10 * math.log10(zb.pow(2).sum().item() / noise) if noise > 0 else float("inf"),
    }


# --------------------------------------------------------------------------- compute


def measure_macs(cfg: BenchConfig, m: Models) -> dict:
    """MACs per second of audio of the separator and of each codec part, counted on the real
    modules (attention included)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n = frames(cfg)
    seconds = n / 50
    codes = random_codes(1, n, gen)
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
    audio = torch.zeros(1, 1, 16000)
    encoder, _ = count_macs(lambda: m.dac.encoder(audio))
    decoder, _ = count_macs(lambda: m.dac.decoder(torch.zeros(1, 1024, 50)))
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


def machine_peak(cfg: BenchConfig, device: torch.device) -> dict:
    """GFLOP/s of a large square matmul, per dtype: the ceiling the separator is held to."""
    peaks = {}
    n = cfg.matmul_size
    for name in cfg.precisions + (["fp16"] if device.type == "cuda" else []):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        a = torch.randn(n, n, device=device).to(dtype)
        t = best_time(lambda: torch.mm(a, a), 3, device)
        peaks[name] = 2 * n**3 / t / 1e9
    return peaks


# --------------------------------------------------------------------------- speed


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


def measure_speed(cfg: BenchConfig, m: Models, device: torch.device) -> tuple[list[dict], dict]:
    """Codes route (via Separator) and waveform route per precision and batch size; code
    agreement of each reduced precision with fp32 on the same clips."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    prompts = m.prompts[: cfg.n_prompts]
    clips = random_codes(max(cfg.batch_sizes), frames(cfg), gen)
    precisions = cfg.precisions + (["fp16"] if device.type == "cuda" and "fp16" not in cfg.precisions else [])
    rows, outputs = [], {}
    for precision in precisions:
        for batch in cfg.batch_sizes:
            sep_cfg = replace(cfg.separator, precision=precision, batch_windows=batch)
            sep = Separator(m.tables, m.masker.to(device), sep_cfg)
            batch_clips = clips[:batch]
            t = best_time(lambda: sep.separate(batch_clips, prompts), cfg.repeats, device)
            rows.append(_speed_row("codes", device.type, precision, batch, t, cfg))
            if batch == cfg.speedup_batch:
                outputs[precision] = [r.codes for r in sep.separate(batch_clips, prompts)]
            m.masker.to("cpu")
            if device.type == "cpu" and batch <= cfg.waveform_max_batch:
                dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
                with torch.inference_mode():
                    # Only the smallest batch warms up: a warm-up at batch 8 would cost ~40 s.
                    t = best_time(lambda: waveform_route(m, batch_clips, prompts, dtype), cfg.waveform_repeats,
                                  warmup=batch == min(cfg.batch_sizes))
                rows.append(_speed_row("waveform", "cpu", precision, batch, t, cfg))
            log.info("speed: %s", rows[-1])
    agreement = {p: code_agreement(outputs[p], outputs["fp32"], m.tables) for p in precisions if p != "fp32"}
    return rows, agreement


def _speed_row(route: str, device: str, precision: str, batch: int, seconds: float, cfg: BenchConfig) -> dict:
    audio = batch * frames(cfg) / 50
    return {"route": route, "device": device, "precision": precision, "batch": batch, "seconds": seconds,
            "s_per_clip": seconds / batch, "x_realtime": audio * cfg.n_prompts / seconds}


def measure_ablation(cfg: BenchConfig, m: Models) -> list[dict]:
    """The fast path step by step on one batch of windows x prompts, masker only (the
    published layer order first), with each step's codes against the published order's."""
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    codes = torch.stack(random_codes(cfg.speedup_batch, frames(cfg), gen))
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

    steps = [("published layer order, ch_down per (window, prompt)", False, per_pair),
             ("+ folded linear tail (weight norm folded once)", True, per_pair),
             ("+ ch_down once per window", True, once_per_window)]
    if "bf16" in cfg.precisions:
        steps.append(("+ bf16 autocast", True, bf16))
    rows, reference = [], None
    audio = n_w * n_p * z.shape[2] / 50
    with torch.inference_mode():
        for name, fold, fn in steps:
            m.masker.fold_tail = fold
            t = best_time(fn, cfg.repeats)
            out = m.tables.quantize(fn() * z_rep)
            reference = out if reference is None else reference
            agree = code_agreement([out], [reference], m.tables)
            rows.append({"step": name, "seconds": t, "x_realtime": audio / t, **agree})
            log.info("ablation: %s", rows[-1])
    m.masker.fold_tail = True
    return rows


def measure_lengths(cfg: BenchConfig, m: Models) -> list[dict]:
    """Time of one clip against its length, in-process (windows stream; cost should be linear)."""
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    sep = Separator(m.tables, m.masker, cfg.separator)
    rows = []
    for seconds in cfg.length_seconds:
        clip = random_codes(1, frames(cfg, seconds), gen)
        t = best_time(lambda: sep.separate(clip, m.prompts[:1]), 1 if seconds > 60 else cfg.repeats)
        rows.append({"seconds_audio": seconds, "seconds": t, "x_realtime": seconds / t})
        log.info("length: %s", rows[-1])
    return rows


# --------------------------------------------------------------------------- job


def write_job_inputs(cfg: BenchConfig, m: Models, root: Path) -> dict:
    """Code shards of random clips, the masker and codec tables files, a prompt table;
    and one more shard (`warmup/`) of other clips, for the cold-start run."""
    import pyarrow.parquet as pq

    from storage.prompt_table import PromptTable, write_prompt_table
    from storage.schema import CODE_SHARD_SCHEMA, codes_to_arrow, table_from_columns

    def write_shard(path: Path, ids: list[str], clips: list[np.ndarray]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table_from_columns({
            "id": ids, "codes": codes_to_arrow(clips), "codec": ["dac_16khz"] * len(ids),
            "sample_rate": [16000] * len(ids), "n_samples": [c.shape[1] * 320 for c in clips],
        }, CODE_SHARD_SCHEMA), path)

    gen = torch.Generator().manual_seed(cfg.seed + 4)
    n_clips = max(cfg.job_shards, round(cfg.job_seconds / cfg.clip_seconds))
    clips = [c.numpy().astype(np.uint16) for c in random_codes(n_clips, frames(cfg), gen)]
    for s, part in enumerate(np.array_split(np.arange(n_clips), cfg.job_shards)):
        write_shard(root / "shards" / f"shard-{s:03d}.parquet", [f"clip-{i:05d}" for i in part], [clips[i] for i in part])
    warmup = [c.numpy().astype(np.uint16) for c in random_codes(cfg.job_batch_size, frames(cfg), gen)]
    write_shard(root / "warmup" / "shard-000.parquet", [f"warmup-{i:05d}" for i in range(len(warmup))], warmup)
    save_masker(m.masker, root / "masker.safetensors")
    m.tables.save(root / "tables.safetensors")
    names = [f"prompt {i}" for i in range(cfg.n_prompts)]
    write_prompt_table(str(root / "prompts.parquet"), PromptTable(tuple(names), m.prompts[: cfg.n_prompts].numpy()))
    return {"clips": [torch.from_numpy(c.astype(np.int64)) for c in clips], "prompts": names}


def outside_compute_s(report, actors: int) -> float:
    """A job's wall time less its actors' separation time (spread over `actors`): start-up,
    model loading, reading and writing."""
    return report.wall_s - report.stages_s.get("actors_separate", 0.0) / actors


def measure_job(cfg: BenchConfig, m: Models) -> dict:
    """`jobs.separate.run` (embedded Ray, local folder) per actor count, against the bare
    `Separator.separate` loop on the same clips in this process.

    Ray is started, and a first job run on one batch of other clips, before the timed
    runs: a driver's first Ray Data job pays one-time set-up (measured here as
    `cold_start_s`, reported apart), which a cluster pays once per driver, not per clip.
    Every timed run still starts its own actors and loads its models. Bare loop and job
    runs alternate `job_repeats` times; the fastest of each is kept."""
    from jobs.separate import SeparateConfig, run

    with tempfile.TemporaryDirectory(prefix="codecsep-bench-") as tmp:
        root = Path(tmp)
        inputs = write_job_inputs(cfg, m, root)
        clips = inputs["clips"]
        audio_s = len(clips) * frames(cfg) / 50 * cfg.n_prompts
        sep = Separator(m.tables, m.masker, cfg.separator)
        prompts = m.prompts[: cfg.n_prompts]
        batches = [clips[i : i + cfg.job_batch_size] for i in range(0, len(clips), cfg.job_batch_size)]

        def bare_loop() -> float:
            t0 = time.perf_counter()
            for batch in batches:
                sep.separate(batch, prompts)
            return time.perf_counter() - t0

        def job(src: str, dst: str, actors: int) -> SeparateConfig:
            return SeparateConfig(
                input=str(root / src), output=str(root / dst), prompts=inputs["prompts"],
                masker=str(root / "masker.safetensors"), codec_tables=str(root / "tables.safetensors"),
                prompt_table=str(root / "prompts.parquet"), separator=cfg.separator,
                ray=RayOptions(num_actors=actors, num_cpus_per_actor=cfg.job_cpus / actors, batch_size=cfg.job_batch_size),
            )

        sep.separate(batches[0], prompts)  # warm-up
        init_ray(RayOptions())
        cold = run(job("warmup", "out-warmup", 1))
        bare, runs = [], []
        for repeat in range(cfg.job_repeats):  # interleaved, so that a noisy spell hits both
            bare.append(bare_loop())
            for actors in cfg.job_actors:
                report = run(job("shards", f"out-{actors}-{repeat}", actors))
                runs.append({
                    "actors": actors, "cpus_per_actor": cfg.job_cpus / actors, "wall_s": report.wall_s,
                    "audio_hours": report.audio_hours, "x_realtime": audio_s / report.wall_s,
                    "rows_out": report.rows_out, "errors": report.errors,
                    "outside_compute_s": outside_compute_s(report, actors),
                    "peak_actor_rss_mb": report.extra.get("peak_actor_rss_mb"), "stages_s": report.stages_s,
                })
                log.info("job: %s", runs[-1])
    fastest = [min((r for r in runs if r["actors"] == a), key=lambda r: r["wall_s"]) for a in cfg.job_actors]
    best = max(fastest, key=lambda r: r["x_realtime"])
    return {"clips": len(clips), "audio_seconds": audio_s, "bare_loop_s": min(bare), "bare_loop_x_realtime": audio_s / min(bare),
            "bare_loop_s_repeats": bare, "wall_s_repeats": {a: [r["wall_s"] for r in runs if r["actors"] == a] for a in cfg.job_actors},
            "cold_start_s": outside_compute_s(cold, 1),
            "runs": fastest, "job_vs_bare_loop": best["x_realtime"] / (audio_s / min(bare))}


def measure_ingest(cfg: BenchConfig, m: Models) -> dict:
    """`jobs.ingest.run` on generated wav files (half at 16 kHz, half at 44.1 kHz, which
    must be resampled): audio seconds ingested per wall second, start-up included."""
    import soundfile as sf

    from jobs.ingest import IngestConfig, run

    gen = np.random.default_rng(cfg.seed + 5)
    n_clips = max(2, round(cfg.ingest_seconds / cfg.clip_seconds))
    with tempfile.TemporaryDirectory(prefix="codecsep-bench-ingest-") as tmp:
        root = Path(tmp)
        (root / "audio").mkdir()
        for i in range(n_clips):
            rate = 16000 if i % 2 == 0 else 44100
            audio = 0.1 * gen.standard_normal(int(cfg.clip_seconds * rate)).astype(np.float32)
            sf.write(root / "audio" / f"clip-{i:04d}.wav", audio, rate)
        m.dac.save(str(root / "dac.pth"), package=False)
        report = run(IngestConfig(input=str(root / "audio"), output=str(root / "shards"), codec_weights=str(root / "dac.pth"),
                                  ray=RayOptions(num_actors=1, num_cpus_per_actor=2.0, batch_size=4)))
    audio_s = n_clips * cfg.clip_seconds
    encode_s = report.stages_s.get("actors_encode", 0.0)
    return {"files": n_clips, "audio_seconds": audio_s, "wall_s": report.wall_s, "x_realtime": audio_s / report.wall_s,
            "encode_only_x_realtime": audio_s / encode_s if encode_s else None, "errors": report.errors}


# --------------------------------------------------------------------------- results


def summarize(cfg: BenchConfig, macs: dict, peaks: dict, speed: list[dict], agreement: dict) -> dict:
    """Headline figures and targets, from the measured rows only."""
    def row(route, precision, batch):
        return next((r for r in speed if r["route"] == route and r["precision"] == precision
                     and r["batch"] == batch and r["device"] == "cpu"), None)

    codes, wave = row("codes", "fp32", cfg.speedup_batch), row("waveform", "fp32", cfg.speedup_batch)
    cpu_codes = [r for r in speed if r["route"] == "codes" and r["device"] == "cpu"]
    fastest = max(cpu_codes, key=lambda r: r["x_realtime"])
    agreeing = [r for r in cpu_codes if r["precision"] == "fp32"
                or agreement.get(r["precision"], {}).get("frame_agreement", 0) >= TARGETS["agreement"]]
    fastest_ok = max(agreeing, key=lambda r: r["x_realtime"])
    flops_per_audio_s = 2e9 * macs["separator_gmacs_per_audio_second"]
    out = {
        "codes_vs_waveform_speedup": wave["seconds"] / codes["seconds"],
        "separator_gmacs_per_audio_second": macs["separator_gmacs_per_audio_second"],
        "separator_x_realtime": fastest_ok["x_realtime"],
        "separator_fastest": {k: fastest[k] for k in ("precision", "batch", "x_realtime")},
        "separator_fastest_agreeing": {k: fastest_ok[k] for k in ("precision", "batch", "x_realtime")},
        # Of the matmul peak in the dtype the configuration computes in.
        "fraction_of_machine_peak": fastest_ok["x_realtime"] * flops_per_audio_s / 1e9 / peaks[fastest_ok["precision"]],
        "fraction_of_machine_peak_fastest": fastest["x_realtime"] * flops_per_audio_s / 1e9 / peaks[fastest["precision"]],
        # The x-realtime a perfect kernel would reach at this machine's peak, per dtype.
        "x_realtime_ceiling": {p: v * 1e9 / flops_per_audio_s for p, v in peaks.items()},
    }
    out["targets"] = {
        "separator_x_realtime >= 250 (agreeing >= 99% frames)": out["separator_x_realtime"] >= TARGETS["x_realtime"],
        "codes_vs_waveform_speedup >= 100": out["codes_vs_waveform_speedup"] >= TARGETS["codes_vs_waveform_speedup"],
        "separator GMAC/s <= published masker": macs["separator_gmacs_per_audio_second"]
        <= macs["published_masker_gmacs_per_audio_second"],
        "fraction_of_machine_peak >= 0.5 (fastest agreeing config, its dtype)": out["fraction_of_machine_peak"] >= 0.5,
    }
    return out


def _table(headers: list[str], rows: list[list]) -> list[str]:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + [
        "| " + " | ".join(fmt(v) for v in r) + " |" for r in rows
    ]


def to_markdown(res: dict) -> str:
    s, macs, job = res["summary"], res["macs"], res["job"]
    lines = [f"Machine: {res['machine']}. Random-weight DAC 16 kHz and `{res['config']['masker_preset']}` masker "
             "(real architectures; no weights can be downloaded). All ratios from this one run; times are the "
             "minimum of the repeats.", "", "**Targets**", ""]
    lines += _table(["target", "result"], [[k, "PASS" if v else "FAIL"] for k, v in s["targets"].items()])
    lines += ["", "**Headline**", ""]
    lines += _table(["figure", "value"], [
        ["codes_vs_waveform_speedup (fp32, batch %d)" % res["config"]["speedup_batch"], s["codes_vs_waveform_speedup"]],
        ["separator_x_realtime (fastest agreeing config: %s, batch %d)" % (s["separator_fastest_agreeing"]["precision"],
                                                                          s["separator_fastest_agreeing"]["batch"]), s["separator_x_realtime"]],
        ["fastest config x-realtime (%s, batch %d)" % (s["separator_fastest"]["precision"], s["separator_fastest"]["batch"]),
         s["separator_fastest"]["x_realtime"]],
        ["fraction_of_machine_peak (fastest agreeing config, of its dtype's matmul peak)", s["fraction_of_machine_peak"]],
        ["fraction of machine peak, fastest config", s["fraction_of_machine_peak_fastest"]],
        ["x-realtime ceiling at matmul peak (fp32 / bf16)", " / ".join(f"{v:.0f}" for v in s["x_realtime_ceiling"].values())],
        ["job_vs_bare_loop", job["job_vs_bare_loop"]],
    ])
    lines += ["", "**Compute** (GMAC per second of audio, counted with torch's FLOP counter, attention included)", ""]
    lines += _table(["part", "GMAC/s"], [[k.replace("_gmacs_per_audio_second", ""), v] for k, v in macs.items()
                                         if k.endswith("_gmacs_per_audio_second")])
    lines += ["", "**Speed** per %g s clip, %d prompt(s)" % (res["config"]["clip_seconds"], res["config"]["n_prompts"]), ""]
    lines += _table(["route", "device", "precision", "batch", "s/clip", "x-realtime"],
                    [[r["route"], r["device"], r["precision"], r["batch"], r["s_per_clip"], r["x_realtime"]] for r in res["speed"]])
    lines += ["", "**Reduced precision vs fp32** (codes of the same clips)", ""]
    lines += _table(["precision", "code agreement", "frame agreement", "latent SNR dB"],
                    [[p, a["code_agreement"], a["frame_agreement"], a["latent_snr_db"]] for p, a in res["agreement"].items()])
    lines += ["", "**Fast path, step by step** (masker only, %d windows x %d prompts)" % (
        res["config"]["speedup_batch"], res["config"]["ablation_prompts"]), ""]
    lines += _table(["step", "s", "x-realtime", "frame agreement vs published"],
                    [[r["step"], r["seconds"], r["x_realtime"], r["frame_agreement"]] for r in res["ablation"]])
    lines += ["", "**Separation job** (embedded Ray, %d clips, %.0f s audio; bare loop %.1fx realtime; a driver's "
              "first job also pays %.1f s of one-time set-up, not in these runs)" % (
                  job["clips"], job["audio_seconds"], job["bare_loop_x_realtime"], job["cold_start_s"]), ""]
    lines += _table(["actors", "CPUs/actor", "wall s", "x-realtime", "vs bare loop", "s outside actor compute", "peak actor RSS MB"],
                    [[r["actors"], r["cpus_per_actor"], r["wall_s"], r["x_realtime"],
                      r["x_realtime"] / job["bare_loop_x_realtime"], r["outside_compute_s"], r["peak_actor_rss_mb"]]
                     for r in job["runs"]])
    ing = res["ingest"]
    lines += ["", "**Ingest job** (embedded Ray, 1 actor x 2 CPUs, %d wav files, %.0f s audio, half resampled from 44.1 kHz)" % (
        ing["files"], ing["audio_seconds"]), ""]
    lines += _table(["wall s", "audio s per wall s", "encode only"], [[ing["wall_s"], ing["x_realtime"], ing["encode_only_x_realtime"]]])
    lines += ["", "**Time vs clip length** (one clip, in-process, fp32)", ""]
    lines += _table(["audio s", "wall s", "x-realtime"], [[r["seconds_audio"], r["seconds"], r["x_realtime"]] for r in res["lengths"]])
    return "\n".join(lines) + "\n"


def update_docs(path: Path, markdown: str) -> None:
    """Replace the generated section of the results page, keeping any text around it."""
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nGenerated by `codecsep bench --output DIR`.\n\n"
    block = f"{begin}\n{markdown}{end}\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) + 1 :]
    else:
        text += block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def run(cfg: BenchConfig) -> dict:
    cfg.check()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    m = build_models(cfg)
    macs = measure_macs(cfg, m)
    peaks = machine_peak(cfg, torch.device("cpu"))
    speed, agreement = measure_speed(cfg, m, torch.device("cpu"))
    if device.type == "cuda":
        gpu_rows, gpu_agreement = measure_speed(replace(cfg, precisions=["fp32", "bf16", "fp16"]), m, device)
        speed += gpu_rows
        agreement.update({f"cuda_{k}": v for k, v in gpu_agreement.items()})
        peaks.update({f"cuda_{k}": v for k, v in machine_peak(cfg, device).items()})
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
        "weights": "random (real architectures)",
        "config": job_config.to_dict(cfg),
        "macs": macs, "matmul_peak_gflops": peaks, "speed": speed, "agreement": agreement,
        "ablation": measure_ablation(cfg, m),
        "lengths": measure_lengths(cfg, m),
        "job": measure_job(cfg, m),
        "ingest": measure_ingest(cfg, m),
    }
    res["summary"] = summarize(cfg, macs, peaks, speed, agreement)
    res.update({k: res["summary"][k] for k in (
        "codes_vs_waveform_speedup", "separator_gmacs_per_audio_second", "separator_x_realtime", "fraction_of_machine_peak")})
    res["job_vs_bare_loop"] = res["job"]["job_vs_bare_loop"]
    res["summary"]["targets"]["job_vs_bare_loop >= 0.9"] = res["job_vs_bare_loop"] >= TARGETS["job_vs_bare_loop"]
    res["bench_wall_s"] = time.perf_counter() - t0
    return res


def write_results(res: dict, output: Path, docs: Path | None) -> str:
    output.mkdir(parents=True, exist_ok=True)
    (output / "bench.json").write_text(json.dumps(res, indent=2, sort_keys=True))
    markdown = to_markdown(res)
    (output / "bench.md").write_text(markdown)
    if docs is not None:
        update_docs(docs, markdown)
    return markdown


def parse_args(argv: list[str] | None) -> tuple[BenchConfig, Path]:
    p = argparse.ArgumentParser(prog="codecsep bench", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(job_config.default_config_path("bench")))
    p.add_argument("--output", required=True, help="folder for bench.json and bench.md")
    p.add_argument("--quick", action="store_true", help="less data and fewer repeats: a few minutes")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. batch_sizes=[1,8]")
    a = p.parse_args(argv)
    setup_logging(a.verbose)
    cfg = job_config.load_config(BenchConfig, a.config, (QUICK if a.quick else []) + a.overrides)
    return cfg, Path(a.output)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, output = parse_args(argv)
        cfg.check()
    except ValueError as e:
        print(f"codecsep bench: {e}")
        return 2
    res = run(cfg)
    docs = None if cfg.docs is None else job_config.CONFIG_DIR.parent / cfg.docs
    print(write_results(res, output, docs))
    print(json.dumps({k: res[k] for k in ("codes_vs_waveform_speedup", "separator_gmacs_per_audio_second",
                                          "separator_x_realtime", "fraction_of_machine_peak", "job_vs_bare_loop")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
