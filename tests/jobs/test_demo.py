"""`make demo` in small: the command a new user runs first goes through every job on
scenes of real sounds (speech, music, effects) and leaves each output the README points
at; without the sound packages it says why in one line and runs on synthetic sounds."""

import os
import re
import shutil
import subprocess
import sys

import pyarrow.parquet as pq


def test_the_demo_runs_every_job_and_leaves_their_outputs(tmp_path, fitted_codec):
    out = tmp_path / "demo"
    (out / "codec").mkdir(parents=True)
    # a codec fitted once a session stands in for the one the demo fits to scenes: this test is of the plumbing
    shutil.copy(fitted_codec, out / "codec" / "fitted_random_dac16_scenes.pth")
    small = ["scenes.seconds=4", "scenes.train=2", "scenes.heldout=1", "scenes.max_steps=4", "ray.batch_size=4"]
    done = subprocess.run(
        [sys.executable, "-m", "jobs.demo", "--output", str(out), *small],
        env=dict(os.environ, RAY_AUTH_MODE="disabled"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    separated = pq.read_table(out / "separated", columns=["id", "prompt", "stem", "active_spans", "n_samples"])
    assert set(separated["stem"].to_pylist()) == {"target", "residual"}
    assert set(separated["prompt"].to_pylist()) == {"speech", "music", "sound effects"}
    assert separated.num_rows == 1 * 3 * 2  # held-out scenes (whole) x prompts x stems
    assert set(separated["n_samples"].to_pylist()) == {4 * 16000}
    assert "sounds: DnR-style scenes" in done.stdout
    assert "| speech | codes |" in done.stdout and "| sound effects |" in done.stdout  # the paired gains
    assert "codes" not in pq.read_schema(next((out / "scores").glob("*.parquet"))).names
    assert len(list((out / "wav").rglob("*.wav"))) == separated.num_rows
    assert (out / "report.html").stat().st_size > 0 and list((out / "figures").glob("*.png"))
    assert "RANDOM-WEIGHT DAC" in done.stdout and "FIXED RANDOM VECTORS" in done.stdout
    output = done.stdout + done.stderr  # what a person reads: no warning repeated by every worker (-v shows them)
    assert "Failed to query Ray Train Controller" not in output and "FutureWarning" not in output
    ray_warnings = r"core_worker\.cc|\(raylet\)|Progress bars disabled|Warning:|WARNING: "
    assert [line for line in output.splitlines() if re.search(ray_warnings, line)] == []
    # Ray Data's and Ray Train's own INFO lines stay in Ray's log files; the job's progress shows
    assert "Execution plan of Dataset" not in output and "Reporting training result" not in output
    assert re.search(r"step \d+: checkpoint", output) and re.search(r"separate: \d+ rows done", output)
    manifest = pq.read_table(out / "segments" / "_manifest.parquet")
    segment_files = [f for f in (out / "segments").glob("*.parquet") if not f.name.startswith("_")]
    segment_ids = [i for f in segment_files for i in pq.read_table(f, columns=["id"])["id"].to_pylist()]
    assert sorted(manifest["id"].to_pylist()) == sorted(segment_ids) and set(manifest["prompt"].to_pylist()) <= {
        "speech"
    }


def test_without_the_sound_packages_the_demo_says_why_in_one_line_and_falls_back():
    import pytest

    from jobs import demo

    kind, why = demo.choose_sounds("auto", ["espeak-ng", "fluidsynth"])
    assert kind == "synthetic" and "\n" not in why and "espeak-ng, fluidsynth" in why and "make install-sounds" in why
    assert demo.choose_sounds("auto", []) == ("scenes", None)
    assert demo.choose_sounds("synthetic", []) == ("synthetic", None)
    with pytest.raises(RuntimeError, match="make install-sounds"):
        demo.choose_sounds("scenes", ["fluidsynth"])
    with pytest.raises(ValueError, match="sounds must be one of"):
        demo.choose_sounds("birdsong", [])


def test_a_demo_asked_for_gpus_where_there_are_none_fails_at_once(tmp_path, ray_session, capsys):
    """The demo's Ray settings reach every job it runs: asked for GPUs on a machine with
    none, it stops with the reason (exit 1), never a silent CPU run."""
    from jobs import cli

    assert cli.main(["demo", "--output", str(tmp_path / "demo"), "ray.num_gpus_per_actor=1"]) == 1
    assert "GPU" in capsys.readouterr().err


def test_each_kind_of_sounds_is_a_set_prepare_train_accepts(tmp_path):
    """The two sound sets the demo can run on, written small: both are valid prepare-train
    inputs with the arguments the demo gives (the scenes in the dnr layout, sound effects
    prompted as DnR prompts them)."""
    from jobs import demo, prepare_train

    cfg = demo.parse_args(
        [
            "--output",
            str(tmp_path),
            "scenes.seconds=2",
            "scenes.train=1",
            "scenes.heldout=1",
            "synthetic.train_sources_per_kind=1",
            "synthetic.heldout_sources_per_kind=1",
        ]
    )
    for make, layout in ((demo.scene_sounds, "dnr"), (demo.synthetic_sounds, "generic")):
        out = tmp_path / layout
        sounds = make(cfg, out)
        for split, args in (("train", sounds.train_args), ("heldout", sounds.heldout_args)):
            src = out / "sources" / split
            prepare_train.parse_args([str(src), str(out / "data"), *args]).check()
            assert prepare_train.detect_layout(str(src)) == layout
    assert sounds.prompts == ("tone", "noise", "clicks") and sounds.whole_mixtures is None
    scenes = demo.scene_sounds(cfg, tmp_path / "again")
    assert scenes.prompts == ("speech", "music", "sound effects") and "sfx_prompt=sound effects" in scenes.train_args
