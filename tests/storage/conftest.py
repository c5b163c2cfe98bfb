import uuid

import pytest


@pytest.fixture(params=["local", "memory", "s3"])
def root(request, tmp_path):
    """An empty folder URI on each kind of storage the jobs run on."""
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "memory":
        return f"memory://test-{uuid.uuid4().hex[:12]}"
    return request.getfixturevalue("s3_bucket") + "/store"
