"""Nearest exemplars by cosine similarity: the best exemplar per owner, exact above a floor.

The index never decides; it returns matches with exact scores and the policy turns them
into actions. Only scores at or above the policy's lowest threshold (the *floor*) can
become findings, so large banks are searched in two steps:

1. one int8 product ``[M, D] @ [D, B]`` (VNNI kernels; about 1.3x faster than bf16 and 4x
   faster than float32 on AVX-512 CPUs, and half the memory of a bf16 copy) gives every
   pair an *upper bound* on its score. The bound adds the worst case of the rounding of
   both sides (Cauchy-Schwarz on the rounding errors), so it can never be below the
   exact score. Rows and queries are first turned by one fixed random rotation, which
   keeps every inner product but spreads the few outlier coordinates CLIP embeddings
   have over all of them, so int8 rounds each about equally and the bound stays tight;
2. the pairs whose bound reaches the floor are rescored exactly in float32 from the
   stored rows. No pair at or above the floor can be lost to quantisation.

Which kernel runs is measured, not assumed: int8 products are fast where the CPU has VNNI
(or AMX) and no faster than float32 on AVX2-only CPUs, where the bound would only add work.
`kernel_for` times both on a small sample once per process and the index uses int8 only
where it is clearly faster. Elsewhere a wide bank gets ``coarse32``: the coarse stage below
in float32 (a third of the full product's work, bounded the same way), then the kept pairs
rescored exactly; a narrow or small bank, or a coarse stage that stops paying, gets the plain
float32 product (exact by definition). An index on a GPU (``device``: the encoder's) uses ``fp16``: the rows on the
device, one fp16 product per chunk for candidates within `_FP16_SLACK` of the floor, then
exact float32 rescoring. ``GUARD_MATCH_KERNEL=int8|coarse32|fp32|fp16`` forces one.

Wide banks first run a coarse stage (`_Coarse`): the same bound over a third of the
width, the bank's principal directions plus one coordinate holding each vector's residual
length (so the product also bounds what the directions miss, by Cauchy-Schwarz). It
dismisses most rows at a third of the cost when the bank allows it; the kept rows then go
through step 1. A stage that stops paying (it kept over a quarter of the rows) pauses.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from functools import cache

import torch

from guard.errors import ConfigError

#: The int8 kernel is used where its product is at least this much faster than float32's.
INT8_WINS_FROM = 1.5
KERNELS = ("int8", "coarse32", "fp32", "fp16")
#: The fp16 kernel's candidates come within this of the floor: its product rounds the query to
#: fp16 (at most 2**-11 of a unit vector) and may accumulate in reduced precision on a GPU;
#: every candidate is rescored exactly in float32 from the stored rows, so this is speed only.
_FP16_SLACK = 1e-2

#: Banks smaller than this are searched with one float32 product (faster for them).
PRESELECT_FROM = 16_384
#: Banks this wide and up get the coarse stage, over a third of their dimensions.
COARSE_FROM_DIM = 256
#: A batch whose coarse stage kept more than this share of the rows did not pay for it: the
#: next `_COARSE_PAUSE` batches run the full int8 product alone, then it is tried again.
_COARSE_KEEPS_AT_MOST = 0.25
_COARSE_PAUSE = 16
#: Exemplar rows per chunk, so the ``[rows, B]`` block stays in cache-friendly sizes.
CHUNK_ROWS = 8_192
#: Pairs rescored per step: gathering more at once spills the caches and runs ~10x slower.
_RESCORE_PAIRS = 2_048
#: Rows quantised per step when the index is built.
_BUILD_ROWS = 2_048
#: Absolute slack on the bound for float32 rounding in the rotation (at most ~5e-5 on a
#: score) and in the scaling arithmetic (~1e-7).
_FP32_SLACK = 1e-3
_INT8_MAX = 127


@cache
def int8_product_available() -> bool:
    """Whether this torch multiplies int8 matrices on the CPU (``torch._int_mm``)."""
    try:
        a = torch.ones((2, 8), dtype=torch.int8)
        return bool(torch.equal(torch._int_mm(a, a.T.contiguous()), torch.full((2, 2), 8, dtype=torch.int32)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@cache
def _measured_kernel(dim: int) -> str:
    """The faster kernel on this CPU for ``dim``-wide rows: a few milliseconds, once."""
    if not int8_product_available():
        return "coarse32"
    g = torch.Generator().manual_seed(0)
    rows, queries = torch.randn(4096, dim, generator=g), torch.randn(64, dim, generator=g)
    rows8, queries8 = rows.clamp(-1, 1).mul(127).round().to(torch.int8), \
        queries.clamp(-1, 1).mul(127).round().to(torch.int8).T.contiguous()
    queries32 = queries.T.contiguous()

    def best(product) -> float:
        product()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            product()
            times.append(time.perf_counter() - start)
        return min(times)

    fp32, int8 = best(lambda: rows @ queries32), best(lambda: torch._int_mm(rows8, queries8))
    return "int8" if fp32 >= INT8_WINS_FROM * int8 else "coarse32"


def kernel_for(dim: int) -> str:
    """The kernel an index of ``dim``-wide rows uses: ``GUARD_MATCH_KERNEL`` if set, else the
    one measured faster on this CPU."""
    forced = os.environ.get("GUARD_MATCH_KERNEL", "").strip().lower()
    if forced:
        # Configuration, not a check's outcome: it propagates past the fail-closed boundary.
        if forced not in KERNELS:
            raise ConfigError(f"GUARD_MATCH_KERNEL={forced!r} is not one of {', '.join(KERNELS)}; "
                              "fix: unset it to let the index measure, or pick one of those")
        if forced == "int8" and not int8_product_available():
            raise ConfigError("GUARD_MATCH_KERNEL=int8: this torch has no int8 product on the CPU; "
                              "fix: GUARD_MATCH_KERNEL=fp32, or unset it")
        return forced
    return _measured_kernel(dim)


@dataclass(frozen=True)
class Match:
    """The best exemplar of one owner for one query."""

    query: int
    owner: int
    exemplar: int
    score: float


class _Rotation:
    """A fixed random orthogonal map ``R1 ⊗ R2`` of a ``dim = a * b`` space, applied as two
    small products (a dense ``dim x dim`` one costs ~10x more to build a large bank with)."""

    def __init__(self, dim: int):
        self.a = max(f for f in range(1, math.isqrt(dim) + 1) if dim % f == 0)
        self.b, self.dim = dim // self.a, dim
        g = torch.Generator().manual_seed(0)
        self.left, self.right = (torch.linalg.qr(torch.randn(n, n, generator=g))[0] for n in (self.a, self.b))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, dim]`` float32 -> the rotated rows (a new tensor)."""
        n, a, b = x.shape[0], self.a, self.b
        y = (x.reshape(n * a, b) @ self.right).reshape(n, a, b)
        return (y.transpose(1, 2).reshape(n * b, a) @ self.left).reshape(n, self.dim)


class _Int8Rows:
    """Rows quantised to int8 with a scale each, plus what bounds their rounding error.

    Row i (rotated, unless ``rotate`` is off) is stored as ``x8 = round(x / r)`` with
    ``r = max|x| / 127``; ``y = x / r``.
    For a query quantised as ``u = q / s``, ``q8 = round(u)``:
    ``q.x = s r (q8.x8 + (u - q8).y + q8.(y - x8)) <= s r (q8.x8 + |u - q8| |y| + |q8| |y - x8|)``.
    """

    def __init__(self, rows: torch.Tensor, rotate: bool = True):
        n = rows.shape[0]
        self.rotation = _Rotation(rows.shape[1]) if rotate else None
        self.x8 = torch.empty(rows.shape, dtype=torch.int8)
        self.scale = torch.empty(n)
        self.norm = torch.empty(n)  # |y|
        self.error = torch.empty(n)  # |y - x8|
        # Small steps: a few MB of float32 at a time stays in cache and reuses its memory.
        for start in range(0, n, _BUILD_ROWS):
            y = rows[start:start + _BUILD_ROWS].to(torch.float32, copy=True)  # scaled in place below
            if self.rotation is not None:
                y = self.rotation(y)
            r = y.abs().amax(1).clamp_min_(torch.finfo(torch.float32).tiny).div_(_INT8_MAX)
            y.div_(r[:, None])
            x8 = y.round()
            part = slice(start, start + y.shape[0])
            self.x8[part], self.scale[part], self.norm[part] = x8, r, y.norm(dim=1)
            self.error[part] = y.sub_(x8).norm(dim=1)

    def candidates(self, q: torch.Tensor, floor: float,
                   rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(query, row) pairs whose score may reach ``floor``: a superset of those that do.
        ``rows``: look at these rows only."""
        if self.rotation is not None:
            q = self.rotation(q)
        s = q.abs().max().clamp_min(torch.finfo(torch.float32).tiny) / _INT8_MAX
        u = q / s
        q8 = u.round()
        x8, scale, norm, error = ((self.x8, self.scale, self.norm, self.error) if rows is None else
                                  (t.index_select(0, rows) for t in (self.x8, self.scale, self.norm, self.error)))
        # One threshold per row, valid for every query of the batch, so that a row is
        # dismissed by its largest product alone (cheap) and only survivors are looked at.
        threshold = ((floor - _FP32_SLACK) / (s * scale)
                     - (u - q8).norm(dim=1).max() * norm - q8.norm(dim=1).max() * error)
        q8 = q8.to(torch.int8).T.contiguous()
        parts = []
        for start in range(0, x8.shape[0], CHUNK_ROWS):
            block = torch._int_mm(x8[start:start + CHUNK_ROWS], q8)  # [rows, B] int32
            bound = threshold[start:start + block.shape[0]]
            near = (block.amax(1) >= bound).nonzero().flatten()
            if near.numel():
                ri, qi = (block[near] >= bound[near, None]).nonzero(as_tuple=True)
                parts.append((qi, near[ri] + start))
        if not parts:
            return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
        qi, ei = (torch.cat(p) for p in zip(*parts))
        return qi, ei if rows is None else rows[ei]


class _Coarse:
    """Each row as its coordinates in the bank's top principal directions plus one more, its
    residual length outside them: ``x' = [P'x, |x_r|]``, in int8.

    ``q.x = (P'q).(P'x) + q_r.x_r <= (P'q).(P'x) + |q_r| |x_r| = q'.x'`` (Cauchy-Schwarz on
    the residuals), so the int8 bound on ``q'.x'`` bounds the score, pair by pair, at a third
    of the full product's cost. How many rows it dismisses depends on the bank: its residuals
    must be short or its unrelated scores far below the floor.
    """

    def __init__(self, rows: torch.Tensor, dim: int, quantise: bool = True):
        # Float32 error (Higham's bound, n u per product of length n, unit vectors): ``P'x``
        # is off by at most D u sqrt(dim) in length (7e-4 for 768 -> 256), so a short product
        # by twice that and ``|x|^2 - |P'x|^2`` by about as much. The first comes off the
        # floor, the second goes under the residual's square root (so it is never short);
        # both with a 1.5x margin.
        self.slack = 3.0 * rows.shape[1] * 2.0 ** -24 * math.sqrt(dim)
        # Principal directions from (up to) 32,768 evenly spaced rows: enough to find the
        # directions; exactness never depends on them, only the speed does.
        sample = rows[:: max(1, rows.shape[0] // 32_768)].float()
        self.basis = torch.linalg.eigh(sample.T @ sample)[1][:, 1 - dim:].contiguous()  # [D, dim - 1]
        short = torch.empty((rows.shape[0], dim))
        for start in range(0, rows.shape[0], _BUILD_ROWS):
            x = rows[start:start + _BUILD_ROWS].float()
            short[start:start + x.shape[0]] = self._shorten(x)
        # int8 where int8 products are fast; float32 (exact but for rounding) elsewhere.
        self.rows = _Int8Rows(short) if quantise else None
        self.short = None if quantise else short

    def _shorten(self, x: torch.Tensor) -> torch.Tensor:
        low = x @ self.basis
        residual = ((x * x).sum(1) - (low * low).sum(1)).clamp_min(0).add(self.slack).sqrt()
        return torch.cat([low, residual[:, None]], 1)

    def candidates(self, q: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rows is not None:
            return self.rows.candidates(self._shorten(q), floor - self.slack)
        return _float_candidates(self.short, self._shorten(q), floor - self.slack - _FP32_SLACK)


def _float_candidates(rows: torch.Tensor, q: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, row) pairs whose float32 product reaches ``threshold``, in cache-sized chunks."""
    qt = q.T.contiguous()
    parts = []
    for start in range(0, rows.shape[0], CHUNK_ROWS):
        block = rows[start:start + CHUNK_ROWS] @ qt  # [rows, B]
        near = (block.amax(1) >= threshold).nonzero().flatten()
        if near.numel():
            ri, qi = (block[near] >= threshold).nonzero(as_tuple=True)
            parts.append((qi, near[ri] + start))
    if not parts:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    qi, ei = (torch.cat(p) for p in zip(*parts))
    return qi, ei


class EmbeddingIndex:
    """Exemplar embeddings with the owner (character) of each row.

    Args:
        embeddings: ``[M, D]`` fp16 or fp32, L2-normalised rows.
        owner: ``[M]`` owner index of each row.
        preselect_from: bank size from which the int8 pre-selection is used.
        coarse_dim: width of the coarse stage, the residual included (default: a third,
            for banks at least `COARSE_FROM_DIM` wide; 0: none).

    Attributes:
        kernel: ``"int8"`` (int8 bounds, then exact rescoring), ``"coarse32"`` (a float32
            bound over a third of the width, then exact rescoring) or ``"fp32"`` (the exact
            product), as `kernel_for` chose it for this CPU; small or narrow banks use ``"fp32"``.
    """

    def __init__(self, embeddings: torch.Tensor, owner: torch.Tensor, preselect_from: int = PRESELECT_FROM,
                 coarse_dim: int | None = None, device: str | torch.device | None = None):
        if embeddings.ndim != 2 or owner.shape != (embeddings.shape[0],):
            raise ValueError(f"embeddings {tuple(embeddings.shape)} and owner {tuple(owner.shape)} do not fit")
        self.size, self.dim = embeddings.shape
        self.owner = owner.long()
        self._owners = int(self.owner.max()) + 1 if self.size else 0
        self._exact = embeddings
        if coarse_dim is None:
            coarse_dim = self.dim // 3 // 32 * 32 if self.dim >= COARSE_FROM_DIM else 0  # 768 -> 256
        self.device = torch.device(device or "cpu")
        if self.device.type != "cpu" and not os.environ.get("GUARD_MATCH_KERNEL"):
            chosen = "fp16"  # a GPU: its fp16 products are the fast ones, whatever the bank's size
        else:
            chosen = kernel_for(self.dim) if self.size >= preselect_from else "fp32"
        if chosen == "coarse32" and not 1 < coarse_dim < self.dim:
            chosen = "fp32"  # too narrow for a coarse stage
        self.kernel = chosen
        # The plain product reads float32 rows: converting fp16 chunks at every search made it
        # slower than the definition it stands for. (The other kernels rescore few rows.)
        self._exact32 = embeddings.float() if chosen == "fp32" else None
        self._device_rows = embeddings.to(self.device, torch.float16) if chosen == "fp16" else None
        self._int8 = _Int8Rows(embeddings) if chosen == "int8" else None
        self._coarse = (_Coarse(embeddings, coarse_dim, quantise=chosen == "int8")
                        if chosen != "fp32" and 1 < coarse_dim < self.dim else None)
        self._coarse_pause = 0

    def search(self, queries: torch.Tensor, floor: float) -> list[list[Match]]:
        """For each query, the best exemplar of every owner scoring at least ``floor``.

        Returns one list per query, sorted by descending score; scores are exact float32.
        """
        q = queries.float()
        n = q.shape[0]
        if self.size == 0 or n == 0:
            return [[] for _ in range(n)]
        if q.shape[1] != self.dim:
            raise ValueError(f"query dimension {q.shape[1]} does not match the bank dimension {self.dim}")
        if not torch.isfinite(q).all():  # NaN compares false with every floor: it would match nothing
            raise ValueError("a query embedding holds NaN or infinite values (an fp16 overflow in the encoder?)")
        if self.kernel == "fp32":
            return self._best_per_owner(n, *self._full_product(q, floor))
        if self.kernel == "fp16":
            qi, ei = self._fp16_candidates(q, floor)
        elif self.kernel == "coarse32":
            pairs = self._coarse_pairs(q, floor)
            if pairs is None:  # the coarse stage is not paying on this bank: the plain product
                return self._best_per_owner(n, *self._full_product(q, floor))
            qi, ei = pairs
        else:
            qi, ei = self._candidates(q, floor)
        scores = self._rescore(q, qi, ei)
        keep = scores >= floor
        return self._best_per_owner(n, qi[keep], ei[keep], scores[keep])

    def coarse_kept(self, queries: torch.Tensor, floor: float) -> int | None:
        """How many rows the coarse stage keeps for these queries (``None``: no coarse stage):
        a measure of how well it suits this bank."""
        if self._coarse is None:
            return None
        return int(self._coarse.candidates(queries.float(), floor)[1].unique().numel())

    def _candidates(self, q: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs that may reach the floor: the rows the coarse stage keeps, bounded again at
        full width (or all rows, when there is no coarse stage or it has not been paying)."""
        if self._coarse is not None and self._coarse_pause == 0:
            rows = self._coarse.candidates(q, floor)[1].unique()
            if rows.numel() <= _COARSE_KEEPS_AT_MOST * self.size:
                return self._int8.candidates(q, floor, rows=rows)
            self._coarse_pause = _COARSE_PAUSE
        elif self._coarse_pause:
            self._coarse_pause -= 1
        return self._int8.candidates(q, floor)

    def _coarse_pairs(self, q: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The float32 coarse stage's pairs, or ``None`` while it is paused (it kept too many)."""
        if self._coarse_pause:
            self._coarse_pause -= 1
            return None
        qi, ei = self._coarse.candidates(q, floor)
        if ei.unique().numel() > _COARSE_KEEPS_AT_MOST * self.size:
            self._coarse_pause = _COARSE_PAUSE
            return None
        return qi, ei

    def _fp16_candidates(self, q: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs whose fp16 product on the device comes within `_FP16_SLACK` of the floor."""
        qd = q.to(self.device, torch.float16).T.contiguous()
        rows, threshold, parts = self._device_rows, floor - _FP16_SLACK, []
        step = CHUNK_ROWS * (8 if self.device.type != "cpu" else 1)  # a GPU takes larger blocks at once
        for start in range(0, self.size, step):
            block = rows[start:start + step] @ qd
            ri, qi = (block.float() >= threshold).nonzero(as_tuple=True)
            parts.append((qi.cpu(), ri.cpu() + start))
        qi, ei = (torch.cat(p) for p in zip(*parts))
        return qi, ei

    def _full_product(self, q: torch.Tensor, floor: float):
        parts = []
        rows = self._exact32 if self._exact32 is not None else self._exact
        for start in range(0, self.size, CHUNK_ROWS):
            block = q @ rows[start:start + CHUNK_ROWS].float().T  # [B, rows]
            qi, ei = (block >= floor).nonzero(as_tuple=True)
            parts.append((qi, ei + start, block[qi, ei]))
        qi, ei, scores = (torch.cat(p) for p in zip(*parts))
        return qi, ei, scores

    def _rescore(self, q: torch.Tensor, qi: torch.Tensor, ei: torch.Tensor) -> torch.Tensor:
        scores = torch.empty(qi.numel())
        for start in range(0, qi.numel(), _RESCORE_PAIRS):
            part = slice(start, start + _RESCORE_PAIRS)
            rows = self._exact.index_select(0, ei[part]).float()
            scores[part] = (q.index_select(0, qi[part]) * rows).sum(1)
        return scores

    def _best_per_owner(self, n: int, qi, ei, scores) -> list[list[Match]]:
        out: list[list[Match]] = [[] for _ in range(n)]
        if qi.numel() == 0:
            return out
        # One group per (query, owner); keep each group's highest-scoring exemplar.
        groups, inverse = torch.unique(qi * self._owners + self.owner[ei], return_inverse=True)
        best = torch.full((groups.numel(),), -2.0).scatter_reduce(0, inverse, scores, "amax")
        winner = torch.empty(groups.numel(), dtype=torch.long)
        is_best = (scores == best[inverse]).nonzero(as_tuple=True)[0]
        winner[inverse[is_best]] = is_best
        for b, e, s in zip(qi[winner].tolist(), ei[winner].tolist(), scores[winner].tolist()):
            out[b].append(Match(b, int(self.owner[e]), e, s))
        for matches in out:
            matches.sort(key=lambda m: -m.score)
        return out
