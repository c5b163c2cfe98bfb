"""The ledger and the plan on their own (no Ray): what a run would find due, how entries
add up and compact, and how the claim guards an output."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.engine import UsageError
from jobs.engine.ledger import COMPACT_AFTER, InputFile, Ledger, Wave, new_wave_id
from jobs.engine.plan import Due, chunks_of, diff, pack
from storage import shards


def wave(units, *files) -> Wave:
    return Wave(new_wave_id(), tuple(units), tuple(files))


def test_entries_add_up_per_file_and_a_rewritten_file_keeps_what_was_done(tmp_path):
    ledger = Ledger(str(tmp_path / "out"))
    a, b = InputFile("s3://x/a.parquet", 10, "e1", 4), InputFile("s3://x/b.parquet", 20, "e2", 8)
    ledger.commit(wave(["target:speech"], a, b), {a.uri: 4, b.uri: 8})
    ledger.commit(wave(["target:rain"], a), {a.uri: 4})
    entries = ledger.entries()
    assert entries[a.uri].units == {"target:speech", "target:rain"} and entries[b.uri].units == {"target:speech"}
    plan = diff(
        [a, InputFile(b.uri, 21, "e3"), InputFile("s3://x/c.parquet", 5, "e4")],
        entries,
        ("target:speech", "target:rain"),
    )
    assert plan.done_rows == 4  # a: every unit done
    assert [(d.file.uri, d.units) for d in plan.due] == [("s3://x/c.parquet", ("target:speech", "target:rain"))]
    assert [(now.size, before.size) for now, before in plan.changed] == [(21, 20)]


def test_a_partly_done_input_is_due_for_what_it_lacks_with_the_rows_the_ledger_knows(tmp_path):
    ledger = Ledger(str(tmp_path / "out"))
    a = InputFile("a", 10, "v", 7)
    ledger.commit(wave(["target:speech"], a), {"a": 7})
    (due,) = diff([InputFile("a", 10, "v")], ledger.entries(), ("target:speech", "residual:speech")).due
    assert due == Due(InputFile("a", 10, "v", 7), ("residual:speech",))


def test_the_ledger_compacts_into_one_part_and_keeps_every_entry(tmp_path):
    ledger = Ledger(str(tmp_path / "out"))
    for k in range(COMPACT_AFTER + 3):
        f = InputFile(f"f{k}", k, "v", 1)
        ledger.commit(wave(["u"], f), {f.uri: 1})
    assert len(ledger.parts()) < COMPACT_AFTER
    assert sorted(ledger.entries()) == sorted(f"f{k}" for k in range(COMPACT_AFTER + 3))
    assert all(pq.read_schema(p).names[:2] == ["uri", "size"] for p in ledger.parts())


def test_the_claim_refuses_other_settings_naming_them_and_records_new_keys(tmp_path):
    ledger = Ledger(str(tmp_path / "out"))
    ledger.claim({"job": "separate", "masker": "aaa", "prompt:speech": "v1"})
    ledger.claim({"job": "separate", "masker": "aaa", "prompt:rain": "v2"}, write=False)  # a dry run adds nothing
    held = json.loads((tmp_path / "out" / "_ledger" / "settings.json").read_text())
    assert held == {"job": "separate", "masker": "aaa", "prompt:speech": "v1"}
    ledger.claim({"job": "separate", "masker": "aaa", "prompt:rain": "v2"})  # a prompt added
    with pytest.raises(UsageError, match=r"masker: 'aaa' there, 'bbb' now.*new output folder"):
        ledger.claim({"job": "separate", "masker": "bbb"})
    with pytest.raises(UsageError, match=r"prompt:rain: 'v2' there, 'v3' now"):
        ledger.claim({"prompt:rain": "v3"})  # the same name for another vector


def test_waves_hold_at_most_wave_rows_and_never_split_what_is_read_together():
    files = [InputFile(f"f{k}", 1, "v", 3) for k in range(6)]
    due = [Due(f, ("u",)) for f in files]
    waves = pack([[d] for d in due], wave_rows=7)
    assert [len(w.inputs) for w in waves] == [2, 2, 2] and all(w.rows <= 7 for w in waves)
    together = chunks_of(due, [["f0", "f5"], ["f2"]])  # one item reads f0 and f5
    waves = pack(together, wave_rows=4)
    assert any({f.uri for f in w.inputs} >= {"f0", "f5"} for w in waves)
    mixed = pack([[Due(files[0], ("a",))], [Due(files[1], ("a", "b"))]], wave_rows=100)
    assert sorted(w.units for w in mixed) == [("a",), ("a", "b")]  # one unit set a wave


def test_a_wave_survives_its_record(tmp_path):
    w = Wave(new_wave_id(), ("target:speech",), (InputFile("a", 1, "v", 2),), ("k1",), ("e.parquet",))
    ledger = Ledger(str(tmp_path / "out"))
    ledger.start(w)
    assert ledger.inflight() == w
    ledger.finish()
    assert ledger.inflight() is None


def test_footer_rows_reads_the_footer_alone_and_names_a_file_that_is_not_parquet(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(1000)]}), path, row_group_size=100)
    assert shards.footer_rows(str(path), path.stat().st_size) == 1000
    (tmp_path / "b.parquet").write_bytes(b"PAR1 not parquet at all")
    assert shards.footer_rows(str(tmp_path / "b.parquet"), (tmp_path / "b.parquet").stat().st_size) is None
