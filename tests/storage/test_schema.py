import numpy as np
import pyarrow as pa
import pytest

from codecsep_core import DAC_CODECS
from storage.schema import (
    CODE_SHARD_SCHEMA,
    CODES_TYPE,
    SEPARATED_SHARD_SCHEMA,
    MalformedCodes,
    check_batch,
    codes_column_to_numpy,
    codes_to_arrow,
    codes_to_numpy,
    separable_segments,
    table_from_columns,
    table_from_rows,
    validate_row,
)

SPEC = DAC_CODECS["dac_16khz"]
RNG = np.random.default_rng(0)


def codes(n_cb=12, n_frames=50):
    return RNG.integers(0, 1024, size=(n_cb, n_frames), dtype=np.uint16)


def row(**overrides):
    base = {"id": "clip", "codes": codes(), "codec": "dac_16khz", "sample_rate": 16000, "n_samples": 16000}
    base.update(overrides)
    return base


def ray_codes(arr):
    """How Ray Data's numpy batches hand over one row of a list<list<uint16>> column."""
    out = np.empty(len(arr), dtype=object)
    for i, cb in enumerate(arr):
        out[i] = np.asarray(cb)
    return out


BAD_ROWS = {
    "wrong number of codebooks: 9, expected 12": row(codes=codes(9)),
    "codes out of range [0, 1024): max 2000": row(codes=np.full((12, 5), 2000, np.uint16)),
    "codes out of range [0, 1024): min -1": row(codes=np.full((12, 5), -1, np.int64)),
    "empty clip (0 frames)": row(codes=np.zeros((12, 0), np.uint16)),
    "wrong codec 'dac_44khz', expected 'dac_16khz'": row(codec="dac_44khz"),
    "wrong sample_rate 24000, expected 16000": row(sample_rate=24000),
    "malformed codes: ragged codebooks": row(codes=[[1, 2, 3]] * 11 + [[1, 2]]),
    "malformed codes: null": row(codes=None),
    "malformed codes: dtype float64, expected integers": row(codes=np.zeros((12, 4))),
    "missing id": row(id=""),
    "invalid n_samples -5": row(n_samples=-5),
}


@pytest.mark.parametrize("reason", BAD_ROWS)
def test_validate_row_names_the_reason(reason):
    assert validate_row(BAD_ROWS[reason], SPEC) == reason


def test_validate_row_missing_column():
    r = row()
    del r["codec"], r["n_samples"]
    assert validate_row(r, SPEC) == "missing column(s): codec, n_samples"


def test_valid_row_in_every_form_a_batch_gives():
    c = codes()
    table = table_from_rows([row(codes=c)], CODE_SHARD_SCHEMA)
    for value in (c, c.tolist(), ray_codes(c), table.column("codes")[0]):
        assert validate_row(row(codes=value), SPEC) is None
        np.testing.assert_array_equal(codes_to_numpy(value), c)


def test_check_batch_arrow_reports_each_row():
    skip = ("missing id", "malformed codes: dtype float64, expected integers")  # ids are the key; no float Arrow codes
    good = [row(id=f"ok{i}", codes=codes(n_frames=10 + i)) for i in range(3)]
    bad = [dict(r, id=f"bad-{reason}") for reason, r in BAD_ROWS.items() if reason not in skip]
    rows = good[:2] + bad + good[2:]
    columns = {k: [r[k] for r in rows] for k in CODE_SHARD_SCHEMA.names}
    # int64 codes: a shard someone else wrote, which can hold negative and huge codes
    columns["codes"] = pa.array(
        [c.tolist() if isinstance(c, np.ndarray) else c for c in columns["codes"]], type=pa.list_(pa.list_(pa.int64()))
    )
    checked = check_batch(pa.table(columns), SPEC)
    assert len(checked) == len(rows)
    for r, c in zip(rows, checked):
        if r["id"].startswith("ok"):
            assert c.reason is None and c.codes.dtype == np.uint16
            np.testing.assert_array_equal(c.codes, r["codes"])
        else:
            assert c.codes is None and c.reason == r["id"][4:]


def test_check_batch_on_sliced_and_chunked_arrow():
    rows = [row(id=str(i), codes=codes(n_frames=i + 1)) for i in range(6)]
    rows[3] = row(id="3", codes=codes(9, 4))
    table = table_from_rows(rows, CODE_SHARD_SCHEMA)
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2)])
    for batch, expect in ((table.slice(2, 3), rows[2:5]), (chunked, rows)):
        checked = check_batch(batch, SPEC)
        assert [c.reason for c in checked] == [validate_row(r, SPEC) for r in expect]
        for r, c in zip(expect, checked):
            if c.reason is None:
                np.testing.assert_array_equal(c.codes, r["codes"])


def test_check_batch_ray_numpy_dict():
    rows = [row(id="a", codes=codes(n_frames=7)), row(id="b", codes=codes(12, 0)), row(id="c", codes=codes(n_frames=3))]
    batch = {
        "id": np.array([r["id"] for r in rows], dtype=object),
        "codes": np.array([ray_codes(r["codes"]) for r in rows] + [None], dtype=object)[:-1],
        "codec": np.array(["dac_16khz"] * 3, dtype=object),
        "sample_rate": np.array([16000] * 3, dtype=np.int32),
        "n_samples": np.array([1, 2, 3], dtype=np.int64),
    }
    checked = check_batch(batch, SPEC)
    assert [c.reason for c in checked] == [None, "empty clip (0 frames)", None]
    np.testing.assert_array_equal(checked[2].codes, rows[2]["codes"])
    del batch["codec"]
    assert {c.reason for c in check_batch(batch, SPEC)} == {"missing column(s): codec"}


def test_codes_column_to_numpy_names_the_bad_row():
    arr = pa.array([[[1, 2], [3, 4]], [[1, 2], [3]]], type=CODES_TYPE)
    with pytest.raises(MalformedCodes, match="row 1: malformed codes: ragged codebooks"):
        codes_column_to_numpy(arr)
    assert [a.tolist() for a in codes_column_to_numpy(arr[:1])] == [[[1, 2], [3, 4]]]


def test_codes_to_arrow_round_trip():
    arrays = [codes(12, 5), codes(12, 0), codes(3, 7).astype(np.int64), codes(0, 0)]
    arrow = codes_to_arrow(arrays)
    assert arrow.type == CODES_TYPE
    assert arrow.to_pylist() == [a.tolist() for a in arrays]
    for got, want in zip(codes_column_to_numpy(arrow), arrays):
        assert got.shape == want.shape and np.array_equal(got, want)
    assert codes_to_arrow([]).type == CODES_TYPE


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 2, 2), np.uint16), np.full((1, 2), 70000), np.full((1, 1), -1), np.zeros((2, 2))]
)
def test_codes_to_arrow_refuses_what_uint16_cannot_hold(bad):
    with pytest.raises(MalformedCodes, match="row 0"):
        codes_to_arrow([bad])


def test_table_from_columns_types_known_columns_and_passes_extras_through():
    rows = [row(id="a", codes=codes(n_frames=4)), row(id="b", codes=codes(n_frames=6))]
    batch = {
        "speaker": np.array(["x", "y"], dtype=object),
        "id": np.array(["a", "b"], dtype=object),
        "codes": np.array([ray_codes(r["codes"]) for r in rows] + [None], dtype=object)[:-1],
        "codec": np.array(["dac_16khz"] * 2, dtype=object),
        "sample_rate": np.array([16000, 16000], dtype=np.int64),
        "n_samples": np.array([1280, 1920]),
        "prompt": ["speech", "speech"],
        "stem": ["target", "residual"],
        "energy_kept": np.array([0.5, 0.25]),
        "mask_mean": np.array([0.1, 0.2], dtype=np.float32),
        "active_fraction": np.array([0.5, 0.0]),
        "active_spans": [[[0.0, 0.04]], []],
        "embedding": np.ones((2, 3), np.float32),
    }
    table = table_from_columns(batch, SEPARATED_SHARD_SCHEMA)
    assert table.schema.names == SEPARATED_SHARD_SCHEMA.names + ["speaker", "embedding"]
    for field in SEPARATED_SHARD_SCHEMA:
        assert table.schema.field(field.name).type == field.type
    assert table.column("speaker").to_pylist() == ["x", "y"]
    assert table.column("embedding").to_pylist() == [[1.0] * 3] * 2
    np.testing.assert_array_equal(codes_column_to_numpy(table.column("codes"))[1], rows[1]["codes"])
    del batch["prompt"]
    with pytest.raises(KeyError, match="prompt"):
        table_from_columns(batch, SEPARATED_SHARD_SCHEMA)


def test_separable_segments_cut_chunked_dac_codes_at_chunk_boundaries():
    chunked = {"dac_padding": False, "dac_chunk_length": 34}
    assert separable_segments(chunked, 238) == [(i * 34, (i + 1) * 34) for i in range(7)]
    assert separable_segments(chunked, 40) == [(0, 34), (34, 40)]
    assert separable_segments({"dac_padding": True, "dac_chunk_length": 25}, 25) == [(0, 25)]
    assert separable_segments({"dac_padding": True, "dac_chunk_length": 10}, 25) == [(0, 25)]
    assert separable_segments(row(), 50) == [(0, 50)]


def test_check_batch_refuses_non_integer_codes_column():
    table = pa.table(
        {"id": ["a"], "codes": pa.array([[[0.5]]]), "codec": ["dac_16khz"], "sample_rate": [16000], "n_samples": [1]}
    )
    assert [c.reason for c in check_batch(table, SPEC)] == ["malformed codes: value type double, expected integers"]
