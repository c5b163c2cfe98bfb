"""Curated segments: code rows cut to where a source sounds, and their manifest.

In code space a segment is a slice of frames: no decode. A separated row's `active_spans`
([start_s, end_s] pairs, from the separator's activity) become code-shard rows of their own,
codes sliced to the span's frames, `n_samples` the span's exact length, and an `id` derived
from the source id and the span, so that reruns give the same ids. DAC metadata is rewritten
for a one-chunk mono clip, so `export` decodes each segment to exactly its span's length.

The manifest (one row per selected row or segment: id, source id, prompt, start/end seconds,
scores) is one plain Parquet file, `_manifest.parquet`, beside the segment shards: pandas,
DuckDB and the Hugging Face `datasets` Parquet loader read it as it is, and shard readers skip
it (names starting with '_' are side tables, see `storage.shards`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.fs import S3Options, join, write_bytes_atomic

MANIFEST_NAME = "_manifest.parquet"
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),  # the segment's (or selected row's) id in the output shards
        pa.field("source_id", pa.string()),  # the id of the clip it comes from
        pa.field("prompt", pa.string()),
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
        pa.field("energy_kept", pa.float32()),
        pa.field("mask_mean", pa.float32()),
        pa.field("active_fraction", pa.float32()),
    ]
)
_EPS = 1e-6


def span_frames(start_s: float, end_s: float, frame_rate: float, n_frames: int) -> tuple[int, int]:
    """The frames [f0, f1) that cover [start_s, end_s], inside the clip; f1 > f0 or ValueError."""
    f0 = max(0, math.floor(start_s * frame_rate + _EPS))
    f1 = min(n_frames, math.ceil(end_s * frame_rate - _EPS))
    if f1 <= f0:
        raise ValueError(f"span [{start_s}, {end_s}] s covers no frame of a {n_frames}-frame clip")
    return f0, f1


def segment_id(source_id: str, start_s: float, end_s: float) -> str:
    """`<source id>@<start>-<end>` in seconds with millisecond digits: readable, stable."""
    return f"{source_id}@{start_s:.3f}-{end_s:.3f}"


def slice_row(row: Mapping[str, Any], codes: np.ndarray, span: Sequence[float], hop: int) -> tuple[dict, float, float]:
    """A code-shard row's segment (`hop`: samples per frame of the row's codec, from the one
    codec identity, `codecsep_core.DAC_CODECS`): codes [n_q, T] cut to `span`'s frames, exact length in
    samples, DAC metadata of a one-chunk mono clip, id from the source id and the span;
    -> (segment row, start_s, end_s) on the frame grid. Extra columns pass through. Chunked
    DAC rows (`dac_padding` False) have no frame grid to cut on: ValueError."""
    if row.get("dac_padding") is False:
        raise ValueError("a chunked .dac row (dac_padding=False) cannot be cut into segments")
    rate = int(row["sample_rate"])
    f0, f1 = span_frames(float(span[0]), float(span[1]), rate / hop, codes.shape[1])
    first, last = f0 * hop, min(f1 * hop, int(row["n_samples"]))
    if last <= first:
        raise ValueError(f"span {list(span)} starts after the clip's {row['n_samples']} samples")
    start_s, end_s = first / rate, last / rate
    out = {
        **row,
        "id": segment_id(row["id"], start_s, end_s),
        "codes": np.ascontiguousarray(codes[:, f0:f1]),
        "n_samples": last - first,
    }
    if row.get("dac_channels") is not None:
        original_rate = int(row["dac_sample_rate"])
        out.update(
            dac_chunk_length=f1 - f0,
            dac_padding=True,
            dac_channels=1,
            dac_channel=0,
            dac_original_length=round((last - first) * original_rate / rate),
        )
    return out, start_s, end_s


def clip_seconds(row: Mapping[str, Any]) -> float:
    return int(row["n_samples"]) / int(row["sample_rate"])


def manifest_row(out_id: str, row: Mapping[str, Any], start_s: float, end_s: float) -> dict:
    """One manifest entry for a separated `row` (its scores) selected as `out_id`."""
    return {
        "id": out_id,
        "source_id": row["id"],
        "prompt": row.get("prompt"),
        "start_s": start_s,
        "end_s": end_s,
        **{name: row.get(name) for name in ("energy_kept", "mask_mean", "active_fraction")},
    }


def write_manifest(output_uri: str, rows: Sequence[Mapping[str, Any]], s3: S3Options | None = None) -> str:
    """Write the manifest beside the shards at `output_uri`, rows sorted by id; -> its URI."""
    rows = sorted(rows, key=lambda r: r["id"])
    table = pa.table(
        {f.name: pa.array([r.get(f.name) for r in rows], f.type) for f in MANIFEST_SCHEMA}, schema=MANIFEST_SCHEMA
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    uri = join(output_uri, MANIFEST_NAME)
    write_bytes_atomic(uri, buf.getvalue(), s3)
    return uri
