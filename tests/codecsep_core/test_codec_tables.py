"""Codec tables alone must reproduce DAC's own codebook lookup and re-quantization."""

import pytest
import torch

from codecsep_core import CodecTables


def test_info_of_the_16khz_model(tables):
    info = tables.info
    assert (info.name, info.sample_rate, info.hop_length) == ("dac_16khz", 16000, 320)
    assert (info.n_codebooks, info.codebook_size, info.codebook_dim, info.latent_dim) == (12, 1024, 8, 1024)
    assert info.frame_rate == 50
    n_params = sum(t.numel() for t in (tables.in_w, tables.in_b, tables.out_w, tables.out_b, tables.codebooks))
    assert n_params < 400_000  # the separation path needs ~0.3 M parameters, not the codec


def test_lookup_matches_dac_from_codes(dac16, tables):
    codes = torch.randint(0, 1024, (3, 12, 257), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = dac16.quantizer.from_codes(codes)[0]
    torch.testing.assert_close(tables.lookup(codes), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tables.lookup(codes[0]), expected[0], rtol=1e-5, atol=1e-5)


def test_quantize_matches_dac_quantizer_codes_exactly(dac16, tables):
    torch.manual_seed(2)
    audio = torch.randn(2, 1, 16000 * 2) * 0.1
    with torch.no_grad():
        z = dac16.encoder(audio)
        z = torch.cat([z, torch.randn_like(z) * z.std()], dim=2)  # encoder latents + off-manifold ones
        expected = dac16.quantizer(z)[1]
    assert torch.equal(tables.quantize(z), expected)
    # One clip alone (the separator's case with one prompt) and a frames-major view of it
    # (the masker's output layout) take other memory layouts: the codes must not change.
    assert torch.equal(tables.quantize(z[1:]), expected[1:])
    assert torch.equal(tables.quantize(z[1:].transpose(1, 2).contiguous().transpose(1, 2)), expected[1:])


def test_quantize_in_frame_blocks_matches_dac_on_a_long_clip(dac16, tables):
    """A clip longer than one CPU block (`CPU_FRAMES_PER_PASS`) is quantized a block at a
    time; its codes are DAC's, block edges included."""
    from codecsep_core.codec_tables import CPU_FRAMES_PER_PASS

    torch.manual_seed(4)
    z = torch.randn(1, 1024, 2 * CPU_FRAMES_PER_PASS + 77)
    with torch.no_grad():
        expected = dac16.quantizer(z)[1]
    assert torch.equal(tables.quantize(z), expected)


def test_quantize_of_lookup_round_trips_codes_through_dac(dac16, tables):
    codes = torch.randint(0, 1024, (1, 12, 100), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = dac16.quantizer(dac16.quantizer.from_codes(codes)[0])[1]
    assert torch.equal(tables.quantize(tables.lookup(codes)), expected)


def test_save_load_round_trip(tables, tmp_path):
    path = tmp_path / "tables.safetensors"
    tables.save(path)
    loaded = CodecTables.load(path)
    assert loaded.info == tables.info
    assert torch.equal(loaded.codebooks, tables.codebooks) and torch.equal(loaded.in_w, tables.in_w)
    assert CodecTables.load(path.read_bytes()).info == tables.info
    assert path.stat().st_size < 2_000_000


def test_load_refuses_other_files(tmp_path, tables):
    from codecsep_core import Masker, MaskerConfig, save_masker

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        CodecTables.load(junk)
    masker_file = tmp_path / "masker.safetensors"
    save_masker(Masker(MaskerConfig.preset("tiny")), masker_file)
    with pytest.raises(ValueError, match="codec_tables"):
        CodecTables.load(masker_file)


def test_from_checkpoint_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable DAC checkpoint"):
        CodecTables.from_dac_checkpoint(bad)
    no_quantizer = tmp_path / "noq.pth"
    torch.save({"state_dict": {"encoder.x": torch.zeros(1)}, "metadata": {"kwargs": {}}}, no_quantizer)
    with pytest.raises(ValueError, match="no DAC quantizer"):
        CodecTables.from_dac_checkpoint(no_quantizer)


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    """A DAC checkpoint is a pickle; it is read with weights_only=True, so a payload never runs."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(ValueError, match="not a readable DAC checkpoint"):
        CodecTables.from_dac_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "codes, reason",
    [
        (torch.zeros(11, 5, dtype=torch.long), "expected 12 codebooks"),
        (torch.zeros(12, 0, dtype=torch.long), "empty clip"),
        (torch.full((12, 5), 1024), "out of range"),
        (torch.full((12, 5), -1), "out of range"),
        (torch.zeros(12, 5), "must be integers"),
        (torch.zeros(2, 12, 5, dtype=torch.long), "must be \\[n_codebooks, n_frames\\]"),
    ],
)
def test_check_codes_names_the_problem(tables, codes, reason):
    with pytest.raises(ValueError, match=reason):
        tables.check_codes(codes)
