import io
import os
import pickle

import numpy as np
import pytest

from codecsep_core import DAC_CODECS
from storage.dacfile import (
    DacFile,
    InvalidDacFile,
    UnsafeDacFile,
    dac_from_rows,
    dac_source_id,
    dac_to_rows,
    read_dac,
    write_dac,
)
from storage.schema import DAC_SHARD_SCHEMA, check_batch, table_from_rows
from storage.shards import ShardWriter, read_table

dac = pytest.importorskip("dac")
torch = pytest.importorskip("torch")
SPEC = DAC_CODECS["dac_16khz"]


@pytest.fixture(scope="module")
def model():
    """DAC's 16 kHz architecture (same strides, so the same chunk geometry), small widths."""
    torch.manual_seed(0)
    return dac.DAC(
        encoder_dim=16,
        encoder_rates=[2, 4, 5, 8],
        decoder_dim=32,
        decoder_rates=[8, 5, 4, 2],
        n_codebooks=12,
        codebook_size=1024,
        codebook_dim=8,
        sample_rate=16000,
    ).eval()


@pytest.fixture(scope="module")
def dac_files(model, tmp_path_factory):
    """Files written by DAC itself: a short mono clip (one padded window) and a stereo
    clip longer than the window (chunked, no padding)."""
    from audiotools import AudioSignal

    out = tmp_path_factory.mktemp("dac")
    gen = torch.Generator().manual_seed(1)
    files = {}
    for name, seconds, channels in [("mono", 0.5, 1), ("stereo_chunked", 1.2, 2)]:
        audio = 0.1 * torch.randn(1, channels, int(16000 * seconds), generator=gen)
        files[name] = model.compress(AudioSignal(audio, 16000), win_duration=1.0).save(out / name)
    return files


@pytest.mark.parametrize("name", ["mono", "stereo_chunked"])
def test_reads_what_dac_writes(dac_files, name):
    path = dac_files[name]
    ref = dac.DACFile.load(path)
    got = read_dac(path.read_bytes(), str(path))
    assert got.codes.dtype == np.uint16
    np.testing.assert_array_equal(got.codes, ref.codes.numpy())
    assert (got.chunk_length, got.original_length, got.channels, got.sample_rate, got.padding, got.dac_version) == (
        ref.chunk_length,
        ref.original_length,
        ref.channels,
        ref.sample_rate,
        ref.padding,
        ref.dac_version,
    )
    assert got.input_db == pytest.approx(float(ref.input_db[0]))
    assert got.padding == (name == "mono")
    assert write_dac(got) == path.read_bytes()  # byte for byte what DACFile.save wrote


def test_chunked_codes_are_windows_that_overlap_in_time(model, dac_files):
    """Why `separable_segments` cuts chunked files at chunk boundaries."""
    f = dac.DACFile.load(dac_files["stereo_chunked"])
    assert not f.padding and f.codes.shape[-1] % f.chunk_length == 0
    model.padding = False
    try:
        with torch.no_grad():
            audio = model.decode(model.quantizer.from_codes(f.codes[:1, :, : f.chunk_length])[0])
    finally:
        model.padding = True
    assert audio.shape[-1] < f.chunk_length * model.hop_length


def test_shard_rows_rebuild_a_file_dac_decodes_identically(model, dac_files, tmp_path):
    path = dac_files["stereo_chunked"]
    original = read_dac(path.read_bytes())
    rows = dac_to_rows(original, "song", SPEC)
    assert [r["id"] for r in rows] == ["song#ch0", "song#ch1"]
    assert {dac_source_id(r) for r in rows} == {"song"}
    assert rows[0]["n_samples"] == original.original_length  # already at the codec rate

    with ShardWriter(str(tmp_path / "shards"), "t") as writer:
        writer.write(table_from_rows(rows, DAC_SHARD_SCHEMA))
    table = read_table(str(tmp_path / "shards"))
    assert table.schema == DAC_SHARD_SCHEMA
    assert [c.reason for c in check_batch(table, SPEC)] == [None, None]

    rebuilt = dac_from_rows(table.to_pylist()[::-1])
    out = tmp_path / "rebuilt.dac"
    out.write_bytes(write_dac(rebuilt))
    loaded = dac.DACFile.load(out)
    np.testing.assert_array_equal(loaded.codes.numpy(), original.codes)
    want = model.decompress(path)
    got = model.decompress(loaded)
    assert got.audio_data.shape == want.audio_data.shape == (1, 2, original.original_length)
    torch.testing.assert_close(got.audio_data, want.audio_data)


def test_dac_from_rows_needs_every_channel(dac_files):
    rows = dac_to_rows(read_dac(dac_files["stereo_chunked"].read_bytes()), "song", SPEC)
    with pytest.raises(ValueError, match="needs channels 0..1"):
        dac_from_rows(rows[1:])
    with pytest.raises(ValueError, match="disagree"):
        dac_from_rows([rows[0], dict(rows[1], dac_input_db=0.0)])


def test_n_samples_is_at_the_codec_rate():
    f = DacFile(
        codes=np.zeros((1, 12, 10), np.uint16),
        chunk_length=10,
        original_length=44100,
        input_db=-16.0,
        channels=1,
        sample_rate=44100,
        padding=True,
    )
    assert dac_to_rows(f, "x", SPEC)[0]["n_samples"] == 16000


# ---------------------------------------------------------------- hostile and broken files


def npy(obj) -> bytes:
    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    return buf.getvalue()


def artifacts(**meta):
    metadata = {
        "input_db": np.array([-20.0], np.float32),
        "original_length": 3200,
        "sample_rate": 16000,
        "chunk_length": 10,
        "channels": 1,
        "padding": True,
        "dac_version": "1.0.0",
    }
    metadata.update(meta)
    return {"codes": np.zeros((1, 12, 10), np.uint16), "metadata": metadata}


class RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class OpensFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


class HugeArray:
    def __reduce__(self):
        return np.ndarray, ((2**40,), np.uint8)


class HugeReconstruct:
    def __reduce__(self):
        return np.core.multiarray._reconstruct, (np.ndarray, (2**40,), b"b")


def test_malicious_payload_is_live_when_unpickled_by_numpy(tmp_path):
    """Control: the payload below does run under a plain `np.load(allow_pickle=True)`."""
    marker = tmp_path / "pwned"
    np.load(io.BytesIO(npy(artifacts(input_db=RunsCommand(f"touch {marker}")))), allow_pickle=True)
    assert marker.exists()


@pytest.mark.parametrize("where", ["codes", "metadata", "top"])
@pytest.mark.parametrize("payload", [RunsCommand, OpensFile])
def test_malicious_dac_is_refused_and_nothing_runs(tmp_path, where, payload):
    marker = tmp_path / "pwned"
    evil = payload(f"touch {marker}" if payload is RunsCommand else str(marker))
    obj = (
        artifacts(input_db=evil) if where == "metadata" else dict(artifacts(), codes=evil) if where == "codes" else evil
    )
    with pytest.raises(UnsafeDacFile, match="refused"):
        read_dac(npy(obj), "evil.dac")
    assert not marker.exists()


@pytest.mark.parametrize("payload", [HugeArray, HugeReconstruct])
def test_allocation_requests_are_refused(payload):
    with pytest.raises(InvalidDacFile):
        read_dac(npy(dict(artifacts(), codes=payload())), "bomb.dac")


def npy_with_pickle(payload: bytes) -> bytes:
    """A .npy header for one object, followed by any pickle bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": ()})
    return header.getvalue() + payload


def test_bare_pickle_behind_a_npy_header_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafeDacFile):
        read_dac(npy_with_pickle(pickle.dumps(RunsCommand(f"touch {marker}"), protocol=5)))
    assert not marker.exists()


def test_hostile_file_cannot_tamper_with_the_reader(dac_files):
    # GLOBAL numpy.dtype; BUILD {"make": 1}: would set an attribute on the allowed global
    tamper = b"\x80\x03cnumpy\ndtype\n}X\x04\x00\x00\x00makeK\x01sb."
    with pytest.raises(UnsafeDacFile, match="modifies numpy.dtype"):
        read_dac(npy_with_pickle(tamper))
    assert read_dac(dac_files["mono"].read_bytes()).channels == 1


@pytest.mark.parametrize(
    "data, message",
    [
        (b"not a dac file at all", "bad .npy header"),
        (npy(np.arange(4)), "expected one pickled dict"),
        (npy(artifacts())[:-20], "not a .dac file"),
        (npy({"codes": np.zeros((1, 12, 10), np.uint16)}), "keys 'codes' and 'metadata'"),
        (npy(artifacts(extra=1)), "exactly the keys"),
        (npy(artifacts(dac_version="0.9")), "unsupported dac_version"),
        (npy(artifacts(channels=2)), "codes hold 1 channels, metadata says 2"),
        (npy(artifacts(chunk_length=0)), "chunk_length must be an integer >= 1"),
        (npy(artifacts(padding="yes")), "padding must be a bool"),
        (npy(dict(artifacts(), codes=np.zeros((12, 10), np.uint16))), "codes must be"),
        (npy(dict(artifacts(), codes=np.zeros((1, 12, 10), np.float32))), "codes must be integers"),
        (npy(dict(artifacts(), codes=[[1, 2]])), "expected an array"),
    ],
)
def test_broken_files_say_what_is_wrong(data, message):
    with pytest.raises(InvalidDacFile, match=message):
        read_dac(data, "f.dac")


def test_write_refuses_what_dac_could_not_decode():
    with pytest.raises(InvalidDacFile, match="channels"):
        write_dac(
            DacFile(
                codes=np.zeros((2, 12, 5), np.uint16),
                chunk_length=5,
                original_length=1,
                input_db=-16.0,
                channels=1,
                sample_rate=16000,
                padding=True,
            )
        )
