"""`codecsep ingest SRC DST`: audio files (wav/flac/ogg) or `.dac` files -> code shards.

from_items(one item per file) -> map_batches(IngestBatch) on an actor pool -> each call
writes its rows as bounded shards and its failures to `DST/_errors/`, and returns a
summary row the driver logs as progress. An actor loads the DAC model once, and only when
it meets an audio file: `.dac` files are parsed, never decoded.

Rows follow `storage.schema.DAC_SHARD_SCHEMA` whatever the input, so every row exports
back to its original file (see `storage.schema` for the channel and chunk layout):

- id: the file's path relative to SRC without its extension (`speech/a.wav` -> `speech/a`);
  a multi-channel file gives one row per channel, `<id>#ch<k>`, as DAC folds channels
  into its batch and the separator is mono;
- audio is processed as DAC's `compress` does (resample to the codec rate, normalise to
  -16 LUFS, encode each channel), in overlapping windows, into one continuous code
  sequence (`dac_padding=True`, `dac_chunk_length` = all frames); the original rate,
  length and loudness are kept in the `dac_*` columns;
- `.dac` files keep their codes and metadata bit for bit, chunked ones included.

Resume: a rerun skips files whose rows are all in DST (ids read from DST), writes only
the missing channel rows of a partly written file, and skips files that already have an
error row unless `retry_errors=true` (which drops the old ingest error shards first).
Shard names derive from the ids of the files a call processed, so a retried call
overwrites its own shards.
"""
from __future__ import annotations

import argparse
import logging
import math
import posixpath
import time
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import torch

from codecsep_core.dac_codec import DacCodec, DacWeightsUnavailable
from jobs import config as job_config
from jobs.inputs import AUDIO_SUFFIXES, BadInput, batch_prefix, check_weights_codec, read_audio, read_codec_weights
from jobs.runtime import (
    JobReport, RayOptions, add_ray_arguments, init_ray, ray_values, run_cli, setup_logging, sum_summaries,
)
from storage import fs as sfs
from storage import shards
from storage.dacfile import DacFile, dac_source_id, dac_to_rows, read_dac
from storage.schema import DAC_CODECS, DAC_SHARD_SCHEMA, CodecSpec, table_from_rows, validate_row

log = logging.getLogger("codecsep.ingest")

DAC_SUFFIX = ".dac"
STAGE = "ingest"
ERROR_PREFIX = "ingest"  # error shards: _errors/part-ingest-<hash>-<n>.parquet


@dataclass(frozen=True)
class IngestConfig:
    input: str | None = None
    output: str | None = None
    codec: str = "dac_16khz"  # codec of the output rows; .dac files of another codec are errors
    codec_weights: str | None = None  # DAC checkpoint URI; null: DAC's official download for `codec`
    window_seconds: float = 5.0  # encoder window (memory bound); windows overlap, seams are exact
    max_rows_per_shard: int = 1000
    retry_errors: bool = False  # re-attempt files that have an error row from an earlier run
    ray: RayOptions = field(default_factory=RayOptions)

    def check(self) -> None:
        missing = [k for k in ("input", "output") if not getattr(self, k)]
        if missing:
            raise ValueError(f"missing setting(s): {', '.join(missing)} (codecsep ingest SRC DST)")
        if self.codec not in DAC_CODECS:
            raise ValueError(f"codec must be one of {sorted(DAC_CODECS)}, got {self.codec!r}")
        if self.max_rows_per_shard < 1 or self.window_seconds <= 0 or self.ray.batch_size < 1:
            raise ValueError("max_rows_per_shard, window_seconds and ray.batch_size must be positive")

    @property
    def model_type(self) -> str:
        return self.codec.split("_", 1)[1]  # "dac_16khz" -> "16khz", DAC's downloader name


class IngestError(BadInput):
    """A file that cannot become rows; the message is the error row's reason."""


# --------------------------------------------------------------------------- actor


class IngestBatch:
    """Ray Data callable class: files in, shards written, one summary row out per call."""

    def __init__(self, output: str, codec: str, weights, window_seconds: float, max_rows_per_shard: int,
                 s3: sfs.S3Options, use_gpu: bool, num_threads: int):
        self.output, self.s3 = output, s3
        self.spec: CodecSpec = DAC_CODECS[codec]
        self.shard_options = shards.ShardOptions(max_rows=max_rows_per_shard)
        self._weights, self._window_seconds = weights, window_seconds
        self._use_gpu, self._num_threads = use_gpu, num_threads
        self._codec = None

    @property
    def codec(self):
        """The DAC model, loaded on the first audio file this actor meets."""
        if self._codec is None:
            import ray

            if self._weights is None:
                raise IngestError("audio file but no codec weights were shipped to the actor")
            torch.set_num_threads(self._num_threads)
            weights = ray.get(self._weights) if isinstance(self._weights, ray.ObjectRef) else self._weights
            device = "cuda" if self._use_gpu and torch.cuda.is_available() else "cpu"
            self._codec = DacCodec.load(weights, window_seconds=self._window_seconds, device=device)
        return self._codec

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = batch.to_pylist()
        tally = defaultdict(float, files=len(items))
        rows, errors = [], []
        for item in items:
            try:
                file_rows, audio_s = self._rows(item, tally)
            except (ValueError, RuntimeError, OSError, EOFError) as e:
                errors.append({"id": item["id"], "source": item["path"], "stage": STAGE, "prompt": None,
                               "reason": str(e) if isinstance(e, BadInput) else f"{type(e).__name__}: {e}"})
                continue
            done = set(item["done_ids"] or ())
            rows += [r for r in file_rows if r["id"] not in done]
            tally["audio_s"] += audio_s
        t0 = time.perf_counter()
        prefix = batch_prefix([item["id"] for item in items])
        written = []
        if rows:
            with shards.ShardWriter(self.output, prefix, self.shard_options, self.s3) as writer:
                writer.write(table_from_rows(rows, DAC_SHARD_SCHEMA))
            written = writer.written
        shards.write_errors(self.output, errors, f"{ERROR_PREFIX}-{prefix}", s3=self.s3)
        tally["write_s"] += time.perf_counter() - t0
        tally.update(rows=len(rows), errors=len(errors), shards=len(written))
        return pa.Table.from_pylist([dict(tally)])

    def _rows(self, item: dict, tally: dict) -> tuple[list[dict], float]:
        """-> (the file's rows, its duration in seconds); raises on a file that cannot be ingested."""
        t0 = time.perf_counter()
        data = sfs.read_bytes(item["path"], self.s3)
        t1 = time.perf_counter()
        tally["read_s"] += t1 - t0
        if item["path"].lower().endswith(DAC_SUFFIX):
            dac = read_dac(data, posixpath.basename(item["path"]))
            if dac.codes.shape[-1] == 0:
                raise IngestError("empty .dac file (0 frames)")
        else:
            audio, sample_rate = read_audio(data)
            t2 = time.perf_counter()
            tally["decode_s"] += t2 - t1
            compressed = self.codec.compress(audio, sample_rate)
            dac = DacFile(codes=compressed.codes, chunk_length=compressed.codes.shape[-1],
                          original_length=audio.shape[1], input_db=compressed.input_db,
                          channels=audio.shape[0], sample_rate=sample_rate, padding=True)
            tally["encode_s"] += time.perf_counter() - t2
        rows = dac_to_rows(dac, item["id"], self.spec)
        for row in rows:  # a file lands whole or not at all, so export can rebuild it
            reason = validate_row(row, self.spec)
            if reason is not None:
                raise IngestError(f"not {self.spec.name} codes: {reason}")
        return rows, dac.original_length / dac.sample_rate


# --------------------------------------------------------------------------- driver


def list_inputs(src: str, s3: sfs.S3Options) -> list[tuple[str, str]]:
    """(file URI, id) of every audio or .dac file under `src`, sorted by URI."""
    suffixes = [s for suf in AUDIO_SUFFIXES + (DAC_SUFFIX,) for s in (suf, suf.upper())]
    files = sfs.list_files(src, suffixes, s3)
    _, root = sfs.resolve(src, s3)
    root = root.rstrip("/")
    out = []
    for uri in files:
        path = sfs.resolve(uri, s3)[1]
        rel = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
        out.append((uri, posixpath.splitext(rel)[0]))
    return out


def split_duplicates(inputs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[dict]]:
    """Files sharing an id (`a.wav` beside `a.flac`): the first in URI order wins, the rest
    become error rows."""
    seen: dict[str, str] = {}
    keep, errors = [], []
    for uri, clip_id in inputs:
        if clip_id in seen:
            errors.append({"id": clip_id, "source": uri, "stage": STAGE, "prompt": None,
                           "reason": f"duplicate id {clip_id!r}: already taken by {seen[clip_id]}"})
        else:
            seen[clip_id] = uri
            keep.append((uri, clip_id))
    return keep, errors


@dataclass
class OutputState:
    """What an earlier run left in DST: ids per source file, and files with error rows."""

    present: dict[str, set[str]] = field(default_factory=dict)  # file id -> row ids present
    complete: set[str] = field(default_factory=set)  # file ids with every channel present
    errored: set[str] = field(default_factory=set)  # source URIs with an ingest error row
    rows: int = 0


def scan_output(dst: str, s3: sfs.S3Options) -> OutputState:
    state = OutputState()
    if not sfs.exists(dst, s3):
        return state
    table = read_id_columns(dst, s3)
    if table.num_rows:
        channels: dict[str, int] = {}
        for row in table.to_pylist():
            if row.get("dac_channels") is None:
                row.update(dac_channel=0, dac_channels=1)
            base = dac_source_id(row)
            state.present.setdefault(base, set()).add(row["id"])
            channels[base] = int(row["dac_channels"])
        state.complete = {b for b, ids in state.present.items() if len(ids) >= channels[b]}
        state.rows = table.num_rows
    errors = shards.read_errors(dst, s3)  # a folder left empty by retry_errors: no columns
    state.errored = {r["source"] for r in errors.to_pylist() if r["stage"] == STAGE} if errors.num_rows else set()
    return state


def read_id_columns(dst: str, s3: sfs.S3Options) -> pa.Table:
    """`id` and the channel columns of every row in DST, without reading any codes."""
    try:
        return shards.read_table(dst, columns=["id", "dac_channel", "dac_channels"], s3=s3)
    except (pa.ArrowInvalid, KeyError):  # shards written by something else: ids only
        return shards.read_table(dst, columns=["id"], s3=s3)


def drop_error_shards(dst: str, s3: sfs.S3Options) -> None:
    """Remove the ingest error shards of earlier runs, before their files are retried."""
    errors_uri = sfs.join(dst, shards.ERRORS_DIR)
    if not sfs.exists(errors_uri, s3):
        return
    fs, _ = sfs.resolve(dst, s3)
    for uri in shards.list_shards(errors_uri, s3):
        if posixpath.basename(uri).startswith(f"part-{ERROR_PREFIX}-"):
            fs.rm_file(sfs.resolve(uri, s3)[1])


def run(cfg: IngestConfig) -> JobReport:
    cfg.check()
    report = JobReport(STAGE)
    t_start = time.perf_counter()
    s3 = sfs.S3Options().with_env_defaults()  # shipped to the actors, whose env may lack it
    with report.stage("list_inputs"):
        inputs, dup_errors = split_duplicates(list_inputs(cfg.input, s3))
    with report.stage("scan_output"):
        if cfg.retry_errors:
            drop_error_shards(cfg.output, s3)
        state = scan_output(cfg.output, s3)
    todo = [(uri, i) for uri, i in inputs if i not in state.complete and uri not in state.errored]
    report.rows_in = len(inputs) + len(dup_errors)
    report.skipped_done = len(inputs) - len(todo)
    log.info("%d input file(s): %d to ingest, %d already done or failed before, %d duplicate id(s)",
             report.rows_in, len(todo), report.skipped_done, len(dup_errors))
    shards.write_errors(cfg.output, dup_errors, f"{ERROR_PREFIX}-dup-{batch_prefix([e['source'] for e in dup_errors])}", s3=s3)
    weights = None
    if any(not uri.lower().endswith(DAC_SUFFIX) for uri, _ in todo):
        with report.stage("load_weights"):
            weights = read_codec_weights(cfg.codec_weights, cfg.model_type, s3)
            check_weights_codec(weights, cfg.codec)
    totals: dict[str, float] = defaultdict(float)
    if todo:
        with report.stage("pipeline"):
            items = [{"path": uri, "id": i, "done_ids": sorted(state.present.get(i, ()))} for uri, i in todo]
            totals = _run_pipeline(cfg, items, weights, s3)
    report.rows_out = int(totals["rows"])
    report.errors = int(totals["errors"]) + len(dup_errors)
    report.audio_hours = totals["audio_s"] / 3600
    for k in ("read_s", "decode_s", "encode_s", "write_s"):
        report.stages_s["actors_" + k[:-2]] = totals[k]
    report.wall_s = time.perf_counter() - t_start
    report.extra = {"output": cfg.output, "codec": cfg.codec, "shards_written": int(totals["shards"]),
                    "rows_before": state.rows}
    return report


def _run_pipeline(cfg: IngestConfig, items: list[dict], weights: bytes | None, s3: sfs.S3Options) -> dict:
    ray = init_ray(cfg.ray)
    from ray.data import ActorPoolStrategy

    batch = cfg.ray.batch_size
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / batch)))
    ds = ds.map_batches(
        IngestBatch,
        fn_constructor_kwargs=dict(
            output=cfg.output, codec=cfg.codec, weights=ray.put(weights) if weights is not None else None,
            window_seconds=cfg.window_seconds, max_rows_per_shard=cfg.max_rows_per_shard, s3=s3,
            use_gpu=cfg.ray.num_gpus_per_actor > 0, num_threads=max(1, round(cfg.ray.num_cpus_per_actor)),
        ),
        batch_size=batch,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=cfg.ray.num_actors),
        num_cpus=cfg.ray.num_cpus_per_actor,
        num_gpus=cfg.ray.num_gpus_per_actor,
    )
    return sum_summaries(ds, lambda t: log.info("ingest: %d/%d files, %d rows, %d errors, %.1f s of audio",
                                                t["files"], len(items), t["rows"], t["errors"], t["audio_s"]))


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> IngestConfig:
    p = argparse.ArgumentParser(prog="codecsep ingest", description=__doc__.splitlines()[0])
    p.add_argument("args", nargs="*", metavar="SRC DST [key=value ...]",
                   help="input folder/file URI, output folder URI, then config overrides")
    p.add_argument("--config", default=str(job_config.default_config_path("ingest")))
    p.add_argument("--input", help="URI of the audio / .dac files (instead of SRC)")
    p.add_argument("--output", help="URI of the code shards (instead of DST)")
    p.add_argument("--codec", help="codec of the output, e.g. dac_16khz")
    p.add_argument("--codec-weights", help="DAC checkpoint URI (default: DAC's official download)")
    p.add_argument("--max-rows-per-shard", type=int)
    p.add_argument("--window-seconds", type=float, help="encoder window length")
    p.add_argument("--retry-errors", action="store_true", default=None, help="re-attempt files that failed before")
    add_ray_arguments(p, batch_help="files per actor call")
    p.add_argument("-v", "--verbose", action="store_true")
    a, (src, dst), overrides = job_config.parse_paths(p, argv)
    setup_logging(a.verbose)
    return job_config.load_config(
        IngestConfig, a.config, overrides,
        input=a.input or src, output=a.output or dst, codec=a.codec, codec_weights=a.codec_weights,
        max_rows_per_shard=a.max_rows_per_shard, window_seconds=a.window_seconds, retry_errors=a.retry_errors,
        **ray_values(a),
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli("ingest", lambda: run(parse_args(argv)).emit(), (DacWeightsUnavailable,))


if __name__ == "__main__":
    raise SystemExit(main())
