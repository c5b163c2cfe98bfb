"""Where `export` writes each file: a data contract that `report` (its audio players) and
users' own tools read too.

`<id>.<ext>` for a code row, `<id>/<prompt slug>.<ext>` for a separated row's target stem
and `<id>/<prompt slug>.<stem>.<ext>` for its other stems (`residual`). Prompts become
file-name-safe slugs; prompts that would share one get a digest suffix.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable

TARGET_STEM = "target"


def prompt_slugs(prompts: Iterable[str]) -> dict[str, str]:
    """A file-name-safe name per prompt; prompts that would share one get a digest suffix."""
    prompts = set(prompts)

    def slug(p: str) -> str:
        return re.sub(r"[^a-z0-9]+", "_", p.lower()).strip("_")[:64] or "prompt"

    counts: dict[str, int] = defaultdict(int)
    for p in prompts:
        counts[slug(p)] += 1
    return {
        p: slug(p) if counts[slug(p)] == 1 else f"{slug(p)}-{hashlib.sha1(p.encode()).hexdigest()[:8]}" for p in prompts
    }


def file_name(clip_id: str, ext: str, prompt_slug: str | None = None, stem: str | None = None) -> str:
    """The exported file of a clip (`prompt_slug` None: a code row), relative to the output folder."""
    if prompt_slug is None:
        return f"{clip_id}.{ext}"
    suffix = f".{stem}" if stem not in (None, TARGET_STEM) else ""
    return f"{clip_id}/{prompt_slug}{suffix}.{ext}"
