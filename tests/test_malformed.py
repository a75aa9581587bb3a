"""A corpus of malformed model files: every one is a block/format verdict, fast, bounded."""

import json
import os
import struct
import time

import pytest
import torch

from guard import Action, Signal

from . import model_files as mf


def st(header, data: bytes = b"", length: int | None = None, raw_header: bytes | None = None) -> bytes:
    body = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(body) if length is None else length) + body + data


F32x4 = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
GOOD = st({"a": F32x4}, b"\x00" * 16)


def corpus() -> dict[str, bytes]:
    nested = "[" * 100_000 + "]" * 100_000
    return {
        "empty": b"",
        "three bytes": b"abc",
        "header longer than file": st({}, length=1000),
        "2^63 header length": struct.pack("<Q", 2 ** 63) + b"{}",
        "2^64-1 header length": b"\xff" * 8 + b"{}",
        "header over 100 MB": struct.pack("<Q", 100 * 1024 * 1024 + 1) + b"{}",
        "header length 0": struct.pack("<Q", 0),
        "header length 1": st(None, raw_header=b"{"),
        "non-JSON header": st(None, raw_header=b"hello world"),
        "JSON array": st([1, 2]),
        "JSON string": st("text"),
        "JSON number": st(42),
        "JSON null": st(None),
        "invalid UTF-8": st(None, raw_header=b'{"\xff\xfe": 1}'),
        "UTF-8 BOM": st(None, raw_header=b'\xef\xbb\xbf{}'),
        "duplicate tensor key": st(None, raw_header=b'{"a": ' + json.dumps(F32x4).encode() + b', "a": '
                                   + json.dumps(F32x4).encode() + b'}', data=b"\x00" * 16),
        "duplicate __metadata__": st(None, raw_header=b'{"__metadata__": {}, "__metadata__": {}}'),
        "duplicate metadata key": st(None, raw_header=b'{"__metadata__": {"k": "a", "k": "b"}}'),
        "metadata not an object": st({"__metadata__": "x"}),
        "metadata list": st({"__metadata__": ["x"]}),
        "metadata int value": st({"__metadata__": {"ss_network_dim": 4}}),
        "metadata null value": st({"__metadata__": {"k": None}}),
        "metadata nested object": st({"__metadata__": {"k": {"x": "y"}}}),
        "NaN constant": st(None, raw_header=b'{"__metadata__": {"k": NaN}}'),
        "Infinity constant": st(None, raw_header=b'{"a": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 0]}}'),
        "deeply nested JSON": st(None, raw_header=nested.encode()),
        "trailing garbage after JSON": st(None, raw_header=b"{}xyz"),
        "two JSON objects": st(None, raw_header=b"{}{}"),
        "entry missing dtype": st({"a": {"shape": [4], "data_offsets": [0, 16]}}, b"\x00" * 16),
        "entry extra key": st({"a": {**F32x4, "extra": 1}}, b"\x00" * 16),
        "entry is a list": st({"a": [1, 2]}),
        "unknown dtype": st({"a": {**F32x4, "dtype": "F128"}}, b"\x00" * 16),
        "lowercase dtype": st({"a": {**F32x4, "dtype": "f32"}}, b"\x00" * 16),
        "negative shape": st({"a": {**F32x4, "shape": [-4]}}, b"\x00" * 16),
        "float shape": st({"a": {**F32x4, "shape": [4.0]}}, b"\x00" * 16),
        "bool shape": st({"a": {**F32x4, "shape": [True]}}, b"\x00" * 4),
        "shape not a list": st({"a": {**F32x4, "shape": 4}}, b"\x00" * 16),
        "offsets reversed": st({"a": {**F32x4, "data_offsets": [16, 0]}}, b"\x00" * 16),
        "offsets past end": st({"a": {**F32x4, "data_offsets": [0, 16]}}, b"\x00" * 8),
        "offsets as strings": st({"a": {**F32x4, "data_offsets": ["0", "16"]}}, b"\x00" * 16),
        "three offsets": st({"a": {**F32x4, "data_offsets": [0, 8, 16]}}, b"\x00" * 16),
        "negative offsets": st({"a": {**F32x4, "data_offsets": [-16, 0]}}, b"\x00" * 16),
        "overlapping tensors": st({"a": F32x4, "b": {**F32x4, "data_offsets": [8, 24]}}, b"\x00" * 24),
        "gap between tensors": st({"a": F32x4, "b": {**F32x4, "data_offsets": [20, 36]}}, b"\x00" * 36),
        "size does not match shape": st({"a": {**F32x4, "shape": [2]}}, b"\x00" * 16),
        "shape product overflow": st({"a": {**F32x4, "shape": [2 ** 40, 2 ** 40]}}, b"\x00" * 16),
        "trailing bytes": GOOD + b"extra",
        "truncated data": GOOD[:-5],
        "zero-length tensor but bytes": st({"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}, b"\x00" * 4),
        "header of spaces": st(None, raw_header=b" " * 64),
        "pickle posing as safetensors": b"\x80\x04\x95" + b"\x00" * 40,
        "random bytes": os.urandom(4096),
    }


def special_paths(tmp_path):
    folder = tmp_path / "a_dir.safetensors"
    folder.mkdir()
    zero = tmp_path / "zero.safetensors"
    zero.symlink_to("/dev/zero")
    null = tmp_path / "null.safetensors"
    null.symlink_to("/dev/null")
    dangling = tmp_path / "dangling.safetensors"
    dangling.symlink_to(tmp_path / "nowhere")
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    nan = mf.write(tmp_path / "nan.safetensors", {
        "lora_unet_a.lora_down.weight": torch.full((4, 8), float("nan")), "lora_unet_a.lora_up.weight": torch.ones(8, 4)})
    inf = mf.write(tmp_path / "inf.safetensors", {
        "lora_unet_a.lora_down.weight": torch.full((4, 8), float("inf")), "lora_unet_a.lora_up.weight": torch.ones(8, 4)})
    return {"directory": folder, "symlink to /dev/zero": zero, "symlink to /dev/null": null,
            "dangling symlink": dangling, "FIFO": fifo, "NaN tensors": nan, "infinite tensors": inf}


def bytes_read() -> int:
    with open("/proc/self/io") as fh:
        return int(next(line for line in fh if line.startswith("rchar:")).split()[1])


def test_corpus_is_large_enough(tmp_path):
    assert len(corpus()) + len(special_paths(tmp_path)) >= 50


def test_every_malformed_file_is_blocked_fast_and_bounded(guard, tmp_path):
    cases = {}
    for name, data in corpus().items():
        path = tmp_path / (name.replace(" ", "_").replace("/", "_") + ".safetensors")
        path.write_bytes(data)
        cases[name] = path
    cases.update(special_paths(tmp_path))
    guard.check_model_file(cases["JSON array"])  # warm-up: lazy imports read files too
    problems = []
    for name, path in cases.items():
        size = os.stat(path).st_size if os.path.isfile(path) else 0
        before, start = bytes_read(), time.monotonic()
        verdict = guard.check_model_file(path)
        elapsed, read = time.monotonic() - start, bytes_read() - before
        formats = [f for f in verdict.findings if f.signal is Signal.FORMAT]
        if verdict.action is not Action.BLOCK or not formats or not formats[0].evidence.get("reason"):
            problems.append(f"{name}: {verdict.action.value} {[f.to_dict() for f in verdict.findings]}")
        if elapsed > 1.0:
            problems.append(f"{name}: took {elapsed:.2f}s")
        if read > size + 1024 and name not in ("NaN tensors", "infinite tensors"):
            problems.append(f"{name}: read {read} bytes of a {size}-byte file")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name, reason", [
    ("2^63 header length", "over the"), ("duplicate tensor key", "twice"), ("overlapping tensors", "overlaps"),
    ("trailing bytes", "trailing bytes"), ("metadata int value", "must be strings"),
    ("size does not match shape", "needs"), ("header longer than file", "past the end"),
])
def test_reasons_are_precise(guard, tmp_path, name, reason):
    path = tmp_path / "x.safetensors"
    path.write_bytes(corpus()[name])
    assert reason in guard.check_model_file(path).findings[0].evidence["reason"]


def test_tensor_tables_checked_once_are_recognised_by_their_bytes(tmp_path):
    # Files that share a tensor table (only their metadata differs) are checked against the
    # table already validated; what depends on the file itself is still checked per file.
    from guard.extract import safetensors_header as sh

    tensors = {"lora_unet_a.lora_down.weight": torch.ones(2, 4), "lora_unet_a.lora_up.weight": torch.ones(4, 2)}
    first = mf.write(tmp_path / "first.safetensors", tensors, {"ss_output_name": "one"})
    second = mf.write(tmp_path / "second.safetensors", tensors, {"ss_output_name": "two", "extra": "x"})
    sh._validated_section.cache_clear()
    for path in (first, second):
        with open(path, "rb") as fh:
            header = sh.read_header(fh, os.path.getsize(path))
        assert set(header.tensors) == set(tensors)
    info = sh._validated_section.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    grown = tmp_path / "grown.safetensors"
    grown.write_bytes(second.read_bytes() + b"\0" * 8)
    with open(grown, "rb") as fh, pytest.raises(sh.MalformedModel, match="trailing bytes"):
        sh.read_header(fh, os.path.getsize(grown))
    for header_json in (b'{"__metadata__":{"k":"v"}}', b"{}"):  # no tensors at all: valid, and empty
        header_json += b" " * (-len(header_json) % 8)
        path = tmp_path / "empty.safetensors"
        path.write_bytes(len(header_json).to_bytes(8, "little") + header_json)
        with open(path, "rb") as fh:
            assert dict(sh.read_header(fh, os.path.getsize(path)).tensors) == {}
