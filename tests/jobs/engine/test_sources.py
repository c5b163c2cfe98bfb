"""Reading input shards in a read task (no Ray needed to call it): every row in blocks, a
damaged shard as an error row, and a large shard in ranges rather than whole."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.engine.columns import ERROR
from jobs.engine.sources import WHOLE_SHARD_BYTES, _read_shards
from storage import fs as sfs

RANGED = WHOLE_SHARD_BYTES + 1  # the size the listing reports: anything above it is read in ranges


def write_shard(path, n_rows: int = 30, row_group_size: int = 10) -> bytes:
    ids = [f"clip{i:03d}" for i in range(n_rows)]
    payload = [np.random.default_rng(i).integers(0, 1024, 200, dtype=np.uint16).tolist() for i in range(n_rows)]
    pq.write_table(pa.table({"id": ids, "codes": payload}), path, row_group_size=row_group_size, compression="none")
    return path.read_bytes()


def read(path, size: int, rows_per_block: int = 4) -> list[pa.Table]:
    return list(_read_shards([(str(path), size)], "id", rows_per_block, sfs.S3Options(), tally=None))


def good_ids(blocks: list[pa.Table]) -> list[str]:
    return [i for b in blocks for i, e in zip(b["id"].to_pylist(), b[ERROR].to_pylist()) if e is None]


def errors(blocks: list[pa.Table]) -> list[str]:
    return [e for b in blocks for e in b[ERROR].to_pylist() if e is not None]


@pytest.mark.parametrize("size", ["whole", "ranged"])
def test_every_row_comes_in_blocks_whether_the_shard_is_read_whole_or_in_ranges(tmp_path, size):
    data = write_shard(tmp_path / "a.parquet")
    blocks = read(tmp_path / "a.parquet", len(data) if size == "whole" else RANGED)
    assert good_ids(blocks) == [f"clip{i:03d}" for i in range(30)] and not errors(blocks)
    assert max(b.num_rows for b in blocks) <= 4


@pytest.mark.parametrize("size", ["whole", "ranged"])
def test_a_corrupt_footer_is_the_shards_error_row(tmp_path, size):
    data = write_shard(tmp_path / "a.parquet")
    (tmp_path / "a.parquet").write_bytes(data[:-40] + b"\x07" * 32 + data[-8:])  # garbage thrift, valid length+magic
    blocks = read(tmp_path / "a.parquet", len(data) if size == "whole" else RANGED)
    assert good_ids(blocks) == [] and len(errors(blocks)) == 1 and "unreadable shard" in errors(blocks)[0]


def test_a_damaged_row_group_read_in_ranges_keeps_the_rows_before_it(tmp_path):
    data = bytearray(write_shard(tmp_path / "a.parquet"))
    last = pq.ParquetFile(tmp_path / "a.parquet").metadata.row_group(2).column(1)
    start = last.data_page_offset
    data[start : start + 64] = b"\xff" * 64  # the last row group's codes page
    (tmp_path / "a.parquet").write_bytes(bytes(data))

    blocks = read(tmp_path / "a.parquet", RANGED, rows_per_block=10)

    assert good_ids(blocks) == [f"clip{i:03d}" for i in range(20)]
    assert len(errors(blocks)) == 1 and "unreadable shard after row 20" in errors(blocks)[0]
