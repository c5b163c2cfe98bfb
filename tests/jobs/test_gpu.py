"""The GPU path (`make gpu-check`): the separator on CUDA against CPU under the quality
rule, and `codecsep separate --gpus-per-actor 1` end to end. Skipped without CUDA."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from codecsep_core import Masker, MaskerConfig, Separator, SeparatorConfig
from codecsep_core.codec_tables import CodecTables
from storage.shards import read_table

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
REPO = Path(__file__).resolve().parents[2]


def test_separator_on_cuda_holds_the_quality_rule_against_cpu(quality_set):
    """Each precision on the GPU separates the held-out mixtures within 0.1 dB of CPU fp32."""
    from jobs.bench.quality import measure_quality

    cpu = measure_quality(quality_set, ["fp32"], SeparatorConfig())["precisions"]["fp32"]
    gpu = measure_quality(quality_set, ["fp32", "bf16", "fp16"], SeparatorConfig(), torch.device("cuda"))
    for precision, row in gpu["precisions"].items():
        assert row["snr_vs_target_db"] >= cpu["snr_vs_target_db"] - 0.1, (precision, row, cpu)


def test_separate_with_one_gpu_per_actor_end_to_end(tmp_path, dac16):
    """The CLI with --gpus-per-actor 1 writes every (clip, prompt) once, with the codes of
    the in-process separator on CPU (up to rounding: >= 90% of frames equal)."""
    from jobs.bench.config import BenchConfig
    from jobs.bench.models import Models
    from jobs.bench.pipeline import write_job_inputs

    torch.manual_seed(0)
    masker = Masker(MaskerConfig.preset("tiny")).eval()
    tables = CodecTables.from_dac_model(dac16)
    m = Models(dac16, tables, masker, torch.nn.functional.normalize(torch.randn(1, 512), dim=-1))
    cfg = replace(BenchConfig(), clip_seconds=2.0, job_seconds=16.0, job_shards=2, job_batch_size=4)
    inputs = write_job_inputs(cfg, m, tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "jobs.separate",
        "--input",
        str(tmp_path / "shards"),
        "--output",
        str(tmp_path / "out"),
        "--prompt",
        inputs["prompts"][0],
        "--masker",
        str(tmp_path / "masker.safetensors"),
        "--codec-tables",
        str(tmp_path / "tables.safetensors"),
        "--prompt-table",
        str(tmp_path / "prompts.parquet"),
        "--actors",
        "1",
        "--gpus-per-actor",
        "1",
    ]
    subprocess.run(
        cmd, cwd=REPO, check=True, timeout=300, env={**__import__("os").environ, "RAY_AUTH_MODE": "disabled"}
    )
    out = read_table(str(tmp_path / "out")).to_pylist()
    assert sorted(r["id"] for r in out) == [f"clip-{i:05d}" for i in range(len(inputs["clips"]))]
    expected = Separator(tables, masker).separate(inputs["clips"], m.prompts)
    by_id = {r["id"]: torch.tensor(r["codes"]) for r in out}
    equal = [(by_id[f"clip-{i:05d}"] == e.codes[0]).all(0).float().mean() for i, e in enumerate(expected)]
    assert float(torch.stack(equal).mean()) >= 0.9
