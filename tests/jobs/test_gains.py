"""Paired gains (jobs.gains) against values worked out by hand and by SciPy's own tables."""

import pytest

from jobs import gains


def test_paired_mean_interval_and_wilcoxon():
    g = gains.paired([1.0, 2.0, 3.0, 4.0, 5.0])
    assert g["n"] == 5 and g["mean"] == pytest.approx(3.0)
    # t(0.975, 4) = 2.7764; sd = sqrt(2.5)
    assert g["ci95"] == pytest.approx([3 - 2.7764 * 2.5**0.5 / 5**0.5, 3 + 2.7764 * 2.5**0.5 / 5**0.5], abs=1e-3)
    assert g["p"] == pytest.approx(0.0625)  # exact two-sided: all 5 ranks positive, 2 / 2**5


def test_paired_drops_nans_and_needs_two_clips_for_an_interval():
    assert gains.paired([float("nan"), 1.5]) == {"n": 1, "mean": 1.5, "ci95": None, "p": None}
    assert gains.paired([0.0, 0.0])["p"] == 1.0


def test_gains_per_prompt_and_against_another_masker():
    rows = [
        {
            "id": f"{p}{k}",
            "prompt": p,
            "latent_snr": 5.0 + k,
            "masked_latent_snr": 6.0 + k,
            "latent_snr_identity": 2.0,
            "latent_snr_wrong_prompt": 1.0,
            "masked_latent_snr_wrong_prompt": float("nan"),  # a set of one prompt has no wrong prompt
        }
        for p in ("music", "speech")
        for k in range(4)
    ]
    table = gains.gains(rows)
    assert table["speech"]["codes"]["identity mask"]["mean"] == pytest.approx(4.5)
    assert table["music"]["codes"]["wrong prompt"]["mean"] == pytest.approx(5.5)
    assert table["music"]["masked latent"]["identity mask"]["mean"] == pytest.approx(5.5)
    assert table["music"]["masked latent"]["wrong prompt"] == {"n": 0, "mean": None, "ci95": None, "p": None}
    other = [{**r, "latent_snr": r["latent_snr"] - 1.0} for r in rows[::-1]]  # order must not matter: paired by id
    assert gains.against(rows, other)["speech"]["codes"]["other masker"]["mean"] == pytest.approx(1.0)
    md = gains.markdown(table)
    assert md.splitlines()[0].startswith("| prompt | figure | clips | gain over identity mask dB [95% CI] | p |")
    assert "| speech | codes | 4 | +4.50 [" in md and "| music | masked latent | 4 | +5.50 [" in md
    with pytest.raises(ValueError, match="share no"):
        gains.against(rows, [{**r, "id": "x" + r["id"]} for r in rows])
