"""Paired gains, as separation papers report them: per prompt, the mean per-clip gain of
one figure over a baseline on the same clips, its 95% confidence interval (Student's t)
and a paired test (Wilcoxon signed-rank, two-sided). Pairing by clip removes what the
clips themselves vary by, so a small gain on few clips can still be told from noise."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

FIGURES = {  # figure -> (its column in evaluate's per-clip rows, {baseline: the baseline's column})
    "codes": ("latent_snr", {"identity mask": "latent_snr_identity", "wrong prompt": "latent_snr_wrong_prompt"}),
    "masked latent": (
        "masked_latent_snr",
        {"identity mask": "latent_snr_identity", "wrong prompt": "masked_latent_snr_wrong_prompt"},
    ),
}
Gains = dict[str, dict[str, dict[str, dict]]]  # prompt -> figure -> baseline -> `paired`


def paired(diffs: Iterable[float]) -> dict:
    """n, mean, 95% CI [low, high] and the Wilcoxon signed-rank p of per-clip differences
    (NaNs dropped; the CI and p need 2 clips, else None)."""
    from scipy import stats

    d = np.asarray([x for x in diffs if not math.isnan(x)], dtype=np.float64)
    out: dict = {"n": int(d.size), "mean": float(d.mean()) if d.size else None, "ci95": None, "p": None}
    if d.size >= 2:
        half = float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
        out["ci95"] = [out["mean"] - half, out["mean"] + half]
        out["p"] = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return out


def gains(rows: list[dict], figures: dict[str, tuple[str, dict[str, str]]] = FIGURES) -> Gains:
    """prompt -> figure -> baseline -> `paired` of (figure - baseline) over the rows."""
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_prompt[row["prompt"]].append(row)
    return {
        prompt: {
            figure: {name: paired(r[column] - r[base] for r in by_prompt[prompt]) for name, base in baselines.items()}
            for figure, (column, baselines) in figures.items()
        }
        for prompt in sorted(by_prompt)
    }


def against(rows: list[dict], other: list[dict], column: str = "latent_snr") -> Gains:
    """The gain of `rows` over `other` (another masker's per-clip rows of the same set), paired by
    (id, prompt): a labelled row is one target of one mixture."""
    theirs = {(r["id"], r["prompt"]): r[column] for r in other}
    joined = [
        {"prompt": r["prompt"], "ours": r[column], "theirs": theirs[key]}
        for r in rows
        if (key := (r["id"], r["prompt"])) in theirs
    ]
    if not joined:
        raise ValueError("the two evaluations share no (id, prompt) row: were they run on the same labelled set?")
    return gains(joined, {"codes": ("ours", {"other masker": "theirs"})})


def markdown(table: Gains) -> str:
    """One row per prompt and figure: per baseline, the mean gain [95% CI] and the Wilcoxon p."""
    names = list(dict.fromkeys(n for by_figure in table.values() for by_name in by_figure.values() for n in by_name))
    head = "| prompt | figure | clips | " + " | ".join(f"gain over {n} dB [95% CI] | p" for n in names) + " |"
    lines = [head, "|---" * (3 + 2 * len(names)) + "|"]
    for prompt, by_figure in table.items():
        for figure, by_name in by_figure.items():
            cells = [figure, str(next(iter(by_name.values()))["n"])]
            for name in names:
                cells += _cells(by_name.get(name))
            lines.append(f"| {prompt} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cells(g: dict | None) -> list[str]:
    if g is None or g["mean"] is None:
        return ["", ""]
    ci = f" [{g['ci95'][0]:+.2f}, {g['ci95'][1]:+.2f}]" if g["ci95"] else ""
    return [f"{g['mean']:+.2f}{ci}", f"{g['p']:.2g}" if g["p"] is not None else ""]
