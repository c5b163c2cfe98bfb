"""Fixtures for cluster-grade tests: real multi-node Ray clusters started with `ray start`
on this machine (local_cluster.py) and a fault-injecting proxy in front of the loopback S3
server (`jobs.bench.s3_proxy`). Both are separate from the embedded Ray of the other tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from local_cluster import LocalCluster

REPO = Path(__file__).resolve().parents[2]
WORKER_CPUS = 2


def start_cluster(head_cpus: int, n_workers: int = 2) -> LocalCluster:
    """Head (`head_cpus` logical CPUs; 0 = runs no work) + `n_workers` worker nodes of
    WORKER_CPUS each, every node with its own custom resource (`head`, `worker1`, ...)."""
    cluster = LocalCluster(pythonpath=str(REPO), head_cpus=head_cpus)
    try:
        cluster.start_head()
        for _ in range(n_workers):
            cluster.add_worker(WORKER_CPUS)
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def stop_cluster(cluster: LocalCluster) -> None:
    left = cluster.shutdown()
    assert not left, f"processes of the test cluster left running: {left}"


@pytest.fixture(scope="module")
def ray_cluster():
    """A head that runs no work and two worker nodes; shared by a module's tests, which
    must leave it with its nodes alive."""
    cluster = start_cluster(head_cpus=0)
    yield cluster
    stop_cluster(cluster)


@pytest.fixture(params=[0, 1], ids=["idle-head", "working-head"])
def fresh_cluster(request):
    """A cluster of its own for a test that kills nodes: with a head that runs no work, and
    with one that does (1 logical CPU)."""
    cluster = start_cluster(head_cpus=request.param)
    yield cluster
    stop_cluster(cluster)


@pytest.fixture
def ray_cluster_idle_head_throwaway():
    """A cluster of its own (head runs no work) for a test that kills every worker node."""
    cluster = start_cluster(head_cpus=0)
    yield cluster
    stop_cluster(cluster)
