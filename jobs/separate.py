"""`codecsep separate`: code shards -> separated code shards, codes in, codes out.

read Parquet -> map_batches(SeparateBatch) on an actor pool -> ShardSink. Each actor loads
the masker and codec tables once and never the codec's encoder/decoder or CLAP: prompt
embeddings are computed once on the driver and shipped as vectors. Resume is Ray Data's
row-level checkpointing keyed on `id`, kept after success so that a rerun over a grown
archive processes only the new clips.
"""
from __future__ import annotations

import argparse
import logging
import math
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from codecsep_core import SeparatorConfig
from jobs import config as job_config
from jobs.runtime import (
    JobReport, RayOptions, add_ray_arguments, init_ray, ray_values, run_cli, setup_logging,
)
from storage import fs as sfs

log = logging.getLogger("codecsep.separate")


@dataclass(frozen=True)
class SeparateConfig:
    input: str | None = None
    output: str | None = None
    prompts: list[str] = field(default_factory=list)
    masker: str | None = None
    codec_tables: str | None = None
    codec_weights: str | None = None
    prompt_table: str | None = None
    clap_checkpoint: str | None = None
    checkpoint_path: str | None = None
    min_rows_per_file: int = 64
    separator: SeparatorConfig = field(default_factory=SeparatorConfig)
    ray: RayOptions = field(default_factory=RayOptions)

    def check(self) -> None:
        missing = [k for k in ("input", "output", "masker") if not getattr(self, k)]
        if missing:
            raise ValueError(f"missing setting(s): {', '.join(missing)} (flags --{' --'.join(missing)})")
        if not self.prompts:
            raise ValueError("no prompts: pass --prompt TEXT (repeatable)")
        if len(set(self.prompts)) != len(self.prompts):
            raise ValueError(f"duplicate prompts: {self.prompts}")

    @property
    def checkpoint_uri(self) -> str:
        return self.checkpoint_path or self.output.rstrip("/") + ".checkpoint"


# --------------------------------------------------------------------------- actor


class SeparateBatch:
    """Ray Data callable class: set up once per actor, then separate batches of rows."""

    def __init__(self, masker: bytes, tables: bytes, prompts: list[str], embeddings: np.ndarray,
                 separator: SeparatorConfig, use_gpu: bool, cpu_threads: int, tally=None):
        import ray
        import torch

        from codecsep_core import CodecTables, Separator, load_masker
        from storage.schema import CodecSpec

        masker, tables = ray.get([masker, tables])  # shipped once through the object store
        torch.set_num_threads(cpu_threads)  # Ray pins OMP threads to 1 in workers by default
        device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.separator = Separator(CodecTables.load(tables), load_masker(masker).to(device), separator)
        info = self.separator.tables.info
        self.spec = CodecSpec(info.name, info.n_codebooks, info.codebook_size, info.sample_rate)
        self.prompts = prompts
        self.embeddings = torch.tensor(embeddings, dtype=torch.float32)
        self.tally = tally

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Good rows -> one output row per prompt; bad rows -> one error row each."""
        from storage.schema import check_batch

        t0 = time.perf_counter()
        checked = check_batch(batch, self.spec)
        good = [i for i, c in enumerate(checked) if c.reason is None]
        bad = [i for i, c in enumerate(checked) if c.reason is not None]
        rows = batch.take(good)
        t1 = time.perf_counter()
        separated = self._separate(rows, [checked[i].codes for i in good]) if good else []
        t2 = time.perf_counter()
        parts = [self._output_rows(rows, separated)] if good else []
        if bad:
            parts.append(self._error_rows(batch.take(bad), [checked[i].reason for i in bad]))
        out = pa.concat_tables(parts, promote_options="default")
        if self.tally is not None:
            audio_s = float(np.sum(rows["n_samples"].to_numpy() / rows["sample_rate"].to_numpy())) if good else 0.0
            self.tally.add.remote(rows=batch.num_rows, good=len(good), errors=len(bad), audio_s=audio_s,
                                  validate_s=t1 - t0, separate_s=t2 - t1, assemble_s=time.perf_counter() - t2,
                                  peak_actor_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return out

    def _separate(self, rows: pa.Table, codes: list[np.ndarray]):
        """Per row: separated codes [P, n_q, T] uint16 and scores. Chunked DAC rows are
        separated chunk by chunk (their chunks do not share a frame grid); their scores
        are frame-weighted means over the chunks."""
        import torch

        from storage.schema import separable_segments

        meta = rows.drop_columns(["codes"]).to_pylist()
        spans = [separable_segments(row, c.shape[1]) for row, c in zip(meta, codes)]
        segments = [torch.from_numpy(c[:, a:b].astype(np.int64)) for c, row_spans in zip(codes, spans) for a, b in row_spans]
        results = iter(self.separator.separate(segments, self.embeddings))
        merged = []
        for row_spans in spans:
            parts = [next(results) for _ in row_spans]
            frames = torch.tensor([b - a for a, b in row_spans], dtype=torch.float64)
            weights = (frames / frames.sum())[:, None]
            scores = {k: (torch.stack([r.scores[k].double() for r in parts]) * weights).sum(0).float()
                      for k in parts[0].scores}
            merged.append((torch.cat([r.codes for r in parts], dim=2).numpy().astype(np.uint16), scores))
        return merged

    @staticmethod
    def _error_rows(rows: pa.Table, reasons: list[str]) -> pa.Table:
        from jobs.sinks import ERROR_COLUMN, SOURCE_COLUMN

        ids = rows["id"].cast(pa.string()) if "id" in rows.column_names else pa.nulls(rows.num_rows, pa.string())
        return pa.table({"id": ids, SOURCE_COLUMN: rows["path"], ERROR_COLUMN: pa.array(reasons, pa.string())})

    def _output_rows(self, rows: pa.Table, separated) -> pa.Table:
        """One row per (clip, prompt), prompt-major: input columns with new codes + scores."""
        from jobs.sinks import ERROR_COLUMN, SOURCE_COLUMN
        from storage.schema import codes_to_arrow

        n, tables = rows.num_rows, []
        for p, prompt in enumerate(self.prompts):
            t = rows.set_column(rows.schema.get_field_index("codes"), "codes",
                                codes_to_arrow([codes[p] for codes, _ in separated]))
            t = t.rename_columns([SOURCE_COLUMN if c == "path" else c for c in t.column_names])
            t = t.append_column("prompt", pa.array([prompt] * n, pa.string()))
            for name in ("energy_kept", "mask_mean"):
                t = t.append_column(name, pa.array([float(s[name][p]) for _, s in separated], pa.float32()))
            tables.append(t.append_column(ERROR_COLUMN, pa.nulls(n, pa.string())))
        return pa.concat_tables(tables)


# --------------------------------------------------------------------------- driver


def _tally_actor():
    import ray

    @ray.remote(num_cpus=0)
    class Tally:
        """Per-batch counters and stage times reported by the actors."""

        def __init__(self):
            self.totals: dict[str, float] = {}

        def add(self, **values):
            for k, v in values.items():
                merge = max if k.startswith("peak_") else (lambda a, b: a + b)
                self.totals[k] = merge(self.totals.get(k, 0), v)

        def get(self):
            return self.totals

    return Tally.remote()


def resolve_embeddings(cfg: SeparateConfig) -> np.ndarray:
    """[P, 512] float32 for cfg.prompts: from the prompt table, else CLAP once on the driver."""
    found: dict[str, np.ndarray] = {}
    if cfg.prompt_table:
        from storage.prompt_table import read_prompt_table

        table = read_prompt_table(cfg.prompt_table)
        known = [p for p in cfg.prompts if p in table.prompts]
        found = dict(zip(known, table.vectors(known)))
    missing = [p for p in cfg.prompts if p not in found]
    if missing:
        from codecsep_core.prompt_encoder import PromptEncoder

        log.info("embedding %d prompt(s) with CLAP: %s", len(missing), missing)
        found.update(zip(missing, PromptEncoder(cfg.clap_checkpoint).encode(missing).numpy()))
    return np.stack([np.asarray(found[p], np.float32) for p in cfg.prompts])


def load_codec_tables_bytes(cfg: SeparateConfig) -> bytes:
    from codecsep_core import CodecTables

    if cfg.codec_tables:
        return sfs.read_bytes(cfg.codec_tables)
    if cfg.codec_weights:
        return CodecTables.from_dac_checkpoint(sfs.read_bytes(cfg.codec_weights)).to_bytes()
    from codecsep_core.dac_codec import load_dac

    log.info("no codec tables or weights given: using DAC's official 16 kHz model")
    return CodecTables.from_dac_model(load_dac(None)).to_bytes()


def pyarrow_fs(uri: str):
    """(pyarrow filesystem, path) for Ray Data, through the same fsspec resolution as storage."""
    from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

    fs, path = sfs.resolve(uri)
    if uri.startswith(("s3://", "s3a://", "memory://")):
        return PyFileSystem(FSSpecHandler(fs)), path
    return LocalFileSystem(), path


def scan_inputs(uri: str) -> tuple[list[str], list[dict], int]:
    """Readable shard files, error rows for unreadable ones, and the total row count
    (from Parquet footers: no data is read on the driver)."""
    import pyarrow.parquet as pq

    fs, _ = sfs.resolve(uri)
    good, errors, n_rows = [], [], 0
    for file in sfs.list_files(uri, [".parquet"]):
        try:
            with fs.open(sfs.resolve(file)[1], "rb") as f:
                meta = pq.ParquetFile(f).metadata
            if "id" not in meta.schema.names:
                raise ValueError("no 'id' column")
        except ValueError as e:  # a broken file (pyarrow's ArrowInvalid is a ValueError); storage failures raise
            errors.append({"id": None, "source": file, "stage": "separate", "prompt": None,
                           "reason": f"unreadable shard: {type(e).__name__}: {e}"})
            continue
        good.append(file)
        n_rows += meta.num_rows
    return good, errors, n_rows


def write_shard_errors(output: str, errors: list[dict]) -> None:
    """Unreadable-shard errors, one file per shard named after it: a rerun rewrites the
    same file instead of adding a duplicate."""
    import hashlib

    from storage.shards import write_errors

    for err in errors:
        write_errors(output, [err], prefix="shard-" + hashlib.sha1(err["source"].encode()).hexdigest()[:16])


def run(cfg: SeparateConfig) -> JobReport:
    cfg.check()
    report = JobReport("separate")
    t_start = time.perf_counter()
    with report.stage("scan_inputs"):
        files, shard_errors, n_input_rows = scan_inputs(cfg.input)
        write_shard_errors(cfg.output, shard_errors)
    log.info("%d shard(s), %d row(s); %d unreadable shard(s)", len(files), n_input_rows, len(shard_errors))
    with report.stage("prompt_embeddings"):
        embeddings = resolve_embeddings(cfg)
    with report.stage("load_models"):
        masker_bytes = sfs.read_bytes(cfg.masker)
        tables_bytes = load_codec_tables_bytes(cfg)
    if files:
        with report.stage("pipeline"):
            totals = _run_pipeline(cfg, files, n_input_rows, masker_bytes, tables_bytes, embeddings)
        report.audio_hours = totals.get("audio_s", 0.0) / 3600
        report.rows_in = int(totals.get("rows", 0))
        for k in ("validate_s", "separate_s", "assemble_s"):
            report.stages_s["actors_" + k[:-2]] = totals.get(k, 0.0)
        report.extra["peak_actor_rss_mb"] = round(totals.get("peak_actor_rss_mb", 0.0), 1)
        report.rows_out = int(totals.get("good", 0)) * len(cfg.prompts)
        report.errors = int(totals.get("errors", 0))
    report.errors += len(shard_errors)
    report.skipped_done = n_input_rows - report.rows_in
    report.wall_s = time.perf_counter() - t_start
    report.extra.update(prompts=list(cfg.prompts), output=cfg.output, shards=len(files))
    return report


@contextmanager
def checkpointed_data_context(cfg: SeparateConfig):
    """Ray Data's settings for this job, restored afterwards: the DataContext is
    process-global, and another job in the same driver must not inherit the checkpoint."""
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    ctx = DataContext.get_current()
    saved = ctx.checkpoint_config, ctx.use_datasource_v2
    ckpt_fs, ckpt_path = pyarrow_fs(cfg.checkpoint_uri)
    ctx.use_datasource_v2 = False  # the v2 Parquet reader ignores override_num_blocks (Ray 2.60)
    ctx.checkpoint_config = CheckpointConfig(
        id_column="id", checkpoint_path=ckpt_path, delete_checkpoint_on_success=False,
        override_filesystem=ckpt_fs,
    )
    try:
        yield
    finally:
        ctx.checkpoint_config, ctx.use_datasource_v2 = saved


def _run_pipeline(cfg: SeparateConfig, files, n_input_rows, masker_bytes, tables_bytes, embeddings) -> dict:
    ray = init_ray(cfg.ray)
    with checkpointed_data_context(cfg):
        return _execute(ray, cfg, files, n_input_rows, masker_bytes, tables_bytes, embeddings)


def _execute(ray, cfg: SeparateConfig, files, n_input_rows, masker_bytes, tables_bytes, embeddings) -> dict:
    from ray.data import ActorPoolStrategy

    from jobs.sinks import ShardSink

    in_fs, _ = pyarrow_fs(cfg.input)
    out_fs, out_path = pyarrow_fs(cfg.output)
    tally = _tally_actor()
    paths = [sfs.resolve(f)[1] for f in files]
    # One block per actor batch, so that output is written (and checkpointed) as the job
    # goes instead of at the end of one large read block.
    n_blocks = max(len(paths), math.ceil(n_input_rows / cfg.ray.batch_size))
    ds = ray.data.read_parquet(paths, filesystem=in_fs, include_paths=True, override_num_blocks=n_blocks)
    ds = ds.map_batches(
        SeparateBatch,
        fn_constructor_kwargs=dict(
            masker=ray.put(masker_bytes), tables=ray.put(tables_bytes), prompts=list(cfg.prompts),
            embeddings=embeddings, separator=cfg.separator, use_gpu=cfg.ray.num_gpus_per_actor > 0,
            cpu_threads=max(1, int(cfg.ray.num_cpus_per_actor)), tally=tally,
        ),
        batch_size=cfg.ray.batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=cfg.ray.num_actors),
        num_cpus=cfg.ray.num_cpus_per_actor,
        num_gpus=cfg.ray.num_gpus_per_actor,
    )
    sink = ShardSink(out_path, filesystem=out_fs, rename_into_place=not cfg.output.startswith("s3"),
                     min_rows_per_file=cfg.min_rows_per_file)
    ds.write_datasink(sink)
    totals = ray.get(tally.get.remote())
    ray.kill(tally)
    return totals


def parse_args(argv: list[str] | None) -> SeparateConfig:
    p = argparse.ArgumentParser(prog="codecsep separate", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(job_config.default_config_path("separate")))
    p.add_argument("--input", help="URI of the code shards")
    p.add_argument("--output", help="URI of the separated shards")
    p.add_argument("--prompt", dest="prompts", action="append", default=[], help="repeatable")
    p.add_argument("--masker", help="masker checkpoint URI (.safetensors)")
    p.add_argument("--codec-tables", help="codec tables URI (.safetensors)")
    p.add_argument("--codec-weights", help="DAC checkpoint URI; tables exported on the fly")
    p.add_argument("--prompt-table", help="Parquet prompt table URI")
    add_ray_arguments(p, batch_help="clips per actor call")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. separator.precision=bf16")
    a = p.parse_args(argv)
    setup_logging(a.verbose)
    return job_config.load_config(
        SeparateConfig, a.config, a.overrides,
        input=a.input, output=a.output, prompts=a.prompts, masker=a.masker, codec_tables=a.codec_tables,
        codec_weights=a.codec_weights, prompt_table=a.prompt_table, **ray_values(a),
    )


def main(argv: list[str] | None = None) -> int:
    from codecsep_core.prompt_encoder import PromptEncoderUnavailable

    return run_cli("separate", lambda: run(parse_args(argv)).emit(), (PromptEncoderUnavailable,))


if __name__ == "__main__":
    raise SystemExit(main())
