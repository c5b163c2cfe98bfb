"""The masker: the published architecture's size, FiLM conditioning, padding masks, files."""

import pytest
import torch

from codecsep_core import Masker, MaskerConfig, load_masker, save_masker

# Parameter count of the published CodecSep masker (adhiraj69/CodecSep, simpleSeparator2 +
# TransformerEncoderWithFiLM + FiLM, width 256, 16 layers, 8 heads, FFN 1024, latent 1024).
PUBLISHED_PARAMS = 20_513_792


def test_paper_preset_has_the_published_size():
    n = Masker(MaskerConfig.preset("paper")).n_parameters()
    assert n == PUBLISHED_PARAMS  # the published code's count (adhiraj69/CodecSep), exactly


def test_film_layers_start_as_published():
    m = Masker(MaskerConfig.preset("tiny"))
    films = [m.film_up, m.film_mask] + [f for layer in m.layers for f in (layer.film1, layer.film2)]
    for film in films:
        assert torch.count_nonzero(film.bias) == 0
        bound = (6 / (film.in_features + film.out_features)) ** 0.5  # Xavier-uniform bound
        assert film.weight.abs().max() <= bound and film.weight.std() > bound / 4


def test_prompt_changes_the_mask():
    torch.manual_seed(0)
    m = Masker(MaskerConfig.preset("tiny")).eval()
    z = torch.randn(1, 1024, 40)
    a, b = torch.randn(2, 512)
    with torch.no_grad():
        assert not torch.allclose(m(z, a[None]), m(z, b[None]))


def test_padding_mask_makes_windows_independent_of_batch_mates():
    torch.manual_seed(0)
    m = Masker(MaskerConfig.preset("tiny")).eval()
    short, long_ = torch.randn(1, 1024, 30), torch.randn(1, 1024, 70)
    cond = torch.randn(2, 512)
    batch = torch.zeros(2, 1024, 70)
    batch[0, :, :30], batch[1] = short[0], long_[0]
    valid = torch.zeros(2, 70, dtype=torch.bool)
    valid[0, :30], valid[1] = True, True
    with torch.no_grad():
        together = m(batch, cond, valid)
        alone = m(short, cond[:1])
    torch.testing.assert_close(together[0, :, :30], alone[0], rtol=1e-4, atol=1e-4)


def test_unknown_preset_and_bad_config_are_refused():
    with pytest.raises(ValueError, match="unknown masker preset 'huge'"):
        MaskerConfig.preset("huge")
    with pytest.raises(ValueError, match="not divisible"):
        MaskerConfig(width=250, n_heads=8)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    m = Masker(MaskerConfig.preset("tiny")).eval()
    path = tmp_path / "m.safetensors"
    save_masker(m, path)
    loaded = load_masker(path)
    assert loaded.config == m.config
    z, c = torch.randn(1, 1024, 20), torch.randn(1, 512)
    with torch.no_grad():
        assert torch.equal(loaded(z, c), m(z, c))


def test_the_file_records_the_prompt_encoder_it_was_trained_with(tmp_path):
    from codecsep_core import masker_prompt_encoder

    save_masker(Masker(MaskerConfig.preset("tiny")), tmp_path / "clap.safetensors", prompt_encoder="laion-clap:x.pt")
    save_masker(Masker(MaskerConfig.preset("tiny")), tmp_path / "none.safetensors")
    assert masker_prompt_encoder(tmp_path / "clap.safetensors") == "laion-clap:x.pt"
    assert masker_prompt_encoder(tmp_path / "none.safetensors") is None
    assert load_masker(tmp_path / "clap.safetensors").config == MaskerConfig.preset("tiny")


def test_load_refuses_wrong_shapes(tmp_path):
    from codecsep_core import model_io
    from codecsep_core.model_files import FORMAT

    m = Masker(MaskerConfig.preset("tiny"))
    state = dict(m.state_dict())
    state["ch_down.weight"] = torch.zeros(16, 1024, 1)
    path = tmp_path / "bad.safetensors"
    model_io.write(path, model_io.pack(state, FORMAT, m.config.to_dict()))
    with pytest.raises(ValueError, match="wrong shape.*ch_down.weight"):
        load_masker(path)
    del state["ch_down.weight"]
    model_io.write(path, model_io.pack(state, FORMAT, m.config.to_dict()))
    with pytest.raises(ValueError, match="missing.*ch_down.weight"):
        load_masker(path)


def test_load_refuses_non_masker_files(tmp_path, tables):
    path = tmp_path / "tables.safetensors"
    tables.save(path)
    with pytest.raises(ValueError, match="expected a 'codecsep.masker.v1' file"):
        load_masker(path)
    pickle_file = tmp_path / "model.pt"
    torch.save(Masker(MaskerConfig.preset("tiny")).state_dict(), pickle_file)
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_masker(pickle_file)
