import pytest
import torch

from guard.match.embedding import BF16_FROM, EmbeddingIndex


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def reference(q, e, owner, floor):
    """The plain definition: max cosine per owner, kept when at least floor."""
    sim = q @ e.float().T
    out = []
    for row in sim:
        best = {}
        for j, s in enumerate(row.tolist()):
            o = int(owner[j])
            if s >= floor and s > best.get(o, -9):
                best[o] = s
        out.append(best)
    return out


@pytest.mark.parametrize("size", [50, BF16_FROM + 100])
def test_search_equals_the_definition(size):
    d = 32
    e = unit(size, d, 0).half()
    owner = torch.arange(size) // 7
    # Queries near some exemplars (with noise), plus random ones.
    q = torch.cat([e[[3, 700 % size, size - 1]].float() + 0.05 * unit(3, d, 1), unit(5, d, 2)])
    q = torch.nn.functional.normalize(q, dim=1)
    floor = 0.5
    got = EmbeddingIndex(e, owner).search(q, floor)
    want = reference(q, e, owner, floor)
    for g, w in zip(got, want):
        assert {m.owner: round(m.score, 4) for m in g} == {o: round(s, 4) for o, s in w.items()}
        assert [m.score for m in g] == sorted((m.score for m in g), reverse=True)
        for m in g:
            assert int(owner[m.exemplar]) == m.owner


def test_bf16_path_never_drops_a_pair_at_the_floor():
    """Scores just above the floor survive the bf16 pre-selection (its margin covers rounding)."""
    d = 64
    size = BF16_FROM + 1
    e = unit(size, d, 3).half()
    owner = torch.arange(size)
    q = unit(16, d, 4)
    exact = q @ e.float().T
    # Put the floor between the 20th and 21st best exact scores of each query in turn.
    for i in range(16):
        top = exact[i].topk(21).values
        floor = (top[19].item() + top[20].item()) / 2
        found = EmbeddingIndex(e, owner).search(q[i:i + 1], floor)[0]
        assert len(found) == 20


def test_empty_bank_and_empty_queries():
    idx = EmbeddingIndex(torch.empty((0, 8), dtype=torch.float16), torch.empty(0, dtype=torch.long))
    assert idx.search(unit(2, 8, 0), 0.5) == [[], []]
    idx = EmbeddingIndex(unit(4, 8, 0), torch.arange(4))
    assert idx.search(torch.empty((0, 8)), 0.5) == []


def test_dimension_mismatch_is_named():
    with pytest.raises(ValueError, match="dimension 16"):
        EmbeddingIndex(unit(4, 8, 0), torch.arange(4)).search(unit(1, 16, 0), 0.5)
