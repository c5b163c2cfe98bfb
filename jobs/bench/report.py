"""Headline figures, the PASS/FAIL table and the Markdown page, from the measured rows only."""

from __future__ import annotations

import json
from pathlib import Path

from jobs.bench.config import EQUAL_QUALITY_DB, JUDGE_JOB_MIN_S, TARGETS


def summarize(res: dict) -> dict:
    """Headline figures and targets of one run's results."""
    macs, peaks, speed, quality = res["macs"], res["matmul_peak_gflops"], res["speed"], res["quality"]
    cpu_codes = [r for r in speed if r["route"] == "codes" and r["device"] == "cpu"]
    equal = [r for r in cpu_codes if quality["precisions"][r["precision"]]["equal_quality"]]
    fastest, fastest_ok = max(cpu_codes, key=lambda r: r["x_realtime"]), max(equal, key=lambda r: r["x_realtime"])
    flops_per_audio_s = 2e9 * macs["separator_gmacs_per_audio_second"]

    def row(route, batch):
        return next(
            (
                r
                for r in speed
                if r["route"] == route and r["precision"] == "fp32" and r["batch"] == batch and r["device"] == "cpu"
            ),
            None,
        )

    codes, wave = row("codes", res["config"]["speedup_batch"]), row("waveform", res["config"]["speedup_batch"])
    out = {
        "separator_x_realtime": fastest_ok["x_realtime"],
        "separator_fastest": {k: fastest[k] for k in ("precision", "batch", "x_realtime")},
        "separator_fastest_equal_quality": {k: fastest_ok[k] for k in ("precision", "batch", "x_realtime")},
        # Of the matmul peak in the dtype the configuration computes in.
        "fraction_of_machine_peak": fastest_ok["x_realtime"] * flops_per_audio_s / 1e9 / peaks[fastest_ok["precision"]],
        # The x-realtime a perfect kernel would reach at this machine's peak, per dtype.
        "x_realtime_ceiling": {p: v * 1e9 / flops_per_audio_s for p, v in peaks.items()},
        "short_vs_long": res["short_clips"]["short_vs_long"],
        "job_vs_bare_loop": res["job"]["job_vs_bare_loop"],
        "separator_gmacs_per_audio_second": macs["separator_gmacs_per_audio_second"],
        "codes_vs_waveform_speedup": wave["seconds"] / codes["seconds"] if codes and wave else None,
    }
    gmacs = "{:.3f} vs {:.3f}".format(
        macs["separator_gmacs_per_audio_second"], macs["published_masker_gmacs_per_audio_second"]
    )
    floors = (  # (name, figure, TARGETS key): the figure must reach the target
        ("separator x-realtime at equal quality >= {:g} (CPU)", "separator_x_realtime", "x_realtime"),
        ("short-clip / long-clip throughput >= {:g}", "short_vs_long", "short_vs_long"),
        ("job vs bare loop >= {:g}", "job_vs_bare_loop", "job_vs_bare_loop"),
    )
    # name -> what was measured and whether it passes: the table needs no dict order
    out["targets"] = {
        name.format(TARGETS[t]): {"measured": out[k], "pass": bool(out[k] >= TARGETS[t])} for name, k, t in floors
    }
    job = res["job"]
    out["job_fixed_cost_s"] = {"first_job_set_up": job["cold_start_s"], "per_job": job["runs"][0]["outside_compute_s"]}
    if job["bare_loop_s"] < JUDGE_JOB_MIN_S:  # a fixed cost over little work says nothing of throughput
        out["targets"]["job vs bare loop >= {:g}".format(TARGETS["job_vs_bare_loop"])]["pass"] = None
    out["targets"]["separator MACs <= published masker's"] = {
        "measured": gmacs,
        "pass": bool(macs["separator_gmacs_per_audio_second"] <= macs["published_masker_gmacs_per_audio_second"]),
    }
    return out


def _table(headers: str, rows: list[list]) -> list[str]:
    """A Markdown table; `headers` separated by '|'."""

    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    names = headers.split("|")
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)] + [
        "| " + " | ".join(fmt(v) for v in r) + " |" for r in rows
    ]


def _section(title: str, headers: str, rows: list[list]) -> list[str]:
    return ["", title, "", *_table(headers, rows)]


def verdict(passed: bool | None) -> str:
    if passed is None:
        return f"not judged (bare loop under {JUDGE_JOB_MIN_S:g} s: too little work)"
    return "PASS" if passed else "FAIL"


def to_markdown(res: dict) -> str:
    s, macs, job, cfg, q = res["summary"], res["macs"], res["job"], res["config"], res["quality"]
    best, short, fastest = s["separator_fastest_equal_quality"], res["short_clips"], s["separator_fastest"]
    qc, size, ing = cfg["quality"], job["output_size"], res["ingest"]
    plan, ids = res["scale"]["planning"], res["scale"]["checkpoint_ids"]
    ceiling = s["x_realtime_ceiling"]
    lines = [
        f"Machine: {res['machine']}. Random-weight DAC and `{cfg['masker_preset']}` masker for speed "
        "(real architectures; no weights can be downloaded). All ratios from this one run; times are the "
        "minimum of the repeats."
    ]
    lines += _section(
        "**Targets**",
        "target|measured|result",
        [[k, t["measured"], verdict(t["pass"])] for k, t in s["targets"].items()],
    )
    lines += _section(
        "**Headline**",
        "figure|value",
        [
            [
                f"separator x-realtime at equal quality ({best['precision']}, batch {best['batch']})",
                s["separator_x_realtime"],
            ],
            [f"fastest configuration ({fastest['precision']}, batch {fastest['batch']})", fastest["x_realtime"]],
            ["fraction of the matmul peak in its dtype", s["fraction_of_machine_peak"]],
            [
                "x-realtime ceiling at matmul peak (" + " / ".join(ceiling) + ")",
                " / ".join(f"{v:.0f}" for v in ceiling.values()),
            ],
            [
                f"short-clip / long-clip throughput ({short['precision']}, {short['short_clips']} x "
                f"{short['short_clip_seconds']:g} s vs {short['long_clips']} x {short['long_clip_seconds']:g} s)",
                s["short_vs_long"],
            ],
            ["job vs bare loop", s["job_vs_bare_loop"]],
            [
                "fixed cost of a job: a driver's first job's set-up / each job's time outside actor compute (s)",
                "{first_job_set_up:.1f} / {per_job:.1f}".format(**s["job_fixed_cost_s"]),
            ],
            [
                f"codes vs waveform route (fp32, batch {cfg['speedup_batch']}; reported, not a target)",
                "n/a" if s["codes_vs_waveform_speedup"] is None else s["codes_vs_waveform_speedup"],
            ],
        ],
    )
    lines += _section(
        f"**Precision at equal quality** (`{qc['preset']}` masker trained {qc['steps']} steps on synthetic "
        f"mixtures, fitted codec, {qc['heldout_mixtures']} held-out mixtures x every prompt; identity mask "
        f"{q['identity_snr_db']:.2f} dB; equal quality: latent SNR vs target within {EQUAL_QUALITY_DB} dB "
        "of fp32's)",
        "precision|latent SNR vs target dB|SNR vs fp32 dB|code agreement|frame agreement|equal quality",
        [
            [p, *(r[k] for k in ("snr_vs_target_db", "snr_vs_fp32_db", "code_agreement", "frame_agreement"))]
            + ["yes" if r["equal_quality"] else "no"]
            for p, r in q["precisions"].items()
        ],
    )
    lines += _section(
        "**Compute** (GMAC per second of audio, counted with torch's FLOP counter, attention included)",
        "part|GMAC/s",
        [
            [k.replace("_gmacs_per_audio_second", ""), v]
            for k, v in macs.items()
            if k.endswith("_gmacs_per_audio_second")
        ],
    )
    lines += _section(
        "**Speed** per %g s clip, %d prompt(s)" % (cfg["clip_seconds"], cfg["n_prompts"]),
        "route|device|precision|batch|s/clip|x-realtime",
        [[r[k] for k in ("route", "device", "precision", "batch", "s_per_clip", "x_realtime")] for r in res["speed"]],
    )
    lines += _section(
        "**Fast path, step by step** (masker only, %d windows x %d prompts)"
        % (cfg["speedup_batch"], cfg["ablation_prompts"]),
        "step|s|x-realtime|frame agreement vs published",
        [[r["step"], r["seconds"], r["x_realtime"], r["frame_agreement"]] for r in res["ablation"]],
    )
    lines += _section(
        "**Separation job** (embedded Ray, %d clips, %.0f s audio as the job counted it; bare loop %.1fx "
        "realtime; a driver's first job also pays %.1f s of one-time set-up, not in these runs)"
        % (job["clips_written"], job["audio_seconds"], job["bare_loop_x_realtime"], job["cold_start_s"]),
        "actors|CPUs/actor|rows out|wall s|x-realtime|vs bare loop|s outside actor compute|peak actor RSS MB",
        [
            [r["actors"], r["cpus_per_actor"], r["rows_out"], r["wall_s"], r["x_realtime"]]
            + [r["x_realtime"] / job["bare_loop_x_realtime"], r["outside_compute_s"], r["peak_actor_rss_mb"]]
            for r in job["runs"]
        ],
    )
    lines += [
        "",
        "**Output size per row**: %.0f bytes with codes, %.0f bytes with `--emit scores` (scores and activity "
        "spans only, a curation pass), %.1fx smaller"
        % (
            size["codes_bytes_per_row"],
            size["scores_bytes_per_row"],
            size["codes_bytes_per_row"] / size["scores_bytes_per_row"],
        ),
    ]
    lines += _section(
        "**Ingest job** (embedded Ray, 1 actor x 2 CPUs, %d wav files, %.0f s audio, half resampled from "
        "44.1 kHz)" % (ing["files"], ing["audio_seconds"]),
        "wall s|audio s per wall s|encode only",
        [[ing["wall_s"], ing["x_realtime"], ing["encode_only_x_realtime"]]],
    )
    lines += _section(
        "**Archives with many shards** (planning on loopback S3; Ray Data's checkpoint filter array)",
        "shards planned|plan s|driver peak growth MB|ids|filter array MB|bytes/id|ids per filter actor",
        [
            [plan["shards"], plan["plan_s"], plan["driver_peak_growth_mb"], ids["ids"], ids["filter_array_mb"]]
            + [ids["bytes_per_id"], ids["ids_per_filter_actor"]]
        ],
    )
    lines += archive_sections(res["archive"])
    lines += _section(
        "**Time vs clip length** (one clip, in-process, %s)" % cfg["separator"]["precision"],
        "audio s|wall s|x-realtime",
        [[r["seconds_audio"], r["seconds"], r["x_realtime"]] for r in res["lengths"]],
    )
    return "\n".join(lines) + "\n"


def archive_sections(a: dict) -> list[str]:
    reruns, files = a["reruns"], a["output_files"]
    lines = _section(
        "**Archives that grow: scheduled reruns** (`separate`, `tiny` masker, `emit=scores`, %d shards x %d "
        "clips of %g s on loopback S3; input GETs and bytes counted by a proxy)"
        % (reruns["shards"], reruns["rows_per_shard"], reruns["clip_seconds"]),
        "run|shards listed|shards due|rows in|rows skipped|input GETs|input bytes|vs first run|wall s",
        [
            [r[k] for k in ("run", "shards_listed", "shards_due", "rows_in", "rows_skipped", "input_gets")]
            + [r["input_bytes"], r["bytes_vs_first_run"], r["wall_s"]]
            for r in reruns["runs"]
        ],
    )
    lines += _section(
        "**Resume state** (a ledger of done shards of %d rows, planned in a fresh process; Ray's checkpoint "
        "filter holds at most the wave in flight, `run.wave_rows` = %d)"
        % (a["resume_state"][0]["done_rows"] // a["resume_state"][0]["shards"], a["wave_rows"]),
        "done rows|shards|ledger bytes|plan s|driver plan MB|same without ledger MB|filter MB at most|"
        "filter MB before the ledger",
        [
            [r[k] for k in ("done_rows", "shards", "ledger_bytes", "plan_s", "driver_plan_memory_mb")]
            + [r["driver_plan_memory_no_ledger_mb"], r["filter_memory_at_most_mb"], r["filter_memory_before_ledger_mb"]]
            for r in a["resume_state"]
        ],
    )
    lines += [
        "",
        "**Output files**: %d data files per 1 M rows of codes of %g s clips (%.0f bytes a row, %d rows a file at "
        "`run.target_file_mb` = %g); %d with the old `min_rows_per_file: 64`"
        % (
            files["files_per_million_rows"],
            files["clip_seconds"],
            files["bytes_per_row"],
            files["rows_per_file"],
            files["target_file_mb"],
            files["files_per_million_rows_before"],
        ),
    ]
    return lines


def update_docs(path: Path, markdown: str) -> None:
    """Replace the generated section of the results page, keeping any text around it."""
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nGenerated by `codecsep bench --output DIR`.\n\n"
    block = f"{begin}\n{markdown}{end}\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) + 1 :]
    else:
        text += block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_results(res: dict, output: Path, docs: Path | None) -> str:
    output.mkdir(parents=True, exist_ok=True)
    (output / "bench.json").write_text(json.dumps(res, indent=2, sort_keys=True))
    markdown = to_markdown(res)
    (output / "bench.md").write_text(markdown)
    if docs is not None:
        update_docs(docs, markdown)
    return markdown
