"""Recognising taken-down items: exact hashes, PDQ near-duplicates, LoRA fingerprints.

HMA's shape: an index is *built* from the takedown list's rows and then *queried*; it is
rebuilt when the rows change (`TakedownList.generation`, which follows other processes'
writes), so a takedown made by `guard takedown add` beside a running server is seen by the
server's next check.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from guard.extract.lora import Fingerprint, KeepDown
from guard.extract.pdq import distances
from guard.state.takedowns import Takedown, TakedownList


@dataclass(frozen=True)
class TakedownIndex:
    """The search structures over one snapshot of the takedown list."""

    by_sha256: dict[str, list[Takedown]]
    by_tensor_sha256: dict[str, list[Takedown]]
    fingerprinted: tuple[Takedown, ...]
    pdq_entries: tuple[Takedown, ...]
    pdq_hashes: np.ndarray  # [n, 32] packed bits

    @classmethod
    def build(cls, entries: Sequence[Takedown]) -> "TakedownIndex":
        files: dict[str, list[Takedown]] = {}
        tensors: dict[str, list[Takedown]] = {}
        for e in entries:
            if e.sha256:
                files.setdefault(e.sha256, []).append(e)
            if e.tensor_sha256:
                tensors.setdefault(e.tensor_sha256, []).append(e)
        with_pdq = tuple(e for e in entries if e.pdq)
        hashes = np.frombuffer(b"".join(e.pdq for e in with_pdq), dtype=np.uint8).reshape(len(with_pdq), 32)
        return cls(files, tensors, tuple(e for e in entries if e.fingerprint), with_pdq, hashes)

    def by_hash(self, sha256: str | None, tensor_sha256: str | None) -> list[tuple[str, Takedown]]:
        """Exact matches: ``("file_hash" | "tensor_hash", entry)``; a file hash match wins."""
        hits = [("file_hash", e) for e in self.by_sha256.get(sha256 or "", [])]
        seen = {e.id for _, e in hits}
        hits += [("tensor_hash", e) for e in self.by_tensor_sha256.get(tensor_sha256 or "", []) if e.id not in seen]
        return sorted(hits, key=lambda ke: ke[1].id)

    def by_pdq(self, hashes: np.ndarray, max_distance: int) -> list[tuple[int, Takedown]]:
        """Taken-down images within ``max_distance`` bits of any of ``hashes`` ([k, 32] packed)."""
        found = [(int(d), self.pdq_entries[i]) for i, d in enumerate(distances(hashes, self.pdq_hashes))
                 if d <= max_distance]
        return sorted(found, key=lambda de: de[0])

    def by_fingerprint(self, fingerprint: Fingerprint, floor: float,
                       substantial: float) -> list[tuple[KeepDown, Takedown]]:
        """Taken-down LoRAs whose work the upload contains at ``floor`` or more, best first."""
        scored = [(fingerprint.contains(e.fingerprint, substantial), e) for e in self.fingerprinted]
        return sorted(((m, e) for m, e in scored if m.score >= floor), key=lambda me: -me[0].score)


class TakedownMatcher:
    """The current `TakedownIndex` of a takedown list, rebuilt when its rows change."""

    def __init__(self, store: TakedownList):
        self.store = store
        self._lock = threading.Lock()
        self._index: TakedownIndex | None = None
        self._generation = -1

    def index(self) -> TakedownIndex:
        entries = self.store.entries()  # re-reads the rows when any process wrote
        with self._lock:
            if self._index is None or self.store.generation != self._generation:
                self._index, self._generation = TakedownIndex.build(entries), self.store.generation
            return self._index

    @property
    def has_images(self) -> bool:
        return len(self.index().pdq_entries) > 0
