"""The Ray jobs themselves: `separate` against the bare in-process loop on the same clips,
and `ingest` on generated wav files. Job figures come from the job's own report (rows and
audio seconds the job counted), never from the bench's config."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from codecsep_core import Separator, save_masker
from jobs.bench.config import BenchConfig
from jobs.bench.models import Models
from jobs.engine import RayOptions, init_ray

log = logging.getLogger("codecsep.bench")


def write_job_inputs(cfg: BenchConfig, m: Models, root: Path) -> dict:
    """Code shards of random clips, the masker and codec tables files, a prompt table;
    and one more shard (`warmup/`) of other clips, for the cold-start run."""
    from storage.prompt_table import PromptTable, write_prompt_table
    from storage.shards import write_table_atomic

    def write_shard(path: Path, ids: list[str], clips: list[np.ndarray]) -> None:
        write_table_atomic(str(path), m.code_shard(ids, clips))

    gen = torch.Generator().manual_seed(cfg.seed + 4)
    n_clips = max(cfg.job_shards, round(cfg.job_seconds / cfg.clip_seconds))
    n = m.frames(cfg.clip_seconds)
    clips = [c.numpy().astype(np.uint16) for c in m.random_codes(n_clips, n, gen)]
    for s, part in enumerate(np.array_split(np.arange(n_clips), cfg.job_shards)):
        write_shard(
            root / "shards" / f"shard-{s:03d}.parquet", [f"clip-{i:05d}" for i in part], [clips[i] for i in part]
        )
    warmup = [c.numpy().astype(np.uint16) for c in m.random_codes(cfg.job_batch_size, n, gen)]
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


def bytes_per_row(output: Path, rows: int) -> float:
    """Bytes on disk per output row: every Parquet file of a job's output, errors and
    manifests (`_` folders) left out."""
    files = [f for f in output.rglob("*.parquet") if not any(p.startswith("_") for p in f.relative_to(output).parts)]
    return sum(f.stat().st_size for f in files) / rows


def measure_job(cfg: BenchConfig, m: Models) -> dict:
    """`jobs.separate.run` (embedded Ray, local folder) per actor count, against the bare
    `Separator.separate` loop on the same clips in this process.

    Ray is started, and a first job run on one batch of other clips, before the timed
    runs: a driver's first Ray Data job pays one-time set-up (`cold_start_s`, reported
    apart), which a cluster pays once per driver, not per clip. Every timed run still
    starts its own actors and loads its models. Bare loop and job runs alternate
    `job_repeats` times; the fastest of each is kept. Both figures are divided into the
    audio the job reports having separated. A last run with `emit=scores` (a curation
    pass: scores and spans, no codes) gives its output size per row beside the full run's."""
    from jobs.separate import SeparateConfig, run

    with tempfile.TemporaryDirectory(prefix="codecsep-bench-") as tmp:
        root = Path(tmp)
        inputs = write_job_inputs(cfg, m, root)
        clips = inputs["clips"]
        sep = Separator(m.tables, m.masker, cfg.separator)
        prompts = m.prompts[: cfg.n_prompts]
        batches = [clips[i : i + cfg.job_batch_size] for i in range(0, len(clips), cfg.job_batch_size)]

        def bare_loop() -> float:
            t0 = time.perf_counter()
            for batch in batches:
                sep.separate(batch, prompts)
            return time.perf_counter() - t0

        def job(src: str, dst: str, actors: int, emit: str = "codes") -> SeparateConfig:
            return SeparateConfig(
                input=str(root / src),
                output=str(root / dst),
                prompts=inputs["prompts"],
                masker=str(root / "masker.safetensors"),
                codec_tables=str(root / "tables.safetensors"),
                prompt_table=str(root / "prompts.parquet"),
                emit=emit,
                separator=cfg.separator,
                ray=RayOptions(
                    num_actors=actors, num_cpus_per_actor=cfg.job_cpus / actors, batch_size=cfg.job_batch_size
                ),
            )

        sep.separate(batches[0], prompts)  # warm-up
        init_ray(RayOptions())
        cold = run(job("warmup", "out-warmup", 1))
        bare, runs = [], []
        for repeat in range(cfg.job_repeats):  # interleaved, so that a noisy spell hits both
            bare.append(bare_loop())
            for actors in cfg.job_actors:
                report = run(job("shards", f"out-{actors}-{repeat}", actors))
                audio_s = report.audio_hours * 3600 * cfg.n_prompts  # per prompt, as x-realtime is
                runs.append(
                    {
                        "actors": actors,
                        "cpus_per_actor": cfg.job_cpus / actors,
                        "wall_s": report.wall_s,
                        "rows_in": report.rows_in,
                        "rows_out": report.rows_out,
                        "errors": report.errors,
                        "audio_seconds": audio_s,
                        "x_realtime": audio_s / report.wall_s,
                        "outside_compute_s": outside_compute_s(report, actors),
                        "peak_actor_rss_mb": report.extra.get("peak_actor_rss_mb"),
                        "stages_s": report.stages_s,
                    }
                )
                log.info("job: %s", runs[-1])
        actors = cfg.job_actors[0]
        scores = run(job("shards", "out-scores", actors, emit="scores"))
        output_size = {
            "codes_bytes_per_row": bytes_per_row(root / f"out-{actors}-0", runs[0]["rows_out"]),
            "scores_bytes_per_row": bytes_per_row(root / "out-scores", scores.rows_out),
            "scores_rows_out": scores.rows_out,
        }
    fastest = [min((r for r in runs if r["actors"] == a), key=lambda r: r["wall_s"]) for a in cfg.job_actors]
    best = max(fastest, key=lambda r: r["x_realtime"])
    audio_s = best["audio_seconds"]
    return {
        "clips_written": len(clips),
        "audio_seconds": audio_s,
        "bare_loop_s": min(bare),
        "bare_loop_x_realtime": audio_s / min(bare),
        "bare_loop_s_repeats": bare,
        "wall_s_repeats": {a: [r["wall_s"] for r in runs if r["actors"] == a] for a in cfg.job_actors},
        "cold_start_s": outside_compute_s(cold, 1),
        "runs": fastest,
        "job_vs_bare_loop": best["x_realtime"] / (audio_s / min(bare)),
        "output_size": output_size,
    }


def measure_ingest(cfg: BenchConfig, m: Models) -> dict:
    """`jobs.ingest.run` on generated wav files (half at the codec's rate, half at 44.1 kHz,
    which must be resampled): audio seconds ingested per wall second, start-up included."""
    import soundfile as sf

    from jobs.ingest import IngestConfig, run

    gen = np.random.default_rng(cfg.seed + 5)
    n_clips = max(2, round(cfg.ingest_seconds / cfg.clip_seconds))
    with tempfile.TemporaryDirectory(prefix="codecsep-bench-ingest-") as tmp:
        root = Path(tmp)
        (root / "audio").mkdir()
        for i in range(n_clips):
            rate = m.tables.info.sample_rate if i % 2 == 0 else 44100
            audio = 0.1 * gen.standard_normal(int(cfg.clip_seconds * rate)).astype(np.float32)
            sf.write(root / "audio" / f"clip-{i:04d}.wav", audio, rate)
        m.dac.save(str(root / "dac.pth"), package=False)
        report = run(
            IngestConfig(
                input=str(root / "audio"),
                output=str(root / "shards"),
                codec_weights=str(root / "dac.pth"),
                ray=RayOptions(num_actors=1, num_cpus_per_actor=2.0, batch_size=4),
            )
        )
    audio_s = report.audio_hours * 3600
    encode_s = report.stages_s.get("actors_encode", 0.0)
    return {
        "files": n_clips,
        "rows_out": report.rows_out,
        "audio_seconds": audio_s,
        "wall_s": report.wall_s,
        "x_realtime": audio_s / report.wall_s,
        "encode_only_x_realtime": audio_s / encode_s if encode_s else None,
        "errors": report.errors,
    }
