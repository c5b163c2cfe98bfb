"""`codecsep prompts` without the text encoder's files: a clear, fast error, not a hang."""
import os
import subprocess
import sys
import time


def test_offline_without_cached_clap_files_fails_fast_and_says_what_is_missing(tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    t0 = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "jobs.prompts", "--output", str(tmp_path / "p.parquet"), "--prompt", "speech",
         "--clap-checkpoint", str(tmp_path / "missing.pt")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "missing.pt" in done.stderr
    assert time.time() - t0 < 60
    assert not (tmp_path / "p.parquet").exists()


def test_no_prompts_is_a_usage_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "jobs.prompts", "--output", str(tmp_path / "p.parquet")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no prompts" in done.stderr
