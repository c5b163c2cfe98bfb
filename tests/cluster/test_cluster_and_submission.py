"""The multi-node test cluster is what it claims (nodes with their own resources, a job
server, nothing left behind), and the separate job submitted to its job server with the
KubeRay entrypoint runs to completion with its summary in the job's logs."""

import json
import shlex
import string
import subprocess
import time
import uuid

import pytest
import separate_job as sj
from conftest import REPO, WORKER_CPUS
from local_cluster import LocalCluster, http_get, ray_binary
from submission import ENTRYPOINT, entrypoint_env

SUBMIT_TIMEOUT_S = 300


def cli(cluster, *args, timeout_s=60) -> subprocess.CompletedProcess:
    return subprocess.run([ray_binary(), *args], env=cluster.env, capture_output=True, text=True, timeout=timeout_s)


def test_each_node_has_its_own_raylet_and_resources(ray_cluster):
    nodes = json.loads(http_get(ray_cluster.dashboard_url + "/api/v0/nodes?limit=100"))["data"]["result"]["result"]
    alive = [n for n in nodes if n["state"] == "ALIVE"]
    assert len(alive) == 3
    resources = [n["resources_total"] for n in alive]
    assert sorted(r.get("CPU", 0) for r in resources) == [0, WORKER_CPUS, WORKER_CPUS]
    assert all(sum(1 for r in resources if name in r) == 1 for name in ("head", "worker1", "worker2"))
    raylets = [node.raylet_pid() for node in ray_cluster.nodes]
    assert None not in raylets and len(set(raylets)) == 3
    assert all(raylet in node.pids() for raylet, node in zip(raylets, ray_cluster.nodes))


def test_a_killed_node_is_seen_dead_and_shutdown_leaves_no_process():
    cluster = LocalCluster(pythonpath=str(REPO))
    try:
        cluster.start_head()
        worker = cluster.add_worker(1)
        worker.kill()
        deadline = time.monotonic() + 60
        while cluster.alive_nodes() != 1 and time.monotonic() < deadline:
            time.sleep(1)
        assert cluster.alive_nodes() == 1
        assert not worker.pids()
    finally:
        left = cluster.shutdown()
    assert not left
    raylets = subprocess.run(["pgrep", "-a", "raylet"], capture_output=True, text=True).stdout
    assert cluster.temp_dir not in raylets


def test_a_job_submitted_to_the_job_server_completes_and_logs_its_summary(ray_cluster, tmp_path, tables):
    """`ray job submit ... -- <the KubeRay entrypoint, its variables filled in>`, as a user
    types it; `ray job status` and `ray job logs` then tell how it went."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    uris = sj.setup_inputs(str(tmp_path), tables, n_shards=2, rows_per_shard=3)
    command = shlex.split(
        string.Template(ENTRYPOINT).substitute(entrypoint_env(uris, actors=2, gpus_per_actor=0, cpus_per_actor=1))
    )
    job_id = f"codecsep-test-{uuid.uuid4().hex[:8]}"
    address = ray_cluster.dashboard_url
    submit = cli(
        ray_cluster,
        "job",
        "submit",
        "--address",
        address,
        "--submission-id",
        job_id,
        "--no-wait",
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps({"excludes": [".git"]}),
        "--",
        *command,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + SUBMIT_TIMEOUT_S
    while not client.get_job_status(job_id).is_terminal() and time.monotonic() < deadline:
        time.sleep(2)
    final = client.get_job_status(job_id)
    if not final.is_terminal():
        client.stop_job(job_id)
    status = cli(ray_cluster, "job", "status", "--address", address, job_id).stdout
    logs = cli(ray_cluster, "job", "logs", "--address", address, job_id).stdout
    assert final == JobStatus.SUCCEEDED, status + logs[-3000:]
    assert "succeeded" in status.lower()

    lines = [line for line in logs.splitlines() if line.strip()]
    summary = next(i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith("separate: "))
    assert lines[summary].startswith("separate: 6 rows in, 12 out, 0 errors")
    report = json.loads(lines[summary + 1])  # Ray may interleave its workers' lines after, never between
    assert (report["rows_in"], report["rows_out"], report["errors"]) == (6, 12, 0)
    sj.assert_exactly_once(uris["output"], sj.all_ids(2, 3))


@pytest.fixture(scope="module")
def tables(dac16_checkpoint):
    from codecsep_core import CodecTables

    return CodecTables.from_dac_checkpoint(dac16_checkpoint)
