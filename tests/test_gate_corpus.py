"""The pickle gate against the canary corpus (tests/canaries.py), through the facade and the CLI.

Every payload would create the marker file if loaded; every one must block with a reason that
names the opcode, the global or the container rule, and the marker must never appear. Benign
files of every format pass. Each file is checked in bounded time, and a directory scan of the
whole corpus answers for every file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guard import Action, Signal

from .canaries import build

# A payload's reason names what was refused: an opcode at its byte offset, an imported global,
# or the container rule (zip, tar, frame, stack).
_NAMED = re.compile(r"\b[A-Z_]{3,}[0-9]?\b at byte \d+|imports [\w.]+\.\w+|calls [\w.]+|zip|tar archive|"
                    r"frame|stack|STOP|truncated|pickle stream")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    marker = folder / "MARKER"
    return marker, build(folder / "files", marker)


@pytest.mark.slow
def test_every_payload_and_hostile_file_blocks_and_benign_files_pass(guard, corpus):
    marker, files = corpus
    kinds = {kind for _, kind in files.values()}
    assert kinds == {"payload", "hostile", "benign"} and len(files) >= 200
    problems, slowest = [], (0.0, "")
    for name, (path, kind) in files.items():
        start = time.monotonic()
        verdict = guard.check_model_file(path)
        elapsed = time.monotonic() - start
        slowest = max(slowest, (elapsed, name))
        reasons = [f.evidence.get("reason", "") for f in verdict.findings
                   if f.signal in (Signal.PICKLE, Signal.FORMAT)]
        if kind == "benign":
            if verdict.action is not Action.ALLOW:
                problems.append(f"benign {name}: {verdict.action.value} {reasons}")
            continue
        if verdict.action is not Action.BLOCK or not reasons or not all(reasons):
            problems.append(f"{kind} {name}: {verdict.action.value} {[f.to_dict() for f in verdict.findings]}")
        elif kind == "payload" and not any(_NAMED.search(r) for r in reasons):
            problems.append(f"payload {name}: no reason names the opcode, global or rule: {reasons}")
    assert not problems, "\n".join(problems)
    assert slowest[0] < 10, f"slowest file: {slowest[1]} took {slowest[0]:.1f}s"
    assert not marker.exists()


@pytest.mark.slow
def test_guard_scan_of_the_corpus_answers_for_every_file(bank_file, corpus, tmp_path):
    """The real CLI over the corpus folder: one verdict per file, exit 4, nothing aborts."""
    marker, files = corpus
    folder = next(iter(files.values()))[0].parent
    on_disk = sorted(p for p in folder.iterdir() if p.is_file())
    proc = subprocess.run([sys.executable, "-m", "guard.adapters.cli", "scan", str(folder), "--all", "--json",
                           "--bank", str(bank_file), "--workers", "1"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 4, proc.stderr[-2000:]
    verdicts = {v["subject"]: v for v in map(json.loads, proc.stdout.splitlines())}
    assert sorted(verdicts) == [str(p) for p in on_disk]
    by_path = {str(path): kind for path, kind in files.values()}
    wrong = [s for s, v in verdicts.items()
             if (v["action"] == "allow") != (by_path[s] == "benign") or v["error"] is not None]
    assert not wrong, wrong[:10]
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def _last(opcode: str, data: bytes) -> int:
    """Where ``opcode`` last occurs in a pickle (offsets follow the marker path's length)."""
    import pickletools

    return max(pos for op, _, pos in pickletools.genops(data) if op.name == opcode)


def test_each_class_is_named_in_its_reason(guard, tmp_path):
    """A few classes whose reasons must say exactly what was refused."""
    from .canaries import payloads, torch_zip, legacy

    marker = tmp_path / "MARKER"
    evil = payloads(marker)
    expect = {
        "INST os.system": "INST at byte",
        "OBJ after GLOBAL": f"OBJ at byte {_last('OBJ', evil['OBJ after GLOBAL'])}: calls os.system",
        "OBJ stack desync": "os.system",
        "EXT1 unregistered": "EXT1 at byte",
        "EXT1 registered": "copyreg registry",
        "FRAME straddled": "past the end of its frame",
        "FRAME nested": "before the previous frame ended",
        "REDUCE on a call's result": "REDUCE at byte",
        "BUILD on an imported class": "modifies the imported torch.Size",
        "opcode after STOP": "follow the pickle's STOP",
        "nested pickle through pickle.loads": "pickle.loads",
    }
    for name, needle in expect.items():
        path = tmp_path / f"{name.replace(' ', '_')}.pt"
        path.write_bytes(evil[name])
        reasons = " | ".join(f.evidence.get("reason", "") for f in guard.check_model_file(path).findings)
        assert needle in reasons, (name, reasons)
    for name, data, needle in [
        ("upper", torch_zip(evil["os.system p2"], name="archive/DATA.PKL"), f"archive/DATA.PKL: REDUCE at byte {_last('REDUCE', evil['os.system p2'])}: calls posix.system"),
        ("legacy", legacy(evil["INST os.system"]), "INST at byte"),
    ]:
        path = tmp_path / f"{name}.ckpt"
        path.write_bytes(data)
        reasons = " | ".join(f.evidence.get("reason", "") for f in guard.check_model_file(path).findings)
        assert needle in reasons, (name, reasons)
    assert not marker.exists()


def test_raw_storages_that_look_like_pickles_are_not_walked(guard, tmp_path):
    """torch zips hold pickles only in *.pkl members: a storage starting with 0x80 is data."""
    import torch

    state = {f"w{i}": torch.tensor([float(i)]) for i in range(4)}
    state["looks_like_pickle"] = torch.frombuffer(bytearray(b"\x80\x02cos\nsystem\n"), dtype=torch.uint8)
    path = tmp_path / "unet.bin"
    torch.save(state, path)
    verdict = guard.check_model_file(path)
    assert verdict.action is Action.ALLOW, [f.to_dict() for f in verdict.findings]
    assert verdict.facts["container"] == "zip-pickle"


def test_every_routed_extension_reaches_the_gate(guard, tmp_path):
    """The same payload under every suffix the gate routes, a pickle named .safetensors too."""
    from .canaries import PICKLE_EXTENSIONS, payloads

    data = payloads(tmp_path / "MARKER")["INST os.system"]
    for suffix in (*PICKLE_EXTENSIONS, ".pkl", ".sft"):
        path = tmp_path / f"evil{suffix}"
        path.write_bytes(data)
        verdict = guard.check_model_file(path)
        assert verdict.action is Action.BLOCK and any(f.signal is Signal.PICKLE for f in verdict.findings), suffix


def test_empty_and_stopless_files_are_never_allowed(guard, tmp_path):
    for name, data in {"empty.ckpt": b"", "empty.pt": b"", "nostop.pkl": b"\x80\x02}q\x00",
                       "proto_only.bin": b"\x80\x02"}.items():
        path = tmp_path / name
        path.write_bytes(data)
        verdict = guard.check_model_file(path)
        assert verdict.action is Action.BLOCK, name
        assert all(f.evidence.get("reason") for f in verdict.findings), name


def test_real_torch_checkpoints_pass_with_their_globals(guard, tmp_path):
    import torch

    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    for legacy_format in (False, True):
        path = tmp_path / f"model_{legacy_format}.pth"
        torch.save(module.state_dict(), path, _use_new_zipfile_serialization=not legacy_format)
        verdict = guard.check_model_file(path)
        assert verdict.action is Action.ALLOW, [f.to_dict() for f in verdict.findings]
        assert "collections.OrderedDict" in verdict.facts["pickle_globals"]


def test_a_directory_scan_survives_a_file_that_breaks_the_gate(guard, tmp_path, monkeypatch):
    """An exception inside the gate for one file is that file's error verdict; the rest go on."""
    from guard.extract import pickle_scan

    real = pickle_scan.scan_file

    def flaky(data):
        if bytes(data[:4]) == b"BOOM":
            raise RuntimeError("injected failure in the gate")
        return real(data)

    monkeypatch.setattr("guard.extract.model_file.scan_file", flaky)
    (tmp_path / "a.ckpt").write_bytes(b"BOOM and more")
    import torch

    torch.save({"w": torch.ones(2)}, tmp_path / "b.pt")
    from guard.adapters.scan import find_model_files, scan_files

    verdicts = list(scan_files(find_model_files([tmp_path]), {}, 1, guard=guard))
    assert [Path(v.subject).name for v in verdicts] == ["a.ckpt", "b.pt"]
    assert verdicts[0].action is Action.BLOCK and "injected failure" in verdicts[0].error
    assert verdicts[1].action is Action.ALLOW


def test_safetensors_strictness_matches_the_reference(guard, tmp_path):
    """Lone surrogates and headers over 100,000,000 bytes are refused for exactly that reason."""
    import struct

    from .canaries import _lone_surrogate

    cases = {"surrogate.safetensors": (_lone_surrogate(), "lone surrogate"),
             "long.safetensors": (struct.pack("<Q", 100_000_008) + b"{", "over the 100000000-byte limit")}
    for name, (data, needle) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        verdict = guard.check_model_file(path)
        assert verdict.action is Action.BLOCK and needle in verdict.findings[0].evidence["reason"], name
