"""Residual stems, activity spans and negative prompts, measured with a briefly trained masker.

The codec is a random DAC 16 kHz fitted to generated audio (`synthetic.fitted_random_codec`;
an unfitted one's codes carry nothing a mask could separate); the `tiny` masker is trained in
process on mixtures of one source of each kind, where each source sounds in only part of the
clip half of the time (as in real recordings). The held-out mixtures use other sources: one
kind sounds in a part of the clip only, the other two throughout. `pytest -s` prints the figures.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from codecsep_core import Masker, MaskerConfig, Separator, training
from codecsep_core import activity as act
from codecsep_core.dac_codec import DacCodec
from codecsep_core.separator import exclude_masks
from jobs import synthetic

RATE = 16000
KINDS = list(synthetic.KINDS)


def gated(x: np.ndarray, rng: np.random.Generator, min_s: float, max_s: float) -> tuple[np.ndarray, list[float]]:
    """x sounding only in one random span (10 ms fades), and that span in seconds."""
    length = int(rng.uniform(min_s, max_s) * RATE)
    start = int(rng.integers(0, len(x) - length))
    gate = np.zeros(len(x), np.float32)
    gate[start : start + length] = 1
    ramp = int(0.01 * RATE)
    gate[start : start + ramp] = np.linspace(0, 1, ramp)
    gate[start + length - ramp : start + length] = np.linspace(1, 0, ramp)
    return x * gate, [start / RATE, (start + length) / RATE]


def encode(codec: DacCodec, clips: list[np.ndarray], chunk: int = 16) -> list[np.ndarray]:
    return [c for i in range(0, len(clips), chunk) for c in codec.encode(np.stack(clips[i : i + chunk]), RATE)]


def train_scenes(codec, n: int, seconds: float, seed: int):
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(n):
        sources = [synthetic.source(k, seconds, RATE, rng) for k in KINDS]
        sources = [gated(x, rng, 0.3 * seconds, 0.6 * seconds)[0] if rng.random() < 0.5 else x for x in sources]
        clips += [sum(sources), *sources]
    codes = encode(codec, clips)
    return [(codes[4 * i], codes[4 * i + 1 : 4 * i + 4]) for i in range(n)]


def heldout_scenes(codec, n: int, seconds: float, seed: int):
    """(mixture codes, source codes per kind, kind sounding in part only, its true span)."""
    rng = np.random.default_rng(seed)
    clips, partial = [], []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        sources = [synthetic.source(k, seconds, RATE, rng) for k in KINDS]
        sources[i % 3], span = gated(sources[i % 3], rng, 0.3 * seconds, 0.6 * seconds)
        clips += [sum(sources), *sources]
        partial.append((kind, span))
    codes = encode(codec, clips)
    return [(codes[4 * i], codes[4 * i + 1 : 4 * i + 4], *partial[i]) for i in range(n)]


def train_masker(tables, scenes, steps: int, seed: int = 0) -> Masker:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vectors = training.fixed_prompt_vectors(KINDS)
    mix = [m for m, targets in scenes for _ in targets]
    targets = [t for _, ts in scenes for t in ts]
    cond = np.stack([vectors[k] for _ in scenes for k in range(len(KINDS))])
    masker = Masker(MaskerConfig.preset("tiny"))
    optimizer = training.make_optimizer(masker, lr=0.002)
    for _ in range(steps):
        idx = rng.choice(len(mix), 12, replace=False)
        batch = training.collate([mix[i] for i in idx], [targets[i] for i in idx], cond[idx], 52, rng)
        training.train_step(masker, optimizer, lambda: training.latent_loss(masker, tables, batch))
    return masker.eval()


@pytest.fixture(scope="module")
def trained(fitted_codec):
    codec = DacCodec.load(str(fitted_codec))
    tables = codec.tables()
    masker = train_masker(tables, train_scenes(codec, 40, 1.5, seed=0), steps=250)
    return SimpleNamespace(
        tables=tables,
        masker=masker,
        heldout=heldout_scenes(codec, 9, 3.0, seed=3),
        prompts=torch.from_numpy(training.fixed_prompt_vectors(KINDS)),
    )


def latent(tables, codes) -> torch.Tensor:
    return tables.lookup(torch.as_tensor(np.asarray(codes, dtype=np.int64))[None])


def long_codes(codes) -> torch.Tensor:
    return torch.from_numpy(np.asarray(codes, dtype=np.int64))


def test_target_plus_residual_rebuilds_the_mixture(trained):
    sep = Separator(trained.tables, trained.masker)
    both, target_only = [], []
    for mix, _, _, _ in trained.heldout:
        result = sep.separate([long_codes(mix)], trained.prompts, residual=True)[0]
        z_mix = latent(trained.tables, mix)
        for p in range(len(KINDS)):
            z_target = latent(trained.tables, result.codes[p])
            z_rest = latent(trained.tables, result.residual[p])
            both.append(training.latent_snr(z_target + z_rest, z_mix).item())
            target_only.append(training.latent_snr(z_target, z_mix).item())
    print(
        f"\nresidual: SNR of lookup(target) + lookup(residual) vs lookup(mixture) {np.mean(both):.2f} dB, "
        f"lookup(target) alone {np.mean(target_only):.2f} dB"
    )
    assert np.mean(both) > np.mean(target_only) + 1.0


def test_active_spans_beat_the_whole_clip_span(trained):
    """The kind that sounds in part of a clip: its spans overlap the true span better than
    the whole clip does. The two kinds that sound throughout: their spans still cover most
    of the clip (a rule that cut every clip in two would fail here)."""
    sep = Separator(trained.tables, trained.masker)
    frame_rate = trained.tables.info.frame_rate
    spans_iou, whole_iou, throughout_iou = [], [], []
    for mix, _, kind, span in trained.heldout:
        result = sep.separate([long_codes(mix)], trained.prompts)[0]
        duration = result.frame_energy.shape[0] / frame_rate
        for p, other in enumerate(KINDS):
            found = act.find_activity(result.frame_kept[p].numpy(), result.frame_energy.numpy(), frame_rate)
            assert 0 <= found.fraction <= 1
            if other == kind:
                spans_iou.append(act.span_iou(found.spans, [span], duration, frame_rate))
                whole_iou.append(act.span_iou([[0.0, duration]], [span], duration, frame_rate))
            else:
                throughout_iou.append(act.span_iou(found.spans, [[0.0, duration]], duration, frame_rate))
    print(
        f"\nactivity IoU with the true span: spans {np.mean(spans_iou):.3f}, whole clip {np.mean(whole_iou):.3f} "
        f"({len(spans_iou)} held-out clips); kinds sounding throughout: spans {np.mean(throughout_iou):.3f}"
    )
    assert np.mean(spans_iou) > np.mean(whole_iou) + 0.02
    assert np.mean(throughout_iou) > 0.8


def test_excluding_a_source_lowers_it_in_the_output(trained):
    """Per held-out mixture and (target, excluded) pair of kinds: the excluded source's latent
    energy that the target's mask lets through, alone and with the exclusion; and the target's
    latent SNR of the separator's output codes, alone and with the exclusion."""
    tables, masker, prompts = trained.tables, trained.masker, trained.prompts
    sep = Separator(tables, masker)
    leak = {"positive": [], "excluded": []}
    snr = {"positive": [], "excluded": []}
    for mix, sources, _, _ in trained.heldout:
        z_mix = latent(tables, mix)
        with torch.no_grad():
            masks = masker(z_mix.expand(len(KINDS), -1, -1), prompts)
        for t in range(len(KINDS)):
            z_target = latent(tables, sources[t])
            alone = sep.separate([long_codes(mix)], prompts[t : t + 1])[0]
            for x in (k for k in range(len(KINDS)) if k != t):
                z_x = latent(tables, sources[x])
                composed = exclude_masks(masks[t : t + 1], masks[x : x + 1])
                leak["positive"].append(((masks[t] * z_x).pow(2).sum() / z_x.pow(2).sum()).item())
                leak["excluded"].append(((composed * z_x).pow(2).sum() / z_x.pow(2).sum()).item())
                out = sep.separate([long_codes(mix)], prompts[t : t + 1], exclude=prompts[x : x + 1])[0]
                snr["positive"].append(training.latent_snr(latent(tables, alone.codes[0]), z_target).item())
                snr["excluded"].append(training.latent_snr(latent(tables, out.codes[0]), z_target).item())
    mean = {k: (np.mean(leak[k]), np.mean(snr[k])) for k in leak}
    print(
        f"\nnegative prompts: excluded source's latent energy let through {mean['positive'][0]:.3f} -> "
        f"{mean['excluded'][0]:.3f}; target latent SNR {mean['positive'][1]:.2f} -> {mean['excluded'][1]:.2f} dB"
    )
    assert mean["excluded"][0] < 0.75 * mean["positive"][0]
    assert mean["excluded"][1] > mean["positive"][1] - 1.0  # the stated cost: under 1 dB of target SNR
