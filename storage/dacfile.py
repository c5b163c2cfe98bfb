"""DAC's `.dac` files, read and written without unpickling anything but plain data.

descript-audio-codec 1.0.0 (`dac/model/base.py`, `DACFile.save`) writes
`np.save(f, {"codes": uint16 [channels, n_codebooks, n_frames], "metadata": {...}})`:
a .npy file of dtype object and shape (), whose payload is a pickle. `np.load(...,
allow_pickle=True)` on a file from someone else runs whatever that pickle says. Here the
.npy header goes through numpy's literal-only header reader, and the pickle through an
Unpickler that resolves exactly the globals such a file references (checked with
pickletools on files DAC wrote: `numpy.core.multiarray._reconstruct`, `numpy.ndarray`,
`numpy.dtype`; plus numpy 2's `numpy._core` spelling and numpy scalars). Even those are
replaced by inert stand-ins that only record their arguments; arrays are built from the
file's bytes after the whole structure has been checked. Anything else raises
`UnsafeDacFile` before any of it runs.

How the rows of a code shard carry a DAC file: see `storage.schema`.
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from storage.schema import CodecSpec, codes_to_numpy

SUPPORTED_DAC_VERSIONS = ("1.0.0",)
_METADATA_KEYS = {"input_db", "original_length", "sample_rate", "chunk_length", "channels", "padding", "dac_version"}
_SIMPLE_DTYPES = {"O8", "b1", "u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "f2", "f4", "f8"}


class InvalidDacFile(ValueError):
    """Not a .dac file DAC 1.0.0 could have written."""


class UnsafeDacFile(InvalidDacFile):
    """The file's pickle asks for something a .dac file never contains."""


@dataclass
class DacFile:
    """What `DACFile.save` stores; `codes` is uint16 [channels, n_codebooks, n_frames]
    (DAC folds a multi-channel input into its batch axis)."""

    codes: np.ndarray
    chunk_length: int
    original_length: int
    input_db: float
    channels: int
    sample_rate: int
    padding: bool
    dac_version: str = SUPPORTED_DAC_VERSIONS[-1]


# ---------------------------------------------------------------- inert pickle stand-ins


class _Global:
    """What the pickle gets for an allowed global: it can call `make` (ndarray: nothing),
    but not set attributes on it with BUILD, as it could on a plain function."""

    def __init__(self, name: str, make: Any = None):
        self.name, self.make = name, make

    def __call__(self, *args: Any) -> Any:
        if self.make is None:
            raise UnsafeDacFile(f"pickle calls {self.name}")
        return self.make(*args)

    def __setstate__(self, state: Any) -> None:
        raise UnsafeDacFile(f"pickle modifies {self.name}")


_NDARRAY = _Global("numpy.ndarray")


class _ArrayState:
    """An ndarray as its pickle describes it; becomes an array only in `_array`."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _DtypeState:
    """A dtype as its pickle describes it; `resolve` checks it and makes the real one."""

    def __init__(self, spec: str):
        self.spec = spec
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def resolve(self) -> np.dtype:
        st = self.state
        if not (
            isinstance(st, tuple) and len(st) == 8 and st[1] in ("<", ">", "|", "=") and st[2:5] == (None, None, None)
        ):
            raise InvalidDacFile(f"unexpected dtype state {st!r}")
        dtype = np.dtype(self.spec)
        return dtype.newbyteorder(st[1]) if st[1] in ("<", ">") else dtype


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _ArrayState:
    if subtype is not _NDARRAY or shape != (0,) or typecode != b"b":
        raise UnsafeDacFile(f"unexpected array reconstruction {(subtype, shape, typecode)!r}")
    return _ArrayState()


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> _DtypeState:
    if spec not in _SIMPLE_DTYPES or not isinstance(align, bool) or not isinstance(copy, bool):
        raise UnsafeDacFile(f"unexpected dtype {spec!r}")
    return _DtypeState(spec)


def _scalar(dtype: Any, data: Any) -> np.generic:
    if not isinstance(dtype, _DtypeState):
        raise UnsafeDacFile("numpy scalar without a plain dtype")
    resolved = dtype.resolve()
    if resolved.kind not in "biuf" or not isinstance(data, bytes) or len(data) != resolved.itemsize:
        raise UnsafeDacFile(f"unexpected numpy scalar of dtype {resolved}")
    return np.frombuffer(data, dtype=resolved)[0]


_RECONSTRUCT = _Global("numpy _reconstruct", _reconstruct)
_SCALAR = _Global("numpy scalar", _scalar)
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Global("numpy.dtype", _dtype),
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
}


class _DacUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeDacFile(f"pickle references {module}.{name}, which a .dac file never contains") from None


# ---------------------------------------------------------------- reading


def _array(obj: Any, what: str, allow_object: bool = False) -> Any:
    """An `_ArrayState` -> ndarray built from its own bytes (a 0-d object array -> its item)."""
    if not isinstance(obj, _ArrayState):
        raise InvalidDacFile(f"{what}: expected an array, found {type(obj).__name__}")
    st = obj.state
    if not (isinstance(st, tuple) and len(st) == 5 and st[0] == 1 and isinstance(st[2], _DtypeState)):
        raise InvalidDacFile(f"{what}: malformed array state")
    _, shape, dtype, fortran, data = st
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
        raise InvalidDacFile(f"{what}: malformed shape {shape!r}")
    dtype = dtype.resolve()
    if dtype == np.dtype(object):
        if not (allow_object and shape == () and isinstance(data, list) and len(data) == 1):
            raise InvalidDacFile(f"{what}: unexpected object array")
        return data[0]
    if not isinstance(data, bytes) or len(data) != math.prod(shape) * dtype.itemsize:
        raise InvalidDacFile(f"{what}: array data does not match its shape {shape}")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


def _int(meta: Mapping[str, Any], key: str, minimum: int) -> int:
    value = meta[key]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidDacFile(f"metadata {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _input_db(value: Any) -> float:
    if isinstance(value, _ArrayState):
        value = _array(value, "metadata input_db")
        if value.size != 1 or value.dtype.kind != "f":
            raise InvalidDacFile(f"metadata input_db must be one float, got {value.dtype} {value.shape}")
        return float(value.reshape(-1)[0])
    if isinstance(value, (float, np.floating)):
        return float(value)
    raise InvalidDacFile(f"metadata input_db must be a float, got {type(value).__name__}")


def _check(dac: DacFile) -> DacFile:
    """The invariants DAC's `decompress` relies on."""
    codes = dac.codes
    if codes.ndim != 3:
        raise InvalidDacFile(f"codes must be [channels, n_codebooks, n_frames], got shape {codes.shape}")
    if codes.shape[0] != dac.channels:
        raise InvalidDacFile(f"codes hold {codes.shape[0]} channels, metadata says {dac.channels}")
    if dac.dac_version not in SUPPORTED_DAC_VERSIONS:
        raise InvalidDacFile(f"unsupported dac_version {dac.dac_version!r} (supported: {SUPPORTED_DAC_VERSIONS})")
    if not np.issubdtype(codes.dtype, np.integer) or (codes.size and (codes.min() < 0 or codes.max() > 65535)):
        raise InvalidDacFile("codes must be integers in [0, 65535]")
    return dac


def read_dac(data: bytes, name: str = "<bytes>") -> DacFile:
    """Parse a `.dac` file's bytes. Raises `UnsafeDacFile` (refused pickle content) or
    `InvalidDacFile` (anything else wrong), both naming `name`."""
    fp = io.BytesIO(data)
    try:
        version = npy_format.read_magic(fp)
        read_header = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}[version]
        shape, _, dtype = read_header(fp)
    except (ValueError, KeyError, EOFError) as e:
        raise InvalidDacFile(f"{name}: not a .dac file (bad .npy header: {e})") from e
    if dtype != np.dtype(object) or shape != ():
        raise InvalidDacFile(f"{name}: not a .dac file (.npy of {dtype} {shape}, expected one pickled dict)")
    try:
        top = _array(_DacUnpickler(fp).load(), "file", allow_object=True)
        if not isinstance(top, dict) or set(top) != {"codes", "metadata"}:
            raise InvalidDacFile("expected a dict with keys 'codes' and 'metadata'")
        meta = top["metadata"]
        if not isinstance(meta, dict) or set(meta) != _METADATA_KEYS:
            raise InvalidDacFile(f"metadata must have exactly the keys {sorted(_METADATA_KEYS)}")
        if not isinstance(meta["padding"], (bool, np.bool_)) or not isinstance(meta["dac_version"], str):
            raise InvalidDacFile("metadata padding must be a bool and dac_version a string")
        codes = _array(top["codes"], "codes")
        dac = DacFile(
            codes=codes,
            chunk_length=_int(meta, "chunk_length", 1),
            original_length=_int(meta, "original_length", 0),
            input_db=_input_db(meta["input_db"]),
            channels=_int(meta, "channels", 1),
            sample_rate=_int(meta, "sample_rate", 1),
            padding=bool(meta["padding"]),
            dac_version=meta["dac_version"],
        )
        _check(dac)
    except UnsafeDacFile as e:
        raise UnsafeDacFile(f"{name}: refused: {e}") from None
    except InvalidDacFile as e:
        raise InvalidDacFile(f"{name}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a broken pickle can fail in many ways
        raise InvalidDacFile(f"{name}: not a .dac file ({type(e).__name__}: {e})") from e
    dac.codes = codes.astype(np.uint16)
    return dac


def write_dac(dac: DacFile) -> bytes:
    """The bytes `DACFile.save` would write for `dac` (DAC's `DACFile.load` reads them)."""
    _check(dac)
    artifacts = {
        "codes": np.ascontiguousarray(dac.codes, dtype=np.uint16),
        "metadata": {
            "input_db": np.array([dac.input_db], dtype=np.float32),
            "original_length": int(dac.original_length),
            "sample_rate": int(dac.sample_rate),
            "chunk_length": int(dac.chunk_length),
            "channels": int(dac.channels),
            "padding": bool(dac.padding),
            "dac_version": dac.dac_version,
        },
    }
    buf = io.BytesIO()
    np.save(buf, np.array(artifacts, dtype=object), allow_pickle=True)
    return buf.getvalue()


# ---------------------------------------------------------------- code-shard rows


def dac_to_rows(dac: DacFile, clip_id: str, codec: CodecSpec) -> list[dict[str, Any]]:
    """One code-shard row per channel (columns of `schema.DAC_SHARD_SCHEMA`)."""
    rows = []
    for k in range(dac.channels):
        rows.append(
            {
                "id": clip_id if dac.channels == 1 else f"{clip_id}#ch{k}",
                "codes": dac.codes[k],
                "codec": codec.name,
                "sample_rate": codec.sample_rate,
                # DAC resamples to the codec rate with julius, which floors the length.
                "n_samples": dac.original_length * codec.sample_rate // dac.sample_rate,
                "dac_version": dac.dac_version,
                "dac_chunk_length": dac.chunk_length,
                "dac_padding": dac.padding,
                "dac_input_db": dac.input_db,
                "dac_channels": dac.channels,
                "dac_channel": k,
                "dac_original_length": dac.original_length,
                "dac_sample_rate": dac.sample_rate,
            }
        )
    return rows


def dac_source_id(row: Mapping[str, Any]) -> str:
    """The id the rows of one DAC file share (the one given to `dac_to_rows`)."""
    suffix = f"#ch{row['dac_channel']}"
    if row["dac_channels"] > 1 and row["id"].endswith(suffix):
        return row["id"][: -len(suffix)]
    return row["id"]


def dac_from_rows(rows: Sequence[Mapping[str, Any]]) -> DacFile:
    """The channel rows of one DAC file (any order, codes possibly separated) -> DacFile."""
    if not rows:
        raise ValueError("no rows to build a DAC file from")
    rows = sorted(rows, key=lambda r: int(r["dac_channel"]))
    keys = (
        "dac_version",
        "dac_chunk_length",
        "dac_padding",
        "dac_input_db",
        "dac_channels",
        "dac_original_length",
        "dac_sample_rate",
    )
    first = {k: rows[0][k] for k in keys}
    for row in rows[1:]:
        if any(row[k] != first[k] for k in keys):
            raise ValueError(f"rows {rows[0]['id']!r} and {row['id']!r} disagree on DAC metadata")
    channels = [int(r["dac_channel"]) for r in rows]
    if channels != list(range(int(first["dac_channels"]))):
        raise ValueError(
            f"DAC file {dac_source_id(rows[0])!r} needs channels 0..{first['dac_channels'] - 1}, got {channels}"
        )
    codes = [codes_to_numpy(r["codes"]) for r in rows]
    if len({c.shape for c in codes}) > 1:
        raise ValueError(f"channels of DAC file {dac_source_id(rows[0])!r} have different code shapes")
    return _check(
        DacFile(
            codes=np.stack(codes).astype(np.uint16),
            chunk_length=int(first["dac_chunk_length"]),
            original_length=int(first["dac_original_length"]),
            input_db=float(first["dac_input_db"]),
            channels=int(first["dac_channels"]),
            sample_rate=int(first["dac_sample_rate"]),
            padding=bool(first["dac_padding"]),
            dac_version=str(first["dac_version"]),
        )
    )
