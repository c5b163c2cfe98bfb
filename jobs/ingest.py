"""`codecsep ingest SRC DST`: audio files (wav/flac/ogg) or `.dac` files -> code shards.

The driver lists the files and plans one work item per file (its id is its path under SRC
without the extension; a second file with the same id is an error row); the stage reads
each file, encodes audio with DAC as DAC's `compress` does (loudness to -16 LUFS, the
input loudness kept in `dac_input_db`) or reads a `.dac` file as it is, and returns one row
per channel. The codec follows from the weights given (`--codec-weights`), else `codec=`,
else DAC 16 kHz; DAC weights are loaded only by actors that meet an audio file. Every row
keeps the URI of its file in `source`, the key the runner resumes on.
"""

from __future__ import annotations

import logging
import posixpath
import time
from dataclasses import dataclass, field

import pyarrow as pa

from jobs import resolve
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
    listed_files,
    require,
    run_stage,
)
from storage import fs as sfs
from storage.audio import AUDIO_SUFFIXES, UnreadableAudio, read_audio

log = logging.getLogger("codecsep.ingest")

DAC_SUFFIX = ".dac"
AUDIO_TO_CODES = 20  # about how much smaller codes are than a 16-bit wav of the same clip (DAC 16 kHz: 6 kbps)


@dataclass(frozen=True)
class IngestConfig:
    input: str | None = None  # URI of a folder (or one file) of audio / .dac files (local, s3://, memory://)
    output: str | None = None  # URI of the code shards; errors go to <output>/_errors/
    codec: str | None = None  # null: the codec of codec_weights (dac_16khz without weights)
    codec_weights: str | None = None  # DAC checkpoint URI; null: DAC's official download for the codec
    window_seconds: float = 5.0  # encoder window; windows overlap by the receptive field, so seams are exact
    ray: RayOptions = field(default_factory=lambda: RayOptions(batch_size=8))
    run: RunOptions = field(default_factory=RunOptions)

    def check(self) -> None:
        require(self, ("input", "output"), "codecsep ingest SRC DST")
        resolve.check_codec_name(self.codec)
        if self.window_seconds <= 0:
            raise ValueError("window_seconds must be positive")


class IngestStage(Stage):
    """Files in, one code-shard row per channel out."""

    name = "ingest"
    key = "source"

    def __init__(self, codec: str | None, weights_uri: str | None, window_seconds: float):
        self.codec_name, self.weights_uri, self.window_seconds = (
            codec or resolve.DEFAULT_CODEC,
            weights_uri,
            window_seconds,
        )
        self.codec_given = codec is not None
        self.weights: bytes | None = None
        self._dac = None

    def prepare(self, due: pa.Table | None) -> None:
        """The codec follows from the weights (`--codec-weights`, else DAC's official model),
        loaded when due audio files need an encoder or weights were given; `.dac` files
        alone need no model."""
        if due is None or not due.num_rows:
            return
        if self.weights_uri or any(not u.lower().endswith(DAC_SUFFIX) for u in due["source"].to_pylist()):
            self.weights, info = resolve.codec_weights(self.weights_uri, self.codec_name if self.codec_given else None)
            self.codec_name = info.name

    def settings(self) -> dict[str, str]:
        """The codec, and the weights audio is encoded with (the encoder window does not
        change the codes: windows overlap by the receptive field)."""
        weights = {"codec_weights": digest(self.weights)} if self.weights else {}
        return {"codec": self.codec_name, **weights}

    def output_row_bytes(self, input_row_bytes: float) -> float:
        return input_row_bytes / AUDIO_TO_CODES

    def setup(self, device: str) -> None:
        from codecsep_core import DAC_CODECS

        self.codec = DAC_CODECS[self.codec_name]
        self.device = device

    def _codec(self):
        """The DAC model, loaded on the first audio file this actor meets."""
        if self._dac is None:
            from codecsep_core.dac_codec import DacCodec

            if self.weights is None:
                raise BadInput("audio file, but the job planned no codec weights")
            self._dac = DacCodec.load(self.weights, window_seconds=self.window_seconds, device=self.device)
        return self._dac

    def process(self, batch: pa.Table) -> StageOutput:
        from storage.schema import DAC_SHARD_SCHEMA, table_from_rows

        rows, errors, tally = [], [], {"audio_s": 0.0, "read_s": 0.0, "encode_s": 0.0}
        for item in batch.select(["source", "id"]).to_pylist():
            try:
                file_rows, seconds = self._rows(item["source"], item["id"], tally)
            except (BadInput, UnreadableAudio) as e:
                errors.append(ErrorRow(item["source"], str(e), item["source"], id=item["id"]))
                continue
            rows += [{**r, "source": item["source"]} for r in file_rows]
            tally["audio_s"] += seconds
        table = table_from_rows(rows, DAC_SHARD_SCHEMA) if rows else None
        return StageOutput(rows=table, errors=errors, tally=tally)

    def _rows(self, uri: str, clip_id: str, tally: dict) -> tuple[list[dict], float]:
        """-> (the file's rows, its duration in seconds); BadInput for a file that cannot be ingested."""
        from storage.dacfile import DacFile, InvalidDacFile, dac_to_rows, read_dac
        from storage.schema import validate_row

        t0 = time.perf_counter()
        data = sfs.read_bytes(uri)
        t1 = time.perf_counter()
        tally["read_s"] += t1 - t0
        if uri.lower().endswith(DAC_SUFFIX):
            try:
                dac = read_dac(data, posixpath.basename(uri))
            except InvalidDacFile as e:
                raise BadInput(str(e)) from None
            if dac.codes.shape[-1] == 0:
                raise BadInput("empty .dac file (0 frames)")
        else:
            audio, sample_rate = read_audio(data)
            try:
                compressed = self._codec().compress(audio, sample_rate)
            except ValueError as e:  # the audio's fault; a device failure (CUDA OOM) stops the job
                raise BadInput(f"cannot encode this audio with {self.codec_name}: {e}") from None
            dac = DacFile(
                codes=compressed.codes,
                chunk_length=compressed.codes.shape[-1],
                original_length=audio.shape[1],
                input_db=compressed.input_db,
                channels=audio.shape[0],
                sample_rate=sample_rate,
                padding=True,
            )
            tally["encode_s"] += time.perf_counter() - t1
        rows = dac_to_rows(dac, clip_id, self.codec)
        for row in rows:  # a file lands whole or not at all, so export can rebuild it
            reason = validate_row(row, self.codec)
            if reason is not None:
                raise BadInput(f"not {self.codec_name} codes: {reason}")
        return rows, dac.original_length / dac.sample_rate


SUFFIXES = tuple(s for suf in AUDIO_SUFFIXES + (DAC_SUFFIX,) for s in (suf, suf.upper()))


def clip_ids(src: str, files: list[InputFile]) -> dict[str, str]:
    """URI -> clip id: the file's path under `src` without its extension."""
    root = sfs.resolve(src)[1].rstrip("/")
    ids = {}
    for f in files:
        path = sfs.resolve(f.uri)[1]
        ids[f.uri] = posixpath.splitext(posixpath.relpath(path, root) if path != root else posixpath.basename(path))[0]
    return ids


def plan_items(src: str, due: list[InputFile], listed: list[InputFile]) -> Items:
    """One item per due file (URI, id). Files sharing an id (`a.wav` beside `a.flac`, or a
    new `a.flac` where `a.wav` was ingested before): the first in URI order of the whole
    listing wins, the others are error rows."""
    ids, owner = clip_ids(src, listed), {}
    for f in listed:
        owner.setdefault(ids[f.uri], f.uri)
    uris, errors = [], []
    for f in due:
        clip_id = ids[f.uri]
        if owner[clip_id] != f.uri:
            errors.append(
                ErrorRow(f.uri, f"duplicate id {clip_id!r}: already taken by {owner[clip_id]}", f.uri, id=clip_id)
            )
        else:
            uris.append(f.uri)
    table = pa.table({"source": pa.array(uris, pa.string()), "id": pa.array([ids[u] for u in uris], pa.string())})
    return Items(table, errors)


def run(cfg: IngestConfig) -> JobReport:
    cfg.check()
    report = JobReport(IngestStage.name)
    stage = IngestStage(cfg.codec, cfg.codec_weights, cfg.window_seconds)
    inputs = Planned(lambda: listed_files(cfg.input, SUFFIXES), lambda due, listed: plan_items(cfg.input, due, listed))
    run_stage(stage, inputs, cfg.output, cfg.ray, cfg.run, report)
    report.extra["codec"] = stage.codec_name
    return report


def parse_args(argv: list[str] | None) -> IngestConfig:
    p = JobParser("ingest", IngestConfig, __doc__.splitlines()[0], SRC_DST, "input folder/file URI, output folder URI")
    p.add_argument("--input", help="URI of the audio / .dac files (instead of SRC)")
    p.add_argument("--output", help="URI of the code shards (instead of DST)")
    p.add_argument("--codec", help="codec of the output, e.g. dac_44khz (default: that of --codec-weights)")
    p.add_argument("--codec-weights", help="DAC checkpoint URI (default: DAC's official download)")
    p.add_argument("--window-seconds", type=float, help="encoder window length")
    add_ray_arguments(p, batch_help="files per actor call")
    return p.parse_config(argv)


def command(argv: list[str]) -> None:
    """`codecsep ingest`: parse, run, print the report (exit codes: jobs.cli)."""
    run(parse_args(argv)).emit()


if __name__ == "__main__":
    import sys

    from jobs.cli import main

    raise SystemExit(main(["ingest", *sys.argv[1:]], program=True))
