"""`codecsep bench` in a tiny mode: every required figure is present, finite, positive, and
the ratios are the ones the measured times give. Speed targets are not asserted here
(machines are noisy); the benchmark output reports PASS/FAIL against them."""
import json
import math

import pytest
import torch

from codecsep_core import Masker, MaskerConfig

TINY = [
    "masker_preset=tiny", "clip_seconds=1", "batch_sizes=[1,2]", "speedup_batch=2", "waveform_max_batch=2",
    "repeats=1", "ablation_prompts=2", "job_seconds=4", "job_shards=2", "job_actors=[1]", "job_repeats=1", "job_cpus=1",
    "job_batch_size=2", "length_seconds=[1,2]", "ingest_seconds=2", "matmul_size=256", "docs=null",
]
REQUIRED = ["codes_vs_waveform_speedup", "separator_gmacs_per_audio_second", "separator_x_realtime",
            "job_vs_bare_loop", "fraction_of_machine_peak"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    import os

    from jobs import bench

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    out = tmp_path_factory.mktemp("bench")
    assert bench.main(["--output", str(out), *TINY]) == 0
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


def speed_row(res, route, precision, batch):
    (row,) = [r for r in res["speed"] if (r["route"], r["precision"], r["batch"], r["device"]) == (route, precision, batch, "cpu")]
    return row


def test_required_figures_are_positive_and_finite(bench):
    res, markdown = bench
    for key in REQUIRED:
        assert math.isfinite(res[key]) and res[key] > 0, key
    for key, value in res["macs"].items():
        if key.endswith("gmacs_per_audio_second") and not key.startswith("lookup"):
            assert value > 0, key
    assert all(v > 0 for v in res["matmul_peak_gflops"].values())
    assert "| target | result |" in markdown and ("PASS" in markdown or "FAIL" in markdown)


def test_ratios_are_computed_from_the_measured_times(bench):
    res, _ = bench
    codes, wave = speed_row(res, "codes", "fp32", 2), speed_row(res, "waveform", "fp32", 2)
    assert res["codes_vs_waveform_speedup"] == pytest.approx(wave["seconds"] / codes["seconds"])
    best = res["summary"]["separator_fastest_agreeing"]
    assert res["separator_x_realtime"] == pytest.approx(speed_row(res, "codes", best["precision"], best["batch"])["x_realtime"])
    job = res["job"]
    assert res["job_vs_bare_loop"] == pytest.approx(max(r["x_realtime"] for r in job["runs"]) / job["bare_loop_x_realtime"])
    assert job["runs"][0]["rows_out"] == job["clips"] and job["runs"][0]["peak_actor_rss_mb"] > 0
    ingest = res["ingest"]
    assert (ingest["files"], ingest["errors"]) == (2, 0)
    assert ingest["x_realtime"] == pytest.approx(ingest["audio_seconds"] / ingest["wall_s"])
    for key, config in (("fraction_of_machine_peak", "separator_fastest_agreeing"),
                        ("fraction_of_machine_peak_fastest", "separator_fastest")):
        run = res["summary"][config]
        achieved = run["x_realtime"] * 2 * res["separator_gmacs_per_audio_second"]
        assert res["summary"][key] == pytest.approx(achieved / res["matmul_peak_gflops"][run["precision"]]), key


def test_attention_is_counted_and_the_codec_costs_more_than_the_separator(bench):
    res, _ = bench
    assert res["macs"]["separator_macs_by_op"]["_scaled_dot_product_flash_attention_for_cpu"] > 0
    assert res["macs"]["dac_decoder_gmacs_per_audio_second"] > res["separator_gmacs_per_audio_second"]
    assert res["macs"]["separator_gmacs_per_audio_second"] <= res["macs"]["published_masker_gmacs_per_audio_second"]
    assert set(res["agreement"]["bf16"]) == {"code_agreement", "frame_agreement", "latent_snr_db"}


def test_folded_tail_equals_the_published_layer_order():
    """The fast path's fold is exact algebra: it only moves float rounding."""
    torch.manual_seed(0)
    m = Masker(MaskerConfig.preset("tiny")).eval()
    z, cond = torch.randn(2, 1024, 30), torch.randn(2, 512)
    with torch.no_grad():
        folded = m(z, cond)
        per_window = m(z[:1], cond, all_prompts=True)  # window 0 under both prompts
        m.fold_tail = False
        published = m(z, cond)
        published_window = m(z[:1].expand(2, -1, -1), cond)
    torch.testing.assert_close(folded, published, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(per_window, published_window, rtol=1e-4, atol=1e-4)
