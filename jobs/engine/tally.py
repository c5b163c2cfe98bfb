"""One small actor the read tasks and stage actors report their counters to; the driver
polls it for progress lines and builds the report from it, never from assumptions."""

from __future__ import annotations

import hashlib

import pyarrow as pa

from jobs.engine.columns import SOURCE


class Tally:
    """Counters reported once per `part` (a shard, a batch): a part counted again (a
    retried task, a block Ray recomputes after a node loss) replaces its earlier counts,
    so the report counts each row once. `peak_*` keep the maximum."""

    def __init__(self):
        self.totals: dict[str, float] = {}
        self.parts: dict[str, dict[str, float]] = {}

    def add(self, part: str, **values):
        before = self.parts.get(part, {})
        self.parts[part] = values
        for k, v in values.items():
            if k.startswith("peak_"):
                self.totals[k] = max(self.totals.get(k, 0), v)
            else:
                self.totals[k] = self.totals.get(k, 0) + v - before.get(k, 0)

    def get(self) -> dict[str, float]:
        return self.totals


def start_tally():
    """A `Tally` actor on the head node: worker nodes come and go (preemption), the head
    does not, and the counts must survive (a driver on a worker node's machine would
    attach to that node)."""
    import ray

    return ray.remote(Tally).options(num_cpus=0, resources={"node:__internal_head__": 0.001}).remote()


def batch_digest(batch: pa.Table, key: str) -> str:
    """The same input rows give the same digest, whichever task or actor runs them."""
    rows = zip(batch[key].to_pylist(), batch[SOURCE].to_pylist())
    return hashlib.sha1("\x00".join(f"{k}\x01{s}" for k, s in rows).encode()).hexdigest()
