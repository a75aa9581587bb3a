"""Every hash a model hub uses, from one read of the file.

* ``sha256`` — of the whole file; ``autov2`` is its first 10 hex digits (A1111, Civitai).
* ``tensor_sha256`` — of everything after the safetensors header (kohya's
  ``sshs_model_hash``, A1111's AutoV3), for safetensors files only.
* ``autov1`` — SHA-256 of the 64 KiB at offset 1 MiB, first 8 hex digits (old A1111).
* ``blake3`` — when the ``blake3`` package is installed.

The file is read once. The whole-file SHA-256 runs on the calling thread while the
tensor-data SHA-256 runs on a worker thread over the same bytes (hashlib releases the GIL on
large updates), so on two cores the second hash costs little wall time. Files small enough
to hold (LoRAs) are read into memory once, so the fingerprint can use the same bytes.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

try:
    import blake3 as _blake3
except ImportError:  # optional: the [hashes] extra
    _blake3 = None

BLOCK = 8 * 1024 * 1024
_AUTOV1_AT, _AUTOV1_LEN = 0x100000, 0x10000


@dataclass(frozen=True)
class FileHashes:
    sha256: str
    tensor_sha256: str | None
    autov1: str
    blake3: str | None
    size: int

    @property
    def autov2(self) -> str:
        return self.sha256[:10]

    @property
    def autov3(self) -> str | None:
        return self.tensor_sha256[:12] if self.tensor_sha256 else None

    def to_dict(self) -> dict:
        return {"sha256": self.sha256, "autov2": self.autov2, "tensor_sha256": self.tensor_sha256,
                "autov3": self.autov3, "autov1": self.autov1, "blake3": self.blake3, "size": self.size}


def hash_file(fh: BinaryIO, data_start: int | None, blake3: bool = True,
              into: memoryview | None = None) -> FileHashes:
    """Hash an open file from its start, reading it once in blocks.

    Args:
        fh: the file, opened in binary mode.
        data_start: where the tensor data starts (``8 + header length``) for safetensors,
            ``None`` for other files (no tensor hash then).
        blake3: also compute BLAKE3 (when the package is installed).
        into: a writable buffer of the file's size to read into, for callers that need the
            bytes afterwards (the LoRA fingerprint); without it blocks are discarded.
    """
    hashes = _Hashes(data_start, blake3)
    fh.seek(0)
    offset = 0
    # The two SHA-256 passes are the bulk of the work: one per core; BLAKE3 rides with the first.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-hash") as pool:
        pending = None
        while True:
            if into is not None:
                block = into[offset:offset + (fh.readinto(into[offset:offset + BLOCK]) or 0)]
            else:
                block = memoryview(fh.read(BLOCK))
            if not block:
                break
            job = pool.submit(hashes.side, offset, block)
            hashes.main(block)
            if pending is not None:
                pending.result()
            pending = job
            offset += len(block)
        if pending is not None:
            pending.result()
    return hashes.result(offset)


def hash_buffer(data: memoryview, data_start: int | None, blake3: bool = True) -> FileHashes:
    """Hash a whole file held in memory: the whole-file and tensor-data SHA-256 run at once."""
    hashes = _Hashes(data_start, blake3)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-hash") as pool:
        job = pool.submit(hashes.side, 0, data)
        hashes.main(data)
        job.result()
    return hashes.result(len(data))


class _Hashes:
    def __init__(self, data_start: int | None, blake3: bool):
        self.data_start = data_start
        self.full = hashlib.sha256()
        self.tensor = hashlib.sha256() if data_start is not None else None
        self.autov1 = hashlib.sha256()
        self.b3 = _blake3.blake3() if (blake3 and _blake3 is not None) else None

    def main(self, block: memoryview) -> None:
        self.full.update(block)
        if self.b3 is not None:
            self.b3.update(block)

    def side(self, offset: int, block: memoryview) -> None:
        end = offset + len(block)
        if self.tensor is not None and end > self.data_start:
            self.tensor.update(block[max(0, self.data_start - offset):])
        if end > _AUTOV1_AT and offset < _AUTOV1_AT + _AUTOV1_LEN:
            self.autov1.update(block[max(0, _AUTOV1_AT - offset):_AUTOV1_AT + _AUTOV1_LEN - offset])

    def result(self, size: int) -> FileHashes:
        return FileHashes(self.full.hexdigest(), self.tensor.hexdigest() if self.tensor is not None else None,
                          self.autov1.hexdigest()[:8], self.b3.hexdigest() if self.b3 is not None else None, size)
