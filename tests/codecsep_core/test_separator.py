"""Separation of codes: exactness, batch independence, windows, long clips, bad input."""

import itertools
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from codecsep_core import Masker, MaskerConfig, Separator, SeparatorConfig
from codecsep_core.separator import exclude_masks
from codecsep_core.windows import crossfade_weights, pack_windows, plan_windows


@pytest.fixture(scope="module")
def tiny_masker():
    torch.manual_seed(0)
    return Masker(MaskerConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def prompts():
    return torch.nn.functional.normalize(torch.randn(3, 512, generator=torch.Generator().manual_seed(1)), dim=-1)


def rand_codes(n_frames, seed):
    return torch.randint(0, 1024, (12, n_frames), generator=torch.Generator().manual_seed(seed))


def test_single_window_equals_lookup_mask_requantize(tables, tiny_masker, prompts):
    codes = rand_codes(120, 0)
    result = Separator(tables, tiny_masker).separate([codes], prompts)[0]
    with torch.no_grad():
        z = tables.lookup(codes[None]).expand(3, -1, -1)
        mask = tiny_masker(z, prompts)
        expected = tables.quantize(mask * z)
    assert result.codes.shape == (3, 12, 120)
    assert torch.equal(result.codes.long(), expected)
    energy = ((mask * z) ** 2).sum((1, 2)) / (z[0] ** 2).sum()
    torch.testing.assert_close(result.scores["energy_kept"], energy, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.scores["mask_mean"], mask.mean((1, 2)), rtol=1e-4, atol=1e-6)


def test_residual_and_frame_energies_come_from_the_same_pass(tables, tiny_masker, prompts):
    codes = rand_codes(120, 0)
    result = Separator(tables, tiny_masker).separate([codes], prompts, residual=True)[0]
    with torch.no_grad():
        z = tables.lookup(codes[None]).expand(3, -1, -1)
        mask = tiny_masker(z, prompts)
        expected = tables.quantize((1 - mask) * z)
    assert torch.equal(result.residual.long(), expected)
    energy_in = (z[0] ** 2).sum()
    torch.testing.assert_close(
        result.residual_scores["energy_kept"], ((1 - mask) * z).pow(2).sum((1, 2)) / energy_in, rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(result.residual_scores["mask_mean"], (1 - mask).mean((1, 2)), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.frame_energy, z[0].pow(2).sum(0), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(result.frame_kept, (mask * z).pow(2).sum(1), rtol=1e-4, atol=1e-8)
    # the clip score is the frames' kept energy over theirs
    torch.testing.assert_close(
        result.scores["energy_kept"], result.frame_kept.sum(1) / result.frame_energy.sum(), rtol=1e-4, atol=1e-6
    )
    assert Separator(tables, tiny_masker).separate([codes], prompts)[0].residual is None


def test_windowed_residual_equals_whole_clip_residual(tables, prompts):
    """Across windows the residual is (1 - M) Z with the same cross-faded M as the target: with
    a mask that ignores context, windowing is invisible in both stems."""
    torch.manual_seed(0)
    masker = Masker(MaskerConfig.preset("tiny")).eval()
    with torch.no_grad():
        masker.out_conv.weight.zero_()
        masker.out_conv.bias.fill_(0.4)
    clip = rand_codes(300, 4)
    windowed = Separator(tables, masker, SeparatorConfig(window_frames=64, overlap_frames=16, batch_windows=3))
    whole = Separator(tables, masker, SeparatorConfig(window_frames=1000, overlap_frames=16))
    a, b = (s.separate([clip], prompts, residual=True)[0] for s in (windowed, whole))
    assert a.residual.shape == (3, 12, 300)
    assert (a.residual == b.residual).float().mean() >= 0.999
    torch.testing.assert_close(a.residual_scores["energy_kept"], b.residual_scores["energy_kept"])
    torch.testing.assert_close(a.scores["mask_mean"] + a.residual_scores["mask_mean"], torch.ones(3))


def test_exclude_composes_masks(tables, tiny_masker, prompts):
    codes = rand_codes(90, 2)
    target, excluded = prompts[:2], prompts[2:]
    result = Separator(tables, tiny_masker).separate([codes], target, residual=True, exclude=excluded)[0]
    with torch.no_grad():
        z = tables.lookup(codes[None]).expand(3, -1, -1)
        masks = tiny_masker(z, prompts)
    m = exclude_masks(masks[:2], masks[2:])
    assert torch.equal(result.codes.long(), tables.quantize(m * z[:2]))
    assert torch.equal(result.residual.long(), tables.quantize((1 - m) * z[:2]))
    assert result.codes.shape == (2, 12, 90)
    excluded_masks = torch.tensor([[[0.5], [1.5]], [[-0.2], [0.0]]])  # [X=2, D=2, L=1]; 1 - M clipped to [0, 1]
    composed = exclude_masks(torch.full((1, 2, 1), 0.8), excluded_masks)
    torch.testing.assert_close(composed, torch.tensor([[[0.4], [0.0]]]))
    with pytest.raises(ValueError, match="embeddings"):
        Separator(tables, tiny_masker).separate([codes], target, exclude=torch.zeros(1, 3))


def test_a_clip_does_not_depend_on_its_batch_mates(tables, tiny_masker, prompts):
    cfg = SeparatorConfig(window_frames=100, overlap_frames=20, batch_windows=5)
    sep = Separator(tables, tiny_masker, cfg)
    clips = [rand_codes(n, i) for i, n in enumerate([1, 7, 99, 100, 101, 250, 613])]
    together = sep.separate(clips, prompts)
    for clip, res in zip(clips, together):
        alone = sep.separate([clip], prompts)[0]
        agree = (alone.codes == res.codes).float().mean().item()
        assert agree >= 0.999
        for k in ("energy_kept", "mask_mean"):
            torch.testing.assert_close(alone.scores[k], res.scores[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n_frames", [1, 50, 100, 101, 180, 181, 1000, 1234])
def test_crossfade_weights_sum_to_one_everywhere(n_frames):
    window, overlap = 100, 20
    total = torch.zeros(n_frames)
    for w in plan_windows(n_frames, window, overlap):
        assert 0 < w.length <= window
        total[w.start : w.stop] += crossfade_weights(w, overlap)
    torch.testing.assert_close(total, torch.ones(n_frames))


def test_windowed_constant_mask_equals_whole_clip(tables, prompts):
    """With a mask that ignores context, windowing must be invisible: same codes as one window."""
    torch.manual_seed(0)
    masker = Masker(MaskerConfig.preset("tiny")).eval()
    with torch.no_grad():
        masker.out_conv.weight.zero_()
        masker.out_conv.bias.fill_(0.7)  # mask = snake(0.7), the same at every frame
    clip = rand_codes(777, 5)
    windowed = Separator(tables, masker, SeparatorConfig(window_frames=64, overlap_frames=16)).separate(
        [clip], prompts
    )[0]
    whole = Separator(tables, masker, SeparatorConfig(window_frames=1000, overlap_frames=16)).separate([clip], prompts)[
        0
    ]
    assert (windowed.codes == whole.codes).float().mean() >= 0.999
    torch.testing.assert_close(windowed.scores["mask_mean"], whole.scores["mask_mean"])


def test_bad_inputs_give_clear_errors(tables, tiny_masker, prompts):
    sep = Separator(tables, tiny_masker)
    with pytest.raises(ValueError, match="clip 1: expected 12 codebooks"):
        sep.separate([rand_codes(10, 0), torch.zeros(9, 10, dtype=torch.long)], prompts)
    with pytest.raises(ValueError, match="clip 0: codes out of range"):
        sep.separate([torch.full((12, 4), 5000)], prompts)
    with pytest.raises(ValueError, match="clip 0: empty clip"):
        sep.separate([torch.zeros(12, 0, dtype=torch.long)], prompts)
    with pytest.raises(ValueError, match=r"embeddings must be \[P>0, 512\]"):
        sep.separate([rand_codes(10, 0)], torch.zeros(2, 256))
    with pytest.raises(ValueError, match="NaN"):
        sep.separate([rand_codes(10, 0)], torch.full((1, 512), float("nan")))
    with pytest.raises(ValueError, match="precision"):
        SeparatorConfig(precision="int4")


PEAK_RSS_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, torch
    from codecsep_core import CodecTables, Masker, MaskerConfig, Separator
    tables = CodecTables.load(sys.argv[1])
    n_frames = int(sys.argv[2])
    torch.manual_seed(0)
    masker = Masker(MaskerConfig.preset("tiny"))
    longest = []
    masker.register_forward_hook(lambda m, args, out: longest.append(args[0].shape[-1]))
    sep = Separator(tables, masker)
    prompts = torch.randn(2, 512)
    residual = sys.argv[3] == "residual"
    sep.separate([torch.randint(0, 1024, (12, 10))], prompts, residual=residual)  # warm-up: allocator, kernels
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = sep.separate([torch.randint(0, 1024, (12, n_frames), dtype=torch.int16)], prompts, residual=residual)[0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"grow_mb": (peak - base) / 1024, "longest": max(longest),
                      "shape": list(res.codes.shape)}))
    """
)


@pytest.mark.parametrize("stems", ["target", "residual"])
def test_clips_from_one_frame_to_30_minutes_with_bounded_memory(tables, tmp_path, stems):
    path = tmp_path / "tables.safetensors"
    tables.save(path)

    def run(n_frames):
        out = subprocess.run(
            [sys.executable, "-c", PEAK_RSS_SCRIPT, str(path), str(n_frames), stems],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    one_frame, minute, half_hour = run(1), run(50 * 60), run(50 * 60 * 30)
    assert one_frame["shape"] == [2, 12, 1] and half_hour["shape"] == [2, 12, 90_000]
    assert half_hour["longest"] <= SeparatorConfig().window_frames
    # A 30-minute latent alone is 90k frames x 1024 x 4 B = 369 MB per prompt; streaming keeps
    # the growth to the (small, O(T)) code arrays.
    assert half_hour["grow_mb"] - minute["grow_mb"] < 100, (minute, half_hour)


def test_packed_short_clips_equal_each_clip_alone(tables, prompts):
    """Short clips share masker rows (attention within each clip, positions per clip): the
    codes and scores are those of separating each clip alone, and the masker runs on far
    fewer rows than there are clips."""
    torch.manual_seed(0)
    masker = Masker(MaskerConfig.preset("tiny")).eval()
    rows = []
    masker.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    sep = Separator(tables, masker, SeparatorConfig(window_frames=100, overlap_frames=20, batch_windows=4))
    gen = torch.Generator().manual_seed(3)
    clips = [rand_codes(int(n), i) for i, n in enumerate(torch.randint(1, 60, (40,), generator=gen))]
    packed = sep.separate(clips, prompts)
    assert sum(rows) < len(clips) / 2
    equal = total = 0
    for clip, res in zip(clips, packed):
        alone = sep.separate([clip], prompts)[0]
        equal += int((alone.codes == res.codes).sum())
        total += alone.codes.numel()
        for k in ("energy_kept", "mask_mean"):
            torch.testing.assert_close(alone.scores[k], res.scores[k], rtol=1e-4, atol=1e-6)
    assert equal / total >= 0.999, equal / total


def test_pack_windows_fills_rows_and_keeps_window_order():
    lengths = [30, 100, 5, 70, 100, 40, 60, 1, 99]
    windows = [w for i, n in enumerate(lengths) for w in plan_windows(n, 100, 10, i)]
    batches = list(pack_windows(windows, 100, 2))
    assert [s.window for b in batches for s in b] == windows  # every window once, in order
    for b in batches:
        assert len({s.row for s in b}) <= 2
        for row in {s.row for s in b}:
            spans = sorted((s.offset, s.offset + s.window.length) for s in b if s.row == row)
            assert spans[-1][1] <= 100 and all(a[1] <= c[0] for a, c in itertools.pairwise(spans))
    assert len(batches) < len(windows) / 2


def test_precisions_share_one_masker_in_any_order(tables, prompts):
    """A bf16 separator and then an fp32 one on the same masker: the folded tail cached by
    the first serves the second (it is folded in the weights' dtype, not autocast's)."""
    torch.manual_seed(0)
    masker = Masker(MaskerConfig.preset("tiny")).eval()
    clip = [rand_codes(60, 9)]
    bf16 = Separator(tables, masker, SeparatorConfig(precision="bf16")).separate(clip, prompts)[0]
    fp32 = Separator(tables, masker, SeparatorConfig(precision="fp32")).separate(clip, prompts)[0]
    assert bf16.codes.shape == fp32.codes.shape
    torch.manual_seed(0)
    reference = Separator(tables, Masker(MaskerConfig.preset("tiny")).eval()).separate(clip, prompts)[0]
    assert torch.equal(fp32.codes, reference.codes)


def test_int8_quantizes_a_copy_and_stays_close_to_fp32(tables, prompts):
    """int8 quantizes the masker's linear layers of its own copy: the user's masker, and an
    fp32 separator built on it afterwards, are untouched. Its output is judged by the
    bench's quality rule; here only that it is the same separation, near-tie codes aside."""
    torch.manual_seed(0)
    masker = Masker(MaskerConfig.preset("tiny")).eval()
    clip = [rand_codes(60, 9)]
    fp32 = Separator(tables, masker).separate(clip, prompts)[0]
    int8_sep = Separator(tables, masker, SeparatorConfig(precision="int8"))
    assert any("quantized" in type(m).__module__ for m in int8_sep.masker.modules())
    assert not any("quantized" in type(m).__module__ for m in masker.modules())
    int8 = int8_sep.separate(clip, prompts)[0]
    assert int8.codes.shape == fp32.codes.shape
    assert (int8.codes == fp32.codes).float().mean() > 0.5
    assert torch.equal(Separator(tables, masker).separate(clip, prompts)[0].codes, fp32.codes)
