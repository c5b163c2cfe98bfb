"""What a person at a terminal sees: Ray Data's progress display while a job runs, and
none of it in a log (stderr not a terminal). The process is the subject here: each job
runs in a subprocess, under a pseudo-terminal (`script`) or with its output piped."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from codecsep_core import DAC_CODECS
from storage import shards
from storage.dacfile import DacFile, dac_to_rows
from storage.schema import DAC_SHARD_SCHEMA, table_from_rows

pytestmark = pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script` for a terminal")


def code_shards(folder) -> str:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        dac = DacFile(rng.integers(0, 1024, (1, 12, 25)).astype(np.uint16), 25, 7600, -20.0, 1, 16000, True)
        rows += dac_to_rows(dac, f"clip{i}", DAC_CODECS["dac_16khz"])
    shards.write_table_atomic(str(folder / "part-0.parquet"), table_from_rows(rows, DAC_SHARD_SCHEMA))
    return str(folder)


def export_command(tmp_path, name: str) -> list[str]:
    src = code_shards(tmp_path / "codes") if not (tmp_path / "codes").exists() else str(tmp_path / "codes")
    return [sys.executable, "-m", "jobs.export", src, str(tmp_path / name), "--format", "dac", "--actors", "1"]


ENV = dict(os.environ, RAY_AUTH_MODE="disabled", COLUMNS="120", TERM="xterm")


def test_a_job_on_a_terminal_shows_progress(tmp_path):
    command = " ".join(export_command(tmp_path, "on_terminal"))
    done = subprocess.run(
        ["script", "-qec", command, "/dev/null"], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "row/s" in done.stdout, done.stdout[-3000:]  # Ray Data's progress display, live


def test_a_job_with_its_output_piped_prints_no_progress_display(tmp_path):
    done = subprocess.run(export_command(tmp_path, "piped"), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "row/s" not in output and "Progress bars disabled" not in output
    assert "export: 8 rows in, 8 out" in output  # the job's own summary still shows
