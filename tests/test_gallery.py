"""Latent galleries and the per-sample method table against brute force."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from clipattr_utils import faithfulness as fa
from clipattr_utils import gallery
from clipattr_utils.attribution import act_grad, energy
from clipattr_utils.head import Head
from clipattr_utils.sae.model import TopKSAE


@pytest.fixture(scope="module")
def world():
    g = torch.Generator().manual_seed(0)
    head = Head(1 + 0.2 * torch.randn(32, generator=g), 0.1 * torch.randn(32, generator=g),
                torch.randn(32, 16, generator=g) / 6, 1e-5)
    torch.manual_seed(2)
    sae = TopKSAE(32, 64, k=6)
    x = torch.randn(40, 32, generator=g) * 2
    text = torch.randn(3, 16, generator=g)
    return head, sae, x, text


def test_top_activating_rows_match_a_dense_sort(world):
    _, sae, x, _ = world
    code = sae.encode(x)
    dense = torch.zeros(len(x), sae.d_sae).scatter(1, code.indices, code.values.detach())
    latents = [int(j) for j in dense.count_nonzero(0).argsort(descending=True)[:4]] + [
        int((dense.count_nonzero(0) == 0).nonzero()[0])]  # plus a latent that never fires
    got = gallery.top_activating_rows(code, latents, n=5)
    for j in latents[:4]:
        col = dense[:, j]
        expect = [int(i) for i in col.argsort(descending=True, stable=True)[:5] if col[i] > 0]
        assert got[j] == expect
    assert got[latents[-1]] == []


def test_latent_grid_layout(world):
    class Images:
        def load_image(self, i):
            return np.full((8, 8, 3), i % 255, dtype=np.uint8)

    fig = gallery.latent_grid(Images(), {3: [1, 2, 3], 7: [4]}, anchor=0, anchor_title="image 0",
                              caption=lambda i: f"row {i}")
    assert len(fig.axes) == 2 * 4
    assert fig.axes[1].get_title() == "row 1" and fig.axes[0].get_title() == "image 0"
    assert fig.axes[0].get_ylabel() == "latent 3"
    with pytest.raises(ValueError, match="no latents"):
        gallery.latent_grid(Images(), {})


def test_method_comparison_scores_and_ranks(world):
    head, sae, x, text = world
    table = fa.method_comparison(x[5], 2, sae, head, text, methods={"Act x Grad": act_grad, "Energy": energy,
                                                                       "Random": fa.RandomOrder()})
    full = act_grad(x[5:6], sae, head, text)
    by_latent = dict(zip(full.indices[0].tolist(), full.values[0, 2].tolist()))
    assert sorted(table["latent"]) == sorted(by_latent)
    for row in table.itertuples():
        assert row._4 == pytest.approx(by_latent[row.latent], abs=1e-7)  # "Act x Grad" column
    assert list(table["Act x Grad"]) == sorted(table["Act x Grad"], reverse=True)
    assert list(table["rank Act x Grad"]) == list(range(1, 7))
    en = energy(x[5:6], sae, head, text).values[0, 0]
    assert sorted(table["Energy"]) == pytest.approx(sorted(en.tolist()))
    assert "Random" not in table  # an order baseline has no scores
    with pytest.raises(ValueError, match="sort_by"):
        fa.method_comparison(x[5], 2, sae, head, text, methods={"Energy": energy})
