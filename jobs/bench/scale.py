"""Archives with many shards: what the driver spends before the first row, and what resume
state costs.

- Planning: the runner's driver only lists the input (`storage.fs.list_files`); footers
  and rows are read by Ray Data's read tasks, in parallel, as the job runs. Measured on a
  loopback S3 server (moto, the test dependency) holding `scale_shards` one-row shards:
  listing time and the driver's peak memory growth.
- Resume state: Ray Data 2.60's checkpoint filter holds every processed id in one NumPy
  array per filter actor (`convert_and_sort_checkpointed_ids`); its memory is measured at
  `scale_ids` ids, and from it the archive size at which one filter actor's memory
  (`scale_filter_memory_gb`) is full.
"""

from __future__ import annotations

import io
import logging
import resource
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.bench.config import BenchConfig


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_planning(cfg: BenchConfig) -> dict:
    """Time and driver memory to plan a job over `cfg.scale_shards` shards on loopback S3."""
    import boto3
    from moto.server import ThreadedMotoServer

    from storage import fs as sfs

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the server logs each request at INFO
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        creds = dict(aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1")
        client = boto3.client("s3", endpoint_url=endpoint, **creds)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        buf = io.BytesIO()
        pq.write_table(pa.table({"id": ["x"], "codec": ["dac_16khz"]}), buf)
        body = buf.getvalue()
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda i: client.put_object(Bucket=bucket, Key=f"codes/part-{i:06d}.parquet", Body=body),
                    range(cfg.scale_shards),
                )
            )
        s3 = sfs.S3Options(endpoint_url=endpoint, key="bench", secret="bench", region="us-east-1")
        before = _peak_rss_mb()
        t0 = time.perf_counter()
        files = sfs.list_files(f"s3://{bucket}/codes", [".parquet"], s3)
        seconds = time.perf_counter() - t0
    finally:
        server.stop()
    return {
        "shards": len(files),
        "plan_s": seconds,
        "driver_peak_growth_mb": _peak_rss_mb() - before,
        "shards_per_s": len(files) / seconds,
    }


def measure_checkpoint_ids(cfg: BenchConfig) -> dict:
    """Memory of the sorted id array one checkpoint filter actor holds, as Ray builds it."""
    from ray.data._internal.arrow_ops import transform_pyarrow
    from ray.data.checkpoint.checkpoint_filter import _numpy_size

    ids = pa.array([f"archive/clip-{i:09d}" for i in range(cfg.scale_ids)], pa.string())
    array = np.sort(transform_pyarrow.to_numpy(ids, zero_copy_only=False))
    size = _numpy_size(array)
    per_id = size / len(array)
    return {
        "ids": len(array),
        "filter_array_mb": size / 2**20,
        "bytes_per_id": per_id,
        "ids_per_filter_actor": int(cfg.scale_filter_memory_gb * 2**30 / per_id),
    }
