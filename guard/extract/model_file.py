"""Facts about a model file (LoRA, Checkpoint, embedding), gathered without trusting it.

`inspect_model` never raises for a bad file: what is wrong goes into ``problems`` (a
malformed safetensors file) or ``pickle.unsafe`` (a pickle that would import something
other than tensors). Header-only mode reads ``8 + N`` bytes of a safetensors file.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .hashes import FileHashes, hash_file
from .lora import Fingerprint, fingerprint, group_layers
from .pickle_scan import PickleReport, scan_file
from .safetensors_header import MalformedModel, SafetensorsHeader, open_regular, read_header

SAFETENSORS_SUFFIXES = {".safetensors", ".sft"}
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl"}
MODEL_SUFFIXES = SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES
#: Files up to this size are fingerprinted (LoRAs); larger ones are Checkpoints.
MAX_FINGERPRINT_BYTES = 2 * 1024 ** 3
MAX_PICKLE_BYTES = 8 * 1024 ** 3
_TORCH_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


@dataclass
class ModelReport:
    path: str
    container: str = "unknown"  # safetensors, zip-pickle, legacy-pickle, pickle, unknown
    format: str = "unknown"
    base_model: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    tensors: int = 0
    hashes: FileHashes | None = None
    fingerprint: Fingerprint | None = None
    pickle: PickleReport | None = None
    problems: list[str] = field(default_factory=list)

    def facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"container": self.container, "format": self.format,
                                 "base_model": self.base_model, "tensors": self.tensors}
        if self.hashes:
            facts.update(self.hashes.to_dict())
        if self.fingerprint is not None:
            facts["fingerprint_layers"] = len(self.fingerprint.layers)
        return facts


def is_model_file(path: Path) -> bool:
    return path.suffix.lower() in MODEL_SUFFIXES


def inspect_model(path: str | os.PathLike, metadata_only: bool = False, want_fingerprint: bool = True
                  ) -> ModelReport:
    report = ModelReport(os.fspath(path))
    try:
        fh, size = open_regular(path)
    except MalformedModel as exc:
        report.problems.append(exc.reason)
        return report
    with fh:
        head = fh.read(8)
        fh.seek(0)
        if _looks_pickled(head, Path(path)):
            if Path(path).suffix.lower() in SAFETENSORS_SUFFIXES:
                report.problems.append("a pickle-based file named like a safetensors file")
            _inspect_pickle(report, fh, size, metadata_only)
        else:
            _inspect_safetensors(report, fh, size, metadata_only, want_fingerprint)
    return report


def _looks_pickled(head: bytes, path: Path) -> bool:
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return True
    return path.suffix.lower() in PICKLE_SUFFIXES and not _plausible_safetensors(head)


def _plausible_safetensors(head: bytes) -> bool:
    return len(head) == 8 and int.from_bytes(head, "little") <= 100 * 1024 * 1024


def _inspect_safetensors(report: ModelReport, fh, size: int, metadata_only: bool, want_fp: bool) -> None:
    report.container = "safetensors"
    try:
        header = read_header(fh, size)
    except MalformedModel as exc:
        report.problems.append(exc.reason)
        return
    report.metadata = dict(header.metadata)
    report.tensors = len(header.tensors)
    report.format, report.base_model = identify(header)
    if metadata_only:
        return
    lora_like = report.format.startswith(("kohya", "peft", "lycoris", "dora"))
    keep = want_fp and lora_like and size <= MAX_FINGERPRINT_BYTES
    buffer = bytearray(size) if keep else None

    def collect(offset: int, block: memoryview) -> None:
        buffer[offset:offset + len(block)] = block

    report.hashes = hash_file(fh, header.data_start, collect if keep else None)
    if keep:
        try:
            report.fingerprint = _fingerprint_from(header, memoryview(buffer))
        except ValueError as exc:
            report.problems.append(str(exc))


def _fingerprint_from(header: SafetensorsHeader, data: memoryview) -> Fingerprint:
    def load(key: str) -> torch.Tensor:
        info = header.tensors[key]
        if info.dtype not in _TORCH_DTYPES:
            raise ValueError(f"tensor {key!r} has dtype {info.dtype}, not a float type a LoRA uses")
        raw = data[header.data_start + info.begin:header.data_start + info.end]
        if not raw:
            return torch.zeros(info.shape, dtype=_TORCH_DTYPES[info.dtype])
        return torch.frombuffer(raw, dtype=_TORCH_DTYPES[info.dtype]).reshape(info.shape)

    return fingerprint(group_layers(header.tensors), load)


def _inspect_pickle(report: ModelReport, fh, size: int, metadata_only: bool) -> None:
    if size > MAX_PICKLE_BYTES:
        report.container = "pickle"
        report.pickle = PickleReport(unsafe=[f"pickle-based file of {size} bytes is over the "
                                             f"{MAX_PICKLE_BYTES}-byte limit; convert it to safetensors"])
        return
    data = fh.read()
    report.pickle = scan_file(data)
    report.container = {"zip": "zip-pickle", "legacy": "legacy-pickle"}.get(report.pickle.container, "pickle")
    report.format = "pickle-checkpoint"
    if not metadata_only:
        report.hashes = hash_file(io.BytesIO(data), None)


# Identification --------------------------------------------------------------------------------
def identify(header: SafetensorsHeader) -> tuple[str, str | None]:
    """(format, base-model family) from key names, shapes and training metadata."""
    keys = header.tensors.keys()
    layers = group_layers(keys)
    parts = {p for layer in layers.values() for p in layer}
    if layers and sum(len(p) for p in layers.values()) >= len(keys) / 2:
        if {"w1a", "w2a"} & parts:
            fmt = "lycoris-loha"
        elif {"k1", "k1a", "k2", "k2a"} & parts:
            fmt = "lycoris-lokr"
        elif "diff" in parts:
            fmt = "lycoris-full"
        elif "dora" in parts:
            fmt = "dora"
        elif any(".lora_A" in k for k in keys):
            fmt = "peft-lora"
        elif any(len(header.tensors[p["down"]].shape) == 4 and header.tensors[p["down"]].shape[2] > 1
                 for p in layers.values() if "down" in p):
            fmt = "kohya-locon"
        else:
            fmt = "kohya-lora"
    elif {"emb_params"} & set(keys) or {"clip_l", "clip_g"} & set(keys) or any(k.startswith("string_to_param")
                                                                              for k in keys):
        fmt = "textual-inversion"
    elif any(k.startswith(("model.diffusion_model.", "first_stage_model.", "conditioner.", "double_blocks.",
                           "cond_stage_model.", "joint_blocks.")) for k in keys):
        fmt = "checkpoint"
    else:
        fmt = "unknown"
    return fmt, _base_model(header, layers)


def _base_model(header: SafetensorsHeader, layers) -> str | None:
    meta = " ".join(header.metadata.get(k, "") for k in ("ss_base_model_version", "modelspec.architecture")).lower()
    for needle, family in (("flux", "flux"), ("sd3", "sd3"), ("xl", "sdxl"), ("sd_v2", "sd2"),
                           ("stable-diffusion-v2", "sd2"), ("sd_v1", "sd1"), ("stable-diffusion-v1", "sd1")):
        if needle in meta:
            return family
    keys = " ".join(list(header.tensors)[:4000])
    if any(s in keys for s in ("double_blocks", "single_blocks", "single_transformer_blocks")):
        return "flux"
    if "joint_blocks" in keys:
        return "sd3"
    if any(s in keys for s in ("lora_te2_", "text_encoder_2", "conditioner.embedders.1", "lora_unet_input_blocks",
                               "clip_g")):
        return "sdxl"
    if "cond_stage_model.model." in keys:
        return "sd2"
    if "cond_stage_model.transformer." in keys:
        return "sd1"
    for name, parts in layers.items():  # cross-attention context width
        if name.endswith("attn2_to_k") and "down" in parts:
            width = header.tensors[parts["down"]].shape[-1] if header.tensors[parts["down"]].shape else 0
            return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(width)
    return None
