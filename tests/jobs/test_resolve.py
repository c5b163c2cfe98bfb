"""The shared resolvers: prompt vectors never mix encoders, GPUs asked for and absent stop
the job at once, the codec follows from the weights."""

import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from codecsep_core import Masker, MaskerConfig, masker_to_bytes
from jobs import resolve
from jobs.engine import DeviceUnavailable, UsageError, check_device
from storage import fs as sfs
from storage.prompt_table import PromptTable, write_prompt_table


def vectors(n, dim=512):
    v = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_prompt_table_of_another_encoder_is_refused_naming_both(tmp_path):
    uri = str(tmp_path / "prompts.parquet")
    write_prompt_table(uri, PromptTable(("speech",), vectors(1), "laion-clap:other.pt"))
    with pytest.raises(UsageError, match="laion-clap:other.pt.*laion-clap:music_speech"):
        resolve.prompt_vectors(
            ["speech"], uri, None, 512, encoder="laion-clap:music_speech_audioset_epoch_15_esc_89.98.pt"
        )
    got, encoder = resolve.prompt_vectors(["speech"], uri, None, 512, encoder="laion-clap:other.pt")
    assert encoder == "laion-clap:other.pt" and np.allclose(got, vectors(1))


def test_a_prompt_table_of_another_size_is_refused(tmp_path):
    uri = str(tmp_path / "prompts.parquet")
    write_prompt_table(uri, PromptTable(("speech",), vectors(1, 256), "e"))
    with pytest.raises(UsageError, match="256-d vectors; the masker takes 512-d"):
        resolve.prompt_vectors(["speech"], uri, None, 512)


def test_separate_refuses_a_table_the_masker_was_not_trained_on(tmp_path):
    torch.manual_seed(0)
    masker = tmp_path / "masker.safetensors"
    masker.write_bytes(masker_to_bytes(Masker(MaskerConfig.preset("tiny")), prompt_encoder="encoder-A"))
    write_prompt_table(str(tmp_path / "p.parquet"), PromptTable(("speech",), vectors(1), "encoder-B"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.separate",
            "--input",
            str(tmp_path),
            "--output",
            str(tmp_path / "o"),
            "--masker",
            str(masker),
            "--prompt-table",
            str(tmp_path / "p.parquet"),
            "--prompt",
            "speech",
            "--codec-tables",
            str(tmp_path / "none.safetensors"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "encoder-B" in done.stderr and "encoder-A" in done.stderr
    assert not sfs.exists(str(tmp_path / "o"))


def test_gpus_asked_for_without_cuda_is_an_error_within_seconds(tmp_path, tables):
    """Not a hang with the actor pending, not a silent CPU run."""
    from storage.schema import CODE_SHARD_SCHEMA, codes_to_arrow, table_from_columns
    from storage.shards import write_table_atomic

    assert not torch.cuda.is_available(), "this test is about a machine without CUDA"
    tables.save(tmp_path / "tables.safetensors")
    (tmp_path / "m.safetensors").write_bytes(masker_to_bytes(Masker(MaskerConfig.preset("tiny"))))
    write_prompt_table(str(tmp_path / "p.parquet"), PromptTable(("speech",), vectors(1)))
    codes = np.zeros((12, 10), np.uint16)
    write_table_atomic(
        str(tmp_path / "in" / "part-0.parquet"),
        table_from_columns(
            {
                "id": ["a"],
                "codes": codes_to_arrow([codes]),
                "codec": ["dac_16khz"],
                "sample_rate": [16000],
                "n_samples": [3200],
            },
            CODE_SHARD_SCHEMA,
        ),
    )
    t0 = time.time()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.separate",
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "out"),
            "--masker",
            str(tmp_path / "m.safetensors"),
            "--codec-tables",
            str(tmp_path / "tables.safetensors"),
            "--prompt-table",
            str(tmp_path / "p.parquet"),
            "--prompt",
            "speech",
            "--gpus-per-actor",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 1
    assert "--gpus-per-actor 1, but the Ray cluster has 0 GPU(s)" in done.stderr
    assert time.time() - t0 < 90
    assert not sfs.exists(str(tmp_path / "out" / "_errors"))


def test_the_device_check_in_an_actor_refuses_cuda_it_does_not_have():
    with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
        check_device("cuda")
    check_device("cpu")


def test_codec_follows_from_the_weights_and_a_contradicting_codec_is_refused(dac16_checkpoint):
    data, info = resolve.codec_weights(str(dac16_checkpoint), None)
    assert info.name == "dac_16khz" and data == dac16_checkpoint.read_bytes()
    with pytest.raises(UsageError, match="weights are a dac_16khz model, but codec=dac_44khz"):
        resolve.codec_weights(str(dac16_checkpoint), "dac_44khz")
