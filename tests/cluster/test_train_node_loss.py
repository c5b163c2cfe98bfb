"""Training survives the loss of the node its worker runs on: Ray Train restarts the worker
group on the nodes that remain (`max_failures`), and the worker resumes from the latest
checkpoint in object storage (here a local folder every node sees), not from step 0."""

import json
import sys
import time
import uuid

import numpy as np
import psutil
import pyarrow as pa
import separate_job as sj

from storage.schema import codes_to_arrow
from storage.shards import write_table_atomic

MAX_STEPS = 60
TIMEOUT_S = 420


def write_training_rows(folder, n_rows: int = 24, n_frames: int = 60) -> None:
    rng = np.random.default_rng(0)
    codes = [rng.integers(0, 1024, (12, n_frames)).astype(np.uint16) for _ in range(2 * n_rows)]
    table = pa.table(
        {
            "id": [f"m{i}#t" for i in range(n_rows)],
            "prompt": [("tone", "noise")[i % 2] for i in range(n_rows)],
            "mix_codes": codes_to_arrow(codes[:n_rows]),
            "target_codes": codes_to_arrow(codes[n_rows:]),
        }
    )
    write_table_atomic(str(folder / "train" / "part-0.parquet"), table)


def node_of(cluster, process_title: str):
    """The worker node one of whose processes carries `process_title` (Ray sets titles)."""
    for node in cluster.workers:
        for pid in node.pids():
            try:
                if process_title in " ".join(psutil.Process(pid).cmdline()):
                    return node
            except psutil.NoSuchProcess:
                continue
    return None


def test_training_resumes_from_its_checkpoint_after_its_worker_node_is_lost(
    ray_cluster_idle_head_throwaway, tmp_path, dac16_checkpoint
):
    from codecsep_core import CodecTables

    cluster = ray_cluster_idle_head_throwaway
    write_training_rows(tmp_path / "data")
    CodecTables.from_dac_checkpoint(dac16_checkpoint).save(tmp_path / "tables.safetensors")
    out = tmp_path / "run"
    args = [
        str(tmp_path / "data"),
        str(out),
        "--codec-tables",
        str(tmp_path / "tables.safetensors"),
        "--preset",
        "tiny",
        "--fixed-prompts-if-offline",
        "--address",
        cluster.address,
        f"max_steps={MAX_STEPS}",
        "checkpoint_every=5",
        f"val_every={MAX_STEPS}",
        "log_every=5",
        "segment_frames=40",
        "ray.num_cpus_per_actor=1",
        f"ray_storage_path={tmp_path / 'ray_train'}",
    ]
    marker = uuid.uuid4().hex
    log = tmp_path / "train.log"
    t0 = time.monotonic()
    with open(log, "wb") as sink:
        proc = psutil.Popen(
            [sys.executable, "-m", "jobs.train", *args],
            env={**cluster.env, sj.MARKER: marker},
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    try:
        from jobs.train import latest_checkpoint

        while latest_checkpoint(str(out)) is None:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - t0 < TIMEOUT_S / 2, "no checkpoint in time"
            time.sleep(0.5)
        node = node_of(cluster, "RayTrainWorker")
        assert node is not None, "no training worker found on a worker node"
        node.kill()
        rc = proc.wait(timeout=max(1.0, t0 + TIMEOUT_S - time.monotonic()))
    finally:
        sj.kill_marked(proc, marker)
    output = log.read_text(errors="replace")
    assert rc == 0, output[-3000:]
    # the report is the JSON line after the summary; Ray may print its workers' lines after it
    report = json.loads(next(line for line in reversed(output.splitlines()) if line.startswith('{"')))
    assert report["step"] == MAX_STEPS
    assert 0 < report["resumed_from_step"] < MAX_STEPS, report  # from a checkpoint, not from scratch
    assert (out / "masker.safetensors").exists()
