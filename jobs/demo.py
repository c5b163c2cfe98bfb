"""`codecsep demo --output DIR`: the whole chain offline, in minutes on two CPU cores.

Its sounds are DnR-style scenes (jobs.scenes: espeak-ng speech, fluidsynth music, event
sounds and generated effects, 10 s each, the three stems kept) when those Debian packages
are here (`make install-sounds`), separated by DnR's prompts "speech", "music" and "sound
effects"; without them it says so in one line and falls back to labelled synthetic kinds
("tone", "noise", "clicks"; jobs.synthetic). Either way: training and held-out sets
(prepare-train), the `tiny` masker trained (train), the held-out mixtures ingested
(ingest) and separated for every prompt with residuals (separate), scores with a
negative prompt, evaluation with paired gains (evaluate), wavs (export), active-span
segments (select), the report page, and one figure per prompt (mixture latent, mask,
separated latent). Held-out scenes hold no voice, instrument or effect file of training.

Official DAC and CLAP weights are used when they are on the machine; otherwise a
fixed-seed random codec fitted to other audio of the same kind and fixed per-prompt
vectors, which the output says plainly: the numbers then show that the machinery learns
and separates, not the quality of CodecSep (the fitted codec's decoder stays random, so
waveform figures are left out).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jobs.engine import JobParser, RayOptions, check_cluster_gpus, init_ray

log = logging.getLogger("codecsep.demo")

SOUNDS = ("auto", "scenes", "synthetic")
SOUND_NOTES = {
    "scenes": "DnR-style scenes of espeak-ng speech, fluidsynth music and event sounds (jobs.scenes); held-out "
    "scenes use other voices, instruments and effect files",
    "synthetic": "synthetic tone / noise / clicks sources (jobs.synthetic)",
}


@dataclass(frozen=True)
class ScenesDemo:
    seconds: float = 10.0  # scene length (DnR's clips are cut to 10 s)
    train: int = 16  # training scenes
    heldout: int = 4  # held-out scenes: evaluated in windows, separated whole
    segment_seconds: float = 2.0  # training and evaluation windows (the paper trains on 2 s)
    max_steps: int = 300


@dataclass(frozen=True)
class SyntheticDemo:
    clip_seconds: float = 2.0  # length of each generated source
    segment_seconds: float = 1.0  # mixture length
    train_sources_per_kind: int = 10
    heldout_sources_per_kind: int = 3
    train_mixtures: int = 36
    heldout_mixtures: int = 4
    max_steps: int = 200


@dataclass(frozen=True)
class DemoConfig:
    output: str = "demo_out"
    sounds: str = "auto"  # auto: scenes when their Debian packages are here, else synthetic | scenes | synthetic
    scenes: ScenesDemo = field(default_factory=ScenesDemo)
    synthetic: SyntheticDemo = field(default_factory=SyntheticDemo)
    learning_rate: float = 0.002  # above the published 1.5e-4: the demo trains for minutes, not days
    seed: int = 0
    ray: RayOptions = field(default_factory=RayOptions)


@dataclass(frozen=True)
class Sounds:
    """What the demo separates: sets written under `out/sources`, and how to prepare them."""

    kind: str
    prompts: tuple[str, ...]
    train_args: list[str]  # prepare-train arguments of the training set
    heldout_args: list[str]  # ... and of the held-out set
    segment_seconds: float  # training window
    max_steps: int
    fit_codec: Callable[[Path, int], Path]  # (path, seed) -> a fitted random codec at path
    contrast: tuple[str, str]  # (prompt, negative prompt) of the scores-only run
    whole_mixtures: Path | None  # the held-out mixtures to separate, whole; None: the held-out rows' own


def choose_sounds(sounds: str, missing: list[str]) -> tuple[str, str | None]:
    """-> (scenes | synthetic, the one line saying why not scenes, or None)."""
    if sounds not in SOUNDS:
        raise ValueError(f"sounds must be one of {SOUNDS}, got {sounds!r}")
    if sounds == "synthetic":
        return "synthetic", None
    if missing and sounds == "scenes":
        raise RuntimeError(f"sounds=scenes needs the Debian packages {' '.join(missing)}: make install-sounds")
    if missing:
        why = f"no {', '.join(missing)} (make install-sounds): the demo runs on synthetic tone/noise/clicks instead of scenes"
        return "synthetic", why
    return "scenes", None


def scene_sounds(cfg: DemoConfig, out: Path) -> Sounds:
    from jobs import scenes

    c = cfg.scenes
    scenes.write_scenes(out / "sources" / "train", c.train, "train", c.seconds, cfg.seed)
    scenes.write_scenes(out / "sources" / "heldout", c.heldout, "heldout", c.seconds, cfg.seed)
    dnr = ["layout=dnr", f"sfx_prompt={scenes.PROMPTS['sfx']}"]
    return Sounds(
        kind="scenes",
        prompts=tuple(scenes.PROMPTS[s] for s in scenes.STEMS),
        train_args=[*dnr, f"segment_seconds={c.segment_seconds}", "val_fraction=0.15"],
        heldout_args=[*dnr, f"segment_seconds={c.segment_seconds}", "val_fraction=0.0"],
        segment_seconds=c.segment_seconds,
        max_steps=c.max_steps,
        fit_codec=scenes.fitted_scene_codec,
        contrast=("speech", "music"),
        whole_mixtures=out / "sources" / "heldout",
    )


def synthetic_sounds(cfg: DemoConfig, out: Path) -> Sounds:
    from jobs import synthetic

    c = cfg.synthetic
    synthetic.write_sources(out / "sources" / "train", c.train_sources_per_kind, c.clip_seconds, seed=cfg.seed)
    synthetic.write_sources(out / "sources" / "heldout", c.heldout_sources_per_kind, c.clip_seconds, seed=cfg.seed + 1)
    common = [f"segment_seconds={c.segment_seconds}", *synthetic.EVERY_KIND_MIXING]
    return Sounds(
        kind="synthetic",
        prompts=synthetic.KINDS,
        train_args=[*common, f"mixing.n_mixtures={c.train_mixtures}", "val_fraction=0.15"],
        heldout_args=[
            *common,
            f"mixing.n_mixtures={c.heldout_mixtures}",
            "val_fraction=0.0",
            f"mixing.seed={cfg.seed + 1}",
        ],
        segment_seconds=c.segment_seconds,
        max_steps=c.max_steps,
        fit_codec=synthetic.fitted_random_codec,
        contrast=("tone", "noise"),
        whole_mixtures=None,
    )


def official_dac_weights() -> Path | None:
    """DAC's own cache (what `dac.utils.download` fills), without touching the network."""
    found = sorted((Path.home() / ".cache" / "descript" / "dac").glob("weights_16khz*.pth"))
    return found[-1] if found else None


def codec_weights(out: Path, sounds: Sounds, seed: int) -> tuple[Path, bool]:
    """(DAC checkpoint, official?): official weights when cached, else a fixed-seed random
    DAC 16 kHz fitted to other audio of the demo's kind."""
    official = official_dac_weights()
    if official is not None:
        return official, True
    path = out / "codec" / f"fitted_random_dac16_{sounds.kind}.pth"
    if not path.exists():
        sounds.fit_codec(path, seed)
    return path, False


def ray_overrides(cfg: DemoConfig) -> list[str]:
    """The demo's Ray settings, passed on to every job it runs (a GPU user's demo runs on GPUs)."""
    return [
        f"ray.num_cpus_per_actor={cfg.ray.num_cpus_per_actor}",
        f"ray.num_gpus_per_actor={cfg.ray.num_gpus_per_actor}",
    ]


def write_mixtures(sounds: Sounds, heldout: str, folder: Path) -> None:
    """The held-out mixtures as wav files, the input of ingest: each scene's mix.wav whole,
    or one per mix_id of the held-out rows."""
    import soundfile as sf

    from storage import shards

    folder.mkdir(parents=True, exist_ok=True)
    if sounds.whole_mixtures is not None:
        for mix in sorted(sounds.whole_mixtures.glob("*/mix.wav")):
            shutil.copyfile(mix, folder / f"{mix.parent.name}.wav")
        return
    seen = set()
    for row in shards.read_table(heldout, columns=["mix_id", "mix_audio", "sample_rate"]).to_pylist():
        if row["mix_id"] not in seen:
            seen.add(row["mix_id"])
            name = row["mix_id"].replace("/", "-")  # a DnR mix_id is <clip>/<window>
            sf.write(str(folder / f"{name}.wav"), np.asarray(row["mix_audio"], np.float32), row["sample_rate"])


def figures(heldout: str, run: Path, folder: Path) -> list[Path]:
    """One PNG per prompt: the mixture latent, the mask, the separated latent (first held-out row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from codecsep_core import CodecTables, load_masker
    from storage import shards
    from storage.prompt_table import read_prompt_table
    from storage.schema import codes_to_numpy

    tables = CodecTables.load(run / "codec_tables.safetensors")
    masker = load_masker(run / "masker.safetensors")
    prompts = read_prompt_table(str(run / "prompts.parquet"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = {}
    for row in shards.read_table(heldout, columns=["prompt", "mix_codes"]).to_pylist():
        rows.setdefault(row["prompt"], row)
    paths = []
    for prompt, row in sorted(rows.items()):
        with torch.inference_mode():
            z = tables.lookup(torch.from_numpy(codes_to_numpy(row["mix_codes"]).astype(np.int64)))[None]
            mask = masker(z, torch.from_numpy(prompts.vectors([prompt])))
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
        for ax, data, title in zip(
            axes, (z[0], mask[0], (mask * z)[0]), ("mixture latent", "mask", "separated latent")
        ):
            im = ax.imshow(data.numpy(), aspect="auto", origin="lower", cmap="magma", interpolation="nearest")
            ax.set(title=title, xlabel="frame", ylabel="latent channel")
            fig.colorbar(im, ax=ax)
        fig.suptitle(f"prompt: {prompt!r}")
        fig.tight_layout()
        path = folder / f"{prompt.replace(' ', '_')}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def run(cfg: DemoConfig) -> str:
    """Runs every stage; -> the notes and the evaluation tables (Markdown)."""
    from jobs import evaluate, export, ingest, prepare_train, report, resolve, scenes, select, separate, train

    t0 = time.perf_counter()
    out = Path(cfg.output).resolve()
    kind, why_not_scenes = choose_sounds(cfg.sounds, scenes.missing_packages() if cfg.sounds != "synthetic" else [])
    if why_not_scenes:
        log.warning("%s", why_not_scenes)
    check_cluster_gpus(init_ray(cfg.ray), cfg.ray.num_gpus_per_actor)  # before minutes of CPU work
    sounds = scene_sounds(cfg, out) if kind == "scenes" else synthetic_sounds(cfg, out)
    weights, official = codec_weights(out, sounds, cfg.seed)
    random_codec = (
        "RANDOM-WEIGHT DAC 16 kHz (fixed seed), its latent and quantizer fitted to other generated audio, "
        "its decoder random (no waveform figures): no official weights on this machine"
    )
    notes = [
        f"sounds: {SOUND_NOTES[kind]}",
        f"codec: {'official DAC 16 kHz weights' if official else random_codec} ({weights})",
    ]
    ray_args = ray_overrides(cfg)
    # the held-out audio: for waveform figures (a real decoder only), and the mixtures to ingest
    # where there are no whole ones
    keep_audio = ["keep_audio=true"] if official or sounds.whole_mixtures is None else []
    for name, args in (("data", sounds.train_args), ("heldout", [*sounds.heldout_args, *keep_audio])):
        source = out / "sources" / ("train" if name == "data" else name)
        prepare_train.run(
            prepare_train.parse_args([str(source), str(out / name), "--codec-weights", str(weights), *args, *ray_args])
        )
    heldout = str(out / "heldout" / "train")  # val_fraction=0: every held-out row is under train/
    run_dir = out / "run"
    trained = train.run(
        train.parse_args(
            [
                str(out / "data"),
                str(run_dir),
                "--codec-weights",
                str(weights),
                "--preset",
                "tiny",
                "--fixed-prompts-if-offline",
                f"max_steps={sounds.max_steps}",
                f"val_every={max(1, sounds.max_steps // 2)}",
                f"checkpoint_every={max(1, sounds.max_steps // 2)}",
                "log_every=25",
                f"optimizer.lr={cfg.learning_rate}",
                f"segment_frames={round(sounds.segment_seconds * 50) + 2}",
                f"seed={cfg.seed}",
                *ray_args,
            ]
        )
    )
    fixed = trained.extra["prompt_encoder"] == resolve.FIXED_ENCODER
    notes.append(
        "prompts: "
        + (
            "FIXED RANDOM VECTORS per prompt string (no CLAP weights on this machine)"
            if fixed
            else f"CLAP embeddings ({trained.extra['prompt_encoder']})"
        )
    )
    write_mixtures(sounds, heldout, out / "mixtures")
    ingest.run(
        ingest.parse_args([str(out / "mixtures"), str(out / "codes"), "--codec-weights", str(weights), *ray_args])
    )
    models = [
        "--masker",
        str(run_dir / "masker.safetensors"),
        "--codec-tables",
        str(run_dir / "codec_tables.safetensors"),
        "--prompt-table",
        str(run_dir / "prompts.parquet"),
        *ray_args,
    ]
    separate.run(
        separate.parse_args(
            [
                "--input",
                str(out / "codes"),
                "--output",
                str(out / "separated"),
                "--residual",
                *sum((["--prompt", p] for p in sounds.prompts), []),
                *models,
            ]
        )
    )
    target, negative = sounds.contrast
    scores = separate.run(
        separate.parse_args(
            [
                "--input",
                str(out / "codes"),
                "--output",
                str(out / "scores"),
                "--prompt",
                target,
                "--exclude",
                negative,
                "--emit",
                "scores",
                *models,
            ]
        )
    )
    _, table = evaluate.run(
        evaluate.parse_args(
            [
                heldout,
                str(out / "evaluation"),
                "--masker",
                str(run_dir / "masker.safetensors"),
                "--codec-tables",
                str(run_dir / "codec_tables.safetensors"),
                "--prompt-table",
                str(run_dir / "prompts.parquet"),
                *(["--codec-weights", str(weights)] if official else []),  # waveform figures need a real decoder
            ]
        )
    )
    export.run(
        export.parse_args([str(out / "separated"), str(out / "wav"), "--codec-weights", str(weights), *ray_args])
    )
    segments = select.run(
        select.parse_args(
            ["--input", str(out / "separated"), "--output", str(out / "segments"), "--prompt", target, "--spans"]
        )
    )
    page = out / "report.html"
    report.run(
        report.parse_args(["--input", str(out / "separated"), "--output", str(page), "--audio", str(out / "wav")])
    )
    pngs = figures(heldout, run_dir, out / "figures")
    notes.append(f"figures: {', '.join(str(p) for p in pngs)}")
    notes.append(
        f"separated: {out / 'separated'} (stem=target and stem=residual per clip and prompt, with "
        f"active_spans); wavs: {out / 'wav'}; evaluation: {out / 'evaluation'} (per-clip rows in "
        f"{evaluate.ROWS_FILE})"
    )
    notes.append(
        f"scores only, {target!r} excluding {negative!r} (--exclude, --emit scores): {out / 'scores'}, "
        f"{scores.rows_out} rows, no codes column"
    )
    notes.append(
        f"{target!r} segments cut from active spans (select --spans): {segments.rows_out} code rows in "
        f"{out / 'segments'}, manifest {out / 'segments' / '_manifest.parquet'}"
    )
    notes.append(f"report: {page} (open it in a browser)")
    notes.append(f"wall time: {time.perf_counter() - t0:.0f} s")
    return "\n".join(notes) + "\n\n" + table


def parse_args(argv: list[str] | None) -> DemoConfig:
    p = JobParser("demo", DemoConfig, __doc__.splitlines()[0])
    p.add_argument("--output", help="output folder (local)")
    return p.parse_config(argv)


def command(argv: list[str]) -> None:
    """`codecsep demo`: parse, run, print the report (exit codes: jobs.cli)."""
    print(run(parse_args(argv)))


if __name__ == "__main__":
    import sys

    from jobs.cli import main

    raise SystemExit(main(["demo", *sys.argv[1:]], program=True))
