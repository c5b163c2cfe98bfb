"""`codecsep train DATA OUTPUT`: train the masker in code space on a Ray cluster (Ray Train).

DATA is what `prepare-train` wrote (DATA/train, DATA/val). The codec stays frozen: the
default loss (negative latent SNR of M * Z_mix against Z_target) needs only the codec
tables; `loss=sisdr` is the published negative SI-SDR through the frozen DAC decoder.

The driver embeds every prompt once (CLAP, or with `fixed_prompts_if_offline=true` and
no CLAP weights, deterministic per-prompt vectors, said plainly in the output) and
stores them as OUTPUT/prompts.parquet, exports OUTPUT/codec_tables.safetensors, then
runs a `TorchTrainer` whose workers read their data shard through Ray Data.

OUTPUT (any URI) gets checkpoints/step-<n>.safetensors (masker + AdamW state, no
pickle) every `checkpoint_every` steps, the validation history of each call in
metrics-from-<start step>.json, and masker.safetensors at the end, which `separate`
and `evaluate` load. A rerun, or a worker restarted by Ray Train, resumes
from the latest checkpoint; validation loss and latent SNR are logged and reported.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from jobs import resolve
from jobs.engine import (
    JobParser,
    JobReport,
    RayOptions,
    check_cluster_gpus,
    check_device,
    device_for,
    init_ray,
    require,
    setup_logging,
    verbose,
)
from storage import fs as sfs
from storage import shards

log = logging.getLogger("codecsep.train")

LOSSES = ("latent", "sisdr")
CHECKPOINT_NAME = re.compile(r"step-(\d+)\.safetensors")
METRICS_NAME = re.compile(r"metrics-from-(\d+)\.json")


@dataclass(frozen=True)
class OptimizerConfig:
    lr: float = 1.5e-4
    betas: list[float] = field(default_factory=lambda: [0.8, 0.99])
    weight_decay: float = 0.01
    grad_clip: float = 10.0  # global gradient norm; 0 disables


@dataclass(frozen=True)
class TrainConfig:
    data: str | None = None
    output: str | None = None
    preset: str = "paper"  # masker preset: paper | tiny
    loss: str = "latent"  # latent | sisdr (needs codec_weights)
    codec_tables: str | None = None
    codec_weights: str | None = None  # DAC checkpoint; tables exported from it; the sisdr loss decodes with it
    prompt_table: str | None = None  # reuse these vectors; prompts missing from it are embedded
    clap_checkpoint: str | None = None
    fixed_prompts_if_offline: bool = False  # no CLAP weights: fixed per-prompt vectors instead of an error
    segment_frames: int = 100  # training window (2 s at 50 frames/s, as published)
    max_steps: int = 100_000
    val_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 50
    seed: int = 0
    cache_data: bool = True  # keep each worker's data shard in memory after the first epoch
    max_failures: int = 3  # worker or node losses survived: workers restart from the latest checkpoint
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    ray: RayOptions = field(
        default_factory=lambda: RayOptions(num_cpus_per_actor=1.0)
    )  # actors: workers; batch: per worker
    ray_storage_path: str | None = None  # Ray Train's run folder (null: a local temporary folder)

    def check(self) -> None:
        require(self, ("data", "output"), "codecsep train DATA OUTPUT")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.loss == "sisdr" and not self.codec_weights:
            raise ValueError("loss=sisdr decodes with the DAC decoder: set codec_weights")
        if min(self.segment_frames, self.max_steps, self.val_every, self.checkpoint_every, self.ray.batch_size) < 1:
            raise ValueError("segment_frames, max_steps, val_every, checkpoint_every, ray.batch_size must be positive")


# --------------------------------------------------------------------------- checkpoints


def checkpoint_dir(output: str) -> str:
    return sfs.join(output, "checkpoints")


def latest_checkpoint(output: str) -> tuple[int, str] | None:
    """(step, URI) of the newest complete checkpoint (files appear whole: atomic writes)."""
    folder = checkpoint_dir(output)
    if not sfs.exists(folder):
        return None
    found = [
        (int(m.group(1)), u)
        for u in sfs.list_files(folder, [".safetensors"])
        if (m := CHECKPOINT_NAME.fullmatch(posixpath.basename(u)))
    ]
    return max(found) if found else None


def save_checkpoint(output: str, data: bytes, step: int, keep: int) -> str:
    uri = sfs.join(checkpoint_dir(output), f"step-{step:09d}.safetensors")
    sfs.write_bytes_atomic(uri, data)
    fs, _ = sfs.resolve(output)
    old = sorted(sfs.list_files(checkpoint_dir(output), [".safetensors"]))[:-keep] if keep > 0 else []
    for u in old:
        fs.rm_file(sfs.resolve(u)[1])
    return uri


# --------------------------------------------------------------------------- prompts and codec


def distinct_prompts(data: str) -> list[str]:
    prompts: set[str] = set()
    for split in ("train", "val"):
        uri = sfs.join(data, split)
        if sfs.exists(uri):
            table = shards.read_table(uri, columns=["prompt"])
            if table.num_rows:
                prompts.update(table["prompt"].to_pylist())
    return sorted(prompts)


def prepare_prompts(cfg: TrainConfig):
    """The run's prompt table: OUTPUT/prompts.parquet (kept across resumes) <- cfg.prompt_table
    <- new embeddings; written back to OUTPUT/prompts.parquet."""
    from storage.prompt_table import PromptTable, write_prompt_table

    uri = sfs.join(cfg.output, "prompts.parquet")
    prompts = distinct_prompts(cfg.data)
    vectors, encoder = resolve.prompt_vectors(
        prompts,
        uri if sfs.exists(uri) else cfg.prompt_table,
        cfg.clap_checkpoint,
        dim=512,
        fixed_if_offline=cfg.fixed_prompts_if_offline,
    )
    table = PromptTable(tuple(prompts), vectors, encoder)
    write_prompt_table(uri, table)
    return table


def prepare_tables(cfg: TrainConfig) -> str:
    uri = sfs.join(cfg.output, "codec_tables.safetensors")
    sfs.write_bytes_atomic(uri, resolve.codec_tables(cfg.codec_tables, cfg.codec_weights))
    return uri


# --------------------------------------------------------------------------- worker


class _Data:
    """Training batches from the worker's Ray Data shard, collated with `training.collate`.
    With `cache`, the shard is streamed once and kept in worker memory (codes are small:
    ~1.2 kB per second of audio), then reshuffled locally each epoch; without it every
    epoch streams the shard again (datasets larger than a worker's memory)."""

    def __init__(
        self, shard, prompts: dict, segment_frames: int, batch_size: int, hop: int, with_audio: bool, cache: bool
    ):
        self.shard, self.prompts, self.segment_frames = shard, prompts, segment_frames
        self.batch_size, self.hop, self.with_audio = batch_size, hop, with_audio
        self.cache = cache
        self._table = None

    def _tables(self, rng: np.random.Generator, shuffle: bool):
        import pyarrow as pa

        if not self.cache:
            kwargs = (
                {"local_shuffle_buffer_size": 4 * self.batch_size, "local_shuffle_seed": int(rng.integers(2**31))}
                if shuffle
                else {}
            )
            yield from self.shard.iter_batches(batch_size=self.batch_size, batch_format="pyarrow", **kwargs)
            return
        if self._table is None:
            self._table = pa.concat_tables(self.shard.iter_batches(batch_size=None, batch_format="pyarrow"))
        n = self._table.num_rows
        order = rng.permutation(n) if shuffle else np.arange(n)
        for i in range(0, n, self.batch_size):
            yield self._table.take(order[i : i + self.batch_size])

    def batches(self, rng: np.random.Generator, shuffle: bool):
        from codecsep_core.training import collate
        from storage.schema import codes_column_to_numpy

        for b in self._tables(rng, shuffle):
            cond = np.stack([self.prompts[p] for p in b["prompt"].to_pylist()])
            audio = [np.asarray(a, np.float32) for a in b["target_audio"].to_pylist()] if self.with_audio else None
            yield collate(
                codes_column_to_numpy(b["mix_codes"]),
                codes_column_to_numpy(b["target_codes"]),
                cond,
                self.segment_frames,
                rng,
                audio,
                self.hop,
            )


def _loss_fn(cfg: TrainConfig, device):
    """-> loss(masker, tables, batch) for the configured loss."""
    from codecsep_core import training

    if cfg.loss == "latent":
        return training.latent_loss
    from codecsep_core.dac_codec import load_dac

    dac = load_dac(sfs.read_bytes(cfg.codec_weights)).to(device)
    for p in dac.parameters():
        p.requires_grad_(False)

    def loss(masker, tables, batch):
        return training.sisdr_loss(masker, tables, batch, dac.decode)

    return loss


def train_loop(loop: dict) -> None:
    """Ray Train worker: resume from the latest checkpoint, train, validate, checkpoint.
    `loop`: the TrainConfig (`cfg`) and what the driver resolved for it."""
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from codecsep_core import CodecTables, Masker, MaskerConfig, masker_to_bytes, training

    cfg: TrainConfig = loop["cfg"]
    setup_logging()
    torch.set_num_threads(max(1, int(cfg.ray.num_cpus_per_actor)))
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = torch.device(device_for(cfg.ray.num_gpus_per_actor))
    check_device(device.type)
    tables = CodecTables.load(sfs.read_bytes(loop["tables"])).to(device)
    torch.manual_seed(cfg.seed)  # initial weights and dropout: a run is repeatable
    masker = Masker(MaskerConfig.preset(cfg.preset))
    latest = latest_checkpoint(cfg.output)
    state, step = None, 0
    if latest is not None:
        ckpt = training.checkpoint_from_bytes(sfs.read_bytes(latest[1]))
        masker.load_state_dict(ckpt.masker.state_dict())
        state, step = ckpt.optimizer_state, ckpt.step
        log.info("resuming from checkpoint %s (step %d)", latest[1], step)
    resumed_from = step
    model = prepare_model(masker) if ctx.get_world_size() > 1 else masker.to(device)
    opt = cfg.optimizer
    optimizer = training.make_optimizer(masker, opt.lr, opt.betas, opt.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state)
    loss_of = _loss_fn(cfg, device)
    prompts = dict(zip(loop["prompts"], np.asarray(loop["embeddings"], np.float32)))
    hop = tables.info.hop_length
    with_audio = cfg.loss == "sisdr" and loop["has_audio"]

    def to_device(b):
        return training.Batch(
            *(
                t.to(device) if t is not None else None
                for t in (b.mix_codes, b.target_codes, b.valid, b.cond, b.target_audio)
            )
        )

    args = (prompts, cfg.segment_frames, cfg.ray.batch_size, hop, with_audio, cfg.cache_data)
    train_data = _Data(ray.train.get_dataset_shard("train"), *args)
    val_data = _Data(ray.train.get_dataset_shard("val"), *args) if loop["has_val"] else None
    history = []
    rng = np.random.default_rng([cfg.seed, step, rank])  # a resumed run draws new crops
    t0, running = time.perf_counter(), []
    while step < cfg.max_steps:
        for batch in train_data.batches(rng, shuffle=True):
            b = to_device(batch)
            stats = training.train_step(model, optimizer, lambda: loss_of(model, tables, b), opt.grad_clip or None)
            step += 1
            running.append(stats["loss"])
            if step % cfg.log_every == 0:
                log.info(
                    "step %d: train loss %.3f (%.2f s/step)",
                    step,
                    np.mean(running),
                    (time.perf_counter() - t0) / len(running),
                )
                t0, running = time.perf_counter(), []
            last = step >= cfg.max_steps
            if step % cfg.val_every == 0 or last:
                metrics = {"step": step, "resumed_from": resumed_from, "train_loss": float(stats["loss"])}
                if val_data is not None:
                    metrics.update(_validate(model, tables, loss_of, val_data, to_device))
                    log.info(
                        "step %d: val loss %.3f, val latent SNR %.2f dB",
                        step,
                        metrics["val_loss"],
                        metrics["val_latent_snr"],
                    )
                ray.train.report(metrics)
                if rank == 0:
                    history.append(metrics)
                    sfs.write_bytes_atomic(
                        sfs.join(cfg.output, f"metrics-from-{resumed_from:09d}.json"),
                        json.dumps(history, indent=1).encode(),
                    )
            if rank == 0 and (step % cfg.checkpoint_every == 0 or last):
                uri = save_checkpoint(
                    cfg.output, training.checkpoint_to_bytes(masker, optimizer, step), step, cfg.keep_checkpoints
                )
                log.info("step %d: checkpoint %s", step, uri)
            if last:
                break
    if rank == 0:
        sfs.write_bytes_atomic(sfs.join(cfg.output, "masker.safetensors"), masker_to_bytes(masker, loop["encoder"]))


def _validate(model, tables, loss_of, data: _Data, to_device) -> dict:
    """Mean loss and latent SNR over the validation shard (fixed crops, eval mode)."""
    import torch

    from codecsep_core import training

    model.eval()
    losses, snrs = [], []
    with torch.no_grad():
        for batch in data.batches(np.random.default_rng(0), shuffle=False):
            b = to_device(batch)
            losses.append(float(loss_of(model, tables, b)))
            z_hat, z_t = training.separate_latent(model, tables, b)
            snrs += training.latent_snr(z_hat, z_t, b.valid).tolist()
    model.train()
    return {"val_loss": float(np.mean(losses)), "val_latent_snr": float(np.mean(snrs))}


# --------------------------------------------------------------------------- driver


def read_split(ray, files: list[str], with_audio: bool):
    columns = ["prompt", "mix_codes", "target_codes"] + (["target_audio"] if with_audio else [])
    fs, _ = sfs.pyarrow_filesystem(files[0])
    paths = [sfs.resolve(u)[1] for u in files]
    return ray.data.read_parquet(paths, filesystem=fs).select_columns(columns)  # projection is pushed into the read


def run(cfg: TrainConfig) -> JobReport:
    cfg.check()
    report = JobReport("train")
    t_start = time.perf_counter()
    train_uri, val_uri = sfs.join(cfg.data, "train"), sfs.join(cfg.data, "val")
    train_files = shards.list_shards(train_uri)
    if not train_files:
        raise ValueError(f"no training shards in {train_uri} (run codecsep prepare-train first)")
    val_files = shards.list_shards(val_uri) if sfs.exists(val_uri) else []
    with report.stage("prompts"):
        table = prepare_prompts(cfg)
    with report.stage("codec_tables"):
        tables_uri = prepare_tables(cfg)
    latest = latest_checkpoint(cfg.output)
    report.extra = {
        "output": cfg.output,
        "masker": sfs.join(cfg.output, "masker.safetensors"),
        "prompt_table": sfs.join(cfg.output, "prompts.parquet"),
        "codec_tables": tables_uri,
        "prompt_encoder": table.encoder,
    }
    report.rows_in = shards.count_rows(train_files)
    if latest is not None and latest[0] >= cfg.max_steps:  # already trained: no worker starts
        finish_from_checkpoint(cfg, latest[1], table.encoder)
        report.extra.update(resumed_from_step=latest[0], step=latest[0], val_history=[])
    else:
        with report.stage("fit"):
            fit(cfg, train_files, val_files, tables_uri, table)
        start, history = latest_history(cfg.output, latest[0] if latest else 0)
        metrics = history[-1]
        report.rows_out = int(metrics["step"]) - start  # steps run by this call
        report.extra.update(
            resumed_from_step=start,
            val_history=history,
            **{k: metrics[k] for k in ("step", "val_loss", "val_latent_snr", "train_loss") if k in metrics},
        )
    report.wall_s = time.perf_counter() - t_start
    return report


def finish_from_checkpoint(cfg: TrainConfig, checkpoint: str, encoder: str | None) -> None:
    """Training reached `max_steps` in an earlier call: the masker file from the last
    checkpoint, when that call ended before writing it."""
    from codecsep_core import masker_to_bytes, training

    masker = sfs.join(cfg.output, "masker.safetensors")
    if not sfs.exists(masker):
        ckpt = training.checkpoint_from_bytes(sfs.read_bytes(checkpoint))
        sfs.write_bytes_atomic(masker, masker_to_bytes(ckpt.masker, encoder))
    log.info("already trained to step %d (%s): nothing to run", cfg.max_steps, checkpoint)


@contextmanager
def quiet_data_context():
    """Ray Data's progress bars off while the trainer reads its splits, and the
    process-global DataContext as it was afterwards (a job run after this one in the same
    driver keeps its own settings)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = ctx.enable_progress_bars
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ctx.enable_progress_bars = saved


def fit(cfg: TrainConfig, train_files: list[str], val_files: list[str], tables_uri: str, table) -> None:
    """Ray Train: one `train_loop` per worker, each reading its shard of the splits."""
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray = init_ray(cfg.ray)
    check_cluster_gpus(ray, cfg.ray.num_gpus_per_actor)
    has_audio = "target_audio" in shards.column_names(train_files[0])
    with_audio = cfg.loss == "sisdr" and has_audio
    loop_cfg = {
        "cfg": cfg,
        "tables": tables_uri,
        "prompts": list(table.prompts),
        "embeddings": table.embeddings.tolist(),
        "encoder": table.encoder,
        "has_val": bool(val_files),
        "has_audio": has_audio,
    }
    with quiet_data_context():
        datasets = {"train": read_split(ray, train_files, with_audio)}
        if val_files:
            datasets["val"] = read_split(ray, val_files, with_audio)
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=loop_cfg,
            datasets=datasets,
            scaling_config=ScalingConfig(
                num_workers=cfg.ray.max_actors,
                use_gpu=cfg.ray.num_gpus_per_actor > 0,
                resources_per_worker={"CPU": cfg.ray.num_cpus_per_actor},
            ),
            run_config=RunConfig(
                name=f"codecsep-train-{int(time.time())}",
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                logging_config=LoggingConfig(log_level="INFO" if verbose() else "WARNING"),
                storage_path=cfg.ray_storage_path or tempfile.gettempdir() + "/codecsep-ray-train",
            ),
        )
        result = trainer.fit()
    if result.error is not None:
        raise result.error


def latest_history(output: str, at_least: int) -> tuple[int, list[dict]]:
    """(step resumed from, validation history) of the newest run: the metrics file with the
    highest start step. The workers may have resumed from a later checkpoint than the
    driver saw before the fit (one landed in between), never an earlier one."""
    found = [
        (int(m.group(1)), u)
        for u in sfs.list_files(output, [".json"])
        if (m := METRICS_NAME.fullmatch(posixpath.basename(u)))
    ]
    start, uri = max((f for f in found if f[0] >= at_least), default=(None, None))
    if uri is None:
        raise RuntimeError(f"training ended without writing {output}/metrics-from-*.json")
    return start, json.loads(sfs.read_bytes(uri))


def parse_args(argv: list[str] | None) -> TrainConfig:
    p = JobParser(
        "train",
        TrainConfig,
        __doc__.splitlines()[0],
        (("DATA", "data"), ("OUTPUT", "output")),
        "prepare-train output URI, run output URI",
    )
    p.add_argument("--preset", help="masker preset: paper | tiny")
    p.add_argument("--codec-weights", help="DAC checkpoint URI")
    p.add_argument("--codec-tables", help="codec tables URI")
    p.add_argument(
        "--fixed-prompts-if-offline",
        action="store_true",
        default=None,
        help="without CLAP weights, train on fixed per-prompt vectors",
    )
    p.add_argument("--max-steps", type=int)
    p.add_argument("--address", dest="ray.address", help="Ray address (default: embedded local Ray)")
    p.add_argument("--workers", dest="ray.num_actors", type=int, help="Ray Train workers")
    p.add_argument("--gpus-per-worker", dest="ray.num_gpus_per_actor", type=float, help="GPUs per worker (0: CPU)")
    return p.parse_config(argv)


def command(argv: list[str]) -> None:
    """`codecsep train`: parse, run, print the report (exit codes: jobs.cli)."""
    cfg = parse_args(argv)
    cfg.check()
    report = run(cfg)
    if report.extra.get("prompt_encoder") == resolve.FIXED_ENCODER:
        print("NOTE: CLAP was unavailable: prompts were embedded as FIXED RANDOM VECTORS, not CLAP embeddings.")
    report.emit()


if __name__ == "__main__":
    import sys

    from jobs.cli import main

    raise SystemExit(main(["train", *sys.argv[1:]], program=True))
