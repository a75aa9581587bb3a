"""Reading a safetensors header with bounds, without trusting anything in the file.

Layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the tensor data.
Every rule the format implies is checked here, and a violation raises `MalformedModel`
with a reason precise enough to act on. Only ``8 + N`` bytes are read.
"""

from __future__ import annotations

import functools
import json
import os
import stat
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, BinaryIO, Mapping, NamedTuple

import orjson

MAX_HEADER = 100_000_000  # the reference implementation's limit
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F8_E4M3FNUZ": 1,
               "F8_E5M2FNUZ": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
               "C64": 8, "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75}


class MalformedModel(ValueError):
    """A model file that breaks its format; ``reason`` says how."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TensorInfo(NamedTuple):  # a tuple: one is made per tensor of every scanned file
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets relative to the start of the data section
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    metadata: Mapping[str, str]
    tensors: Mapping[str, TensorInfo]
    header_length: int
    file_size: int

    @property
    def data_start(self) -> int:
        return 8 + self.header_length


def open_regular(path: str | os.PathLike) -> tuple[BinaryIO, int]:
    """Open a regular file for reading; refuse directories, devices, FIFOs (and links to them)."""
    try:
        st = os.stat(path)  # follows symlinks: a link to /dev/zero is judged as /dev/zero
    except OSError as exc:
        raise MalformedModel(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (device, FIFO or socket)"
        raise MalformedModel(f"{os.fspath(path)} is {kind}")
    try:
        # Unbuffered: every read is the size asked for, so no byte past the header is read
        # twice (a buffered peek at the first 8 bytes would read 4 KiB).
        return open(path, "rb", buffering=0), st.st_size
    except OSError as exc:
        raise MalformedModel(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from None


def read_header(fh: BinaryIO, file_size: int) -> SafetensorsHeader:
    """Parse and validate the header of an open safetensors file of ``file_size`` bytes."""
    if file_size < 8:
        raise MalformedModel(f"file is {file_size} bytes; a safetensors file starts with an 8-byte header length")
    fh.seek(0)
    n = declared_length(fh.read(8), file_size)
    raw = fh.read(n)
    if len(raw) != n:
        raise MalformedModel(f"file ended after {len(raw)} of {n} header bytes")
    return parse_header(raw, file_size)


def declared_length(head: bytes, file_size: int) -> int:
    """The header length N the first 8 bytes declare, if the file can hold it."""
    if len(head) < 8:
        raise MalformedModel(f"file is {file_size} bytes; a safetensors file starts with an 8-byte header length")
    n = int.from_bytes(head[:8], "little")
    if n > MAX_HEADER:
        raise MalformedModel(f"header length {n} is over the {MAX_HEADER}-byte limit")
    if 8 + n > file_size:
        raise MalformedModel(f"header length {n} runs past the end of the {file_size}-byte file")
    if n < 2:
        raise MalformedModel(f"header length {n} cannot hold a JSON object")
    return n


def parse_header(raw: bytes, file_size: int) -> SafetensorsHeader:
    """Validate the N header bytes (after the 8-byte length) of a ``file_size``-byte file."""
    n = len(raw)
    data, canonical = _parse_json(raw)
    if not isinstance(data, dict):
        raise MalformedModel(f"header is a JSON {type(data).__name__}, not an object")
    metadata = data.pop("__metadata__", {})
    if not isinstance(metadata, dict):
        raise MalformedModel("__metadata__ is not an object")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise MalformedModel(f"__metadata__[{key!r}] is a {type(value).__name__}; values must be strings")
    section = _tensor_section(raw, metadata) if canonical else None
    if section is not None and len(section) <= _MAX_CACHED_SECTION:
        tensors, end = _validated_section(section)
    else:
        tensors, end = _validated(data)
    data_size = file_size - 8 - n
    if end != data_size:
        raise MalformedModel(f"tensors cover {end} bytes of data but the file holds {data_size} "
                             f"({'trailing bytes' if data_size > end else 'data past the end of the file'})")
    return SafetensorsHeader(metadata, tensors, n, file_size)


def _validated(entries: Mapping) -> tuple[Mapping[str, TensorInfo], int]:
    """The tensor table checked entry by entry, and where its data ends."""
    tensors = {name: _tensor(name, entry) for name, entry in entries.items()}
    return MappingProxyType(tensors), _layout_end(tensors)


# A catalog's files share a few tensor tables (one per trainer, architecture and rank): only
# their metadata differs. A table already checked is looked up by its exact bytes. Bounded to
# 64 tables of at most 1 MiB (an SDXL LoRA's is ~300 KB), so hostile headers cannot make it
# hold more than ~160 MB.
_MAX_CACHED_SECTION = 1024 * 1024


@functools.lru_cache(maxsize=64)
def _validated_section(section: bytes) -> tuple[Mapping[str, TensorInfo], int]:
    return _validated(orjson.loads(b"{" + section))


def _tensor_section(raw: bytes, metadata: Mapping[str, str]) -> bytes | None:
    """The bytes of the tensor entries in a header that is exactly orjson's output: after the
    metadata when it comes first (as safetensors writes it), or everything."""
    if not metadata:
        return None if raw.startswith(_METADATA_FIRST) else raw.rstrip(b" ")[1:]
    if not raw.startswith(_METADATA_FIRST):
        return None
    rest = raw.rstrip(b" ")[len(_METADATA_FIRST) + len(orjson.dumps(metadata)):]
    return rest[1:] if rest.startswith(b",") else rest


_METADATA_FIRST = b'{"__metadata__":'


def _parse_json(raw: bytes) -> tuple[Any, bool]:
    """The header's JSON value, refusing duplicate keys, NaN/Infinity and bad UTF-8, and
    whether the bytes are exactly orjson's output for it.

    The fast way: orjson, accepted only when writing the result back gives exactly the bytes
    read (safetensors writers emit compact JSON, padded with spaces). A dropped duplicate key
    would make the output shorter, so equality proves there was none. Anything else (spaces,
    floats, odd escapes, errors) goes to the strict parser, which also words the reason.
    """
    try:
        data = orjson.loads(raw)
        if orjson.dumps(data) == raw.rstrip(b" "):
            return data, True
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        pass
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedModel(f"header is not UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
        # Python's json accepts escaped lone surrogates ("\ud800"); the reference parser does not.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
        return data, False
    except UnicodeEncodeError:
        raise MalformedModel("header has a lone surrogate escape (\\uD800-\\uDFFF): not valid Unicode") from None
    except _Duplicate as exc:
        raise MalformedModel(f"header has the key {exc.args[0]!r} twice") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise MalformedModel(f"header is not valid JSON: {exc}") from None
    except RecursionError:
        raise MalformedModel("header JSON is nested too deeply") from None


_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


def _tensor(name: str, entry) -> TensorInfo:
    # Checked with plain type tests: this runs once per tensor of every scanned file.
    if type(entry) is not dict or entry.keys() != _ENTRY_KEYS:
        raise MalformedModel(f"tensor {name!r}: entry must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    itemsize = DTYPE_SIZES.get(dtype) if type(dtype) is str else None
    if itemsize is None:
        raise MalformedModel(f"tensor {name!r}: unknown dtype {dtype!r}")
    if type(shape) is not list:
        raise MalformedModel(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    count = 1
    for dim in shape:
        if type(dim) is not int or dim < 0:  # type() is int also refuses bools
            raise MalformedModel(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
        count *= dim
    begin, end = offsets if type(offsets) is list and len(offsets) == 2 else (None, None)
    if type(begin) is not int or type(end) is not int or not 0 <= begin <= end:
        raise MalformedModel(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end] with begin <= end")
    if count * itemsize != end - begin:
        raise MalformedModel(f"tensor {name!r}: {dtype} x {shape} needs {count * itemsize:g} bytes, "
                             f"data_offsets span {end - begin}")
    return TensorInfo(dtype, tuple(shape), begin, end)


def _layout_end(tensors: Mapping[str, TensorInfo]) -> int:
    """Where the data ends, once the tensors are checked to follow each other without gaps."""
    position = 0
    for name, info in sorted(tensors.items(), key=_by_offsets):
        if info.begin != position:
            what = "overlaps the previous tensor" if info.begin < position else "leaves a gap before it"
            raise MalformedModel(f"tensor {name!r}: data starts at {info.begin}, expected {position} ({what})")
        position = info.end
    return position


def _by_offsets(item: tuple[str, TensorInfo]) -> tuple[int, int]:
    return item[1].begin, item[1].end


class _Duplicate(Exception):
    pass


def _no_duplicates(pairs):
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return obj


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")
