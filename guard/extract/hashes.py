"""Every hash a model hub uses, from one read of the file.

* ``sha256`` — of the whole file; ``autov2`` is its first 10 hex digits (A1111, Civitai).
* ``tensor_sha256`` — of everything after the safetensors header (kohya's
  ``sshs_model_hash``, A1111's AutoV3), for safetensors files only.
* ``autov1`` — SHA-256 of the 64 KiB at offset 1 MiB, first 8 hex digits (old A1111).
* ``blake3`` — when the ``blake3`` package is installed.

The file is read once. The whole-file SHA-256 runs on the calling thread while a reader
thread reads and feeds the tensor-data SHA-256 over the same bytes (hashlib releases the GIL
on large updates), so on two cores the second hash costs little wall time. Files small
enough to hold (LoRAs) are read into memory once, so the fingerprint can use the same bytes
while the second hash finishes.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import queue
import threading
from dataclasses import dataclass
from typing import BinaryIO, Callable

try:
    import blake3 as _blake3
except ImportError:  # optional: the [hashes] extra
    _blake3 = None

BLOCK = 8 * 1024 * 1024
FIRST_BLOCK = 1024 * 1024
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


class HashJob:
    """The hashes of one file, computed by this thread and a helper thread.

    Creating the job starts the helper: it reads the file block by block (into ``into``
    when given, else through a small ring of buffers) and hands each block to the caller's
    thread, then feeds it to the tensor SHA-256, AutoV1 and BLAKE3. `finish` feeds the
    whole-file SHA-256 on the calling thread. Reads and hashes release the GIL, so on two
    cores the two SHA-256 streams run side by side. With ``into`` the helper reads the whole
    file ahead of its own hashing, so the caller's hash never waits on it, and then hashes it
    in one call, so it never needs the GIL while the caller's Python work (``meanwhile``)
    runs.

    Args:
        fh: the file, opened in binary mode. Where the OS has ``preadv`` the helper reads by
            offset, so the caller may go on reading ``fh`` meanwhile.
        data_start: where the tensor data starts (``8 + header length``) for safetensors,
            ``None`` for other files (no tensor hash then).
        blake3: also compute BLAKE3 (when the package is installed).
        into: a writable buffer of the file's size to read into, for callers that need the
            bytes afterwards (the LoRA fingerprint).
        have: how many bytes at the start of ``into`` the caller has read already (the
            header length it peeked at), so no byte is read twice; with ``into`` only.
    """

    def __init__(self, fh: BinaryIO, data_start: int | None, blake3: bool = True,
                 into: memoryview | None = None, have: int = 0):
        self.hashes = _Hashes(data_start, blake3)
        self.into = into
        self._blocks: queue.SimpleQueue = queue.SimpleQueue()
        self._freed: queue.SimpleQueue = queue.SimpleQueue()
        self._outcome: dict = {}
        if not PREADV:
            fh.seek(0)
        self._helper = threading.Thread(target=self._read_and_hash, name="guard-hash", daemon=True,
                                        args=(fh, into if into is not None else _ring(), have))
        self._helper.start()

    def finish(self, meanwhile: Callable[[], None] | None = None) -> FileHashes:
        """Wait for the hashes. ``meanwhile`` (the fingerprint) runs on this thread once every
        byte is in ``into`` and the whole-file hash is done, while the helper may still be
        hashing; it is not run when the file turned out shorter than ``into``."""
        while (item := self._blocks.get()) is not None:
            self.hashes.main(item)
            self._freed.put(None)
        if meanwhile is not None and self.into is not None and self._outcome.get("size") == len(self.into):
            meanwhile()
        self._helper.join()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self.hashes.result(self._outcome["size"])

    def _read_and_hash(self, fh: BinaryIO, target, have: int) -> None:
        read_ahead = self.into is not None  # whole file in memory: read it all, then hash
        fd = fh.fileno() if PREADV else None
        offset, block_start = have, 0  # a block handed on starts at block_start, reading at offset
        try:
            for count in itertools.count():
                if read_ahead:
                    # Small first blocks, doubling: the caller's hash starts as soon as possible.
                    view = target[offset:block_start + min(BLOCK, FIRST_BLOCK << count)]
                else:
                    if count >= len(target):  # reuse the oldest buffer once the caller is done with it
                        self._freed.get()
                    view = memoryview(target[count % len(target)])
                n = (os.preadv(fd, [view], offset) if fd is not None else fh.readinto(view)) if len(view) else 0
                if not n and block_start == offset:
                    break
                block = target[block_start:offset + n] if read_ahead else view[:n]
                self._blocks.put(block)
                if not read_ahead:
                    self.hashes.side(offset, block)
                offset += n
                block_start = offset
            self._outcome["size"] = offset
            self._blocks.put(None)
            if read_ahead:
                # One call over the whole file: the GIL is not needed again until it is done,
                # so this thread never waits for it while the caller runs Python.
                self.hashes.side(0, target[:offset])
        except BaseException as exc:  # raised again on the calling thread
            self._outcome["error"] = exc
        finally:
            if "size" not in self._outcome:
                self._blocks.put(None)


#: Whether reads can go by offset, leaving the file position to the caller.
PREADV = hasattr(os, "preadv")
_local = threading.local()


def _ring() -> list[bytearray]:
    """Per-thread read buffers, reused: fresh memory costs a page fault per 4 KiB."""
    ring = getattr(_local, "ring", None)
    if ring is None:
        ring = _local.ring = [bytearray(BLOCK) for _ in range(4)]
    return ring


def hash_buffer(data: memoryview, data_start: int | None, blake3: bool = True) -> FileHashes:
    """Hash a whole file held in memory: the whole-file and tensor-data SHA-256 run at once."""
    hashes = _Hashes(data_start, blake3)
    side = threading.Thread(target=hashes.side, args=(0, data), name="guard-hash", daemon=True)
    side.start()
    hashes.main(data)
    side.join()
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

    def side(self, offset: int, block: memoryview) -> None:
        # BLAKE3 rides here: the calling thread has the fingerprint to run after its hash.
        if self.b3 is not None:
            self.b3.update(block)
        end = offset + len(block)
        if self.tensor is not None and end > self.data_start:
            self.tensor.update(block[max(0, self.data_start - offset):])
        if end > _AUTOV1_AT and offset < _AUTOV1_AT + _AUTOV1_LEN:
            self.autov1.update(block[max(0, _AUTOV1_AT - offset):_AUTOV1_AT + _AUTOV1_LEN - offset])

    def result(self, size: int) -> FileHashes:
        return FileHashes(self.full.hexdigest(), self.tensor.hexdigest() if self.tensor is not None else None,
                          self.autov1.hexdigest()[:8], self.b3.hexdigest() if self.b3 is not None else None, size)
