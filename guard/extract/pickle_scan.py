"""Inspecting pickle-based model files (.ckpt .pt .pth .bin) without unpickling them.

Each pickle is walked opcode by opcode (``pickletools.genops``); a small stack emulation,
driven by pickletools' own opcode descriptions, resolves every GLOBAL and STACK_GLOBAL
(following memo PUT/GET), so the imports a file would perform are known exactly. Only
the known tensor-rebuild globals are allowed. Anything else — another global, one that
cannot be resolved, an unparsable pickle, an odd zip — makes the file unsafe. Nothing in
this module ever calls ``pickle.load`` or imports what it reads.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from dataclasses import dataclass, field

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
MAX_MEMBERS = 100_000
_NESTED = (".zip", ".pt", ".pth", ".ckpt", ".bin", ".tar", ".gz", ".7z", ".pkl.gz")


@dataclass
class PickleReport:
    """What a pickle-based file would import, and why it is (un)safe."""

    globals: set[tuple[str, str]] = field(default_factory=set)
    unsafe: list[str] = field(default_factory=list)  # one reason per problem
    pickles: int = 0
    container: str = "pickle"  # "zip", "legacy" or "pickle"

    @property
    def safe(self) -> bool:
        return not self.unsafe and self.pickles > 0

    def merge(self, other: "PickleReport") -> None:
        self.globals |= other.globals
        self.unsafe += other.unsafe
        self.pickles += other.pickles


def scan_file(data: bytes) -> PickleReport:
    """Scan a whole pickle-based model file given as bytes."""
    if data[:4] == b"PK\x03\x04" or (zipfile.is_zipfile(io.BytesIO(data)) and b"PK\x05\x06" in data[-65_557:]):
        return _scan_zip(data)
    return _scan_stream(data)


def _scan_zip(data: bytes) -> PickleReport:
    report = PickleReport(container="zip")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        report.unsafe.append(f"corrupt zip archive: {exc}")
        return report
    if len(infos) > MAX_MEMBERS:
        report.unsafe.append(f"zip has {len(infos)} members (limit {MAX_MEMBERS})")
        return report
    names = [i.filename for i in infos]
    dupes = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) != len(names) else []
    if dupes:
        report.unsafe.append(f"zip has duplicate member names: {', '.join(dupes[:5])}")
    first = min((i.header_offset for i in infos), default=0)
    if first != 0:
        report.unsafe.append(f"zip has {first} bytes of data before its first member")
    end_of_central = data.rfind(b"PK\x05\x06")
    if end_of_central >= 0 and len(data) - end_of_central > 22 + int.from_bytes(
            data[end_of_central + 20:end_of_central + 22], "little"):
        report.unsafe.append("zip has data after its end-of-archive record")
    for info in infos:
        if info.filename.lower().endswith(_NESTED):
            report.unsafe.append(f"zip member {info.filename!r} is a nested archive or model file")
            continue
        try:
            with archive.open(info) as member:
                payload = member.read()  # reading to the end verifies the CRC
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            report.unsafe.append(f"zip member {info.filename!r} is corrupt: {exc}")
            continue
        if info.filename.endswith(".pkl") or payload[:1] == b"\x80":
            sub = _scan_stream(payload, single=info.filename.endswith(".pkl"))
            sub.unsafe = [f"{info.filename}: {r}" for r in sub.unsafe]
            report.merge(sub)
    if report.pickles == 0 and not report.unsafe:
        report.unsafe.append("zip holds no pickle (no data.pkl): not a torch file")
    return report


def _scan_stream(data: bytes, single: bool = False) -> PickleReport:
    """Walk consecutive pickles. A legacy torch file is five pickles followed by raw storages."""
    report = PickleReport()
    stream = io.BytesIO(data)
    first_value = None
    while stream.tell() < len(data):
        start = stream.tell()
        try:
            walked, last_int = _walk(stream)
        except _Unsafe as exc:
            report.unsafe.append(str(exc))
            return report
        except (ValueError, EOFError, KeyError, IndexError, TypeError, UnicodeDecodeError, OverflowError) as exc:
            report.unsafe.append(f"unparsable pickle at byte {start}: {type(exc).__name__}: {exc}")
            return report
        report.pickles += 1
        report.globals |= walked
        if report.pickles == 1:
            first_value = last_int
            if first_value == LEGACY_MAGIC:
                report.container = "legacy"
        if single or (report.container == "legacy" and report.pickles == 5):
            break  # the raw storage bytes of a legacy file follow its five pickles
    for module, name in sorted(report.globals):
        if (module, name) not in SAFE_GLOBALS:
            report.unsafe.append(f"imports {module}.{name}, which is not a tensor-rebuild global")
    return report


class _Unsafe(Exception):
    pass


_MARK = object()
_UNKNOWN = object()
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
               "BINSTRING", "STRING"}


def _walk(stream: io.BytesIO) -> tuple[set[tuple[str, str]], int | None]:
    """Emulate one pickle's stack far enough to resolve its globals. Ends at STOP."""
    stack: list = []
    memo: dict = {}
    found: set[tuple[str, str]] = set()
    last_int = None
    for op, arg, pos in pickletools.genops(stream):
        name = op.name
        if name == "STOP":
            return found, last_int
        if name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            found.add((module, attr))
            stack.append(_UNKNOWN)
            continue
        if name == "STACK_GLOBAL":
            if len(stack) < 2:
                raise _Unsafe(f"STACK_GLOBAL at byte {pos} with too few items on the stack")
            attr, module = stack.pop(), stack.pop()
            if not (isinstance(module, str) and isinstance(attr, str)):
                raise _Unsafe(f"STACK_GLOBAL at byte {pos} whose module or name cannot be resolved")
            found.add((module, attr))
            stack.append(_UNKNOWN)
            continue
        if name in _STRING_OPS:
            stack.append(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
            continue
        if name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"):
            last_int = arg if isinstance(arg, int) else None
            stack.append(_UNKNOWN)
            continue
        if name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1] if stack else _UNKNOWN
            continue
        if name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else _UNKNOWN
            continue
        if name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise _Unsafe(f"memo GET of unknown index {arg} at byte {pos}")
            stack.append(memo[arg])
            continue
        if name == "MARK":
            stack.append(_MARK)
            continue
        # Generic effect, from pickletools' own description of the opcode.
        if any(item is pickletools.markobject for item in op.stack_before):
            while stack and stack[-1] is not _MARK:
                stack.pop()
            if stack:
                stack.pop()
            plain = [s for s in op.stack_before if s is not pickletools.markobject and s is not pickletools.stackslice]
            del stack[len(stack) - min(len(plain), len(stack)):]
        else:
            del stack[len(stack) - min(len(op.stack_before), len(stack)):]
        stack.extend(_UNKNOWN for _ in op.stack_after)
    raise EOFError("pickle has no STOP opcode")
