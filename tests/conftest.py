"""Shared fixtures. S3 tests run against moto's S3 server on loopback (as s3fs tests itself)."""

import os
import uuid

import pytest


def pytest_configure(config):
    """Under xdist, each worker gets its share of the cores for its math libraries (torch,
    and the subprocesses and Ray workers it starts): two workers each spinning two OpenMP
    threads on two cores spend more CPU waiting for each other than computing."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session")
def s3_server():
    """A local S3 endpoint; the AWS env vars point at it for the rest of the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_REGION", "us-east-1")
        yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket: yields its URI, `s3://<name>`."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def dac16():
    """A DAC 16 kHz of the real architecture with random weights (none can be downloaded here)."""
    from codecsep_core.dac_codec import random_dac

    return random_dac(0)


@pytest.fixture(scope="session")
def dac16_checkpoint(dac16, tmp_path_factory):
    """Saved as DAC saves it: loadable by `dac.DAC.load` and DAC's CLI `--weights_path`."""
    path = tmp_path_factory.mktemp("dac") / "dac16_random.pth"
    dac16.save(str(path), package=False)
    return path


@pytest.fixture(scope="session")
def tables(dac16_checkpoint):
    from codecsep_core import CodecTables

    return CodecTables.from_dac_checkpoint(dac16_checkpoint)


@pytest.fixture(scope="session")
def fitted_codec(tmp_path_factory):
    """The demo's codec (`synthetic.fitted_random_codec` at its defaults), fitted once for
    the session: the tests that train on generated audio and the demo's share it."""
    from jobs import synthetic

    return synthetic.fitted_random_codec(tmp_path_factory.mktemp("fitted") / "codec.pth")
