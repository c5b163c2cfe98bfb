"""The closing numbers of a job: one summary line and a JSON report, whatever the exit."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class JobReport:
    """The closing numbers of a job; printed as one line and as JSON."""

    job: str
    rows_in: int = 0
    rows_out: int = 0
    errors: int = 0
    skipped_done: int = 0
    audio_hours: float = 0.0
    wall_s: float = 0.0
    stages_s: dict[str, float] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def x_realtime(self) -> float:
        return self.audio_hours * 3600 / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "job": self.job,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "errors": self.errors,
            "skipped_done": self.skipped_done,
            "audio_hours": round(self.audio_hours, 6),
            "wall_s": round(self.wall_s, 3),
            "x_realtime": round(self.x_realtime, 2),
            "stages_s": {k: round(v, 3) for k, v in self.stages_s.items()},
            **self.extra,
        }

    def summary(self) -> str:
        return (
            f"{self.job}: {self.rows_in} rows in, {self.rows_out} out, {self.errors} errors, "
            f"{self.skipped_done} already done; {self.audio_hours:.3f} h audio in {self.wall_s:.1f} s "
            f"({self.x_realtime:.1f}x realtime)"
        )

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages_s[name] = self.stages_s.get(name, 0.0) + time.perf_counter() - t0

    def emit(self) -> None:
        """The CLI's last words: the one-line summary, then the JSON report."""
        print(self.summary())
        print(json.dumps(self.to_dict(), sort_keys=True))
