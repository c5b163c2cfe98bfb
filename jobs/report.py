"""`codecsep report`: separated shards -> one self-contained HTML page of scores and spans.

Per prompt: histograms of the curation scores (energy kept, mean mask value), the
distribution of the active fraction, and the top and bottom clips by energy kept, each with a
timeline of its active spans and, where `export` wrote its audio beside the data (or under
`--audio DIR`), a player. Charts are inline SVG and audio is embedded as data URIs, so the
page needs no network and no other file. Only score columns are read, never the codes.
"""

from __future__ import annotations

import base64
import html
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from jobs.engine import JobParser, JobReport, require
from storage import fs as sfs
from storage import shards
from storage.exported import file_name, prompt_slugs

log = logging.getLogger("codecsep.report")

STAGE = "report"
SCORE_COLUMNS = (
    "id",
    "prompt",
    "energy_kept",
    "mask_mean",
    "active_fraction",
    "active_spans",
    "n_samples",
    "sample_rate",
    "stem",
)
AUDIO_TYPES = {"wav": "audio/wav", "flac": "audio/flac"}
COLORS = {"energy_kept": "#2b6cb0", "mask_mean": "#2f855a", "active_fraction": "#b7791f", "span": "#c53030"}


@dataclass(frozen=True)
class ReportConfig:
    input: str | None = None  # URI of separated shards
    output: str | None = None  # path or URI of the HTML file to write
    audio: list[str] = field(default_factory=list)  # folders of exported audio; the input folder is always searched
    top: int = 5  # clips listed at each end of the ranking, per prompt
    bins: int = 20  # histogram bins
    max_audio_mb: float = 50.0  # audio embedded in the page, at most
    stem: str = "target"  # rows of this stem, when the input has a `stem` column

    def check(self) -> None:
        require(self, ("input", "output"))
        if self.top < 1 or self.bins < 1:
            raise ValueError("top and bins must be positive")


# --------------------------------------------------------------------------- charts


def histogram_svg(values: list[float], bins: int, color: str, title: str, width: int = 360, height: int = 180) -> str:
    """A bar chart of `values` over [0, max(1, max value)] with axis labels."""
    hi = max(1.0, max(values, default=1.0))
    counts, edges = np.histogram(values, bins=bins, range=(0.0, hi))
    top = max(1, int(counts.max()))
    left, bottom, plot_w, plot_h = 36, 24, width - 46, height - 50
    bar_w = plot_w / bins
    bars = "".join(
        f'<rect x="{left + i * bar_w + 1:.1f}" y="{height - bottom - c / top * plot_h:.1f}" '
        f'width="{bar_w - 2:.1f}" height="{c / top * plot_h:.1f}" fill="{color}">'
        f"<title>{edges[i]:.2f}-{edges[i + 1]:.2f}: {c}</title></rect>"
        for i, c in enumerate(counts)
    )
    axis = (
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#333"/>'
        f'<line x1="{left}" y1="{height - bottom}" x2="{left}" y2="{height - bottom - plot_h}" stroke="#333"/>'
        f'<text x="{left}" y="{height - 6}" font-size="11">0</text>'
        f'<text x="{width - 10}" y="{height - 6}" font-size="11" text-anchor="end">{hi:.2g}</text>'
        f'<text x="{left - 4}" y="{height - bottom - plot_h + 10}" font-size="11" text-anchor="end">{top}</text>'
    )
    return (
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
        f'<text x="{width / 2}" y="14" font-size="12" text-anchor="middle">{html.escape(title)}</text>'
        f"{axis}{bars}</svg>"
    )


def timeline_svg(spans: list, duration: float, width: int = 320, height: int = 18) -> str:
    """The clip as a grey bar with its active spans in colour."""
    scale = width / max(duration, 1e-9)
    marks = "".join(
        f'<rect x="{s * scale:.1f}" y="2" width="{max(1.0, (e - s) * scale):.1f}" height="{height - 4}" '
        f'fill="{COLORS["span"]}"><title>{s:.2f}-{e:.2f} s</title></rect>'
        for s, e in spans
    )
    return (
        f'<svg class="timeline" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'<rect x="0" y="2" width="{width}" height="{height - 4}" fill="#e2e8f0"/>{marks}</svg>'
    )


# --------------------------------------------------------------------------- data


def read_scores(cfg: ReportConfig) -> list[dict]:
    """The score columns of every shard (never the codes), rows of the configured stem."""
    rows = []
    for shard in shards.list_shards(cfg.input):
        try:
            table = shards.read_present_columns(shard, SCORE_COLUMNS, required=("prompt", "energy_kept"))
        except shards.MissingColumns as e:
            raise ValueError(f"{shard}: not a separated shard ({e})") from None
        rows += [r for r in table.to_pylist() if r.get("stem", cfg.stem) == cfg.stem]
    return rows


class AudioFinder:
    """Exported audio of a (clip, prompt, stem), where `export` writes it
    (`storage.exported`), embedded as a data URI until the page's audio budget is spent."""

    def __init__(self, folders: list[str], prompts: set[str], budget_bytes: float):
        self.folders = [f for f in folders if sfs.exists(f)]
        self.slugs = prompt_slugs(prompts)
        self.budget = budget_bytes

    def data_uri(self, clip_id: str, prompt: str, stem: str | None) -> str | None:
        for folder in self.folders:
            for ext, mime in AUDIO_TYPES.items():
                uri = sfs.join(folder, file_name(clip_id, ext, self.slugs[prompt], stem))
                if sfs.exists(uri):
                    data = sfs.read_bytes(uri)
                    if len(data) > self.budget:
                        log.info("audio budget spent: no player for %s", uri)
                        return None
                    self.budget -= len(data)
                    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
        return None


# --------------------------------------------------------------------------- page

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #1a202c; background: #fff; }
section { margin-bottom: 40px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
table { border-collapse: collapse; margin-top: 12px; }
td, th { padding: 4px 10px; border-bottom: 1px solid #e2e8f0; text-align: left; font-size: 13px; }
audio { height: 28px; }
"""


def clip_rows(rows: list[dict], audio: AudioFinder) -> str:
    out = []
    for r in rows:
        duration = r["n_samples"] / r["sample_rate"] if r.get("n_samples") and r.get("sample_rate") else 0.0
        spans = r.get("active_spans") or []
        fraction = r.get("active_fraction")
        src = audio.data_uri(r["id"], r["prompt"], r.get("stem"))
        player = f'<audio controls preload="none" src="{src}"></audio>' if src else ""
        out.append(
            f"<tr><td>{html.escape(r['id'])}</td><td>{r['energy_kept']:.3f}</td>"
            f"<td>{'' if fraction is None else f'{fraction:.2f}'}</td><td>{duration:.1f} s</td>"
            f"<td>{timeline_svg(spans, duration) if duration else ''}</td>"
            f"<td>{player}</td></tr>"
        )
    return "".join(out)


def prompt_section(prompt: str, rows: list[dict], cfg: ReportConfig, audio: AudioFinder) -> str:
    charts = [
        histogram_svg([r["energy_kept"] for r in rows], cfg.bins, COLORS["energy_kept"], "energy kept"),
        histogram_svg(
            [r["mask_mean"] for r in rows if r.get("mask_mean") is not None],
            cfg.bins,
            COLORS["mask_mean"],
            "mean mask value",
        ),
    ]
    fractions = [r["active_fraction"] for r in rows if r.get("active_fraction") is not None]
    if fractions:
        charts.append(histogram_svg(fractions, cfg.bins, COLORS["active_fraction"], "active fraction"))
    ranked = sorted(rows, key=lambda r: (-r["energy_kept"], r["id"]))
    top, bottom = ranked[: cfg.top], ranked[max(cfg.top, len(ranked) - cfg.top) :][::-1]
    header = "<tr><th>clip</th><th>energy kept</th><th>active</th><th>length</th><th>active spans</th><th></th></tr>"
    tables = f"<h3>top {len(top)}</h3><table>{header}{clip_rows(top, audio)}</table>"
    if bottom:
        tables += f"<h3>bottom {len(bottom)}</h3><table>{header}{clip_rows(bottom, audio)}</table>"
    mean = sum(r["energy_kept"] for r in rows) / len(rows)
    return (
        f'<section data-prompt="{html.escape(prompt)}"><h2>{html.escape(prompt)}</h2>'
        f"<p>{len(rows)} clips, mean energy kept {mean:.3f}</p>"
        f'<div class="charts">{"".join(charts)}</div>{tables}</section>'
    )


def render(cfg: ReportConfig, rows: list[dict]) -> str:
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_prompt[r["prompt"]].append(r)
    audio = AudioFinder([cfg.input, *cfg.audio], set(by_prompt), cfg.max_audio_mb * 2**20)
    sections = "".join(prompt_section(p, by_prompt[p], cfg, audio) for p in sorted(by_prompt))
    clips = len({r["id"] for r in rows})
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>codecsep report</title>'
        f"<style>{STYLE}</style></head><body><h1>Separation report</h1>"
        f"<p>{html.escape(cfg.input)}: {len(rows)} rows, {clips} clips, {len(by_prompt)} prompts</p>"
        f"{sections or '<p>no rows</p>'}</body></html>"
    )


def run(cfg: ReportConfig) -> JobReport:
    cfg.check()
    t0 = time.perf_counter()
    report = JobReport(STAGE)
    with report.stage("read"):
        rows = read_scores(cfg)
    with report.stage("render"):
        page = render(cfg, rows)
    sfs.write_bytes_atomic(cfg.output, page.encode(), None)
    report.rows_in = len(rows)
    report.rows_out = 1
    report.audio_hours = sum(r["n_samples"] / r["sample_rate"] for r in rows if r.get("n_samples")) / 3600
    report.wall_s = time.perf_counter() - t0
    report.extra = {
        "output": cfg.output,
        "bytes": len(page.encode()),
        "prompts": sorted({r["prompt"] for r in rows}),
        "clips": len({r["id"] for r in rows}),
    }
    return report


def parse_args(argv: list[str] | None) -> ReportConfig:
    p = JobParser("report", ReportConfig, __doc__.splitlines()[0])
    p.add_argument("--input", help="URI of the separated shards")
    p.add_argument("--output", help="HTML file to write")
    p.add_argument("--audio", action="append", default=[], help="folder of exported audio (repeatable)")
    p.add_argument("--top", type=int, help="clips listed at each end of the ranking")
    return p.parse_config(argv)


def command(argv: list[str]) -> None:
    """`codecsep report`: parse, run, print the report (exit codes: jobs.cli)."""
    run(parse_args(argv)).emit()


if __name__ == "__main__":
    import sys

    from jobs.cli import main

    raise SystemExit(main(["report", *sys.argv[1:]], program=True))
