import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import fs
from storage.prompt_table import ENCODER_KEY, PromptTable, read_prompt_table, write_prompt_table


def table(encoder="clap-htsat-base:music_speech_audioset_epoch_15_esc_89.98"):
    emb = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    return PromptTable(("speech", "dog barking", "rain"), emb, encoder)


def test_round_trip(root):
    uri = fs.join(root, "prompts.parquet")
    write_prompt_table(uri, table())
    back = read_prompt_table(uri)
    assert back.prompts == table().prompts and back.encoder == table().encoder
    assert back.embeddings.dtype == np.float32
    np.testing.assert_array_equal(back.embeddings, table().embeddings)


def test_file_is_the_documented_parquet(tmp_path):
    path = tmp_path / "p.parquet"
    write_prompt_table(str(path), table())
    f = pq.read_table(path)
    assert f.schema.field("embedding").type.value_type == pa.float32()
    assert f.schema.metadata[ENCODER_KEY].decode().startswith("clap")
    write_prompt_table(str(path), table(encoder=None))
    assert read_prompt_table(str(path)).encoder is None


def test_vectors_in_the_order_asked():
    t = table()
    np.testing.assert_array_equal(t.vectors(["rain", "speech"]), t.embeddings[[2, 0]])
    with pytest.raises(KeyError, match="thunder"):
        t.vectors(["speech", "thunder"])


@pytest.mark.parametrize(
    "prompts, emb",
    [
        (("a", "a"), np.zeros((2, 4))),
        (("a",), np.zeros((2, 4))),
        (("a",), np.full((1, 4), np.nan)),
        (("",), np.zeros((1, 4))),
    ],
)
def test_invalid_tables_refused(prompts, emb):
    with pytest.raises(ValueError):
        PromptTable(prompts, emb.astype(np.float32))


def test_not_a_prompt_table(tmp_path):
    pq.write_table(pa.table({"x": [1]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="not a prompt table"):
        read_prompt_table(str(tmp_path / "x.parquet"))


def test_each_vector_records_its_encoder_and_branch(tmp_path):
    path = str(tmp_path / "p.parquet")
    t = table()
    mixed = PromptTable(t.prompts, t.embeddings, t.encoder, ("text", "audio", "text"))
    write_prompt_table(path, mixed)
    back = read_prompt_table(path)
    assert back.branches == ("text", "audio", "text") and back.encoder == t.encoder
    rows = pq.read_table(path).to_pylist()
    assert [(r["encoder"], r["branch"]) for r in rows] == [(t.encoder, b) for b in mixed.branches]


def test_tables_without_provenance_columns_read_as_text(tmp_path):
    path = tmp_path / "old.parquet"
    write_prompt_table(str(path), table())
    pq.write_table(pq.read_table(path).drop_columns(["encoder", "branch"]), path)
    back = read_prompt_table(str(path))
    assert back.branches == ("text",) * 3 and back.encoder == table().encoder


def test_vectors_of_two_encoders_are_refused(tmp_path):
    path = tmp_path / "p.parquet"
    write_prompt_table(str(path), table())
    arrow = pq.read_table(path)
    pq.write_table(arrow.set_column(2, "encoder", pa.array(["a", "b", "a"])), path)
    with pytest.raises(ValueError, match="several encoders"):
        read_prompt_table(str(path))
    with pytest.raises(ValueError, match="branches"):
        PromptTable(("a",), np.zeros((1, 4), np.float32), branches=("video",))
