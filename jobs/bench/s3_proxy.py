"""An HTTP proxy on loopback in front of a loopback S3 server (moto): it counts what goes
through (requests and bytes per object, for the bench's archive figures and the tests'
read budgets) and injects faults (the object store as a large job meets it, throttling
and failing now and then; the cluster tests use it).

A set fraction of requests (of the chosen methods) gets a transient fault instead of being
forwarded: 503 SlowDown or 500 InternalError with S3's XML error body, a reset connection
(TCP RST), or a slow answer (forwarded after a delay). A faulted request never reaches the
server, so a retry of a write is never a second write. Permanent faults: `refuse_keys`
answers everything with 403 InvalidAccessKeyId; `unreachable_endpoint()` is an address
nobody listens on. The proxy binds 127.0.0.1 only and stops itself after `lifetime_s`.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

TRANSIENT = ("503", "500", "reset", "slow")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
}
_ERRORS = {
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "403": (403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."),
}


def s3_error_body(code: str, message: str, resource: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
        f"<Resource>{resource}</Resource><RequestId>FAULTPROXY</RequestId></Error>"
    ).encode()


def unreachable_endpoint() -> str:
    """An http endpoint on loopback where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@dataclass
class FaultPlan:
    r"""What the proxy does to each request. `rate` of the requests whose method is in
    `methods` get one fault drawn from `kinds`; `refuse_keys` refuses every request (of
    those whose path matches `paths`, e.g. r"\.parquet$" refuses reading shards but not
    listing them, as a key that may list a bucket but not read it)."""

    rate: float = 0.0
    kinds: tuple[str, ...] = TRANSIENT
    methods: tuple[str, ...] = ("GET", "HEAD", "PUT", "POST", "DELETE")
    slow_s: float = 2.0
    refuse_keys: bool = False
    paths: str = ""  # a regex: only requests whose path matches it are faulted ("": all)
    seed: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients use it
    server: _ProxyServer

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        body = self._body()
        fault = self.server.proxy.draw(self.command, self.path)
        if fault in _ERRORS:
            self._send_error(*_ERRORS[fault])
        elif fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
        else:
            if fault == "slow":
                time.sleep(self.server.proxy.plan.slow_s)
            self._forward(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

    def _send_error(self, status: int, code: str, message: str) -> None:
        data = s3_error_body(code, message, self.path)
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _forward(self, body: bytes) -> None:
        up = self.server.proxy.upstream
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", resp.getheader("Content-Length") or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.server.proxy.record(self.command, self.path, len(data) if self.command == "GET" else 0)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy

    def handle_error(self, request, client_address) -> None:
        """Clients that drop a connection (as after a reset) are normal here, not news."""


@dataclass
class FaultProxy:
    """`with FaultProxy(upstream, FaultPlan(rate=0.3)) as proxy:` -> proxy.endpoint."""

    upstream_url: str
    plan: FaultPlan = field(default_factory=FaultPlan)
    lifetime_s: float = 900.0
    counts: Counter = field(default_factory=Counter)
    transfers: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, body bytes)

    def __post_init__(self):
        self.upstream = urlsplit(self.upstream_url)
        self._rng = random.Random(self.plan.seed)
        self._lock = threading.Lock()
        self._server: _ProxyServer | None = None
        self._timer: threading.Timer | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def draw(self, method: str, path: str) -> str | None:
        """The fault for one request (None: forward it untouched); counted."""
        with self._lock:
            self.counts["requests"] += 1
            if self.plan.paths and not re.search(self.plan.paths, urlsplit(path).path):
                fault = None
            elif self.plan.refuse_keys:
                fault = "403"
            elif method in self.plan.methods and self._rng.random() < self.plan.rate:
                fault = self._rng.choice(self.plan.kinds)
            else:
                fault = None
            self.counts[fault or "forwarded"] += 1
            return fault

    def record(self, method: str, path: str, nbytes: int) -> None:
        """A forwarded request and the body bytes it returned."""
        with self._lock:
            self.transfers.append((method, urlsplit(path).path, nbytes))

    def reads(self, prefix: str) -> tuple[int, int]:
        """(GET requests, bytes they returned) of objects whose path starts with `prefix`
        (`/bucket/key...`; a listing's path is the bucket's alone, so it never counts)."""
        with self._lock:
            gets = [n for m, p, n in self.transfers if m == "GET" and p.startswith(prefix)]
        return len(gets), sum(gets)

    def reset_counts(self) -> None:
        with self._lock:
            self.transfers.clear()
            self.counts.clear()

    def start(self) -> FaultProxy:
        self._server = _ProxyServer(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True).start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
