"""Read TensorFlow "tensor bundle" checkpoints (``model.save_weights(prefix)``) without TensorFlow.

A bundle is ``<prefix>.index`` plus ``<prefix>.data-<shard>-of-<N>`` files:

* ``.index`` is a LevelDB-format table (SSTable): uncompressed data blocks of prefix-compressed
  key/value entries with restart points, a metaindex block, an index block, and a 48-byte
  footer ending in the magic ``0xdb4775248b80fb57``.  Every block is followed by a type byte
  and the masked crc32c of block + type, which is verified.
* The empty key holds a ``BundleHeaderProto`` (number of shards, endianness); every other key
  is a tensor name whose value is a ``BundleEntryProto`` (dtype, shape, shard, offset, size,
  masked crc32c of the tensor bytes).
* A tensor is ``size`` little-endian bytes at ``offset`` of its shard, row-major.

The data shards are memory-mapped and only the tensors asked for are read, each checked
against its crc32c.  This is a reader for the plain float/int tensors Keras writes, not for
partitioned (sliced) variables or big-endian files, which are refused.

Why hand-written: the format is small (varints and two protobuf messages), and no light,
maintained pure-Python reader exists on the package index; TensorFlow itself is 500 MB.
The crc32c comes from ``google-crc32c`` (C implementation, several GB/s).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

from ..errors import CheckpointError, printable

__all__ = ["BundleEntry", "TensorBundle", "bundle_files", "latest_prefix", "masked_crc32c"]

_MAGIC = 0xDB4775248B80FB57
_FOOTER = 48
_TRAILER = 5  # block type byte + masked crc32c
_MASK_DELTA = 0xA282EAD8

#: TensorFlow DataType enum values -> numpy little-endian dtypes (the ones a Keras model stores).
_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 19: "<f2"}
_DT_STRING = 7


def masked_crc32c(data) -> int:
    """The LevelDB / TensorFlow masked crc32c of ``data`` (bytes-like)."""
    crc = google_crc32c.value(bytes(data))
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


class _Corrupt(Exception):
    """Malformed bytes inside the index (turned into a CheckpointError naming the file)."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Corrupt("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a serialized protobuf message: ints or raw bytes."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise _Corrupt(f"protobuf wire type {wire}")
        if pos > len(buf):
            raise _Corrupt("truncated protobuf field")
        yield field, value


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lives (a decoded ``BundleEntryProto``)."""

    name: str
    dtype: int  # TensorFlow DataType enum value
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int  # masked
    sliced: bool = False


def _entry(name: str, value: bytes) -> BundleEntry:
    fields: dict = {"dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc32c": 0, "sliced": False}
    for field, v in _proto_fields(value):
        if field == 1:
            fields["dtype"] = v
        elif field == 2:  # TensorShapeProto: repeated dim (2) { size (1) }
            dims = []
            for f, dim in _proto_fields(v):
                if f == 2:
                    size = next((s for g, s in _proto_fields(dim) if g == 1), 0)
                    dims.append(size - (1 << 64) if size >= 1 << 63 else size)
                elif f == 3 and dim:
                    raise _Corrupt(f"tensor {name!r} has an unknown rank")
            fields["shape"] = tuple(dims)
        elif field == 3:
            fields["shard"] = v
        elif field == 4:
            fields["offset"] = v
        elif field == 5:
            fields["size"] = v
        elif field == 6:
            fields["crc32c"] = v
        elif field == 7:
            fields["sliced"] = True
    return BundleEntry(name=name, **fields)


def _block(data: bytes, offset: int, size: int) -> bytes:
    """The contents of one table block, its trailer checked."""
    end = offset + size
    if end + _TRAILER > len(data):
        raise _Corrupt(f"block at byte {offset} runs past the end of the file")
    kind = data[end]
    (stored,) = struct.unpack_from("<I", data, end + 1)
    if masked_crc32c(data[offset : end + 1]) != stored:
        raise _Corrupt(f"crc32c mismatch in the block at byte {offset}")
    if kind != 0:
        raise _Corrupt(f"block at byte {offset} is compressed (type {kind}); only uncompressed tables are read")
    return data[offset:end]


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs of a block: prefix-compressed keys, restart array at the end."""
    if len(block) < 4:
        raise _Corrupt("block too short")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * restarts
    if limit < 0:
        raise _Corrupt("bad restart count")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + vlen > limit:
            raise _Corrupt("bad block entry")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + vlen]
        pos += vlen


def _read_table(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of a LevelDB table held in ``data``, in key order."""
    if len(data) < _FOOTER:
        raise _Corrupt("shorter than a table footer")
    footer = data[-_FOOTER:]
    (magic,) = struct.unpack_from("<Q", footer, _FOOTER - 8)
    if magic != _MAGIC:
        raise _Corrupt("no table magic number at the end (not a TensorFlow checkpoint index)")
    _, pos = _varint(footer, 0)  # metaindex handle: nothing in it is needed
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)
    previous = None
    for _, handle in _block_entries(_block(data, index_offset, index_size)):
        offset, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        for key, value in _block_entries(_block(data, offset, size)):
            if previous is not None and key <= previous:
                raise _Corrupt("keys out of order")
            previous = key
            yield key, value


def bundle_files(prefix: str | os.PathLike, num_shards: int) -> list[Path]:
    """The data shard paths of a bundle: ``<prefix>.data-00000-of-0000N``..."""
    prefix = str(prefix)
    return [Path(f"{prefix}.data-{i:05d}-of-{num_shards:05d}") for i in range(num_shards)]


def _read_index(path: Path) -> tuple[dict, dict[str, BundleEntry]]:
    """(header fields, entries by name) of a bundle's ``.index`` file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint index")
    header, entries = None, {}
    try:
        for key, value in _read_table(path.read_bytes()):
            if key == b"":
                header = dict(_proto_fields(value))
            else:
                name = key.decode("utf-8")
                entries[name] = _entry(name, value)
    except (_Corrupt, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt or not a TensorFlow checkpoint index ({exc})") from None
    if header is None:
        raise CheckpointError(f"{path}: no bundle header (not a TensorFlow tensor bundle)")
    return header, entries


class TensorBundle:
    """A TensorFlow tensor bundle opened for reading: ``entries`` by name, ``read(name)``.

    Use as a context manager (or call :meth:`close`) to release the memory maps.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = Path(prefix)
        self.index_path = Path(f"{self.prefix}.index")
        header, self.entries = _read_index(self.index_path)
        if header.get(2, 0) != 0:
            raise CheckpointError(f"{self.index_path}: big-endian checkpoint, not supported")
        self.num_shards = int(header.get(1, 1))
        self.data_paths = bundle_files(self.prefix, self.num_shards)
        self._check_shards()
        self._maps: dict[int, mmap.mmap] = {}

    def _check_shards(self) -> None:
        """Every shard the index names is there and long enough for its tensors."""
        needed = [0] * self.num_shards
        for entry in self.entries.values():
            if entry.shard >= self.num_shards:
                raise CheckpointError(
                    f"{self.index_path}: tensor {entry.name!r} is in shard {entry.shard} of {self.num_shards}"
                )
            needed[entry.shard] = max(needed[entry.shard], entry.offset + entry.size)
        missing = [p for p in self.data_paths if not p.is_file()]
        if missing:
            raise CheckpointError(
                f"{missing[0]}: data shard missing ({len(missing)} of {self.num_shards} shards absent)"
            )
        for path, end in zip(self.data_paths, needed):
            size = path.stat().st_size
            if size < end:
                raise CheckpointError(f"{path}: truncated ({size:,} bytes, the index needs {end:,})")

    def _map(self, shard: int) -> mmap.mmap:
        if shard not in self._maps:
            with open(self.data_paths[shard], "rb") as fh:
                if os.fstat(fh.fileno()).st_size == 0:
                    raise CheckpointError(f"{self.data_paths[shard]}: empty data shard")
                self._maps[shard] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[shard]

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a new numpy array, its crc32c verified."""
        entry = self.entries[name]
        path = self.data_paths[entry.shard]
        if entry.sliced:
            raise CheckpointError(f"{path}: tensor {name!r} is a partitioned variable, not supported")
        if entry.dtype == _DT_STRING or entry.dtype not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has TensorFlow dtype {entry.dtype}, not a numeric tensor")
        dtype = np.dtype(_DTYPES[entry.dtype])
        count = int(np.prod(entry.shape, dtype=np.int64))
        if any(d < 0 for d in entry.shape) or count * dtype.itemsize != entry.size:
            raise CheckpointError(
                f"{self.index_path}: tensor {name!r}: shape {entry.shape} of {dtype} does not fill {entry.size} bytes"
            )
        mm = self._map(entry.shard)
        if entry.offset + entry.size > len(mm):
            raise CheckpointError(
                f"{path}: truncated ({len(mm):,} bytes; tensor {name!r} needs bytes up to {entry.offset + entry.size:,})"
            )
        raw = mm[entry.offset : entry.offset + entry.size]  # reads only these pages of the file
        if masked_crc32c(raw) != entry.crc32c:
            raise CheckpointError(f"{path}: crc32c mismatch in tensor {name!r} (corrupt data file)")
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(entry.shape).copy()

    def close(self) -> None:
        for mm in self._maps.values():
            mm.close()
        self._maps.clear()

    def __enter__(self) -> TensorBundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_CHECKPOINT_LINE = re.compile(r'^\s*model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"\s*$', re.M)


def latest_prefix(folder: str | os.PathLike) -> Path:
    """The prefix named by the ``checkpoint`` text file of ``folder`` (``model_checkpoint_path``).

    Only a file inside ``folder`` is read: an absolute path (written on another machine, or
    pointing anywhere) is taken by its name inside ``folder``, and a relative one leading out
    of it (``../``) is refused; a user who means another file passes it directly.
    """
    folder = Path(folder)
    text = (folder / "checkpoint").read_text(encoding="utf-8", errors="replace")
    m = _CHECKPOINT_LINE.search(text)
    if not m:
        raise CheckpointError(f"{folder / 'checkpoint'}: no model_checkpoint_path line")
    name = Path(re.sub(r"\\(.)", r"\1", m.group(1)))  # text-format string escapes
    if name.is_absolute():
        return folder / name.name
    inside = folder.resolve()
    if inside != (folder / name).resolve() and inside not in (folder / name).resolve().parents:
        raise CheckpointError(
            printable(
                f"{folder / 'checkpoint'}: model_checkpoint_path {name} leads out of "
                f"{folder}; pass the checkpoint's .index file itself to read it"
            )
        )
    return folder / name
