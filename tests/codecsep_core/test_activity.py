"""The activity rule on kept-energy curves whose answer is known."""

import numpy as np

from codecsep_core import activity as act

RATE = 50.0  # frames per second
ENERGY = np.ones(150)  # a 3 s mixture of steady loudness


def test_a_burst_is_found_where_it_sounds():
    kept = np.full(150, 0.01)
    kept[50:100] = 0.2  # 1.0 s to 2.0 s
    found = act.find_activity(kept, ENERGY, RATE)
    assert len(found.spans) == 1
    start, end = found.spans[0]
    assert abs(start - 1.0) <= 0.1 and abs(end - 2.0) <= 0.1
    assert abs(found.fraction - 1 / 3) <= 0.05


def test_a_source_sounding_throughout_is_one_whole_clip_span():
    kept = 0.05 * (1 + 0.1 * np.random.default_rng(0).standard_normal(150))
    assert act.find_activity(kept, ENERGY, RATE).spans == [[0.0, 3.0]]


def test_a_prompt_that_keeps_nothing_gets_no_spans():
    kept = np.full(150, 1e-5)  # -50 dB of the mixture: under the -30 dB floor
    kept[50:100] = 2e-5
    found = act.find_activity(kept, ENERGY, RATE)
    assert (found.spans, found.fraction) == ([], 0.0)


def test_short_gaps_close_and_short_blips_drop():
    kept = np.full(150, 0.01)
    kept[20:60] = kept[65:110] = 0.2  # a 0.1 s gap: closed
    kept[130:135] = 0.2  # a 0.1 s blip: dropped
    spans = act.find_activity(kept, ENERGY, RATE).spans
    assert len(spans) == 1 and abs(spans[0][0] - 0.4) <= 0.1 and abs(spans[0][1] - 2.2) <= 0.1
