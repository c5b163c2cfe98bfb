"""`codecsep select`: curated rows and segments from separated shards, exported to audio."""

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from jobs import export, select
from jobs.engine import UsageError
from storage import segments, shards
from storage.schema import DAC_SHARD_SCHEMA, SEPARATED_SHARD_SCHEMA, table_from_rows

HOP, RATE = 320, 16000


def clip_row(clip_id: str, n_frames: int, n_samples: int, seed: int, **extra) -> dict:
    codes = np.random.default_rng(seed).integers(0, 1024, (12, n_frames), dtype=np.uint16)
    return {"id": clip_id, "codes": codes, "codec": "dac_16khz", "sample_rate": RATE, "n_samples": n_samples, **extra}


def dac_meta(n_frames: int, original_rate: int, original_length: int, padding: bool = True) -> dict:
    return {
        "dac_version": "1.0.0",
        "dac_chunk_length": n_frames,
        "dac_padding": padding,
        "dac_input_db": -20.0,
        "dac_channels": 1,
        "dac_channel": 0,
        "dac_original_length": original_length,
        "dac_sample_rate": original_rate,
    }


@pytest.fixture
def datasets(tmp_path):
    """An archive of four clips (one from 44.1 kHz audio, one chunked .dac) and its separated
    shards for two prompts, with scores and active spans."""
    clips = [
        clip_row("a", 150, 150 * HOP - 100, 0, **dac_meta(150, 16000, 150 * HOP - 100)),
        clip_row("music/b", 120, 120 * HOP - 37, 1, **dac_meta(120, 44100, round((120 * HOP - 37) * 44100 / 16000))),
        clip_row("c", 60, 60 * HOP, 2, **dac_meta(60, 16000, 60 * HOP)),
        clip_row("chunked", 100, 100 * HOP, 3, **dac_meta(50, 16000, 100 * HOP, padding=False)),
    ]
    spans = {"a": [[0.2, 0.9], [1.5, 3.0]], "music/b": [[0.0, 0.5], [2.0, 2.4]], "c": [], "chunked": [[0.1, 0.5]]}
    fraction = {"a": 0.73, "music/b": 0.38, "c": 0.0, "chunked": 0.2}
    separated = []
    for prompt, gain in (("dog", 1.0), ("rain", 0.5)):
        for clip in clips:
            rng = np.random.default_rng(len(separated) + 10)
            other = rng.integers(0, 1024, clip["codes"].shape, dtype=np.uint16)
            separated.append(
                {
                    **clip,
                    "codes": other,
                    "prompt": prompt,
                    "mask_mean": 0.5,
                    "energy_kept": gain * (0.2 + fraction[clip["id"]]),
                    "active_fraction": fraction[clip["id"]],
                    "active_spans": spans[clip["id"]],
                }
            )
    archive, sep = str(tmp_path / "archive"), str(tmp_path / "separated")
    with shards.ShardWriter(archive, "w") as w:
        w.write(table_from_rows(clips, DAC_SHARD_SCHEMA))
    schema = DAC_SHARD_SCHEMA.append(SEPARATED_SHARD_SCHEMA.field("prompt"))
    with shards.ShardWriter(sep, "w", shards.ShardOptions(max_rows=3)) as w:
        w.write(table_from_rows(separated, schema))
    return {
        "archive": archive,
        "separated": sep,
        "clips": {c["id"]: c for c in clips},
        "spans": spans,
        "separated_codes": {(r["id"], r["prompt"]): r["codes"] for r in separated},
    }


def run_select(*args):
    """With an error budget of 1: the fixture's chunked row is refused on purpose."""
    return select.run(select.parse_args([*args, "--max-error-fraction", "1"]))


def test_span_segments_decode_to_their_exact_length_with_stable_ids(datasets, tmp_path, ray_session, dac_weights):
    out = str(tmp_path / "segments")
    report = run_select("--input", datasets["separated"], "--output", out, "--prompt", "dog", "--spans")
    assert (report.rows_out, report.errors) == (4, 1)  # a: 2 spans, music/b: 2, c: none; the chunked row refused
    error = shards.read_errors(out).to_pylist()[0]
    assert error["id"] == "chunked" and "chunked" in error["reason"]
    rows = {r["id"]: r for r in shards.read_table(out).to_pylist()}
    manifest = pd.read_parquet(f"{out}/{segments.MANIFEST_NAME}")
    assert sorted(rows) == sorted(manifest["id"]) and set(manifest["prompt"]) == {"dog"}
    columns = set(next(iter(rows.values())))
    assert "prompt" not in columns  # the code-shard schema, not a separated one
    assert not columns & {"source_id", "start_s", "energy_kept"}  # manifest columns stay in the manifest
    assert "codes" not in shards.read_table(f"{out}/_manifest").column_names  # its parts hold no codes
    for m in manifest.itertuples():
        row, clip = rows[m.id], datasets["clips"][m.source_id]
        assert m.id == segments.segment_id(m.source_id, m.start_s, m.end_s)
        f0 = round(m.start_s * RATE / HOP)
        target = datasets["separated_codes"][(m.source_id, "dog")]  # the separated stem's codes, sliced
        np.testing.assert_array_equal(np.array(row["codes"], np.uint16), target[:, f0 : f0 + len(row["codes"][0])])
        assert row["n_samples"] == round((m.end_s - m.start_s) * RATE)
        asked = [s for s in datasets["spans"][m.source_id] if abs(s[0] - m.start_s) < 1 / 50]
        assert len(asked) == 1 and abs(min(asked[0][1], clip["n_samples"] / RATE) - m.end_s) < 1 / 50
    assert manifest["end_s"].max() == pytest.approx((150 * HOP - 100) / RATE)  # the last span ends with the clip

    first_manifest = pq.read_table(f"{out}/{segments.MANIFEST_NAME}")
    again = run_select("--input", datasets["separated"], "--output", out, "--prompt", "dog", "--spans")
    assert (again.rows_out, again.errors, again.skipped_done) == (0, 0, 4)  # resumed: nothing left to do
    assert sorted(r["id"] for r in shards.read_table(out).to_pylist()) == sorted(rows)
    assert pq.read_table(f"{out}/{segments.MANIFEST_NAME}").equals(first_manifest)

    con = duckdb.connect()
    query = f"select count(*), sum(end_s - start_s) from read_parquet('{out}/{segments.MANIFEST_NAME}')"
    count, total = con.execute(query).fetchone()
    assert count == 4 and total == pytest.approx((manifest.end_s - manifest.start_s).sum())

    exported = export.run(export.parse_args([out, str(tmp_path / "wav"), "--codec-weights", str(dac_weights)]))
    assert (exported.rows_out, exported.errors) == (4, 0)
    for m in manifest.itertuples():
        original_rate = datasets["clips"][m.source_id]["dac_sample_rate"]
        info = sf.info(str(tmp_path / "wav" / f"{m.id}.wav"))
        assert info.samplerate == original_rate
        assert info.frames == round((m.end_s - m.start_s) * original_rate)


def test_whole_rows_by_score_with_codes_from_the_archive(datasets, tmp_path):
    scores_only = str(tmp_path / "scores")
    table = shards.read_table(datasets["separated"]).drop_columns(["codes"])
    with shards.ShardWriter(scores_only, "w") as w:
        w.write(table)
    out = str(tmp_path / "kept")
    report = run_select(
        "--input",
        scores_only,
        "--output",
        out,
        "--prompt",
        "rain",
        "--min-energy-kept",
        "0.3",
        "--min-active-fraction",
        "0.3",
        "--codes-from",
        datasets["archive"],
    )
    rows = {r["id"]: r for r in shards.read_table(out).to_pylist()}
    assert set(rows) == {"a"} and report.rows_out == 1  # energy kept for rain: a 0.465, music/b 0.29
    np.testing.assert_array_equal(np.array(rows["a"]["codes"], np.uint16), datasets["clips"]["a"]["codes"])
    manifest = pd.read_parquet(f"{out}/{segments.MANIFEST_NAME}").iloc[0]
    assert (manifest["source_id"], manifest["start_s"]) == ("a", 0.0)
    assert manifest["end_s"] == pytest.approx((150 * HOP - 100) / RATE)

    with pytest.raises(
        UsageError, match=r"other settings \(min_active_fraction: '0.3' there, '0.0' now.*prompt: 'rain'"
    ):
        run_select("--input", scores_only, "--output", out, "--prompt", "dog", "--codes-from", datasets["archive"])

    report = run_select("--input", scores_only, "--output", str(tmp_path / "x"), "--prompt", "dog")
    assert report.rows_out == 0 and report.errors == 4
    assert "codes-from" in shards.read_errors(str(tmp_path / "x")).to_pylist()[0]["reason"]
