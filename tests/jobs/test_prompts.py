"""`codecsep prompts` without the text encoder's files: a clear, fast error, not a hang."""

import os
import subprocess
import sys
import time


def test_offline_without_cached_clap_files_fails_fast_and_says_what_is_missing(tmp_path):
    """A CLAP checkpoint is there, the hub files laion-clap loads are not (empty cache,
    offline): the job names them and how to fetch them, instead of hanging on retries."""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    (tmp_path / "clap.pt").write_bytes(b"not read: the hub files are checked first")
    t0 = time.time()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.prompts",
            "--output",
            str(tmp_path / "p.parquet"),
            "--prompt",
            "speech",
            "--clap-checkpoint",
            str(tmp_path / "clap.pt"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "roberta-base" in done.stderr and "offline mode is set" in done.stderr and "hf download" in done.stderr
    assert time.time() - t0 < 60
    assert not (tmp_path / "p.parquet").exists()


def test_a_missing_clap_checkpoint_is_named(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.prompts",
            "--output",
            str(tmp_path / "p.parquet"),
            "--prompt",
            "speech",
            "--clap-checkpoint",
            str(tmp_path / "missing.pt"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "missing.pt" in done.stderr


def test_no_prompts_is_a_usage_error(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "jobs.prompts", "--output", str(tmp_path / "p.parquet")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "no prompts" in done.stderr
