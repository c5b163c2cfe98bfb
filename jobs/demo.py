"""`codecsep demo --output DIR`: the whole chain offline, in a few minutes on two CPU cores.

Generates labelled synthetic sources ("tone", "noise", "clicks"; jobs.synthetic), makes
training and held-out mixtures (prepare-train), trains the `tiny` masker (train),
ingests the held-out mixtures (ingest), separates them for every prompt (separate),
evaluates (evaluate), exports the separated clips as wav (export) and draws one figure
per prompt (mixture latent, mask, separated latent). Official DAC and CLAP weights are
used when they are on the machine; otherwise a fixed-seed random codec fitted to other
generated audio (`synthetic.fitted_random_codec`) and fixed per-prompt vectors, which the
output says plainly: the numbers then show that the machinery learns and separates, not
the quality of CodecSep (the fitted codec's decoder stays random, so waveform SI-SDR is
meaningless there). Every mixture holds one source of each kind at equal loudness.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jobs.engine import JobParser, RayOptions, check_cluster_gpus, init_ray

log = logging.getLogger("codecsep.demo")


@dataclass(frozen=True)
class DemoConfig:
    output: str = "demo_out"
    clip_seconds: float = 2.0  # length of each generated source
    segment_seconds: float = 1.0  # mixture length
    train_sources_per_kind: int = 10
    heldout_sources_per_kind: int = 3
    train_mixtures: int = 36
    heldout_mixtures: int = 4
    max_steps: int = 200
    learning_rate: float = 0.002  # above the published 1.5e-4: the demo trains for minutes, not days
    seed: int = 0
    ray: RayOptions = field(default_factory=RayOptions)


def official_dac_weights() -> Path | None:
    """DAC's own cache (what `dac.utils.download` fills), without touching the network."""
    found = sorted((Path.home() / ".cache" / "descript" / "dac").glob("weights_16khz*.pth"))
    return found[-1] if found else None


def codec_weights(out: Path, seed: int) -> tuple[Path, bool]:
    """(DAC checkpoint, official?): official weights when cached, else a fixed-seed random
    DAC 16 kHz fitted to generated audio (`synthetic.fitted_random_codec`)."""
    official = official_dac_weights()
    if official is not None:
        return official, True
    from jobs import synthetic

    path = out / "codec" / "fitted_random_dac16.pth"
    if not path.exists():
        synthetic.fitted_random_codec(path, seed)
    return path, False


def ray_overrides(cfg: DemoConfig) -> list[str]:
    """The demo's Ray settings, passed on to every job it runs (a GPU user's demo runs on GPUs)."""
    return [
        f"ray.num_cpus_per_actor={cfg.ray.num_cpus_per_actor}",
        f"ray.num_gpus_per_actor={cfg.ray.num_gpus_per_actor}",
    ]


def write_mixtures(heldout: str, folder: Path) -> None:
    """The held-out mixtures (one per mix_id) as wav files, the input of ingest."""
    import soundfile as sf

    from storage import shards

    folder.mkdir(parents=True, exist_ok=True)
    seen = set()
    for row in shards.read_table(heldout, columns=["mix_id", "mix_audio", "sample_rate"]).to_pylist():
        if row["mix_id"] not in seen:
            seen.add(row["mix_id"])
            sf.write(str(folder / f"{row['mix_id']}.wav"), np.asarray(row["mix_audio"], np.float32), row["sample_rate"])


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
        path = folder / f"{prompt}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def run(cfg: DemoConfig) -> str:
    """Runs every stage; -> the evaluation table (Markdown)."""
    from jobs import evaluate, export, ingest, prepare_train, report, resolve, select, separate, synthetic, train

    t0 = time.perf_counter()
    out = Path(cfg.output).resolve()
    check_cluster_gpus(init_ray(cfg.ray), cfg.ray.num_gpus_per_actor)  # before minutes of CPU work
    weights, official = codec_weights(out, cfg.seed)
    random_codec = (
        "RANDOM-WEIGHT DAC 16 kHz (fixed seed), its latent and quantizer fitted to generated audio, "
        "its decoder random (waveform SI-SDR is meaningless): no official weights on this machine"
    )
    notes = [f"codec: {'official DAC 16 kHz weights' if official else random_codec} ({weights})"]
    ray_args = ray_overrides(cfg)
    synthetic.write_sources(out / "sources" / "train", cfg.train_sources_per_kind, cfg.clip_seconds, seed=cfg.seed)
    synthetic.write_sources(
        out / "sources" / "heldout", cfg.heldout_sources_per_kind, cfg.clip_seconds, seed=cfg.seed + 1
    )
    common = [f"segment_seconds={cfg.segment_seconds}", *synthetic.EVERY_KIND_MIXING, *ray_args]
    prepare_train.run(
        prepare_train.parse_args(
            [
                str(out / "sources" / "train"),
                str(out / "data"),
                "--codec-weights",
                str(weights),
                f"mixing.n_mixtures={cfg.train_mixtures}",
                "val_fraction=0.15",
                *common,
            ]
        )
    )
    prepare_train.run(
        prepare_train.parse_args(
            [
                str(out / "sources" / "heldout"),
                str(out / "heldout"),
                "--codec-weights",
                str(weights),
                f"mixing.n_mixtures={cfg.heldout_mixtures}",
                "val_fraction=0.0",
                f"mixing.seed={cfg.seed + 1}",
                "keep_audio=true",
                *common,
            ]
        )
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
                f"max_steps={cfg.max_steps}",
                f"val_every={cfg.max_steps // 2}",
                f"checkpoint_every={cfg.max_steps // 2}",
                "log_every=25",
                f"optimizer.lr={cfg.learning_rate}",
                f"segment_frames={round(cfg.segment_seconds * 50) + 2}",
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
    write_mixtures(heldout, out / "mixtures")
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
                *sum((["--prompt", p] for p in synthetic.KINDS), []),
                *models,
            ]
        )
    )
    scores = separate.run(
        separate.parse_args(
            [
                "--input",
                str(out / "codes"),
                "--output",
                str(out / "scores"),
                "--prompt",
                "tone",
                "--exclude",
                "noise",
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
                "--codec-weights",
                str(weights),
                "--prompt-table",
                str(run_dir / "prompts.parquet"),
            ]
        )
    )
    export.run(
        export.parse_args([str(out / "separated"), str(out / "wav"), "--codec-weights", str(weights), *ray_args])
    )
    segments = select.run(
        select.parse_args(
            ["--input", str(out / "separated"), "--output", str(out / "segments"), "--prompt", "tone", "--spans"]
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
        f"active_spans); wavs: {out / 'wav'}; evaluation: {out / 'evaluation'}"
    )
    notes.append(
        f"scores only, 'tone' excluding 'noise' (--exclude, --emit scores): {out / 'scores'}, "
        f"{scores.rows_out} rows, no codes column"
    )
    notes.append(
        f"'tone' segments cut from active spans (select --spans): {segments.rows_out} code rows in "
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

    raise SystemExit(main(["demo", *sys.argv[1:]]))
