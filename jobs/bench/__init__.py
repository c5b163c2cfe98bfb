"""`codecsep bench`: speed and compute figures of codes-in/codes-out separation.

Every ratio is measured within one run (the machines are shared and noisy, so figures from
different runs do not compare): reduced precision against fp32 by separation quality on
held-out data (`quality`), short clips against long ones, the codes route against the
waveform route, the Ray job against the bare in-process loop, and the separator's FLOP/s
against this machine's own matmul peak. Speed and MACs use random-weight instances of the
real architectures (no weights can be downloaded here); the quality rule uses a codec
fitted to generated audio and a masker trained briefly on it.

Modules: `config` (typed config, targets), `models` (shared models, timing), `compute`
(MACs, matmul peak), `speed` (in-process speed, GPU section), `quality` (the precision
rule), `pipeline` (the Ray jobs), `scale` and `archive`
(many shards, reruns, resume state), `report` (summary, PASS/FAIL, Markdown).
`--gpu` runs only the GPU section and writes `bench_gpu.json`; `--soak` only the soak over
a growing archive (`soak`), `soak.json` and `soak.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from jobs.bench import archive, compute, pipeline, quality, report, scale, soak, speed
from jobs.bench.config import QUICK, BenchConfig
from jobs.bench.models import build_models
from jobs.engine import CONFIG_DIR, UsageError, default_config_path, load_config, setup_logging, to_dict

__all__ = ["BenchConfig", "command", "run", "run_gpu"]

HEADLINE = (  # the figures the targets judge, at the top of bench.json and printed
    "separator_x_realtime",
    "short_vs_long",
    "job_vs_bare_loop",
    "separator_gmacs_per_audio_second",
    "fraction_of_machine_peak",
)


def _machine(device: torch.device) -> str:
    gpu = f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads{gpu}"
    )


def run(cfg: BenchConfig) -> dict:
    """Every CPU measurement; -> results with `summary` (headline and PASS/FAIL)."""
    cfg.check()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    m = build_models(cfg)
    res: dict = {
        "machine": _machine(torch.device("cpu")),
        "weights": "random (real architectures)",
        "config": to_dict(cfg),
    }
    res["quality"] = quality.measure_quality(
        quality.build_quality_set(cfg.quality, cfg.seed), cfg.precisions, cfg.separator
    )
    res["macs"] = compute.measure_macs(cfg, m)
    res["matmul_peak_gflops"] = compute.machine_peak(cfg, torch.device("cpu"), cfg.precisions)
    res["speed"] = speed.measure_speed(cfg, m)
    equal = [p for p in cfg.precisions if res["quality"]["precisions"][p]["equal_quality"]]
    fastest = max(
        (r for r in res["speed"] if r["route"] == "codes" and r["precision"] in equal), key=lambda r: r["x_realtime"]
    )
    res["short_clips"] = speed.measure_short_clips(cfg, m, fastest["precision"])
    res["ablation"] = speed.measure_ablation(cfg, m)
    res["lengths"] = speed.measure_lengths(cfg, m)
    res["job"] = pipeline.measure_job(cfg, m)
    res["ingest"] = pipeline.measure_ingest(cfg, m)
    res["scale"] = {"planning": scale.measure_planning(cfg), "checkpoint_ids": scale.measure_checkpoint_ids(cfg)}
    res["archive"] = archive.measure_archive(cfg, m, res["scale"]["checkpoint_ids"]["bytes_per_id"])
    res["summary"] = report.summarize(res)
    res.update({k: res["summary"][k] for k in HEADLINE})
    res["bench_wall_s"] = time.perf_counter() - t0
    return res


def run_gpu(cfg: BenchConfig) -> dict:
    """The GPU section: x-realtime per GPU per precision and batch of windows (eager and
    compiled with CUDA graphs), the matmul peak per dtype, and the quality rule on CUDA
    (each precision on the GPU against CPU fp32 on the held-out set)."""
    if not torch.cuda.is_available():
        raise RuntimeError("the GPU section needs CUDA, and torch sees no GPU")
    device = torch.device("cuda")
    t0 = time.perf_counter()
    m = build_models(cfg)
    q = quality.build_quality_set(replace(cfg.quality, steps=min(cfg.quality.steps, 100)), cfg.seed)
    cpu = quality.measure_quality(q, ["fp32"], cfg.separator)
    gpu = quality.measure_quality(q, ["fp32", "bf16", "fp16"], cfg.separator, device)
    fp32_cpu = cpu["precisions"]["fp32"]["snr_vs_target_db"]
    for row in gpu["precisions"].values():
        row["equal_quality_vs_cpu_fp32"] = row["snr_vs_target_db"] >= fp32_cpu - quality.EQUAL_QUALITY_DB
    rows = speed.measure_gpu(cfg, m, device)
    best = max(
        (r for r in rows if gpu["precisions"][r["precision"]]["equal_quality_vs_cpu_fp32"]),
        key=lambda r: r["x_realtime"],
    )
    return {
        "machine": _machine(device),
        "config": to_dict(cfg),
        "speed": rows,
        "matmul_peak_gflops": compute.machine_peak(cfg, device, ["fp32", "bf16", "fp16"]),
        "quality_cpu_fp32_snr_db": fp32_cpu,
        "quality": gpu,
        "separator_x_realtime_per_gpu": best["x_realtime"],
        "best": {k: best[k] for k in ("precision", "batch", "compiled", "x_realtime")},
        "bench_wall_s": time.perf_counter() - t0,
    }


def parse_args(argv: list[str] | None) -> tuple[BenchConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="codecsep bench", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(default_config_path("bench")))
    p.add_argument("--output", required=True, help="folder for bench.json and bench.md (bench_gpu.json with --gpu)")
    p.add_argument("--quick", action="store_true", help="less data and fewer repeats: a few minutes")
    p.add_argument("--gpu", action="store_true", help="only the GPU section (needs CUDA): bench_gpu.json")
    p.add_argument("--soak", action="store_true", help="only the soak over a growing archive: soak.json, soak.md")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. batch_sizes=[1,8]")
    a = p.parse_args(argv)
    setup_logging(a.verbose)
    cfg = load_config(BenchConfig, a.config, (QUICK if a.quick else []) + a.overrides)
    return cfg, a


def command(argv: list[str]) -> None:
    """`codecsep bench`: measure, write the results, print the headline (exit codes: jobs.cli)."""
    cfg, args = parse_args(argv)
    cfg.check()
    output = Path(args.output)
    if args.gpu:
        if not torch.cuda.is_available():
            raise UsageError("bench --gpu needs CUDA, and torch sees no GPU")
        res = run_gpu(cfg)
        output.mkdir(parents=True, exist_ok=True)
        (output / "bench_gpu.json").write_text(json.dumps(res, indent=2, sort_keys=True))
        print(json.dumps({k: res[k] for k in ("machine", "separator_x_realtime_per_gpu", "best")}))
        return
    if args.soak:
        res = soak.measure_soak(cfg, build_models(cfg))
        output.mkdir(parents=True, exist_ok=True)
        (output / "soak.json").write_text(json.dumps(res, indent=2, sort_keys=True))
        (output / "soak.md").write_text(soak.to_markdown(res))
        print(soak.to_markdown(res))
        return
    res = run(cfg)
    docs = None if cfg.docs is None else CONFIG_DIR.parent / cfg.docs
    print(report.write_results(res, output, docs))
    print(json.dumps({k: res[k] for k in HEADLINE}))
