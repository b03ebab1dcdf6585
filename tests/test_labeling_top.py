"""labeling.top: streamed top-activating samples equal a brute-force sort of the dense activations."""

import numpy as np
import pandas as pd
import pytest
import torch

from clipattr_utils.features import write_cache
from clipattr_utils.labeling import TopSamples, merge, top_activating
from clipattr_utils.labeling.top import _Accumulator
from clipattr_utils.sae import TopKSAE


def _sae(d_in=12, d_sae=40, k=4, relu=True, dead=(3, 17), seed=0):
    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE(d_in, d_sae, k, relu=relu, generator=g)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3, generator=g)
        for j in dead:  # latents that can never be in the top-k
            sae.b_enc[j] = -1e6
    return sae


def _features(n=300, d_in=12, dup_every=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    x[dup_every::dup_every] = x[0]  # exact duplicates -> exact ties across chunks
    return x


def _brute(x, sae, n, chunk_rows=None):
    """Dense activation matrix, then per latent a stable sort: (-value, row) order. Encoded in
    the same row chunks as the streamed run (a GEMM's last bits depend on the batch shape)."""
    step = chunk_rows or len(x)
    parts = [sae.encode(x[s:s + step]) for s in range(0, len(x), step)]
    code = type(parts[0])(torch.cat([p.indices for p in parts]), torch.cat([p.values for p in parts]))
    active = sae.active_mask(code)
    N = x.shape[0]
    dense = np.zeros((N, sae.d_sae), np.float32)
    on = np.zeros((N, sae.d_sae), bool)
    r, s = torch.nonzero(active, as_tuple=True)
    dense[r.numpy(), code.indices[r, s].numpy()] = code.values[r, s].detach().numpy()
    on[r.numpy(), code.indices[r, s].numpy()] = True
    vals = np.full((sae.d_sae, n), np.nan, np.float32)
    rows = np.full((sae.d_sae, n), -1, np.int64)
    for j in range(sae.d_sae):
        idx = np.flatnonzero(on[:, j])
        order = idx[np.lexsort((idx, -dense[idx, j]))][:n]
        vals[j, :len(order)] = dense[order, j]
        rows[j, :len(order)] = order
    count = on.sum(0)
    total = np.where(on, dense, 0).astype(np.float64).sum(0)
    return vals, rows, count, total


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("chunk_rows, merge_triplets", [(7, 10), (64, 100), (1000, 10**7)])
def test_equals_brute_force_sort(relu, chunk_rows, merge_triplets):
    x, sae = _features(), _sae(relu=relu)
    n = 9
    top = top_activating(x, sae, n=n, chunk_rows=chunk_rows, merge_triplets=merge_triplets, progress=False)
    vals, rows, count, total = _brute(x, sae, n, chunk_rows)
    np.testing.assert_array_equal(top.rows.numpy(), rows)
    np.testing.assert_array_equal(top.values.numpy(), vals)  # NaN padding compares equal here
    np.testing.assert_array_equal(top.count.numpy(), count)
    np.testing.assert_allclose(top.total.numpy(), total, rtol=1e-6, atol=1e-6)
    assert top.n_rows == 300 and top.d_sae == sae.d_sae and top.n == n
    if relu:  # the dead latents: never active, only padding
        for j in (3, 17):
            assert top.count[j] == 0 and (top.rows[j] == -1).all() and torch.isnan(top.values[j]).all()
            assert torch.isnan(top.mean_activation[j]) and torch.isnan(top.top5_mean[j])
    else:
        assert int(top.count.sum()) == 300 * sae.k  # every top-k slot is active, negative values included


def test_ties_keep_the_lower_row():
    x, sae = _features(dup_every=3), _sae()
    top = top_activating(x, sae, n=30, chunk_rows=5, merge_triplets=7, progress=False)
    vals, rows, _, _ = _brute(x, sae, 30, 5)
    np.testing.assert_array_equal(top.rows.numpy(), rows)
    tied = [(j, i) for j in range(sae.d_sae) for i in range(29)
            if top.rows[j, i] >= 0 and top.rows[j, i + 1] >= 0 and top.values[j, i] == top.values[j, i + 1]]
    assert tied, "the fixture should produce ties"
    assert all(top.rows[j, i] < top.rows[j, i + 1] for j, i in tied)


def test_statistics():
    x, sae = _features(), _sae()
    top = top_activating(x, sae, n=25, chunk_rows=50, progress=False)
    vals, _, count, total = _brute(x, sae, 25, 50)
    j = int(torch.argmax(top.count))
    assert top.firing_rate[j] == pytest.approx(count[j] / 300)
    assert top.mean_activation[j] == pytest.approx(total[j] / count[j], rel=1e-6)
    assert top.mean_activation_all[j] == pytest.approx(total[j] / 300, rel=1e-6)
    assert top.top5_mean[j] == pytest.approx(float(np.mean(vals[j, :5])), rel=1e-6)
    assert top.top20_mean[j] == pytest.approx(float(np.mean(vals[j, :20])), rel=1e-6)
    code = sae.encode(x)
    dense = torch.zeros(300, sae.d_sae).scatter_(1, code.indices, code.values.detach() * sae.active_mask(code))
    torch.testing.assert_close(top.mean_square, (dense.double() ** 2).mean(0), rtol=1e-5, atol=1e-8)
    rare = [i for i in range(sae.d_sae) if 0 < count[i] < 5]
    for i in rare:  # fewer rows than 5: the mean of those it has
        assert top.top5_mean[i] == pytest.approx(float(np.nanmean(vals[i, :5])), rel=1e-6)
    stats = top.stats()
    assert list(stats.columns) == ["latent", "count", "firing_rate", "mean_activation", "mean_activation_all",
                                   "top5_mean", "top20_mean"]
    with pytest.raises(ValueError, match="m=26"):
        top.top_mean(26)


def test_feature_cache_ids_frame_and_roundtrip(tmp_path):
    x, sae = _features(), _sae()
    ids = [f"img-{i:04d}" for i in range(len(x))]
    cache = write_cache(tmp_path / "c", x, ids=ids)
    top = top_activating(cache, sae, n=6, chunk_rows=40, progress=False)
    ref = top_activating(x, sae, n=6, progress=False)
    assert torch.equal(top.rows, ref.rows)
    valid = top.rows >= 0
    assert all(top.sample_ids[j, i] == ids[top.rows[j, i]] for j, i in zip(*np.nonzero(valid.numpy())))
    assert top.sample_ids[~valid.numpy()].tolist() == [None] * int((~valid).sum())
    frame = top.to_frame()
    assert list(frame.columns) == ["latent", "rank", "row", "sample_id", "activation"]
    assert len(frame) == int(valid.sum()) and (frame["row"] >= 0).all()
    first = frame[frame["latent"] == frame["latent"].iloc[0]]
    assert first["rank"].tolist() == list(range(len(first)))
    assert first["activation"].is_monotonic_decreasing
    back = TopSamples.load(top.save(tmp_path / "saved"))
    assert torch.equal(back.rows, top.rows) and torch.equal(back.count, top.count)
    assert torch.equal(back.total_sq, top.total_sq)
    assert torch.equal(back.values.nan_to_num(-1), top.values.nan_to_num(-1))
    assert (back.sample_ids == top.sample_ids).all() and back.ranges == top.ranges
    pd.testing.assert_frame_equal(back.to_frame(), frame)
    with pytest.raises(ValueError, match="ids= is only for tensor input"):
        top_activating(cache, sae, n=6, ids=ids, progress=False)
    with pytest.raises(ValueError, match="d_in=12"):
        top_activating(torch.randn(5, 7), sae, progress=False)


def test_nonfinite_rows_are_refused_naming_them(tmp_path):
    """NaN rows used to be counted in n_rows but never enter a table, without a word."""
    x = _features(n=100)
    x[[3, 40, 41], 2] = float("nan")
    x[90, 0] = float("inf")
    want = r"^top_activating: features: 4 of 100 rows hold NaN or inf \(rows 3, 40, 41, 90\)"
    with pytest.raises(ValueError, match=want):
        top_activating(x, _sae(), 5, chunk_rows=16, progress=False)
    with pytest.raises(ValueError, match=want):
        top_activating(write_cache(tmp_path / "c", x), _sae(), 5, chunk_rows=16, progress=False)
    with pytest.raises(ValueError, match=r"\(rows 1003, 1040, 1041, 1090\)"):  # a shard names global rows
        top_activating(x, _sae(), 5, row_offset=1000, progress=False)


def test_merge_of_shards_is_exact():
    x, sae = _features(), _sae()
    ids = [f"s{i}" for i in range(len(x))]
    whole = top_activating(x, sae, n=8, ids=ids, progress=False)
    cut = 130
    b = top_activating(x[cut:], sae, n=8, ids=ids[cut:], row_offset=cut, progress=False)
    a = top_activating(x[:cut], sae, n=8, ids=ids[:cut], progress=False)
    for m in (merge(a, b), merge(b, a)):  # order of the shards does not matter
        assert torch.equal(m.rows, whole.rows)
        assert torch.equal(m.values.nan_to_num(-9), whole.values.nan_to_num(-9))
        assert torch.equal(m.count, whole.count) and m.n_rows == whole.n_rows
        torch.testing.assert_close(m.total, whole.total)
        torch.testing.assert_close(m.total_sq, whole.total_sq)
        assert (m.sample_ids == whole.sample_ids).all()
        assert m.ranges == ((0, cut), (cut, 300))
    with pytest.raises(ValueError, match="overlap"):
        merge(a, a)


def test_accumulator_at_paper_width_is_exact_and_bounded():
    """30,000 latents x n=100: the table stays (d_sae, n); the buffer never exceeds its budget
    plus one chunk; the result equals a full lexsort of all triplets."""
    rng = np.random.default_rng(0)
    d_sae, n, k, rows_per_chunk, chunks = 30_000, 100, 16, 2_000, 10
    budget = 100_000
    acc = _Accumulator(d_sae, n, torch.device("cpu"), merge_triplets=budget)
    all_r, all_l, all_v = [], [], []
    peak = 0
    for c in range(chunks):
        r = np.repeat(np.arange(c * rows_per_chunk, (c + 1) * rows_per_chunk), k)
        lat = rng.integers(0, d_sae // 3, r.size)  # crowd a third of the latents past n
        v = rng.integers(1, 50, r.size).astype(np.float32)  # many ties
        acc.add(torch.from_numpy(r), torch.from_numpy(lat), torch.from_numpy(v))
        peak = max(peak, acc._buffered)
        all_r.append(r), all_l.append(lat), all_v.append(v)
    assert peak < budget + rows_per_chunk * k
    assert acc.values.shape == (d_sae, n)
    top = acc.result(chunks * rows_per_chunk, None, ((0, chunks * rows_per_chunk),), {})
    r, lat, v = (np.concatenate(a) for a in (all_r, all_l, all_v))
    order = np.lexsort((r, -v, lat))
    r, lat, v = r[order], lat[order], v[order]
    starts = np.searchsorted(lat, np.arange(d_sae))
    rank = np.arange(len(lat)) - starts[lat]
    keep = rank < n
    want = np.full((d_sae, n), -1)
    want[lat[keep], rank[keep]] = r[keep]
    np.testing.assert_array_equal(top.rows.numpy(), want)
    assert (top.count.numpy()[d_sae // 3:] == 0).all()


def _shard_table(dense, n, start=0):
    """One pass of `_Accumulator` over rows [start, start + len(dense)) of a dense
    (rows, d_sae) activation matrix (0 = inactive): a shard's TopSamples."""
    acc = _Accumulator(dense.shape[1], n, torch.device("cpu"), merge_triplets=1)
    r, lat = np.nonzero(dense)  # row-major: rows ascend, as `add` requires
    acc.add(torch.from_numpy(r + start), torch.from_numpy(lat), torch.from_numpy(dense[r, lat]))
    ids = [f"s{i}" for i in range(start, start + len(dense))]
    return acc.result(len(dense), ids, ((start, start + len(dense)),), {})


def test_merge_breaks_ties_by_row_for_every_split_and_order():
    """Activations in {0, 1, 2, 3}: most of each latent's top n are ties. The lower row must
    win every tie whichever shard holds it and whichever table comes first in `merge`, so
    every split merges to exactly the single pass (docs/scaling.md: "exactly as one pass")."""
    rng = np.random.default_rng(0)
    N, d_sae, n = 24, 5, 6
    dense = rng.integers(0, 4, (N, d_sae)).astype(np.float32)
    want = np.full((d_sae, n), -1)
    for j in range(d_sae):
        rows = np.flatnonzero(dense[:, j])
        want[j, :min(n, len(rows))] = rows[np.lexsort((rows, -dense[rows, j]))][:n]
    np.testing.assert_array_equal(_shard_table(dense, n).rows.numpy(), want)
    for cut in range(1, N):
        a, b = _shard_table(dense[:cut], n), _shard_table(dense[cut:], n, start=cut)
        for m in (merge(a, b), merge(b, a)):
            np.testing.assert_array_equal(m.rows.numpy(), want, err_msg=f"cut {cut}")
            assert m.sample_ids.tolist() == [[f"s{r}" if r >= 0 else None for r in row] for row in want]
    thirds = [_shard_table(dense[s:s + 8], n, start=s) for s in (0, 8, 16)]
    for p, q, r in ((0, 1, 2), (2, 1, 0), (1, 2, 0), (2, 0, 1)):
        m = merge(merge(thirds[p], thirds[q]), thirds[r])
        np.testing.assert_array_equal(m.rows.numpy(), want, err_msg=f"order {p, q, r}")
