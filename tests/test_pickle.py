"""Pickle canaries: files that would run code if unpickled. All blocked; the marker never appears.

The payloads are built with pickle.dumps of objects whose __reduce__ names the callable (that
only *writes* a pickle) or assembled opcode by opcode. Nothing here ever loads them.
"""

import functools
import os
import pickle
import struct
import subprocess
from collections import OrderedDict

import pytest
import torch

from guard import Action, Signal
from guard.extract.pickle_scan import scan_file

from .canaries import Reduce, _zip, legacy, torch_zip


def memo_stack_global(module: str, name: str, arg: str) -> bytes:
    """Protocol 4: module and name pushed, memoized, fetched back with BINGET, then STACK_GLOBAL."""
    def s(text):
        b = text.encode()
        return b"\x8c" + bytes([len(b)]) + b  # SHORT_BINUNICODE
    body = (s(module) + b"\x94" + s(name) + b"\x94" + b"0" + b"0"  # MEMOIZE twice, POP the copies
            + b"h\x00" + b"h\x01" + b"\x93" + s(arg) + b"\x85" + b"R" + b".")  # BINGET 0/1, STACK_GLOBAL
    return b"\x80\x04" + body


@pytest.fixture()
def canaries(tmp_path):
    marker = tmp_path / "MARKER"
    cmd = f"touch {marker}"
    evil = {
        "os.system": pickle.dumps(Reduce(os.system, cmd), protocol=2),
        "subprocess.Popen": pickle.dumps(Reduce(subprocess.Popen, ["touch", str(marker)]), protocol=4),
        "subprocess.check_call": pickle.dumps(Reduce(subprocess.check_call, ["touch", str(marker)])),
        "builtins.eval": pickle.dumps(Reduce(eval, f"open({str(marker)!r}, 'w')"), protocol=0),
        "builtins.exec": pickle.dumps(Reduce(exec, f"open({str(marker)!r}, 'w')"), protocol=3),
        "builtins.getattr": pickle.dumps(Reduce(getattr, Reduce(__import__, "os"), "system")),
        "functools.partial": pickle.dumps(Reduce(functools.partial(os.system, cmd))),
        "STACK_GLOBAL via memo": memo_stack_global("os", "system", cmd),
        "STACK_GLOBAL via memo (posix)": memo_stack_global("posix", "system", cmd),
        "unresolvable STACK_GLOBAL": b"\x80\x04K\x01K\x02\x93.",
        "GET of an unknown memo": b"\x80\x04h\x07h\x08\x93.",
        "state dict with a payload inside": pickle.dumps(OrderedDict(w=Reduce(os.system, cmd))),
    }
    files = {f"{name}.pkl": data for name, data in evil.items()}
    clean = pickle.dumps(OrderedDict(a=1), protocol=2)
    files["nested pickle in a zip member.pt"] = torch_zip(clean, {"archive/extra.pkl": evil["os.system"]})
    files["payload in data.pkl.pt"] = torch_zip(evil["os.system"])
    files["nested archive.pt"] = torch_zip(clean, {"archive/inner.zip": torch_zip(evil["os.system"])})
    files["member torch never writes.pt"] = torch_zip(clean, {"archive/aaa_first": b"A" * 64})
    corrupt = bytearray(torch_zip(clean, {"archive/data/0": b"A" * 64}))
    at = corrupt.find(b"A" * 64)
    corrupt[at:at + 4] = b"BBBB"  # damages the first member's bytes: its CRC no longer holds
    files["corrupt zip entry before data.pkl.pt"] = bytes(corrupt)  # a storage whose CRC fails
    files["data before the zip.pt"] = torch_zip(clean, before=b"\x00" * 128)
    files["legacy torch file.pt"] = legacy(evil["os.system"])
    files["legacy with eval.ckpt"] = legacy(evil["builtins.eval"])
    files["truncated pickle.ckpt"] = evil["os.system"][:-3]
    files["zip without data.pkl.pt"] = _zip({"a.txt": b"hi"})
    paths = {}
    for name, data in files.items():
        path = tmp_path / name.replace(" ", "_")
        path.write_bytes(data)
        paths[name] = path
    return marker, paths


def test_every_canary_is_blocked_and_nothing_runs(guard, canaries):
    marker, paths = canaries
    assert len(paths) >= 15
    for name, path in paths.items():
        v = guard.check_model_file(path)
        reasons = [f.evidence.get("reason", "") for f in v.findings]
        assert v.action is Action.BLOCK, name
        assert any(f.signal in (Signal.PICKLE, Signal.FORMAT) for f in v.findings), name
        assert all(r for r in reasons), name
    assert not marker.exists()


def test_findings_name_the_global(guard, canaries):
    _, paths = canaries
    reasons = " ".join(f.evidence["reason"] for f in guard.check_model_file(paths["STACK_GLOBAL via memo.pkl"]).findings)
    assert "os.system" in reasons
    v = guard.check_model_file(paths["nested pickle in a zip member.pt"])
    assert "archive/extra.pkl" in v.findings[0].evidence["reason"] and "system" in v.findings[0].evidence["reason"]
    v = guard.check_model_file(paths["corrupt zip entry before data.pkl.pt"])
    assert "corrupt" in v.findings[0].evidence["reason"]


def test_clean_torch_files_pass(guard, tmp_path):
    state = OrderedDict(weight=torch.randn(4, 4), bias=torch.zeros(4).half(), step=torch.tensor(3))
    modern, old = tmp_path / "clean.pt", tmp_path / "clean_legacy.ckpt"
    torch.save(state, modern)
    torch.save(state, old, _use_new_zipfile_serialization=False)
    for path in (modern, old):
        v = guard.check_model_file(path)
        assert v.action is Action.ALLOW, [f.to_dict() for f in v.findings]
        assert "torch._utils._rebuild_tensor_v2" in v.facts["pickle_globals"]
    assert guard.check_model_file(modern).facts["container"] == "zip-pickle"
    assert guard.check_model_file(old).facts["container"] == "legacy-pickle"


def test_scanner_unit_on_plain_pickles():
    assert scan_file(pickle.dumps({"a": [1, 2.0, "x"]})).safe
    report = scan_file(pickle.dumps(Reduce(os.system, "true"), protocol=2))
    assert not report.safe and ("posix", "system") in report.globals
    assert not scan_file(b"").safe  # nothing to scan is not clean
    assert not scan_file(struct.pack("<Q", 5)).safe


def test_convert_clean_checkpoint_and_refuse_a_canary(bank_file, canaries, tmp_path, capsys):
    from safetensors.torch import load_file

    from guard.adapters.cli import main

    state = {"state_dict": OrderedDict(w=torch.randn(3, 4), b=torch.zeros(4).half()), "epoch": 3}
    state["state_dict"]["tied"] = state["state_dict"]["w"]  # shared storage
    ckpt = tmp_path / "model.ckpt"
    torch.save(state, ckpt)
    out = tmp_path / "model.safetensors"
    assert main(["convert", str(ckpt), "-o", str(out), "--bank", str(bank_file)]) == 0
    converted = load_file(out)
    assert set(converted) == {"w", "b", "tied"} and torch.equal(converted["w"], state["state_dict"]["w"])
    marker, paths = canaries
    target = tmp_path / "evil.safetensors"
    assert main(["convert", str(paths["payload in data.pkl.pt"]), "-o", str(target), "--bank", str(bank_file)]) == 4
    assert not target.exists() and not marker.exists()
