"""Facts about a model file (LoRA, Checkpoint, embedding), gathered without trusting it.

`inspect_model` never raises for a bad file: what is wrong goes into ``problems`` (a
malformed safetensors file) or ``pickle.unsafe`` (a pickle that would import something
other than tensors). Header-only mode reads ``8 + N`` bytes of a safetensors file.
"""

from __future__ import annotations

import mmap
import os
import pickletools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from guard.extract.hashes import PREADV, FileHashes, HashJob, hash_buffer
from guard.extract.lora import WORDS, Fingerprint, as_float32, fingerprint_buffer
from guard.extract.lora_keys import group_layers, layer_part, split_fused
from guard.extract.pickle_scan import PickleReport, is_tar, scan_file
from guard.extract.safetensors_header import (MAX_HEADER, MalformedModel, SafetensorsHeader, declared_length, open_regular,
                                 parse_header, read_header)

SAFETENSORS_SUFFIXES = {".safetensors", ".sft"}
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl"}
MODEL_SUFFIXES = SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES
#: Files up to this size are fingerprinted (LoRAs); larger ones are Checkpoints.
MAX_FINGERPRINT_BYTES = 2 * 1024 ** 3
MAX_PICKLE_BYTES = 8 * 1024 ** 3


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


def inspect_model(path: str | os.PathLike, metadata_only: bool = False, want_fingerprint: bool = True,
                  blake3: bool = True) -> ModelReport:
    report = ModelReport(os.fspath(path))
    try:
        fh, size = open_regular(path)
    except MalformedModel as exc:
        report.problems.append(exc.reason)
        return report
    with fh:
        head = fh.read(9)  # the header length and the JSON's opening brace
        fh.seek(0)
        suffix = Path(path).suffix.lower()
        if _read_as_pickle(head, suffix):
            if _plausible_safetensors(head):
                report.problems.append("a safetensors header that is also a zip archive (a polyglot): torch.load "
                                       "and safetensors would read different contents")
            elif suffix in SAFETENSORS_SUFFIXES:
                report.problems.append("a pickle-based file named like a safetensors file")
            _inspect_pickle(report, fh, size, metadata_only, blake3)
        else:
            if is_tar(fh.read(512)):
                report.problems.append("a file that is also a tar archive (a polyglot): torch.load would open "
                                       "it as an old tar checkpoint and unpickle its members")
            fh.seek(0)
            if suffix in PICKLE_SUFFIXES and _plausible_safetensors(head):
                report.problems.append(f"a safetensors file named {suffix}: loaders choose by suffix, and "
                                       "torch.load would read it as a pickle; rename it .safetensors")
            _inspect_safetensors(report, fh, size, head, metadata_only, want_fingerprint, blake3)
            if report.problems and head[:1] in _PICKLE_OPENERS and not _plausible_safetensors(head):
                # Not safetensors, and it opens like a pickle: what would a pickle loader run?
                fh.seek(0)
                _inspect_pickle(report, fh, size, True, blake3)
                report.container = "safetensors"
    return report


#: First bytes of a pickle: every opcode pickletools knows (protocol 0 has no PROTO opcode).
_PICKLE_OPENERS = frozenset(bytes([op.code.encode("latin-1")[0]]) for op in pickletools.opcodes)


def _read_as_pickle(head: bytes, suffix: str) -> bool:
    # torch.load decides "zip" by these four bytes alone, so they win even over a plausible
    # safetensors header (whose length can spell them). A safetensors header length can start
    # with 0x80 (and 0x02: "pickle protocol 2"), so the brace that opens its JSON comes next.
    if head[:4] == b"PK\x03\x04":
        return True
    if _plausible_safetensors(head):
        return False
    return head[:1] == b"\x80" or suffix in PICKLE_SUFFIXES


def _plausible_safetensors(head: bytes) -> bool:
    return len(head) == 9 and int.from_bytes(head[:8], "little") <= MAX_HEADER and head[8:] == b"{"


def _inspect_safetensors(report: ModelReport, fh, size: int, head: bytes, metadata_only: bool, want_fp: bool,
                         blake3: bool) -> None:
    report.container = "safetensors"
    if metadata_only or size > _KEEP_SCRATCH or not PREADV:
        # The header first; then, unless it is bad or all that is wanted, the hashes.
        parsed = _parse_header(report, lambda: read_header(fh, size))
        if parsed is None or metadata_only:
            return
        data = _scratch(size) if _wants_fingerprint(report, want_fp, size) else None
        job = HashJob(fh, parsed[0].data_start, blake3, into=data)
        report.hashes = job.finish(None if data is None else lambda: _fingerprint(report, *parsed, data))
    else:
        # A file of ordinary size (every common LoRA) is read once, into memory, and hashed; its
        # header is parsed from those bytes and the fingerprint taken while the second hash
        # finishes, so neither adds wall time on two cores.
        data = _scratch(size)
        try:
            n = declared_length(head[:8], size)
        except MalformedModel as exc:
            report.problems.append(exc.reason)
            return
        data[:len(head)] = head
        job = HashJob(fh, 8 + n, blake3, into=data, have=len(head))
        parsed = []

        def meanwhile() -> None:
            parsed.append(_parse_header(report, lambda: parse_header(bytes(data[8:8 + n]), size)))
            if parsed[0] is not None and _wants_fingerprint(report, want_fp, size):
                _fingerprint(report, *parsed[0], data)

        report.hashes = job.finish(meanwhile)
        if parsed == [None]:  # a bad header: the hashes of a file that is not one are no use
            report.hashes = None
            return
    if report.hashes.size != size:
        report.fingerprint = None
        report.problems.append(f"file changed while being read ({report.hashes.size} of {size} bytes)")


def _parse_header(report: ModelReport, parse: Callable[[], SafetensorsHeader]) \
        -> tuple[SafetensorsHeader, dict] | None:
    """The header and its LoRA layers, with what they say put in the report; None if bad."""
    try:
        header = parse()
    except MalformedModel as exc:
        report.problems.append(exc.reason)
        return None
    layers = group_layers(header.tensors)
    report.metadata = dict(header.metadata)
    report.tensors = len(header.tensors)
    report.format, report.base_model = identify(header, layers)
    return header, layers


def _wants_fingerprint(report: ModelReport, want_fp: bool, size: int) -> bool:
    lora_like = report.format.startswith(("kohya", "peft", "diffusers", "lycoris", "dora"))
    return want_fp and lora_like and size <= MAX_FINGERPRINT_BYTES


def _fingerprint(report: ModelReport, header: SafetensorsHeader, layers: dict, data: memoryview) -> None:
    try:
        report.fingerprint = _fingerprint_from(header, layers, data)
    except ValueError as exc:
        report.problems.append(str(exc))


_local = threading.local()
_KEEP_SCRATCH = 512 * 1024 ** 2


def _scratch(size: int) -> memoryview:
    """A per-thread reusable read buffer: fresh memory costs a page fault per 4 KiB."""
    if size > _KEEP_SCRATCH:
        return memoryview(np.empty(size, dtype=np.uint8))
    buf = getattr(_local, "buffer", None)
    if buf is None or len(buf) < size:
        buf = _local.buffer = np.empty(max(size, 64 * 1024 ** 2), dtype=np.uint8)
    return memoryview(buf)[:size]


def _fingerprint_from(header: SafetensorsHeader, layers: Mapping[str, Mapping[str, str]],
                      data: memoryview) -> Fingerprint:
    infos = split_fused(header.tensors)
    if infos is not header.tensors:  # fused Flux layers, fingerprinted per projection
        layers = group_layers(infos)

    def load(key: str) -> np.ndarray:
        info = infos[key]
        if info.dtype not in WORDS:
            raise ValueError(f"tensor {key!r} has dtype {info.dtype}, not a float type a LoRA uses")
        raw = data[header.data_start + info.begin:header.data_start + info.end]
        return as_float32(np.frombuffer(raw, dtype=WORDS[info.dtype]), info.dtype).reshape(info.shape)

    return fingerprint_buffer(layers, infos, data, header.data_start, load)


def _inspect_pickle(report: ModelReport, fh, size: int, metadata_only: bool, blake3: bool) -> None:
    report.format = "pickle-checkpoint"
    if size > MAX_PICKLE_BYTES:
        report.pickle = PickleReport(unsafe=[f"pickle-based file of {size} bytes is over the "
                                             f"{MAX_PICKLE_BYTES}-byte limit; convert it to safetensors"])
        return
    if size == 0:
        report.pickle = scan_file(b"")
        return
    # Mapped, not read: the gate touches the archive's directory and its pickles, and the
    # hashes stream over the rest, so memory stays bounded whatever the file holds.
    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            report.pickle = scan_file(view)
            report.container = {"zip": "zip-pickle", "legacy": "legacy-pickle", "tar": "tar"}.get(
                report.pickle.container, "pickle")
            if not metadata_only:
                report.hashes = hash_buffer(view, None, blake3)
        finally:
            view.release()


# Identification --------------------------------------------------------------------------------
_PRE_PEFT_DOWN = ("_lora.down.weight", ".lora.down.weight", ".lora_linear_layer.down.weight")


def identify(header: SafetensorsHeader, layers: Mapping[str, Mapping[str, str]] | None = None) \
        -> tuple[str, str | None]:
    """(format, base-model family) from key names, shapes and training metadata.

    ``layers``: `group_layers` of the header's tensors, when the caller has it already.
    """
    tensors = header.tensors
    layers = group_layers(tensors) if layers is None else layers
    lora_keys = sum(map(len, layers.values()))  # a key and its twin under another naming count once
    parts: set[str] = set().union(*layers.values())
    downs = [p["down"] for p in layers.values() if "down" in p]
    if lora_keys and lora_keys >= len(tensors) / 2:
        if {"w1a", "w2a"} & parts:
            fmt = "lycoris-loha"
        elif {"k1", "k1a", "k2", "k2a"} & parts:
            fmt = "lycoris-lokr"
        elif "diff" in parts:
            fmt = "lycoris-full"
        elif "dora" in parts:
            fmt = "dora"
        elif any(".lora_A" in key for key in downs):
            fmt = "peft-lora"
        elif any(key.endswith(_PRE_PEFT_DOWN) for key in downs):
            fmt = "diffusers-lora"  # diffusers' own formats before it moved to PEFT
        elif any(len(shape := tensors[key].shape) == 4 and shape[2] > 1 for key in downs):
            fmt = "kohya-locon"
        else:
            fmt = "kohya-lora"
    elif "emb_params" in tensors or "clip_l" in tensors or "clip_g" in tensors \
            or any(k.startswith("string_to_param") for k in tensors):
        fmt = "textual-inversion"
    elif any(k.startswith(("model.diffusion_model.", "first_stage_model.", "conditioner.", "double_blocks.",
                           "cond_stage_model.", "joint_blocks.")) for k in tensors):
        fmt = "checkpoint"
    else:
        fmt = "unknown"
    return fmt, _base_model(header)


_FAMILY_FROM_METADATA = (("flux", "flux"), ("sd3", "sd3"), ("xl", "sdxl"), ("sd_v2", "sd2"),
                         ("stable-diffusion-v2", "sd2"), ("sd_v1", "sd1"), ("stable-diffusion-v1", "sd1"))
# Flux and SD3 have no UNet cross-attention, so their key names are looked at first.
_FAMILY_FROM_TRANSFORMER_KEYS = (("double_blocks", "flux"), ("single_blocks", "flux"),
                                 ("single_transformer_blocks", "flux"), ("joint_blocks", "sd3"))
_CROSS_ATTENTION_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
#: Hidden width of a diffusers-named transformer's image attention: SD3 Medium / 3.5 Medium,
#: SD3.5 Large, Flux. (Their diffusers LoRA keys share every name.)
_TRANSFORMER_WIDTH = {1536: "sd3", 2432: "sd3", 3072: "flux"}
_FAMILY_FROM_KEYS = (("lora_te2_", "sdxl"), ("text_encoder_2", "sdxl"), ("conditioner.embedders.1", "sdxl"),
                     ("lora_unet_input_blocks", "sdxl"), ("clip_g", "sdxl"), ("cond_stage_model.model.", "sd2"),
                     ("cond_stage_model.transformer.", "sd1"))


def _base_model(header: SafetensorsHeader) -> str | None:
    meta = " ".join(header.metadata.get(k, "") for k in ("ss_base_model_version", "modelspec.architecture")).lower()
    for needle, family in _FAMILY_FROM_METADATA:
        if needle in meta:
            return family
    keys = "\n".join(header.tensors)
    for needle, family in _FAMILY_FROM_TRANSFORMER_KEYS:
        if needle in keys:
            return family
    # The UNet's cross-attention context width, or a transformer's hidden width, names the
    # family whatever the layer naming.
    for key, info in header.tensors.items():
        if ("to_k" in key or "to_q" in key) and len(info.shape) == 2 and layer_part(key) is not None:
            layer, part = layer_part(key)
            if part != "down":
                continue
            if layer.endswith("attn2_to_k") and info.shape[-1] in _CROSS_ATTENTION_WIDTH:
                return _CROSS_ATTENTION_WIDTH[info.shape[-1]]
            if layer.startswith("transformer_transformer_blocks_") and layer.endswith("_attn_to_q") \
                    and info.shape[-1] in _TRANSFORMER_WIDTH:
                return _TRANSFORMER_WIDTH[info.shape[-1]]
    for needle, family in _FAMILY_FROM_KEYS:
        if needle in keys:
            return family
    return None
