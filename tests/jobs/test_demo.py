"""`make demo` in small: the command a new user runs first goes through every job and
leaves each output the README points at."""

import os
import re
import shutil
import subprocess
import sys

import pyarrow.parquet as pq


def test_the_demo_runs_every_job_and_leaves_their_outputs(tmp_path, fitted_codec):
    out = tmp_path / "demo"
    (out / "codec").mkdir(parents=True)
    shutil.copy(fitted_codec, out / "codec" / "fitted_random_dac16.pth")  # the demo's own, fitted once a session
    small = [
        "max_steps=4",
        "train_sources_per_kind=3",
        "heldout_sources_per_kind=2",
        "train_mixtures=6",
        "heldout_mixtures=2",
        "ray.batch_size=4",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "jobs.demo", "--output", str(out), *small],
        env=dict(os.environ, RAY_AUTH_MODE="disabled"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    separated = pq.read_table(out / "separated", columns=["id", "prompt", "stem", "active_spans"])
    assert set(separated["stem"].to_pylist()) == {"target", "residual"}
    assert separated.num_rows == 2 * 3 * 2  # held-out mixtures x prompts x stems
    assert "codes" not in pq.read_schema(next((out / "scores").glob("*.parquet"))).names
    assert len(list((out / "wav").rglob("*.wav"))) == separated.num_rows
    assert (out / "report.html").stat().st_size > 0 and list((out / "figures").glob("*.png"))
    assert "RANDOM-WEIGHT DAC" in done.stdout and "FIXED RANDOM VECTORS" in done.stdout
    output = done.stdout + done.stderr  # what a person reads: no warning repeated by every worker (-v shows them)
    assert "Failed to query Ray Train Controller" not in output and "FutureWarning" not in output
    # Ray Data's and Ray Train's own INFO lines stay in Ray's log files; the job's progress shows
    assert "Execution plan of Dataset" not in output and "Reporting training result" not in output
    assert re.search(r"step \d+: checkpoint", output) and re.search(r"separate: \d+ rows done", output)
    manifest = pq.read_table(out / "segments" / "_manifest.parquet")
    segment_files = [f for f in (out / "segments").glob("*.parquet") if not f.name.startswith("_")]
    segment_ids = [i for f in segment_files for i in pq.read_table(f, columns=["id"])["id"].to_pylist()]
    assert sorted(manifest["id"].to_pylist()) == sorted(segment_ids) and set(manifest["prompt"].to_pylist()) <= {"tone"}


def test_a_demo_asked_for_gpus_where_there_are_none_fails_at_once(tmp_path, ray_session, capsys):
    """The demo's Ray settings reach every job it runs: asked for GPUs on a machine with
    none, it stops with the reason (exit 1), never a silent CPU run."""
    from jobs import cli

    assert cli.main(["demo", "--output", str(tmp_path / "demo"), "ray.num_gpus_per_actor=1"]) == 1
    assert "GPU" in capsys.readouterr().err
