"""With no `--address` a job runs on an embedded Ray of its own, whatever else runs on the
machine; GPUs asked for where there is no CUDA is a clear error within seconds.

`init_ray` starts embedded Ray with `ray.init(address="local", ...)`: plain `ray.init()`
joins the latest `ray start` cluster on the machine, found through its address file even
when that cluster is dead.
"""

import pytest
import separate_job as sj
import torch
from conftest import REPO
from local_cluster import LocalCluster

EMBEDDED_TIMEOUT_S = 240
GPU_ERROR_WITHIN_S = 60


@pytest.fixture(scope="module")
def tables(dac16_checkpoint):
    from codecsep_core import CodecTables

    return CodecTables.from_dac_checkpoint(dac16_checkpoint)


@pytest.fixture
def other_cluster(request):
    """A `ray start` head on this machine as a job started with its environment sees it
    (RAY_TMPDIR): running, or killed with its address file left behind."""
    cluster = LocalCluster(pythonpath=str(REPO), head_cpus=1)
    try:
        cluster.start_head()
        if request.param == "killed":
            cluster.head.kill()
        yield cluster
    finally:
        assert not cluster.shutdown()


@pytest.mark.parametrize("other_cluster", ["running", "killed"], indirect=True)
def test_no_address_runs_embedded_whatever_other_ray_runs_on_the_machine(other_cluster, tmp_path, tables):
    uris = sj.setup_inputs(str(tmp_path), tables, n_shards=1, rows_per_shard=2)

    run = sj.run_job(
        sj.job_args(uris, "--cpus-per-actor", "1"),
        other_cluster.env,
        tmp_path / "job.log",
        timeout_s=EMBEDDED_TIMEOUT_S,
    )

    assert run.returncode == 0, f"exit {run.returncode}:\n{run.output[-3000:]}"
    sj.assert_exactly_once(uris["output"], sj.all_ids(1, 2))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour on a machine without CUDA")
def test_gpus_asked_for_without_cuda_is_a_clear_error_within_seconds(tmp_path, tables):
    import os

    uris = sj.setup_inputs(str(tmp_path), tables, n_shards=1, rows_per_shard=2)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    run = sj.run_job(
        sj.job_args(uris, "--gpus-per-actor", "1"),
        {**env, "RAY_AUTH_MODE": "disabled"},
        tmp_path / "job.log",
        timeout_s=GPU_ERROR_WITHIN_S + 30,
    )

    assert run.returncode not in (0, None), f"still running after {run.wall_s:.0f} s (hangs)"
    assert run.wall_s < GPU_ERROR_WITHIN_S
    assert "GPU" in run.output and "Traceback" not in run.output
    assert sj.error_rows(uris["output"]) == 0
