"""`codecsep prompts`: texts and example clips -> prompt table (CLAP, 512-d), computed once and reused by
`separate --prompt-table` so that later runs need no text encoder at all.

`--audio NAME=PATH` (query by example) puts the CLAP audio-branch embedding of an example
clip in the table under NAME: a wav/flac/ogg file, a `.dac` file, or a code shard
(`PATH#ID` picks a row; a shard of one row needs no `#ID`). Codes are decoded with the codec
(`--codec-weights`, else DAC's official model)."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from jobs.engine import JobParser, JobReport
from storage import fs as sfs

log = logging.getLogger("codecsep.prompts")


@dataclass(frozen=True)
class PromptsConfig:
    output: str | None = None  # URI of the prompt table (.parquet)
    prompts: list[str] = field(default_factory=list)
    prompts_file: str | None = None  # one prompt per line, added to `prompts`
    audio: list[str] = field(default_factory=list)  # NAME=PATH example clips (query by example)
    clap_checkpoint: str | None = None  # null: the default AudioSep checkpoint, downloaded by laion-clap
    codec_weights: str | None = (
        None  # DAC checkpoint URI for .dac / code-shard examples; null: official, for their codec
    )
    device: str = "cpu"


def collect_prompts(cfg: PromptsConfig) -> list[str]:
    texts = list(cfg.prompts)
    if cfg.prompts_file:
        texts += [line.strip() for line in sfs.read_bytes(cfg.prompts_file).decode().splitlines() if line.strip()]
    unique = list(dict.fromkeys(texts))
    if not unique and not cfg.audio:
        raise ValueError("no prompts: pass --prompt TEXT (repeatable), --prompts-file FILE or --audio NAME=PATH")
    return unique


def parse_examples(cfg: PromptsConfig, texts: list[str]) -> dict[str, str]:
    """`NAME=PATH` entries -> {name: path}; names must be new and distinct."""
    examples: dict[str, str] = {}
    for entry in cfg.audio:
        name, sep, path = entry.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"--audio {entry!r}: expected NAME=PATH")
        name = name.strip()
        if name in examples or name in texts:
            raise ValueError(f"--audio {entry!r}: the prompt name {name!r} is given twice")
        examples[name] = path.strip()
    return examples


def code_rows(path: str) -> list[dict]:
    """The channel rows of a `.dac` file or of one code-shard row (`URI#ID`)."""
    from codecsep_core import DAC_CODECS
    from storage import shards
    from storage.dacfile import dac_source_id, dac_to_rows, read_dac

    if path.endswith(".dac"):
        dac = read_dac(sfs.read_bytes(path), path)
        codec = next((c for c in DAC_CODECS.values() if c.n_codebooks == dac.codes.shape[1]), None)
        if codec is None:
            raise ValueError(f"{path}: {dac.codes.shape[1]} codebooks match no known DAC codec")
        return dac_to_rows(dac, "example", codec)
    uri, _, clip_id = path.partition("#")
    rows = shards.read_table(uri).to_pylist()
    if clip_id:
        rows = [r for r in rows if r["id"] == clip_id or (r.get("dac_channels") and dac_source_id(r) == clip_id)]
    elif len({dac_source_id(r) if r.get("dac_channels") else r["id"] for r in rows}) > 1:
        raise ValueError(f"{uri} holds several clips: name one as {uri}#ID")
    if not rows:
        raise ValueError(f"{path}: no such row")
    return rows


def read_example(path: str, cfg: PromptsConfig, codec_cache: dict) -> tuple[np.ndarray, int]:
    """An example clip as mono float32 audio and its sample rate (channels averaged)."""
    if path.lower().endswith((".wav", ".flac", ".ogg")):
        audio, rate = sf.read(io.BytesIO(sfs.read_bytes(path)), dtype="float32", always_2d=True)
        return audio.mean(axis=1), rate
    from codecsep_core.dac_codec import DacCodec
    from jobs import resolve
    from jobs.decode import decode_rows, with_dac_defaults
    from storage.schema import codes_to_numpy

    rows = [with_dac_defaults({**r, "codes": codes_to_numpy(r["codes"])}, len(r["codes"][0])) for r in code_rows(path)]
    if "codec" not in codec_cache:
        weights, _ = resolve.codec_weights(cfg.codec_weights, None if cfg.codec_weights else rows[0]["codec"])
        codec_cache["codec"] = DacCodec.load(weights)
    codec = codec_cache["codec"]
    if rows[0]["codec"] != codec.info.name:
        raise ValueError(f"{path} holds {rows[0]['codec']} codes, the codec weights are {codec.info.name}")
    audio = decode_rows(codec, sorted(rows, key=lambda r: r["dac_channel"]), separated=False)
    return audio.mean(axis=0), rows[0]["dac_sample_rate"]


def run(cfg: PromptsConfig) -> JobReport:
    from codecsep_core.prompt_encoder import PromptEncoder
    from storage.prompt_table import PromptTable, write_prompt_table

    if not cfg.output:
        raise ValueError("missing --output (URI of the prompt table)")
    t0 = time.perf_counter()
    texts = collect_prompts(cfg)
    examples = parse_examples(cfg, texts)
    report = JobReport("prompts", rows_in=len(texts) + len(examples))
    with report.stage("read_examples"):
        codec_cache: dict = {}
        clips = {name: read_example(path, cfg, codec_cache) for name, path in examples.items()}
    with report.stage("load_clap"):
        encoder = PromptEncoder(cfg.clap_checkpoint, device=cfg.device)
    with report.stage("embed"):
        vectors = [encoder.encode(texts).numpy()]
        vectors += [encoder.encode_audio([audio], rate).numpy() for audio, rate in clips.values()]
    names = tuple(texts) + tuple(clips)
    branches = ("text",) * len(texts) + ("audio",) * len(clips)
    write_prompt_table(cfg.output, PromptTable(names, np.concatenate(vectors), encoder.name, branches))
    report.rows_out = len(names)
    report.audio_hours = sum(len(a) / r for a, r in clips.values()) / 3600
    report.wall_s = time.perf_counter() - t0
    report.extra = {"output": cfg.output, "encoder": encoder.name, "audio_prompts": sorted(clips)}
    return report


def parse_args(argv: list[str]) -> PromptsConfig:
    p = JobParser("prompts", PromptsConfig, __doc__.splitlines()[0])
    p.add_argument("--output", help="URI of the prompt table to write")
    p.add_argument("--prompt", dest="prompts", action="append", default=[], help="repeatable")
    p.add_argument("--prompts-file", help="text file, one prompt per line")
    p.add_argument(
        "--audio",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="example clip as a prompt named NAME: wav/flac/ogg, .dac, or code shards URI[#ID] (repeatable)",
    )
    p.add_argument("--codec-weights", help="DAC checkpoint URI, to decode .dac / code-shard examples")
    p.add_argument("--clap-checkpoint", help="CLAP checkpoint path")
    return p.parse_config(argv)


def command(argv: list[str]) -> None:
    """`codecsep prompts`: parse, run, print the report (exit codes: jobs.cli)."""
    run(parse_args(argv)).emit()


if __name__ == "__main__":
    import sys

    from jobs.cli import main

    raise SystemExit(main(["prompts", *sys.argv[1:]], program=True))
