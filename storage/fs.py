"""One way to reach any fsspec URI (local path, file://, s3://, memory://).

Jobs run the same code on a laptop folder and on object storage, so every storage
function takes a URI and resolves it here. S3 settings come from explicit `S3Options`
first, then the standard AWS environment variables, then botocore's own chain (profiles,
instance roles). Names starting with '.' or '_' are reserved for temporary files and side
tables (`_errors/`), so listings skip them: a crashed writer's leftovers are never data.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace

import fsspec
import pyarrow.fs
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)


# Object stores throttle (503 SlowDown) and fail now and then (500, resets, slow answers).
# botocore retries those with exponential backoff and full jitter ("standard" mode:
# delay = rand() * 2**attempt, at most 20 s; "adaptive" adds a client-side rate limiter
# that slows down on throttling). Seven attempts survive a 30% transient fault rate, and
# a refused connection (endpoint unreachable) still fails in under a minute; s3fs retries
# SlowDown, resets and timeouts once more on top. AWS_RETRY_MODE / AWS_MAX_ATTEMPTS
# (botocore's own variables) override both.
S3_RETRY_MODE = "standard"
S3_MAX_ATTEMPTS = 7  # in all, the first included
S3_CONNECT_TIMEOUT_S = 5.0
S3_READ_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class S3Options:
    """S3 endpoint, credentials and retries; a field left None falls back to the AWS env
    vars, then to this module's defaults."""

    endpoint_url: str | None = None
    key: str | None = None
    secret: str | None = None
    region: str | None = None
    retry_mode: str | None = None
    max_attempts: int | None = None

    def with_env_defaults(self) -> S3Options:
        env = os.environ
        return replace(
            self,
            endpoint_url=self.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
            key=self.key or env.get("AWS_ACCESS_KEY_ID"),
            secret=self.secret or env.get("AWS_SECRET_ACCESS_KEY"),
            region=self.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            retry_mode=self.retry_mode or env.get("AWS_RETRY_MODE") or S3_RETRY_MODE,
            max_attempts=self.max_attempts or int(env.get("AWS_MAX_ATTEMPTS") or S3_MAX_ATTEMPTS),
        )

    def s3fs_kwargs(self) -> dict:
        opts = self.with_env_defaults()
        client_kwargs = {}
        if opts.endpoint_url:
            client_kwargs["endpoint_url"] = opts.endpoint_url
        if opts.region:
            client_kwargs["region_name"] = opts.region
        config = {
            "retries": {"mode": opts.retry_mode, "total_max_attempts": opts.max_attempts},
            "connect_timeout": S3_CONNECT_TIMEOUT_S,
            "read_timeout": S3_READ_TIMEOUT_S,
        }
        kwargs: dict = {"client_kwargs": client_kwargs, "config_kwargs": config}
        if opts.key:
            kwargs["key"] = opts.key
        if opts.secret:
            kwargs["secret"] = opts.secret
        return kwargs


def is_object_store(uri: str) -> bool:
    """S3 URIs: one PUT is atomic there and a rename is a copy, so writers put in place."""
    return uri.startswith(("s3://", "s3a://"))


def resolve(uri: str, s3: S3Options | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """-> (filesystem, path inside it) for any fsspec URI or local path."""
    kwargs = (s3 or S3Options()).s3fs_kwargs() if is_object_store(uri) else {}
    return fsspec.core.url_to_fs(uri, **kwargs)


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/', whatever the scheme (posix paths only, as in the jobs)."""
    return posixpath.join(base, *(p.strip("/") for p in parts))


def is_hidden(name: str) -> bool:
    """Temporary files and side tables: never read as data."""
    return name.startswith((".", "_"))


def read_bytes(uri: str, s3: S3Options | None = None) -> bytes:
    fs, path = resolve(uri, s3)
    return fs.cat_file(path)


def exists(uri: str, s3: S3Options | None = None) -> bool:
    fs, path = resolve(uri, s3)
    fs.invalidate_cache(path)  # another process may have written it since we last listed
    return fs.exists(path)


def remove(uri: str, s3: S3Options | None = None) -> None:
    """Delete a file or a folder and everything under it; nothing there is fine. Local
    paths go through shutil: fsspec's local `rm` asks for the working directory, which a
    job submitted to a Ray job server may run in after it is gone."""
    fs, path = resolve(uri, s3)
    if isinstance(fs, LocalFileSystem):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)
    elif exists(uri, s3):
        fs.rm(path, recursive=True)


def write_bytes_atomic(uri: str, data: bytes, s3: S3Options | None = None) -> None:
    """Write so that a reader sees the old state or all of `data`, never a partial file.

    S3: one PUT (or a multipart upload, which s3fs aborts on failure) is invisible until
    complete, so it goes straight to the final key. Elsewhere: write a hidden temporary
    name in the same folder, then rename; a crash leaves only the hidden name behind.
    """
    fs, path = resolve(uri, s3)
    if is_object_store(uri):
        fs.pipe_file(path, data)
        return
    parent, name = posixpath.split(path)
    tmp = posixpath.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
    fs.makedirs(parent, exist_ok=True)
    try:
        fs.pipe_file(tmp, data)
        if isinstance(fs, LocalFileSystem):
            os.replace(tmp, path)
        else:
            fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm_file(tmp)
        raise
    log.debug("wrote %s (%d bytes)", uri, len(data))


def check_bucket(uri: str, s3: S3Options | None = None) -> None:
    """An object-store URI's bucket must exist: writers would otherwise create it (s3fs's
    mkdir makes buckets), somewhere nobody meant to write. FileNotFoundError if it is missing."""
    if is_object_store(uri):
        fs, path = resolve(uri, s3)
        bucket = path.split("/", 1)[0]
        fs.invalidate_cache(bucket)
        if not fs.exists(bucket):
            raise FileNotFoundError(f"bucket {bucket!r} of {uri} does not exist")


@dataclass(frozen=True)
class FileStat:
    """A listed file: its URI (spelled like the listed URI), size, and version: the object
    store's ETag, else the modification time, so that a rewritten file is told apart."""

    uri: str
    size: int
    version: str


def list_files(uri: str, suffixes: Iterable[str] = (), s3: S3Options | None = None) -> list[str]:
    """Sorted URIs (spelled like `uri`) of the files under `uri`, recursively, whose names
    end with one of `suffixes` (any name when empty), skipping every path with a part
    below `uri` that starts with '.' or '_'. A `uri` that is a file is its only entry; a
    missing `uri` raises FileNotFoundError (an empty folder gives [])."""
    return [f.uri for f in list_file_stats(uri, suffixes, s3)]


def list_file_stats(uri: str, suffixes: Iterable[str] = (), s3: S3Options | None = None) -> list[FileStat]:
    """`list_files` with each file's size and version, from the same listing requests."""
    fs, root = resolve(uri, s3)
    fs.invalidate_cache(root)  # listings must see what other processes wrote since
    if not fs.exists(root):
        raise FileNotFoundError(f"{uri} does not exist")
    suffixes = tuple(suffixes)
    if fs.isfile(root):
        return (
            [FileStat(uri, int(fs.size(root)), _version(fs.info(root)))]
            if not suffixes or root.endswith(suffixes)
            else []
        )
    prefix = root.rstrip("/") + "/"
    found = []
    for path, info in fs.find(root, detail=True).items():
        rel = path[len(prefix) :]
        if not any(is_hidden(part) for part in rel.split("/")) and (not suffixes or rel.endswith(suffixes)):
            found.append(FileStat(join(uri, rel), int(info["size"]), _version(info)))
    return sorted(found, key=lambda f: f.uri)


def _version(info: dict) -> str:
    for key in ("ETag", "etag", "mtime", "LastModified", "created"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return ""


def pyarrow_filesystem(uri: str, s3: S3Options | None = None):
    """(pyarrow filesystem, path) for the same URI, for Ray Data's readers and sinks: local
    paths natively, anything else through this module's fsspec resolution."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = resolve(uri, s3)
    if isinstance(fs, LocalFileSystem):
        return pyarrow.fs.LocalFileSystem(), path
    return PyFileSystem(FSSpecHandler(fs)), path
