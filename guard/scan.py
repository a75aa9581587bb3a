"""Scanning catalogs of model files: finding them, and checking them on several cores.

Header parsing and metadata screening are pure Python, so one process uses one core;
`scan_files` spreads files over worker processes, each with its own `Guard` built from the
same bank, policy and state folder (no encoder is loaded: model files do not need one).
Verdicts come back in input order.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .extract.model_file import is_model_file
from .facade import Guard
from .verdict import Verdict

_worker: Guard | None = None


def find_model_files(paths: Sequence[str | os.PathLike], everything: bool = False) -> list[str]:
    """Files as given; folders: their model files (every file with ``everything``), sorted,
    without following symlinked folders (no loops)."""
    found: list[str] = []
    for raw in map(os.fspath, paths):
        if not os.path.isdir(raw):
            found.append(raw)
            continue
        for root, dirs, names in os.walk(raw, followlinks=False):
            dirs.sort()
            found += [os.path.join(root, n) for n in sorted(names) if everything or is_model_file(Path(n))]
    return found


def scan_files(files: Sequence[str], guard_args: Mapping[str, Any], workers: int = 1,
               check: Mapping[str, Any] | None = None, guard: Guard | None = None) -> Iterator[Verdict]:
    """Check model files, in order, on ``workers`` processes.

    Args:
        files: the files.
        guard_args: keyword arguments of `Guard.open` (bank, policy, state) for the workers.
        workers: processes; 1 checks in this process with ``guard`` (or one built from guard_args).
        check: keyword arguments of `Guard.check_model_file` (account, trigger_words, metadata_only).
    """
    check = dict(check or {})
    if workers <= 1 or len(files) < 2 * workers:
        local = guard or Guard.open(**guard_args)
        for path in files:
            yield local.check_model_file(path, **check)
        return
    chunk = max(1, min(64, len(files) // (workers * 8)))
    with ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(dict(guard_args),)) as pool:
        yield from pool.map(_check_one, files, [check] * len(files), chunksize=chunk)


def _start_worker(guard_args: dict) -> None:
    global _worker
    _worker = Guard.open(**guard_args)


def _check_one(path: str, check: dict) -> Verdict:
    return _worker.check_model_file(path, **check)
