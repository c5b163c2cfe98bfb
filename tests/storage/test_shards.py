import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from storage import fs
from storage.schema import CODE_SHARD_SCHEMA, CODES_TYPE, ERRORS_SCHEMA, codes_column_to_numpy, table_from_rows
from storage.shards import (
    MissingColumns,
    ShardOptions,
    ShardWriter,
    column_names,
    count_rows,
    list_shards,
    read_errors,
    read_present_columns,
    read_table,
    shard_name,
    write_table_atomic,
)

RNG = np.random.default_rng(0)


def clips(n, n_frames=20, start=0):
    rows = [
        {
            "id": f"clip{start + i:04d}",
            "codes": RNG.integers(0, 1024, (12, n_frames), dtype=np.uint16),
            "codec": "dac_16khz",
            "sample_rate": 16000,
            "n_samples": n_frames * 320,
            "speaker": f"s{i % 3}",
        }
        for i in range(n)
    ]
    return rows, table_from_rows(rows, CODE_SHARD_SCHEMA)


def test_round_trip_in_order_with_types(root):
    rows, table = clips(25)
    with ShardWriter(root, "w0", ShardOptions(max_rows=10)) as writer:
        writer.write(table.slice(0, 7))
        writer.write(table.slice(7))
    assert writer.written == [fs.join(root, shard_name("w0", i)) for i in range(3)]
    assert list_shards(root) == writer.written
    assert [read_table(u).num_rows for u in writer.written] == [10, 10, 5]
    back = read_table(root)
    assert back.schema.field("codes").type == CODES_TYPE
    assert back.schema.names == CODE_SHARD_SCHEMA.names + ["speaker"]
    assert back.column("id").to_pylist() == [r["id"] for r in rows]
    for got, r in zip(codes_column_to_numpy(back.column("codes")), rows):
        np.testing.assert_array_equal(got, r["codes"])


def test_shard_files_stay_under_max_bytes(tmp_path):
    _, table = clips(40, n_frames=200)  # ~4.8 kB of codes per row
    limit = 30_000
    with ShardWriter(str(tmp_path), "b", ShardOptions(max_bytes=limit, compression="none")) as writer:
        for i in range(0, 40, 8):
            writer.write(table.slice(i, 8))
    sizes = [os.path.getsize(u) for u in writer.written]
    assert len(sizes) > 5 and max(sizes) <= limit
    assert read_table(str(tmp_path)).column("id").to_pylist() == table.column("id").to_pylist()


def test_one_row_over_max_bytes_is_written_alone(tmp_path):
    _, table = clips(3, n_frames=500)
    writer = ShardWriter(str(tmp_path), "big", ShardOptions(max_bytes=100))
    writer.write(table)
    assert len(writer.close()) == 3


def test_rerun_with_same_prefix_replaces_not_duplicates(root):
    _, table = clips(12)
    with ShardWriter(root, "task-3", ShardOptions(max_rows=5)) as writer:
        writer.write(table)
    with ShardWriter(root, "task-30", ShardOptions(max_rows=5)) as other:
        other.write(table.slice(0, 1))
    with ShardWriter(root, "task-3", ShardOptions(max_rows=5)) as writer:
        writer.write(table)
    assert read_table(root).num_rows == 13
    with ShardWriter(root, "task-3", ShardOptions(max_rows=5)) as writer:
        writer.write(table.slice(0, 4))  # the re-run wrote less: no stale shard of it survives
    assert list_shards(root) == [fs.join(root, shard_name("task-3", 0)), fs.join(root, shard_name("task-30", 0))]
    assert read_table(root).num_rows == 5


def test_readers_ignore_crash_leftovers_side_tables_and_other_files(root):
    _, table = clips(4)
    with ShardWriter(root, "ok") as writer:
        writer.write(table)
    half_written = fs.read_bytes(writer.written[0])[:100]
    fs.write_bytes_atomic(fs.join(root, ".part-dead-00000.parquet.tmp-1a2b3c"), half_written)  # killed writer
    fs.write_bytes_atomic(fs.join(root, "_temporary/part-x.parquet"), half_written)
    fs.write_bytes_atomic(fs.join(root, "README.txt"), b"not data")
    error = {
        "id": "bad",
        "source": "in.parquet",
        "stage": "separate",
        "prompt": None,
        "reason": "empty clip (0 frames)",
    }
    write_table_atomic(fs.join(root, "_errors/part-e0.parquet"), pa.Table.from_pylist([error], ERRORS_SCHEMA))
    assert list_shards(root) == writer.written
    assert read_table(root).num_rows == 4


def test_failed_task_writes_nothing(tmp_path, monkeypatch):
    _, table = clips(6)
    with pytest.raises(RuntimeError):
        with ShardWriter(str(tmp_path), "t", ShardOptions(max_rows=4)) as writer:
            writer.write(table)  # one full shard goes out, two rows stay buffered
            raise RuntimeError("task failed")
    assert read_table(str(tmp_path)).num_rows == 4

    def killed(*args):
        raise OSError("killed mid-write")

    monkeypatch.setattr(os, "replace", killed)  # the process dies before the rename
    with pytest.raises(OSError):
        with ShardWriter(str(tmp_path), "u") as writer:
            writer.write(table)
    monkeypatch.undo()
    assert read_table(str(tmp_path)).num_rows == 4
    assert not any(name.startswith("part-u") for name in os.listdir(tmp_path))


def test_read_table_unifies_shards_filters_and_selects(root):
    sep = pa.table(
        {
            "id": ["a", "a", "b"],
            "prompt": ["speech", "music", "speech"],
            "energy_kept": pa.array([0.9, 0.1, 0.5], pa.float32()),
        }
    )
    extra = pa.table({"id": ["c"], "prompt": ["speech"], "energy_kept": pa.array([0.7], pa.float32()), "note": ["x"]})
    with ShardWriter(root, "p0") as w:
        w.write(sep)
    with ShardWriter(root, "p1") as w:
        w.write(extra)
    speech = read_table(root, columns=["id", "note"], filter=pc.field("prompt") == "speech")
    assert speech.to_pylist() == [{"id": "a", "note": None}, {"id": "b", "note": None}, {"id": "c", "note": "x"}]


def test_read_table_empty_and_missing(root):
    fs.write_bytes_atomic(fs.join(root, "README.txt"), b"")
    assert read_table(root).num_rows == 0
    with pytest.raises(FileNotFoundError):
        read_table(fs.join(root, "missing"))


def test_errors_table(root):
    assert read_errors(root).schema == ERRORS_SCHEMA
    rows = [
        {"id": "x", "source": "s3://in/p.parquet", "stage": "separate", "reason": "empty clip (0 frames)", "key": "x"},
        {
            "id": None,
            "source": "s3://in/broken.dac",
            "stage": "ingest",
            "reason": "not a .dac file",
            "key": "s3://in/broken.dac",
        },
    ]
    write_table_atomic(
        fs.join(root, "_errors", shard_name("task-7", 0)),
        pa.Table.from_pylist([dict(r, prompt=None) for r in rows], ERRORS_SCHEMA),
    )
    errors = read_errors(root)
    assert errors.schema.names == ERRORS_SCHEMA.names
    assert errors.to_pylist() == [dict(r, prompt=None) for r in rows]


@pytest.mark.parametrize("prefix", ["", "a/b", ".tmp", "_x"])
def test_writer_prefix_must_be_a_visible_name(tmp_path, prefix):
    with pytest.raises(ValueError):
        ShardWriter(str(tmp_path), prefix)


def test_an_index_reads_the_columns_a_shard_has_and_never_the_codes(root):
    _, table = clips(3)
    uri = fs.join(root, "part-0.parquet")
    write_table_atomic(uri, table)
    assert "codes" in column_names(uri)
    index = read_present_columns(uri, ["id", "prompt", "codec"], required=["id"])
    assert index.column_names == ["id", "codec"]  # no prompt column in code shards
    assert index["id"].to_pylist() == table["id"].to_pylist()
    with pytest.raises(MissingColumns, match="'energy_kept'"):
        read_present_columns(uri, ["id"], required=["energy_kept"])


def test_count_rows_adds_up_every_shard_and_is_zero_for_an_empty_folder(root):
    for i, n in enumerate((3, 5)):
        write_table_atomic(fs.join(root, "split", f"part-{i}.parquet"), clips(n)[1])
    assert count_rows(list_shards(fs.join(root, "split"))) == 8
    write_table_atomic(fs.join(root, "other", "_errors", "part-0.parquet"), clips(2)[1])
    assert count_rows(list_shards(fs.join(root, "other"))) == 0  # hidden folders hold no data shards
