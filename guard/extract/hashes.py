"""Every hash a model hub uses, from one read of the file.

* ``sha256`` — of the whole file; ``autov2`` is its first 10 hex digits (A1111, Civitai).
* ``tensor_sha256`` — of everything after the safetensors header (kohya's
  ``sshs_model_hash``, A1111's AutoV3), for safetensors files only.
* ``autov1`` — SHA-256 of the 64 KiB at offset 1 MiB, first 8 hex digits (old A1111).
* ``blake3`` — when the ``blake3`` package is installed.

The file is read once, in blocks. The whole-file SHA-256 runs on the calling thread while
the other digests run on a worker thread over the same blocks (both libraries release the
GIL on large updates), so on two cores the extra hashes cost little wall time.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable

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


def hash_file(fh: BinaryIO, data_start: int | None, on_block: Callable[[int, memoryview], None] | None = None
              ) -> FileHashes:
    """Hash an open file from its start.

    Args:
        fh: the file, opened in binary mode.
        data_start: where the tensor data starts (``8 + header length``) for safetensors,
            ``None`` for other files (no tensor hash then).
        on_block: also called with ``(offset, block)`` for every block, on the worker thread
            (for consumers such as the LoRA fingerprint that need the same bytes).
    """
    full = hashlib.sha256()
    tensor = hashlib.sha256() if data_start is not None else None
    autov1 = hashlib.sha256()
    b3 = _blake3.blake3() if _blake3 is not None else None

    def side(offset: int, block: memoryview) -> None:
        end = offset + len(block)
        if tensor is not None and end > data_start:
            tensor.update(block[max(0, data_start - offset):])
        if end > _AUTOV1_AT and offset < _AUTOV1_AT + _AUTOV1_LEN:
            autov1.update(block[max(0, _AUTOV1_AT - offset):_AUTOV1_AT + _AUTOV1_LEN - offset])
        if b3 is not None:
            b3.update(block)
        if on_block is not None:
            on_block(offset, block)

    fh.seek(0)
    offset = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-hash") as pool:
        pending = None
        while True:
            block = memoryview(fh.read(BLOCK))
            if not block:
                break
            job = pool.submit(side, offset, block)
            full.update(block)
            if pending is not None:
                pending.result()
            pending = job
            offset += len(block)
        if pending is not None:
            pending.result()
    return FileHashes(full.hexdigest(), tensor.hexdigest() if tensor is not None else None,
                      autov1.hexdigest()[:8], b3.hexdigest() if b3 is not None else None, offset)
