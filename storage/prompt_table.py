"""Prompt table: text prompts and their embeddings in one Parquet file (docs/architecture.md).

Jobs embed each distinct prompt once (CLAP) and ship vectors to the GPU actors; storing
them lets a later run reuse the vectors without loading the text encoder. The encoder that made the vectors is
kept in the file's key-value metadata, so a run can refuse vectors from another encoder,
and, per vector, in the `encoder` and `branch` columns: CLAP embeds text prompts with its
text branch and example clips (query by example) with its audio branch, into one space.
Tables written before those columns existed read as text-branch vectors.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.fs import S3Options, read_bytes, write_bytes_atomic

ENCODER_KEY = b"codecsep.encoder"
BRANCHES = ("text", "audio")
PROMPT_TABLE_SCHEMA = pa.schema([pa.field("prompt", pa.string()), pa.field("embedding", pa.list_(pa.float32()))])
PROVENANCE_SCHEMA = pa.schema([pa.field("encoder", pa.string()), pa.field("branch", pa.string())])


@dataclass(frozen=True)
class PromptTable:
    """Distinct prompts and their embeddings, float32 [n_prompts, dim], made by one `encoder`;
    `branches` says per prompt which of its branches made the vector ("text" when not given)."""

    prompts: tuple[str, ...]
    embeddings: np.ndarray
    encoder: str | None = None
    branches: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        branches = ("text",) * len(self.prompts) if self.branches is None else self.branches
        object.__setattr__(self, "branches", branches)
        if len(branches) != len(self.prompts) or not set(branches) <= set(BRANCHES):
            raise ValueError(f"branches must be one of {BRANCHES} per prompt, got {self.branches}")
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.prompts):
            raise ValueError(f"{len(self.prompts)} prompts need embeddings [n, dim], got {self.embeddings.shape}")
        if not all(isinstance(p, str) and p for p in self.prompts):
            raise ValueError("prompts must be non-empty strings")
        if len(set(self.prompts)) != len(self.prompts):
            raise ValueError("prompts must be distinct")
        if not np.isfinite(self.embeddings).all():
            raise ValueError("embeddings must be finite")

    def vectors(self, prompts: Sequence[str]) -> np.ndarray:
        """Embeddings of `prompts`, in that order; KeyError naming any prompt not here."""
        index = {p: i for i, p in enumerate(self.prompts)}
        missing = [p for p in prompts if p not in index]
        if missing:
            raise KeyError(f"prompt(s) not in the prompt table: {missing}")
        return self.embeddings[[index[p] for p in prompts]]


def write_prompt_table(uri: str, table: PromptTable, s3: S3Options | None = None) -> None:
    emb = np.ascontiguousarray(table.embeddings, dtype=np.float32)
    offsets = np.arange(len(table.prompts) + 1, dtype=np.int32) * emb.shape[1]
    embedding = pa.ListArray.from_arrays(pa.array(offsets), pa.array(emb.reshape(-1)))
    metadata = {ENCODER_KEY: table.encoder.encode()} if table.encoder else None
    schema = pa.schema(list(PROMPT_TABLE_SCHEMA) + list(PROVENANCE_SCHEMA), metadata=metadata)
    encoders = pa.array([table.encoder] * len(table.prompts), pa.string())
    arrow = pa.table(
        [pa.array(table.prompts, pa.string()), embedding, encoders, pa.array(table.branches, pa.string())],
        schema=schema,
    )
    buf = io.BytesIO()
    pq.write_table(arrow, buf)
    write_bytes_atomic(uri, buf.getvalue(), s3)


def read_prompt_table(uri: str, s3: S3Options | None = None) -> PromptTable:
    arrow = pq.read_table(io.BytesIO(read_bytes(uri, s3)))
    missing = [n for n in PROMPT_TABLE_SCHEMA.names if n not in arrow.schema.names]
    if missing:
        raise ValueError(f"{uri}: not a prompt table (missing column(s) {missing})")
    embedding = arrow.column("embedding").combine_chunks()
    lengths = np.diff(embedding.offsets.to_numpy())
    if embedding.null_count or len(set(lengths.tolist())) > 1:
        raise ValueError(f"{uri}: embeddings must all be present and of one dimension")
    flat = embedding.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    dim = int(lengths[0]) if len(lengths) else 0
    encoder = (arrow.schema.metadata or {}).get(ENCODER_KEY)
    encoder = encoder.decode() if encoder else None
    if "encoder" in arrow.schema.names:
        encoders = set(arrow.column("encoder").to_pylist())
        if len(encoders) > 1:
            raise ValueError(f"{uri}: vectors of several encoders {sorted(map(str, encoders))} do not share one space")
        encoder = encoders.pop() if encoders else encoder
    branches = arrow.column("branch").to_pylist() if "branch" in arrow.schema.names else None
    return PromptTable(
        prompts=tuple(arrow.column("prompt").to_pylist()),
        embeddings=flat.reshape(len(arrow), dim),
        encoder=encoder,
        branches=tuple(branches) if branches is not None else None,
    )
