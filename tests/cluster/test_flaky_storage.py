"""The separate job on S3 behind the fault proxy (embedded Ray). Transient faults on reads,
writes and listings are retried with backoff (storage.fs's S3 client settings) and the
job completes exactly once; permanent faults stop it within a minute, non-zero, with no
error rows.

A permanent failure is reported in one clear line (`codecsep separate: error: ...`), not a
traceback, and a missing output bucket is refused up front (s3fs would try to create it).
"""

import os
import uuid

import boto3
import pytest
import separate_job as sj

from jobs.bench.s3_proxy import FaultPlan, FaultProxy, unreachable_endpoint

TRANSIENT_RATE = 0.3
PERMANENT_WITHIN_S = 60
PERMANENT = [
    "keys refused",
    "keys refused for shard reads",
    "input bucket missing",
    "output bucket missing",
    "endpoint unreachable",
]


@pytest.fixture(scope="module")
def tables(dac16_checkpoint):
    from codecsep_core import CodecTables

    return CodecTables.from_dac_checkpoint(dac16_checkpoint)


def new_bucket(endpoint: str) -> str:
    name = f"flaky-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


def job_env(endpoint: str) -> dict[str, str]:
    return {**os.environ, "AWS_ENDPOINT_URL": endpoint, "RAY_AUTH_MODE": "disabled"}


def test_transient_faults_on_reads_writes_and_listings_are_retried_and_rows_land_once(s3_server, tables, tmp_path):
    uris = sj.setup_inputs(new_bucket(s3_server), tables, n_shards=8, rows_per_shard=4)
    plan = FaultPlan(rate=TRANSIENT_RATE, slow_s=1.0, seed=3)  # 503 SlowDown, 500, resets, slow answers

    with FaultProxy(s3_server, plan) as proxy:
        run = sj.run_job(
            sj.job_args(uris, "--batch-size", "2", "--cpus-per-actor", "1"),
            job_env(proxy.endpoint),
            tmp_path / "job.log",
        )

    assert run.returncode == 0, f"exit {run.returncode} after {run.wall_s:.0f} s:\n{run.output[-3000:]}"
    faulted = sum(proxy.counts[k] for k in ("503", "500", "reset", "slow"))
    assert faulted >= 0.2 * proxy.counts["requests"], proxy.counts
    sj.assert_exactly_once(uris["output"], sj.all_ids(8, 4))
    assert sj.error_rows(uris["output"]) == 0


@pytest.fixture(scope="module", params=PERMANENT)
def permanent_fault_run(request, s3_server, tables, tmp_path_factory):
    """The job run once against one permanent fault: (fault, uris, run)."""
    uris = sj.setup_inputs(new_bucket(s3_server), tables, n_shards=2, rows_per_shard=2)
    fault, log = request.param, tmp_path_factory.mktemp("job") / "job.log"
    args = sj.job_args(uris)
    if fault == "input bucket missing":
        args = sj.job_args(dict(uris, input=f"s3://missing-{uuid.uuid4().hex[:8]}/in"))
    if fault == "output bucket missing":
        uris = dict(uris, output=f"s3://missing-{uuid.uuid4().hex[:8]}/out")
        args = sj.job_args(uris)
    if fault.startswith("keys refused"):
        plan = FaultPlan(refuse_keys=True, paths=r"/in/.*\.parquet$" if fault.endswith("reads") else "")
        with FaultProxy(s3_server, plan) as proxy:
            run = sj.run_job(args, job_env(proxy.endpoint), log, timeout_s=PERMANENT_WITHIN_S + 60)
    else:
        endpoint = unreachable_endpoint() if fault == "endpoint unreachable" else s3_server
        run = sj.run_job(args, job_env(endpoint), log, timeout_s=PERMANENT_WITHIN_S + 60)
    return fault, uris, run


def test_a_permanent_storage_fault_stops_the_job_within_a_minute_without_error_rows(permanent_fault_run, s3_server):
    fault, uris, run = permanent_fault_run
    assert run.returncode not in (0, None), f"{fault}: exit {run.returncode} after {run.wall_s:.0f} s"
    assert run.wall_s < PERMANENT_WITHIN_S, f"{fault}: took {run.wall_s:.0f} s"
    if fault != "output bucket missing":
        assert sj.error_rows(uris["output"]) == 0, f"{fault}: wrote error rows"


def test_a_permanent_storage_fault_is_reported_in_one_clear_line(permanent_fault_run, request):
    fault, _, run = permanent_fault_run
    assert "Traceback" not in run.output, f"{fault}: a traceback instead of a message"
    words = {
        "keys refused": "access",
        "keys refused for shard reads": "access",
        "input bucket missing": "missing-",
        "output bucket missing": "missing-",
        "endpoint unreachable": "connect",
    }[fault]
    line = [x for x in run.output.splitlines() if x.startswith("codecsep separate: error:")]
    assert line and words in line[0].lower(), f"{fault}: {run.output[-1500:]}"


def test_storage_failing_a_shard_read_in_ranges_stops_the_read_and_is_no_error_row(s3_server, monkeypatch):
    """A large input shard is read in ranges (`jobs.engine.sources`): a read the storage fails
    between the footer and the rows is storage's failure, never the shard's error row."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.engine.sources import WHOLE_SHARD_BYTES, _read_shards
    from storage import fs as sfs

    uri = f"{new_bucket(s3_server)}/in/big.parquet"
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": [f"c{i}" for i in range(40)], "x": list(range(40))}), buf, row_group_size=10)
    sfs.write_bytes_atomic(uri, buf.getvalue())
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no retries: the fault is met at once
    plan = FaultPlan(rate=1.0, kinds=("500",), methods=("GET",), paths=r"big\.parquet$")  # HEAD passes: open works

    blocks = []
    with FaultProxy(s3_server, plan) as proxy, pytest.raises(OSError):
        for block in _read_shards(
            [(uri, WHOLE_SHARD_BYTES + 1)], "id", 4, sfs.S3Options(endpoint_url=proxy.endpoint), None
        ):
            blocks.append(block)
    assert blocks == [] and proxy.counts["500"] >= 1
