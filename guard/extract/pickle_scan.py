"""Inspecting pickle-based model files (.ckpt .pt .pth .bin) without unpickling them.

The file is read the way ``torch.load`` reads it: a zip archive when it starts with a zip
local header, else an old tar archive when it parses as one, else a pickle stream (the legacy
format is five pickles and then raw storage bytes). Wherever two readers could see different
contents — data before or after the archive, a second end record, members that overlap or do
not match their central entry, names that differ only in case, frames an opcode straddles —
the file is refused instead of guessed at.

Each pickle is walked opcode by opcode (``pickletools.genops``, which never executes) with an
exact model of CPython's unpickler: its stack, its mark stack and its memo. The walk is an
allowlist: an opcode it has no rule for, a stack it cannot account for, a global that is not
a tensor-rebuild global, a call on anything but such a global, each makes the file unsafe,
with the opcode and its byte offset. A file in which no pickle was found, or whose walk did
not end cleanly, is never safe. Nothing in this module calls ``pickle.load`` or imports what
it reads; time and memory are bounded per file (members, pickle size, opcodes).
"""

from __future__ import annotations

import io
import pickletools
import re
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

#: Globals a tensor state dict needs (torch's zip and legacy formats, numpy arrays).
SAFE_GLOBALS = frozenset({
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch", "dtype"),
    ("torch", "bfloat16"), ("torch", "float16"), ("torch", "float32"), ("torch", "float64"),
    ("torch", "int8"), ("torch", "int16"), ("torch", "int32"), ("torch", "int64"), ("torch", "uint8"),
    ("torch", "bool"),
    *(("torch", f"{kind}Storage") for kind in
      ("Float", "Half", "BFloat16", "Double", "Long", "Int", "Short", "Char", "Byte", "Bool",
       "ComplexFloat", "ComplexDouble", "Untyped")),
    ("torch.storage", "UntypedStorage"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # numpy arrays pickled with protocol 2 carry their bytes through it
})
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: Bounds per file, each refused with its own reason: a real state dict stays far below them
#: (an SDXL checkpoint: ~2,600 members, a data.pkl of ~400 KB and ~80,000 opcodes).
MAX_MEMBERS = 100_000
MAX_PICKLE_MEMBER = 64 * 1024 ** 2
MAX_OPCODES = 2_000_000
_NESTED = (".zip", ".pt", ".pth", ".ckpt", ".bin", ".tar", ".gz", ".7z", ".safetensors")
#: Members of a torch zip besides its pickles, relative to the archive's one top folder.
_TORCH_MEMBERS = re.compile(r"(data/\d+|version|\.data/version|byteorder|\.data/serialization_id|"
                            r"\.format_version|\.storage_alignment)")


@dataclass
class PickleReport:
    """What a pickle-based file would import, and why it is (un)safe."""

    globals: set[tuple[str, str]] = field(default_factory=set)
    unsafe: list[str] = field(default_factory=list)  # one reason per problem
    pickles: int = 0
    container: str = "pickle"  # "zip", "legacy", "pickle" or "tar"

    @property
    def safe(self) -> bool:
        return not self.unsafe and self.pickles > 0

    def merge(self, other: "PickleReport", where: str = "") -> None:
        self.globals |= other.globals
        self.unsafe += [f"{where}: {r}" if where else r for r in other.unsafe]
        self.pickles += other.pickles


def scan_file(data: bytes | memoryview) -> PickleReport:
    """Scan a whole pickle-based model file given as bytes, in torch.load's order."""
    data = memoryview(data)
    if len(data) == 0:
        return PickleReport(unsafe=["empty file: it holds no pickle"])
    if data[:4] == b"PK\x03\x04":
        return _scan_zip(data)
    if is_tar(data):
        return PickleReport(container="tar", unsafe=[
            "old PyTorch tar archive: torch.load would unpickle its members; convert it with a trusted tool"])
    if _has_zip_end(data):
        return PickleReport(container="zip", unsafe=[
            "zip archive with data before its first member: torch.load reads it as a pickle, zip readers "
            "as an archive"])
    return _scan_stream(data)


# Containers -----------------------------------------------------------------------------------
def is_tar(data: bytes | memoryview) -> bool:
    # torch.load tries tarfile on anything that is not a zip; a tar header is 512 bytes with a
    # checksum, so only a real (or crafted) tar passes.
    if len(data) < 512:
        return False
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(data[:512])), mode="r:"):
            return True
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError):
        return False


def _has_zip_end(data: memoryview) -> bool:
    """Whether Python's zipfile would open this as an archive (torch would not: no zip magic)."""
    if bytes(data[-65_557:]).rfind(b"PK\x05\x06") < 0:
        return False
    try:
        with zipfile.ZipFile(_ViewReader(data)) as archive:
            return bool(archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error):
        return False


class _ViewReader(io.RawIOBase):
    """A seekable file over bytes already in memory (or mapped), without copying them."""

    def __init__(self, view: memoryview):
        self.view, self.at = view, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), len(self.view) - self.at))
        buffer[:n] = self.view[self.at:self.at + n]
        self.at += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        self.at = max(0, offset + (0, self.at, len(self.view))[whence])
        return self.at

    def tell(self) -> int:
        return self.at


class _Refused(Exception):
    """The archive cannot be read unambiguously; the message says where."""


_EOCD = struct.Struct("<4sHHHHIIH")
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<4sHHHHHIIIHH")


@dataclass(frozen=True)
class _Member:
    name: str
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    offset: int


def _scan_zip(data: memoryview) -> PickleReport:
    report = PickleReport(container="zip")
    try:
        members = _zip_members(data)
        pickles = _place_members(data, members, report)
        for member, start in pickles:
            payload = _member_bytes(data, member, start)
            report.merge(_scan_stream(memoryview(payload), single=True), member.name)
    except _Refused as exc:
        report.unsafe.append(str(exc))
    if report.pickles == 0 and not report.unsafe:
        report.unsafe.append("zip holds no pickle (no data.pkl): not a torch file")
    return report


def _zip_members(data: memoryview) -> list[tuple[_Member, int]]:
    """The members and where each one's data starts, after proving that every zip reader
    (Python's zipfile, torch's miniz) sees this same list."""
    size = len(data)
    if size < _EOCD.size:
        raise _Refused("zip archive is truncated (no end record)")
    end = size - _EOCD.size
    sig, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, comment = _EOCD.unpack(data[end:])
    if sig != b"PK\x05\x06" or comment != 0:
        raise _Refused("zip end record is not at the very end of the file (a comment or data after the "
                       "archive): readers that search for it can find different ones")
    if bytes(data[max(0, end - 65_536):end]).find(b"PK\x05\x06") >= 0:
        raise _Refused("zip has a second end record: readers can pick different central directories")
    records_end = end
    locator_at = end - _ZIP64_LOCATOR.size
    if locator_at >= 0 and data[locator_at:locator_at + 4] == b"PK\x06\x07":
        _, _, zip64_at, disks = _ZIP64_LOCATOR.unpack(data[locator_at:end])
        if zip64_at + _ZIP64_EOCD.size != locator_at or disks != 1:
            raise _Refused("zip64 end record is not where its locator says: readers can disagree")
        (sig64, _, _, _, disk64, cd_disk64, n_disk64, n_total64, cd_size64,
         cd_offset64) = _ZIP64_EOCD.unpack(data[zip64_at:locator_at])
        if sig64 != b"PK\x06\x06":
            raise _Refused("zip64 end record has a bad signature")
        # Where the 32-bit record holds a value rather than its "see zip64" sentinel, both must
        # agree: two central directories, one per record, are how zip readers are split.
        for small, big, sentinel in ((n_disk, n_disk64, 0xFFFF), (n_total, n_total64, 0xFFFF),
                                     (cd_size, cd_size64, 0xFFFFFFFF), (cd_offset, cd_offset64, 0xFFFFFFFF)):
            if small != sentinel and small != big:
                raise _Refused("zip's end record and zip64 end record describe different central directories")
        n_disk, n_total, cd_size, cd_offset, disk, cd_disk = n_disk64, n_total64, cd_size64, cd_offset64, \
            disk64, cd_disk64
        records_end = zip64_at
    elif 0xFFFF in (n_disk, n_total) or 0xFFFFFFFF in (cd_size, cd_offset):
        raise _Refused("zip end record points to a zip64 record that is not there")
    if disk or cd_disk or n_disk != n_total:
        raise _Refused("multi-disk zip archive")
    if n_total > MAX_MEMBERS:
        raise _Refused(f"zip has {n_total} members (limit {MAX_MEMBERS})")
    if cd_offset + cd_size != records_end:
        raise _Refused("zip central directory does not end where the end record begins (hidden data)")
    members, pos = [], cd_offset
    for _ in range(n_total):
        members.append(_central_entry(data, pos, cd_offset + cd_size))
        pos = members[-1][1]
    if pos != records_end:
        raise _Refused("zip central directory holds more than its end record counts")
    # Local records follow each other from byte 0 to the central directory: nothing hides
    # between them, none overlaps another.
    placed, position = [], 0
    for member, _ in sorted(members, key=lambda m: m[0].offset):
        if member.offset != position:
            raise _Refused(f"zip member {member.name!r} starts at byte {member.offset}, expected {position} "
                           f"({'overlaps the previous member' if member.offset < position else 'hidden bytes before it'})")
        start = _local_entry(data, member)
        position = start + member.compressed + _descriptor_length(data, member, start + member.compressed)
        placed.append((member, start))
    if position != cd_offset:
        raise _Refused("zip has bytes between its last member and its central directory")
    return placed


def _central_entry(data: memoryview, pos: int, limit: int) -> tuple[_Member, int]:
    if pos + _CENTRAL.size > limit:
        raise _Refused("zip central directory is truncated")
    (sig, _, _, flags, method, _, _, crc, compressed, size, n_name, n_extra, n_comment, disk, _, _,
     offset) = _CENTRAL.unpack(data[pos:pos + _CENTRAL.size])
    if sig != b"PK\x01\x02":
        raise _Refused(f"zip central directory entry at byte {pos} has a bad signature")
    start = pos + _CENTRAL.size
    if start + n_name + n_extra + n_comment > limit:
        raise _Refused("zip central directory is truncated")
    raw = bytes(data[start:start + n_name])
    if not raw.isascii() or b"\x00" in raw:
        raise _Refused(f"zip member name {raw[:80]!r} is not plain ASCII: readers decode it differently")
    name = raw.decode("ascii")
    compressed, size, offset = _zip64_extra(bytes(data[start + n_name:start + n_name + n_extra]),
                                            compressed, size, offset, name)
    if flags & 0x41:
        raise _Refused(f"zip member {name!r} is encrypted")
    if disk:
        raise _Refused(f"zip member {name!r} is on another disk")
    return _Member(name, flags, method, crc, compressed, size, offset), start + n_name + n_extra + n_comment


def _zip64_extra(extra: bytes, compressed: int, size: int, offset: int, name: str) -> tuple[int, int, int]:
    wanted = [v == 0xFFFFFFFF for v in (size, compressed, offset)]
    if not any(wanted):
        return compressed, size, offset
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == 0x0001:
            values = list(struct.unpack_from(f"<{min(3, length // 8)}Q", extra, pos + 4))
            fields = [size, compressed, offset]
            for i, want in enumerate(wanted):
                if want:
                    if not values:
                        raise _Refused(f"zip member {name!r}: zip64 field missing")
                    fields[i] = values.pop(0)
            return fields[1], fields[0], fields[2]
        pos += 4 + length
    raise _Refused(f"zip member {name!r}: zip64 sizes are missing")


def _local_entry(data: memoryview, member: _Member) -> int:
    at = member.offset
    if at + _LOCAL.size > len(data):
        raise _Refused(f"zip member {member.name!r}: local header is truncated")
    sig, _, flags, method, _, _, crc, compressed, size, n_name, n_extra = _LOCAL.unpack(data[at:at + _LOCAL.size])
    name = bytes(data[at + _LOCAL.size:at + _LOCAL.size + n_name])
    if sig != b"PK\x03\x04" or name != member.name.encode() or method != member.method or flags != member.flags:
        raise _Refused(f"zip member {member.name!r}: local header disagrees with the central directory")
    if not flags & 0x08 and (crc != member.crc or (compressed, size) not in
                             ((member.compressed, member.size), (0xFFFFFFFF, 0xFFFFFFFF))):
        raise _Refused(f"zip member {member.name!r}: local sizes or CRC disagree with the central directory")
    start = at + _LOCAL.size + n_name + n_extra
    if start + member.compressed > len(data):
        raise _Refused(f"zip member {member.name!r} runs past the end of the file")
    return start


def _descriptor_length(data: memoryview, member: _Member, at: int) -> int:
    if not member.flags & 0x08:
        return 0
    signed = data[at:at + 4] == b"PK\x07\x08"
    wide = member.compressed >= 0xFFFFFFFF or member.size >= 0xFFFFFFFF
    return (4 if signed else 0) + (20 if wide else 12)


def _place_members(data: memoryview, members: list[tuple[_Member, int]],
                   report: PickleReport) -> list[tuple[_Member, int]]:
    """The pickles to walk; every other member must be one torch writes, under one top folder."""
    folded: dict[str, str] = {}
    for member, _ in members:
        key = member.name.lower()  # torch's reader finds members case-insensitively
        if key in folded:
            raise _Refused(f"zip has two members named {folded[key]!r} and {member.name!r} (names are "
                           "compared without case by torch's reader)")
        folded[key] = member.name
    prefixes = {m.name.partition("/")[0] for m, _ in members}
    if len(prefixes) != 1 or any("/" not in m.name for m, _ in members):
        raise _Refused("zip members are not all inside one top folder, as torch.save writes them")
    pickles = []
    for member, start in members:
        rest = member.name.partition("/")[2]
        lower = rest.lower()
        if lower == "constants.pkl" or lower.startswith("code/"):
            raise _Refused("TorchScript archive: torch.load would hand it to torch.jit.load, which runs its code")
        if lower.endswith(".pkl"):
            pickles.append((member, start))
        elif lower.endswith(_NESTED):
            report.unsafe.append(f"zip member {member.name!r} is a nested archive or model file")
        elif not _TORCH_MEMBERS.fullmatch(rest):
            report.unsafe.append(f"zip member {member.name!r} is not part of a torch file (cannot place it)")
        elif member.method != 0:
            report.unsafe.append(f"zip member {member.name!r} is compressed (method {member.method}); torch "
                                 "stores tensor data uncompressed")
        elif zlib.crc32(data[start:start + member.compressed]) != member.crc:
            report.unsafe.append(f"zip member {member.name!r} is corrupt: its CRC does not match")
    if not any(m.name.partition("/")[2].lower() == "data.pkl" for m, _ in pickles):
        raise _Refused("zip holds no data.pkl: not a torch file")
    return pickles


def _member_bytes(data: memoryview, member: _Member, start: int) -> bytes:
    if member.size > MAX_PICKLE_MEMBER:
        raise _Refused(f"zip member {member.name!r} is a pickle of {member.size} bytes (limit {MAX_PICKLE_MEMBER})")
    raw = data[start:start + member.compressed]
    if member.method == 0:
        payload = bytes(raw)
    elif member.method == 8:
        inflate = zlib.decompressobj(-15)
        try:
            payload = inflate.decompress(raw, MAX_PICKLE_MEMBER + 1)
        except zlib.error as exc:
            raise _Refused(f"zip member {member.name!r} is corrupt: {exc}") from None
        if len(payload) > MAX_PICKLE_MEMBER:
            raise _Refused(f"zip member {member.name!r} inflates past {MAX_PICKLE_MEMBER} bytes")
    else:
        raise _Refused(f"zip member {member.name!r} uses compression method {member.method}")
    if len(payload) != member.size or zlib.crc32(payload) != member.crc:
        raise _Refused(f"zip member {member.name!r} is corrupt: its size or CRC does not match")
    return payload


# Pickle streams ---------------------------------------------------------------------------------
#: How much of a pickle stream is walked: its pickles must end within this many bytes (a legacy
#: file's raw storages after them are not pickle and are not read here).
MAX_PICKLE_STREAM = 256 * 1024 ** 2


def _scan_stream(data: memoryview, single: bool = False) -> PickleReport:
    """Walk a pickle stream: one pickle (a zip member, a plain pickle file) or the legacy
    format's five, after which its raw storage bytes follow."""
    report = PickleReport()
    stream = io.BytesIO(bytes(data[:MAX_PICKLE_STREAM]))
    budget = [MAX_OPCODES]
    while True:
        start = stream.tell()
        try:
            value = _Walk(stream, budget, report.globals).run()
        except _Unsafe as exc:
            report.unsafe.append(str(exc))
            return report
        except EOFError as exc:
            too_long = len(data) > MAX_PICKLE_STREAM
            report.unsafe.append(f"pickle stream longer than {MAX_PICKLE_STREAM} bytes: too large to inspect (limit)"
                                 if too_long else f"truncated pickle at byte {start}: {exc}")
            return report
        except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError, OverflowError,
                struct.error) as exc:
            report.unsafe.append(f"unparsable pickle at byte {start}: {type(exc).__name__}: {exc}")
            return report
        report.pickles += 1
        if report.pickles == 1 and not single and type(value) is int and value == LEGACY_MAGIC:
            report.container = "legacy"
        if report.container != "legacy" or report.pickles == 5:
            break  # the raw storage bytes of a legacy file follow its five pickles
        if stream.tell() == len(data):
            report.unsafe.append(f"legacy torch file ends after {report.pickles} of its 5 pickles")
            return report
    if report.container != "legacy" and stream.tell() != len(data):
        report.unsafe.append(f"{len(data) - stream.tell()} bytes follow the pickle's STOP at byte "
                             f"{stream.tell() - 1}: no loader reads them (cannot place them)")
    for module, name in sorted(report.globals):
        if (module, name) not in SAFE_GLOBALS:
            report.unsafe.append(f"imports {module}.{name}, which is not a tensor-rebuild global")
    return report


class _Unsafe(Exception):
    pass


@dataclass(frozen=True)
class _Global:
    """A callable the pickle imported (GLOBAL, STACK_GLOBAL, INST)."""

    module: str
    name: str

    @property
    def allowed(self) -> bool:
        return (self.module, self.name) in SAFE_GLOBALS


@dataclass(frozen=True)
class _Made:
    """What calling an allowed global returned."""

    by: _Global


_VALUE = object()  # any plain value (container, number, bytes): built by the pickle, calls nothing


class _Walk:
    """One pickle, walked under CPython's rules. `run` returns the pickled value where it is a
    plain int (the legacy format's magic number), else a placeholder."""

    def __init__(self, stream: io.BytesIO, budget: list[int], found: set[tuple[str, str]]):
        self.stream, self.budget, self.found = stream, budget, found
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.frame_end: int | None = None
        self.pos, self.op = stream.tell(), "PROTO"

    def run(self) -> Any:
        for op, arg, pos in pickletools.genops(self.stream):
            self.budget[0] -= 1
            if self.budget[0] < 0:
                raise _Unsafe(f"pickle has over {MAX_OPCODES} opcodes: too large to inspect (limit)")
            self.pos, self.op = pos, op.name
            self._framing(pos, self.stream.tell() if op.name != "STOP" else pos + 1, arg)
            if op.name == "STOP":
                value = self.pop()
                if self.stack or self.marks:
                    raise self.fail(f"leaves {len(self.stack)} items and {len(self.marks)} marks behind: "
                                    "the stack model is uncertain")
                return value
            handler = _HANDLERS.get(op.name)
            if handler is None:
                raise self.fail("not an opcode a tensor file uses")
            handler(self, arg)
        raise EOFError("the pickle has no STOP opcode")

    # The model of CPython's unpickler -------------------------------------------------------
    def _framing(self, pos: int, end: int, arg: Any) -> None:
        # An opcode that starts inside a frame must end inside it: CPython's readers treat a
        # straddling argument differently (the C unpickler may drop the rest of the frame), so
        # the walk would not be what runs. Frames follow each other, never nest.
        if self.frame_end is not None and pos == self.frame_end:
            self.frame_end = None
        if self.frame_end is not None:
            if end > self.frame_end:
                raise self.fail(f"runs past the end of its frame (byte {self.frame_end}): readers of framed "
                                "pickles disagree here")
            if self.op == "FRAME":
                raise self.fail("begins before the previous frame ended")
            if self.op == "STOP" and end < self.frame_end:
                raise self.fail(f"the frame goes on to byte {self.frame_end}, past STOP")
        if self.op == "FRAME":
            self.frame_end = end + arg

    def fail(self, why: str) -> _Unsafe:
        return _Unsafe(f"{self.op} at byte {self.pos}: {why}")

    def fence(self) -> int:
        return self.marks[-1] if self.marks else 0

    def pop(self) -> Any:
        if len(self.stack) <= self.fence():
            raise self.fail("stack underflow (the stack model is uncertain)")
        return self.stack.pop()

    def top(self) -> Any:
        if len(self.stack) <= self.fence():
            raise self.fail("stack underflow (the stack model is uncertain)")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise self.fail("no MARK to pop")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def target(self) -> None:
        # APPEND, SETITEM, BUILD ... call methods of the object below: never of an imported class.
        if isinstance(self.top(), _Global):
            raise self.fail(f"modifies the imported {self._label(self.top())} itself")

    def call(self, fn: Any) -> None:
        if not isinstance(fn, _Global):
            raise self.fail("calls a value that is not an imported global (the callable cannot be resolved)")
        if not fn.allowed:
            raise self.fail(f"calls {self._label(fn)}, which is not a tensor-rebuild global")
        self.stack.append(_Made(fn))

    def import_(self, module: Any, name: Any) -> _Global:
        if not (isinstance(module, str) and isinstance(name, str)):
            raise self.fail("module or name cannot be resolved to strings")
        if not (module.isascii() and name.isascii()) or " " in module + name or "\n" in module + name:
            raise self.fail(f"global {module!r} {name!r} has characters readers decode differently")
        self.found.add((module, name))
        return _Global(module, name)

    @staticmethod
    def _label(fn: _Global) -> str:
        return f"{fn.module}.{fn.name}"


def _push_value(w: _Walk, arg: Any) -> None:
    w.stack.append(_VALUE)


def _push_text(w: _Walk, arg: Any) -> None:
    w.stack.append(arg if isinstance(arg, str) else _VALUE)


def _push_int(w: _Walk, arg: Any) -> None:
    w.stack.append(arg if type(arg) is int else _VALUE)


def _pop_n(n: int):
    def handler(w: _Walk, arg: Any) -> None:
        for _ in range(n):
            w.pop()
        w.stack.append(_VALUE)
    return handler


def _from_mark(even: bool = False):
    def handler(w: _Walk, arg: Any) -> None:
        items = w.pop_mark()
        if even and len(items) % 2:
            raise w.fail("odd number of items for a dict")
        w.stack.append(_VALUE)
    return handler


def _into_top(take: str):
    def handler(w: _Walk, arg: Any) -> None:
        if take == "mark":
            items = w.pop_mark()
            if w.op == "SETITEMS" and len(items) % 2:
                raise w.fail("odd number of items for SETITEMS")
        else:
            for _ in range(int(take)):
                w.pop()
        w.target()
    return handler


def _pop(w: _Walk, arg: Any) -> None:
    if w.marks and w.marks[-1] == len(w.stack):
        w.marks.pop()  # CPython: POP with nothing above the newest MARK pops the MARK
    else:
        w.pop()


def _dup(w: _Walk, arg: Any) -> None:
    w.stack.append(w.top())


def _mark(w: _Walk, arg: Any) -> None:
    w.marks.append(len(w.stack))


def _pop_mark(w: _Walk, arg: Any) -> None:
    w.pop_mark()


def _get(w: _Walk, arg: Any) -> None:
    if arg not in w.memo:
        raise w.fail(f"memo index {arg} was never stored")
    w.stack.append(w.memo[arg])


def _put(w: _Walk, arg: Any) -> None:
    w.memo[arg] = w.top()


def _memoize(w: _Walk, arg: Any) -> None:
    w.memo[len(w.memo)] = w.top()


def _global(w: _Walk, arg: Any) -> None:
    module, sep, name = str(arg).partition(" ")
    if not sep or " " in name:
        raise w.fail(f"global {arg!r} cannot be split into module and name unambiguously")
    w.stack.append(w.import_(module, name))


def _stack_global(w: _Walk, arg: Any) -> None:
    name = w.pop()
    module = w.pop()
    w.stack.append(w.import_(module, name))


def _reduce(w: _Walk, arg: Any) -> None:
    w.pop()  # the arguments
    w.call(w.pop())


def _build(w: _Walk, arg: Any) -> None:
    w.pop()  # the state
    w.target()


def _newobj(w: _Walk, arg: Any) -> None:
    w.pop()
    w.call(w.pop())


def _newobj_ex(w: _Walk, arg: Any) -> None:
    w.pop()
    w.pop()
    w.call(w.pop())


def _obj(w: _Walk, arg: Any) -> None:
    items = w.pop_mark()
    if not items:
        raise w.fail("OBJ with no class after its MARK")
    w.call(items[0])


def _inst(w: _Walk, arg: Any) -> None:
    module, sep, name = str(arg).partition(" ")
    if not sep or " " in name:
        raise w.fail(f"class {arg!r} cannot be split into module and name unambiguously")
    fn = w.import_(module, name)
    w.pop_mark()
    w.call(fn)


def _ext(w: _Walk, arg: Any) -> None:
    raise w.fail(f"imports extension code {arg} from the copyreg registry: what it names depends on the "
                 "loading process, not on the file")


def _persid(w: _Walk, arg: Any) -> None:
    w.stack.append(_VALUE)  # torch's persistent_load: a storage, by key


def _binpersid(w: _Walk, arg: Any) -> None:
    w.pop()
    w.stack.append(_VALUE)


def _proto(w: _Walk, arg: Any) -> None:
    if not 0 <= arg <= 5:
        raise w.fail(f"unsupported protocol {arg}")


#: Every opcode the walk understands, with CPython's stack effect; any other is refused.
_HANDLERS = {
    **{op: _push_int for op in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4")},
    **{op: _push_text for op in ("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE",
                                 "BINUNICODE", "BINUNICODE8")},
    **{op: _push_value for op in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "FLOAT",
                                    "BINFLOAT", "EMPTY_LIST", "EMPTY_TUPLE", "EMPTY_DICT", "EMPTY_SET",
                                    "NONE", "NEWTRUE", "NEWFALSE")},
    "APPEND": _into_top("1"), "APPENDS": _into_top("mark"), "SETITEM": _into_top("2"),
    "SETITEMS": _into_top("mark"), "ADDITEMS": _into_top("mark"),
    "LIST": _from_mark(), "TUPLE": _from_mark(), "FROZENSET": _from_mark(), "DICT": _from_mark(even=True),
    "TUPLE1": _pop_n(1), "TUPLE2": _pop_n(2), "TUPLE3": _pop_n(3),
    "POP": _pop, "DUP": _dup, "MARK": _mark, "POP_MARK": _pop_mark,
    "GET": _get, "BINGET": _get, "LONG_BINGET": _get, "PUT": _put, "BINPUT": _put, "LONG_BINPUT": _put,
    "MEMOIZE": _memoize,
    "GLOBAL": _global, "STACK_GLOBAL": _stack_global, "INST": _inst, "OBJ": _obj,
    "REDUCE": _reduce, "BUILD": _build, "NEWOBJ": _newobj, "NEWOBJ_EX": _newobj_ex,
    "EXT1": _ext, "EXT2": _ext, "EXT4": _ext,
    "PERSID": _persid, "BINPERSID": _binpersid,
    "PROTO": _proto, "FRAME": lambda w, arg: None,  # framing is checked by the walk itself
}
