"""The KubeRay RayJob in configs/kuberay runs the command the submission test runs on a
real cluster, on a GPU worker group, and cleans up after itself."""

import re

import yaml
from submission import ENTRYPOINT, entrypoint_env, load_rayjob


def test_the_rayjob_runs_the_tested_entrypoint_with_every_variable_set():
    job = load_rayjob()
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["entrypoint"] == ENTRYPOINT
    env_vars = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    used = set(re.findall(r"\$(\w+)", ENTRYPOINT))
    assert (
        used
        == set(env_vars)
        == set(
            entrypoint_env(dict.fromkeys(("input", "output", "masker", "codec_tables", "prompt_table"), ""), 1, 0, 1)
        )
    )
    assert all(isinstance(v, str) for v in env_vars.values()), "env var values must be strings"


def test_the_rayjob_has_gpu_workers_an_idle_head_and_ends_its_cluster():
    spec = load_rayjob()["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["backoffLimit"] >= 1
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu_groups = [
        g
        for g in cluster["workerGroupSpecs"]
        if any(c["resources"]["limits"].get("nvidia.com/gpu") for c in g["template"]["spec"]["containers"])
    ]
    assert gpu_groups, "no worker group asks for GPUs"
    env_vars = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert float(env_vars["CODECSEP_GPUS_PER_ACTOR"]) >= 1
    assert gpu_groups[0]["minReplicas"] <= gpu_groups[0]["replicas"] <= gpu_groups[0]["maxReplicas"]
