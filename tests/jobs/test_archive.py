"""Archives that grow (DESIGN.md §7): reruns read only what is new, work is (clip,
prompt, stem), outputs know what made them, changed inputs are named, `--dry-run`
touches nothing, and waves bound the row state of a crash. Real local Ray, real Parquet,
a loopback S3 server (moto) behind a proxy that counts every byte read."""

import json
import os
import subprocess
import time

import numpy as np
import pytest
import torch
from test_separate import PROMPTS, assert_exactly_once, command, put_table, rand_codes, setup_job, shard

from codecsep_core import Masker, MaskerConfig
from jobs import cli
from jobs.bench.s3_proxy import FaultProxy
from jobs.engine import RunOptions
from jobs.separate import run
from storage import fs as sfs
from storage.shards import read_table


@pytest.fixture(scope="module")
def tiny(tables):
    torch.manual_seed(0)
    return Masker(MaskerConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def embeddings():
    g = torch.Generator().manual_seed(7)
    return torch.nn.functional.normalize(torch.randn(len(PROMPTS), 512, generator=g), dim=-1)


def shards_of(n_shards: int, rows: int, first: int = 0, frames: int = 20) -> dict:
    return {
        f"p{k:04d}.parquet": shard(
            [f"c{k:04d}_{i}" for i in range(rows)], [rand_codes(frames, k * 100 + i) for i in range(rows)]
        )
        for k in range(first, first + n_shards)
    }


def ids_of(shard_tables: dict) -> list[str]:
    return [i for t in shard_tables.values() for i in t["id"].to_pylist()]


def test_reruns_read_only_the_new_shards(ray_session, s3_server, s3_bucket, tables, tiny, embeddings, monkeypatch):
    """First run, a rerun with nothing new (no shard body read: the listing alone) and a
    rerun with 1% new shards (at most 2% of the first run's input bytes); every row once."""
    first = shards_of(100, 2)
    cfg = setup_job(s3_bucket, tables, tiny, embeddings, first, prompts=["speech"], emit="scores")
    prefix = "/" + cfg.input.removeprefix("s3://") + "/"
    with FaultProxy(s3_server) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        report = run(cfg)
        gets, first_bytes = proxy.reads(prefix)
        assert (report.rows_in, gets >= 100) == (200, True)

        proxy.reset_counts()
        t0 = time.perf_counter()
        again = run(cfg)
        assert proxy.reads(prefix) == (0, 0), "a rerun with nothing new read shards"
        assert (again.rows_in, again.rows_out, again.skipped_done) == (0, 0, 200)
        print(f"\nnothing new: {time.perf_counter() - t0:.1f} s, first run read {first_bytes} bytes")

        new = shards_of(1, 2, first=100)
        put_table(sfs.join(cfg.input, "p0100.parquet"), new["p0100.parquet"])
        proxy.reset_counts()
        grown = run(cfg)
        _, grown_bytes = proxy.reads(prefix)
    assert (grown.rows_in, grown.skipped_done) == (2, 200)
    assert grown_bytes <= 0.02 * first_bytes, (grown_bytes, first_bytes)
    assert_exactly_once(cfg.output, ids_of(first) + ids_of(new), prompts=["speech"])


def test_a_prompt_added_to_a_finished_output_runs_for_every_clip_and_only_it(
    ray_session, tmp_path, tables, tiny, embeddings
):
    inputs = shards_of(3, 2)
    ids = ids_of(inputs)
    cfg = setup_job(str(tmp_path), tables, tiny, embeddings, inputs, prompts=["speech"])
    assert run(cfg).rows_out == 6
    more = run(setup_job(str(tmp_path), tables, tiny, embeddings, {}, prompts=["speech", "rain"]))
    assert (more.rows_in, more.rows_out) == (6, 6)  # every clip, for "rain" alone
    assert_exactly_once(cfg.output, ids, prompts=["speech", "rain"])
    residual = run(setup_job(str(tmp_path), tables, tiny, embeddings, {}, prompts=["speech", "rain"], residual=True))
    assert (residual.rows_in, residual.rows_out) == (6, 12)  # the residual stem of both prompts, no target again
    assert_exactly_once(cfg.output, ids, prompts=["speech", "rain"], stems=("target", "residual"))
    nothing = run(setup_job(str(tmp_path), tables, tiny, embeddings, {}, prompts=["rain"]))
    assert (nothing.rows_in, nothing.rows_out, nothing.skipped_done) == (0, 0, 6)


def test_another_masker_into_the_same_output_is_refused_naming_it(
    ray_session, tmp_path, tables, tiny, embeddings, capsys
):
    cfg = setup_job(str(tmp_path), tables, tiny, embeddings, shards_of(1, 2), prompts=["speech"])
    run(cfg)
    torch.manual_seed(1)
    setup_job(str(tmp_path), tables, Masker(MaskerConfig.preset("tiny")).eval(), embeddings, {}, prompts=["speech"])
    before = sorted(sfs.list_files(cfg.output))
    assert cli.main(["separate", *command(cfg)[3:]]) == 2
    err = capsys.readouterr().err
    assert "masker:" in err and "new output folder" in err, err
    assert sorted(sfs.list_files(cfg.output)) == before


def test_a_changed_shard_is_named_not_processed_and_the_rest_goes_through(
    ray_session, tmp_path, tables, tiny, embeddings, capsys
):
    inputs = shards_of(2, 2)
    cfg = setup_job(str(tmp_path), tables, tiny, embeddings, inputs, prompts=["speech"])
    run(cfg)
    put_table(sfs.join(cfg.input, "p0000.parquet"), shard(["c0000_0", "c0000_1", "extra"], [rand_codes(20, 7)] * 3))
    new = shards_of(1, 2, first=5)
    put_table(sfs.join(cfg.input, "p0005.parquet"), new["p0005.parquet"])
    assert cli.main(["separate", *command(cfg)[3:]]) == 5
    out, err = capsys.readouterr()
    assert "changed since they were processed" in err and "p0000.parquet" in err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["inputs"]["changed"] == [sfs.join(cfg.input, "p0000.parquet")]
    assert report["rows_in"] == 2  # the new shard went through
    assert_exactly_once(cfg.output, ids_of(inputs) + ids_of(new), prompts=["speech"])


def test_dry_run_says_what_is_due_and_writes_nothing(ray_session, tmp_path, tables, tiny, embeddings):
    inputs = shards_of(2, 3)
    cfg = setup_job(str(tmp_path), tables, tiny, embeddings, inputs, prompts=["speech"])
    run(cfg)
    put_table(sfs.join(cfg.input, "p0009.parquet"), shards_of(1, 4, first=9)["p0009.parquet"])
    before = {u: sfs.read_bytes(u) for u in sfs.list_files(str(tmp_path / "out"))}
    dry = run(
        setup_job(str(tmp_path), tables, tiny, embeddings, {}, prompts=["speech", "rain"], run=RunOptions(dry_run=True))
    )
    plan = dry.extra["dry_run"]
    assert plan["rows_due"] == {"target:speech": 4, "target:rain": 10}  # the new shard; "rain" for every clip
    assert plan["due"] == 3 and plan["output_files"] >= 1 and plan["changed"] == []
    assert plan["audio_hours_due"] == pytest.approx(10 * 20 * 320 / 16000 / 3600, abs=1e-6)
    assert dry.rows_out == 0 and {u: sfs.read_bytes(u) for u in sfs.list_files(str(tmp_path / "out"))} == before
    assert not (tmp_path / "out.checkpoint").exists()


def test_output_files_are_sized_by_bytes_not_rows(ray_session, tmp_path, tables, tiny, embeddings):
    inputs = shards_of(4, 10, frames=200)
    target_mb = 0.1
    cfg = setup_job(
        str(tmp_path), tables, tiny, embeddings, inputs, prompts=["speech"], run=RunOptions(target_file_mb=target_mb)
    )
    run(cfg)
    files = [f for f in (tmp_path / "out").glob("*.parquet")]
    total = sum(f.stat().st_size for f in files)
    assert len(files) <= total / (target_mb * 2**20) + 2, (len(files), total)  # about the target each
    assert len(files) >= 2  # and not one file for everything
    default = setup_job(str(tmp_path / "d"), tables, tiny, embeddings, inputs, prompts=["speech"])
    run(default)
    assert len(list((tmp_path / "d" / "out").glob("*.parquet"))) == 1  # 40 rows: far below 128 MiB


def test_waves_killed_mid_run_finish_exactly_once_with_bounded_row_state(
    ray_session, tmp_path, tables, tiny, embeddings, lost_machine
):
    """More rows than `run.wave_rows`: the run goes in waves, each committed to the ledger
    before the next; kill -9 mid-run, and the same command finishes exactly once."""
    inputs = shards_of(8, 3, frames=50)
    cfg = setup_job(str(tmp_path), tables, tiny, embeddings, inputs)
    cmd = command(cfg, "--batch-size", "1", "run.wave_rows=6", "run.min_rows_per_file=1")
    ledger = tmp_path / "out" / "_ledger"
    with open(tmp_path / "first.log", "w") as sink:
        proc = subprocess.Popen(cmd, env=lost_machine.env, start_new_session=True, stdout=sink, stderr=sink)
    deadline = time.time() + 300
    while time.time() < deadline and not list(ledger.glob("part-*.parquet")):
        assert proc.poll() is None, "job ended before it could be killed:\n" + (tmp_path / "first.log").read_text()
        time.sleep(0.2)
    lost_machine.kill(proc)
    committed = read_table(str(ledger))
    assert 0 < committed.num_rows < 8, "the kill must land after a wave and before the last"

    done = subprocess.run(
        cmd, env=dict(os.environ, RAY_AUTH_MODE="disabled"), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert_exactly_once(cfg.output, ids_of(inputs))
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["inputs"]["waves"] >= 2
    assert not (tmp_path / "out.checkpoint").exists()  # row state dropped once its wave is in the ledger
    assert not (ledger / "inflight.json").exists()


def test_ingest_over_a_growing_folder_reads_only_new_files(ray_session, tmp_path, capsys):
    """Ingest of `.dac` files (no model needed): files already ingested are not planned again."""
    from storage.dacfile import DacFile, write_dac

    src = tmp_path / "in"
    src.mkdir()

    def dac(name: str, seed: int) -> None:
        codes = np.random.default_rng(seed).integers(0, 1024, (1, 12, 30)).astype(np.uint16)
        (src / name).write_bytes(write_dac(DacFile(codes, 30, 9000, -20.0, 1, 16000, True)))

    dac("a.dac", 0)
    dac("b.dac", 1)
    args = ["ingest", str(src), str(tmp_path / "codes")]
    assert cli.main(args) == 0
    dac("c.dac", 2)
    assert cli.main(args) == 0
    out, _ = capsys.readouterr()
    report = json.loads(out.strip().splitlines()[-1])
    assert (report["rows_in"], report["skipped_done"], report["inputs"]["due"]) == (1, 2, 1)
    assert sorted(read_table(str(tmp_path / "codes"), columns=["id"])["id"].to_pylist()) == ["a", "b", "c"]


def test_select_guards_its_output_through_the_engine(ray_session, tmp_path, tables, tiny, embeddings, capsys):
    cfg = setup_job(str(tmp_path), tables, tiny, embeddings, shards_of(1, 2), prompts=["speech"], emit="scores")
    run(cfg)
    base = ["select", "--input", cfg.output, "--output", str(tmp_path / "sel")]
    assert cli.main([*base, "--prompt", "speech", "--codes-from", cfg.input]) == 0
    assert cli.main([*base, "--prompt", "rain", "--codes-from", cfg.input]) == 2
    assert "prompt: 'speech' there, 'rain' now" in capsys.readouterr().err
    assert not (tmp_path / "sel" / "_selection.json").exists()
