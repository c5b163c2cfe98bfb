"""prepare-train -> train (Ray Train) -> evaluate, on generated sources, on an embedded Ray.

The codec is a random-weight DAC 16 kHz of the real architecture, fitted to generated
audio (`synthetic.fitted_random_codec`: an unfitted random DAC's codes carry nothing a
mask could separate), and prompts are fixed per-prompt vectors: neither DAC nor CLAP
weights can be downloaded here. Clips are short (DAC encodes at ~0.2 s per audio second
on this CPU)."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from codecsep_core.model_io import content_digest
from jobs import evaluate, prepare_train, resolve, separate, synthetic, train
from storage import shards

FAST = ["ray.num_cpus_per_actor=2"]
REPO = Path(__file__).resolve().parents[2]


def prepare(src, dst, weights, *extra):
    return prepare_train.run(
        prepare_train.parse_args(
            [str(src), str(dst), "--codec-weights", str(weights), "segment_seconds=1.0", *extra, *FAST]
        )
    )


def train_args(data, out, weights, *extra):
    return [
        str(data),
        str(out),
        "--codec-weights",
        str(weights),
        "--preset",
        "tiny",
        "--fixed-prompts-if-offline",
        "segment_frames=52",
        "log_every=10",
        *extra,
        *FAST,
    ]


def trained_model_args(run_dir) -> list[str]:
    """The flags that point a job at what `train` wrote to `run_dir`."""
    return [
        "--masker",
        str(run_dir / "masker.safetensors"),
        "--codec-tables",
        str(run_dir / "codec_tables.safetensors"),
        "--prompt-table",
        str(run_dir / "prompts.parquet"),
    ]


def run_evaluate(data, out, run_dir, weights=None, *extra):
    args = [str(data), str(out), *trained_model_args(run_dir), *extra]
    return evaluate.run(evaluate.parse_args(args + (["--codec-weights", str(weights)] if weights else [])))


@pytest.fixture(scope="module")
def synthetic_sets(tmp_path_factory, ray_session, fitted_codec):
    """Training mixtures (with a val split) and held-out mixtures of other sources, each
    mixture one source of every kind at equal loudness, encoded with a codec fitted to yet
    other sources (`codec.pth`)."""
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.write_sources(root / "src_train", per_kind=10, seconds=1.5, seed=0)
    synthetic.write_sources(root / "src_heldout", per_kind=2, seconds=1.5, seed=1)
    weights = shutil.copy(fitted_codec, root / "codec.pth")  # the session's, fitted once
    prepare(
        root / "src_train",
        root / "data",
        weights,
        "mixing.n_mixtures=30",
        "val_fraction=0.2",
        *synthetic.EVERY_KIND_MIXING,
    )
    prepare(
        root / "src_heldout",
        root / "heldout",
        weights,
        "mixing.n_mixtures=6",
        "val_fraction=0",
        "mixing.seed=1",
        "keep_audio=true",
        *synthetic.EVERY_KIND_MIXING,
    )
    return root


def test_prepare_train_generic_rows(synthetic_sets):
    table = shards.read_table(str(synthetic_sets / "data" / "train")).to_pylist()
    val = shards.read_table(str(synthetic_sets / "data" / "val"))
    assert val.num_rows > 0
    assert {r["prompt"] for r in table} == set(synthetic.KINDS)
    for r in table:
        assert r["id"].startswith(r["mix_id"] + "#")
        assert len(r["mix_codes"]) == len(r["target_codes"]) == 12
        assert len(r["mix_codes"][0]) == len(r["target_codes"][0]) >= 50  # 1 s at 50 frames/s
    by_mix = {}
    for r in table:
        by_mix.setdefault(r["mix_id"], []).append(r)
    for rows in by_mix.values():  # one mixture, a target per kind, identical mixture codes
        assert {r["prompt"] for r in rows} == set(synthetic.KINDS) and len(rows) == 3
        assert all(r["mix_codes"] == rows[0]["mix_codes"] for r in rows)


def test_trained_masker_beats_identity_and_wrong_prompt(synthetic_sets, tmp_path):
    """On held-out mixtures of other sources, per prompt: the trained masker beats the
    identity mask and the same masker given the other prompts."""
    run_dir = tmp_path / "run"
    weights = synthetic_sets / "codec.pth"
    report = train.run(
        train.parse_args(
            train_args(
                synthetic_sets / "data",
                run_dir,
                weights,
                "max_steps=200",
                "val_every=100",
                "checkpoint_every=100",
                "optimizer.lr=0.002",
            )
        )
    )
    assert report.extra["prompt_encoder"] == resolve.FIXED_ENCODER
    history = report.extra["val_history"]
    assert [h["step"] for h in history] == [100, 200]
    ev, table = run_evaluate(synthetic_sets / "heldout" / "train", tmp_path / "eval", run_dir, weights)
    summary = ev.extra["summary"]
    print("\n" + table)  # the figures the README quotes (pytest -s)
    for prompt in synthetic.KINDS:
        s = summary[prompt]
        assert s["masked_latent_snr"] > s["latent_snr_identity"] + 0.3, (prompt, s)
        assert s["masked_latent_snr"] > s["masked_latent_snr_wrong_prompt"] + 0.3, (prompt, s)
        assert s["latent_snr"] > s["latent_snr_identity"] + 0.3, (prompt, s)  # what separate writes
        assert s["sisdr"] is not None and s["sisdr_oracle"] is not None  # waveform metrics with audio + decoder
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert set(saved["summary"]) == set(synthetic.KINDS) | {"(all)"}
    assert len(saved["summary"]["tone"]["code_agreement_per_codebook"]) == 12
    assert "| tone |" in (tmp_path / "eval" / "evaluation.md").read_text()
    # the paired gains are computed from the per-clip rows evaluate writes beside them
    rows = pq.read_table(tmp_path / "eval" / "evaluation_rows.parquet").to_pylist()
    assert len(rows) == ev.rows_out and len({(r["id"], r["prompt"]) for r in rows}) == len(rows)
    for prompt in synthetic.KINDS:
        over_identity = saved["gains"][prompt]["codes"]["identity mask"]
        assert over_identity["n"] == summary[prompt]["n"]
        assert over_identity["mean"] == pytest.approx(summary[prompt]["latent_snri"])
        low, high = over_identity["ci95"]
        assert low < over_identity["mean"] < high and 0 <= over_identity["p"] <= 1
    # another masker of the same set, paired by (id, prompt): here the same one, so a gain of exactly 0
    ev2, table2 = run_evaluate(
        synthetic_sets / "heldout" / "train", tmp_path / "eval2", run_dir, None, "--against", str(tmp_path / "eval")
    )
    against = json.loads((tmp_path / "eval2" / "evaluation.json").read_text())["against"]
    assert {g["codes"]["other masker"]["mean"] for g in against.values()} == {0.0}
    assert f"Against {tmp_path / 'eval'}" in table2


def test_evaluate_measures_what_separate_writes(synthetic_sets, tmp_path):
    """evaluate's latent SNR per prompt equals the SNR of separate's output rows for the same
    mixtures: both run the product's Separator (windows, cross-fade, re-quantization)."""
    import torch

    from codecsep_core import CodecTables
    from codecsep_core.training import latent_snr
    from storage.schema import CODE_SHARD_SCHEMA, codes_to_numpy, table_from_columns

    run_dir = tmp_path / "run"
    weights = synthetic_sets / "codec.pth"
    train.run(
        train.parse_args(
            train_args(
                synthetic_sets / "data",
                run_dir,
                weights,
                "max_steps=20",
                "val_every=20",
                "checkpoint_every=20",
                "optimizer.lr=0.002",
            )
        )
    )
    heldout = shards.read_table(str(synthetic_sets / "heldout" / "train"))
    ev, _ = run_evaluate(synthetic_sets / "heldout" / "train", tmp_path / "eval", run_dir)
    codes = table_from_columns(
        {
            "id": heldout["id"],
            "codes": heldout["mix_codes"],
            "codec": heldout["codec"],
            "sample_rate": heldout["sample_rate"],
            "n_samples": heldout["n_samples"],
        },
        CODE_SHARD_SCHEMA,
    )
    shards.write_table_atomic(str(tmp_path / "codes" / "part-0.parquet"), codes)
    separate.run(
        separate.parse_args(
            [
                "--input",
                str(tmp_path / "codes"),
                "--output",
                str(tmp_path / "separated"),
                *trained_model_args(run_dir),
                *sum((["--prompt", k] for k in synthetic.KINDS), []),
                *FAST,
            ]
        )
    )
    out = {(r["id"], r["prompt"]): r["codes"] for r in shards.read_table(str(tmp_path / "separated")).to_pylist()}
    tables = CodecTables.load(run_dir / "codec_tables.safetensors")
    per_prompt: dict[str, list[float]] = {}
    for row in heldout.to_pylist():
        z_hat = tables.lookup(torch.from_numpy(codes_to_numpy(out[(row["id"], row["prompt"])]).astype(np.int64)))
        z_t = tables.lookup(torch.from_numpy(codes_to_numpy(row["target_codes"]).astype(np.int64)))
        per_prompt.setdefault(row["prompt"], []).append(float(latent_snr(z_hat[None], z_t[None])[0]))
    for prompt, snrs in per_prompt.items():
        assert ev.extra["summary"][prompt]["latent_snr"] == pytest.approx(np.mean(snrs), abs=1e-3), prompt


def write_dnr_clip(folder: Path, seconds: float = 2.0, rate: int = 16000) -> None:
    rng = np.random.default_rng(3)
    stems = {
        "speech": synthetic.source("tone", seconds, rate, rng),
        "music": synthetic.source("noise", seconds, rate, rng),
        "sfx": synthetic.source("clicks", seconds, rate, rng),
    }
    folder.mkdir(parents=True)
    for name, audio in stems.items():
        sf.write(str(folder / f"{name}.wav"), audio, rate)
    sf.write(str(folder / "mix.wav"), sum(stems.values()), rate)
    (folder / "annots.csv").write_text("label,start_time,end_time\ndog_bark,0.2,0.6\nrain,0.5,1.5\n")


def test_dnr_layout_prepare_train_evaluate(tmp_path, ray_session, dac_weights):
    write_dnr_clip(tmp_path / "dnr" / "tr" / "00001")
    report = prepare(tmp_path / "dnr", tmp_path / "data", dac_weights, "val_fraction=0")
    assert report.extra["layout"] == "dnr"
    rows = shards.read_table(str(tmp_path / "data" / "train"), columns=["id", "prompt"]).to_pylist()
    assert {(r["id"], r["prompt"]) for r in rows} == {
        ("tr/00001/0000#speech", "speech"),
        ("tr/00001/0000#music", "music"),
        ("tr/00001/0000#sfx", "dog_bark, rain"),
        ("tr/00001/0001#speech", "speech"),
        ("tr/00001/0001#music", "music"),
        ("tr/00001/0001#sfx", "rain"),
    }
    train.run(
        train.parse_args(
            train_args(
                tmp_path / "data", tmp_path / "run", dac_weights, "max_steps=4", "val_every=4", "checkpoint_every=4"
            )
        )
    )
    ev, table = run_evaluate(tmp_path / "data" / "train", tmp_path / "eval", tmp_path / "run")
    assert set(ev.extra["summary"]) == {"speech", "music", "dog_bark, rain", "rain", "(all)"}
    assert "| dog_bark, rain |" in table


def test_train_resumes_from_latest_checkpoint_after_kill(synthetic_sets, tmp_path, lost_machine):
    """Killed like a lost machine, a rerun resumes from the last checkpoint; run in-process it
    leaves the caller's Ray Data context as it found it; after max_steps it trains nothing."""
    out, runs = tmp_path / "run", tmp_path / "ray_train"
    args = train_args(
        synthetic_sets / "data",
        out,
        synthetic_sets / "codec.pth",
        "max_steps=20",
        "val_every=20",
        "checkpoint_every=5",
        f"ray_storage_path={runs}",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.train", *args],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=lost_machine.env,
    )
    try:
        deadline = time.time() + 400
        while train.latest_checkpoint(str(out)) is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert train.latest_checkpoint(str(out)) is not None, "no checkpoint before the deadline or the run ended"
    finally:
        lost_machine.kill(proc)
    step, _ = train.latest_checkpoint(str(out))
    assert 0 < step < 20
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = ctx.enable_progress_bars
    ctx.enable_progress_bars = True  # a caller's setting, which train must leave as it found it
    try:
        report = train.run(train.parse_args(args))
        assert DataContext.get_current().enable_progress_bars is True
    finally:
        ctx.enable_progress_bars = before
    assert report.extra["resumed_from_step"] == step
    assert report.extra["step"] == 20 and report.rows_out == 20 - step
    assert train.latest_checkpoint(str(out))[0] == 20
    assert (out / "masker.safetensors").exists()
    trainer_runs = sorted(runs.iterdir())
    masker = content_digest(out / "masker.safetensors")
    (out / "masker.safetensors").unlink()  # as if the call that reached max_steps died before writing it
    again = train.run(train.parse_args(args))
    assert again.rows_out == 0 and again.extra["step"] == 20  # a rerun after success trains nothing
    assert sorted(runs.iterdir()) == trainer_runs  # ... and starts no Ray Train worker
    assert content_digest(out / "masker.safetensors") == masker  # the same masker, from the last checkpoint
