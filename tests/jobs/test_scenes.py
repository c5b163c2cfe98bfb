"""The demo's DnR-style scenes (jobs.scenes) hold what they claim: voiced speech, harmonic
music, sparse effects where annots.csv says, levels in DnR's order, held-out pools apart
from the training ones, and the same scene from the same seed. They are made by the real
espeak-ng, fluidsynth and freedesktop sounds (`make install-sounds`, run by `make test`)."""

import csv

import numpy as np
import pytest
import soundfile as sf

from jobs import scenes

RATE = scenes.RATE


@pytest.fixture(scope="module")
def heldout_scenes():
    return [scenes.scene("heldout", k, seconds=6.0, seed=3) for k in range(3)]


def frames(x: np.ndarray, seconds: float) -> np.ndarray:
    n = int(seconds * RATE)
    return x[: len(x) // n * n].reshape(-1, n)


def active(x: np.ndarray, seconds: float = 0.04) -> np.ndarray:
    """Frames within 40 dB of the loudest one."""
    energy = (frames(x, seconds) ** 2).mean(1)
    return energy > energy.max() * 1e-4


def test_the_packages_are_here():
    assert scenes.missing_packages() == [], "make install-sounds installs them"


def test_a_scene_is_its_seed(heldout_scenes):
    again = scenes.scene("heldout", 1, seconds=6.0, seed=3)
    assert all(np.array_equal(again.stems[k], heldout_scenes[1].stems[k]) for k in scenes.STEMS)
    assert again.annots == heldout_scenes[1].annots
    other = scenes.scene("heldout", 1, seconds=6.0, seed=4)
    assert not np.array_equal(other.stems["speech"], again.stems["speech"])


def test_heldout_pools_share_no_voice_instrument_or_effect_file_with_training():
    train, heldout = scenes.pools("train"), scenes.pools("heldout")
    assert not set(train.voices) & set(heldout.voices)
    for ours, theirs in zip(train.programs, heldout.programs):
        assert not set(ours) & set(theirs)
    assert heldout.effects and not set(train.effects) & set(heldout.effects)
    assert set(train.effects) | set(heldout.effects) == set(scenes.effect_files())


def test_speech_is_voiced(heldout_scenes):
    """Most spoken 40 ms frames are periodic at a voice's pitch (80-400 Hz): normalised
    autocorrelation above 0.5 at some lag in that range."""
    for s in heldout_scenes:
        spoken = frames(s.stems["speech"], 0.04)[active(s.stems["speech"])]
        lags = np.arange(RATE // 400, RATE // 80)

        def periodicity(f: np.ndarray) -> float:
            f = f - f.mean()
            ac = np.correlate(f, f, "full")[len(f) - 1 :]
            return float(ac[lags].max() / (ac[0] + 1e-12))

        voiced = np.mean([periodicity(f) > 0.5 for f in spoken])
        assert len(spoken) > 0.4 * 6 / 0.04 and voiced > 0.4, (s.name, voiced)


def test_music_has_harmonic_peaks(heldout_scenes):
    """Music's spectrum is peaked, not flat: per 0.25 s frame, spectral flatness far under
    white noise's (about 0.56) and a few strong narrow peaks."""
    for s in heldout_scenes:
        spectra = np.abs(np.fft.rfft(frames(s.stems["music"], 0.25) * np.hanning(RATE // 4), axis=1)) ** 2 + 1e-12
        flatness = np.exp(np.log(spectra).mean(1)) / spectra.mean(1)
        assert np.median(flatness) < 0.05, (s.name, np.median(flatness))
        peaks = [(f > 0.1 * f.max()).sum() for f in spectra]
        assert 2 <= np.median(peaks) < 0.05 * spectra.shape[1], (s.name, np.median(peaks))


def test_effects_are_sparse_and_where_annots_say(heldout_scenes):
    for s in heldout_scenes:
        sfx = s.stems["sfx"]
        assert active(sfx, 0.05).mean() < 0.8
        inside = np.zeros(len(sfx), bool)
        for label, start, end in s.annots:
            assert label and 0 <= start < end <= 6.0
            inside[int(start * RATE) : int(np.ceil(end * RATE))] = True
        assert inside.mean() < 1.0 and not np.any(sfx[~inside])


def test_speech_is_loudest_and_the_mix_is_the_sum(heldout_scenes):
    for s in heldout_scenes:
        rms = {k: np.sqrt(np.mean(v**2)) for k, v in s.stems.items()}
        assert rms["speech"] > rms["sfx"] and rms["speech"] > rms["music"], (s.name, rms)
        assert np.abs(s.mix).max() <= 0.95 + 1e-6


def test_written_in_prepare_trains_dnr_layout(tmp_path):
    from jobs import prepare_train

    scenes.write_scenes(tmp_path, 1, "train", seconds=4.0)
    folder = tmp_path / "train-0000"
    assert prepare_train.detect_layout(str(tmp_path)) == "dnr"
    mix, rate = sf.read(folder / "mix.wav")
    stems = [sf.read(folder / f"{k}.wav")[0] for k in scenes.STEMS]
    assert rate == RATE and len(mix) == 4 * RATE and np.allclose(mix, sum(stems), atol=1e-6)
    with open(folder / "annots.csv") as f:
        annots = list(csv.DictReader(f))
    assert annots and set(annots[0]) == {"label", "start", "end"}
    window = prepare_train.dnr_labels((folder / "annots.csv").read_bytes(), 0.0, 4.0)
    assert window == list(dict.fromkeys(a["label"] for a in annots))


# --------------------------------------------------------------------------- a masker trained on scenes

TRAIN_SCENES, HELDOUT_SCENES, SCENE_SECONDS, WINDOW_SECONDS = 8, 4, 6.0, 2.0


def scene_windows(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """WINDOW_SECONDS windows of n scenes, normalised as prepare-train does -> (mixtures
    [N, samples], stems [N, 3, samples])."""
    from codecsep_core import mixing

    mixes, stems = [], []
    m = int(WINDOW_SECONDS * RATE)
    for index in range(n):
        s = scenes.scene(split, index, SCENE_SECONDS)
        for a in range(0, len(s.mix) - m + 1, m):
            mix, parts = mixing.normalise(s.mix[a : a + m], [s.stems[k][a : a + m] for k in scenes.STEMS], RATE)
            mixes.append(mix)
            stems.append(np.stack(parts))
    return np.stack(mixes), np.stack(stems)


@pytest.fixture(scope="module")
def scene_results(tmp_path_factory):
    """Per stem, per held-out window: latent SNR of the separated codes and of the masked
    latent, the identity mask's, and the wrong prompts' (mean of the other two), for the
    `tiny` masker trained 300 steps in-process (deterministic) on training scenes, with a
    codec fitted to other scenes."""
    import torch

    from codecsep_core import CodecTables, Masker, MaskerConfig, Separator, SeparatorConfig, training
    from codecsep_core.dac_codec import DacCodec, load_dac
    from jobs.bench.config import QualityConfig
    from jobs.bench.quality import train_masker

    weights = scenes.fitted_scene_codec(tmp_path_factory.mktemp("codec") / "codec.pth", n_scenes=8)
    codec = DacCodec(load_dac(weights))
    tables = CodecTables.from_dac_model(codec.model)
    sets = {}
    for split, n in (("train", TRAIN_SCENES), ("heldout", HELDOUT_SCENES)):
        mix, stems = scene_windows(split, n)
        codes = torch.from_numpy(codec.encode(np.concatenate([mix, stems.reshape(-1, mix.shape[1])]), RATE)).long()
        sets[split] = (codes[: len(mix)], codes[len(mix) :].view(len(mix), 3, *codes.shape[1:]), stems)
    prompts = torch.from_numpy(training.fixed_prompt_vectors([scenes.PROMPTS[k] for k in scenes.STEMS]))
    torch.manual_seed(0)
    masker = Masker(MaskerConfig.preset("tiny", dropout=0.0))
    cfg = QualityConfig(preset="tiny", steps=300, lr=0.002, batch_rows=12)
    train_masker(masker, tables, prompts, *sets["train"][:2], cfg, seed=0)
    separator = Separator(tables, masker.eval(), SeparatorConfig())
    mixes, targets, stems = sets["heldout"]
    out = {k: {"codes": [], "masked": [], "identity": [], "wrong": [], "masked_wrong": []} for k in scenes.STEMS}
    with torch.inference_mode():
        for i, mix in enumerate(mixes):
            result = separator.separate([mix], prompts, latents=True)[0]
            z_sep, z_mix = tables.lookup(result.codes.long()), tables.lookup(mix)[None]
            for s, stem in enumerate(scenes.STEMS):
                if not np.any(stems[i, s]):
                    continue  # no effect in this window: no sfx row, as prepare-train does
                z_t = tables.lookup(targets[i, s])[None]
                codes = training.latent_snr(z_sep, z_t.expand_as(z_sep)).tolist()
                masked = training.latent_snr(result.latent, z_t.expand_as(result.latent)).tolist()
                others = [j for j in range(3) if j != s]
                r = out[stem]
                r["codes"].append(codes[s])
                r["masked"].append(masked[s])
                r["identity"].append(float(training.latent_snr(z_mix, z_t)[0]))
                r["wrong"].append(float(np.mean([codes[j] for j in others])))
                r["masked_wrong"].append(float(np.mean([masked[j] for j in others])))
    return out


@pytest.mark.parametrize("stem", scenes.STEMS)
def test_a_briefly_trained_masker_separates_each_stem_of_held_out_scenes(scene_results, stem):
    """On held-out scenes (other voices, instruments and effect files), per stem, paired over
    windows with the 95% interval above zero and p < 0.05: the masker's output (its masked
    latent) beats the identity mask and itself given a wrong prompt, and for music and
    effects the codes `separate` writes beat the identity mask too. Reported, not asserted:
    the codes' gain over the wrong prompt (positive on the demo's larger set, README), and
    for speech, the loudest stem, the codes' gain over the identity mask (the fitted
    codec's quantizer loses about what the mask wins)."""
    from jobs import gains

    r = {k: np.asarray(v) for k, v in scene_results[stem].items()}
    measured = {
        "masked latent over identity": gains.paired(r["masked"] - r["identity"]),
        "masked latent over wrong prompt": gains.paired(r["masked"] - r["masked_wrong"]),
        "codes over identity": gains.paired(r["codes"] - r["identity"]),
        "codes over wrong prompt": gains.paired(r["codes"] - r["wrong"]),
    }
    print(stem, {k: (round(v["mean"], 2), round(v["ci95"][0], 2), round(v["p"], 4)) for k, v in measured.items()})
    asserted = ["masked latent over identity", "masked latent over wrong prompt"]
    asserted += ["codes over identity"] if stem != "speech" else []
    for name in asserted:
        g = measured[name]
        assert g["n"] >= 6 and g["ci95"][0] > 0 and g["p"] < 0.05, (stem, name, g)
