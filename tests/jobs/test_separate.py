"""The main job end to end: real local Ray, real Parquet, a loopback S3 server (moto),
a random-weight masker and codec tables of the real architectures."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from codecsep_core import Masker, MaskerConfig, Separator, masker_to_bytes
from jobs.engine import RunOptions
from jobs.separate import SeparateConfig, run
from storage import fs as sfs
from storage.prompt_table import PromptTable, write_prompt_table
from storage.schema import codes_to_arrow, codes_to_numpy
from storage.shards import read_errors, read_table

PROMPTS = ["speech", "dog barking", "rain"]


@pytest.fixture(scope="module")
def models(tables):
    torch.manual_seed(0)
    return {"tiny": Masker(MaskerConfig.preset("tiny")).eval(), "paper": Masker(MaskerConfig.preset("paper")).eval()}


@pytest.fixture(scope="module")
def embeddings():
    g = torch.Generator().manual_seed(7)
    return torch.nn.functional.normalize(torch.randn(len(PROMPTS), 512, generator=g), dim=-1)


def shard(ids, codes, codec="dac_16khz", extra=True):
    cols = {
        "id": pa.array(ids, pa.string()),
        "codes": codes_to_arrow(codes),
        "codec": pa.array([codec] * len(ids), pa.string()),
        "sample_rate": pa.array([16000] * len(ids), pa.int32()),
        "n_samples": pa.array([c.shape[1] * 320 for c in codes], pa.int64()),
    }
    if extra:
        cols["speaker"] = pa.array([f"spk{i % 3}" for i in range(len(ids))])
    return pa.table(cols)


def put_table(uri, table):
    import io

    buf = io.BytesIO()
    pq.write_table(table, buf)
    sfs.write_bytes_atomic(uri, buf.getvalue())


def rand_codes(n_frames, seed, n_q=12, high=1024):
    return np.random.default_rng(seed).integers(0, high, (n_q, n_frames)).astype(np.uint16)


def setup_job(root, tables, masker, embeddings, shards, **overrides):
    """Models, prompt table and input shards under `root` (any URI) -> a SeparateConfig."""
    sfs.write_bytes_atomic(sfs.join(root, "models/masker.safetensors"), masker_to_bytes(masker))
    sfs.write_bytes_atomic(sfs.join(root, "models/tables.safetensors"), tables.to_bytes())
    write_prompt_table(sfs.join(root, "prompts.parquet"), PromptTable(tuple(PROMPTS), embeddings.numpy(), "test"))
    for name, table in shards.items():
        put_table(sfs.join(root, "in", name), table)
    return SeparateConfig(
        **{
            "input": sfs.join(root, "in"),
            "output": sfs.join(root, "out"),
            "prompts": list(PROMPTS),
            "masker": sfs.join(root, "models/masker.safetensors"),
            "codec_tables": sfs.join(root, "models/tables.safetensors"),
            "prompt_table": sfs.join(root, "prompts.parquet"),
            **overrides,
        }
    )


def command(cfg: SeparateConfig, *extra: str) -> list[str]:
    """The job's command line for `cfg`, as a user runs it."""
    return [
        sys.executable,
        "-m",
        "jobs.separate",
        "--input",
        cfg.input,
        "--output",
        cfg.output,
        "--masker",
        cfg.masker,
        "--codec-tables",
        cfg.codec_tables,
        "--prompt-table",
        cfg.prompt_table,
        *extra,
        *[a for p in cfg.prompts for a in ("--prompt", p)],
    ]


def assert_exactly_once(output, expected_ids, prompts=PROMPTS, stems=("target",)):
    out = read_table(output, columns=["id", "prompt", "stem"])
    keys = list(zip(out["id"].to_pylist(), out["prompt"].to_pylist(), out["stem"].to_pylist()))
    assert len(keys) == len(set(keys)), "duplicate (id, prompt, stem) rows"
    assert set(keys) == {(i, p, s) for i in expected_ids for p in prompts for s in stems}


def test_end_to_end_on_s3_matches_the_in_process_separator(ray_session, s3_bucket, tables, models, embeddings):
    lengths = [1, 37, 500, 1234, 80, 260]
    codes = {f"clip{i:02d}": rand_codes(n, i) for i, n in enumerate(lengths)}
    ids = list(codes)
    shards = {
        "a/part-0.parquet": shard(ids[:3], [codes[i] for i in ids[:3]]),
        "b/part-1.parquet": shard(ids[3:], [codes[i] for i in ids[3:]]),
    }
    cfg = setup_job(s3_bucket, tables, models["tiny"], embeddings, shards)

    report = run(cfg)

    assert (report.rows_in, report.rows_out, report.errors) == (6, 6 * 3, 0)
    assert report.audio_hours == pytest.approx(sum(lengths) * 320 / 16000 / 3600)
    assert_exactly_once(cfg.output, ids)
    out = read_table(cfg.output)
    assert set(out["speaker"].to_pylist()) == {"spk0", "spk1", "spk2"}  # extra columns pass through
    sep = Separator(tables, models["tiny"])
    for clip_id in ids:
        expected = sep.separate([torch.from_numpy(codes[clip_id].astype(np.int64))], embeddings)[0]
        for p, prompt in enumerate(PROMPTS):
            row = out.filter(pc.and_(pc.equal(out["id"], clip_id), pc.equal(out["prompt"], prompt)))
            got = codes_to_numpy(row["codes"][0])
            assert got.shape == (12, codes[clip_id].shape[1])
            assert (got == expected.codes[p].numpy()).mean() >= 0.999
            assert row["energy_kept"][0].as_py() == pytest.approx(expected.scores["energy_kept"][p].item(), rel=1e-3)
            assert row["mask_mean"][0].as_py() == pytest.approx(
                expected.scores["mask_mean"][p].item(), rel=1e-3, abs=1e-6
            )
    speech = read_table(cfg.output, filter=pc.field("prompt") == "speech")
    assert sorted(speech["id"].to_pylist()) == ids


def test_bad_rows_of_each_kind_land_in_errors_and_good_rows_land(ray_session, tmp_path, tables, models, embeddings):
    good = {f"good{i}": rand_codes(50 + i, i) for i in range(4)}
    bad_rows = shard(
        ["bad_nq", "bad_range", "bad_empty"],
        [rand_codes(30, 1, n_q=9), np.full((12, 30), 2000, np.uint16), np.zeros((12, 0), np.uint16)],
    )
    wrong_codec = shard(["bad_codec"], [rand_codes(30, 2)], codec="dac_44khz")
    ragged = pa.table(
        {
            "id": ["bad_ragged"],
            "codes": pa.array([[[1, 2, 3], [4, 5]]], pa.list_(pa.list_(pa.uint16()))),
            "codec": ["dac_16khz"],
            "sample_rate": pa.array([16000], pa.int32()),
            "n_samples": pa.array([960], pa.int64()),
        }
    )
    ids = list(good)
    shards = {
        "good.parquet": shard(ids, list(good.values())),
        "mixed.parquet": pa.concat_tables([bad_rows, wrong_codec, ragged], promote_options="default"),
    }
    cfg = setup_job(str(tmp_path), tables, models["tiny"], embeddings, shards, run=RunOptions(max_error_fraction=1.0))
    (tmp_path / "in" / "broken.parquet").write_bytes(b"PAR1 this is not parquet")

    report = run(cfg)

    assert_exactly_once(cfg.output, ids)
    errors = read_errors(cfg.output).to_pylist()
    reasons = {e["id"]: e["reason"] for e in errors}
    assert "wrong number of codebooks: 9" in reasons["bad_nq"]
    assert "out of range" in reasons["bad_range"]
    assert "empty clip" in reasons["bad_empty"]
    assert "wrong codec 'dac_44khz'" in reasons["bad_codec"]
    assert "malformed codes" in reasons["bad_ragged"]
    unreadable = [e for e in errors if e["id"] is None]
    assert len(unreadable) == 1 and unreadable[0]["source"].endswith("broken.parquet")
    assert "unreadable shard" in unreadable[0]["reason"]
    assert all(e["source"].endswith("mixed.parquet") for e in errors if e["id"])
    assert report.errors == 6 and report.rows_out == len(ids) * 3


def test_mostly_bad_input_exits_3_after_writing_every_error_row(ray_session, tmp_path, tables, models, embeddings):
    """Over the error budget (run.max_error_fraction), a scheduler must notice: exit 3, with
    the rows written and the report printed."""
    bad = shard([f"bad{i}" for i in range(4)], [rand_codes(30, i, n_q=9) for i in range(4)])
    good = shard(["good"], [rand_codes(30, 9)])
    cfg = setup_job(str(tmp_path), tables, models["tiny"], embeddings, {"p.parquet": pa.concat_tables([bad, good])})
    cmd = command(cfg, "--max-error-fraction", "0.5")
    done = subprocess.run(
        cmd, env=dict(os.environ, RAY_AUTH_MODE="disabled"), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert "4 of 5 input rows failed, over max_error_fraction=0.5" in done.stderr
    assert read_errors(cfg.output).num_rows == 4
    assert_exactly_once(cfg.output, ["good"])
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert (report["errors"], report["rows_in"]) == (4, 5)


def test_rerun_over_a_grown_archive_processes_only_new_clips(ray_session, tmp_path, tables, models, embeddings):
    first = {f"old{i}": rand_codes(40, i) for i in range(5)}
    cfg = setup_job(
        str(tmp_path), tables, models["tiny"], embeddings, {"p0.parquet": shard(list(first), list(first.values()))}
    )
    assert run(cfg).rows_in == 5
    files_before = set(sfs.list_files(cfg.output, [".parquet"]))

    again = run(cfg)
    assert (again.rows_in, again.rows_out, again.skipped_done) == (0, 0, 5)

    new = {f"new{i}": rand_codes(60, 100 + i) for i in range(3)}
    put_table(sfs.join(cfg.input, "p1.parquet"), shard(list(new), list(new.values())))
    grown = run(cfg)

    assert (grown.rows_in, grown.rows_out, grown.skipped_done) == (3, 9, 5)
    assert files_before <= set(sfs.list_files(cfg.output, [".parquet"]))  # old output untouched
    assert_exactly_once(cfg.output, list(first) + list(new))


def test_driver_killed_mid_job_then_rerun_completes_without_duplicates(
    ray_session, tmp_path, tables, models, embeddings, lost_machine
):
    """kill -9 of the driver and all its Ray processes mid-write, like a lost machine; the
    same command again must finish the work exactly once."""
    clips = {f"c{i:03d}": rand_codes(500, i) for i in range(24)}
    ids = list(clips)
    shards = {f"p{k}.parquet": shard(ids[k::4], [clips[i] for i in ids[k::4]]) for k in range(4)}
    cfg = setup_job(str(tmp_path), tables, models["paper"], embeddings, shards)
    cmd = command(cfg, "--batch-size", "2", "--residual", "run.min_rows_per_file=1")
    log = tmp_path / "first-run.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, env=lost_machine.env, start_new_session=True, stdout=sink, stderr=sink)
    out_dir = tmp_path / "out"
    deadline = time.time() + 240
    while time.time() < deadline and not list(out_dir.glob("*.parquet")):
        assert proc.poll() is None, "job ended before it could be killed:\n" + log.read_text()[-2000:]
        time.sleep(0.2)
    lost_machine.kill(proc)
    written = read_table(cfg.output, columns=["id"]).num_rows if list(out_dir.glob("*.parquet")) else 0
    assert 0 < written < len(ids) * len(PROMPTS) * 2, "the kill must land mid-job"

    done = subprocess.run(
        cmd, env=dict(os.environ, RAY_AUTH_MODE="disabled"), capture_output=True, text=True, timeout=600
    )

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert_exactly_once(cfg.output, ids, stems=("target", "residual"))
    summary = [line for line in done.stdout.splitlines() if line.startswith("separate:")][0]
    assert "0 errors" in summary


def test_the_job_leaves_ray_datas_global_context_as_it_found_it(ray_session, tmp_path, tables, models, embeddings):
    """Ray Data's DataContext is process-wide: a later job in the same driver (train,
    evaluate) must not inherit this job's checkpoint filter."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = ctx.checkpoint_config, ctx.use_datasource_v2
    cfg = setup_job(str(tmp_path), tables, models["tiny"], embeddings, {"p.parquet": shard(["a"], [rand_codes(20, 1)])})
    run(cfg)
    assert (ctx.checkpoint_config, ctx.use_datasource_v2) == before
    assert ray_session.data.from_items([{"x": 1}]).take_all() == [{"x": 1}]  # no id column needed


def test_residual_stems_scores_and_spans_come_from_one_pass(ray_session, tmp_path, tables, models, embeddings):
    """--residual: per (clip, prompt) the target and the residual stem, each equal to the
    in-process separator's, with its own scores; where the prompt's source sounds on both."""
    codes = {f"r{i}": rand_codes(n, 40 + i) for i, n in enumerate([60, 700, 130])}
    cfg = setup_job(
        str(tmp_path),
        tables,
        models["tiny"],
        embeddings,
        {"p.parquet": shard(list(codes), list(codes.values()))},
        residual=True,
    )
    report = run(cfg)
    assert report.rows_out == 3 * len(PROMPTS) * 2
    assert_exactly_once(cfg.output, list(codes), stems=("target", "residual"))
    out = read_table(cfg.output).to_pylist()
    sep = Separator(tables, models["tiny"])
    for clip_id, c in codes.items():
        expected = sep.separate([torch.from_numpy(c.astype(np.int64))], embeddings, residual=True)[0]
        for p, prompt in enumerate(PROMPTS):
            rows = {r["stem"]: r for r in out if r["id"] == clip_id and r["prompt"] == prompt}
            for stem, want, scores in (
                ("target", expected.codes, expected.scores),
                ("residual", expected.residual, expected.residual_scores),
            ):
                got = codes_to_numpy(rows[stem]["codes"])
                assert (got == want[p].numpy()).mean() >= 0.999, (clip_id, prompt, stem)
                assert rows[stem]["energy_kept"] == pytest.approx(scores["energy_kept"][p].item(), rel=1e-3)
            assert rows["target"]["active_spans"] == rows["residual"]["active_spans"]
            assert 0 <= rows["target"]["active_fraction"] <= 1
            for start, end in rows["target"]["active_spans"]:
                assert 0 <= start < end <= c.shape[1] / 50 + 1e-6


def test_a_scores_only_pass_has_the_full_runs_scores_and_no_codes(ray_session, tmp_path, tables, models, embeddings):
    codes = {f"s{i}": rand_codes(n, 60 + i) for i, n in enumerate([80, 300])}
    shards = {"p.parquet": shard(list(codes), list(codes.values()))}
    full = setup_job(str(tmp_path / "full"), tables, models["tiny"], embeddings, shards)
    scores = setup_job(str(tmp_path / "scores"), tables, models["tiny"], embeddings, shards, emit="scores")
    run(full)
    run(scores)
    a = read_table(full.output).sort_by([("id", "ascending"), ("prompt", "ascending")])
    b = read_table(scores.output).sort_by([("id", "ascending"), ("prompt", "ascending")])
    assert "codes" in a.column_names and "codes" not in b.column_names
    for name in ("id", "prompt", "stem", "energy_kept", "mask_mean", "active_fraction", "active_spans", "speaker"):
        assert b[name].to_pylist() == a[name].to_pylist(), name


def test_an_excluded_prompt_is_composed_out_of_every_target(ray_session, tmp_path, tables, models, embeddings):
    c = rand_codes(120, 77)
    cfg = setup_job(
        str(tmp_path),
        tables,
        models["tiny"],
        embeddings,
        {"p.parquet": shard(["x"], [c])},
        prompts=PROMPTS[:2],
        exclude=[PROMPTS[2]],
    )
    run(cfg)
    assert_exactly_once(cfg.output, ["x"], prompts=PROMPTS[:2])
    expected = Separator(tables, models["tiny"]).separate(
        [torch.from_numpy(c.astype(np.int64))], embeddings[:2], exclude=embeddings[2:]
    )[0]
    out = read_table(cfg.output).to_pylist()
    for p, prompt in enumerate(PROMPTS[:2]):
        row = next(r for r in out if r["prompt"] == prompt)
        assert (codes_to_numpy(row["codes"]) == expected.codes[p].numpy()).mean() >= 0.999
        assert row["energy_kept"] == pytest.approx(expected.scores["energy_kept"][p].item(), rel=1e-3)
