import pytest
import torch

from guard.match.embedding import PRESELECT_FROM, EmbeddingIndex, _Int8Rows, _Rotation
from guard.testing.synthetic import clustered_embeddings


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


def assert_same(got, want):
    for g, w in zip(got, want, strict=True):
        assert {m.owner for m in g} == set(w)
        for m in g:
            assert m.score == pytest.approx(w[m.owner], abs=1e-5)


@pytest.mark.parametrize("size", [50, PRESELECT_FROM + 100])
def test_search_equals_the_definition(size):
    d = 32
    e = unit(size, d, 0).half()
    owner = torch.arange(size) // 7
    # Queries near some exemplars (with noise), plus random ones.
    q = torch.cat([e[[3, 700 % size, size - 1]].float() + 0.05 * unit(3, d, 1), unit(5, d, 2)])
    q = torch.nn.functional.normalize(q, dim=1)
    floor = 0.5
    got = EmbeddingIndex(e, owner).search(q, floor)
    assert_same(got, reference(q, e, owner, floor))
    for g in got:
        assert [m.score for m in g] == sorted((m.score for m in g), reverse=True)
        for m in g:
            assert int(owner[m.exemplar]) == m.owner


def test_preselection_never_drops_a_pair_at_the_floor():
    """Scores just above the floor survive the int8 pre-selection (its bound covers rounding)."""
    d = 64
    size = PRESELECT_FROM + 1
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


@pytest.mark.parametrize("floor", [-0.2, 0.3, 0.8, 0.95])
def test_int8_preselection_equals_the_definition_on_clustered_rows(floor):
    d, size = 48, 3_000
    # CLIP-like rows, one in 50 dominated by one coordinate (a worst case for int8 scales).
    e = clustered_embeddings(size, d, seed=5)
    e[::50, 5] += 40.0
    e = torch.nn.functional.normalize(e, dim=1).half()
    owner = torch.arange(size) // 8
    q = torch.nn.functional.normalize(torch.cat([e[::301].float() + 0.1 * unit(10, d, 6), clustered_embeddings(6, d, seed=7)]), dim=1)
    assert_same(EmbeddingIndex(e, owner, preselect_from=0).search(q, floor), reference(q, e, owner, floor))


@pytest.mark.parametrize("side", ["row", "query"])
def test_int8_bound_covers_rounding_errors_that_all_point_one_way(side):
    """Each coordinate sits 0.49 above an integer step, so every rounding error has the same
    sign and they add up (~4% of the score): only the error terms of the bound keep the pair.
    (Without the rotation, which would otherwise scatter this careful alignment.)"""
    d = 64
    spiky = torch.tensor([127.0] + [10.49] * (d - 1))
    flat = torch.ones(d)
    row, query = (spiky, flat) if side == "row" else (flat, spiky)
    e = torch.nn.functional.normalize(row, dim=0)[None].half()
    q = torch.nn.functional.normalize(query, dim=0)[None]
    exact = (q @ e.float().T).item()
    qi, ei = _Int8Rows(e, rotate=False).candidates(q, exact - 1e-3)
    assert (qi.tolist(), ei.tolist()) == ([0], [0])


@pytest.mark.parametrize("dim", [768, 512, 48, 7])
def test_rotation_keeps_inner_products_and_spreads_an_outlier_coordinate(dim):
    rotation = _Rotation(dim)
    x, y = unit(20, dim, 14), unit(30, dim, 15)
    assert ((rotation(x) @ rotation(y).T) - x @ y.T).abs().max() < 1e-5
    spike = torch.zeros(1, dim)
    spike[0, dim // 3] = 1.0
    turned = rotation(spike)
    assert turned.norm().item() == pytest.approx(1.0, abs=1e-5)
    if dim >= 48:
        assert turned.abs().max() < 0.5  # no coordinate keeps most of the length


def test_rotation_tightens_the_bound_on_rows_with_an_outlier_coordinate():
    e = clustered_embeddings(4000, 256, seed=16).half()  # coordinate 0 carries ~0.8 of each row
    q = clustered_embeddings(16, 256, seed=17)
    exact = q @ e.float().T
    floor = exact.flatten().kthvalue(exact.numel() - 20).values.item()  # ~20 pairs reach it
    plain, turned = (_Int8Rows(e, rotate=r).candidates(q, floor)[0].numel() for r in (False, True))
    assert (exact >= floor).sum() <= turned < plain / 2


@pytest.mark.parametrize("floor", [0.3, 0.7, 0.9])
@pytest.mark.parametrize("bank", ["clustered", "random"])
def test_coarse_stage_equals_the_definition(bank, floor):
    d, size = 96, 6_000
    e = (clustered_embeddings(size, d, seed=18) if bank == "clustered" else unit(size, d, 18)).half()
    owner = torch.arange(size) // 8
    # Queries near exemplars, queries like the bank, and random ones (long residuals).
    q = torch.cat([e[::997].float() + 0.05 * unit(7, d, 19), clustered_embeddings(5, d, seed=20), unit(5, d, 21)])
    q = torch.nn.functional.normalize(q, dim=1)
    index = EmbeddingIndex(e, owner, preselect_from=0, coarse_dim=32)
    assert_same(index.search(q, floor), reference(q, e, owner, floor))


def test_default_index_of_a_wide_bank_uses_both_stages_and_equals_the_definition():
    size, d = PRESELECT_FROM + 100, 256
    e = clustered_embeddings(size, d, seed=24).half()
    owner = torch.arange(size) // 8
    q = torch.nn.functional.normalize(torch.cat([e[::3001].float() + 0.05 * unit(6, d, 25), unit(4, d, 26)]), dim=1)
    index = EmbeddingIndex(e, owner)
    assert index._coarse is not None and index._coarse.rows.x8.shape[1] == 64  # a third, in steps of 32
    assert_same(index.search(q, 0.8), reference(q, e, owner, 0.8))
    assert index._coarse_pause == 0  # the coarse stage did the dismissing
    assert_same(index.search(q, 0.5), reference(q, e, owner, 0.5))


def test_coarse_stage_dismisses_most_rows_and_pauses_when_it_does_not():
    d, size = 96, 6_000
    e = clustered_embeddings(size, d, seed=22).half()
    q = clustered_embeddings(16, d, seed=23)
    index = EmbeddingIndex(e, torch.arange(size), preselect_from=0, coarse_dim=32)
    kept = index.coarse_kept(q, 0.9)
    assert 0 < kept < 0.25 * size and EmbeddingIndex(e, torch.arange(size), preselect_from=0).coarse_kept(q, 0.9) is None
    index.search(q, 0.9)
    assert index._coarse_pause == 0
    # At a floor every row reaches, the stage cannot dismiss anything: it pauses, and the
    # answers stay exact meanwhile.
    found = index.search(q, -1.0)
    assert index._coarse_pause == 16 and sum(map(len, found)) == 16 * size
    for _ in range(16):
        index.search(q, 0.9)
    assert index._coarse_pause == 0


def test_a_float32_bank_is_left_as_it_was():
    e = unit(300, 16, 12)
    before = e.clone()
    q = e[:3] + 0.01 * unit(3, 16, 13)
    found = EmbeddingIndex(e, torch.arange(300), preselect_from=0).search(q, 0.9)
    assert torch.equal(e, before)
    assert_same(found, reference(q, e, torch.arange(300), 0.9))


def test_int8_bound_is_a_superset_and_still_prunes():
    d, size = 128, 20_000
    e = unit(size, d, 8).half()
    q = torch.cat([e[[1, 2, 3]].float(), unit(13, d, 9)])
    qi, ei = _Int8Rows(e).candidates(q, 0.5)
    exact = q @ e.float().T
    truth = set(zip(*(exact >= 0.5).nonzero(as_tuple=True)))
    got = set(zip(qi.tolist(), ei.tolist()))
    assert {(int(a), int(b)) for a, b in truth} <= got
    # Random 128-d rows score ~N(0, 0.09) against a query: almost every pair is dismissed.
    assert len(got) < 0.001 * exact.numel()


def test_empty_bank_and_empty_queries():
    idx = EmbeddingIndex(torch.empty((0, 8), dtype=torch.float16), torch.empty(0, dtype=torch.long))
    assert idx.search(unit(2, 8, 0), 0.5) == [[], []]
    idx = EmbeddingIndex(unit(4, 8, 0), torch.arange(4))
    assert idx.search(torch.empty((0, 8)), 0.5) == []


def test_non_finite_queries_are_refused():
    q = unit(2, 8, 1)
    q[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        EmbeddingIndex(unit(4, 8, 0), torch.arange(4)).search(q, 0.5)


def test_dimension_mismatch_is_named():
    with pytest.raises(ValueError, match="dimension 16"):
        EmbeddingIndex(unit(4, 8, 0), torch.arange(4)).search(unit(1, 16, 0), 0.5)


@pytest.mark.parametrize("kernel", ["int8", "coarse32", "fp32", "fp16"])
def test_each_kernel_equals_the_definition(monkeypatch, kernel):
    """GUARD_MATCH_KERNEL forces a kernel: each gives the definition's matches, at every floor."""
    from guard.match.embedding import int8_product_available, kernel_for

    monkeypatch.setenv("GUARD_MATCH_KERNEL", kernel)
    if kernel == "int8" and not int8_product_available():  # a torch without it refuses the choice
        from guard import ConfigError

        with pytest.raises(ConfigError, match="no int8 product"):
            kernel_for(384)
        return
    size, d = PRESELECT_FROM + 500, 384
    e = unit(size, d, 3).half()
    owner = torch.arange(size) // 5
    q = torch.nn.functional.normalize(torch.cat([e[[1, 99, size - 2]].float() + 0.03 * unit(3, d, 4),
                                                 unit(4, d, 5)]), dim=1)
    index = EmbeddingIndex(e, owner)
    assert index.kernel == kernel
    for floor in (0.2, 0.5, 0.9):
        assert_same(index.search(q, floor), reference(q, e, owner, floor))
    if kernel == "coarse32":  # a floor low enough that the coarse stage keeps everything pauses it: still exact
        for floor in (-0.5, 0.05, 0.9):
            assert_same(index.search(q, floor), reference(q, e, owner, floor))


def test_the_float_coarse_stage_is_exact_on_a_clustered_bank(monkeypatch):
    """coarse32 on CLIP-like rows (a shared direction, a decaying spectrum), where the bound
    is tight and most rows are dismissed: the same matches as the definition at every floor."""
    from guard.testing.synthetic import clustered_embeddings

    monkeypatch.setenv("GUARD_MATCH_KERNEL", "coarse32")
    size, d = PRESELECT_FROM + 1000, 768
    bank = clustered_embeddings(size + 8, d, 10, seed=2)
    e, owner = bank[:size].half(), torch.arange(size) // 10
    q = torch.nn.functional.normalize(torch.cat([e[[3, 5000, size - 1]].float() + 0.04 * bank[size:size + 3],
                                                 bank[size + 3:]]), dim=1)
    index = EmbeddingIndex(e, owner)
    assert index.kernel == "coarse32" and index.coarse_kept(q, 0.8) < size // 4
    for floor in (0.3, 0.6, 0.8, 0.95):
        assert_same(index.search(q, floor), reference(q, e, owner, floor))


def test_the_kernel_is_chosen_by_measurement_and_a_bad_choice_is_refused(monkeypatch):
    from guard.match.embedding import KERNELS, kernel_for

    monkeypatch.delenv("GUARD_MATCH_KERNEL", raising=False)
    assert kernel_for(768) in KERNELS
    assert EmbeddingIndex(unit(50, 16, 0), torch.arange(50)).kernel == "fp32"  # small banks: one product
    from guard import ConfigError

    monkeypatch.setenv("GUARD_MATCH_KERNEL", "bf16")
    with pytest.raises(ConfigError, match="GUARD_MATCH_KERNEL"):
        kernel_for(768)
