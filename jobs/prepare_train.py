"""`codecsep prepare-train SRC DST`: folders of stems with captions -> training shards.

One row per (mixture, target source): the mixture's codes, the target's codes and the
target's prompt, so training and evaluation run in code space. Two input layouts:

- `dnr` (Divide and Remaster v2): one folder per clip with `mix.wav`, `speech.wav`,
  `music.wav`, `sfx.wav` and `annots.csv` (sound-effect labels with start/end times in
  seconds). Clips are cut into `segment_seconds` windows; prompts are "speech", "music"
  and, for the sfx stem, the labels of the effects heard in that window (no label: no
  sfx row).
- `generic`: audio files anywhere under SRC, with a `captions.csv` (`file,caption`, file
  relative to SRC) or, without one, each file's folder name as its caption. Mixtures
  are drawn at random (seeded): `mixing.sources_per_mix` stems of distinct captions,
  random `segment_seconds` excerpts, random gains in `mixing.gain_db`.

Mixture and stems get one gain (the mixture normalised to -16 LUFS, as DAC's `compress`
does, then peak-limited), so a target's codes are of the stem as heard in the mixture.
Codes come from the DAC encoder (`codecsep_core.dac_codec`). Rows go to DST/train and
DST/val (split by clip, `val_fraction`); `keep_audio=true` also stores the mixture and
stem audio at the codec rate, which waveform metrics (evaluate) and the SI-SDR loss use.

from_items(one item per mixture) -> map_batches(PrepareBatch) on an actor pool; each
call writes its rows as shards named after its mixtures, so a rerun replaces them.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import logging
import math
import posixpath
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from jobs import config as job_config
from jobs.inputs import AUDIO_SUFFIXES, batch_prefix, check_weights_codec, read_audio, read_codec_weights
from jobs.runtime import (
    JobReport, RayOptions, add_ray_arguments, init_ray, ray_values, run_cli, setup_logging, sum_summaries,
)
from storage import fs as sfs
from storage import shards
from storage.schema import DAC_CODECS, codes_to_arrow

log = logging.getLogger("codecsep.prepare_train")

STAGE = "prepare-train"
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
    captions: str = "captions.csv"  # generic layout: file,caption (relative to SRC)
    codec: str = "dac_16khz"
    codec_weights: str | None = None  # DAC checkpoint URI; null: DAC's official download
    segment_seconds: float = 2.0  # mixture length (the masker's training window in the paper)
    val_fraction: float = 0.1
    keep_audio: bool = False
    window_seconds: float = 5.0  # encoder window
    max_rows_per_shard: int = 1000
    mixing: MixingConfig = field(default_factory=MixingConfig)
    ray: RayOptions = field(default_factory=RayOptions)

    def check(self) -> None:
        missing = [k for k in ("input", "output") if not getattr(self, k)]
        if missing:
            raise ValueError(f"missing setting(s): {', '.join(missing)} (codecsep prepare-train SRC DST)")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.codec not in DAC_CODECS:
            raise ValueError(f"codec must be one of {sorted(DAC_CODECS)}, got {self.codec!r}")
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


def plan_dnr(src: str, cfg: PrepareTrainConfig) -> list[dict]:
    """One item per `segment_seconds` window of every clip folder holding a mix.wav."""
    items = []
    for mix_uri in sfs.list_files(src, ["mix.wav"]):
        if posixpath.basename(mix_uri) != "mix.wav":
            continue
        folder = posixpath.dirname(mix_uri)
        clip = posixpath.relpath(sfs.resolve(folder)[1], sfs.resolve(src)[1].rstrip("/"))
        n, rate = audio_frames(mix_uri)
        seg = int(round(cfg.segment_seconds * rate))
        split = split_of(clip, cfg.val_fraction)
        for k in range(max(1, n // seg)):
            items.append({"kind": "dnr", "mix_id": f"{clip}/{k:04d}", "split": split, "folder": folder,
                          "start": k * seg, "stop": min(n, (k + 1) * seg)})
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
        items.append({"kind": "generic", "mix_id": mix_id, "split": split_of(mix_id, cfg.val_fraction),
                      "stems": files, "captions": [names[c] for c in chosen],
                      "gains_db": rng.uniform(*cfg.mixing.gain_db, size=k).tolist(),
                      "offsets": rng.uniform(size=k).tolist()})
    return items


def detect_layout(src: str) -> str:
    return "dnr" if any(posixpath.basename(u) == "mix.wav" for u in sfs.list_files(src, ["mix.wav"])) else "generic"


# --------------------------------------------------------------------------- mixing


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

    label, start, end = pick("label", "class_label", "class", "class_name", "category"), \
        pick("start", "start_time", "onset"), pick("end", "end_time", "stop", "offset")
    labels = [r[label].strip() for r in rows if float(r[start]) < stop_s and float(r[end]) > start_s and r[label].strip()]
    return list(dict.fromkeys(labels))


def excerpt(audio: np.ndarray, n: int, offset_fraction: float) -> np.ndarray:
    """n samples of mono audio from a random position; zero-padded when shorter."""
    start = int(offset_fraction * max(0, audio.shape[0] - n))
    out = np.zeros(n, np.float32)
    part = audio[start : start + n]
    out[: part.shape[0]] = part
    return out


def mono(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = read_audio(data)
    return audio.mean(axis=0), rate


def normalise(mix: np.ndarray, stems: list[np.ndarray], rate: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """One gain for all: mixture to -16 LUFS (DAC's compress), then its peaks to <= 1."""
    from codecsep_core.dac_codec import NORMALIZE_DB, loudness_db

    gain = 10.0 ** ((NORMALIZE_DB - loudness_db(mix[None], rate)) / 20.0)
    gain /= max(1.0, float(np.abs(mix).max()) * gain)
    return (mix * gain).astype(np.float32), [(s * gain).astype(np.float32) for s in stems]


# --------------------------------------------------------------------------- actor


class PrepareBatch:
    """Ray Data callable class: mixtures in, rows written as shards, one summary row out."""

    def __init__(self, output: str, weights, window_seconds: float, segment_seconds: float, keep_audio: bool,
                 max_rows_per_shard: int, s3: sfs.S3Options, num_threads: int):
        self.output, self.s3, self.keep_audio = output, s3, keep_audio
        self.segment_seconds = segment_seconds
        self.shard_options = shards.ShardOptions(max_rows=max_rows_per_shard)
        self._weights, self._window_seconds, self._num_threads = weights, window_seconds, num_threads
        self._codec = None

    @property
    def codec(self):
        if self._codec is None:
            import ray
            import torch

            from codecsep_core.dac_codec import DacCodec

            torch.set_num_threads(self._num_threads)
            self._codec = DacCodec.load(ray.get(self._weights), window_seconds=self._window_seconds)
        return self._codec

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = batch.to_pylist()
        tally = defaultdict(float, mixtures=len(items))
        rows: dict[str, list[dict]] = defaultdict(list)
        errors = []
        for item in items:
            try:
                item_rows = self._rows(item)
            except (ValueError, RuntimeError, OSError, KeyError) as e:
                errors.append({"id": item["mix_id"], "source": item.get("folder") or ",".join(item["stems"]),
                               "stage": STAGE, "prompt": None, "reason": f"{type(e).__name__}: {e}"})
                continue
            rows[item["split"]] += item_rows
            tally["audio_s"] += self.segment_seconds
        prefix = batch_prefix([item["mix_id"] for item in items])
        for split, split_rows in rows.items():
            with shards.ShardWriter(sfs.join(self.output, split), prefix, self.shard_options, self.s3) as writer:
                writer.write(rows_table(split_rows))
        shards.write_errors(self.output, errors, f"prepare-{prefix}", s3=self.s3)
        tally.update(rows=sum(len(r) for r in rows.values()), errors=len(errors))
        return pa.Table.from_pylist([dict(tally)])

    def _sources(self, item: dict) -> tuple[np.ndarray, list[tuple[str, str, np.ndarray]], int]:
        """-> (mixture, [(target name, prompt, stem)], sample rate), before normalisation."""
        if item["kind"] == "dnr":
            a, b = item["start"], item["stop"]
            mix, rate = mono(sfs.read_bytes(sfs.join(item["folder"], "mix.wav"), self.s3))
            labels = dnr_labels(sfs.read_bytes(sfs.join(item["folder"], "annots.csv"), self.s3), a / rate, b / rate)
            targets = []
            for name in DNR_STEMS:
                prompt = ", ".join(labels) if name == "sfx" else name
                if prompt:
                    stem, stem_rate = mono(sfs.read_bytes(sfs.join(item["folder"], f"{name}.wav"), self.s3))
                    if stem_rate != rate:
                        raise ValueError(f"{name}.wav is at {stem_rate} Hz, mix.wav at {rate} Hz")
                    targets.append((name, prompt, stem[a:b]))
            return mix[a:b], targets, rate
        targets, rate = [], None
        for uri, caption, gain_db, offset in zip(item["stems"], item["captions"], item["gains_db"], item["offsets"]):
            audio, stem_rate = mono(sfs.read_bytes(uri, self.s3))
            if rate is not None and stem_rate != rate:
                raise ValueError(f"{uri} is at {stem_rate} Hz, other stems at {rate} Hz")
            rate = stem_rate
            stem = excerpt(audio, int(round(self.segment_seconds * rate)), offset) * np.float32(10 ** (gain_db / 20))
            targets.append((posixpath.splitext(posixpath.basename(uri))[0], caption, stem))
        return np.sum([t[2] for t in targets], axis=0), targets, rate

    def _rows(self, item: dict) -> list[dict]:
        from codecsep_core.dac_codec import resample

        mix, targets, rate = self._sources(item)
        codec_rate = self.codec.info.sample_rate
        mix = resample(mix[None], rate, codec_rate)[0]
        stems = [resample(s[None], rate, codec_rate)[0] for _, _, s in targets]
        mix, stems = normalise(mix, stems, codec_rate)
        mix_codes = self.codec.encode(mix[None], codec_rate)[0]
        rows = []
        for (name, prompt, _), stem in zip(targets, stems):
            row = {"id": f"{item['mix_id']}#{name}", "mix_id": item["mix_id"], "target": name, "prompt": prompt,
                   "mix_codes": mix_codes, "target_codes": self.codec.encode(stem[None], codec_rate)[0],
                   "codec": self.codec.info.name, "sample_rate": codec_rate, "n_samples": mix.shape[0]}
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
    report = JobReport(STAGE)
    t_start = time.perf_counter()
    s3 = sfs.S3Options().with_env_defaults()
    layout = detect_layout(cfg.input) if cfg.layout == "auto" else cfg.layout
    with report.stage("plan"):
        items = plan_dnr(cfg.input, cfg) if layout == "dnr" else plan_generic(cfg.input, cfg)
    log.info("%s layout: %d mixture(s) planned (%d val)", layout, len(items), sum(i["split"] == "val" for i in items))
    with report.stage("load_weights"):
        weights = read_codec_weights(cfg.codec_weights, cfg.codec.split("_", 1)[1], s3)
        check_weights_codec(weights, cfg.codec)
    totals: dict[str, float] = defaultdict(float)
    if items:
        with report.stage("pipeline"):
            totals = _run_pipeline(cfg, items, weights, s3)
    report.rows_in = len(items)
    report.rows_out = int(totals["rows"])
    report.errors = int(totals["errors"])
    report.audio_hours = totals["audio_s"] / 3600
    report.wall_s = time.perf_counter() - t_start
    report.extra = {"output": cfg.output, "layout": layout, "splits": [sfs.join(cfg.output, s) for s in SPLITS]}
    return report


def _run_pipeline(cfg: PrepareTrainConfig, items: list[dict], weights: bytes, s3: sfs.S3Options) -> dict:
    ray = init_ray(cfg.ray)
    from ray.data import ActorPoolStrategy

    batch = cfg.ray.batch_size
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / batch)))
    ds = ds.map_batches(
        PrepareBatch,
        fn_constructor_kwargs=dict(
            output=cfg.output, weights=ray.put(weights), window_seconds=cfg.window_seconds,
            segment_seconds=cfg.segment_seconds, keep_audio=cfg.keep_audio,
            max_rows_per_shard=cfg.max_rows_per_shard, s3=s3, num_threads=max(1, round(cfg.ray.num_cpus_per_actor)),
        ),
        batch_size=batch, batch_format="pyarrow", compute=ActorPoolStrategy(size=cfg.ray.num_actors),
        num_cpus=cfg.ray.num_cpus_per_actor, num_gpus=cfg.ray.num_gpus_per_actor,
    )
    return sum_summaries(ds, lambda t: log.info("prepare-train: %d/%d mixtures, %d rows, %d errors",
                                                t["mixtures"], len(items), t["rows"], t["errors"]))


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> PrepareTrainConfig:
    p = argparse.ArgumentParser(prog="codecsep prepare-train", description=__doc__.splitlines()[0])
    p.add_argument("args", nargs="*", metavar="SRC DST [key=value ...]",
                   help="stems folder URI, output folder URI, then config overrides")
    p.add_argument("--config", default=str(job_config.default_config_path("prepare_train")))
    p.add_argument("--layout", choices=LAYOUTS)
    p.add_argument("--codec-weights", help="DAC checkpoint URI (default: DAC's official download)")
    add_ray_arguments(p, batch_help="mixtures per actor call")
    p.add_argument("-v", "--verbose", action="store_true")
    a, (src, dst), overrides = job_config.parse_paths(p, argv)
    setup_logging(a.verbose)
    return job_config.load_config(
        PrepareTrainConfig, a.config, overrides, input=src, output=dst, layout=a.layout,
        codec_weights=a.codec_weights, **ray_values(a),
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli("prepare-train", lambda: run(parse_args(argv)).emit())


if __name__ == "__main__":
    raise SystemExit(main())
