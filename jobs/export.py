"""`codecsep export SRC DST --format wav|flac|dac`: code shards -> audio or `.dac` files.

Input: code shards (`ingest`) or separated shards (`separate`, with a `prompt` column).
Output: `DST/<id>.<ext>`, or `DST/<id>/<prompt slug>.<ext>` for separated rows (and
`<prompt slug>.residual.<ext>` for their residual stems); a
multi-channel source (rows `<id>#ch<k>`, see `storage.schema`) becomes one file again.

The driver reads only the id/prompt/channel/codec columns (shard footers and those
columns, in parallel) to group the rows of each output file (they may sit in different
shards) into one work item per file; the stage reads the shards it needs, writes each file
whole, and returns one manifest row per file (`DST/_manifest/`: the file, its clip id,
prompt and duration). That is how a job whose output is one file per row fits the one
runner: the manifest rows are its output rows, keyed on the file's path under DST, so
resume, `_errors` and exactly-once are the runner's, as for every job (a file rewritten
after a crash is the same file under the same name). Audio export decodes with DAC (the
codec the rows name: `--codec-weights`, else DAC's official download for it) and
restores what `ingest` recorded: original sample rate and length, and loudness (as
DAC's `decompress`: the decoded clip is set to the input loudness; a separated clip gets
the gain that undoes ingest's -16 LUFS normalisation instead, so a quiet source stays
quiet). `.dac` export needs no model: the codes and DAC metadata are written as DAC's
`DACFile.save` would, chunked files included, so `python -m dac decode` reads them.

Rerunning skips files already written (`overwrite=true` starts afresh and rewrites them);
every file is written atomically, so a crash never leaves a partial one.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa

from jobs import resolve
from jobs.decode import dac_bytes, decode_rows, with_dac_defaults
from jobs.engine import (
    SRC_DST,
    BadInput,
    ErrorRow,
    InputFile,
    Items,
    JobParser,
    JobReport,
    Planned,
    RayOptions,
    RunOptions,
    Stage,
    StageOutput,
    add_ray_arguments,
    digest,
    in_folder,
    listed_files,
    require,
    run_stage,
)
from storage import fs as sfs
from storage import shards
from storage.audio import encode_audio
from storage.dacfile import dac_source_id
from storage.exported import file_name, prompt_slugs
from storage.schema import MalformedCodes, codes_to_numpy, validate_row

log = logging.getLogger("codecsep.export")

FORMATS = ("wav", "flac", "dac")
KEY_COLUMNS = ("id", "prompt", "stem", "codec", "dac_channel", "dac_channels")
MANIFEST_DIR = "_manifest"
MANIFEST_ROW_BYTES = 100.0  # a manifest row: the file, its clip id, prompt, seconds and format


@dataclass(frozen=True)
class ExportConfig:
    input: str | None = None  # URI of a folder of code shards (local, s3://, memory://)
    output: str | None = None  # URI of the output folder: <id>.<ext>, or <id>/<prompt slug>.<ext>
    format: str = "wav"  # wav | flac | dac (.dac needs no model; DAC's `python -m dac decode` reads it)
    codec_weights: str | None = (
        None  # DAC checkpoint URI for wav/flac; null: DAC's official download for the rows' codec
    )
    window_seconds: float = 5.0  # decoder window; windows overlap by the receptive field, so seams are exact
    subtype: str = "PCM_16"  # soundfile subtype of wav/flac files
    overwrite: bool = False  # true: forget earlier runs and rewrite every file
    ray: RayOptions = field(default_factory=lambda: RayOptions(batch_size=8))
    run: RunOptions = field(default_factory=RunOptions)

    def check(self) -> None:
        require(self, ("input", "output"), "codecsep export SRC DST")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.window_seconds <= 0:
            raise ValueError("window_seconds must be positive")


# --------------------------------------------------------------------------- stage


class ExportStage(Stage):
    """Output files in (the rows of each), files written, one manifest row per file out."""

    name = "export"
    key = "id"  # the file's path under the output folder
    folders = (MANIFEST_DIR,)

    def __init__(self, output: str, fmt: str, subtype: str, weights_uri: str | None, window_seconds: float):
        self.output, self.fmt, self.subtype = output, fmt, subtype
        self.weights_uri, self.window_seconds = weights_uri, window_seconds
        self.weights: bytes | None = None

    def prepare(self, due: pa.Table | None) -> None:
        """Audio needs the decoder of the codec the due rows name (`--codec-weights`, else
        DAC's official model for it); `.dac` files need no model."""
        if self.fmt == "dac" or due is None or not due.num_rows:
            return
        codecs = {c for c in due["codec"].to_pylist() if c is not None}
        if len(codecs) > 1 and not self.weights_uri:
            raise ValueError(f"rows of several codecs {sorted(codecs)}: export each with its --codec-weights")
        self.weights, _ = resolve.codec_weights(
            self.weights_uri, None if self.weights_uri else next(iter(codecs), None)
        )

    def settings(self) -> dict[str, str]:
        weights = {"codec_weights": digest(self.weights)} if self.weights else {}
        return {"format": self.fmt, "subtype": self.subtype, **weights}

    def output_row_bytes(self, input_row_bytes: float) -> float:
        return MANIFEST_ROW_BYTES

    def setup(self, device: str) -> None:
        from codecsep_core.dac_codec import DacCodec

        self.codec = (
            DacCodec.load(self.weights, window_seconds=self.window_seconds, device=device) if self.weights else None
        )
        self._shard: tuple[str, pa.Table] | None = None  # the last shard read; items come sorted by shard

    def process(self, batch: pa.Table) -> StageOutput:
        manifest, errors, tally = [], [], defaultdict(float)
        items = batch.select(["id", "clip_id", "prompt", "shards", "rows"]).to_pylist()
        for item in items:
            tally["input_rows"] += len(item["rows"])
            try:
                seconds = self._export(item, tally)
            except BadInput as e:
                errors.append(
                    ErrorRow(
                        item["id"], str(e), ", ".join(sorted(set(item["shards"]))), item["clip_id"], item["prompt"]
                    )
                )
                continue
            tally["audio_s"] += seconds
            manifest.append(
                {
                    "id": item["id"],
                    "clip_id": item["clip_id"],
                    "prompt": item["prompt"],
                    "seconds": seconds,
                    "format": self.fmt,
                }
            )
        rows = in_folder(pa.Table.from_pylist(manifest, MANIFEST_SCHEMA), MANIFEST_DIR) if manifest else None
        return StageOutput(rows=rows, errors=errors, tally=dict(tally))

    def _rows(self, item: dict) -> list[dict]:
        """The item's rows, `codes` as integer arrays [n_codebooks, n_frames] (a row whose
        codes are malformed keeps the Arrow value, for `validate_row` to name the fault)."""
        rows = []
        for shard, index in zip(item["shards"], item["rows"]):
            if self._shard is None or self._shard[0] != shard:
                self._shard = (shard, shards.read_table(shard))
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
        from codecsep_core import DAC_CODECS

        t0 = time.perf_counter()
        rows = self._rows(item)
        for row in rows:
            spec = DAC_CODECS.get(row.get("codec"))
            reason = f"unknown codec {row.get('codec')!r}" if spec is None else validate_row(row, spec)
            if reason is not None:
                raise BadInput(f"row {row.get('id')!r}: {reason}")
        rows = sorted((with_dac_defaults(r, r["codes"].shape[1]) for r in rows), key=lambda r: r["dac_channel"])
        t1 = time.perf_counter()
        tally["read_s"] += t1 - t0
        if self.fmt == "dac":
            data = dac_bytes(rows)
        else:
            if self.codec is None or rows[0]["codec"] != self.codec.info.name:
                have = self.codec.info.name if self.codec else "none"
                raise BadInput(
                    f"rows hold {rows[0]['codec']} codes, the codec weights are {have}: pass {rows[0]['codec']} weights"
                )
            if [r["dac_channel"] for r in rows] != list(range(rows[0]["dac_channels"])):
                raise BadInput(f"channels {[r['dac_channel'] for r in rows]} of {rows[0]['dac_channels']} present")
            audio = decode_rows(self.codec, rows, separated=item["prompt"] is not None)
            data = encode_audio(audio, rows[0]["dac_sample_rate"], self.fmt, self.subtype)
        t2 = time.perf_counter()
        tally["decode_s"] += t2 - t1
        sfs.write_bytes_atomic(sfs.join(self.output, item["id"]), data)
        tally["write_s"] += time.perf_counter() - t2
        return rows[0]["dac_original_length"] / rows[0]["dac_sample_rate"]


MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),  # the file, relative to the output folder
        pa.field("clip_id", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("seconds", pa.float64()),
        pa.field("format", pa.string()),
    ]
)


# --------------------------------------------------------------------------- planning


def read_keys(shard: str) -> pa.Table | str:
    """The grouping columns of one shard (those it has), without its codes; or why not."""
    try:
        return shards.read_present_columns(shard, KEY_COLUMNS, required=("id",))
    except shards.MissingColumns as e:
        return f"unreadable shard: {e}"
    except pa.ArrowInvalid as e:
        return f"unreadable shard (not Parquet): {e}"


def _safe_id(clip_id: str) -> bool:
    parts = clip_id.split("/")
    return bool(clip_id) and not clip_id.startswith("/") and ".." not in parts and "" not in parts


def plan_files(due: list[InputFile], ext: str) -> Items:
    """One item per output file of the due shards, plus error items for unreadable shards
    and unsafe ids. Shard keys are read in parallel threads (I/O bound). The rows of one
    file may sit in several shards: they are grouped when those shards are due together
    (the runner keeps them in one wave)."""
    groups: dict[tuple[str, str | None, str | None], list[tuple[str, int]]] = defaultdict(list)
    codec_of: dict[tuple[str, str | None, str | None], str | None] = {}
    errors = []
    files = [f.uri for f in due]
    with ThreadPoolExecutor(max_workers=16) as pool:
        for shard, keys in zip(files, pool.map(read_keys, files)):
            if isinstance(keys, str):
                errors.append(ErrorRow(shard, keys, shard, named=False))
                continue
            for index, row in enumerate(keys.to_pylist()):
                base = dac_source_id(row) if row.get("dac_channels") is not None else row["id"]
                group = (base, row.get("prompt"), row.get("stem"))
                groups[group].append((shard, index))
                codec_of.setdefault(group, row.get("codec"))
    slugs = prompt_slugs(p for _, p, _ in groups if p is not None)
    items = []
    for (base, prompt, stem), refs in groups.items():
        shard, row = refs[0]
        if base is None or not _safe_id(base):
            reason = f"id {base!r} cannot name a file under the output folder"
            errors.append(ErrorRow(f"{shard}#row{row}", reason, shard, id=base, prompt=prompt, named=base is not None))
            continue
        items.append(
            {
                "id": file_name(base, ext, None if prompt is None else slugs[prompt], stem),
                "clip_id": base,
                "prompt": prompt,
                "codec": codec_of[(base, prompt, stem)],
                "shards": [s for s, _ in refs],
                "rows": [i for _, i in refs],
            }
        )
    items.sort(key=lambda it: (it["shards"][0], it["rows"][0]))
    return Items(pa.Table.from_pylist(items, ITEM_SCHEMA), errors, inputs="shards")


ITEM_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("clip_id", pa.string()),
        ("prompt", pa.string()),
        ("codec", pa.string()),
        ("shards", pa.list_(pa.string())),
        ("rows", pa.list_(pa.int64())),
    ]
)


def run(cfg: ExportConfig) -> JobReport:
    cfg.check()
    report = JobReport(ExportStage.name)
    report.extra["format"] = cfg.format
    stage = ExportStage(cfg.output, cfg.format, cfg.subtype, cfg.codec_weights, cfg.window_seconds)
    inputs = Planned(lambda: listed_files(cfg.input, (".parquet",)), lambda due, _: plan_files(due, cfg.format))
    return run_stage(stage, inputs, cfg.output, cfg.ray, cfg.run, report, fresh=cfg.overwrite)


def parse_args(argv: list[str] | None) -> ExportConfig:
    p = JobParser("export", ExportConfig, __doc__.splitlines()[0], SRC_DST, "input shard folder URI, output folder URI")
    p.add_argument("--input", help="URI of the code shards (instead of SRC)")
    p.add_argument("--output", help="URI of the output folder (instead of DST)")
    p.add_argument("--format", choices=FORMATS)
    p.add_argument(
        "--codec-weights", help="DAC checkpoint URI (wav/flac; default: DAC's official download for the rows' codec)"
    )
    p.add_argument("--window-seconds", type=float, help="decoder window length")
    p.add_argument("--overwrite", action="store_true", default=None, help="forget earlier runs and rewrite every file")
    add_ray_arguments(p, batch_help="output files per actor call")
    return p.parse_config(argv)


def command(argv: list[str]) -> None:
    """`codecsep export`: parse, run, print the report (exit codes: jobs.cli)."""
    run(parse_args(argv)).emit()


if __name__ == "__main__":
    import sys

    from jobs.cli import main

    raise SystemExit(main(["export", *sys.argv[1:]], program=True))
