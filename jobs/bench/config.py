"""The bench's typed config (configs/bench.yaml holds the same keys and defaults) and its targets."""

from __future__ import annotations

from dataclasses import dataclass, field

from codecsep_core import SeparatorConfig

# --quick: the same measurements on less data, in a few minutes.
QUICK = [
    "batch_sizes=[1,8]",
    "repeats=2",
    "job_seconds=120",
    "job_actors=[1]",
    "job_repeats=1",
    "length_seconds=[1,10,60]",
    "ingest_seconds=40",
    "scale_shards=1000",
    "scale_ids=100000",
    "archive_shards=50",
    "archive_rows=4",
    "matmul_size=1536",
    "quality.steps=60",
    "waveform_max_batch=1",
    "speedup_batch=1",
]
TARGETS = {"x_realtime": 250.0, "short_vs_long": 0.9, "job_vs_bare_loop": 0.9}
# "job vs bare loop" is judged only on at least this much bare-loop compute: on less, the
# job's fixed cost (set-up, model loading; reported on its own) decides the ratio.
JUDGE_JOB_MIN_S = 20.0
# A precision is "at equal quality" when its latent SNR vs the target source is within this
# many dB of fp32's on the held-out set (docs/benchmarks.md, "The quality rule").
EQUAL_QUALITY_DB = 0.1


@dataclass(frozen=True)
class QualityConfig:
    """The held-out set that judges reduced precision: a codec fitted to generated audio, a
    masker trained briefly on mixtures of one source of each synthetic kind, held-out
    mixtures of other sources."""

    preset: str = "paper"  # masker trained for the rule; the one whose speed is reported
    steps: int = 200
    lr: float = 0.0005
    batch_rows: int = 12
    train_mixtures: int = 12
    heldout_mixtures: int = 4
    clip_seconds: float = 1.0
    codec_fit_per_kind: int = 8


@dataclass(frozen=True)
class BenchConfig:
    masker_preset: str = "paper"
    clip_seconds: float = 10.0
    short_clip_seconds: float = 1.0  # short-clip / long-clip throughput: clips of this length
    n_prompts: int = 1
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    speedup_batch: int = 8
    waveform_max_batch: int = 8
    precisions: list[str] = field(default_factory=lambda: ["fp32", "bf16", "int8"])
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
    ingest_seconds: float = 120.0
    scale_shards: int = 10000  # one-row shards on loopback S3 for the planning figure
    scale_ids: int = 1000000  # ids in the checkpoint filter's array for the resume-state figure
    scale_filter_memory_gb: float = 2.0  # memory one checkpoint filter actor may hold
    archive_shards: int = 200  # reruns over a growing archive on loopback S3 (jobs.bench.archive)
    archive_rows: int = 20
    archive_clip_seconds: float = 1.0
    archive_rows_per_shard: int = 10000  # synthesized ledgers: the 360 M-row, 36,000-shard archive's
    archive_resume_rows: list[int] = field(default_factory=lambda: [1_000_000, 10_000_000])
    soak_shards: int = 1000  # --soak: the archive grown to this many shards (jobs.bench.soak)
    soak_rows: int = 200
    soak_first_shards: int = 100  # the archive before it grows
    soak_wave_rows: int = 50000
    soak_kill_after_wave_s: float = 20.0  # the kill lands this long after the first wave of the grown run commits
    matmul_size: int = 2048
    threads: int = 0
    seed: int = 0
    quality: QualityConfig = field(default_factory=QualityConfig)
    gpu_batch_windows: list[int] = field(default_factory=lambda: [8, 64, 256])
    docs: str | None = None  # `make bench` passes docs=docs/benchmarks.md; other runs write only --output
    separator: SeparatorConfig = field(default_factory=SeparatorConfig)

    def check(self) -> None:
        if self.speedup_batch not in self.batch_sizes or self.speedup_batch > self.waveform_max_batch:
            raise ValueError("speedup_batch must be one of batch_sizes and at most waveform_max_batch")
        if "fp32" not in self.precisions:
            raise ValueError("precisions must include fp32 (the reference of the quality rule)")
