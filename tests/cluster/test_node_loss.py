"""Node loss on a real multi-node cluster, with the separate job run as a driver against it
(`--address`): a worker node's raylet and workers killed by pid mid-job, as a preempted
machine; and a job whose every actor node is gone, which must stop, not hang.

What the runner provides for this: an actor pool that scales between a minimum and a
maximum (`--actors MIN:MAX`), Ray settings that send a dead actor's work to live ones, a
tally actor on the head node that survives a worker's loss, and a stall bound
(`--stall-timeout`).
"""

import re
import time

import pytest
import separate_job as sj

N_SHARDS, ROWS_PER_SHARD = 6, 8  # 48 clips x 2 prompts, 24 actor batches: ~35 s on two worker nodes here
JOB_TIMEOUT_S = 300
STALL_TIMEOUT_S = 30  # no assertion needs longer; each second of it is waited for
STALL_SETTING = f"--stall-timeout={STALL_TIMEOUT_S}"


@pytest.fixture(scope="module")
def tables(dac16_checkpoint):
    from codecsep_core import CodecTables

    return CodecTables.from_dac_checkpoint(dac16_checkpoint)


def wait_for_output_files(output: str, n: int, proc, timeout_s: float = 180) -> None:
    from pathlib import Path

    deadline = time.monotonic() + timeout_s
    while len(list(Path(output).glob("*.parquet"))) < n:
        assert proc.poll() is None, "the job ended before the node could be killed"
        assert time.monotonic() < deadline, f"no {n} output files after {timeout_s} s"
        time.sleep(0.3)


def test_a_worker_node_lost_mid_job_the_job_finishes_on_the_rest(fresh_cluster, tmp_path, tables):
    """Also the cost of the loss: the same job on the same cluster without a kill first
    (printed with -s; the README quotes it)."""
    uris = sj.setup_inputs(str(tmp_path), tables, N_SHARDS, ROWS_PER_SHARD, n_frames=500)
    baseline_uris = {**uris, "output": uris["output"] + "-baseline"}
    args = sj.job_args(
        uris, "--address", fresh_cluster.address, "--actors", "1:2", "--cpus-per-actor", "1", "--batch-size", "2"
    )
    baseline_args = [baseline_uris["output"] if a == uris["output"] else a for a in args]
    baseline = sj.run_job(baseline_args, fresh_cluster.env, tmp_path / "baseline.log", timeout_s=JOB_TIMEOUT_S)
    assert baseline.returncode == 0, baseline.output[-3000:]
    log = tmp_path / "job.log"
    t0 = time.monotonic()
    proc, marker = sj.start_job(args, fresh_cluster.env, log)
    try:
        wait_for_output_files(uris["output"], 4, proc)
        fresh_cluster.workers[0].kill()
    finally:
        run = sj.finish_job(proc, marker, log, t0, JOB_TIMEOUT_S)

    assert run.returncode == 0, f"exit {run.returncode} after {run.wall_s:.0f} s:\n{run.output[-3000:]}"
    sj.assert_exactly_once(uris["output"], sj.all_ids(N_SHARDS, ROWS_PER_SHARD))
    n = N_SHARDS * ROWS_PER_SHARD  # the report counts each row once, though tasks ran again after the loss
    assert f"separate: {n} rows in, {2 * n} out, 0 errors" in run.output, run.output[-3000:]
    sj.assert_exactly_once(baseline_uris["output"], sj.all_ids(N_SHARDS, ROWS_PER_SHARD))
    print(
        f"\nnode loss: {run.wall_s:.1f} s with a worker node killed vs {baseline.wall_s:.1f} s without "
        f"(ratio {run.wall_s / baseline.wall_s:.2f}); rows lost 0, duplicates 0"
    )


def test_a_job_whose_actor_nodes_are_all_gone_stops_within_the_stall_bound(
    ray_cluster_idle_head_throwaway, tmp_path, tables
):
    cluster = ray_cluster_idle_head_throwaway
    uris = sj.setup_inputs(str(tmp_path), tables, N_SHARDS, ROWS_PER_SHARD, n_frames=500)
    args = sj.job_args(
        uris, "--address", cluster.address, "--actors", "2", "--cpus-per-actor", "1", "--batch-size", "2", STALL_SETTING
    )
    log = tmp_path / "job.log"
    t0 = time.monotonic()
    proc, marker = sj.start_job(args, cluster.env, log)
    try:
        wait_for_output_files(uris["output"], 2, proc)
        for worker in cluster.workers:
            worker.kill()
        killed_at = time.monotonic()
    finally:
        run = sj.finish_job(proc, marker, log, t0, JOB_TIMEOUT_S)

    assert run.returncode not in (0, None), f"exit {run.returncode} after {run.wall_s:.0f} s:\n{run.output[-3000:]}"
    assert t0 + run.wall_s - killed_at < STALL_TIMEOUT_S + 60, "stopped, but long after the stall bound"
    assert re.search(r"no progress|stall", run.output, re.IGNORECASE), run.output[-3000:]
    assert re.search(r"pending|restarting", run.output, re.IGNORECASE), "the message must say what is stuck"
