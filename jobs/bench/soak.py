"""The soak (`codecsep bench --soak`, not in `make test`): an archive of `soak_shards`
shards of `soak_rows` 1 s clips, separated as a schedule would see it grow.

1. The first `soak_first_shards` shards (20,000 rows at the defaults): a run from empty.
2. The archive grown to every shard (200,000 rows): the run is killed once by pid (the
   driver's process group and every process of its embedded Ray) after its first wave
   is in the ledger, then the same command finishes it.
3. A rerun with nothing new, at 20,000 and at 200,000 rows.

Each run is `python -m jobs.separate` in its own process (`tiny` masker, `--emit scores`,
waves of `soak_wave_rows`), its peak driver memory sampled from outside. Every row must
come out exactly once.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from jobs.bench.config import BenchConfig
from jobs.bench.lost_machine import LostMachine
from jobs.bench.models import Models

log = logging.getLogger("codecsep.bench")


class Run:
    """A separate job in its own process, its driver's peak RSS sampled every 0.2 s."""

    def __init__(self, args: list[str], log_path: Path):
        self.machine, self.log_path = LostMachine(), log_path
        with open(log_path, "w") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jobs.separate", *args],
                env=self.machine.env,
                stdout=sink,
                stderr=sink,
                start_new_session=True,
            )
        self.t0, self.peak_rss = time.perf_counter(), 0

    def sample(self) -> None:
        import psutil

        try:
            self.peak_rss = max(self.peak_rss, psutil.Process(self.proc.pid).memory_info().rss)
        except psutil.NoSuchProcess:
            pass

    def wait(self, timeout_s: float, until=None) -> float:
        """Until the process ends (or `until()` holds); -> wall seconds so far."""
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and not (until and until()):
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"soak run over {timeout_s} s: {self.log_path}")
            self.sample()
            time.sleep(0.2)
        return time.perf_counter() - self.t0

    def kill(self) -> None:
        self.machine.kill(self.proc)

    def report(self) -> dict:
        text = self.log_path.read_text()
        if self.proc.returncode != 0:
            raise RuntimeError(f"soak run exited {self.proc.returncode}:\n{text[-3000:]}")
        return json.loads(text.strip().splitlines()[-1])


def _figures(name: str, rows: int, wall: float, peak_rss: int, report: dict) -> dict:
    return {
        "run": name,
        "archive_rows": rows,
        "rows_in": report["rows_in"],
        "rows_skipped": report["skipped_done"],
        "wall_s": wall,
        "rows_per_s": report["rows_in"] / wall if report["rows_in"] else None,
        "driver_peak_rss_mb": peak_rss / 2**20,
    }


def measure_soak(cfg: BenchConfig, m: Models) -> dict:
    from codecsep_core import Masker, MaskerConfig, save_masker
    from storage.prompt_table import PromptTable, write_prompt_table
    from storage.shards import read_table, write_table_atomic

    gen = torch.Generator().manual_seed(cfg.seed + 7)
    n_frames = m.frames(1.0)
    runs = []
    with tempfile.TemporaryDirectory(prefix="codecsep-soak-") as tmp:
        root = Path(tmp)

        def put(first: int, last: int) -> None:
            for k in range(first, last):
                ids = [f"s{k:05d}-{i:04d}" for i in range(cfg.soak_rows)]
                write_table_atomic(str(root / "codes" / f"part-{k:05d}.parquet"), m.random_shard(ids, n_frames, gen))

        torch.manual_seed(cfg.seed)
        save_masker(Masker(MaskerConfig.preset("tiny")).eval(), root / "masker.safetensors")
        m.tables.save(root / "tables.safetensors")
        write_prompt_table(str(root / "prompts.parquet"), PromptTable(("prompt 0",), m.prompts[:1].numpy()))
        args = [
            *("--input", str(root / "codes"), "--output", str(root / "out")),
            *("--masker", str(root / "masker.safetensors"), "--codec-tables", str(root / "tables.safetensors")),
            *("--prompt-table", str(root / "prompts.parquet"), "--prompt", "prompt 0"),
            *("--actors", "2", "--cpus-per-actor", "1", "--batch-size", "64"),
            "emit=scores",
            f"run.wave_rows={cfg.soak_wave_rows}",
        ]
        small, full = cfg.soak_first_shards * cfg.soak_rows, cfg.soak_shards * cfg.soak_rows
        ledger = root / "out" / "_ledger"

        def timed(name: str, rows: int) -> None:
            run = Run(args, root / f"{len(runs)}.log")
            wall = run.wait(3600)
            runs.append(_figures(name, rows, wall, run.peak_rss, run.report()))
            log.info("soak: %s", runs[-1])

        put(0, cfg.soak_first_shards)
        timed("from empty", small)
        timed("nothing new", small)
        put(cfg.soak_first_shards, cfg.soak_shards)
        parts_before = {p.name for p in ledger.glob("part-*.parquet")}
        killed = Run(args, root / "killed.log")
        killed.wait(3600, until=lambda: {p.name for p in ledger.glob("part-*.parquet")} != parts_before)
        committed = time.monotonic()  # a wave is in the ledger; the kill lands in the next one
        killed_s = killed.wait(3600, until=lambda: time.monotonic() - committed > cfg.soak_kill_after_wave_s)
        killed_mid_run = killed.proc.poll() is None
        if killed_mid_run:
            killed.kill()
        resumed = Run(args, root / "resumed.log")
        resumed_s = resumed.wait(3600)
        report = resumed.report()
        grown = _figures("grown, killed once, resumed", full, killed_s + resumed_s, resumed.peak_rss, report)
        grown.update(
            rows_in=full - small,
            rows_per_s=(full - small) / (killed_s + resumed_s),
            killed_after_s=killed_s,
            killed_mid_run=killed_mid_run,
            driver_peak_rss_mb=max(killed.peak_rss, resumed.peak_rss) / 2**20,
        )
        runs.append(grown)
        timed("nothing new", full)
        out = read_table(str(root / "out"), columns=["id", "prompt"])
        keys = list(zip(out["id"].to_pylist(), out["prompt"].to_pylist()))
    return {
        "shards": cfg.soak_shards,
        "rows": full,
        "wave_rows": cfg.soak_wave_rows,
        "runs": runs,
        "output_rows": len(keys),
        "exactly_once": len(keys) == full and len(set(keys)) == full,
    }


def to_markdown(res: dict) -> str:
    from jobs.bench.report import _table

    lines = [
        f"Soak: {res['rows']:,} rows of 1 s clips in {res['shards']:,} shards (`tiny` masker, `--emit scores`, "
        f"2 actors, waves of {res['wave_rows']:,} rows); output rows {res['output_rows']:,}, exactly once: "
        f"{'yes' if res['exactly_once'] else 'NO'}. The grown run was killed by pid "
        f"{res['runs'][2]['killed_after_s']:.0f} s in, {res['wave_rows']:,}-row wave committed and the next in flight"
        f"{'' if res['runs'][2]['killed_mid_run'] else ' (NOT killed: it ended first)'}; wall time and rows/s "
        "count both processes.",
        "",
        *_table(
            "run|archive rows|rows in|rows skipped|wall s|rows/s|driver peak RSS MB",
            [
                [r["run"], r["archive_rows"], r["rows_in"], r["rows_skipped"], r["wall_s"]]
                + [r["rows_per_s"] or "", r["driver_peak_rss_mb"]]
                for r in res["runs"]
            ],
        ),
    ]
    return "\n".join(lines) + "\n"
