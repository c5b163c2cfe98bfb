"""`codecsep prepare-train SRC DST`: folders of stems with captions -> training shards.

One row per (mixture, target source): the mixture's codes, the target's codes and the
target's prompt, so training and evaluation run in code space. Two input layouts:

- `dnr` (Divide and Remaster v2): one folder per clip with `mix.wav`, `speech.wav`,
  `music.wav`, `sfx.wav` and `annots.csv` (sound-effect labels with start/end times in
  seconds). Clips are cut into `segment_seconds` windows; prompts are "speech", "music"
  and, for the sfx stem, the labels of the effects heard in that window, or `sfx_prompt`
  (e.g. "sound effects", DnR's own prompt) where one is set (no effect heard: no sfx row).
- `generic`: audio files anywhere under SRC, with a `captions.csv` (`file,caption`, file
  relative to SRC) or, without one, each file's folder name as its caption. Mixtures
  are drawn at random (seeded): `mixing.sources_per_mix` stems of distinct captions,
  random `segment_seconds` excerpts, random gains in `mixing.gain_db`.

Mixture and stems get one gain (the mixture normalised to -16 LUFS, as DAC's `compress`
does, then peak-limited: `codecsep_core.mixing`), so a target's codes are of the stem as
heard in the mixture. Codes come from the DAC encoder (`codecsep_core.dac_codec`). Rows
go to DST/train and DST/val (split by clip, `val_fraction`); `keep_audio=true` also stores
the mixture and stem audio at the codec rate, which waveform metrics (evaluate) and the
SI-SDR loss use.

The driver plans one work item per mixture (all random draws made there, seeded); the
stage reads and mixes the audio, encodes it, and returns its rows, which the runner writes
to DST/train or DST/val (resumable like every job, keyed on `mix_id`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import posixpath
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from codecsep_core import mixing
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
    in_folder,
    listed_files,
    require,
    run_stage,
)
from storage import fs as sfs
from storage.audio import AUDIO_SUFFIXES, read_audio
from storage.schema import codes_to_arrow

log = logging.getLogger("codecsep.prepare_train")

LAYOUTS = ("auto", "dnr", "generic")
DNR_STEMS = ("speech", "music", "sfx")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class MixingConfig:
    n_mixtures: int = 1000
    sources_per_mix: list[int] = field(default_factory=lambda: [2, 3])  # [min, max]
    gain_db: list[float] = field(default_factory=lambda: [-6.0, 6.0])  # [min, max] per stem
    seed: int = 0


@dataclass(frozen=True)
class PrepareTrainConfig:
    input: str | None = None
    output: str | None = None
    layout: str = "auto"  # auto | dnr | generic
    sfx_prompt: str | None = None  # dnr layout: the sfx stem's prompt; null: the labels of the effects heard
    captions: str = "captions.csv"  # generic layout: file,caption (relative to SRC)
    codec: str | None = None  # null: the codec of codec_weights (dac_16khz without weights)
    codec_weights: str | None = None  # DAC checkpoint URI; null: DAC's official download
    segment_seconds: float = 2.0  # mixture length (the masker's training window in the paper)
    val_fraction: float = 0.1
    keep_audio: bool = False
    window_seconds: float = 5.0  # encoder window
    mixing: MixingConfig = field(default_factory=MixingConfig)
    ray: RayOptions = field(default_factory=lambda: RayOptions(num_cpus_per_actor=1.0))
    run: RunOptions = field(default_factory=RunOptions)

    def check(self) -> None:
        require(self, ("input", "output"), "codecsep prepare-train SRC DST")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        resolve.check_codec_name(self.codec)
        if self.segment_seconds <= 0 or not 0 <= self.val_fraction < 1:
            raise ValueError("segment_seconds must be positive and val_fraction in [0, 1)")
        lo, hi = self.mixing.sources_per_mix
        if not 1 <= lo <= hi:
            raise ValueError(f"mixing.sources_per_mix must be [min, max] with 1 <= min <= max, got {[lo, hi]}")


def split_of(key: str, val_fraction: float) -> str:
    """Deterministic train/val split by a clip key (all windows of a clip stay together)."""
    u = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64
    return "val" if u < val_fraction else "train"


# --------------------------------------------------------------------------- planning


def audio_frames(uri: str) -> tuple[int, int]:
    """(n_samples, sample_rate) from the file header."""
    import soundfile as sf

    fs, path = sfs.resolve(uri)
    with fs.open(path, "rb") as f:
        info = sf.info(f)
    return int(info.frames), int(info.samplerate)


def dnr_clips(src: str) -> list[InputFile]:
    """The clip folders' mix.wav files: the inputs of the DnR layout."""
    return [f for f in listed_files(src, ("mix.wav",)) if posixpath.basename(f.uri) == "mix.wav"]


def plan_dnr(src: str, cfg: PrepareTrainConfig, clips: list[InputFile]) -> list[dict]:
    """One item per `segment_seconds` window of these clip folders (their mix.wav)."""
    items = []
    for mix_uri in (f.uri for f in clips):
        folder = posixpath.dirname(mix_uri)
        clip = posixpath.relpath(sfs.resolve(folder)[1], sfs.resolve(src)[1].rstrip("/"))
        n, rate = audio_frames(mix_uri)
        seg = int(round(cfg.segment_seconds * rate))
        split = split_of(clip, cfg.val_fraction)
        for k in range(max(1, n // seg)):
            items.append(
                {
                    "kind": "dnr",
                    "input": mix_uri,
                    "mix_id": f"{clip}/{k:04d}",
                    "split": split,
                    "folder": folder,
                    "start": k * seg,
                    "stop": min(n, (k + 1) * seg),
                }
            )
    return items


def read_captions(src: str, captions: str, stems: list[str]) -> dict[str, str]:
    """stem URI -> caption: from the captions file when SRC has one, else the folder name."""
    root = sfs.resolve(src)[1].rstrip("/")
    rel = {posixpath.relpath(sfs.resolve(u)[1], root): u for u in stems}
    uri = sfs.join(src, captions)
    if sfs.exists(uri):
        out = {}
        for row in csv.DictReader(io.StringIO(sfs.read_bytes(uri).decode())):
            if row.get("file") not in rel:
                raise ValueError(f"{uri}: no audio file {row.get('file')!r} under {src}")
            out[rel[row["file"]]] = row["caption"].strip()
        return out
    log.info("no %s in %s: captions are the stems' folder names", captions, src)
    return {u: posixpath.basename(posixpath.dirname(r)) or posixpath.splitext(r)[0] for r, u in rel.items()}


def plan_generic(src: str, cfg: PrepareTrainConfig) -> list[dict]:
    """Random mixtures of stems with distinct captions, all draws made here (seeded)."""
    stems = sfs.list_files(src, AUDIO_SUFFIXES)
    captions = read_captions(src, cfg.captions, stems)
    by_caption: dict[str, list[str]] = defaultdict(list)
    for uri, caption in sorted(captions.items()):
        by_caption[caption].append(uri)
    names = sorted(by_caption)
    lo, hi = cfg.mixing.sources_per_mix
    if len(names) < lo:
        raise ValueError(f"{src}: {len(names)} distinct caption(s), but mixtures need at least {lo}")
    rng = np.random.default_rng(cfg.mixing.seed)
    items = []
    for i in range(cfg.mixing.n_mixtures):
        k = int(rng.integers(lo, min(hi, len(names)) + 1))
        chosen = sorted(rng.choice(len(names), size=k, replace=False).tolist())
        files = [by_caption[names[c]][int(rng.integers(len(by_caption[names[c]])))] for c in chosen]
        mix_id = f"mix{i:06d}"
        items.append(
            {
                "kind": "generic",
                "input": f"{src}#{mix_id}",
                "mix_id": mix_id,
                "split": split_of(mix_id, cfg.val_fraction),
                "stems": files,
                "captions": [names[c] for c in chosen],
                "gains_db": rng.uniform(*cfg.mixing.gain_db, size=k).tolist(),
                "offsets": rng.uniform(size=k).tolist(),
            }
        )
    return items


def generic_inputs(items: list[dict]) -> list[InputFile]:
    """Each drawn mixture stands for an input of its own, versioned by its draw: stems (and
    their sizes), gains and offsets. A grown stems folder draws other mixtures: their
    versions change, and the runner names them instead of mixing two plans."""
    return [InputFile(item["input"], 0, digest(json.dumps(item, sort_keys=True).encode())) for item in items]


def detect_layout(src: str) -> str:
    return "dnr" if any(posixpath.basename(u) == "mix.wav" for u in sfs.list_files(src, ["mix.wav"])) else "generic"


# --------------------------------------------------------------------------- reading stems


def dnr_labels(annots: bytes, start_s: float, stop_s: float) -> list[str]:
    """Sound-effect labels of annots.csv whose [start, end) overlaps the window, in order."""
    rows = list(csv.DictReader(io.StringIO(annots.decode())))
    if not rows:
        return []
    cols = {c.lower().strip(): c for c in rows[0] if c}

    def pick(*names):
        found = next((cols[n] for n in names if n in cols), None)
        if found is None:
            raise ValueError(f"annots.csv has none of the columns {names}; columns: {sorted(cols)}")
        return found

    label, start, end = (
        pick("label", "class_label", "class", "class_name", "category"),
        pick("start", "start_time", "onset"),
        pick("end", "end_time", "stop", "offset"),
    )
    labels = [
        r[label].strip() for r in rows if float(r[start]) < stop_s and float(r[end]) > start_s and r[label].strip()
    ]
    return list(dict.fromkeys(labels))


def mono(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = read_audio(data)
    return audio.mean(axis=0), rate


# --------------------------------------------------------------------------- stage


class PrepareStage(Stage):
    """Mixtures in, one row per (mixture, target) out, routed to its split's folder."""

    name = "prepare-train"
    key = "mix_id"
    folders = SPLITS

    def __init__(self, cfg: PrepareTrainConfig):
        self.weights_uri, self.codec_name = cfg.codec_weights, cfg.codec
        self.window_seconds, self.segment_seconds, self.keep_audio = (
            cfg.window_seconds,
            cfg.segment_seconds,
            cfg.keep_audio,
        )
        self.plan = {k: str(getattr(cfg, k)) for k in ("layout", "segment_seconds", "val_fraction", "keep_audio")}
        self.plan["mixing"] = str(cfg.mixing)
        self.sfx_prompt = cfg.sfx_prompt
        if self.sfx_prompt:  # only where set: outputs made before the setting existed keep their fingerprint
            self.plan["sfx_prompt"] = self.sfx_prompt
        self.weights: bytes | None = None

    def prepare(self, due: pa.Table | None) -> None:
        """The encoder's weights, when there are mixtures to encode."""
        if due is not None and due.num_rows:
            self.weights, _ = resolve.codec_weights(self.weights_uri, self.codec_name)

    def settings(self) -> dict[str, str]:
        weights = {"codec_weights": digest(self.weights)} if self.weights else {}
        return {**self.plan, **weights}

    def output_row_bytes(self, input_row_bytes: float) -> float:
        """A row holds two clips' codes (about 1.5 bytes a code), and their audio with keep_audio."""
        codes = 2 * 12 * 50 * self.segment_seconds * 1.5
        return codes + (2 * 4 * 16000 * self.segment_seconds if self.keep_audio else 0)

    def setup(self, device: str) -> None:
        from codecsep_core.dac_codec import DacCodec

        self.codec = DacCodec.load(self.weights, window_seconds=self.window_seconds, device=device)

    def process(self, batch: pa.Table) -> StageOutput:
        rows, errors = [], []
        for item in batch.to_pylist():
            try:
                item_rows = self._rows(item)
            except (BadInput, ValueError, KeyError, FileNotFoundError) as e:
                source = item.get("folder") or ",".join(item.get("stems") or [])
                errors.append(ErrorRow(item["mix_id"], f"{type(e).__name__}: {e}", source))
                continue
            rows += [{**r, "split": item["split"]} for r in item_rows]
        table = in_folder(rows_table(rows), [r["split"] for r in rows]) if rows else None
        return StageOutput(
            rows=table, errors=errors, tally={"audio_s": self.segment_seconds * (batch.num_rows - len(errors))}
        )

    def _sources(self, item: dict) -> tuple[np.ndarray, list[tuple[str, str, np.ndarray]], int]:
        """-> (mixture, [(target name, prompt, stem)], sample rate), before normalisation."""
        if item["kind"] == "dnr":
            a, b = item["start"], item["stop"]
            mix, rate = mono(sfs.read_bytes(sfs.join(item["folder"], "mix.wav")))
            labels = dnr_labels(sfs.read_bytes(sfs.join(item["folder"], "annots.csv")), a / rate, b / rate)
            targets = []
            for name in DNR_STEMS:
                prompt = name
                if name == "sfx":
                    prompt = (self.sfx_prompt or ", ".join(labels)) if labels else ""
                if prompt:
                    stem, stem_rate = mono(sfs.read_bytes(sfs.join(item["folder"], f"{name}.wav")))
                    if stem_rate != rate:
                        raise ValueError(f"{name}.wav is at {stem_rate} Hz, mix.wav at {rate} Hz")
                    targets.append((name, prompt, stem[a:b]))
            return mix[a:b], targets, rate
        targets, rate = [], None
        for uri, caption, gain_db, offset in zip(item["stems"], item["captions"], item["gains_db"], item["offsets"]):
            audio, stem_rate = mono(sfs.read_bytes(uri))
            if rate is not None and stem_rate != rate:
                raise ValueError(f"{uri} is at {stem_rate} Hz, other stems at {rate} Hz")
            rate = stem_rate
            stem = mixing.excerpt(audio, int(round(self.segment_seconds * rate)), offset) * np.float32(
                10 ** (gain_db / 20)
            )
            targets.append((posixpath.splitext(posixpath.basename(uri))[0], caption, stem))
        return np.sum([t[2] for t in targets], axis=0), targets, rate

    def _rows(self, item: dict) -> list[dict]:
        from codecsep_core.dac_codec import resample

        mix, targets, rate = self._sources(item)
        codec_rate = self.codec.info.sample_rate
        mix = resample(mix[None], rate, codec_rate)[0]
        stems = [resample(s[None], rate, codec_rate)[0] for _, _, s in targets]
        mix, stems = mixing.normalise(mix, stems, codec_rate)
        mix_codes = self.codec.encode(mix[None], codec_rate)[0]
        rows = []
        for (name, prompt, _), stem in zip(targets, stems):
            row = {
                "id": f"{item['mix_id']}#{name}",
                "mix_id": item["mix_id"],
                "target": name,
                "prompt": prompt,
                "mix_codes": mix_codes,
                "target_codes": self.codec.encode(stem[None], codec_rate)[0],
                "codec": self.codec.info.name,
                "sample_rate": codec_rate,
                "n_samples": mix.shape[0],
            }
            if self.keep_audio:
                row.update(mix_audio=mix, target_audio=stem)
            rows.append(row)
        return rows


def rows_table(rows: list[dict]) -> pa.Table:
    columns = {
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "mix_id": pa.array([r["mix_id"] for r in rows], pa.string()),
        "target": pa.array([r["target"] for r in rows], pa.string()),
        "prompt": pa.array([r["prompt"] for r in rows], pa.string()),
        "mix_codes": codes_to_arrow([r["mix_codes"] for r in rows]),
        "target_codes": codes_to_arrow([r["target_codes"] for r in rows]),
        "codec": pa.array([r["codec"] for r in rows], pa.string()),
        "sample_rate": pa.array([r["sample_rate"] for r in rows], pa.int32()),
        "n_samples": pa.array([r["n_samples"] for r in rows], pa.int64()),
    }
    if "mix_audio" in rows[0]:
        for name in ("mix_audio", "target_audio"):
            columns[name] = pa.array([r[name] for r in rows], pa.list_(pa.float32()))
    return pa.table(columns)


# --------------------------------------------------------------------------- driver


def run(cfg: PrepareTrainConfig) -> JobReport:
    cfg.check()
    report = JobReport(PrepareStage.name)
    layout = detect_layout(cfg.input) if cfg.layout == "auto" else cfg.layout
    report.extra.update(layout=layout, splits=[sfs.join(cfg.output, s) for s in SPLITS])
    stage = PrepareStage(cfg)
    if layout == "dnr":
        inputs = Planned(
            lambda: dnr_clips(cfg.input), lambda due, _: Items(table(plan_dnr(cfg.input, cfg, due)), inputs="input")
        )
    else:
        drawn = plan_generic(cfg.input, cfg)
        inputs = Planned(
            lambda: generic_inputs(drawn), lambda due, _: Items(table(due_items(drawn, due)), inputs="input")
        )
    return run_stage(stage, inputs, cfg.output, cfg.ray, cfg.run, report)


def table(items: list[dict]) -> pa.Table:
    log.info("%d mixture(s) due (%d val)", len(items), sum(i["split"] == "val" for i in items))
    return (
        pa.Table.from_pylist(items)
        if items
        else pa.table({"mix_id": pa.array([], pa.string()), "input": pa.array([], pa.string())})
    )


def due_items(items: list[dict], due: list[InputFile]) -> list[dict]:
    uris = {f.uri for f in due}
    return [item for item in items if item["input"] in uris]


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> PrepareTrainConfig:
    p = JobParser(
        "prepare-train",
        PrepareTrainConfig,
        __doc__.splitlines()[0],
        SRC_DST,
        "stems folder URI, output folder URI",
    )
    p.add_argument("--layout", choices=LAYOUTS)
    p.add_argument("--codec-weights", help="DAC checkpoint URI (default: DAC's official download)")
    add_ray_arguments(p, batch_help="mixtures per actor call")
    return p.parse_config(argv)


def command(argv: list[str]) -> None:
    """`codecsep prepare-train`: parse, run, print the report (exit codes: jobs.cli)."""
    run(parse_args(argv)).emit()


if __name__ == "__main__":
    import sys

    from jobs.cli import main

    raise SystemExit(main(["prepare-train", *sys.argv[1:]], program=True))
