"""A real multi-node Ray cluster on one machine, for tests: every node is its own
`ray start --block` process (own raylet, own resources), so killing a node's processes by
pid is a node loss, as on a cluster of preemptible machines.

Each node runs in its own session (process group), which its raylet and the raylet's
workers share; a node's pids are that group plus any descendants that left it. Ports are
picked free (two agents of two nodes on one machine must not share the defaults) and the
cluster lives in its own `--temp-dir`, so its address file is seen only by processes
given `RAY_TMPDIR=<cluster.tmpdir>`, never by the embedded Ray of the other tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

START_TIMEOUT_S = 90
STOP_GRACE_S = 5


def ray_binary() -> str:
    """The `ray` CLI of the running interpreter's environment."""
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else shutil.which("ray") or "ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_env(tmpdir: str, pythonpath: str) -> dict[str, str]:
    """Environment of a node and of any process meant to see this cluster as "the one on
    this machine" (`RAY_TMPDIR` decides where Ray looks for the address file). A submitted
    job's shell finds `python` on PATH, as in a cluster image: this environment's first."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_TMPDIR=tmpdir,
        RAY_USAGE_STATS_ENABLED="0",
        RAY_raylet_start_wait_time_s="120",  # a loaded 2-core machine registers nodes slowly (default 30 s)
        # a killed node is seen dead after 5 failed health checks, 1 s apart (default 3 s): ~5 s, not ~15
        RAY_health_check_period_ms="1000",
        PYTHONPATH=pythonpath,
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )  # `python` = this env's
    return env


def http_get(url: str, timeout_s: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return r.read().decode()


@dataclass
class Node:
    """One `ray start --block` process and everything it started."""

    name: str
    proc: subprocess.Popen
    log: Path
    is_head: bool = False

    def pids(self) -> list[int]:
        """The node's live processes: its `ray start`, its raylet (and, for the head, GCS and
        dashboard), and the raylet's workers."""
        found: set[int] = set()
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.pid) == self.proc.pid and p.status() != psutil.STATUS_ZOMBIE:
                    found.add(p.pid)
            except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        for pid in list(found):
            try:
                found.update(
                    c.pid for c in psutil.Process(pid).children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE
                )
            except psutil.NoSuchProcess:
                pass
        return sorted(found)

    def raylet_pid(self) -> int | None:
        for pid in self.pids():
            try:
                if psutil.Process(pid).name() == "raylet":
                    return pid
            except psutil.NoSuchProcess:
                pass
        return None

    def worker_pids(self) -> list[int]:
        """The raylet's children: the node's Ray workers (actors, tasks) and agents."""
        raylet = self.raylet_pid()
        if raylet is None:
            return []
        try:
            return [c.pid for c in psutil.Process(raylet).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """A node loss: every process of the node at once, by pid."""
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """SIGTERM, a grace period, then SIGKILL for whatever is left; reaps `ray start`."""
        self.kill(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.kill(signal.SIGKILL)
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + STOP_GRACE_S
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)


@dataclass
class LocalCluster:
    """Head + worker nodes started with `ray start` on this machine."""

    pythonpath: str
    head_cpus: int = 0
    object_store_bytes: int = 150 * 1024**2
    tmpdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: socket paths
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0

    @property
    def temp_dir(self) -> str:
        """Ray's temp dir for every node: where `RAY_TMPDIR=self.tmpdir` makes Ray look."""
        return os.path.join(self.tmpdir, "ray")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def env(self) -> dict[str, str]:
        return node_env(self.tmpdir, self.pythonpath)

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return self.nodes[1:]

    def _common_args(self, num_cpus: int, resources: dict[str, float]) -> list[str]:
        return [
            "--block",
            "--disable-usage-stats",
            "--num-cpus",
            str(num_cpus),
            "--num-gpus",
            "0",
            "--resources",
            json.dumps(resources),
            "--temp-dir",
            self.temp_dir,
            "--object-store-memory",
            str(self.object_store_bytes),
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--dashboard-agent-grpc-port",
            str(free_port()),
            "--metrics-export-port",
            str(free_port()),
            "--runtime-env-agent-port",
            str(free_port()),
        ]

    def _start(self, name: str, args: list[str], is_head: bool) -> Node:
        log = Path(self.tmpdir) / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [ray_binary(), "start", *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        node = Node(name, proc, log, is_head)
        self.nodes.append(node)
        return node

    def start_head(self, resources: dict[str, float] | None = None) -> Node:
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        args = [
            "--head",
            "--port",
            str(self.gcs_port),
            "--include-dashboard",
            "true",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(self.dashboard_port),
            "--ray-client-server-port",
            str(free_port()),
            *self._common_args(self.head_cpus, {"head": 1, **(resources or {})}),
        ]
        node = self._start("head", args, is_head=True)
        self.wait_for_dashboard()
        self.wait_for_nodes(1)
        return node

    def add_worker(self, num_cpus: int, resources: dict[str, float] | None = None) -> Node:
        name = f"worker{len(self.workers) + 1}"
        args = ["--address", self.address, *self._common_args(num_cpus, {name: 1, **(resources or {})})]
        node = self._start(name, args, is_head=False)
        self.wait_for_nodes(len(self.nodes))
        return node

    def alive_nodes(self) -> int:
        """Alive nodes as the GCS sees them, through the dashboard's state API (no Ray
        client in this process: the tests' own embedded Ray stays separate)."""
        query = "/api/v0/nodes?limit=100&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE"
        try:
            body = json.loads(http_get(self.dashboard_url + query))
        except (OSError, ValueError):
            return 0
        return len(body["data"]["result"]["result"])

    def _check_started(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is not None:
                raise RuntimeError(
                    f"ray start for {node.name} exited {node.proc.returncode}:\n" + node.log.read_text()[-3000:]
                )

    def wait_for_nodes(self, n: int, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_started()
            if self.alive_nodes() == n:
                return
            time.sleep(0.5)
        raise TimeoutError(f"{n} node(s) not alive after {timeout_s} s")

    def wait_for_dashboard(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """The dashboard and job server answer (they come up after the GCS)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_started()
            try:
                http_get(self.dashboard_url + "/api/version")
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"dashboard at {self.dashboard_url} not up after {timeout_s} s")

    def all_pids(self) -> list[int]:
        return sorted(pid for node in self.nodes for pid in node.pids())

    def shutdown(self) -> list[int]:
        """Stop every node (workers first), by pid; -> the pids still alive (should be none)."""
        for node in reversed(self.nodes):
            node.stop()
        left = self.all_pids()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return left
