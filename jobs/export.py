"""`codecsep export SRC DST --format wav|flac|dac`: code shards -> audio or `.dac` files.

Input: code shards (`ingest`) or separated shards (`separate`, with a `prompt` column).
Output: `DST/<id>.<ext>`, or `DST/<id>/<prompt slug>.<ext>` for separated rows; a
multi-channel source (rows `<id>#ch<k>`, see `storage.schema`) becomes one file again.

The driver reads only the id/prompt/channel columns to group the rows of each output
file (they may sit in different shards), then from_items(one item per output file) ->
map_batches(ExportBatch) on an actor pool, which reads the shards it needs, writes the
files and returns a summary row. Audio export decodes with DAC (`--codec-weights`) and
restores what `ingest` recorded: original sample rate and length, and loudness (as
DAC's `decompress`: the decoded clip is set to the input loudness; a separated clip gets
the gain that undoes ingest's -16 LUFS normalisation instead, so a quiet source stays
quiet). `.dac` export needs no model: the codes and DAC metadata are written as DAC's
`DACFile.save` would, chunked files included, so `python -m dac decode` reads them.

Rerunning skips output files that exist (`overwrite=true` rewrites them); every file is
written atomically, so a crash never leaves a partial one.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import logging
import math
import posixpath
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import torch

from codecsep_core.dac_codec import (
    DAC_VERSION, NORMALIZE_DB, DacCodec, DacWeightsUnavailable, apply_gain_db, fit_length, loudness_db, resample,
)
from jobs import config as job_config
from jobs.inputs import check_weights_codec, read_codec_weights
from jobs.runtime import (
    JobReport, RayOptions, add_ray_arguments, init_ray, ray_values, run_cli, setup_logging, sum_summaries,
)
from storage import fs as sfs
from storage import shards
from storage.dacfile import dac_from_rows, dac_source_id, write_dac
from storage.schema import DAC_CODECS, MalformedCodes, codes_to_numpy, validate_row

log = logging.getLogger("codecsep.export")

FORMATS = ("wav", "flac", "dac")
STAGE = "export"
KEY_COLUMNS = ("id", "prompt", "dac_channel", "dac_channels")


@dataclass(frozen=True)
class ExportConfig:
    input: str | None = None
    output: str | None = None
    format: str = "wav"  # wav | flac | dac
    codec: str = "dac_16khz"  # which official DAC model decodes when codec_weights is null
    codec_weights: str | None = None  # DAC checkpoint URI (wav/flac only)
    window_seconds: float = 5.0  # decoder window (memory bound); windows overlap, seams are exact
    subtype: str = "PCM_16"  # soundfile subtype of wav/flac files
    overwrite: bool = False  # rewrite output files that exist
    ray: RayOptions = field(default_factory=RayOptions)

    def check(self) -> None:
        missing = [k for k in ("input", "output") if not getattr(self, k)]
        if missing:
            raise ValueError(f"missing setting(s): {', '.join(missing)} (codecsep export SRC DST)")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.codec not in DAC_CODECS:
            raise ValueError(f"codec must be one of {sorted(DAC_CODECS)}, got {self.codec!r}")
        if self.window_seconds <= 0 or self.ray.batch_size < 1:
            raise ValueError("window_seconds and ray.batch_size must be positive")

    @property
    def needs_model(self) -> bool:
        return self.format != "dac"


class ExportError(ValueError):
    """An output file that cannot be made; the message is the error row's reason."""


# --------------------------------------------------------------------------- rows -> files


def with_dac_defaults(row: dict, n_frames: int) -> dict:
    """A row without DAC metadata (a code shard from elsewhere): one mono, continuous
    clip at the codec rate, of unknown input loudness."""
    if row.get("dac_channels") is not None:
        return row
    return {**row, "dac_version": DAC_VERSION, "dac_chunk_length": n_frames, "dac_padding": True,
            "dac_input_db": None, "dac_channels": 1, "dac_channel": 0,
            "dac_original_length": row["n_samples"], "dac_sample_rate": row["sample_rate"]}


def dac_bytes(rows: list[dict]) -> bytes:
    rows = [{**r, "dac_input_db": NORMALIZE_DB if r["dac_input_db"] is None else r["dac_input_db"]} for r in rows]
    return write_dac(dac_from_rows(rows))


def decode_rows(codec, rows: list[dict], separated: bool):
    """Channel rows of one file -> float32 [channels, original_length] at the original rate."""
    first = rows[0]
    rate, original_rate, original_length = first["sample_rate"], first["dac_sample_rate"], first["dac_original_length"]
    n = math.ceil(original_length * rate / original_rate) + 1  # a sample of slack before the resample
    channels = []
    for row in rows:
        if row["dac_padding"]:
            channels.append(codec.decode(row["codes"], n))
        else:
            channels.append(codec.decode_chunks(row["codes"], int(row["dac_chunk_length"]), n))
    audio = np.stack(channels)
    input_db = first["dac_input_db"]
    if input_db is not None:
        gain = input_db - (NORMALIZE_DB if separated else loudness_db(audio, rate))
        audio = apply_gain_db(audio, gain)
    return fit_length(resample(audio, rate, original_rate), original_length)


def audio_bytes(audio, sample_rate: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio.T, -1.0, 1.0), sample_rate, format=fmt.upper(), subtype=subtype)
    return buf.getvalue()


# --------------------------------------------------------------------------- actor


class ExportBatch:
    """Ray Data callable class: output files in, files written, one summary row out per call."""

    def __init__(self, output: str, fmt: str, subtype: str, weights, window_seconds: float,
                 s3: sfs.S3Options, use_gpu: bool, num_threads: int):
        self.output, self.fmt, self.subtype, self.s3 = output, fmt, subtype, s3
        self._weights, self._window_seconds = weights, window_seconds
        self._use_gpu, self._num_threads = use_gpu, num_threads
        self._codec = None
        self._shard: tuple[str, pa.Table] | None = None  # the last shard read; items come sorted by shard

    @property
    def codec(self):
        if self._codec is None:
            import ray

            torch.set_num_threads(self._num_threads)
            weights = ray.get(self._weights) if isinstance(self._weights, ray.ObjectRef) else self._weights
            device = "cuda" if self._use_gpu and torch.cuda.is_available() else "cpu"
            self._codec = DacCodec.load(weights, window_seconds=self._window_seconds, device=device)
        return self._codec

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = batch.to_pylist()
        tally = defaultdict(float, files=len(items))
        errors = []
        for item in items:
            try:
                tally["audio_s"] += self._export(item, tally)
                tally["written"] += 1
            except (ValueError, RuntimeError, OSError, EOFError, KeyError) as e:
                errors.append({"id": item["id"], "source": ", ".join(sorted(set(item["shards"]))), "stage": STAGE,
                               "prompt": item["prompt"],
                               "reason": str(e) if isinstance(e, ExportError) else f"{type(e).__name__}: {e}"})
        prefix = hashlib.sha1("\n".join(sorted(i["out"] for i in items)).encode()).hexdigest()[:16]
        shards.write_errors(self.output, errors, f"{STAGE}-{prefix}", s3=self.s3)
        tally["errors"] = len(errors)
        return pa.Table.from_pylist([dict(tally)])

    def _rows(self, item: dict) -> list[dict]:
        """The item's rows, `codes` as integer arrays [n_codebooks, n_frames] (a row whose
        codes are malformed keeps the Arrow value, for `validate_row` to name the fault)."""
        rows = []
        for shard, index in zip(item["shards"], item["rows"]):
            if self._shard is None or self._shard[0] != shard:
                self._shard = (shard, shards.read_table(shard, s3=self.s3))
            table = self._shard[1]
            row = table.drop_columns(["codes"]).slice(index, 1).to_pylist()[0]
            try:
                row["codes"] = codes_to_numpy(table["codes"][index])
            except MalformedCodes:
                row["codes"] = table["codes"][index]
            rows.append(row)
        return rows

    def _export(self, item: dict, tally: dict) -> float:
        """Write one output file; -> its duration in seconds."""
        t0 = time.perf_counter()
        rows = self._rows(item)
        for row in rows:
            spec = DAC_CODECS.get(row.get("codec"))
            reason = f"unknown codec {row.get('codec')!r}" if spec is None else validate_row(row, spec)
            if reason is not None:
                raise ExportError(f"row {row.get('id')!r}: {reason}")
        rows = sorted((with_dac_defaults(r, r["codes"].shape[1]) for r in rows), key=lambda r: r["dac_channel"])
        t1 = time.perf_counter()
        tally["read_s"] += t1 - t0
        if self.fmt == "dac":
            data = dac_bytes(rows)
        else:
            if rows[0]["codec"] != self.codec.info.name:
                raise ExportError(f"rows hold {rows[0]['codec']} codes, the codec weights are {self.codec.info.name}")
            if [r["dac_channel"] for r in rows] != list(range(rows[0]["dac_channels"])):
                raise ExportError(f"channels {[r['dac_channel'] for r in rows]} of {rows[0]['dac_channels']} present")
            audio = decode_rows(self.codec, rows, separated=item["prompt"] is not None)
            data = audio_bytes(audio, rows[0]["dac_sample_rate"], self.fmt, self.subtype)
        t2 = time.perf_counter()
        tally["decode_s"] += t2 - t1
        sfs.write_bytes_atomic(sfs.join(self.output, item["out"]), data, self.s3)
        tally["write_s"] += time.perf_counter() - t2
        return rows[0]["dac_original_length"] / rows[0]["dac_sample_rate"]


# --------------------------------------------------------------------------- driver


def prompt_slugs(prompts: set[str]) -> dict[str, str]:
    """A file-name-safe name per prompt; prompts that would share one get a digest suffix."""
    def slug(p: str) -> str:
        return re.sub(r"[^a-z0-9]+", "_", p.lower()).strip("_")[:64] or "prompt"

    counts = defaultdict(int)
    for p in prompts:
        counts[slug(p)] += 1
    return {p: slug(p) if counts[slug(p)] == 1 else f"{slug(p)}-{hashlib.sha1(p.encode()).hexdigest()[:8]}"
            for p in prompts}


def read_keys(shard: str, s3: sfs.S3Options) -> pa.Table:
    """The grouping columns of one shard (those it has), without its codes."""
    fs, path = sfs.resolve(shard, s3)
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        if "id" not in names:
            raise ValueError("no 'id' column")
        return parquet.read(columns=[c for c in KEY_COLUMNS if c in names])


def _safe_id(clip_id: str) -> bool:
    parts = clip_id.split("/")
    return bool(clip_id) and not clip_id.startswith("/") and ".." not in parts and "" not in parts


def plan_files(src: str, ext: str, s3: sfs.S3Options) -> tuple[list[dict], list[dict], int]:
    """-> (one item per output file, error rows for unreadable shards and unsafe ids, rows read)."""
    groups: dict[tuple[str, str | None], list[tuple[str, int]]] = defaultdict(list)
    errors, n_rows = [], 0
    for shard in shards.list_shards(src, s3):
        try:
            keys = read_keys(shard, s3)
        except (OSError, ValueError, pa.ArrowException) as e:
            errors.append({"id": None, "source": shard, "stage": STAGE, "prompt": None,
                           "reason": f"unreadable shard: {type(e).__name__}: {e}"})
            continue
        n_rows += keys.num_rows
        for index, row in enumerate(keys.to_pylist()):
            base = dac_source_id(row) if row.get("dac_channels") is not None else row["id"]
            groups[(base, row.get("prompt"))].append((shard, index))
    slugs = prompt_slugs({p for _, p in groups if p is not None})
    items = []
    for (base, prompt), refs in groups.items():
        if base is None or not _safe_id(base):
            errors.append({"id": base, "source": refs[0][0], "stage": STAGE, "prompt": prompt,
                           "reason": f"id {base!r} cannot name a file under the output folder"})
            continue
        out = f"{base}.{ext}" if prompt is None else f"{base}/{slugs[prompt]}.{ext}"
        items.append({"out": out, "id": base, "prompt": prompt,
                      "shards": [s for s, _ in refs], "rows": [i for _, i in refs]})
    items.sort(key=lambda it: (it["shards"][0], it["rows"][0]))
    return items, errors, n_rows


def run(cfg: ExportConfig) -> JobReport:
    cfg.check()
    report = JobReport(STAGE)
    t_start = time.perf_counter()
    s3 = sfs.S3Options().with_env_defaults()  # shipped to the actors, whose env may lack it
    with report.stage("plan"):
        items, plan_errors, report.rows_in = plan_files(cfg.input, cfg.format, s3)
        existing = set()
        if not cfg.overwrite and sfs.exists(cfg.output, s3):
            root = sfs.resolve(cfg.output, s3)[1].rstrip("/")
            existing = {posixpath.relpath(sfs.resolve(u, s3)[1], root) for u in sfs.list_files(cfg.output, [f".{cfg.format}"], s3)}
        todo = [it for it in items if it["out"] not in existing]
    report.skipped_done = len(items) - len(todo)
    shards.write_errors(cfg.output, plan_errors, f"{STAGE}-plan", s3=s3)
    log.info("%d row(s) -> %d %s file(s): %d to write, %d exist; %d planning error(s)",
             report.rows_in, len(items), cfg.format, len(todo), report.skipped_done, len(plan_errors))
    weights = None
    if todo and cfg.needs_model:
        with report.stage("load_weights"):
            weights = read_codec_weights(cfg.codec_weights, cfg.codec.split("_", 1)[1], s3)
            check_weights_codec(weights, cfg.codec)
    totals: dict[str, float] = defaultdict(float)
    if todo:
        with report.stage("pipeline"):
            totals = _run_pipeline(cfg, todo, weights, s3)
    report.rows_out = int(totals["written"])
    report.errors = int(totals["errors"]) + len(plan_errors)
    report.audio_hours = totals["audio_s"] / 3600
    for k in ("read_s", "decode_s", "write_s"):
        report.stages_s["actors_" + k[:-2]] = totals[k]
    report.wall_s = time.perf_counter() - t_start
    report.extra = {"output": cfg.output, "format": cfg.format, "files_planned": len(items)}
    return report


def _run_pipeline(cfg: ExportConfig, items: list[dict], weights: bytes | None, s3: sfs.S3Options) -> dict:
    ray = init_ray(cfg.ray)
    from ray.data import ActorPoolStrategy

    batch = cfg.ray.batch_size
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / batch)))
    ds = ds.map_batches(
        ExportBatch,
        fn_constructor_kwargs=dict(
            output=cfg.output, fmt=cfg.format, subtype=cfg.subtype,
            weights=ray.put(weights) if weights is not None else None, window_seconds=cfg.window_seconds,
            s3=s3, use_gpu=cfg.ray.num_gpus_per_actor > 0, num_threads=max(1, round(cfg.ray.num_cpus_per_actor)),
        ),
        batch_size=batch,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=cfg.ray.num_actors),
        num_cpus=cfg.ray.num_cpus_per_actor,
        num_gpus=cfg.ray.num_gpus_per_actor,
    )
    return sum_summaries(ds, lambda t: log.info("export: %d/%d files, %d written, %d errors",
                                                t["files"], len(items), t["written"], t["errors"]))


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> ExportConfig:
    p = argparse.ArgumentParser(prog="codecsep export", description=__doc__.splitlines()[0])
    p.add_argument("args", nargs="*", metavar="SRC DST [key=value ...]",
                   help="input shard folder URI, output folder URI, then config overrides")
    p.add_argument("--config", default=str(job_config.default_config_path("export")))
    p.add_argument("--input", help="URI of the code shards (instead of SRC)")
    p.add_argument("--output", help="URI of the output folder (instead of DST)")
    p.add_argument("--format", choices=FORMATS)
    p.add_argument("--codec", help="official DAC model to decode with when no weights are given")
    p.add_argument("--codec-weights", help="DAC checkpoint URI (wav/flac)")
    p.add_argument("--window-seconds", type=float, help="decoder window length")
    p.add_argument("--overwrite", action="store_true", default=None, help="rewrite files that exist")
    add_ray_arguments(p, batch_help="output files per actor call")
    p.add_argument("-v", "--verbose", action="store_true")
    a, (src, dst), overrides = job_config.parse_paths(p, argv)
    setup_logging(a.verbose)
    return job_config.load_config(
        ExportConfig, a.config, overrides,
        input=a.input or src, output=a.output or dst, format=a.format, codec=a.codec,
        codec_weights=a.codec_weights, window_seconds=a.window_seconds, overwrite=a.overwrite,
        **ray_values(a),
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli("export", lambda: run(parse_args(argv)).emit(), (DacWeightsUnavailable,))


if __name__ == "__main__":
    raise SystemExit(main())
