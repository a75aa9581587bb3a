"""Scanning catalogs: model files on several cores, and re-checking a whole catalog.

Header parsing and metadata screening are pure Python, so one process uses one core;
`scan_files` spreads files over worker processes: forked from the caller's `Guard` where the
OS can fork (warm caches, no second bank load), else each building its own from the same
bank, policy and state folder (no encoder is loaded: model files do not need one). Each
worker has its own connections to the state folder. Verdicts come back in input order.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from guard.checks.bundles import MANIFEST
from guard.errors import ConfigError
from guard.extract.model_file import is_model_file
from guard.facade import Guard
from guard.extract.images import is_image
from guard.verdict import Surface, Verdict

_worker: Guard | None = None


def find_model_files(paths: Sequence[str | os.PathLike], everything: bool = False,
                     follow_links: bool = False) -> list[str]:
    """Files as given; folders: their model files (every file with ``everything``), sorted.

    A catalog scan does not follow symlinked folders. A loader does (``from_pretrained``
    reads a symlinked component folder), so ``follow_links`` walks them too, each real
    folder once (a link loop ends there).
    """
    found: list[str] = []
    for raw in map(os.fspath, paths):
        if not os.path.isdir(raw):
            found.append(raw)
            continue
        seen: set[str] = set()
        for root, dirs, names in os.walk(raw, followlinks=follow_links):
            real = os.path.realpath(root)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            dirs.sort()
            found += [os.path.join(root, n) for n in sorted(names) if everything or is_model_file(Path(n))]
    return found


def default_workers(files: int, metadata_only: bool) -> int:
    """Processes for a scan of ``files`` files on this machine.

    A full scan keeps two cores busy per file (its two hash streams), so one process per two
    cores; a header-only scan keeps one, so one per core, but only for jobs large enough to
    repay starting a pool (about 1,300 headers at 9,000 headers/s per process).
    """
    cores = os.cpu_count() or 1
    if metadata_only:
        return cores if files >= _POOL_FROM_HEADERS else 1
    return max(1, cores // 2)


_POOL_FROM_HEADERS = 1024


def scan_files(files: Sequence[str], guard_args: Mapping[str, Any], workers: int | None = 1,
               check: Mapping[str, Any] | None = None, guard: Guard | None = None) -> Iterator[Verdict]:
    """Check model files, in order, on ``workers`` processes.

    Args:
        files: the files.
        guard_args: keyword arguments of `Guard.open` (bank, policy, state) for the workers.
        workers: processes; 1 checks in this process with ``guard`` (or one built from
            guard_args); ``None`` picks `default_workers`.
        check: keyword arguments of `Guard.check_model_file` (account, trigger_words, metadata_only).
        guard: this process's guard. Where processes can be forked, workers inherit it, warm
            caches included, instead of loading the bank again; each opens its own connections
            to the state folder. As with any fork, other threads of this process must not be
            holding locks the workers need (the CLI has none; a server should scan from a
            process of its own).
    """
    global _worker
    check = dict(check or {})
    if workers is None:
        workers = default_workers(len(files), bool(check.get("metadata_only")))
    if workers <= 1 or len(files) < 2 * workers:
        local = guard or Guard.open(**guard_args)
        for path in files:
            yield local.check_model_file(path, **check)
        return
    chunk = max(1, min(64, len(files) // (workers * 8)))
    fork = guard is not None and "fork" in multiprocessing.get_all_start_methods()
    if fork:
        _worker = guard  # what the forked workers start from
        pool = ProcessPoolExecutor(workers, multiprocessing.get_context("fork"), initializer=_adopt_worker)
    else:
        pool = ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(dict(guard_args),))
    try:
        with pool:
            if fork:
                # Frozen objects are never collected in the workers: a collection would write
                # to every inherited object and copy the parent's memory page by page. A fork
                # pool starts all its workers at the first submission, inside map().
                gc.freeze()
            try:
                results = pool.map(_check_one, files, [check] * len(files), chunksize=chunk)
            finally:
                if fork:
                    gc.unfreeze()
            yield from results
    finally:
        _worker = None


def _start_worker(guard_args: dict) -> None:
    global _worker
    _worker = Guard.open(**guard_args)
    _one_thread()


def _adopt_worker() -> None:
    _inherited.append((_worker.takedowns, _worker.audit))  # the parent's connections: never closed here
    _worker.reopen_state()
    _one_thread()


def _one_thread() -> None:
    # One worker per core: a worker's own thread pools would only fight the other workers.
    # (A header-only scan never imports torch; the fingerprint's casts do, after this runs.)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _check_one(path: str, check: dict) -> Verdict:
    return _worker.check_model_file(path, **check)


_inherited: list = []


def catalog_items(catalog: str | os.PathLike) -> list[tuple[str, str, str]]:
    """``(kind, path, id)`` for every item of a catalog: a folder tree, or a JSONL index whose
    lines are ``{"path": ..., "id": ..., "type": "image" | "model" | "publication"}``."""
    root = Path(catalog)
    items: list[tuple[str, str, str]] = []
    if root.is_file():
        for n, line in enumerate(root.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                path = Path(entry["path"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ConfigError(f"catalog {root} line {n}: not an item ({exc}); "
                                  'expected {"path": ..., "id": ..., "type": ...}') from None
            path = path if path.is_absolute() else root.parent / path
            kind = entry.get("type") or _kind(path) or "unknown"
            items.append((str(kind), str(path), str(entry.get("id") or path)))
        return items
    if not root.is_dir():
        raise ConfigError(f"catalog {root} is neither a folder nor a JSONL index")
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        if MANIFEST in names:  # a publication: checked whole
            items.append(("publication", folder, folder))
            dirs[:] = []
            continue
        for name in sorted(names):
            path = os.path.join(folder, name)
            kind = _kind(Path(path))
            if kind:
                items.append((kind, path, path))
    return items


def _kind(path: Path) -> str:
    if path.is_dir() or path.suffix.lower() == ".json":
        return "publication"
    if is_model_file(path):
        return "model"
    return "image" if is_image(path) else ""


def rescan(guard: Guard, catalog: str | os.PathLike,
           items: Sequence[tuple[str, str, str]] | None = None) -> Iterator[Verdict]:
    """Re-check an existing catalog against the current bank and takedown list (``items``:
    `catalog_items` already read)."""
    items = catalog_items(catalog) if items is None else items
    images = [(path, ident) for kind, path, ident in items if kind == "image"]
    for start in range(0, len(images), 64):
        chunk = images[start:start + 64]
        yield from guard.check_images([p for p, _ in chunk], surface=Surface.COVER_IMAGE,
                                      subjects=[i for _, i in chunk])
    for kind, path, ident in items:
        if kind == "model":
            yield guard.check_model_file(path, subject=ident)
        elif kind == "publication":
            try:
                yield guard.check_publication(path)
            except ConfigError as exc:  # a catalog entry that points nowhere is still an answer
                yield guard.refuse(ident, Surface.PUBLICATION, str(exc))
        elif kind != "image":  # an item dropped would be an item never checked
            yield guard.refuse(ident, Surface.PUBLICATION, f"catalog item type {kind!r} is not one the guard "
                                                             "checks (image, model, publication)")
