"""The pure-torch training pieces: metrics, collation, one step, checkpoints. The codec is a
random-weight DAC 16 kHz of the real architecture (no weights can be downloaded here)."""

import numpy as np
import pytest
import torch

from codecsep_core import Masker, MaskerConfig, training


def test_latent_snr_known_values_and_valid_frames():
    ref = torch.ones(1, 4, 10)
    est = ref.clone()
    est[..., :5] += 0.1  # noise energy 0.01 * 20 over signal 40 -> 23.0 dB
    assert training.latent_snr(est, ref).item() == pytest.approx(10 * np.log10(40 / 0.2), abs=1e-3)
    valid = torch.zeros(1, 10, dtype=torch.bool)
    valid[:, 5:] = True  # only the clean half counts
    assert training.latent_snr(est, ref, valid).item() > 70


def test_sisdr_is_scale_invariant_and_penalises_noise():
    ref = torch.randn(2, 1600)
    assert training.sisdr(3.0 * ref, ref).min() > 60
    noisy = ref + 0.1 * torch.randn_like(ref)
    assert training.sisdr(noisy, ref).mean().item() == pytest.approx(20, abs=1.0)


def test_collate_crops_mixture_and_target_alike_and_pads_short_clips():
    rng = np.random.default_rng(0)
    long = np.arange(12 * 30).reshape(12, 30) % 1024
    short = np.ones((12, 4), dtype=np.uint16)
    b = training.collate([long, short], [long, short], np.zeros((2, 512)), 8, rng)
    assert b.mix_codes.shape == (2, 12, 8)
    assert torch.equal(b.mix_codes, b.target_codes)
    assert b.valid[0].all() and b.valid[1].tolist() == [True] * 4 + [False] * 4


def test_fixed_prompt_vectors_are_deterministic_distinct_unit_vectors():
    a = training.fixed_prompt_vectors(["tone", "noise"])
    assert np.allclose(a, training.fixed_prompt_vectors(["tone", "noise"]))
    assert np.allclose(np.linalg.norm(a, axis=1), 1)
    assert abs(float(a[0] @ a[1])) < 0.3


def _batch(tables, seed=0, frames=12):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randint(0, 1024, (4, 12, frames), generator=g)
    tgt = torch.randint(0, 1024, (4, 12, frames), generator=g)
    cond = torch.from_numpy(training.fixed_prompt_vectors(["a", "b", "a", "b"]))
    return training.Batch(mix, tgt, torch.ones(4, frames, dtype=torch.bool), cond)


def test_training_steps_lower_the_latent_loss(tables):
    torch.manual_seed(0)
    masker = Masker(MaskerConfig.preset("tiny", dropout=0.0))
    opt = training.make_optimizer(masker, lr=1e-3)
    batch = _batch(tables)
    first = training.train_step(masker, opt, lambda: training.latent_loss(masker, tables, batch))["loss"]
    for _ in range(30):
        last = training.train_step(masker, opt, lambda: training.latent_loss(masker, tables, batch))["loss"]
    assert last < first - 1.0


def test_checkpoint_round_trip_continues_training_exactly(tables):
    """A run interrupted at a checkpoint and resumed from its bytes ends where the
    uninterrupted run ends (masker and AdamW moments restored)."""
    torch.manual_seed(0)
    cfg = MaskerConfig.preset("tiny", dropout=0.0)
    masker = Masker(cfg)
    opt = training.make_optimizer(masker)
    batches = [_batch(tables, seed=s) for s in range(4)]

    def step(m, o, b):
        return training.train_step(m, o, lambda: training.latent_loss(m, tables, b))

    for b in batches[:2]:
        step(masker, opt, b)
    ckpt = training.checkpoint_from_bytes(training.checkpoint_to_bytes(masker, opt, step=2, extra={"k": 1}))
    assert ckpt.step == 2 and ckpt.extra == {"k": 1}
    resumed_opt = training.make_optimizer(ckpt.masker)
    resumed_opt.load_state_dict(ckpt.optimizer_state)
    for b in batches[2:]:
        step(masker, opt, b)
        step(ckpt.masker, resumed_opt, b)
    for (name, a), (_, b) in zip(masker.state_dict().items(), ckpt.masker.state_dict().items()):
        assert torch.equal(a, b), name


def test_sisdr_loss_trains_through_the_frozen_decoder(dac16, tables):
    masker = Masker(MaskerConfig.preset("tiny", dropout=0.0))
    for p in dac16.parameters():
        p.requires_grad_(False)
    batch = _batch(tables, frames=6)
    loss = training.sisdr_loss(masker, tables, batch, dac16.decode)
    loss.backward()
    assert torch.isfinite(loss)
    assert masker.ch_down.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in dac16.parameters())
