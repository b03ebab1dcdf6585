"""sae.evaluate: FVU, L0, dead/alive/frequent latents, cosine — against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

from clipattr_utils.features import write_cache
from clipattr_utils.sae import TopKSAE, evaluate


def _data(n=300, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.linspace(0.5, 3, d) + 7.0  # far-from-zero mean


def test_fvu_of_mean_predictor_is_one():
    x = _data()
    sae = TopKSAE(8, 32, k=4)
    with torch.no_grad():
        sae.b_enc.fill_(-1e6)  # no latent ever fires: x_hat = b
        sae.b_dec.copy_(x.double().mean(0).float())
    m = evaluate(sae, x, progress=False)
    assert m.fvu == pytest.approx(1.0, abs=1e-6)
    assert m.l0 == 0 and m.dead == 32 and m.alive == 0 and m.frequent == 0


def test_fvu_of_perfect_reconstruction_is_zero():
    """Dictionary {+e_i, -e_i}: ReLU top-d picks exactly the signed coordinates of x - b."""
    d = 8
    x = _data(d=d)
    sae = TopKSAE(d, 2 * d, k=d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.W_enc.copy_(torch.cat([eye, -eye]).T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(x.mean(0))
    m = evaluate(sae, x, progress=False)
    assert m.fvu == pytest.approx(0.0, abs=1e-10)
    assert m.cosine == pytest.approx(1.0, abs=1e-7)
    assert m.mse == pytest.approx(0.0, abs=1e-9)


def test_metrics_match_brute_force_and_sklearn(tmp_path):
    x = _data(n=517, seed=1)
    sae = TopKSAE(8, 40, k=3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
        sae.b_enc.copy_(torch.linspace(-3, 0.5, 40))  # some latents never fire, others rarely
    x_hat = sae(x).detach()
    xn, hn = x.double().numpy(), x_hat.double().numpy()
    fvu_sklearn = 1 - r2_score(xn, hn, multioutput="variance_weighted")
    idx, val = sae.encode(x)
    counts = np.zeros(40, dtype=np.int64)
    for row_i, row_v in zip(idx.tolist(), val.tolist()):
        for j, v in zip(row_i, row_v):
            counts[j] += v != 0
    cos = np.mean([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(xn, hn)])

    for features, bs in [(x, 4096), (x, 50), (write_cache(tmp_path / "c", x), 64)]:
        m = evaluate(sae, features, batch_size=bs, min_count=20, progress=False)
        assert m.n == 517
        assert m.fvu == pytest.approx(fvu_sklearn, rel=1e-9)
        assert m.mse == pytest.approx(((xn - hn) ** 2).sum(1).mean(), rel=1e-9)
        assert m.cosine == pytest.approx(cos, rel=1e-9)
        assert m.l0 == pytest.approx(counts.sum() / 517)
        np.testing.assert_array_equal(m.counts, counts)
        assert m.dead == int((counts == 0).sum()) and m.alive == 40 - m.dead
        assert m.frequent == int((counts >= 20).sum())
    assert 0 < m.dead < 40 and 0 < m.frequent < m.alive, "the setup should exercise every count"
    summary = m.summary()
    assert "counts" not in summary and summary["fvu"] == m.fvu


def test_fvu_robust_to_huge_mean():
    """Pre-LN CLIP tokens carry huge mean components; chunked float64 merging must not cancel."""
    x = _data(n=2000, seed=3).double()
    x[:, 0] += 1e5
    x = x.float()
    sae = TopKSAE(8, 32, k=4)
    with torch.no_grad():
        sae.b_enc.fill_(-1e9)
        sae.b_dec.copy_(x.double().mean(0).float())
    m = evaluate(sae, x, batch_size=333, progress=False)
    xd = x.double()
    want = ((xd - sae.b_dec.double()) ** 2).sum() / ((xd - xd.mean(0)) ** 2).sum()
    assert m.fvu == pytest.approx(float(want.detach()), rel=1e-6)


def test_width_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"\(N, 5\).*d_in=8"):
        evaluate(TopKSAE(8, 16, k=2), torch.zeros(3, 5), progress=False)


def test_nonfinite_rows_are_an_error_naming_them():
    x = _data(n=300)
    x[[5, 150, 151, 152, 160, 299], 0] = float("nan")
    with pytest.raises(ValueError, match=r"^evaluate: features: 6 of 300 rows hold NaN or inf "
                                         r"\(rows 5, 150, 151, 152, 160, \.\.\.\)"):
        evaluate(TopKSAE(8, 16, k=2), x, batch_size=64, progress=False)
