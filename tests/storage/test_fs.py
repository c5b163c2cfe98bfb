import os

import boto3
import pytest

from storage import fs


def test_write_read_overwrite(root):
    uri = fs.join(root, "a", "b.bin")
    fs.write_bytes_atomic(uri, b"one")
    assert fs.read_bytes(uri) == b"one"
    fs.write_bytes_atomic(uri, b"two")
    assert fs.read_bytes(uri) == b"two"
    assert fs.exists(uri)
    assert not fs.exists(fs.join(root, "a", "missing.bin"))


def test_list_files_recursive_sorted_and_skips_hidden(root):
    for name in [
        "z.parquet",
        "a.parquet",
        "sub/m.parquet",
        "notes.txt",
        ".x.parquet.tmp-1",
        ".hidden.parquet",
        "_errors/e.parquet",
        "sub/_SUCCESS",
        "sub/.tmp/t.parquet",
    ]:
        fs.write_bytes_atomic(fs.join(root, name), name.encode())
    listed = fs.list_files(root, [".parquet"])
    assert listed == [fs.join(root, n) for n in ["a.parquet", "sub/m.parquet", "z.parquet"]]
    assert [fs.read_bytes(u) for u in listed] == [b"a.parquet", b"sub/m.parquet", b"z.parquet"]
    assert fs.join(root, "notes.txt") in fs.list_files(root)
    assert fs.list_files(fs.join(root, "a.parquet"), [".parquet"]) == [fs.join(root, "a.parquet")]


def test_atomic_write_leaves_no_temporaries(root):
    fs.write_bytes_atomic(fs.join(root, "f.bin"), b"x" * 1000)
    fsys, path = fs.resolve(root)
    assert [p.rsplit("/", 1)[-1] for p in fsys.find(path)] == ["f.bin"]


def test_list_missing_folder_raises(root):
    with pytest.raises(FileNotFoundError):
        fs.list_files(fs.join(root, "nope"))


def test_local_crash_before_rename_keeps_old_content(tmp_path, monkeypatch):
    uri = str(tmp_path / "f.bin")
    fs.write_bytes_atomic(uri, b"old")

    def killed(*args):
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(OSError):
        fs.write_bytes_atomic(uri, b"new")
    monkeypatch.undo()
    assert fs.read_bytes(uri) == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_join():
    assert fs.join("s3://bucket", "out", "part.parquet") == "s3://bucket/out/part.parquet"
    assert fs.join("s3://bucket/out/", "/_errors") == "s3://bucket/out/_errors"
    assert fs.join("memory://x", "y") == "memory://x/y"
    assert fs.join("/data/run", "a/b") == "/data/run/a/b"


def test_s3_listing_sees_objects_written_by_another_client(s3_bucket, s3_server):
    fs.write_bytes_atomic(f"{s3_bucket}/d/a.parquet", b"a")
    assert fs.list_files(f"{s3_bucket}/d", [".parquet"]) == [f"{s3_bucket}/d/a.parquet"]
    boto3.client("s3", endpoint_url=s3_server).put_object(Bucket=s3_bucket[5:], Key="d/b.parquet", Body=b"b")
    assert fs.list_files(f"{s3_bucket}/d", [".parquet"]) == [f"{s3_bucket}/d/a.parquet", f"{s3_bucket}/d/b.parquet"]
    assert fs.exists(f"{s3_bucket}/d/b.parquet")


def test_explicit_s3_options_win_over_environment(s3_bucket, s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    opts = fs.S3Options(endpoint_url=s3_server, key="testing", secret="testing", region="us-east-1")
    fs.write_bytes_atomic(f"{s3_bucket}/k.bin", b"payload", s3=opts)
    assert fs.read_bytes(f"{s3_bucket}/k.bin", s3=opts) == b"payload"
    monkeypatch.undo()
    assert fs.read_bytes(f"{s3_bucket}/k.bin") == b"payload"  # and the env vars reach the same server


def test_remove_works_where_the_working_directory_is_gone(tmp_path, monkeypatch):
    """A job submitted to a Ray job server can run after its working directory is deleted;
    removing its checkpoint folder must not depend on it."""
    target = tmp_path / "out.checkpoint"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "a.parquet").write_bytes(b"x")
    gone = tmp_path / "cwd"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    fs.remove(str(target))
    fs.remove(str(target))  # nothing there: fine
    assert not target.exists()


def test_remove_on_object_storage(s3_bucket):
    fs.write_bytes_atomic(f"{s3_bucket}/dir/a.bin", b"a")
    fs.write_bytes_atomic(f"{s3_bucket}/dir/sub/b.bin", b"b")
    fs.remove(f"{s3_bucket}/dir")
    assert fs.list_files(s3_bucket) == []
