"""The fault proxy does what the flaky-storage tests rely on: each fault reaches an S3
client as the real service would send it, untouched requests pass through, and it stops."""

import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from jobs.bench.s3_proxy import FaultPlan, FaultProxy, unreachable_endpoint


def client(endpoint, read_timeout=10):
    """A boto3 client that never retries: it sees each fault as the proxy sent it."""
    cfg = Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=read_timeout, connect_timeout=2)
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=cfg)


@pytest.fixture
def bucket(s3_bucket, s3_server):
    name = s3_bucket.removeprefix("s3://")
    client(s3_server).put_object(Bucket=name, Key="k", Body=b"payload")
    return name


def test_untouched_requests_pass_through(s3_server, bucket):
    with FaultProxy(s3_server) as proxy:
        s3 = client(proxy.endpoint)
        s3.put_object(Bucket=bucket, Key="new", Body=b"x" * 100_000)
        assert s3.get_object(Bucket=bucket, Key="new")["Body"].read() == b"x" * 100_000
        assert {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]} == {"k", "new"}
        assert proxy.counts["forwarded"] == proxy.counts["requests"] == 3


@pytest.mark.parametrize("kind, code", [("503", "SlowDown"), ("500", "InternalError")])
def test_error_answers_carry_s3s_error_codes(s3_server, bucket, kind, code):
    with FaultProxy(s3_server, FaultPlan(rate=1.0, kinds=(kind,))) as proxy:
        with pytest.raises(ClientError) as e:
            client(proxy.endpoint).get_object(Bucket=bucket, Key="k")
    assert e.value.response["Error"]["Code"] == code
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == int(kind)


def test_reset_and_slow_answers(s3_server, bucket):
    with FaultProxy(s3_server, FaultPlan(rate=1.0, kinds=("reset",))) as proxy:
        with pytest.raises(ConnectionClosedError):
            client(proxy.endpoint).get_object(Bucket=bucket, Key="k")
    with FaultProxy(s3_server, FaultPlan(rate=1.0, kinds=("slow",), slow_s=1.5)) as proxy:
        t0 = time.monotonic()
        assert client(proxy.endpoint).get_object(Bucket=bucket, Key="k")["Body"].read() == b"payload"
        assert time.monotonic() - t0 >= 1.5
        with pytest.raises(ReadTimeoutError):
            client(proxy.endpoint, read_timeout=0.5).get_object(Bucket=bucket, Key="k")


def test_a_fraction_of_the_chosen_methods_is_faulted(s3_server, bucket):
    with FaultProxy(s3_server, FaultPlan(rate=0.3, kinds=("503",), methods=("GET",), seed=1)) as proxy:
        s3 = client(proxy.endpoint)
        failed = 0
        for _ in range(200):
            try:
                s3.get_object(Bucket=bucket, Key="k")
            except ClientError:
                failed += 1
        s3.put_object(Bucket=bucket, Key="p", Body=b"1")  # PUT is not a chosen method: never faulted
    assert 40 <= failed <= 80 and proxy.counts["503"] == failed


def test_refused_keys_and_an_unreachable_endpoint(s3_server, bucket):
    with FaultProxy(s3_server, FaultPlan(refuse_keys=True)) as proxy:
        with pytest.raises(ClientError) as e:
            client(proxy.endpoint).get_object(Bucket=bucket, Key="k")
    assert e.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    with pytest.raises(EndpointConnectionError):
        client(unreachable_endpoint()).list_objects_v2(Bucket=bucket)


def test_the_proxy_stops_itself_after_its_lifetime(s3_server, bucket):
    proxy = FaultProxy(s3_server, lifetime_s=0.5).start()
    endpoint = proxy.endpoint
    time.sleep(1.5)
    with pytest.raises(EndpointConnectionError):
        client(endpoint).list_objects_v2(Bucket=bucket)
